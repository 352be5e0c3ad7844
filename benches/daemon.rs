//! Daemon benchmarks; prints a table. Run with `cargo bench --bench daemon` (needs the .venv
//! that scripts/test creates: moto, boto3).
//!
//! * `mandate credential-process` on a warm cache, a new process per run (what the AWS CLI pays
//!   before every command), beside `/bin/true`, beside the same request answered by the full
//!   program (`mandate-broker credential-process`, what every run cost before the small front
//!   binary) and beside a plain boto3 script that calls AssumeRole itself; runs interleaved,
//!   with page faults per run and, when valgrind is installed, instructions per run;
//! * warm requests per second over the socket, in-process clients;
//! * the daemon's resident memory when idle;
//! * audit bytes per 10,000 cached deliveries with 1 KiB reasons, one record per delivery
//!   (`delivery_window = "0s"`, what every delivery cost before) beside coalesced windows (the
//!   default), side by side in one run.

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use mandate::protocol::Request;

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn time_runs(n: usize, mut make: impl FnMut() -> Command) -> Vec<Duration> {
    let mut v: Vec<Duration> = (0..n).map(|_| time_one(&mut make()).0).collect();
    v.sort();
    v
}

fn time_one(c: &mut Command) -> (Duration, std::process::Output) {
    let t = Instant::now();
    let out = c.output().unwrap();
    let e = t.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (e, out)
}

/// Minor page faults of every child this process has waited for (`cminflt`, /proc/self/stat).
fn children_minor_faults() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // After "pid (comm) ": state ppid pgrp session tty_nr tpgid flags minflt cminflt ...
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    fields[8].parse().unwrap()
}

/// Instructions one run executes in user space (the dynamic loader included), counted by
/// valgrind's callgrind: repeatable whatever else the machine is doing. `None` without valgrind.
fn instructions_of(c: Command) -> Option<u64> {
    let program = c.get_program().to_owned();
    let args: Vec<_> = c.get_args().map(|a| a.to_owned()).collect();
    let envs: Vec<_> = c
        .get_envs()
        .map(|(k, v)| (k.to_owned(), v.map(|v| v.to_owned())))
        .collect();
    let mut v = Command::new("valgrind");
    clean_env(&mut v);
    for (k, val) in envs {
        match val {
            Some(val) => v.env(k, val),
            None => v.env_remove(k),
        };
    }
    let out = v
        .args(["--tool=callgrind", "--callgrind-out-file=/dev/null"])
        .arg(program)
        .args(args)
        .output()
        .ok()?;
    let err = String::from_utf8_lossy(&out.stderr);
    err.lines()
        .find_map(|l| l.split("Collected : ").nth(1))
        .and_then(|n| n.trim().parse().ok())
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmRSS:")
                .map(|v| v.trim().trim_end_matches(" kB").trim().parse().unwrap())
        })
        .unwrap()
}

/// Keep-alive HTTP/1.1 GETs on one connection until `deadline`; returns each latency.
fn http_client(port: u16, token: &str, deadline: Instant) -> Vec<Duration> {
    use std::io::{BufRead, BufReader, Read, Write};
    let stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_nodelay(true).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    let request =
        format!("GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: {token}\r\n\r\n");
    let mut lat = Vec::new();
    while Instant::now() < deadline {
        let t = Instant::now();
        writer.write_all(request.as_bytes()).unwrap();
        let mut len = 0;
        let mut line = String::new();
        loop {
            line.clear();
            reader.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
            assert!(
                !line.starts_with("HTTP/1.1 ") || line.starts_with("HTTP/1.1 200"),
                "{line}"
            );
        }
        let mut body = vec![0; len];
        reader.read_exact(&mut body).unwrap();
        lat.push(t.elapsed());
    }
    lat
}

