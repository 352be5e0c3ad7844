//! The approval console (design §9): remote approvers sign in with OpenID Connect and confirm
//! every vote with a passkey.
//!
//! Its own listener (`[console] listen`), plain HTTP on loopback behind a TLS proxy or TLS
//! itself. Every response carries a strict Content-Security-Policy (this origin's scripts and
//! styles only, no framing), `no-store`, no referrer. `Host` must be the public host (the
//! DNS-rebinding defence); a POST needs the session's CSRF token and, when the browser sends
//! `Origin`, the public origin. Headers, bodies, connections and time are bounded. The broker
//! decides: the console only authenticates the approver (`Caller::Console`) and shows what the
//! broker returns. Refusals at the door are audited, within a budget per second.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::aws::Issuer;
use crate::broker::{Broker, ConsoleEvent};
use crate::config::ConsoleConfig;

mod handlers;
pub mod oidc;
pub mod pages;
pub mod passkey;
pub mod session;

pub use handlers::Action;

/// Concurrent connections.
pub const MAX_CONNECTIONS: usize = 256;
/// Time to send the request head (and, with TLS, to finish the handshake).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections one address may hold when the console faces the network itself (not on
/// loopback, where every client is the proxy).
pub const MAX_CONNECTIONS_PER_ADDRESS: usize = 32;
/// Whole-connection time limit.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(120);
/// Read buffer (bounds the request head).
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Request bodies (a passkey answer is a few KiB).
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Time to send the body once the head is in (a slow body holds a connection no longer).
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Refusals written to the audit log per second at most, for anonymous requests and, apart,
/// for signed-in ones (so that anonymous noise cannot hide an approver's refusal); the rest
/// are logged, and counted in the next record written.
pub const AUDITED_REFUSALS_PER_SECOND: u64 = 20;

pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Everything the console keeps between requests.
pub struct Console {
    pub config: ConsoleConfig,
    pub oidc: oidc::Provider,
    pub passkeys: passkey::Passkeys<Action>,
    pub sessions: session::Sessions,
    anonymous_refusals: Budget,
    signed_in_refusals: Budget,
}

/// A per-second budget, with the count of what it turned away.
#[derive(Default)]
struct Budget {
    second: AtomicU64,
    used: AtomicU64,
    suppressed: AtomicU64,
}

impl Budget {
    /// Whether one more may be written now; if so, how many were turned away before it.
    fn take(&self) -> Option<u64> {
        let now = crate::clock::unix_now() as u64;
        if self.second.swap(now, Ordering::Relaxed) != now {
            self.used.store(0, Ordering::Relaxed);
        }
        if self.used.fetch_add(1, Ordering::Relaxed) < AUDITED_REFUSALS_PER_SECOND {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("the console cannot start: {0}")]
    Oidc(#[from] oidc::OidcError),
    #[error("the console cannot start: {0}")]
    Passkey(#[from] passkey::PasskeyError),
    #[error("the console cannot start: {0}")]
    Tls(String),
}

impl Console {
    /// Sets the console up from its config (no network yet): the provider client, and the
    /// passkeys kept in `state_dir/console/passkeys.json`.
    pub fn open(
        config: &ConsoleConfig,
        state_dir: &std::path::Path,
    ) -> Result<Console, ConsoleError> {
        let oidc = oidc::Provider::new(&config.oidc, config.redirect_url())?;
        let passkeys = passkey::Passkeys::open(
            &config.public_url,
            &state_dir.join("console").join("passkeys.json"),
        )?;
        Ok(Console {
            config: config.clone(),
            oidc,
            passkeys,
            sessions: session::Sessions::default(),
            anonymous_refusals: Budget::default(),
            signed_in_refusals: Budget::default(),
        })
    }

    /// `host:port` as browsers send it in `Host`.
    fn authority(&self) -> String {
        let u = &self.config.public_url;
        match u.port() {
            Some(p) => format!("{}:{p}", u.host_str().unwrap_or_default()),
            None => u.host_str().unwrap_or_default().to_owned(),
        }
    }

    /// The origin browsers send in `Origin`.
    fn origin(&self) -> String {
        self.config.public_url.origin().ascii_serialization()
    }
}

/// The TLS acceptor for `tls_cert`/`tls_key`.
pub fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<tokio_rustls::TlsAcceptor, ConsoleError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<Result<_, _>>())
        .map_err(|e| ConsoleError::Tls(format!("{}: {e}", cert.display())))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| ConsoleError::Tls(format!("{}: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
        .map_err(|e| ConsoleError::Tls(e.to_string()))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Connections per client address (not counted on loopback).
#[derive(Default)]
struct PerAddress(std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>);

/// One connection's place in [`PerAddress`], given back on drop.
struct Slot(Option<(Arc<PerAddress>, std::net::IpAddr)>);

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some((p, ip)) = self.0.take() {
            let mut m = p.0.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = m.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    m.remove(&ip);
                }
            }
        }
    }
}

