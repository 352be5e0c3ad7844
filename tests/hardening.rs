//! Hardening: exact file modes under umask 000, refusal of files others can write, hostile
//! clients on the socket and the HTTP endpoint, and uid separation.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

const UMASK_000: &str = "umask 000; exec \"$@\"";

#[test]
fn every_file_the_broker_creates_has_its_exact_mode_under_umask_000() {
    let moto = Moto::start();
    let port = free_port();
    let cfg = format!(
        "{}\n[http]\nlisten = \"127.0.0.1:{port}\"\n[audit]\ncheckpoint_every = 2\n",
        config_text(&moto.endpoint(), "")
    );
    let mut d = Daemon::start_wrapped(
        &cfg,
        &[
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
        ],
        Some(UMASK_000),
    );
    assert_eq!(
        d.mandate(&["credential-process", "readonly"]).status.code(),
        Some(0)
    );
    let dir = d.dir.path().to_owned();
    let out = Command::new("bash")
        .args(["-c", UMASK_000, "wrapper", MANDATE, "--config"])
        .arg(&d.config)
        .args(["agent", "add", "box", "--profiles", "readonly"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    // While running: the socket and its directory.
    assert_eq!(mode(&dir.join("run")), 0o700);
    assert_eq!(mode(&dir.join("run/mandate.sock")) & 0o777, 0o600);
    d.stop();
    let expect = [
        ("state", 0o700),
        ("state/audit", 0o700),
        ("state/audit/audit-000001.jsonl", 0o600),
        ("state/audit/checkpoints.jsonl", 0o600),
        ("state/signing.key", 0o600),
        ("state/signing.pub", 0o644),
        ("state/tokens", 0o700),
        ("state/tokens/box", 0o600),
    ];
    for (p, m) in expect {
        assert_eq!(mode(&dir.join(p)), m, "{p}");
    }
    // The config `mandate init` writes.
    let fresh = tempfile::tempdir().unwrap();
    let target = fresh.path().join("conf/broker.toml");
    let out = Command::new("bash")
        .args(["-c", UMASK_000, "wrapper", MANDATE, "--config"])
        .arg(&target)
        .args(["init", "--profiles"])
        .arg(root().join("profiles"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(mode(&target), 0o600);
    assert_eq!(mode(&fresh.path().join("conf")), 0o700);
    assert_eq!(mode(&fresh.path().join("conf/state")), 0o700);
}

#[test]
fn the_daemon_refuses_files_others_can_write_naming_them() {
    let tmp = tempfile::tempdir().unwrap();
    let profiles = tmp.path().join("profiles");
    std::fs::create_dir(&profiles).unwrap();
    std::fs::copy(
        root().join("profiles/readonly.toml"),
        profiles.join("readonly.toml"),
    )
    .unwrap();
    std::fs::copy(
        root().join("profiles/s3-data.toml"),
        profiles.join("s3-data.toml"),
    )
    .unwrap();
    std::fs::copy(
        root().join("profiles/deploy-staging.toml"),
        profiles.join("deploy-staging.toml"),
    )
    .unwrap();
    let token = tmp.path().join("token");
    std::fs::write(&token, mandate::transport::http::new_token()).unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cfg = tmp.path().join("broker.toml");
    let text = format!(
        "{}\n[agents.box]\nprofiles = [\"readonly\"]\ntoken_file = \"{}\"\n",
        config_with_profiles("http://127.0.0.1:9", &profiles, ""),
        token.display()
    );
    std::fs::write(&cfg, &text).unwrap();
    assert!(
        mandate_at(&cfg)
            .arg("init")
            .output()
            .unwrap()
            .status
            .success()
    );
    let chmod =
        |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();

    chmod(&cfg, 0o666);
    let (code, err) = serve_once(&cfg);
    assert_eq!(code, Some(3));
    assert!(
        err.contains(&format!(
            "config {} is writable by group or others",
            cfg.display()
        )),
        "{err}"
    );
    chmod(&cfg, 0o600);

    let prof = profiles.join("s3-data.toml");
    chmod(&prof, 0o646);
    let (code, err) = serve_once(&cfg);
    assert_eq!(code, Some(3));
    assert!(
        err.contains(&format!(
            "profile {} is writable by group or others",
            prof.display()
        )),
        "{err}"
    );
    chmod(&prof, 0o644);

    chmod(&token, 0o622);
    let (code, err) = serve_once(&cfg);
    assert_eq!(code, Some(3));
    assert!(
        err.contains(&format!(
            "token file {} is writable by group or others",
            token.display()
        )),
        "{err}"
    );
    chmod(&token, 0o600);

    // A profile that is a symlink into a directory others control.
    let open = tempfile::tempdir().unwrap();
    chmod(open.path(), 0o777);
    let evil = open.path().join("readonly.toml");
    std::fs::copy(root().join("profiles/readonly.toml"), &evil).unwrap();
    chmod(&evil, 0o644);
    std::fs::remove_file(profiles.join("readonly.toml")).unwrap();
    std::os::unix::fs::symlink(&evil, profiles.join("readonly.toml")).unwrap();
    let (code, err) = serve_once(&cfg);
    assert_eq!(code, Some(3));
    assert!(
        err.contains(&format!(
            "profile {} is not safe: {} can be changed by group or others",
            profiles.join("readonly.toml").display(),
            open.path().display()
        )),
        "{err}"
    );
    std::fs::remove_file(profiles.join("readonly.toml")).unwrap();
    std::fs::copy(
        root().join("profiles/readonly.toml"),
        profiles.join("readonly.toml"),
    )
    .unwrap();

    let key = tmp.path().join("state/signing.key");
    chmod(&key, 0o640);
    let (code, err) = serve_once(&cfg);
    assert_eq!(code, Some(6));
    assert!(
        err.contains(&format!(
            "signing key {} is readable or writable by others",
            key.display()
        )),
        "{err}"
    );
    chmod(&key, 0o600);
    std::fs::remove_file(&key).unwrap();
    std::os::unix::fs::symlink(&evil, &key).unwrap();
    let (code, err) = serve_once(&cfg);
    assert_eq!(code, Some(6));
    assert!(
        err.contains(&format!("signing key {} is a symlink", key.display())),
        "{err}"
    );
    assert!(
        !tmp.path().join("run/mandate.sock").exists(),
        "nothing was ever bound"
    );
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .unwrap()
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    kib / 1024.0
}

/// Raises this process's open-file limit so it can hold many client sockets.
#[allow(unsafe_code)]
fn raise_nofile(want: u64) {
    // SAFETY: plain system calls on a local struct.
    unsafe {
        let mut l = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut l), 0);
        assert!(
            l.rlim_max >= want,
            "the hard open-file limit ({}) is below {want}: raise it (ulimit -Hn)",
            l.rlim_max
        );
        l.rlim_cur = l.rlim_cur.max(want);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &l), 0);
    }
}

