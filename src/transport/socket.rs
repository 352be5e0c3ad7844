//! The Unix socket transport. Every connection's peer uid comes from the kernel
//! (`SO_PEERCRED`); the request can never claim an identity. Connections, request size and time
//! are bounded.

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

use crate::aws::Issuer;
use crate::broker::{Broker, BrokerError, Caller, CredRequest, REQUEST_DEADLINE};
use crate::clock;
use crate::protocol::{MAX_REQUEST_BYTES, Request};

/// Concurrent connections served; more are answered "busy" and closed. Each connection holds a
/// task, its socket and a request buffer that grows only as bytes arrive (at most
/// [`MAX_REQUEST_BYTES`]): about 2 KiB while idle (measured: 10,000 idle connections add 16 MiB)
/// and at most 16,384 × (1 KiB + 16 KiB) ≈ 280 MiB if every one sends a maximal request.
/// Every connection is closed after [`READ_TIMEOUT`] if its request is not complete.
pub const MAX_CONNECTIONS: usize = 16_384;
/// Of those, the last this many are only for uids that belong to an approver, so that agents
/// cannot crowd the humans who would pause or revoke them off the socket.
pub const APPROVER_RESERVE: usize = 512;
/// One uid holds at most this many connections at once (approvers' uids included).
pub const MAX_PER_UID: usize = 1024;
/// Time a client has to send its request line.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("socket directory {dir}: {reason}")]
    Dir { dir: String, reason: String },
    #[error("another mandate daemon is already listening on {0}")]
    InUse(String),
    #[error("cannot listen on {path}: {source}")]
    Bind { path: String, source: io::Error },
}

/// Creates the socket's directory (0700, whatever the umask), refuses one others can write, and
/// binds the socket with mode 0600.
pub fn bind(socket: &Path) -> Result<UnixListener, ListenError> {
    let dir = socket
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let dir_err = |reason: String| ListenError::Dir {
        dir: dir.display().to_string(),
        reason,
    };
    crate::os::create_private_dir(dir).map_err(dir_err)?;
    let meta = std::fs::metadata(dir).map_err(|e| dir_err(e.to_string()))?;
    // The directory must be ours (or root's) and private.
    let me = crate::os::effective_uid();
    if meta.uid() != me && meta.uid() != 0 {
        return Err(dir_err(format!(
            "owned by uid {}, not by the daemon's uid {me}",
            meta.uid()
        )));
    }
    if meta.permissions().mode() & 0o022 != 0 {
        return Err(dir_err("writable by group or others; chmod 700 it".into()));
    }
    if socket.exists() {
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            return Err(ListenError::InUse(socket.display().to_string()));
        }
        let _ = std::fs::remove_file(socket);
    }
    let listener = UnixListener::bind(socket).map_err(|e| ListenError::Bind {
        path: socket.display().to_string(),
        source: e,
    })?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600)).map_err(|e| {
        ListenError::Bind {
            path: socket.display().to_string(),
            source: e,
        }
    })?;
    Ok(listener)
}

/// Connection slots: a total, a per-uid cap, and a reserve only approvers' uids may use.
#[derive(Default)]
pub struct Slots {
    counts: Mutex<(usize, HashMap<u32, usize>)>,
}

/// One connection's slot, given back on drop.
pub struct Slot {
    slots: Arc<Slots>,
    uid: u32,
}

impl Slots {
    /// A slot for a connection from `uid`, or `None` (the caller answers "busy").
    pub fn take(self: &Arc<Self>, uid: u32, approver: bool) -> Option<Slot> {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let limit = if approver {
            MAX_CONNECTIONS
        } else {
            MAX_CONNECTIONS - APPROVER_RESERVE
        };
        let mine = c.1.get(&uid).copied().unwrap_or(0);
        if c.0 >= limit || mine >= MAX_PER_UID {
            return None;
        }
        c.0 += 1;
        *c.1.entry(uid).or_default() += 1;
        Some(Slot {
            slots: self.clone(),
            uid,
        })
    }

    pub fn in_use(&self) -> usize {
        self.counts.lock().unwrap_or_else(|e| e.into_inner()).0
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.slots.counts.lock().unwrap_or_else(|e| e.into_inner());
        c.0 -= 1;
        if let Some(n) = c.1.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                c.1.remove(&self.uid);
            }
        }
    }
}

