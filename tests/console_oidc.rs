//! The console's OpenID Connect client against a misbehaving provider (tests/console/evil_idp.mjs):
//! each flaw of the ID token, the discovery document or the network gives its own error, and a
//! good sign-in gives the identity. The browser's part (following the authorization redirect)
//! is done here with a plain HTTP request.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mandate::config::OidcConfig;
use mandate::transport::console::oidc::{Identity, OidcError, Pending, Provider};

const CLIENT_ID: &str = "mandate-console";
const REDIRECT: &str = "http://localhost:8443/auth/callback";

fn console_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/console")
}

/// One evil_idp.mjs process (killed on drop).
struct Idp {
    child: Child,
    issuer: String,
    port: u16,
}

impl Idp {
    fn start(mode: &str, env: &[(&str, &str)]) -> Idp {
        let dir = console_dir();
        assert!(
            dir.join("node_modules/jose/package.json").is_file(),
            "the console's test peers are not installed: run `npm ci --prefix tests/console` \
             (needs Node 20+), then rerun this test"
        );
        let mut child = Command::new("node")
            .arg(dir.join("evil_idp.mjs"))
            .env("MODE", mode)
            .env("CLIENT_ID", CLIENT_ID)
            .env("REDIRECT_URI", REDIRECT)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run `node` (Node 20+ is required): {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(l) if !l.is_empty() => l,
            _ => {
                let _ = child.kill();
                panic!("evil_idp.mjs (MODE={mode}) did not start");
            }
        };
        let v: serde_json::Value = serde_json::from_str(&line).expect("evil_idp prints JSON");
        Idp {
            child,
            issuer: v["issuer"].as_str().expect("issuer").to_owned(),
            port: v["port"].as_u64().expect("port") as u16,
        }
    }

    fn config(&self) -> OidcConfig {
        config(&self.issuer)
    }

    fn provider(&self) -> Provider {
        Provider::new(&self.config(), REDIRECT.into()).expect("Provider::new")
    }

    /// How often each endpoint was called.
    fn stats(&self) -> serde_json::Value {
        let (status, _, body) = get(self.port, "/stats");
        assert_eq!(status, 200);
        serde_json::from_str(&body).expect("stats JSON")
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(issuer: &str) -> OidcConfig {
    OidcConfig {
        issuer: url::Url::parse(issuer).expect("issuer URL"),
        client_id: CLIENT_ID.into(),
        client_secret_file: None,
        ca_file: None,
    }
}

/// A bare HTTP/1.0 GET on 127.0.0.1: (status, Location header, body).
fn get(port: u16, path_and_query: &str) -> (u16, Option<String>, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the IdP");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path_and_query} HTTP/1.0\r\nHost: localhost:{port}\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read the answer");
    let (head, body) = out.split_once("\r\n\r\n").expect("an HTTP answer");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .expect("a status line");
    let location = lines.find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("location")
            .then(|| v.trim().to_owned())
    });
    (status, location, body.to_owned())
}

/// The browser's part: follow the authorization URL to the provider, which redirects back to
/// the callback with a code and the state. Checks what the URL asks for; returns the code.
fn browse(idp: &Idp, auth_url: &str, pending: &Pending) -> String {
    let u = url::Url::parse(auth_url).expect("authorization URL");
    assert_eq!(u.scheme(), "http");
    assert_eq!(u.host_str(), Some("localhost"));
    assert_eq!(u.port(), Some(idp.port));
    assert_eq!(u.path(), "/authorize");
    let q: std::collections::HashMap<String, String> = u.query_pairs().into_owned().collect();
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["client_id"], CLIENT_ID);
    assert_eq!(q["redirect_uri"], REDIRECT);
    assert_eq!(q["scope"], "openid email");
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["state"], pending.state());
    assert!(q["state"].len() >= 32 && q["nonce"].len() >= 32, "{q:?}");
    assert_ne!(q["state"], q["nonce"]);
    // The nonce is in the URL but never in the server-side record's Debug.
    assert!(!format!("{pending:?}").contains(&q["nonce"]));

    let (status, location, body) = get(idp.port, &format!("{}?{}", u.path(), u.query().unwrap()));
    assert_eq!(
        status, 302,
        "the IdP refused the authorization request: {body}"
    );
    let back = url::Url::parse(&location.expect("a Location header")).expect("callback URL");
    assert!(back.as_str().starts_with(REDIRECT), "{back}");
    let p: std::collections::HashMap<String, String> = back.query_pairs().into_owned().collect();
    assert_eq!(p["state"], pending.state(), "the state came back changed");
    p["code"].clone()
}

async fn sign_in(idp: &Idp, provider: &Provider) -> Result<Identity, OidcError> {
    let (url, pending) = provider.begin().await?;
    let code = browse(idp, &url, &pending);
    provider.finish(pending, &code).await
}

type Expect = Result<Identity, (&'static str, &'static str)>;

fn person(subject: &str, email: Option<&str>) -> Expect {
    Ok(Identity {
        subject: subject.into(),
        email: email.map(str::to_owned),
    })
}

