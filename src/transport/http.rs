//! The container-credentials endpoint (`[http] listen`): what every AWS SDK speaks when
//! `AWS_CONTAINER_CREDENTIALS_FULL_URI` and `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE` are set.
//!
//! Loopback only. The token in `Authorization` (raw, no "Bearer") decides the agent; tokens are
//! kept only as sha256 hashes, compared in constant time, and re-read from their files when they
//! change (rotation without a restart). `Host` must be a loopback name with the listener's port
//! (the DNS-rebinding defence); proxy headers are refused; GET only; every response carries
//! `Cache-Control: no-store`; header size, body, connections and request time are bounded;
//! errors are JSON without internal detail; every refusal is audited.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::{Request, Response, StatusCode};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::audit::{Kind, Record};
use crate::aws::Issuer;
use crate::broker::{Broker, BrokerError, Caller, CredRequest, REQUEST_DEADLINE};
use crate::clock;
use crate::config::Config;

/// Concurrent connections; more are closed at once. An idle connection costs hyper's read
/// buffer (at most [`MAX_HEADER_BYTES`]) plus a task: at most about 80 MiB at the cap, and idle
/// connections are dropped after [`HEADER_TIMEOUT`].
pub const MAX_CONNECTIONS: usize = 4096;
/// Time to send the request head.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Whole-connection time limit (keep-alive included).
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(120);
/// Read buffer, which bounds the request head.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Shortest acceptable token: 128 bits as hex.
pub const MIN_TOKEN_CHARS: usize = 32;

/// 256 random bits, hex: a new agent token.
pub fn new_token() -> String {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).expect("the OS random source is available");
    crate::policy::hex(&b)
}