impl PerAddress {
    fn take(self: &Arc<Self>, ip: std::net::IpAddr) -> Option<Slot> {
        if ip.is_loopback() {
            return Some(Slot(None));
        }
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(ip).or_default();
        if *n >= MAX_CONNECTIONS_PER_ADDRESS {
            return None;
        }
        *n += 1;
        Some(Slot(Some((self.clone(), ip))))
    }
}

struct Ctx<I: Issuer> {
    broker: Arc<Broker<I>>,
    console: Arc<Console>,
}

/// Serves the console until `shutdown` resolves.
pub async fn serve<I: Issuer>(
    broker: Arc<Broker<I>>,
    console: Arc<Console>,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let ctx = Arc::new(Ctx { broker, console });
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let per_address = Arc::new(PerAddress::default());
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => {
                let Ok((stream, peer)) = accepted else { continue };
                let Some(slot) = per_address.take(peer.ip()) else { continue };
                let Ok(permit) = permits.clone().try_acquire_owned() else { continue };
                let ctx = ctx.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let ctx = ctx.clone();
                        async move { Ok::<_, Infallible>(respond(&ctx, req).await) }
                    });
                    // One request per connection: a connection is never held between pages.
                    let builder = {
                        let mut b = hyper::server::conn::http1::Builder::new();
                        b.timer(hyper_util::rt::TokioTimer::new())
                            .header_read_timeout(HEADER_TIMEOUT)
                            .keep_alive(false)
                            .max_buf_size(MAX_HEADER_BYTES);
                        b
                    };
                    match tls {
                        Some(acceptor) => {
                            let Ok(Ok(stream)) = tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(stream)).await else {
                                drop(permit);
                                drop(slot);
                                return;
                            };
                            let io = hyper_util::rt::TokioIo::new(stream);
                            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, builder.serve_connection(io, service)).await;
                        }
                        None => {
                            let io = hyper_util::rt::TokioIo::new(stream);
                            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, builder.serve_connection(io, service)).await;
                        }
                    }
                    drop(permit);
                    drop(slot);
                });
            }
        }
    }
}

/// One request, as the handlers see it: parsed once, bounded.
pub struct Incoming2 {
    pub method: hyper::Method,
    pub path: String,
    pub query: Option<String>,
    pub cookie: Option<String>,
    pub login_cookie: Option<String>,
    pub origin: Option<String>,
    pub csrf_header: Option<String>,
    pub content_type: Option<String>,
    pub body: Bytes,
}

impl Incoming2 {
    /// The form fields of a urlencoded body (or the query), the first of each name.
    pub fn form(&self) -> std::collections::HashMap<String, String> {
        let mut out = std::collections::HashMap::new();
        for (k, v) in form_urlencoded::parse(&self.body) {
            out.entry(k.into_owned()).or_insert_with(|| v.into_owned());
        }
        out
    }

    pub fn query_params(&self) -> std::collections::HashMap<String, String> {
        let mut out = std::collections::HashMap::new();
        if let Some(q) = &self.query {
            for (k, v) in form_urlencoded::parse(q.as_bytes()) {
                out.entry(k.into_owned()).or_insert_with(|| v.into_owned());
            }
        }
        out
    }
}