const ISSUER_MSG: &str = "the ID token was not issued by {issuer}; refusing the sign-in";
const AUDIENCE_MSG: &str = "the ID token is not for this client (mandate-console): its aud or azp names another; refusing the sign-in";
const NONCE_MSG: &str = "the ID token's nonce does not match this sign-in (a replayed or injected token); sign in again";
const SIGNATURE_MSG: &str = "the ID token's signature does not verify with the provider's published keys; refusing the sign-in";
const ALGORITHM_MSG: &str = "the ID token is unsigned or signed with a refused algorithm (only the provider's public-key algorithms are accepted, never none or HMAC); refusing the sign-in";
const EXPIRED_MSG: &str =
    "the ID token has expired (check this host's clock and the provider's); sign in again";
const UNKNOWN_KEY_MSG: &str = "the ID token names a signing key the provider does not publish, even after re-reading its JWKS; refusing the sign-in";
const INVALID_GRANT_MSG: &str = "the token request to the OpenID provider failed: the provider refused the authorization code (invalid_grant): it was already used, has expired, or the PKCE verifier does not match; sign in again";
const INVALID_CLIENT_MSG: &str = "the token request to the OpenID provider failed: the provider refused this client (invalid_client); check [console.oidc] client_id and client_secret_file";

/// (MODE, SUB, expected outcome, JWKS fetches afterwards).
fn cases() -> Vec<(&'static str, &'static str, Expect, u64)> {
    vec![
        (
            "ok",
            "Peer-1",
            person("Peer-1", Some("peer-1@example.test")),
            1,
        ),
        ("email_unverified", "peer-1", person("peer-1", None), 1),
        (
            "multi_aud_azp",
            "peer-2",
            person("peer-2", Some("peer-2@example.test")),
            1,
        ),
        // The provider rotated its key after we read the JWKS: read once more, then fine.
        (
            "rotate",
            "peer-3",
            person("peer-3", Some("peer-3@example.test")),
            2,
        ),
        (
            "wrong_aud",
            "peer-1",
            Err(("id_token_audience", AUDIENCE_MSG)),
            1,
        ),
        (
            "multi_aud_no_azp",
            "peer-1",
            Err(("id_token_audience", AUDIENCE_MSG)),
            1,
        ),
        (
            "wrong_azp",
            "peer-1",
            Err(("id_token_audience", AUDIENCE_MSG)),
            1,
        ),
        (
            "wrong_iss",
            "peer-1",
            Err(("id_token_issuer", ISSUER_MSG)),
            1,
        ),
        (
            "wrong_nonce",
            "peer-1",
            Err(("id_token_nonce", NONCE_MSG)),
            1,
        ),
        ("no_nonce", "peer-1", Err(("id_token_nonce", NONCE_MSG)), 1),
        (
            "bad_sig",
            "peer-1",
            Err(("id_token_signature", SIGNATURE_MSG)),
            1,
        ),
        (
            "expired",
            "peer-1",
            Err(("id_token_expired", EXPIRED_MSG)),
            1,
        ),
        (
            "alg_none",
            "peer-1",
            Err(("id_token_algorithm", ALGORITHM_MSG)),
            1,
        ),
        (
            "hmac_pubkey",
            "peer-1",
            Err(("id_token_algorithm", ALGORITHM_MSG)),
            1,
        ),
        // An unknown kid makes us re-read the JWKS exactly once, and still refuse.
        (
            "unknown_kid",
            "peer-1",
            Err(("id_token_key", UNKNOWN_KEY_MSG)),
            2,
        ),
    ]
}

