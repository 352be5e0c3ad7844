//! Team-mode benchmarks; prints a table. Run with `cargo bench --bench team` (needs the .venv
//! that scripts/test creates, and Debian's PostgreSQL, which scripts/test installs).
//!
//! * revocation propagation: `revoke` on daemon A, until daemons B and C each show it (their
//!   status over the socket, polled), p50/p99 over many rounds;
//! * warm credential throughput over the socket with the PostgreSQL store beside the SQLite
//!   store, the two daemons measured in alternating rounds of the same run (a ratio);
//! * an approval round trip across daemons: the agent asks on B, an approver approves on A, the
//!   agent's next request on B is issued.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::postgres::Postgres;
use common::*;
use mandate::protocol::Request;
use mandate::revoke::Scope;

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn call(d: &Daemon, req: &Request) -> mandate::protocol::Response {
    mandate::client::call(&d.socket(), req, Duration::from_secs(10)).unwrap()
}

fn creds(profile: &str) -> Request {
    Request::Credentials {
        profile: profile.into(),
        agent: None,
        reason: None,
        duration_seconds: None,
        approval_id: None,
    }
}

/// `n` daemons on `pg`, each trusting the others' vote signatures.
fn team(pg: &Postgres, moto: &Moto, n: usize) -> Vec<Daemon> {
    daemons_sharing(&moto.endpoint(), n, |signers| {
        let extra = format!(
            "[limits]\nmax_issuances = 100000\nmax_live_sessions = 100000\nmax_deliveries = 100000000\n\n[store]\nurl = \"{}\"\npassword_file = \"{}\"\n\n[store.vote_signers]\n{signers}",
            pg.url(),
            pg.password_file().display()
        );
        config_text(&moto.endpoint(), &extra)
    })
}

fn revoked(d: &Daemon) -> bool {
    let s = call(d, &Request::Status).status.unwrap_or_default();
    s["revocations"]
        .as_array()
        .is_some_and(|r| r.iter().any(|r| r["active"] == true))
}

fn main() {
    let pg = Postgres::start();
    let moto = Moto::start();
    let daemons = team(&pg, &moto, 3);
    let (a, b, c) = (&daemons[0], &daemons[1], &daemons[2]);

    println!("## revocation propagation across three daemons (revoke on A, seen by B and C)\n");
    let rounds = 50;
    let mut lat = Vec::new();
    for _ in 0..rounds {
        let revoke = Request::Revoke {
            scope: Scope::Agent("claude".into()),
            aws: false,
        };
        // From the moment the revoke is sent.
        let t = Instant::now();
        assert!(call(a, &revoke).ok);
        let handles: Vec<_> = [b, c]
            .into_iter()
            .map(|d| {
                let socket = d.socket();
                std::thread::spawn(move || {
                    let start = Instant::now();
                    loop {
                        let s = mandate::client::call(
                            &socket,
                            &Request::Status,
                            Duration::from_secs(10),
                        )
                        .unwrap()
                        .status
                        .unwrap_or_default();
                        if s["revocations"]
                            .as_array()
                            .is_some_and(|r| r.iter().any(|r| r["active"] == true))
                        {
                            return;
                        }
                        assert!(start.elapsed() < Duration::from_secs(30), "never arrived");
                        std::thread::sleep(Duration::from_micros(200));
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
            lat.push(t.elapsed());
        }
        assert!(
            call(
                a,
                &Request::Unrevoke {
                    scope: Scope::Agent("claude".into())
                }
            )
            .ok
        );
        while revoked(b) || revoked(c) {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    lat.sort();
    println!("| samples | p50 | p99 | max |");
    println!("|---|---|---|---|");
    println!(
        "| {} | {} | {} | {} |\n",
        lat.len(),
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.99)),
        ms(*lat.last().unwrap())
    );

    println!("## approval round trip across daemons (ask on B, approve on A, issued on B)\n");
    let mut trips = Vec::new();
    for i in 0..10 {
        let ask = Request::Credentials {
            profile: "deploy-staging".into(),
            agent: None,
            reason: Some(format!("round {i}")),
            // Another duration each round: an approved session is otherwise cached for the agent.
            duration_seconds: Some(900 + i),
            approval_id: None,
        };
        let t = Instant::now();
        let r = call(b, &ask);
        let Some(id) = r.approval.as_ref().and_then(|a| a["id"].as_str()) else {
            panic!("expected a pending request, got {r:?}");
        };
        let id = mandate::approval::ApprovalId::parse(id).unwrap();
        assert!(
            call(
                a,
                &Request::Vote {
                    id,
                    approve: true,
                    note: None,
                    approver: None,
                    digest: None,
                }
            )
            .ok
        );
        assert!(call(b, &ask).ok, "issued on B");
        trips.push(t.elapsed());
    }
    trips.sort();
    println!("| rounds | p50 | max |");
    println!("|---|---|---|");
    println!(
        "| {} | {} | {} |\n",
        trips.len(),
        ms(percentile(&trips, 0.5)),
        ms(*trips.last().unwrap())
    );

    println!(
        "## warm credential throughput over the socket: PostgreSQL store beside SQLite (16 clients, 5 alternating rounds of 2 s)\n"
    );
    let sqlite = Daemon::start(&config_text(
        &moto.endpoint(),
        "[limits]\nmax_deliveries = 100000000\n",
    ));
    let mut totals = [0u64; 2];
    for _ in 0..5 {
        for (i, d) in [a, &sqlite].into_iter().enumerate() {
            let count = Arc::new(AtomicU64::new(0));
            let deadline = Instant::now() + Duration::from_secs(2);
            let handles: Vec<_> = (0..16)
                .map(|_| {
                    let (socket, count) = (d.socket(), count.clone());
                    std::thread::spawn(move || {
                        while Instant::now() < deadline {
                            let r = mandate::client::call(
                                &socket,
                                &creds("readonly"),
                                Duration::from_secs(10),
                            )
                            .unwrap();
                            assert!(r.ok);
                            count.fetch_add(1, Ordering::Relaxed);
                        }
                    })
                })
                .collect();
            for h in handles {
                h.join().unwrap();
            }
            totals[i] += count.load(Ordering::Relaxed);
        }
    }
    println!("| store | requests/s |");
    println!("|---|---|");
    println!("| PostgreSQL (team) | {:.0} |", totals[0] as f64 / 10.0);
    println!("| SQLite | {:.0} |", totals[1] as f64 / 10.0);
    println!(
        "\nratio PostgreSQL / SQLite: {:.3}\n",
        totals[0] as f64 / totals[1] as f64
    );
}