fn cookie(headers: &hyper::HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(hyper::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

fn header(headers: &hyper::HeaderMap, name: hyper::header::HeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// A response with the console's security headers.
pub struct Reply {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    pub headers: Vec<(hyper::header::HeaderName, String)>,
}

impl Reply {
    pub fn html(status: StatusCode, body: String) -> Reply {
        Reply {
            status,
            content_type: "text/html; charset=utf-8",
            body: body.into_bytes(),
            headers: Vec::new(),
        }
    }
    pub fn json(status: StatusCode, v: &serde_json::Value) -> Reply {
        Reply {
            status,
            content_type: "application/json",
            body: v.to_string().into_bytes(),
            headers: Vec::new(),
        }
    }
    pub fn redirect(to: &str) -> Reply {
        let mut r = Reply::html(StatusCode::SEE_OTHER, String::new());
        r.headers.push((hyper::header::LOCATION, to.to_owned()));
        r
    }
    pub fn with(mut self, name: hyper::header::HeaderName, value: String) -> Reply {
        self.headers.push((name, value));
        self
    }
}

fn finish(r: Reply) -> Response<Full<Bytes>> {
    let mut b = Response::builder()
        .status(r.status)
        .header(hyper::header::CONTENT_TYPE, r.content_type)
        .header(hyper::header::CACHE_CONTROL, "no-store")
        .header(hyper::header::CONTENT_SECURITY_POLICY, CSP)
        .header(hyper::header::X_FRAME_OPTIONS, "DENY")
        .header(hyper::header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .header(hyper::header::REFERRER_POLICY, "no-referrer")
        .header("cross-origin-opener-policy", "same-origin")
        .header("cross-origin-resource-policy", "same-origin")
        .header(
            "permissions-policy",
            "camera=(), microphone=(), geolocation=()",
        );
    for (k, v) in r.headers {
        b = b.header(k, v);
    }
    b.body(Full::new(Bytes::from(r.body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

async fn respond<I: Issuer>(ctx: &Ctx<I>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    // The DNS-rebinding defence: only the public host.
    let host = header(req.headers(), hyper::header::HOST);
    if host.as_deref() != Some(ctx.console.authority().as_str()) {
        return finish(Reply::html(
            StatusCode::MISDIRECTED_REQUEST,
            pages::problem(
                "Wrong address",
                "Open the console at its public address.",
                None,
            ),
        ));
    }
    let (parts, body) = req.into_parts();
    let body = match tokio::time::timeout(
        BODY_TIMEOUT,
        Limited::new(body, MAX_BODY_BYTES).collect(),
    )
    .await
    {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(_)) => {
            return finish(Reply::html(
                StatusCode::PAYLOAD_TOO_LARGE,
                pages::problem("Too large", "That request is too large.", None),
            ));
        }
        Err(_) => {
            return finish(Reply::html(
                StatusCode::REQUEST_TIMEOUT,
                pages::problem("Too slow", "The request did not arrive in time.", None),
            ));
        }
    };
    let incoming = Incoming2 {
        method: parts.method.clone(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        cookie: cookie(&parts.headers, session::SESSION_COOKIE),
        login_cookie: cookie(&parts.headers, session::LOGIN_COOKIE),
        origin: header(&parts.headers, hyper::header::ORIGIN),
        csrf_header: header(
            &parts.headers,
            hyper::header::HeaderName::from_static("x-csrf-token"),
        ),
        content_type: header(&parts.headers, hyper::header::CONTENT_TYPE),
        body,
    };
    finish(handlers::route(ctx, incoming).await)
}

impl<I: Issuer> Ctx<I> {
    /// Audits a refusal at the door (within the budget; always logged).
    async fn refused(&self, mut e: ConsoleEvent) {
        tracing::warn!(what = %e.what, approver = ?e.approver, message = %e.message, "console refused");
        // Only an approver's refusals get their own budget: anyone with an account at the
        // provider can produce refusals with a subject.
        let budget = if e.approver.is_some() {
            &self.console.signed_in_refusals
        } else {
            &self.console.anonymous_refusals
        };
        let Some(suppressed) = budget.take() else {
            return;
        };
        if suppressed > 0 {
            e.message = format!(
                "{} ({suppressed} earlier refusals over the budget were logged, not recorded one by one)",
                e.message
            );
        }
        if let Err(err) = self.broker.audit_console(e).await {
            tracing::error!(error = %err, "cannot audit a console refusal");
        }
    }
}