#[tokio::test]
async fn each_id_token_flaw_is_refused_with_its_own_reason() {
    let mut failures = Vec::new();
    for (mode, sub, expect, jwks_fetches) in cases() {
        let idp = Idp::start(mode, &[("SUB", sub)]);
        let provider = idp.provider();
        let got = sign_in(&idp, &provider).await;
        let expect = expect.map_err(|(reason, msg)| (reason, msg.replace("{issuer}", &idp.issuer)));
        let got_cmp = got
            .as_ref()
            .map(Clone::clone)
            .map_err(|e| (e.reason(), e.to_string()));
        if got_cmp != expect {
            failures.push(format!("MODE={mode}: expected {expect:?}, got {got_cmp:?}"));
        }
        let stats = idp.stats();
        if stats["jwks"] != jwks_fetches || stats["token"] != 1 {
            failures.push(format!(
                "MODE={mode}: expected {jwks_fetches} JWKS fetch(es) and 1 token request, got {stats}"
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[tokio::test]
async fn a_code_is_single_use_and_bound_to_its_pkce_verifier() {
    let idp = Idp::start("ok", &[]);
    let provider = idp.provider();

    let (url, first) = provider.begin().await.unwrap();
    let code = browse(&idp, &url, &first);
    let (_, second) = provider.begin().await.unwrap();
    let id = provider.finish(first, &code).await.unwrap();
    assert_eq!(id.subject, "peer-1");
    // The same code again (even with a fresh sign-in record): refused at the provider.
    let e = provider.finish(second, &code).await.unwrap_err();
    assert_eq!(
        (e.reason(), e.to_string().as_str()),
        ("token_exchange", INVALID_GRANT_MSG)
    );

    // A code from one sign-in finished with another's record (code injection): the PKCE
    // verifier does not match the challenge.
    let (url, a) = provider.begin().await.unwrap();
    let code_a = browse(&idp, &url, &a);
    let (_, b) = provider.begin().await.unwrap();
    let e = provider.finish(b, &code_a).await.unwrap_err();
    assert_eq!(
        (e.reason(), e.to_string().as_str()),
        ("token_exchange", INVALID_GRANT_MSG)
    );

    // Discovery was read once for all of it (cached).
    assert_eq!(idp.stats()["discovery"], 1);

    // A callback without a usable code never reaches the provider.
    let (_, c) = provider.begin().await.unwrap();
    let e = provider.finish(c, "").await.unwrap_err();
    assert_eq!(e.reason(), "callback");
}

fn secret_file(dir: &Path, text: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join("client-secret");
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

#[tokio::test]
async fn a_confidential_client_authenticates_with_its_secret() {
    let idp = Idp::start("ok", &[("CLIENT_SECRET", "s3cr3t/+ &=")]);
    let dir = tempfile::tempdir().unwrap();

    let mut cfg = idp.config();
    cfg.client_secret_file = Some(secret_file(dir.path(), "s3cr3t/+ &=\n"));
    let provider = Provider::new(&cfg, REDIRECT.into()).unwrap();
    let id = sign_in(&idp, &provider).await.unwrap();
    assert_eq!(id.email.as_deref(), Some("peer-1@example.test"));

    // Without the secret, or with a wrong one: invalid_client, and the secret is not echoed.
    for secret in [None, Some("wrong\n")] {
        let mut cfg = idp.config();
        cfg.client_secret_file = secret.map(|s| secret_file(dir.path(), s));
        let provider = Provider::new(&cfg, REDIRECT.into()).unwrap();
        let e = sign_in(&idp, &provider).await.unwrap_err();
        assert_eq!(
            (e.reason(), e.to_string().as_str()),
            ("token_exchange", INVALID_CLIENT_MSG)
        );
        assert!(!format!("{e:?}").contains("wrong"));
    }
}

#[tokio::test]
async fn a_discovery_document_naming_another_issuer_is_refused() {
    let idp = Idp::start("other_issuer", &[]);
    let e = idp.provider().begin().await.unwrap_err();
    assert_eq!(e.reason(), "discovery");
    assert_eq!(
        e.to_string(),
        format!(
            "OpenID discovery for {} failed: the discovery document names the issuer \"http://127.0.0.1:{}\"; set [console.oidc] issuer to exactly the provider's issuer",
            idp.issuer, idp.port
        )
    );
    // The same provider under the name it gives itself is fine.
    let cfg = config(&format!("http://127.0.0.1:{}", idp.port));
    let provider = Provider::new(&cfg, REDIRECT.into()).unwrap();
    assert!(provider.begin().await.is_ok());
}

#[tokio::test]
async fn discovery_redirects_are_not_followed_and_huge_answers_are_cut() {
    let idp = Idp::start("redirect_discovery", &[]);
    let e = idp.provider().begin().await.unwrap_err();
    assert_eq!(e.reason(), "discovery");
    assert_eq!(
        e.to_string(),
        format!(
            "OpenID discovery for {} failed: the provider answered HTTP 302 (redirects are not followed); check [console.oidc] issuer and that the provider is reachable",
            idp.issuer
        )
    );
    assert_eq!(idp.stats()["discovery"], 1);

    let idp = Idp::start("huge_discovery", &[]);
    let e = idp.provider().begin().await.unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "OpenID discovery for {} failed: the answer is larger than 1 MiB; check [console.oidc] issuer and that the provider is reachable",
            idp.issuer
        )
    );
}

#[tokio::test]
async fn an_unreachable_issuer_fails_promptly() {
    // Nothing listens on the port.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let issuer = format!("http://127.0.0.1:{port}");
    let provider = Provider::new(&config(&issuer), REDIRECT.into()).unwrap();
    let t = Instant::now();
    let e = provider.begin().await.unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert_eq!(e.reason(), "discovery");
    assert_eq!(
        e.to_string(),
        format!(
            "OpenID discovery for {issuer} failed: cannot connect (connection refused); check [console.oidc] issuer and that the provider is reachable"
        )
    );

    // Something accepts connections and never answers: the request timeout ends it.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let issuer = format!("http://127.0.0.1:{}", silent.local_addr().unwrap().port());
    let provider = Provider::new(&config(&issuer), REDIRECT.into())
        .unwrap()
        .with_request_timeout(Duration::from_millis(500));
    let t = Instant::now();
    let e = provider.begin().await.unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert_eq!(
        e.to_string(),
        format!(
            "OpenID discovery for {issuer} failed: no answer within 0.5 s; check [console.oidc] issuer and that the provider is reachable"
        )
    );
    drop(silent);
}