fn token_hash(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct FileStamp {
    len: u64,
    modified: SystemTime,
    inode: u64,
}

/// An agent's token hash and the file state it was read from.
type TokenEntry = ([u8; 32], Option<FileStamp>);

/// Agent tokens, held only as hashes, refreshed from their files.
#[derive(Default)]
pub struct Tokens {
    inner: RwLock<BTreeMap<String, TokenEntry>>,
}

impl Tokens {
    /// Reads every agent's token file. Problems are returned (and the agent then has no valid
    /// token) rather than stopping the daemon; start-up reports them.
    pub fn refresh(&self, config: &Config) -> Vec<String> {
        let mut problems = Vec::new();
        let mut next = BTreeMap::new();
        let old = self.inner.read().unwrap_or_else(|e| e.into_inner()).clone();
        for agent in config.agents.values() {
            let Some(path) = &agent.token_file else {
                continue;
            };
            let stamp = std::fs::metadata(path).ok().map(|m| FileStamp {
                len: m.len(),
                modified: m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                inode: m.ino(),
            });
            if let (Some(s), Some((hash, Some(old_stamp)))) = (&stamp, old.get(&agent.name))
                && s == old_stamp
            {
                next.insert(agent.name.clone(), (*hash, stamp));
                continue;
            }
            match read_token(path) {
                Ok(hash) => {
                    next.insert(agent.name.clone(), (hash, stamp));
                }
                Err(e) => problems.push(format!("agent {}: {e}", agent.name)),
            }
        }
        *self.inner.write().unwrap_or_else(|e| e.into_inner()) = next;
        problems
    }

    /// The agent whose token this is. Every stored hash is compared, in constant time.
    pub fn agent_for(&self, token: &[u8]) -> Option<String> {
        let presented = token_hash(token);
        let mut found = None;
        for (agent, (hash, _)) in self.inner.read().unwrap_or_else(|e| e.into_inner()).iter() {
            if bool::from(hash.ct_eq(&presented)) {
                found = Some(agent.clone());
            }
        }
        found
    }
}

/// Reads and hashes a token file. Symlinks are followed (Kubernetes Secret volumes are made of
/// them) but the file and every directory on the way must be safe (`trust::trusted_file`).
fn read_token(path: &PathBuf) -> Result<[u8; 32], String> {
    crate::os::trusted_file(path, "token file")?;
    let bytes = std::fs::read(path).map_err(|e| format!("token file {}: {e}", path.display()))?;
    if bytes.ends_with(b"\n") || bytes.ends_with(b"\r") {
        return Err(format!(
            "token file {} ends with a newline, which the AWS SDKs would send as part of the token; rewrite it without one (`mandate agent rotate`)",
            path.display()
        ));
    }
    if bytes.len() < MIN_TOKEN_CHARS || !bytes.iter().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "token file {} must hold at least {MIN_TOKEN_CHARS} printable characters",
            path.display()
        ));
    }
    Ok(token_hash(&bytes))
}
fn json(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn error(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    json(
        status,
        serde_json::json!({ "code": code, "message": message }),
    )
}

/// Whether `Host` names this listener on loopback (`127.0.0.1:P`, `localhost:P`, `[::1]:P`).
pub fn host_allowed(host: &str, port: u16) -> bool {
    let Some((name, p)) = host.rsplit_once(':') else {
        return false;
    };
    if p.parse::<u16>() != Ok(port) {
        return false;
    }
    matches!(
        name.to_ascii_lowercase().as_str(),
        "127.0.0.1" | "localhost" | "[::1]"
    )
}

struct Ctx<I: Issuer> {
    broker: Arc<Broker<I>>,
    tokens: Arc<Tokens>,
    port: u16,
    refusals: RefusalBudget,
}

/// Refusals before authentication are audited, but at most [`REFUSALS_PER_SECOND`] a second, so
/// an unauthenticated local process cannot fill the audit queue or the disk (which would stop
/// issuance for every agent). The number left out is recorded with the next refusal written.
pub const REFUSALS_PER_SECOND: u64 = 50;

#[derive(Default)]
struct RefusalBudget {
    state: std::sync::Mutex<(u64, u64, u64)>, // (second, written this second, suppressed)
}

impl RefusalBudget {
    /// `Some(suppressed so far)` when this refusal may be written.
    fn take(&self) -> Option<u64> {
        let now = clock::unix_now() as u64;
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.0 != now {
            s.0 = now;
            s.1 = 0;
        }
        if s.1 >= REFUSALS_PER_SECOND {
            s.2 += 1;
            return None;
        }
        s.1 += 1;
        Some(std::mem::take(&mut s.2))
    }
}

/// Serves the endpoint until `shutdown` resolves.
pub async fn serve<I: Issuer>(
    broker: Arc<Broker<I>>,
    tokens: Arc<Tokens>,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    let ctx = Arc::new(Ctx {
        broker,
        tokens,
        port,
        refusals: RefusalBudget::default(),
    });
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let Ok(permit) = permits.clone().try_acquire_owned() else { continue };
                let ctx = ctx.clone();
                tokio::spawn(async move {
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let service = hyper::service::service_fn(move |req| {
                        let ctx = ctx.clone();
                        async move { Ok::<_, Infallible>(handle(&ctx, req).await) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .timer(hyper_util::rt::TokioTimer::new())
                        .header_read_timeout(HEADER_TIMEOUT)
                        .max_buf_size(MAX_HEADER_BYTES)
                        .serve_connection(io, service);
                    let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
                    drop(permit);
                });
            }
        }
    }
}

/// What an HTTP client is told about a failure that is not a denial.
fn public_message(e: &BrokerError) -> &'static str {
    use crate::aws::StsError;
    match e {
        BrokerError::Denied(_) | BrokerError::Pending(_) => "refused",
        BrokerError::Store(_) => {
            "the broker's approval store is unavailable, so no credentials are issued"
        }
        BrokerError::Iam(_) => "the broker cannot reach AWS IAM",
        BrokerError::Audit(_) => {
            "the broker's audit log is unavailable, so no credentials are issued"
        }
        BrokerError::Sts(StsError::Throttled | StsError::Unavailable(_) | StsError::Timeout) => {
            "AWS STS is unavailable or throttling; retry shortly"
        }
        BrokerError::Sts(_) => {
            "the broker cannot obtain credentials for this profile; its operator can see why in the daemon's log"
        }
    }
}

fn refusal(code: &str, message: &str, agent: Option<&str>, path: &str) -> Record {
    let mut r = Record::new(Kind::Denied);
    r.agent = agent.map(str::to_owned);
    r.decision = Some("deny".into());
    r.code = Some(code.into());
    r.message = Some(format!("http {path}: {message}"));
    r
}

/// Which profile a screened request asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// `/`: the agent's default profile.
    Default,
    /// `/profile/NAME`.
    Profile(String),
}

/// A request that passed the transport checks; the token is still unverified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Screened {
    pub token: Vec<u8>,
    pub route: Route,
}

/// Why a request is refused before it reaches the broker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub code: &'static str,
    pub message: &'static str,
}

const fn refuse(status: u16, code: &'static str, message: &'static str) -> Refusal {
    Refusal {
        status,
        code,
        message,
    }
}

