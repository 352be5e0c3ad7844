//! The audit log end to end: `mandate audit verify|tail|show`, tampering, crash recovery under
//! kill -9, and failing closed when the log cannot be written.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn with_audit(endpoint: &str, audit: &str) -> String {
    format!("{}\n[audit]\n{audit}\n", config_text(endpoint, ""))
}

#[test]
fn verify_tail_show_and_tampering_through_the_cli() {
    let moto = Moto::start();
    let mut d = Daemon::start(&with_audit(&moto.endpoint(), "checkpoint_every = 3"));
    for p in ["readonly", "s3-data", "readonly", "deploy-staging"] {
        d.mandate(&["credential-process", p]);
    }
    // While running: started, request, issued (signed at 3), the checkpoint's own record,
    // request, issued, delivered (signed at 7), the checkpoint's record, denied.
    let v: Value =
        serde_json::from_slice(&d.mandate(&["audit", "verify", "--json"]).stdout).unwrap();
    assert_eq!(
        (
            v["intact"].as_bool(),
            v["last_seq"].as_u64(),
            v["uncovered"].as_u64()
        ),
        (Some(true), Some(9), Some(2)),
        "{v}"
    );
    // A graceful stop writes `stopped` and signs everything.
    d.stop();
    let out = d.mandate(&["audit", "verify"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with(
            "audit log intact: 10 record(s), seq 1..10, in 1 segment(s); 3 signed checkpoint(s)"
        ),
        "{}",
        stdout(&out)
    );
    assert!(
        stdout(&out).ends_with(
            "; 0 record(s) after the last checkpoint are not yet covered by a signature\n"
        )
    );

    let out = d.mandate(&["audit", "tail", "--kind", "issued", "--json"]);
    let lines: Vec<Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert!(
        lines
            .iter()
            .all(|r| r["kind"] == "issued"
                && r["access_key_id"].as_str().unwrap().starts_with("ASIA"))
    );
    let out = d.mandate(&["audit", "tail", "-n", "1"]);
    assert!(stdout(&out).contains("stopped"), "{}", stdout(&out));
    let out = d.mandate(&["audit", "show", "2"]);
    let rec: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (rec["seq"].as_u64(), rec["kind"].as_str()),
        (Some(2), Some("request"))
    );
    assert_eq!(d.mandate(&["audit", "show", "99"]).status.code(), Some(4));
    assert_eq!(
        d.mandate(&["audit", "tail", "--kind", "nonsense"])
            .status
            .code(),
        Some(2)
    );

    // Tamper: the daemon would not start, and verify names the record.
    let seg = d.dir.path().join("state/audit/audit-000001.jsonl");
    let text = std::fs::read_to_string(&seg).unwrap();
    std::fs::write(
        &seg,
        text.replacen("\"profile\":\"s3-data\"", "\"profile\":\"readonly\"", 1),
    )
    .unwrap();
    let out = d.mandate(&["audit", "verify"]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(
        stderr(&out),
        "audit log DAMAGED: seq 5 (audit-000001.jsonl line 5): the record does not match its hash (it was edited)\n"
    );
    let out = mandate_at(&d.config).arg("serve").output().unwrap();
    assert_eq!(out.status.code(), Some(6));
    assert!(
        stderr(&out).contains(
        "the audit log is damaged at seq 10 (audit-000001.jsonl): the record at the last signed checkpoint is not where the checkpoint says; the log before it was changed; run `mandate audit verify`"
    ),
        "{}",
        stderr(&out)
    );
    assert!(!d.socket().exists(), "nothing was bound");
}

#[test]
fn the_daemon_refuses_to_start_without_a_private_audit_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("broker.toml");
    std::fs::write(&cfg, config_text("http://127.0.0.1:9", "")).unwrap();
    let (code, err) = serve_once(&cfg);
    assert_eq!(code, Some(6));
    assert!(
        err.contains("signing key") && err.contains("run `mandate init`"),
        "{}",
        err
    );
    assert!(
        mandate_at(&cfg)
            .arg("init")
            .output()
            .unwrap()
            .status
            .success()
    );
    let audit = tmp.path().join("state/audit");
    std::fs::set_permissions(&audit, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (code, err) = serve_once(&cfg);
    assert_eq!(code, Some(6));
    assert!(
        err.contains("mode 755 lets others in; chmod 700 it"),
        "{}",
        err
    );
    std::fs::remove_dir(&audit).unwrap();
    let (code, err) = serve_once(&cfg);
    assert_eq!(code, Some(6));
    assert!(err.contains("create it with `mandate init`"), "{}", err);
    assert!(
        !tmp.path().join("run/mandate.sock").exists(),
        "nothing was bound"
    );
}

/// A small deterministic PRNG (xorshift) so rounds vary without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn kill_9_during_concurrent_issuance_never_loses_an_issued_record() {
    let moto = Moto::start();
    // Every call mints, across 100 restarts: lift the per-agent limits, which (with the
    // live-session index in the store) now hold across restarts too.
    let mut d = Daemon::start(&with_audit(
        &moto.endpoint(),
        "checkpoint_every = 25\n[limits]\nmax_live_sessions = 100000\nmax_issuances = 1000000",
    ));
    let mut rng = Rng(0x9e3779b97f4a7c15);
    let mut received: Vec<String> = Vec::new();
    let rounds = 100;
    for round in 0..rounds {
        // Clients call until the daemon is gone; the kill comes a random time after the first
        // credential of the round, so every round kills during issuance however slow the
        // machine is (a fixed deadline made the count depend on the machine's speed).
        let first = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let clients: Vec<_> = (0..4)
            .map(|i| {
                let config = d.config.clone();
                let first = first.clone();
                std::thread::spawn(move || {
                    let mut got = Vec::new();
                    loop {
                        let mut c = Command::new(MANDATE);
                        clean_env(&mut c);
                        // A custom duration bypasses the cache: every call mints a session.
                        let dur = format!("{}m", 15 + (i % 3));
                        let out = c
                            .arg("--config")
                            .arg(&config)
                            .args(["request", "s3-data", "--duration", &dur])
                            .output()
                            .unwrap();
                        match out.status.code() {
                            Some(0) => {
                                let v: Value = serde_json::from_slice(&out.stdout).unwrap();
                                got.push(v["AccessKeyId"].as_str().unwrap().to_owned());
                                first.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            }
                            _ => break, // the daemon is gone
                        }
                    }
                    got
                })
            })
            .collect();
        let waiting = Instant::now();
        while first.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            assert!(
                waiting.elapsed() < Duration::from_secs(60),
                "round {round}: no credential within 60 s"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_millis(rng.next() % 120));
        d.kill9();
        for c in clients {
            received.extend(c.join().unwrap());
        }
        d.restart();
        let out = d.mandate(&["audit", "verify"]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "round {round}: {}{}",
            stdout(&out),
            stderr(&out)
        );
    }
    d.stop();
    assert!(
        received.len() >= rounds,
        "clients received {} credentials",
        received.len()
    );
    let mut issued: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for r in d.audit() {
        if r["kind"] == "issued" {
            *issued
                .entry(r["access_key_id"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
    }
    for key in &received {
        assert_eq!(
            issued.get(key),
            Some(&1),
            "{key} was handed out but has {:?} issued records",
            issued.get(key)
        );
    }
    let starts = d.audit().iter().filter(|r| r["kind"] == "started").count();
    assert_eq!(starts, rounds + 1);
}

#[test]
fn a_full_audit_log_at_runtime_stops_issuance_before_sts() {
    let moto = Moto::start();
    // 64 KiB file size limit for the daemon (room for the approval store's schema, not for the
    // audit log this test writes); SIGXFSZ ignored so writes fail with EFBIG instead.
    let mut d = Daemon::start_wrapped(
        // No rate limit in the way: this test issues until the log is full.
        &config_text(
            &moto.endpoint(),
            "\n[limits]\nmax_issuances = 100000\nmax_live_sessions = 100000\n",
        ),
        &[
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
        ],
        Some("trap '' XFSZ; ulimit -f 64; exec \"$@\""),
    );
    let mut issued = 0;
    let mut failure = None;
    for i in 0..200 {
        let out = d.mandate(&[
            "request",
            "s3-data",
            "--duration",
            &format!("{}m", 15 + i % 40),
        ]);
        if out.status.code() == Some(0) {
            issued += 1;
            continue;
        }
        assert!(out.stdout.is_empty());
        failure = Some(stderr(&out));
        break;
    }
    let failure = failure.expect("the log filled up");
    assert!(issued > 0);
    assert!(
        failure.starts_with("mandate: audit unavailable"),
        "{failure}"
    );
    let sts_calls = moto.assumed_roles().len();
    for _ in 0..5 {
        let out = d.mandate(&["credential-process", "readonly"]);
        assert_eq!(out.status.code(), Some(6));
        assert!(out.stdout.is_empty());
        assert!(
            stderr(&out).starts_with("mandate: audit unavailable"),
            "{}",
            stderr(&out)
        );
    }
    assert_eq!(
        moto.assumed_roles().len(),
        sts_calls,
        "no AssumeRole after the audit failure"
    );
    let v: Value = serde_json::from_slice(&d.mandate(&["status", "--json"]).stdout).unwrap();
    assert_eq!(v["audit_ok"], false);
    assert!(
        d.log()
            .contains("audit write failed; no more credentials will be issued")
    );
    // Restarted without the limit: the torn tail of the failed write is trimmed and recorded,
    // the log verifies, and every credential that was handed out has its issued record.
    d.kill9();
    d.restart();
    let out = d.mandate(&["audit", "verify"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let audit = d.audit();
    assert!(
        audit.iter().any(|r| r["kind"] == "recovered"),
        "{}",
        d.log()
    );
    assert_eq!(
        audit.iter().filter(|r| r["kind"] == "issued").count(),
        issued
    );
}

#[test]
fn audit_tail_follow_prints_new_records_as_they_are_written() {
    use std::io::BufRead;
    let moto = Moto::start();
    let d = Daemon::start(&config_text(&moto.endpoint(), ""));
    let mut child = mandate_at(&d.config)
        .args([
            "audit", "tail", "-f", "-n", "0", "--kind", "issued", "--json",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let _ = tx.send(line.unwrap());
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    let out = d.mandate(&["credential-process", "s3-data"]);
    assert_eq!(out.status.code(), Some(0));
    let key: Value = serde_json::from_slice(&out.stdout).unwrap();
    let line = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("tail -f printed the new record");
    let rec: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(rec["kind"], "issued");
    assert_eq!(rec["access_key_id"], key["AccessKeyId"]);
    let _ = child.kill();
    let _ = child.wait();
}

/// Review points 3 and 8: one agent cannot fill the audit disk. Four clients hammering cached
/// deliveries with 1 KiB reasons for three seconds make the log grow by a few records, not
/// megabytes: deliveries of one session to one uid share a window (its first record durable
/// before the credential leaves, the rest counted when it closes), cached deliveries count
/// toward `limits.max_deliveries`, refusals over their record budget are counted, not written
/// one by one, and reasons are limited in bytes.
#[test]
fn one_agent_cannot_fill_the_audit_log() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    let moto = Moto::start();
    let mut d = Daemon::start(&config_text(
        &moto.endpoint(),
        "[limits]\nmax_deliveries = 2000\nbreaker_denials = 1000000\n",
    ));
    let ok = |reason: &str| mandate::protocol::Request::Credentials {
        profile: "readonly".into(),
        agent: None,
        reason: Some(reason.into()),
        duration_seconds: None,
        approval_id: None,
    };
    // Mint once; what follows is cached.
    let first = mandate::client::call(&d.socket(), &ok("warm"), Duration::from_secs(10)).unwrap();
    assert!(first.ok, "{first:?}");
    let before = d.audit_bytes();
    let (delivered, limited) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let deadline = Instant::now() + Duration::from_secs(3);
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let (socket, delivered, limited) = (d.socket(), delivered.clone(), limited.clone());
            let req = ok(&format!("{i}{}", "x".repeat(1023)));
            std::thread::spawn(move || {
                while Instant::now() < deadline {
                    let r = mandate::client::call(&socket, &req, Duration::from_secs(10)).unwrap();
                    if r.ok {
                        delivered.fetch_add(1, Ordering::Relaxed);
                    } else {
                        assert_eq!(
                            r.error.as_ref().map(|e| e.code.as_str()),
                            Some("rate_limited"),
                            "{r:?}"
                        );
                        limited.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let (delivered, limited) = (
        delivered.load(Ordering::Relaxed),
        limited.load(Ordering::Relaxed),
    );
    assert_eq!(
        delivered, 2000,
        "the delivery budget holds ({limited} refused)"
    );
    assert!(limited > 0);
    let grown = d.audit_bytes() - before;
    eprintln!("{delivered} deliveries and {limited} refusals grew the audit log by {grown} bytes");
    assert!(
        grown < 64 * 1024,
        "{grown} bytes for {delivered} deliveries"
    );

    // Reasons are limited in bytes, not characters.
    let euro =
        mandate::client::call(&d.socket(), &ok(&"€".repeat(342)), Duration::from_secs(10)).unwrap();
    assert!(!euro.ok);
    let e = euro.error.as_ref().unwrap();
    assert_eq!(e.code, "bad_request");
    assert!(
        e.message.contains("reason is longer than 1024 bytes"),
        "{euro:?}"
    );

    // Nothing is lost in the count: at shutdown every window is closed, and the delivered
    // records add up to every delivery; every refusal is counted once.
    d.stop();
    let audit = d.audit();
    let sum = |kind: &str, code: Option<&str>| -> u64 {
        audit
            .iter()
            .filter(|r| r["kind"] == kind && code.is_none_or(|c| r["code"] == c))
            .map(|r| r["count"].as_u64().unwrap_or(1))
            .sum()
    };
    assert_eq!(sum("delivered", None), delivered);
    let recorded_limited = sum("denied", Some("rate_limited"));
    // Refusals over the budget are counted (into the next refusal record, or a `suppressed`
    // record written every few seconds and at shutdown): every one is accounted for.
    let suppressed = sum("denied", Some("suppressed"));
    assert_eq!(
        recorded_limited + suppressed,
        limited,
        "{recorded_limited} + {suppressed} of {limited} refusals accounted for"
    );
    let written = audit.iter().filter(|r| r["kind"] == "denied").count();
    assert!(
        written <= 25,
        "{written} refusal records for {limited} refusals"
    );
    let out = d.mandate(&["audit", "verify"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

/// Review point 2 through the CLI and the daemon: checkpoints shipped elsewhere
/// (`checkpoint_command`) catch a truncation after the last local checkpoint
/// (`audit verify --against`); a checkpoint file emptied by hand fails `verify` and stops the
/// daemon from starting.
#[test]
fn stripped_checkpoints_and_truncation_are_caught_through_the_cli() {
    let moto = Moto::start();
    let ship_dir = tempfile::tempdir().unwrap();
    let shipped = ship_dir.path().join("shipped.jsonl");
    let extra = format!(
        "[audit]\ncheckpoint_every = 3\ncheckpoint_command = [\"sh\", \"-c\", \"cat >> {}\"]\n",
        shipped.display()
    );
    let mut d = Daemon::start(&config_text(&moto.endpoint(), &extra));
    for _ in 0..10 {
        // Refusals: one durable record each.
        let out = d.mandate(&["credential-process", "breakglass-admin"]);
        assert_eq!(out.status.code(), Some(5));
    }
    d.stop();
    let audit_dir = d.dir.path().join("state/audit");
    let cp_path = audit_dir.join("checkpoints.jsonl");
    let local = std::fs::read_to_string(&cp_path).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::read_to_string(&shipped)
        .unwrap_or_default()
        .lines()
        .count()
        < local.lines().count()
    {
        assert!(Instant::now() < deadline, "checkpoints were not shipped");
        std::thread::sleep(Duration::from_millis(100));
    }
    let ship_arg = shipped.to_str().unwrap();
    let verify = |args: &[&str]| {
        let mut a = vec!["audit", "verify"];
        a.extend_from_slice(args);
        d.mandate(&a)
    };
    assert_eq!(
        verify(&[]).status.code(),
        Some(0),
        "{}",
        stderr(&verify(&[]))
    );
    assert_eq!(verify(&["--against", ship_arg]).status.code(), Some(0));

    // Truncate after an earlier checkpoint, and drop the later local checkpoints to match.
    let lines: Vec<&str> = local.lines().collect();
    assert!(lines.len() >= 4, "{local}");
    let keep = &lines[..lines.len() - 2];
    let last: Value = serde_json::from_str(keep.last().unwrap()).unwrap();
    let seg = audit_dir.join(last["segment"].as_str().unwrap());
    let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    f.set_len(last["offset"].as_u64().unwrap()).unwrap();
    std::fs::write(&cp_path, keep.join("\n") + "\n").unwrap();
    let out = verify(&[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "locally consistent: {}",
        stderr(&out)
    );
    let out = verify(&["--against", ship_arg]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stderr(&out).contains("records were removed from the end"),
        "{}",
        stderr(&out)
    );

    // The checkpoint file emptied: the checkpoints recorded in the chain give it away.
    std::fs::write(&cp_path, "").unwrap();
    let out = verify(&[]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stderr(&out).contains("that the checkpoint file lacks (checkpoints were removed)"),
        "{}",
        stderr(&out)
    );
    let (code, err) = serve_once(&d.config);
    assert_ne!(code, Some(0));
    assert!(err.contains("the checkpoint file lacks"), "{err}");
}