fn main() {
    let moto = Moto::start();
    let http_port = free_port();
    let token_dir = tempfile::tempdir().unwrap();
    let token_file = token_dir.path().join("bench");
    let token = mandate::transport::http::new_token();
    std::fs::write(&token_file, &token).unwrap();
    std::fs::set_permissions(
        &token_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let extra = format!(
        "\n[agents.bench]\nprofiles = [\"readonly\"]\ndefault_profile = \"readonly\"\ntoken_file = \"{}\"\n\n[http]\nlisten = \"127.0.0.1:{http_port}\"\n\n[limits]\nmax_live_sessions = 1000\nmax_deliveries = 100000000\n",
        token_file.display()
    );
    let d = Daemon::start(&config_text(&moto.endpoint(), &extra));
    let cp = |program: &str| {
        let mut c = Command::new(program);
        clean_env(&mut c);
        c.arg("--config")
            .arg(&d.config)
            .args(["credential-process", "readonly"]);
        c
    };
    let full = env!("CARGO_BIN_EXE_mandate-broker");
    // Warm the cache and the page cache.
    time_runs(20, || cp(MANDATE));
    time_runs(20, || cp(full));
    let runs = 1000;
    // Interleaved, so a drift in the machine's speed hits every row alike.
    let mut rows: [(&str, Vec<Duration>, Vec<u64>); 3] = [
        ("`/bin/true`", vec![], vec![]),
        ("`mandate credential-process readonly`", vec![], vec![]),
        (
            "`mandate-broker credential-process readonly` (the full program: before)",
            vec![],
            vec![],
        ),
    ];
    for _ in 0..runs {
        for (i, row) in rows.iter_mut().enumerate() {
            let mut c = match i {
                0 => Command::new("/bin/true"),
                1 => cp(MANDATE),
                _ => cp(full),
            };
            let faults = children_minor_faults();
            let (e, _) = time_one(&mut c);
            row.1.push(e);
            row.2.push(children_minor_faults() - faults);
        }
    }
    for row in &mut rows {
        row.1.sort();
        row.2.sort();
    }
    let instructions = [
        instructions_of(Command::new("/bin/true")),
        instructions_of(cp(MANDATE)),
        instructions_of(cp(full)),
    ];

    let script = "import boto3, sys\n\
        sts = boto3.client('sts', endpoint_url=sys.argv[1], aws_access_key_id='testing', aws_secret_access_key='testing', region_name='us-east-1')\n\
        sts.assume_role(RoleArn=sys.argv[2], RoleSessionName='bench')";
    let boto = time_runs(50, || {
        let mut c = python();
        c.args(["-c", script, &moto.endpoint(), ROLE_ARN]);
        c
    });

    println!("## credential_process, warm cache ({runs} runs each, interleaved; boto3: 50 runs)\n");
    println!("| command | median | p99 | max | page faults (median) | instructions |");
    println!("|---|---|---|---|---|---|");
    for ((name, v, faults), ins) in rows.iter().zip(&instructions) {
        println!(
            "| {name} | {} | {} | {} | {} | {} |",
            ms(percentile(v, 0.5)),
            ms(percentile(v, 0.99)),
            ms(*v.last().unwrap()),
            faults[faults.len() / 2],
            ins.map_or("(no valgrind)".to_owned(), |n| n.to_string()),
        );
    }
    println!(
        "| python + boto3 AssumeRole (moto) | {} | {} | {} | | |",
        ms(percentile(&boto, 0.5)),
        ms(percentile(&boto, 0.99)),
        ms(*boto.last().unwrap())
    );
    let median = |v: &[Duration]| percentile(v, 0.5).as_secs_f64();
    println!(
        "\nmedian ratio mandate / true: {:.2}x; full program / true: {:.2}x\n",
        median(&rows[1].1) / median(&rows[0].1),
        median(&rows[2].1) / median(&rows[0].1)
    );

    println!("## warm requests over the socket (in-process clients, 3 s each)\n");
    println!("| clients | requests/s | p99 latency |");
    println!("|---|---|---|");
    let socket = d.socket();
    let req = Request::Credentials {
        profile: "readonly".into(),
        agent: None,
        reason: None,
        duration_seconds: None,
        approval_id: None,
    };
    for clients in [1, 4, 16, 64] {
        let count = Arc::new(AtomicU64::new(0));
        let deadline = Instant::now() + Duration::from_secs(3);
        let handles: Vec<_> = (0..clients)
            .map(|_| {
                let (socket, req, count) = (socket.clone(), req.clone(), count.clone());
                std::thread::spawn(move || {
                    let mut lat = Vec::new();
                    while Instant::now() < deadline {
                        let t = Instant::now();
                        let r =
                            mandate::client::call(&socket, &req, Duration::from_secs(10)).unwrap();
                        assert!(r.ok);
                        lat.push(t.elapsed());
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    lat
                })
            })
            .collect();
        let mut lat: Vec<Duration> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        lat.sort();
        println!(
            "| {clients} | {:.0} | {} |",
            count.load(Ordering::Relaxed) as f64 / 3.0,
            ms(percentile(&lat, 0.99))
        );
    }

    println!("\n## container-credentials endpoint, warm (keep-alive HTTP/1.1 clients, 3 s each)\n");
    println!("| clients | requests/s | p50 latency | p99 latency |");
    println!("|---|---|---|---|");
    http_client(
        http_port,
        &token,
        Instant::now() + Duration::from_millis(200),
    ); // warm the cache
    for clients in [1, 64] {
        let deadline = Instant::now() + Duration::from_secs(3);
        let handles: Vec<_> = (0..clients)
            .map(|_| {
                let token = token.clone();
                std::thread::spawn(move || http_client(http_port, &token, deadline))
            })
            .collect();
        let mut lat: Vec<Duration> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        lat.sort();
        println!(
            "| {clients} | {:.0} | {} | {} |",
            lat.len() as f64 / 3.0,
            ms(percentile(&lat, 0.5)),
            ms(percentile(&lat, 0.99))
        );
    }

    // Approvals: what a human and an agent wait for (SQLite writes with fsync, the audit
    // record, and for the redemption one STS AssumeRole at moto).
    let rounds = 20;
    let (mut open, mut approve, mut redeem) = (Vec::new(), Vec::new(), Vec::new());
    let run = |args: &[&str]| {
        let mut c = Command::new(MANDATE);
        clean_env(&mut c);
        c.arg("--config").arg(&d.config).args(args);
        c.output().unwrap()
    };
    for i in 0..rounds {
        // A new duration each round: a new request, never a cached session.
        let duration = format!("{}s", 900 + i);
        let args = ["request", "deploy-staging", "--duration", duration.as_str()];
        let t = Instant::now();
        let out = run(&args);
        open.push(t.elapsed());
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        let id = err
            .split("request ")
            .nth(1)
            .and_then(|s| s.split(' ').next())
            .unwrap_or_else(|| panic!("no pending id in {err}"))
            .to_owned();
        let t = Instant::now();
        assert!(run(&["approve", &id]).status.success());
        approve.push(t.elapsed());
        let t = Instant::now();
        let out = run(&[&args[..], &["--approval", id.as_str()]].concat());
        redeem.push(t.elapsed());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    println!("\n## approval round trip (CLI to daemon, {rounds} new requests)\n");
    println!("| step | median | p99 |");
    println!("|---|---|---|");
    for (what, mut v) in [
        ("request → pending id", open),
        ("`mandate approve ID`", approve),
        ("redeem: request --approval ID (incl. AssumeRole)", redeem),
    ] {
        v.sort();
        println!(
            "| {what} | {} | {} |",
            ms(percentile(&v, 0.5)),
            ms(percentile(&v, 0.99))
        );
    }

    std::thread::sleep(Duration::from_secs(2));
    let pid = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()))
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| {
                    String::from_utf8_lossy(&c).contains(d.config.to_str().unwrap())
                        && String::from_utf8_lossy(&c).contains("serve")
                })
                .unwrap_or(false)
        })
        .expect("daemon pid");
    println!(
        "\n## daemon memory\n\nidle RSS after the runs above: {:.1} MB",
        rss_kib(pid) as f64 / 1024.0
    );
    drop(d);
    audit_volume(&moto);
}

