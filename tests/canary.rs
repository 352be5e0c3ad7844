//! Secret hygiene: every secret key and session token STS returns is a unique canary (the
//! recording proxy swaps them in), the daemon logs at trace level, and every interface is
//! exercised, including failures. Then everything is searched: the daemon's log, every file it
//! and the clients wrote, the stderr of every command, HTTP error bodies, status and audit
//! output, and the daemon's argv and environment. A canary may appear only in the responses
//! meant to carry it.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use common::console;
use common::*;
use serde_json::json;

/// Sorts one command's output: stdout of a success that is meant to carry credentials goes to
/// `intended`, everything else (stderr always) to `elsewhere`.
fn record(
    intended: &mut Vec<String>,
    elsewhere: &mut Vec<(String, String)>,
    what: &str,
    o: Output,
    ok_carries: bool,
) {
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    if o.status.success() && ok_carries {
        intended.push(out);
    } else {
        elsewhere.push((format!("{what} stdout"), out));
    }
    elsewhere.push((
        format!("{what} stderr"),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    ));
}

fn files_under(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        let ft = e.file_type().unwrap();
        if ft.is_dir() {
            files_under(&p, out);
        } else if ft.is_file() {
            out.push(p);
        }
    }
}

#[test]
fn no_secret_appears_anywhere_but_the_intended_response_bodies() {
    let moto = Moto::start();
    let tmp = tempfile::tempdir().unwrap();
    let canaries = tmp.path().join("canaries.txt");
    let proxy = Proxy::start_with(tmp.path(), moto.port, Some(&canaries));
    let port = free_port();
    let token_file = tmp.path().join("box-token");
    let token = mandate::transport::http::new_token();
    std::fs::write(&token_file, &token).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    // The console, signing in at a provider that needs a client secret (a canary too).
    let console_port = free_port();
    let idp_port = free_port();
    let client_secret = format!("CLIENTSECRET{}", mandate::transport::http::new_token());
    let secret_file = tmp.path().join("oidc.secret");
    std::fs::write(&secret_file, &client_secret).unwrap();
    std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut idp = console::node("evil_idp.mjs");
    idp.env(
        "REDIRECT_URI",
        format!("http://localhost:{console_port}/auth/callback"),
    )
    .env("IDP_PORT", idp_port.to_string())
    .env("SUB", "human")
    .env("CLIENT_SECRET", &client_secret);
    let _idp = console::start_node(idp).0;
    let extra = format!(
        "oidc_subject = \"human\"\n[agents.box]\nprofiles = [\"readonly\", \"s3-data\"]\ndefault_profile = \"readonly\"\ntoken_file = \"{}\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n[console]\nlisten = \"127.0.0.1:{console_port}\"\npublic_url = \"http://localhost:{console_port}\"\n[console.oidc]\nissuer = \"http://localhost:{idp_port}\"\nclient_id = \"mandate-console\"\nclient_secret_file = \"{}\"\n",
        token_file.display(),
        secret_file.display()
    );
    // The most verbose log level there is.
    let mut d = Daemon::start_with_env(
        &config_text(&proxy.endpoint(), &extra),
        &[
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("MANDATE_LOG", "trace"),
        ],
    );
    let pid = d.pid().unwrap();

    // Outputs that are meant to carry credentials, and everything else.
    let mut intended: Vec<String> = Vec::new();
    let mut elsewhere: Vec<(String, String)> = Vec::new();
    record(
        &mut intended,
        &mut elsewhere,
        "credential-process",
        d.mandate(&["credential-process", "readonly"]),
        true,
    );
    record(
        &mut intended,
        &mut elsewhere,
        "request",
        d.mandate(&[
            "request",
            "s3-data",
            "--reason",
            "canary run",
            "--duration",
            "20m",
        ]),
        true,
    );
    record(
        &mut intended,
        &mut elsewhere,
        "env",
        d.mandate(&["env", "readonly"]),
        true,
    );
    let mut c = Command::new(MANDATE);
    clean_env(&mut c);
    record(
        &mut intended,
        &mut elsewhere,
        "exec",
        c.arg("--config")
            .arg(&d.config)
            .args(["exec", "s3-data", "--", "env"])
            .output()
            .unwrap(),
        true,
    );
    // Failures of every kind.
    record(
        &mut intended,
        &mut elsewhere,
        "unbound profile",
        d.mandate(&["credential-process", "breakglass-admin"]),
        false,
    );
    record(
        &mut intended,
        &mut elsewhere,
        "approval profile",
        d.mandate(&["credential-process", "deploy-staging"]),
        false,
    );
    record(
        &mut intended,
        &mut elsewhere,
        "bad duration",
        d.mandate(&["request", "s3-data", "--duration", "9h"]),
        false,
    );
    for (code, status) in [
        ("ServiceUnavailable", 503),
        ("Throttling", 400),
        ("ExpiredToken", 403),
        ("AccessDenied", 403),
    ] {
        proxy.inject(json!({"status": status, "code": code, "count": 3}));
        record(
            &mut intended,
            &mut elsewhere,
            code,
            d.mandate(&["request", "s3-data", "--duration", "16m"]),
            false,
        );
    }
    proxy.inject(json!({"count": 0}));
    // HTTP: one success, and error bodies.
    let http = |auth: &str, path: &str| -> String {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let _ = write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n"
        );
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    };
    let ok = http(&token, "/");
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    intended.push(ok);
    for (auth, path) in [
        ("wrong", "/"),
        (token.as_str(), "/profile/breakglass-admin"),
        (token.as_str(), "/nope"),
    ] {
        elsewhere.push((format!("http {path}"), http(auth, path)));
    }
    record(
        &mut intended,
        &mut elsewhere,
        "status",
        d.mandate(&["status", "--json"]),
        false,
    );
    record(
        &mut intended,
        &mut elsewhere,
        "audit tail",
        d.mandate(&["audit", "tail", "-n", "1000", "--json"]),
        false,
    );
    // MCP: every tool's result and the server's stderr, issued (a fresh mint, and one from the
    // cache), pending, refused and hostile paths. Nothing of it is meant to carry a secret.
    let mcp_steps = json!([
        {"call": "list_capabilities"},
        {"call": "request_capability", "args": {"profile": "readonly", "reason": "canary"}},
        {"call": "request_capability", "args": {"profile": "s3-data", "reason": "canary mint"}},
        {"call": "request_capability", "args": {"profile": "deploy-staging", "reason": "canary wait"}},
        {"call": "request_status", "args": {"id": "$pending", "wait_seconds": 2}, "progress": true},
        {"call": "request_capability", "args": {"profile": "breakglass-admin", "reason": "canary"}},
        {"call": "request_capability", "args": {"profile": "readonly", "reason": "x\u{1b}y"}},
        {"call": "which_profile", "args": {"action": "s3:PutObject", "resource": "arn:aws:s3:::team-data/projects/agent/x"}},
    ]);
    let mcp_cmd: Vec<String> = [MANDATE, "--config", &d.config.display().to_string(), "mcp"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    // s3-data's cached session dropped first, so that the MCP request mints a fresh one.
    for verb in ["revoke", "unrevoke"] {
        let o = d.mandate(&[verb, "--profile", "s3-data"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let (mcp, mcp_stderr) = mcp_session(tmp.path(), "canary-mcp", &mcp_steps, &mcp_cmd);
    assert_eq!(
        mcp["steps"][2]["structured"]["cached"], false,
        "a fresh mint: {mcp}"
    );
    assert_eq!(mcp["steps"][2]["structured"]["status"], "issued", "{mcp}");
    assert_eq!(mcp["steps"][3]["structured"]["status"], "pending", "{mcp}");
    elsewhere.push(("mcp tool results".into(), mcp.to_string()));
    elsewhere.push(("mcp stderr".into(), mcp_stderr));
    // The console: every page an approver sees, signed in, with live sessions and a pending
    // request; and refusals.
    let (status, h, body) = console::sign_in_over_http(console_port, idp_port);
    assert_eq!(status, 200, "{body}");
    let cookie = format!(
        "__Host-mandate_session={}",
        console::cookie_value(&h, "__Host-mandate_session").unwrap()
    );
    let pending_id = d
        .mandate(&["approvals", "list", "--json"])
        .stdout
        .split(|b| *b == b'"')
        .map(|w| String::from_utf8_lossy(w).into_owned())
        .find(|w| w.len() == 16 && w.chars().all(|c| c.is_ascii_hexdigit()))
        .expect("a pending request");
    for path in [
        "/".to_owned(),
        "/passkey".to_owned(),
        "/sessions".to_owned(),
        "/controls".to_owned(),
        format!("/requests/{pending_id}"),
        "/nope".to_owned(),
    ] {
        let (status, h, body) =
            console::http(console_port, "GET", &path, &[("Cookie", &cookie)], "");
        assert!(
            status == 200 || status == 303 || status == 404,
            "{path}: {status}"
        );
        elsewhere.push((format!("console {path}"), format!("{h:?}\n{body}")));
    }
    let (status, h, body) = console::http(console_port, "GET", "/sessions", &[], "");
    assert_eq!(status, 401);
    elsewhere.push(("console without a session".into(), format!("{h:?}\n{body}")));
    let (_, h, body) = console::http(
        console_port,
        "POST",
        "/confirm/options",
        &[("Cookie", &cookie), ("Content-Type", "application/json")],
        r#"{"kind":"resume"}"#,
    );
    elsewhere.push(("console refusal".into(), format!("{h:?}\n{body}")));
    // The daemon's argv and environment, read while it runs.
    for f in ["cmdline", "environ"] {
        let bytes = std::fs::read(format!("/proc/{pid}/{f}")).unwrap_or_default();
        elsewhere.push((
            format!("daemon {f}"),
            String::from_utf8_lossy(&bytes).into_owned(),
        ));
    }
    d.stop();
    record(
        &mut intended,
        &mut elsewhere,
        "audit verify",
        d.mandate(&["audit", "verify"]),
        false,
    );
    // Every file under the daemon's directory (log, audit segments, checkpoints, state) and
    // the test's own scratch files, except the proxy's list of canaries and the token file.
    let mut files = Vec::new();
    files_under(d.dir.path(), &mut files);
    files_under(tmp.path(), &mut files);
    for f in files
        .iter()
        .filter(|f| **f != canaries && **f != token_file && **f != secret_file)
    {
        let bytes = std::fs::read(f).unwrap_or_default();
        elsewhere.push((
            f.display().to_string(),
            String::from_utf8_lossy(&bytes).into_owned(),
        ));
    }

    let canaries: Vec<String> = std::fs::read_to_string(&canaries)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert!(
        canaries.len() >= 6,
        "the proxy swapped in canaries: {canaries:?}"
    );
    assert!(canaries.iter().all(|c| c.starts_with("CANARY")));
    // The scan can find them: the intended outputs carry them.
    let carried = canaries
        .iter()
        .filter(|c| intended.iter().any(|o| o.contains(c.as_str())))
        .count();
    assert!(carried >= 2, "intended outputs carry canaries");
    assert!(d.log().len() > 1000, "the daemon logged at trace level");
    let mut hits = Vec::new();
    for (what, text) in &elsewhere {
        for c in &canaries {
            if text.contains(c.as_str()) {
                hits.push(format!("{c} in {what}"));
            }
        }
        // The agent token and the console's client secret are secrets too.
        if text.contains(&token) {
            hits.push(format!("the agent token in {what}"));
        }
        if text.contains(&client_secret) {
            hits.push(format!("the OpenID client secret in {what}"));
        }
    }
    assert!(hits.is_empty(), "secrets leaked:\n{}", hits.join("\n"));
}
