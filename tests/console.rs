//! The approval console against real peers: the daemon (its console on a loopback port), a
//! real OpenID provider (npm oidc-provider, tests/console/idp.mjs) or a misbehaving one
//! (tests/console/evil_idp.mjs), Debian's Chromium driven by Playwright with a virtual
//! passkey authenticator (tests/console/e2e.mjs), and moto for STS.
//!
//! Set MANDATE_SCREENSHOTS=docs to refresh the screenshots the README links.

mod common;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use common::console::{
    cookie_value, evil_idp, header, http, node, set_mode, sign_in_over_http, start_node,
};
use common::{Daemon, Guard, Moto};
use serde_json::Value;

/// The real provider, sending browsers back to the console on `console_port`.
fn real_idp(console_port: u16) -> (Guard, String) {
    let mut c = node("idp.mjs");
    c.env(
        "REDIRECT_URIS",
        format!("http://localhost:{console_port}/auth/callback"),
    );
    let (g, v) = start_node(c);
    (g, v["issuer"].as_str().unwrap().to_owned())
}

/// A profile only peers can approve (one of them), beside the repository's profiles.
fn profiles() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(common::root().join("profiles")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.path().join(e.file_name())).unwrap();
    }
    let deploy = std::fs::read_to_string(dir.path().join("deploy-staging.toml")).unwrap();
    std::fs::write(
        dir.path().join("peer-deploy.toml"),
        deploy.replace("approval = \"operator\"", "approval = { peers = 1 }"),
    )
    .unwrap();
    dir
}

struct Setup {
    d: Daemon,
    port: u16,
    _moto: Moto,
    _profiles: tempfile::TempDir,
}