/// Audit bytes written for 10,000 cached deliveries (4 clients, 1 KiB reasons), per setting.
fn audit_volume(moto: &Moto) {
    const DELIVERIES: u64 = 10_000;
    println!("\n## audit bytes per {DELIVERIES} cached deliveries (4 clients, 1 KiB reasons)\n");
    println!("| delivery records | audit bytes | bytes per delivery | deliveries counted |");
    println!("|---|---|---|---|");
    let mut results = Vec::new();
    for (name, window) in [
        (
            "one per delivery (`delivery_window = \"0s\"`, as before)",
            "0s",
        ),
        ("coalesced per session and minute (default)", "60s"),
    ] {
        let extra = format!(
            "[audit]\ndelivery_window = \"{window}\"\n[limits]\nmax_deliveries = 100000000\n"
        );
        let mut d = Daemon::start(&config_text(&moto.endpoint(), &extra));
        let req = Request::Credentials {
            profile: "readonly".into(),
            agent: None,
            reason: Some("r".repeat(1024)),
            duration_seconds: None,
            approval_id: None,
        };
        // Mint once; everything after is a cached delivery.
        assert!(
            mandate::client::call(&d.socket(), &req, Duration::from_secs(10))
                .unwrap()
                .ok
        );
        let before = d.audit_bytes();
        let left = Arc::new(AtomicU64::new(DELIVERIES));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let (socket, req, left) = (d.socket(), req.clone(), left.clone());
                std::thread::spawn(move || {
                    while left
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                        .is_ok()
                    {
                        let r =
                            mandate::client::call(&socket, &req, Duration::from_secs(10)).unwrap();
                        assert!(r.ok);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        d.stop(); // closes every delivery window
        let bytes = d.audit_bytes() - before;
        let counted: u64 = d
            .audit()
            .iter()
            .filter(|r| r["kind"] == "delivered")
            .map(|r| r["count"].as_u64().unwrap_or(1))
            .sum();
        println!(
            "| {name} | {bytes} | {:.1} | {counted} |",
            bytes as f64 / DELIVERIES as f64
        );
        results.push(bytes);
    }
    println!(
        "\nratio coalesced / one per delivery: {:.5} ({:.0}x smaller)",
        results[1] as f64 / results[0] as f64,
        results[0] as f64 / results[1].max(1) as f64
    );
}