#[test]
fn hostile_socket_clients_are_bounded_and_legitimate_clients_are_still_served() {
    raise_nofile(12_000);
    let moto = Moto::start();
    let d = Daemon::start(&config_text(&moto.endpoint(), ""));
    let pid = d.pid().unwrap();
    let before = rss_mib(pid);
    // 10,000 idle connections, from ten uids (one uid may hold at most 1,024: see
    // `an_agent_cannot_crowd_approvers_off_the_socket`).
    open_socket(&d);
    let floods: Vec<std::process::Child> =
        (0..10).map(|i| flood(&d, 60_001 + i, 1000, 8)).collect();
    std::thread::sleep(Duration::from_millis(2500));
    let with_idle = rss_mib(pid);
    // A legitimate client is served meanwhile.
    let out = d.mandate(&["credential-process", "readonly"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    eprintln!("RSS {before:.1} MiB -> {with_idle:.1} MiB with 10,000 idle connections");
    // The stated bound: about 1 KiB per idle connection (src/transport/socket.rs); allow 3 KiB.
    assert!(
        with_idle - before < 30.0,
        "10,000 idle connections grew RSS by {:.1} MiB",
        with_idle - before
    );
    let held: usize = floods.into_iter().map(held_by).sum();
    assert!(held >= 10_000, "the ten uids held {held} connections");
    let exchange = |bytes: &[u8]| -> Value {
        let mut s = UnixStream::connect(d.socket()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let _ = s.write_all(bytes);
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        serde_json::from_str(out.trim()).unwrap_or(Value::Null)
    };
    // Oversized, malformed, invalid UTF-8, unknown fields.
    let big = vec![b'a'; 64 * 1024];
    for (what, bytes) in [
        ("oversized", &big[..]),
        ("malformed", &b"{\"op\":\n"[..]),
        ("invalid UTF-8", &b"\xff\xfe\xfd\n"[..]),
        (
            "an identity claim",
            &b"{\"op\":\"credentials\",\"profile\":\"readonly\",\"uid\":0}\n"[..],
        ),
    ] {
        let v = exchange(bytes);
        assert_eq!(v["ok"], false, "{what}: {v}");
        assert_eq!(v["error"]["code"], "bad_request", "{what}: {v}");
    }
    // A slow client (one byte per second) is cut off after the 5 s read timeout.
    let mut slow = UnixStream::connect(d.socket()).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let t = Instant::now();
    let mut reply = String::new();
    for b in b"{\"op\":\"status\"" {
        if slow.write_all(&[*b]).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
        if t.elapsed() > Duration::from_secs(8) {
            break;
        }
    }
    let _ = slow.read_to_string(&mut reply);
    assert!(reply.contains("\"timeout\""), "{reply}");
    // Still serving afterwards (the floods have ended).
    let out = d.mandate(&["credential-process", "s3-data"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn hostile_http_clients_are_bounded_too() {
    raise_nofile(4_000);
    let moto = Moto::start();
    let port = free_port();
    let token_dir = tempfile::tempdir().unwrap();
    let token_file = token_dir.path().join("t");
    let token = mandate::transport::http::new_token();
    std::fs::write(&token_file, &token).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let extra = format!(
        "\n[agents.box]\nprofiles = [\"readonly\"]\ndefault_profile = \"readonly\"\ntoken_file = \"{}\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n",
        token_file.display()
    );
    let _daemon = Daemon::start(&config_text(&moto.endpoint(), &extra));
    let idle: Vec<std::net::TcpStream> = (0..2_000)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    let get = |extra: &str| -> String {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let _ = write!(
            s,
            "GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: {token}\r\n{extra}Connection: close\r\n\r\n"
        );
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    };
    assert!(
        get("").starts_with("HTTP/1.1 200"),
        "served despite 2,000 idle connections"
    );
    // An oversized head is refused without a credential.
    let huge = format!("X-Pad: {}\r\n", "a".repeat(40 * 1024));
    let out = get(&huge);
    assert!(!out.contains("SecretAccessKey"), "{out}");
    assert!(
        out.is_empty() || out.starts_with("HTTP/1.1 431"),
        "{}",
        &out[..out.len().min(200)]
    );
    // A head sent one byte per second is cut off by the 5 s header timeout.
    let mut slow = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let t = Instant::now();
    for b in b"GET / HTTP/1.1\r\nHost: 127.0.0.1" {
        if slow.write_all(&[*b]).is_err() || t.elapsed() > Duration::from_secs(8) {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let mut rest = String::new();
    let _ = slow.read_to_string(&mut rest);
    assert!(!rest.contains("200 OK"), "{rest}");
    assert!(t.elapsed() < Duration::from_secs(15));
    drop(idle);
    assert!(get("").starts_with("HTTP/1.1 200"));
}

fn as_nobody(args: &[&str]) -> std::process::Output {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args(args)
        .env_clear()
        .output()
        .expect("setpriv (util-linux)")
}

#[test]
fn another_uid_cannot_use_the_socket_or_read_the_audit_log_tokens_or_key() {
    let moto = Moto::start();
    let token_dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "\n[agents.box]\nprofiles = [\"readonly\"]\ntoken_file = \"{}\"\n",
        token_dir.path().join("box").display()
    );
    let token = token_dir.path().join("box");
    std::fs::write(&token, mandate::transport::http::new_token()).unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let d = Daemon::start(&config_text(&moto.endpoint(), &extra));
    let out = d.mandate(&["agent", "rotate", "box"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        d.mandate(&["credential-process", "readonly"]).status.code(),
        Some(0)
    );
    // No core dumps: they would hold credentials.
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", d.pid().unwrap())).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    assert_eq!(
        core.split_whitespace().collect::<Vec<_>>()[4..6],
        ["0", "0"],
        "{core}"
    );
    let dir = d.dir.path();
    let secret_files = [
        dir.join("state/audit/audit-000001.jsonl"),
        dir.join("state/signing.key"),
        token_dir.path().join("box"),
    ];
    // Even with every directory on the way opened up, the files themselves are private.
    for p in [
        dir.to_path_buf(),
        dir.join("state"),
        dir.join("state/audit"),
        dir.join("run"),
        token_dir.path().to_path_buf(),
    ] {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    for f in &secret_files {
        let out = as_nobody(&["cat", f.to_str().unwrap()]);
        assert!(!out.status.success(), "nobody read {}", f.display());
        assert!(
            stderr(&out).contains("Permission denied"),
            "{}",
            stderr(&out)
        );
        assert!(out.stdout.is_empty());
    }
    // The socket: the file mode stops nobody, and so does the peer-uid check if it is opened.
    let bin = dir.join("mandate-client");
    std::fs::copy(MANDATE, &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&d.config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let bin = bin.to_str().unwrap();
    let out = as_nobody(&[
        bin,
        "--config",
        d.config.to_str().unwrap(),
        "credential-process",
        "readonly",
    ]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    std::fs::set_permissions(d.socket(), std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = as_nobody(&[
        bin,
        "--config",
        d.config.to_str().unwrap(),
        "credential-process",
        "readonly",
    ]);
    assert_eq!(out.status.code(), Some(5));
    assert_eq!(
        stderr(&out),
        "mandate: uid 65534 is not bound to any agent in the broker config\n"
    );
    assert!(out.stdout.is_empty());
}

/// Review point 1: helpers (`[audit] checkpoint_command`, `[notify] command`) run with a
/// cleared environment (never the base credentials), and a helper program that others could
/// change, or one under a directory others can write, stops the daemon from starting, naming it.
#[test]
fn helpers_get_no_base_credentials_and_untrusted_helpers_are_refused() {
    let moto = Moto::start();
    let out_dir = tempfile::tempdir().unwrap();
    let env_file = out_dir.path().join("checkpoint-env");
    let extra = format!(
        "[audit]\ncheckpoint_every = 1\ncheckpoint_command = [\"sh\", \"-c\", \"env > {}.tmp; mv {}.tmp {}\"]\n",
        env_file.display(),
        env_file.display(),
        env_file.display()
    );
    let d = Daemon::start_with_env(
        &config_text(&moto.endpoint(), &extra),
        &[
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "base-secret-canary"),
            ("AWS_SESSION_TOKEN", "base-token-canary"),
        ],
    );
    assert_eq!(
        d.mandate(&["credential-process", "readonly"]).status.code(),
        Some(0)
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !env_file.exists() {
        assert!(
            Instant::now() < deadline,
            "the checkpoint command never ran:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let env = std::fs::read_to_string(&env_file).unwrap();
    assert!(!env.contains("canary") && !env.contains("AWS_"), "{env}");
    assert!(env.contains("PATH=/usr/local/bin:/usr/bin:/bin"), "{env}");
    drop(d);

    // Untrusted programs: in a directory others can write (two levels up), or writable itself.
    let tmp = tempfile::tempdir().unwrap();
    let open = tmp.path().join("open");
    std::fs::create_dir_all(open.join("bin")).unwrap();
    let chmod =
        |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    chmod(&open, 0o777);
    chmod(&open.join("bin"), 0o755);
    let prog = open.join("bin/ship");
    std::fs::write(&prog, "#!/bin/sh\ncat > /dev/null\n").unwrap();
    chmod(&prog, 0o755);
    for key in ["[audit]\ncheckpoint_command", "[notify]\ncommand"] {
        let cfg = tmp.path().join("broker.toml");
        std::fs::write(
            &cfg,
            config_text(
                &moto.endpoint(),
                &format!("{key} = [\"{}\"]\n", prog.display()),
            ),
        )
        .unwrap();
        chmod(&cfg, 0o600);
        let (code, err) = serve_once(&cfg);
        assert_eq!(code, Some(3), "{err}");
        let what = if key.starts_with("[audit]") {
            "audit.checkpoint_command"
        } else {
            "notify.command"
        };
        assert!(
            err.contains(&format!(
                "{what} {} is not safe: {} can be changed by group or others",
                prog.display(),
                open.display()
            )),
            "{err}"
        );
    }
    chmod(&open, 0o755);
    chmod(&prog, 0o775);
    let cfg = tmp.path().join("broker.toml");
    std::fs::write(
        &cfg,
        config_text(
            &moto.endpoint(),
            &format!("[notify]\ncommand = [\"{}\"]\n", prog.display()),
        ),
    )
    .unwrap();
    let (code, err) = serve_once(&cfg);
    assert_eq!(code, Some(3), "{err}");
    assert!(
        err.contains(&format!(
            "notify.command {} is writable by group or others; run chmod go-w on it",
            prog.display()
        )),
        "{err}"
    );
    assert!(!tmp.path().join("run").exists(), "nothing was bound");
}

/// Opens the daemon's socket (and its directories) to other uids: only the peer-uid checks stand.
fn open_socket(d: &Daemon) {
    for p in [d.dir.path(), &d.dir.path().join("run")] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(d.socket(), std::fs::Permissions::from_mode(0o666)).unwrap();
}

/// Starts `flood_helper` as `uid`, holding up to `n` connections for `secs` seconds.
fn flood(d: &Daemon, uid: u32, n: usize, secs: u64) -> std::process::Child {
    let helper = d.dir.path().join("flood-helper");
    if !helper.exists() {
        std::fs::copy(std::env::current_exe().unwrap(), &helper).unwrap();
        std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let until = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + secs;
    Command::new("setpriv")
        .args([
            &format!("--reuid={uid}"),
            &format!("--regid={uid}"),
            "--clear-groups",
        ])
        .arg(&helper)
        .args([
            "--ignored",
            "--exact",
            "flood_helper",
            "--nocapture",
            "--test-threads=1",
        ])
        .env_clear()
        .env("MANDATE_FLOOD_SOCKET", d.socket())
        .env("MANDATE_FLOOD_UNTIL", until.to_string())
        .env("MANDATE_FLOOD_N", n.to_string())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("setpriv (util-linux)")
}

/// The most connections a `flood` child held at once (it reports when it ends).
fn held_by(child: std::process::Child) -> usize {
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.split("HELD=")
        .nth(1)
        .and_then(|n| n.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the flood helper did not report: {text}"))
}

/// Run as a child by `an_agent_cannot_crowd_approvers_off_the_socket`, as the agent's uid:
/// keeps as many connections to the socket open as it can, reconnecting those the daemon
/// closes, until MANDATE_FLOOD_UNTIL (unix seconds). Prints how many it held at most.
#[test]
#[ignore = "helper: run as a child process by an_agent_cannot_crowd_approvers_off_the_socket"]
fn flood_helper() {
    use std::os::unix::net::UnixStream;
    let socket = std::env::var("MANDATE_FLOOD_SOCKET").expect("run by the parent test");
    let until: u64 = std::env::var("MANDATE_FLOOD_UNTIL")
        .unwrap()
        .parse()
        .unwrap();
    let want: usize = std::env::var("MANDATE_FLOOD_N").unwrap().parse().unwrap();
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    // Still open and unanswered: a non-blocking read would block.
    let open = |s: &UnixStream| {
        s.set_nonblocking(true).ok();
        let mut b = [0u8; 1];
        matches!((&*s).read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    };
    let mut held: Vec<UnixStream> = Vec::new();
    let mut most = 0;
    while now() < until {
        // Drop connections the daemon has answered or closed (busy, timeout).
        held.retain(open);
        while held.len() < want {
            match UnixStream::connect(&socket) {
                Ok(s) => held.push(s),
                Err(_) => break,
            }
        }
        // Count only the ones the daemon kept (not answered "busy" at once).
        std::thread::sleep(Duration::from_millis(50));
        held.retain(open);
        most = most.max(held.len());
    }
    println!("HELD={most}");
}

/// Review point 4: while one agent's uid holds connections up to every limit (the review used
/// 16,400), an approver's `mandate pause` and `mandate status` get through 20 times out of 20.
#[test]
fn an_agent_cannot_crowd_approvers_off_the_socket() {
    raise_nofile(19_500);
    let moto = Moto::start();
    let extra = "[agents.bot]\nprofiles = [\"readonly\"]\nuids = [65534]\n";
    let d = Daemon::start(&config_text(&moto.endpoint(), extra));
    open_socket(&d);
    let flood = flood(&d, 65_534, 17_000, 25);
    std::thread::sleep(Duration::from_secs(6));
    let mut failures = Vec::new();
    for i in 0..20 {
        let args: &[&str] = if i % 2 == 0 {
            &["pause", "--reason", "flood drill"]
        } else {
            &["status"]
        };
        let out = d.mandate(args);
        if !out.status.success() {
            failures.push(format!("{args:?}: {}", stderr(&out)));
        }
        if i % 2 == 0 {
            let _ = d.mandate(&["resume"]);
        }
    }
    let held = held_by(flood);
    // (Client-side, the kernel's listen backlog counts too, so this can exceed the daemon's
    // per-uid limit a little.)
    eprintln!("the agent held up to {held} connections");
    assert!(
        held >= mandate::transport::socket::MAX_PER_UID,
        "the flood reached the per-uid limit: {held}"
    );
    assert!(
        failures.is_empty(),
        "{} of 20 failed: {failures:#?}",
        failures.len()
    );
}
