//! The container-credentials endpoint: real SDK clients (boto3's container provider and the
//! Rust aws-config ECS provider) against the real daemon and moto, the hardening table, and
//! token rotation without a restart.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

struct Box {
    d: Daemon,
    moto: Moto,
    port: u16,
    token_file: PathBuf,
    other_token_file: PathBuf,
}

/// A daemon with [http] on a free loopback port and two HTTP agents made by `mandate agent add`:
/// `box` (readonly, s3-data, deploy-staging; default readonly) and `other` (readonly).
fn start() -> Box {
    let moto = Moto::start();
    let port = free_port();
    let scratch = tempfile::tempdir().unwrap();
    let base = format!(
        "{}\n[http]\nlisten = \"127.0.0.1:{port}\"\n",
        config_text(&moto.endpoint(), "")
    );
    let cfg = scratch.path().join("broker.toml");
    std::fs::write(&cfg, &base).unwrap();
    let tokens = tempfile::tempdir().unwrap().keep();
    let token_file = tokens.join("box");
    let other_token_file = tokens.join("other");
    for (name, profiles, file) in [
        ("box", "readonly,s3-data,deploy-staging", &token_file),
        ("other", "readonly", &other_token_file),
    ] {
        let out = mandate_at(&cfg)
            .args([
                "agent",
                "add",
                name,
                "--profiles",
                profiles,
                "--operator",
                "human",
            ])
            .arg("--token-file")
            .arg(file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(&format!(
                "AWS_CONTAINER_CREDENTIALS_FULL_URI=http://127.0.0.1:{port}/"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE={}",
                file.display()
            )),
            "{text}"
        );
    }
    let d = Daemon::start(&std::fs::read_to_string(&cfg).unwrap());
    Box {
        d,
        moto,
        port,
        token_file,
        other_token_file,
    }
}

/// One raw HTTP/1.1 exchange; returns (status, body).
fn get(port: u16, request: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_owned())
        .unwrap_or_default();
    assert!(
        text.to_ascii_lowercase()
            .contains("cache-control: no-store"),
        "{text}"
    );
    (status, body)
}

fn req(_port: u16, method: &str, path: &str, host: &str, extra: &str) -> String {
    format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n")
}

fn token(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap()
}

#[test]
fn token_files_are_private_random_and_without_a_newline() {
    let b = start();
    let t = token(&b.token_file);
    assert_eq!(t.len(), 64);
    assert!(t.bytes().all(|c| c.is_ascii_hexdigit()));
    assert_ne!(t, token(&b.other_token_file));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&b.token_file)
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
}