/// A daemon with its console on `port`, signing in at `issuer`; `extra` goes into the config.
fn daemon(port: u16, issuer: &str, console_extra: &str, extra: &str) -> Setup {
    let moto = Moto::start();
    let profiles = profiles();
    let config = common::config_with_profiles(
        &moto.endpoint(),
        profiles.path(),
        &format!(
            r#"oidc_subject = "human"

[approvers.peer-1]
oidc_subject = "peer-1"

[approvers.peer-2]
email = "peer-2@example.test"

[console]
listen = "127.0.0.1:{port}"
public_url = "http://localhost:{port}"
{console_extra}

[console.oidc]
issuer = "{issuer}"
client_id = "mandate-console"
{extra}"#
        ),
    )
    .replace(
        r#"profiles = ["readonly", "s3-data", "deploy-staging"]"#,
        r#"profiles = ["readonly", "s3-data", "deploy-staging", "peer-deploy"]"#,
    );
    let d = Daemon::start(&config);
    common::wait_until("the console", Duration::from_secs(10), || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    Setup {
        d,
        port,
        _moto: moto,
        _profiles: profiles,
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Opens a request for `profile` (exit 5, pending); its id.
fn pending(d: &Daemon, args: &[&str]) -> String {
    let o = d.mandate(args);
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    let e = stderr(&o);
    let id = e
        .split("request ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .unwrap_or_else(|| panic!("no request id in {e:?}"))
        .to_owned();
    assert_eq!(id.len(), 16, "{e}");
    id
}

/// Runs a browser scenario; what it saw.
fn scenario(port: u16, name: &str, env: &[(&str, &str)]) -> Value {
    let mut c = node("e2e.mjs");
    c.arg(name)
        .env("CONSOLE_URL", format!("http://localhost:{port}"))
        .stderr(Stdio::inherit());
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().last().unwrap_or_default();
    let v: Value =
        serde_json::from_str(last).unwrap_or_else(|_| panic!("scenario {name} printed {text:?}"));
    assert!(out.status.success(), "scenario {name} failed: {v:#}");
    v
}

/// Records of a kind, with a code if given.
fn records<'a>(audit: &'a [Value], f: impl Fn(&Value) -> bool + 'a) -> Vec<&'a Value> {
    audit.iter().filter(|r| f(r)).collect()
}

fn screenshots() -> Option<PathBuf> {
    std::env::var_os("MANDATE_SCREENSHOTS").map(|d| {
        let p = Path::new(&d);
        if p.is_absolute() {
            p.to_owned()
        } else {
            common::root().join(p)
        }
    })
}

#[test]
fn a_peer_approves_in_the_browser_and_the_operator_cannot_cast_the_peer_vote() {
    let port = common::free_port();
    let (_idp, issuer) = real_idp(port);
    let s = daemon(port, &issuer, "", "");
    let d = &s.d;

    // The agent asks; a peer approves in Chromium, with the keyboard and a passkey.
    let id = pending(d, &["credential-process", "peer-deploy"]);
    let shots = screenshots();
    let mut env = vec![("LOGIN", "peer-1"), ("REQUEST", id.as_str())];
    let (dir, shot);
    if let Some(p) = &shots {
        // A request with the agent's reason, for the pictures.
        shot = pending(
            d,
            &[
                "request",
                "peer-deploy",
                "--reason",
                "Ship the fix for the staging checkout timeout (PR #482)",
                "--duration",
                "20m",
            ],
        );
        dir = p.display().to_string();
        env.push(("SHOTS", &dir));
        env.push(("SHOT_REQUEST", &shot));
    }
    let seen = scenario(s.port, "approve", &env);
    assert_eq!(
        seen["first_page"], "/passkey",
        "first sign-in registers a passkey"
    );
    assert_eq!(seen["registered"], "Your passkey is registered.");
    assert_eq!(seen["unlabelled_home"], serde_json::json!([]));
    assert_eq!(seen["unlabelled_request"], serde_json::json!([]));
    let text = seen["page_text"].as_str().unwrap();
    for shown in [
        "Agent claude",
        "Operator human",
        "Reason (the agent's own claim, not verified)",
        "Profile peer-deploy",
        "Role arn:aws:iam::",
        "Duration 1800 s",
        "Needs 1 peer approver other than the operator",
        "May still vote: peer-1, peer-2",
        "What an approved session could do that the agent's standing profiles cannot",
        "Destroy: 2 actions",
        "cloudformation:DeleteStack",
        "The exact session policy",
        "The agent's recent audit records",
        "pending",
    ] {
        assert!(text.contains(shown), "{shown:?} missing from {text}");
    }
    // Destructive classes come first.
    assert!(
        text.find("Destroy:").unwrap() < text.find("Escalate:").unwrap(),
        "{text}"
    );
    assert!(
        seen["result"]
            .as_str()
            .unwrap()
            .starts_with(&format!("Approved: request {id}"))
    );

    // The agent's credential_process now succeeds with the approval.
    let o = d.mandate(&["credential-process", "peer-deploy"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let creds: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(creds["AccessKeyId"].as_str().unwrap().starts_with("ASIA"));

    // The vote is audited with the approver's subject and passkey, and is in the request.
    let audit = d.audit();
    let votes = records(&audit, |r| {
        r["kind"] == "approved" && r["approval_id"] == id.as_str()
    });
    assert_eq!(votes.len(), 1, "{audit:#?}");
    assert_eq!(votes[0]["approver"], "peer-1");
    assert_eq!(votes[0]["oidc_subject"], "peer-1");
    assert_eq!(votes[0]["note"], "looks right to me");
    let passkey = votes[0]["passkey"].as_str().unwrap().to_owned();
    assert!(passkey.len() >= 16, "{passkey}");
    let registered = records(&audit, |r| {
        r["kind"] == "console" && r["decision"] == "passkey_registered"
    });
    assert_eq!(registered[0]["passkey"], passkey.as_str());
    assert_eq!(
        records(&audit, |r| r["kind"] == "console"
            && r["decision"] == "signed_in")
        .len(),
        1
    );
    let issued = records(&audit, |r| {
        r["kind"] == "issued" && r["approval_id"] == id.as_str()
    });
    assert_eq!(issued.len(), 1, "{audit:#?}");

    // The operator, signed in, cannot cast the peer vote: the button says why, and a vote
    // forced through the API with a real assertion is refused by the broker and audited.
    let id2 = pending(
        d,
        &[
            "request",
            "peer-deploy",
            "--reason",
            "second deploy",
            "--duration",
            "20m",
        ],
    );
    let op = scenario(s.port, "operator", &[("LOGIN", "human"), ("REQUEST", &id2)]);
    assert_eq!(op["approve_disabled"], true);
    assert_eq!(op["described_by"], "why-not");
    assert_eq!(
        op["why_not"],
        "You are agent claude's operator: the operator never counts as a peer approver, so your approval cannot count here."
    );
    assert_eq!(op["forced"]["status"], 403, "{op:#}");
    let err = op["forced"]["json"]["error"].as_str().unwrap();
    assert!(err.contains("operator"), "{err}");
    let audit = d.audit();
    let refused = records(&audit, |r| {
        r["kind"] == "denied" && r["code"] == "vote_refused" && r["oidc_subject"] == "human"
    });
    assert_eq!(refused.len(), 1, "{audit:#?}");
    assert!(refused[0]["passkey"].is_string());
    let list = d.mandate(&["approvals", "list", "--json"]);
    let list: Value = serde_json::from_slice(&list.stdout).unwrap();
    let r2 = list
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id2.as_str())
        .unwrap();
    assert_eq!(r2["status"], "pending");
    assert_eq!(r2["votes"], serde_json::json!([]));
}

#[test]
fn refusals_at_the_console_are_audited() {
    let port = common::free_port();
    let (_idp, issuer) = real_idp(port);
    let s = daemon(port, &issuer, "", "\n[approvals]\npending_ttl = \"60s\"\n");
    let d = &s.d;
    let expiring = pending(
        d,
        &[
            "request",
            "peer-deploy",
            "--reason",
            "will expire",
            "--duration",
            "15m",
        ],
    );
    let opened = Instant::now();

    // No session: refused, audited.
    let (status, _, body) = http(
        port,
        "POST",
        "/confirm/options",
        &[("Content-Type", "application/json")],
        r#"{"kind":"resume"}"#,
    );
    assert_eq!(status, 401, "{body}");
    assert_eq!(body, r#"{"error":"sign in first"}"#);

    // Wait for the first request to expire (pending_ttl's minimum is a minute).
    let left = Duration::from_secs(62).saturating_sub(opened.elapsed());
    std::thread::sleep(left);
    let open = |reason: &str, duration: &str| {
        pending(
            d,
            &[
                "request",
                "peer-deploy",
                "--reason",
                reason,
                "--duration",
                duration,
            ],
        )
    };
    let a = open("a", "16m");
    let b = open("b", "17m");
    let decided = open("c", "18m");
    let o = d.mandate(&["reject", &decided, "--note", "no"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let seen = scenario(
        port,
        "attacks",
        &[
            ("LOGIN", "peer-2"),
            ("REQ_A", &a),
            ("REQ_B", &b),
            ("REQ_DECIDED", &decided),
            ("REQ_EXPIRED", &expiring),
        ],
    );
    let csrf =
        r#"{"error":"the form is stale or forged (CSRF token); reload the page and try again"}"#;
    for k in ["csrf_missing", "csrf_wrong"] {
        assert_eq!(seen[k]["status"], 403, "{k}: {seen:#}");
        assert_eq!(seen[k]["json"].to_string(), csrf);
    }
    assert_eq!(seen["other_request"]["status"], 403, "{seen:#}");
    assert_eq!(
        seen["other_request"]["json"]["error"],
        "the passkey answer was made for another action"
    );
    assert_eq!(seen["used"]["status"], 200, "{seen:#}");
    assert_eq!(
        seen["used"]["json"]["message"],
        format!("Approved: request {a} can now be redeemed by the agent.")
    );
    assert_eq!(seen["replayed"]["status"], 403);
    assert_eq!(
        seen["replayed"]["json"]["error"],
        "this confirmation is unknown, expired or already used: start again"
    );
    assert_eq!(seen["replayed_fresh_nonce"]["status"], 403, "{seen:#}");
    assert_eq!(
        seen["replayed_fresh_nonce"]["json"]["error"],
        "the passkey answer was made for another action"
    );
    assert_eq!(
        seen["decided_page"],
        "This request is rejected and can no longer be voted on."
    );
    assert_eq!(seen["decided"]["status"], 403, "{seen:#}");
    assert_eq!(
        seen["decided"]["json"]["error"],
        format!("request {decided} is rejected and can no longer be voted on")
    );
    assert_eq!(
        seen["expired_page"],
        "This request is expired and can no longer be voted on."
    );
    assert_eq!(seen["expired"]["status"], 403, "{seen:#}");
    assert_eq!(
        seen["expired"]["json"]["error"],
        format!("request {expiring} is expired and can no longer be voted on")
    );
    // B got no vote from A's assertion.
    let list: Value =
        serde_json::from_slice(&d.mandate(&["approvals", "list", "--json"]).stdout).unwrap();
    let rb = list
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == b.as_str())
        .unwrap();
    assert_eq!(rb["votes"], serde_json::json!([]));

    let audit = d.audit();
    let denied = |code: &str| records(&audit, |r| r["kind"] == "denied" && r["code"] == code).len();
    assert_eq!(denied("console_no_session"), 1, "{audit:#?}");
    assert_eq!(denied("console_csrf"), 2);
    assert_eq!(denied("console_assertion_other_action"), 2);
    assert_eq!(denied("console_assertion_replayed_or_unknown"), 1);
    let closed = records(&audit, |r| {
        r["kind"] == "denied" && r["code"] == "vote_refused" && r["oidc_subject"] == "peer-2"
    });
    assert_eq!(closed.len(), 2, "{audit:#?}");
    for r in &closed {
        assert!(r["passkey"].is_string(), "{r}");
    }
}

#[test]
fn an_expired_session_is_refused_and_audited() {
    let port = common::free_port();
    let (_idp, issuer) = real_idp(port);
    let s = daemon(port, &issuer, "session_lifetime = \"2s\"", "");
    let seen = scenario(port, "expired", &[("LOGIN", "peer-1"), ("WAIT_MS", "3000")]);
    assert_eq!(seen["signed_in"], "/passkey");
    assert_eq!(seen["post"]["status"], 401, "{seen:#}");
    assert_eq!(
        seen["post"]["json"]["error"],
        "your sign-in expired; sign in again"
    );
    // Once an expired session is refused, the browser's cookie is cleared: the next page
    // asks to sign in.
    assert!(
        seen["page"].as_str().unwrap().contains("Sign in"),
        "{seen:#}"
    );
    let audit = s.d.audit();
    let expired = records(&audit, |r| {
        r["kind"] == "denied" && r["code"] == "console_session_expired"
    });
    assert_eq!(expired.len(), 1, "{audit:#?}");
}

#[test]
fn id_tokens_that_do_not_verify_sign_nobody_in() {
    let port = common::free_port();
    let idp_port = common::free_port();
    let issuer = format!("http://localhost:{idp_port}");
    let s = daemon(port, &issuer, "", "");
    let _idp = evil_idp(port, idp_port, "ok", "peer-1");
    for (mode, sub, code) in [
        ("wrong_aud", "peer-1", "console_id_token_audience"),
        ("wrong_iss", "peer-1", "console_id_token_issuer"),
        ("wrong_nonce", "peer-1", "console_id_token_nonce"),
        ("bad_sig", "peer-1", "console_id_token_signature"),
        ("expired", "peer-1", "console_id_token_expired"),
        ("alg_none", "peer-1", "console_id_token_algorithm"),
        ("ok", "stranger", "console_not_an_approver"),
    ] {
        set_mode(idp_port, mode, sub);
        let (status, h, body) = sign_in_over_http(port, idp_port);
        assert_eq!(status, 403, "{mode}: {body}");
        assert!(
            cookie_value(&h, "__Host-mandate_session").is_none(),
            "{mode}"
        );
        let audit = s.d.audit();
        let n = records(&audit, |r| r["kind"] == "denied" && r["code"] == code).len();
        let codes: Vec<&Value> = audit
            .iter()
            .filter(|r| r["kind"] == "denied")
            .map(|r| &r["message"])
            .collect();
        assert_eq!(n, 1, "{mode}: {codes:#?} {audit:#?}");
    }
    // A good token signs in, over plain HTTP too; its cookie is HttpOnly, Secure and Strict.
    set_mode(idp_port, "ok", "peer-1");
    let (status, h, body) = sign_in_over_http(port, idp_port);
    assert_eq!(status, 200, "{body}");
    let set: Vec<&str> = h
        .iter()
        .filter(|(k, v)| k == "set-cookie" && v.starts_with("__Host-mandate_session="))
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(set.len(), 1, "{h:?}");
    for attr in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(set[0].contains(attr), "{}", set[0]);
    }
    let session = cookie_value(&h, "__Host-mandate_session").unwrap();
    // A callback whose state this browser did not start is refused (login CSRF).
    let (status, _, _) = http(
        port,
        "GET",
        "/auth/callback?code=x&state=forged",
        &[("Cookie", "__Host-mandate_login=other")],
        "",
    );
    assert_eq!(status, 400);
    // With the session: a POST without the token, and one from another origin, are refused.
    let cookie = format!("__Host-mandate_session={session}");
    let (status, _, body) = http(
        port,
        "POST",
        "/controls/pause",
        &[
            ("Cookie", &cookie),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        "reason=x",
    );
    assert_eq!(status, 403, "{body}");
    let (status, _, _) = http(
        port,
        "POST",
        "/controls/pause",
        &[
            ("Cookie", &cookie),
            ("Origin", "http://evil.example"),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        "reason=x&csrf=whatever",
    );
    assert_eq!(status, 403);
    let audit = s.d.audit();
    assert!(records(&audit, |r| r["kind"] == "paused").is_empty());
    assert_eq!(records(&audit, |r| r["code"] == "console_origin").len(), 1);
    assert_eq!(
        records(&audit, |r| r["code"] == "console_login_state").len(),
        1
    );
}

/// Accepts one HTTP request and answers 200; the request's body.
fn one_webhook(listener: std::net::TcpListener) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut c, _) = listener.accept().unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = c.read(&mut chunk).unwrap_or(0);
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                    })
                    .unwrap_or(0);
                if body.len() >= len {
                    let _ = c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
                    return body.to_owned();
                }
            }
            if n == 0 {
                return String::new();
            }
        }
    })
}