/// The transport checks, in order, as a pure function of the request head (fuzzed in
/// `fuzz/fuzz_targets/http_request.rs`). `target` is the request-target as sent: only the
/// origin form (`/path?query`) is accepted; the absolute form (`http://host/`) is what a client
/// sends to a proxy, and is refused like the proxy headers. Header names are compared
/// case-insensitively.
pub fn screen(
    method: &str,
    target: &str,
    headers: &[(&str, &[u8])],
    port: u16,
) -> Result<Screened, Refusal> {
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    };
    if method != "GET" {
        return Err(refuse(405, "method_not_allowed", "only GET is supported"));
    }
    if !target.starts_with('/') {
        return Err(refuse(
            400,
            "proxied",
            "absolute-form request targets (requests meant for a proxy) are refused; send the path only",
        ));
    }
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    if ["x-forwarded-for", "forwarded", "via", "x-forwarded-host"]
        .iter()
        .any(|n| header(n).is_some())
    {
        return Err(refuse(
            400,
            "proxied",
            "requests through a proxy are refused",
        ));
    }
    let hosts = headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("host"))
        .count();
    let host_ok = hosts == 1
        && header("host")
            .and_then(|v| std::str::from_utf8(v).ok())
            .is_some_and(|h| host_allowed(h, port));
    if !host_ok {
        return Err(refuse(
            403,
            "bad_host",
            "the Host header must name this loopback listener",
        ));
    }
    if header("content-length").is_some_and(|v| v != b"0") || header("transfer-encoding").is_some()
    {
        return Err(refuse(400, "bad_request", "a GET request has no body"));
    }
    let Some(token) = header("authorization") else {
        return Err(refuse(401, "no_token", "missing Authorization token"));
    };
    let route = if path == "/" {
        Route::Default
    } else if let Some(name) = path
        .strip_prefix("/profile/")
        .filter(|n| !n.is_empty() && n.len() <= 64 && !n.contains('/'))
    {
        Route::Profile(name.to_owned())
    } else {
        return Err(refuse(404, "not_found", "use / or /profile/NAME"));
    };
    Ok(Screened {
        token: token.to_vec(),
        route,
    })
}

async fn handle<I: Issuer>(ctx: &Ctx<I>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    // Refusals are recorded (within the per-second budget) once the response is decided.
    let mut refused: Option<Record> = None;
    let response = respond(ctx, req, &mut refused).await;
    if let Some(r) = refused {
        let _ = ctx.broker.audit().append(r).await;
    }
    response
}