/// Serves until `shutdown` resolves.
pub async fn serve<I: Issuer>(
    broker: Arc<Broker<I>>,
    listener: UnixListener,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let slots = Arc::new(Slots::default());
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let Some(uid) = stream.peer_cred().ok().map(|c| c.uid()) else { continue };
                let approver = broker.state().config.approvers.values().any(|a| a.uids.contains(&uid));
                let Some(slot) = slots.take(uid, approver) else {
                    tokio::spawn(async move { let mut s = stream; let _ = reply(&mut s, &error_body("busy", "the broker is at its connection limit for this user; retry")).await; });
                    continue;
                };
                let broker = broker.clone();
                tokio::spawn(async move {
                    handle(broker, stream).await;
                    drop(slot);
                });
            }
        }
    }
    // Graceful: no new connections; let requests in flight finish (bounded).
    let deadline = tokio::time::Instant::now() + REQUEST_DEADLINE + READ_TIMEOUT;
    while slots.in_use() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn error_body(code: &str, message: &str) -> serde_json::Value {
    serde_json::json!({ "ok": false, "error": { "code": code, "message": message } })
}

async fn reply(stream: &mut UnixStream, body: &serde_json::Value) -> io::Result<()> {
    let mut bytes = serde_json::to_vec(body).unwrap_or_default();
    bytes.push(b'\n');
    stream.write_all(&bytes).await?;
    stream.shutdown().await
}

/// Reads up to the first newline (or EOF), growing the buffer only as bytes arrive, and stops
/// one byte past the limit.
async fn read_line(stream: &mut UnixStream, line: &mut Vec<u8>) -> io::Result<()> {
    let mut chunk = [0u8; 512];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        let piece = &chunk[..n];
        if let Some(i) = piece.iter().position(|&b| b == b'\n') {
            line.extend_from_slice(&piece[..i]);
            return Ok(());
        }
        line.extend_from_slice(piece);
        if line.len() > MAX_REQUEST_BYTES {
            return Ok(());
        }
    }
}

/// `{"ok":true,"result":...}` or the error.
fn result_body<T: serde::Serialize>(r: Result<T, BrokerError>) -> serde_json::Value {
    match r {
        Ok(v) => serde_json::json!({ "ok": true, "result": v }),
        Err(e) => {
            if !e.is_refusal() {
                tracing::warn!(code = e.code(), error = %e, "request failed");
            }
            error_body(e.code(), &e.to_string())
        }
    }
}

async fn handle<I: Issuer>(broker: Arc<Broker<I>>, mut stream: UnixStream) {
    let cred = match stream.peer_cred() {
        Ok(c) => c,
        Err(_) => return,
    };
    let caller = Caller::Peer {
        uid: cred.uid(),
        pid: cred.pid(),
    };
    let mut line = Vec::new();
    let read = tokio::time::timeout(READ_TIMEOUT, read_line(&mut stream, &mut line)).await;
    let body = match read {
        Err(_) => error_body("timeout", "no request received in time"),
        Ok(Err(_)) => return,
        Ok(Ok(_)) if line.len() > MAX_REQUEST_BYTES => {
            error_body("bad_request", "request too large")
        }
        Ok(Ok(_)) => match Request::parse(&line) {
            Err(m) => error_body("bad_request", &m),
            // Boxed: the request future is large (it holds the whole STS call), and an idle
            // connection should not pay for it.
            Ok(req) => Box::pin(dispatch(&broker, caller, req)).await,
        },
    };
    let _ = tokio::time::timeout(READ_TIMEOUT, reply(&mut stream, &body)).await;
}

async fn dispatch<I: Issuer>(
    broker: &Broker<I>,
    caller: Caller,
    req: Request,
) -> serde_json::Value {
    let uid = caller.uid().unwrap_or(u32::MAX);
    match req {
        Request::Credentials {
            profile,
            agent,
            reason,
            duration_seconds,
            approval_id,
        } => {
            let req = CredRequest {
                profile,
                agent,
                reason,
                duration_seconds,
                approval_id,
            };
            credentials_body(
                uid,
                tokio::time::timeout(REQUEST_DEADLINE, broker.credentials(caller, req)).await,
            )
        }
        Request::Approvals { all } => result_body(broker.approvals(&caller, all).await),
        Request::Vote {
            id,
            approve,
            note,
            approver,
            digest,
        } => result_body(
            broker
                .vote_on_seen(caller, id, approve, note, approver, digest)
                .await,
        ),
        Request::Revoke { scope, aws } => result_body(broker.revoke(caller, scope, aws).await),
        Request::Unrevoke { scope } => result_body(
            broker
                .unrevoke(caller, scope)
                .await
                .map(|n| serde_json::json!({ "lifted": n })),
        ),
        Request::RevokeGc => result_body(broker.revoke_gc(caller).await),
        Request::BreakerReset { agent } => result_body(broker.breaker_reset(caller, agent).await),
        Request::Pause { reason } => result_body(broker.set_paused(caller, true, reason).await),
        Request::Resume => result_body(broker.set_paused(caller, false, None).await),
        Request::Capabilities { agent } => result_body(broker.capabilities(caller, agent).await),
        Request::WhichProfile {
            action,
            resource,
            agent,
        } => result_body(broker.which_profile(caller, agent, action, resource).await),
        Request::ApprovalStatus { id, agent } => {
            result_body(broker.approval_status(caller, agent, id).await)
        }
        Request::ClientRefusal {
            what,
            message,
            agent,
        } => result_body::<()>(Err(broker
            .client_refusal(caller, agent, what, message)
            .await)),
        Request::Acquire {
            profile,
            agent,
            reason,
            duration_seconds,
            approval_id,
        } => {
            // The session stays in the cache for credential_process, which asks for the
            // profile's own duration: a session of another one could never be fetched.
            let own = broker
                .state()
                .profiles
                .get(&profile)
                .map(|p| p.profile.duration.seconds());
            if let (Some(d), Some(own)) = (duration_seconds, own)
                && d != own
            {
                let message = format!(
                    "a {d} s session of {profile} cannot be handed over: credential_process fetches sessions of the profile's own duration ({own} s); leave duration out"
                );
                let e = broker
                    .client_refusal(caller, agent, "mcp request_capability".into(), message)
                    .await;
                return result_body::<()>(Err(e));
            }
            let req = CredRequest {
                profile,
                agent,
                reason,
                duration_seconds,
                approval_id,
            };
            let r = tokio::time::timeout(REQUEST_DEADLINE, broker.credentials(caller, req)).await;
            match r {
                Ok(Ok(issued)) => acquired_body(&issued),
                other => credentials_body(uid, other),
            }
        }
        Request::Status => match broker.status(uid) {
            Ok(status) => serde_json::json!({ "ok": true, "status": status }),
            Err(d) => error_body(d.code.as_str(), &d.message),
        },
    }
}