#[test]
fn boto3_and_the_rust_ecs_provider_get_the_profiles_session() {
    let b = start();
    let script = "import boto3, sys\nprint(boto3.Session().client('sts', endpoint_url=sys.argv[1]).get_caller_identity()['Arn'])";
    let out = python()
        .env(
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            format!("http://127.0.0.1:{}/", b.port),
        )
        .env("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", &b.token_file)
        .args(["-c", script, &b.moto.endpoint()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "boto3: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let arn = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        arn.starts_with("arn:aws:sts::123456789012:assumed-role/agent-role/mandate-box-"),
        "{arn}"
    );

    // The Rust SDK's ECS provider reads the process environment, so it runs in a child
    // process: this test binary, running only the helper below.
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "rust_ecs_client_helper",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("MANDATE_TEST_MOTO", b.moto.endpoint())
        .env(
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            format!("http://127.0.0.1:{}/profile/s3-data", b.port),
        )
        .env("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", &b.token_file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rust_arn = text
        .lines()
        .find_map(|l| l.split_once("ARN=").map(|x| x.1))
        .unwrap_or_else(|| {
            panic!(
                "the helper printed no ARN:\n{text}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
        .to_owned();
    assert!(
        rust_arn.starts_with("arn:aws:sts::123456789012:assumed-role/agent-role/mandate-box-"),
        "{rust_arn}"
    );
    assert_ne!(rust_arn, arn, "a different profile, a different session");
    let issued: Vec<Value> =
        b.d.audit()
            .into_iter()
            .filter(|r| r["kind"] == "issued")
            .collect();
    assert_eq!(issued.len(), 2);
    assert!(
        issued
            .iter()
            .all(|r| r["agent"] == "box" && r.get("uid").is_none())
    );
}

#[test]
#[ignore = "helper: run as a child process by boto3_and_the_rust_ecs_provider_get_the_profiles_session"]
fn rust_ecs_client_helper() {
    let moto = std::env::var("MANDATE_TEST_MOTO").expect("run by the parent test");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let provider = aws_config::ecs::EcsCredentialsProvider::builder().build();
        let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .credentials_provider(provider)
            .region(aws_config::Region::new("us-east-1"))
            .endpoint_url(moto)
            .load()
            .await;
        let out = aws_sdk_sts::Client::new(&conf)
            .get_caller_identity()
            .send()
            .await
            .expect("GetCallerIdentity");
        println!("ARN={}", out.arn().unwrap());
    });
}

#[test]
fn hostile_and_wrong_requests_get_the_documented_4xx_no_credential_and_an_audit_record() {
    let b = start();
    let good = token(&b.token_file);
    let other = token(&b.other_token_file);
    let host = format!("127.0.0.1:{}", b.port);
    let auth = |t: &str| format!("Authorization: {t}\r\n");
    let cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "missing token",
            req(b.port, "GET", "/", &host, ""),
            401,
            "no_token",
        ),
        (
            "wrong token",
            req(b.port, "GET", "/", &host, &auth(&"0".repeat(64))),
            401,
            "bad_token",
        ),
        (
            "Bearer prefix",
            req(b.port, "GET", "/", &host, &auth(&format!("Bearer {good}"))),
            401,
            "bad_token",
        ),
        (
            "another agent's token",
            req(b.port, "GET", "/profile/s3-data", &host, &auth(&other)),
            403,
            "not_bound",
        ),
        (
            "unbound profile",
            req(
                b.port,
                "GET",
                "/profile/breakglass-admin",
                &host,
                &auth(&good),
            ),
            403,
            "not_bound",
        ),
        (
            "approval profile",
            req(
                b.port,
                "GET",
                "/profile/deploy-staging",
                &host,
                &auth(&good),
            ),
            403,
            "approval_pending",
        ),
        (
            "Host: evil.example",
            req(b.port, "GET", "/", "evil.example", &auth(&good)),
            403,
            "bad_host",
        ),
        (
            "Host: 127.0.0.1.nip.io",
            req(
                b.port,
                "GET",
                "/",
                &format!("127.0.0.1.nip.io:{}", b.port),
                &auth(&good),
            ),
            403,
            "bad_host",
        ),
        (
            "Host: wrong port",
            req(b.port, "GET", "/", "127.0.0.1:1", &auth(&good)),
            403,
            "bad_host",
        ),
        (
            "X-Forwarded-For",
            req(
                b.port,
                "GET",
                "/",
                &host,
                &format!("{}X-Forwarded-For: 10.0.0.1\r\n", auth(&good)),
            ),
            400,
            "proxied",
        ),
        (
            "Forwarded",
            req(
                b.port,
                "GET",
                "/",
                &host,
                &format!("{}Forwarded: for=1.2.3.4\r\n", auth(&good)),
            ),
            400,
            "proxied",
        ),
        (
            "Via",
            req(
                b.port,
                "GET",
                "/",
                &host,
                &format!("{}Via: 1.1 proxy\r\n", auth(&good)),
            ),
            400,
            "proxied",
        ),
        (
            "absolute-form target (a proxy request) with a loopback Host",
            req(b.port, "GET", "http://evil.example/", &host, &auth(&good)),
            400,
            "proxied",
        ),
        (
            "absolute-form target naming the listener itself",
            req(
                b.port,
                "GET",
                &format!("http://{host}/"),
                &host,
                &auth(&good),
            ),
            400,
            "proxied",
        ),
        (
            "POST",
            req(
                b.port,
                "POST",
                "/",
                &host,
                &format!("{}Content-Length: 0\r\n", auth(&good)),
            ),
            405,
            "method_not_allowed",
        ),
        (
            "unknown path",
            req(b.port, "GET", "/latest/meta-data/", &host, &auth(&good)),
            404,
            "not_found",
        ),
    ];
    let before = b.d.audit().len();
    for (what, request, status, code) in &cases {
        let (got, body) = get(b.port, request);
        assert_eq!(got, *status, "{what}: {body}");
        let v: Value = serde_json::from_str(&body)
            .unwrap_or_else(|_| panic!("{what}: JSON error body, got {body}"));
        assert_eq!(v["code"], *code, "{what}: {body}");
        assert!(
            !body.contains("SecretAccessKey") && !body.contains("Token\""),
            "{what}: no credential"
        );
        assert!(!body.contains(&good), "{what}: the token is never echoed");
    }
    // Every refusal is in the audit log (they are written without waiting; give them a moment).
    std::thread::sleep(Duration::from_millis(300));
    let audit = b.d.audit();
    // (A request needing approval is recorded as the pending request it opened.)
    let codes: Vec<&str> = audit[before..]
        .iter()
        .filter_map(|r| match r["kind"].as_str() {
            Some("denied") => r["code"].as_str(),
            Some("pending") => Some("approval_pending"),
            _ => None,
        })
        .collect();
    assert_eq!(codes.len(), cases.len(), "{codes:?}");
    for (_, _, _, code) in &cases {
        assert!(codes.contains(code), "{code} audited: {codes:?}");
    }
    let text =
        std::fs::read_to_string(b.d.dir.path().join("state/audit/audit-000001.jsonl")).unwrap();
    assert!(
        !text.contains(&good) && !text.contains(&other),
        "no token in the audit log"
    );
    assert!(b.moto.assumed_roles().is_empty(), "nothing reached STS");

    // The happy path for contrast: 200, the container format, no-store.
    let (status, body) = get(
        b.port,
        &req(
            b.port,
            "GET",
            "/",
            &format!("localhost:{}", b.port),
            &auth(&good),
        ),
    );
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    for k in ["AccessKeyId", "SecretAccessKey", "Token", "Expiration"] {
        assert!(v[k].is_string(), "{k} in {body}");
    }
    assert!(v["Expiration"].as_str().unwrap().ends_with('Z'));
}

#[test]
fn a_rotated_token_takes_effect_without_a_restart() {
    let b = start();
    let old = token(&b.token_file);
    let host = format!("127.0.0.1:{}", b.port);
    let auth = |t: &str| format!("Authorization: {t}\r\n");
    assert_eq!(
        get(b.port, &req(b.port, "GET", "/", &host, &auth(&old))).0,
        200
    );
    let out = b.d.mandate(&["agent", "rotate", "box"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let new = token(&b.token_file);
    assert_ne!(old, new);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (s_old, _) = get(b.port, &req(b.port, "GET", "/", &host, &auth(&old)));
        let (s_new, _) = get(b.port, &req(b.port, "GET", "/", &host, &auth(&new)));
        if (s_old, s_new) == (401, 200) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "rotation not picked up: old {s_old}, new {s_new}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