async fn respond<I: Issuer>(
    ctx: &Ctx<I>,
    req: Request<Incoming>,
    refused: &mut Option<Record>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().chars().take(200).collect::<String>();
    let mut reject = |status: StatusCode, code: &str, message: &str, agent: Option<&str>| {
        if let Some(suppressed) = ctx.refusals.take() {
            let mut r = refusal(code, message, agent, &path);
            if suppressed > 0 {
                r.message = r.message.map(|m| {
                    format!(
                        "{m} ({suppressed} earlier refusals over the rate limit were not recorded)"
                    )
                });
            }
            *refused = Some(r);
        }
        error(status, code, message)
    };
    let headers: Vec<(&str, &[u8])> = req
        .headers()
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_bytes()))
        .collect();
    let target = req.uri().to_string();
    let screened = match screen(req.method().as_str(), &target, &headers, ctx.port) {
        Ok(s) => s,
        Err(r) => {
            let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_REQUEST);
            let mut resp = reject(status, r.code, r.message, None);
            if r.status == 405 {
                resp.headers_mut()
                    .insert(hyper::header::ALLOW, HeaderValue::from_static("GET"));
            }
            return resp;
        }
    };
    let Some(agent) = ctx.tokens.agent_for(&screened.token) else {
        return reject(
            StatusCode::UNAUTHORIZED,
            "bad_token",
            "the Authorization token is not valid",
            None,
        );
    };
    let state = ctx.broker.state();
    let profile = match screened.route {
        Route::Default => match state
            .config
            .agents
            .get(&agent)
            .and_then(|a| a.default_profile.clone())
        {
            Some(p) => p.as_str().to_owned(),
            None => {
                return reject(
                    StatusCode::NOT_FOUND,
                    "no_default_profile",
                    "this agent has no default profile; request /profile/NAME",
                    Some(&agent),
                );
            }
        },
        Route::Profile(name) => name,
    };
    drop(state);
    let req = CredRequest {
        profile,
        agent: None,
        reason: None,
        duration_seconds: None,
        approval_id: None,
    };
    let result = tokio::time::timeout(
        REQUEST_DEADLINE,
        ctx.broker.credentials(Caller::Token { agent }, req),
    )
    .await;
    match result {
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            "the broker could not get credentials in time",
        ),
        // Denials name only the profile and the agent; other failures are described by class
        // only (no ARNs, AWS messages or OS errors), with the detail in the daemon's log.
        Ok(Err(BrokerError::Denied(d))) => {
            error(StatusCode::FORBIDDEN, d.code.as_str(), &d.message)
        }
        // The container agent is told the request id to hand to a human; nothing else.
        Ok(Err(e @ BrokerError::Pending(_))) => {
            error(StatusCode::FORBIDDEN, e.code(), &e.to_string())
        }
        Ok(Err(e)) => {
            tracing::warn!(code = e.code(), error = %e, "credential request over HTTP failed");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                e.code(),
                public_message(&e),
            )
        }
        Ok(Ok(issued)) => {
            let c = &issued.credentials;
            json(
                StatusCode::OK,
                serde_json::json!({
                    "AccessKeyId": c.access_key_id,
                    "SecretAccessKey": c.secret_access_key.expose(),
                    "Token": c.session_token.expose(),
                    "Expiration": clock::rfc3339(c.expiration),
                    "RoleArn": c.assumed_role_arn,
                }),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn h(pairs: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static [u8])> {
        pairs.iter().map(|(n, v)| (*n, v.as_bytes())).collect()
    }

    type Case = (
        &'static str,
        &'static str,
        Vec<(&'static str, &'static str)>,
        Result<Route, &'static str>,
    );

    #[test]
    fn screening_table() {
        let ok = [("Host", "127.0.0.1:9911"), ("Authorization", "tok")];
        let cases: Vec<Case> = vec![
            ("GET", "/", ok.to_vec(), Ok(Route::Default)),
            (
                "GET",
                "/profile/s3-data",
                vec![("host", "LOCALHOST:9911"), ("authorization", "t")],
                Ok(Route::Profile("s3-data".into())),
            ),
            (
                "GET",
                "/",
                vec![("Host", "[::1]:9911"), ("Authorization", "t")],
                Ok(Route::Default),
            ),
            ("POST", "/", ok.to_vec(), Err("method_not_allowed")),
            (
                "GET",
                "/",
                vec![("Host", "evil.example:9911"), ("Authorization", "t")],
                Err("bad_host"),
            ),
            (
                "GET",
                "/",
                vec![("Host", "127.0.0.1.nip.io:9911"), ("Authorization", "t")],
                Err("bad_host"),
            ),
            (
                "GET",
                "/",
                vec![("Host", "127.0.0.1"), ("Authorization", "t")],
                Err("bad_host"),
            ),
            (
                "GET",
                "/",
                vec![
                    ("Host", "127.0.0.1:9911"),
                    ("Host", "evil.example"),
                    ("Authorization", "t"),
                ],
                Err("bad_host"),
            ),
            ("GET", "/", vec![("Authorization", "t")], Err("bad_host")),
            (
                "GET",
                "/",
                vec![
                    ("Host", "127.0.0.1:9911"),
                    ("Authorization", "t"),
                    ("Via", "1.1 p"),
                ],
                Err("proxied"),
            ),
            (
                "GET",
                "/",
                vec![
                    ("Host", "127.0.0.1:9911"),
                    ("Authorization", "t"),
                    ("Content-Length", "5"),
                ],
                Err("bad_request"),
            ),
            (
                "GET",
                "/",
                vec![("Host", "127.0.0.1:9911")],
                Err("no_token"),
            ),
            ("GET", "/profile/", ok.to_vec(), Err("not_found")),
            ("GET", "/profile/a/b", ok.to_vec(), Err("not_found")),
            ("GET", "/?x=1", ok.to_vec(), Ok(Route::Default)),
            // Absolute form, even with a loopback Host and the listener's own authority.
            ("GET", "http://evil.example/", ok.to_vec(), Err("proxied")),
            ("GET", "http://127.0.0.1:9911/", ok.to_vec(), Err("proxied")),
            (
                "GET",
                "HTTP://127.0.0.1:9911/profile/x",
                ok.to_vec(),
                Err("proxied"),
            ),
            ("GET", "*", ok.to_vec(), Err("proxied")),
        ];
        for (method, path, headers, want) in cases {
            let hs = h(&headers);
            let got = screen(method, path, &hs, 9911)
                .map(|s| s.route)
                .map_err(|r| r.code);
            assert_eq!(got, want, "{method} {path} {headers:?}");
        }
    }

    #[test]
    fn tokens_are_held_only_as_hashes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let t = new_token();
        assert_eq!(t.len(), 64, "256 bits as hex");
        let file = dir.path().join("tok");
        std::fs::write(&file, &t).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_token(&file).unwrap(), token_hash(t.as_bytes()));
        std::fs::write(&file, format!("{t}\n")).unwrap();
        assert!(
            read_token(&file)
                .unwrap_err()
                .contains("ends with a newline")
        );
        std::fs::write(&file, "short").unwrap();
        assert!(read_token(&file).unwrap_err().contains("at least 32"));
        // What is stored is the hash: the plaintext is nowhere in the structure.
        std::fs::write(&file, &t).unwrap();
        let tokens = Tokens::default();
        tokens
            .inner
            .write()
            .unwrap()
            .insert("a".into(), (read_token(&file).unwrap(), None));
        assert_eq!(tokens.agent_for(t.as_bytes()).as_deref(), Some("a"));
        assert_eq!(tokens.agent_for(b"nope"), None);
        assert!(!format!("{:?}", tokens.inner.read().unwrap()).contains(&t));
    }
}