#[test]
fn every_answer_carries_the_security_headers_and_the_host_is_checked() {
    let port = common::free_port();
    let idp_port = common::free_port();
    let issuer = format!("http://localhost:{idp_port}");
    let hook = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hook_port = hook.local_addr().unwrap().port();
    let posted = one_webhook(hook);
    let s = daemon(
        port,
        &issuer,
        "",
        &format!(
            "\n[notify]\nwebhook = \"http://127.0.0.1:{hook_port}/hook\"\nformat = \"slack\"\n"
        ),
    );
    for path in [
        "/",
        "/static/console.js",
        "/nope",
        "/requests/0123456789abcdef",
    ] {
        let (_, h, _) = http(port, "GET", path, &[], "");
        assert_eq!(
            header(&h, "content-security-policy"),
            Some(
                "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
            ),
            "{path}"
        );
        assert_eq!(header(&h, "x-frame-options"), Some("DENY"));
        assert_eq!(header(&h, "cache-control"), Some("no-store"));
        assert_eq!(header(&h, "x-content-type-options"), Some("nosniff"));
        assert_eq!(header(&h, "referrer-policy"), Some("no-referrer"));
    }
    // DNS rebinding: another Host is refused.
    let (status, _, _) = http(port, "GET", "/", &[("Host", "attacker.example")], "");
    assert_eq!(status, 421);
    let (status, _, _) = http(
        port,
        "GET",
        "/",
        &[("Host", &format!("127.0.0.1:{port}"))],
        "",
    );
    assert_eq!(status, 421);
    // A body beyond the bound.
    let (status, _, _) = http(port, "POST", "/confirm", &[], &"x".repeat(70 * 1024));
    assert_eq!(status, 413);
    // A page that needs a session, without one.
    let (status, _, body) = http(port, "GET", "/sessions", &[], "");
    assert_eq!(status, 401);
    assert!(body.contains("sign in first"), "{body}");
    // The pending error names the console page.
    let o = s.d.mandate(&["credential-process", "peer-deploy"]);
    assert!(
        stderr(&o).contains(&format!("or open http://localhost:{port}/requests/")),
        "{}",
        stderr(&o)
    );
    // The notification, in Slack's format: what is asked and the link, no approve button.
    let body: Value = serde_json::from_str(&posted.join().unwrap()).unwrap();
    let text = body["text"].as_str().unwrap();
    assert!(
        text.starts_with("Agent claude asks for profile peer-deploy (1800 s). It needs 1 peer approver other than the operator."),
        "{text}"
    );
    assert!(
        text.contains(&format!("<http://localhost:{port}/requests/")),
        "{text}"
    );
    assert!(text.ends_with("|Review request in the console>"), "{text}");
    assert_eq!(body.as_object().unwrap().len(), 1, "{body}");
}

