//! The container-credentials endpoint (`[http] listen`): what every AWS SDK speaks when
//! `AWS_CONTAINER_CREDENTIALS_FULL_URI` and `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE` are set.
//!
//! Loopback only. The token in `Authorization` (raw, no "Bearer") decides the agent; tokens are
//! kept only as sha256 hashes, compared in constant time, and re-read from their files when they
//! change (rotation without a restart). `Host` must be a loopback name with the listener's port
//! (the DNS-rebinding defence); proxy headers are refused; GET only; every response carries
//! `Cache-Control: no-store`; header size, body, connections and request time are bounded;
//! errors are JSON without internal detail; every refusal is audited.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::aws::Issuer;
use crate::broker::Broker;

mod respond;
mod screen;
mod tokens;

pub use respond::REFUSALS_PER_SECOND;
use respond::{RefusalBudget, handle};
pub use screen::{Refusal, Route, Screened, host_allowed, screen};
pub use tokens::{MIN_TOKEN_CHARS, Tokens, new_token};

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

struct Ctx<I: Issuer> {
    broker: Arc<Broker<I>>,
    tokens: Arc<Tokens>,
    port: u16,
    refusals: RefusalBudget,
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

#[cfg(test)]
mod tests;
