//! The approval console's benchmark; prints a table. Run with `cargo bench --bench console`
//! (needs tests/console/node_modules, the .venv and Debian's PostgreSQL, which scripts/test
//! installs).
//!
//! Time from a request being created to it appearing for a signed-in approver: the agent opens
//! a request (`mandate request`, which returns once the request is stored), and the approver's
//! console page (GET / with the session cookie, what a browser tab's reload fetches) is polled
//! until it lists the request. Once with one daemon (SQLite), once in team mode: the request is
//! opened on daemon B and appears in the console of daemon A through PostgreSQL.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::console::{cookie_value, http, sign_in_over_http, start_node};
use common::postgres::Postgres;
use common::*;

const ROUNDS: usize = 40;

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn console_extra(port: u16, idp_port: u16) -> String {
    format!(
        "[console]\nlisten = \"127.0.0.1:{port}\"\npublic_url = \"http://localhost:{port}\"\n[console.oidc]\nissuer = \"http://localhost:{idp_port}\"\nclient_id = \"mandate-console\"\n"
    )
}

const APPROVALS: &str = "[approvals]\nmax_pending = 1000\n";

/// Opens requests on `asker` and times them until they show on the console at `port`.
fn measure(asker: &Daemon, port: u16, cookie: &str) -> (Vec<Duration>, Vec<Duration>) {
    let mut from_created = Vec::new();
    let mut from_asked = Vec::new();
    for i in 0..ROUNDS {
        let asked = Instant::now();
        let o = asker.mandate(&[
            "request",
            "deploy-staging",
            "--reason",
            &format!("bench {i} {}", std::process::id()),
            "--duration",
            "20m",
        ]);
        let created = Instant::now();
        let e = String::from_utf8_lossy(&o.stderr).into_owned();
        let id = e
            .split("request ")
            .nth(1)
            .and_then(|s| s.split(' ').next())
            .unwrap_or_else(|| panic!("no request id in {e:?}"))
            .to_owned();
        let needle = format!("/requests/{id}\"");
        loop {
            let (status, _, body) = http(port, "GET", "/", &[("Cookie", cookie)], "");
            assert_eq!(status, 200, "{body}");
            if body.contains(&needle) {
                break;
            }
            assert!(created.elapsed() < Duration::from_secs(10), "never listed");
            std::thread::sleep(Duration::from_millis(1));
        }
        from_created.push(created.elapsed());
        from_asked.push(asked.elapsed());
    }
    from_created.sort();
    from_asked.sort();
    (from_created, from_asked)
}

fn signed_in(port: u16, idp_port: u16) -> String {
    let (status, h, body) = sign_in_over_http(port, idp_port);
    assert_eq!(status, 200, "{body}");
    format!(
        "__Host-mandate_session={}",
        cookie_value(&h, "__Host-mandate_session").unwrap()
    )
}

fn evil(console_port: u16, idp_port: u16) -> Guard {
    let mut c = common::console::node("evil_idp.mjs");
    c.env(
        "REDIRECT_URI",
        format!("http://localhost:{console_port}/auth/callback"),
    )
    .env("IDP_PORT", idp_port.to_string())
    .env("SUB", "human");
    start_node(c).0
}

fn row(what: &str, (created, asked): &(Vec<Duration>, Vec<Duration>)) {
    println!(
        "| {what} | {} | {} | {} | {} |",
        ms(percentile(created, 0.5)),
        ms(percentile(created, 0.99)),
        ms(*created.last().unwrap()),
        ms(percentile(asked, 0.5)),
    );
}

fn main() {
    let moto = Moto::start();

    // One daemon, SQLite.
    let port = free_port();
    let idp_port = free_port();
    let _idp = evil(port, idp_port);
    let d = Daemon::start(&config_text(
        &moto.endpoint(),
        &format!(
            "oidc_subject = \"human\"\n{APPROVALS}{}",
            console_extra(port, idp_port)
        ),
    ));
    wait_until("the console", Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let cookie = signed_in(port, idp_port);
    let single = measure(&d, port, &cookie);
    drop(d);

    // Team mode: asked on B, seen in A's console.
    let pg = Postgres::start();
    let store = format!(
        "[store]\nurl = \"{}\"\npassword_file = \"{}\"\n",
        pg.url(),
        pg.password_file().display()
    );
    let port = free_port();
    let idp_port = free_port();
    let _idp2 = evil(port, idp_port);
    let a = Daemon::start(&config_text(
        &moto.endpoint(),
        &format!(
            "oidc_subject = \"human\"\n{APPROVALS}{store}{}",
            console_extra(port, idp_port)
        ),
    ));
    let b = Daemon::start(&config_text(
        &moto.endpoint(),
        &format!("oidc_subject = \"human\"\n{APPROVALS}{store}"),
    ));
    wait_until("the console", Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let cookie = signed_in(port, idp_port);
    let team = measure(&b, port, &cookie);
    drop((a, b));

    println!(
        "\nTime from a request being created to it appearing for a signed-in approver ({ROUNDS} requests each)\n"
    );
    println!("| setup | p50 after created | p99 after created | max | p50 from the agent's ask |");
    println!("|---|---|---|---|---|");
    row("one daemon (SQLite)", &single);
    row("team: asked on B, console on A (PostgreSQL)", &team);
    println!(
        "\n\"after created\": from `mandate request` returning (the request is stored) to the first page load that lists it; \"from the agent's ask\": from starting `mandate request`."
    );
}