#[test]
fn the_console_serves_tls_itself() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "key.pem",
            "-out",
            "cert.pem",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let port = common::free_port();
    let moto = Moto::start();
    let config = common::config_text(
        &moto.endpoint(),
        &format!(
            "oidc_subject = \"human\"\n[console]\nlisten = \"127.0.0.1:{port}\"\npublic_url = \"https://localhost:{port}\"\ntls_cert = \"{c}\"\ntls_key = \"{k}\"\n[console.oidc]\nissuer = \"http://localhost:1\"\nclient_id = \"mandate-console\"\n",
            c = dir.path().join("cert.pem").display(),
            k = dir.path().join("key.pem").display(),
        ),
    );
    let _d = Daemon::start(&config);
    common::wait_until("the console", Duration::from_secs(10), || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let curl = |url: &str| {
        let o = std::process::Command::new("curl")
            .args(["-sS", "-D", "-", "-o", "/dev/null", "--cacert"])
            .arg(dir.path().join("cert.pem"))
            .arg(url)
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        )
    };
    let (code, head) = curl(&format!("https://localhost:{port}/"));
    assert_eq!(code, Some(0), "{head}");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.contains("content-security-policy: default-src 'none'"),
        "{head}"
    );
    // Plain HTTP on a TLS listener gets nothing.
    let (status, _, _) = http(port, "GET", "/", &[], "");
    assert_eq!(status, 0);
}

