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
use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::audit::{Kind, Record};
use crate::aws::Issuer;
use crate::broker::{Broker, BrokerError, Caller, CredRequest, REQUEST_DEADLINE};
use crate::clock;
use crate::config::Config;

/// Concurrent connections; more are closed at once.
pub const MAX_CONNECTIONS: usize = 256;
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
            if let (Some(s), Some((hash, Some(old_stamp)))) = (&stamp, old.get(&agent.name)) {
                if s == old_stamp {
                    next.insert(agent.name.clone(), (*hash, stamp));
                    continue;
                }
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

fn read_token(path: &PathBuf) -> Result<[u8; 32], String> {
    let meta = std::fs::symlink_metadata(path)
        .map_err(|e| format!("token file {}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!(
            "token file {} is not a regular file",
            path.display()
        ));
    }
    if meta.permissions().mode() & 0o022 != 0 {
        return Err(format!(
            "token file {} is writable by group or others; chmod 600 it",
            path.display()
        ));
    }
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

/// Refuses any listen address that is not loopback.
pub fn check_listen(addr: &str) -> Result<SocketAddr, String> {
    let sa: SocketAddr = addr
        .parse()
        .map_err(|_| format!("{addr:?} is not an address like \"127.0.0.1:9911\""))?;
    if !sa.ip().is_loopback() {
        return Err(format!(
            "{addr} is not a loopback address: the credentials endpoint listens on 127.0.0.1 or [::1] only (share the agent's network namespace instead)"
        ));
    }
    Ok(sa)
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

fn refusal(code: &str, message: &str, agent: Option<&str>, path: &str) -> Record {
    let mut r = Record::new(Kind::Denied);
    r.agent = agent.map(str::to_owned);
    r.decision = Some("deny".into());
    r.code = Some(code.into());
    r.message = Some(format!("http {path}: {message}"));
    r
}

async fn handle<I: Issuer>(ctx: &Ctx<I>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().chars().take(200).collect::<String>();
    let reject = |status: StatusCode, code: &str, message: &str, agent: Option<&str>| {
        let _ = ctx
            .broker
            .audit()
            .append(refusal(code, message, agent, &path));
        error(status, code, message)
    };
    if req.method() != Method::GET {
        let mut r = reject(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "only GET is supported",
            None,
        );
        r.headers_mut()
            .insert(hyper::header::ALLOW, HeaderValue::from_static("GET"));
        return r;
    }
    let h = req.headers();
    if ["x-forwarded-for", "forwarded", "via", "x-forwarded-host"]
        .iter()
        .any(|n| h.contains_key(*n))
    {
        return reject(
            StatusCode::BAD_REQUEST,
            "proxied",
            "requests through a proxy are refused",
            None,
        );
    }
    let host_ok = h
        .get(hyper::header::HOST)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|host| host_allowed(host, ctx.port));
    if !host_ok {
        return reject(
            StatusCode::FORBIDDEN,
            "bad_host",
            "the Host header must name this loopback listener",
            None,
        );
    }
    let has_body = h
        .get(hyper::header::CONTENT_LENGTH)
        .is_some_and(|v| v.as_bytes() != b"0")
        || h.contains_key(hyper::header::TRANSFER_ENCODING);
    if has_body {
        return reject(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "a GET request has no body",
            None,
        );
    }
    let Some(token) = h.get(hyper::header::AUTHORIZATION) else {
        return reject(
            StatusCode::UNAUTHORIZED,
            "no_token",
            "missing Authorization token",
            None,
        );
    };
    let Some(agent) = ctx.tokens.agent_for(token.as_bytes()) else {
        return reject(
            StatusCode::UNAUTHORIZED,
            "bad_token",
            "the Authorization token is not valid",
            None,
        );
    };
    let state = ctx.broker.state();
    let profile = if path == "/" {
        match state
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
        }
    } else if let Some(name) = path.strip_prefix("/profile/") {
        name.to_owned()
    } else {
        return reject(
            StatusCode::NOT_FOUND,
            "not_found",
            "use / or /profile/NAME",
            Some(&agent),
        );
    };
    drop(state);
    let req = CredRequest {
        profile,
        agent: None,
        reason: None,
        duration_seconds: None,
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
        Ok(Err(e)) => {
            let status = match &e {
                BrokerError::Denied(_) => StatusCode::FORBIDDEN,
                _ => StatusCode::SERVICE_UNAVAILABLE,
            };
            // Broker messages name profiles and agents, never secrets or internals.
            error(status, e.code(), &e.to_string())
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