/// The answer to an `acquire` that was issued: what the session is, never its keys (they stay
/// in the daemon's cache for the agent's `credential_process`).
fn acquired_body(issued: &crate::broker::Issued) -> serde_json::Value {
    serde_json::json!({
        "ok": true,
        "result": {
            "status": "issued",
            "request_id": issued.request_id,
            "agent": issued.agent,
            "profile": issued.profile,
            "cached": issued.cached,
            "expires": clock::rfc3339(issued.credentials.expiration),
            "approval": issued.approval_id.as_ref().map(|id| serde_json::json!({"id": id})),
        },
    })
}

/// The answer to a credentials request: the keys, a pending approval, or the refusal.
fn credentials_body(
    uid: u32,
    r: Result<Result<crate::broker::Issued, BrokerError>, tokio::time::error::Elapsed>,
) -> serde_json::Value {
    match r {
        Err(_) => error_body("timeout", "the broker could not get credentials in time"),
        Ok(Err(BrokerError::Pending(p))) => {
            let mut body = error_body("approval_pending", &p.message());
            body["approval"] = serde_json::json!({
                "id": p.id,
                "status": "pending",
                "needs": p.requirement.to_string(),
                "have": p.have,
                "need": p.need,
                "expires": clock::rfc3339(p.pending_until),
                "console_url": p.console_url,
            });
            body
        }
        Ok(Err(e)) => {
            if !e.is_refusal() {
                tracing::warn!(uid, code = e.code(), error = %e, "credential request failed");
            }
            error_body(e.code(), &e.to_string())
        }
        Ok(Ok(issued)) => {
            let c = &issued.credentials;
            serde_json::json!({
                "ok": true,
                "credentials": {
                    "AccessKeyId": c.access_key_id,
                    "SecretAccessKey": c.secret_access_key.expose(),
                    "SessionToken": c.session_token.expose(),
                    "Expiration": clock::rfc3339(c.expiration),
                },
                "request_id": issued.request_id,
                "agent": issued.agent,
                "profile": issued.profile,
                "cached": issued.cached,
                "approval": issued.approval_id.map(|id| serde_json::json!({"id": id})),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_uid_cannot_take_the_approvers_slots() {
        let slots = Arc::new(Slots::default());
        let mut held = Vec::new();
        // An agent uid: at most MAX_PER_UID.
        while let Some(s) = slots.take(1000, false) {
            held.push(s);
        }
        assert_eq!(held.len(), MAX_PER_UID);
        // Many agent uids together fill everything but the reserve.
        let mut uid = 2000;
        while held.len() < MAX_CONNECTIONS - APPROVER_RESERVE {
            match slots.take(uid, false) {
                Some(s) => held.push(s),
                None => uid += 1,
            }
        }
        assert!(
            slots.take(99_999, false).is_none(),
            "the reserve is not for agents"
        );
        // An approver still gets in, up to the reserve.
        let approver: Vec<Slot> = (0..APPROVER_RESERVE)
            .filter_map(|_| slots.take(0, true))
            .collect();
        assert_eq!(approver.len(), APPROVER_RESERVE);
        assert!(slots.take(0, true).is_none(), "and then the total holds");
        drop(approver);
        drop(held);
        assert_eq!(slots.in_use(), 0);
        assert!(slots.counts.lock().unwrap().1.is_empty());
    }
}