/// The CSRF token a page carries.
fn csrf_of(body: &str) -> String {
    body.split("name=\"csrf-token\" content=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap_or_else(|| panic!("no CSRF token in {body}"))
        .to_owned()
}

#[test]
fn an_approver_revokes_a_session_and_pauses_from_the_console() {
    let port = common::free_port();
    let idp_port = common::free_port();
    let issuer = format!("http://localhost:{idp_port}");
    let s = daemon(port, &issuer, "", "");
    let _idp = evil_idp(port, idp_port, "ok", "peer-1");
    let o = s.d.mandate(&["credential-process", "readonly"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let key: Value = serde_json::from_slice(&o.stdout).unwrap();
    let key = key["AccessKeyId"].as_str().unwrap().to_owned();
    let (status, h, body) = sign_in_over_http(port, idp_port);
    assert_eq!(status, 200, "{body}");
    let cookie = format!(
        "__Host-mandate_session={}",
        cookie_value(&h, "__Host-mandate_session").unwrap()
    );
    // The live session is listed, with its access key id (never its secret).
    let (status, _, page) = http(port, "GET", "/sessions", &[("Cookie", &cookie)], "");
    assert_eq!(status, 200, "{page}");
    assert!(page.contains(&key), "{page}");
    let session = page
        .split("name=\"session\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap()
        .to_owned();
    let csrf = csrf_of(&page);
    let form = [
        ("Cookie", cookie.as_str()),
        ("Content-Type", "application/x-www-form-urlencoded"),
        ("Origin", &format!("http://localhost:{port}")),
    ];
    let (status, h, body) = http(
        port,
        "POST",
        "/sessions/revoke",
        &form,
        &format!("csrf={csrf}&session={session}"),
    );
    assert_eq!(status, 303, "{body}");
    assert_eq!(header(&h, "location"), Some("/sessions"));
    // The revoked session is no longer handed out: the next one is new.
    let o = s.d.mandate(&["credential-process", "readonly"]);
    let again: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_ne!(again["AccessKeyId"].as_str().unwrap(), key);
    // Pause from the console: every agent stops.
    let (status, _, body) = http(
        port,
        "POST",
        "/controls/pause",
        &form,
        &format!("csrf={csrf}&reason=incident+7"),
    );
    assert_eq!(status, 303, "{body}");
    let o = s.d.mandate(&["credential-process", "readonly"]);
    assert_eq!(o.status.code(), Some(5));
    assert!(stderr(&o).contains("incident 7"), "{}", stderr(&o));
    let (_, _, page) = http(port, "GET", "/controls", &[("Cookie", &cookie)], "");
    assert!(page.contains("Issuing is paused"), "{page}");
    assert!(page.contains("Resume with passkey"), "{page}");
    // Both audited with the approver's subject.
    let audit = s.d.audit();
    for kind in ["revoked", "paused"] {
        let r = records(&audit, |r| r["kind"] == kind);
        assert_eq!(r.len(), 1, "{kind}: {audit:#?}");
        assert_eq!(r[0]["approver"], "peer-1");
        assert_eq!(r[0]["oidc_subject"], "peer-1");
    }
}
