//! What the CLI uses to talk to the daemon: blocking std I/O, no async runtime, so
//! `credential-process` costs little more than a process start.
//!
//! * this file: one request over the socket, with a short retry when the daemon is busy;
//! * [`calls`]: a request from the CLI's point of view (find the config, call, turn a refusal
//!   or an outage into one line and an exit code), shared by both binaries;
//! * [`front`]: what the small `mandate` binary answers itself (`credential-process`) and
//!   where the full program is for everything else.

pub mod calls;
pub mod front;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::protocol::{MAX_RESPONSE_BYTES, Request, Response};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the mandate daemon is not running (no socket at {0}); start it with `mandate serve`")]
    NotRunning(String),
    #[error("permission denied on {0}: this user may not use the broker socket")]
    PermissionDenied(String),
    #[error("the mandate daemon did not answer in time")]
    Timeout,
    #[error("cannot talk to the mandate daemon: {0}")]
    Protocol(String),
}

/// Sends one request and reads the response. When the daemon answers "busy" (its connection
/// limit for this user), retries a few times over about two seconds.
pub fn call(socket: &Path, req: &Request, timeout: Duration) -> Result<Response, ClientError> {
    let mut pause = Duration::from_millis(20);
    for _ in 0..8 {
        let r = call_once(socket, req, timeout)?;
        let busy = !r.ok && r.error.as_ref().is_some_and(|e| e.code == "busy");
        if !busy {
            return Ok(r);
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(500));
    }
    call_once(socket, req, timeout)
}

fn call_once(socket: &Path, req: &Request, timeout: Duration) -> Result<Response, ClientError> {
    let shown = socket.display().to_string();
    let mut stream = UnixStream::connect(socket).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            ClientError::NotRunning(shown.clone())
        }
        std::io::ErrorKind::PermissionDenied => ClientError::PermissionDenied(shown.clone()),
        _ => ClientError::Protocol(e.to_string()),
    })?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
    let mut line = serde_json::to_vec(req).map_err(|e| ClientError::Protocol(e.to_string()))?;
    line.push(b'\n');
    stream.write_all(&line).map_err(io_err)?;
    let mut buf = Vec::new();
    BufReader::new(stream.take(MAX_RESPONSE_BYTES as u64))
        .read_until(b'\n', &mut buf)
        .map_err(io_err)?;
    if buf.is_empty() {
        return Err(ClientError::Protocol(
            "the daemon closed the connection without answering".into(),
        ));
    }
    serde_json::from_slice(&buf).map_err(|_| ClientError::Protocol("unreadable response".into()))
}

fn io_err(e: std::io::Error) -> ClientError {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => ClientError::Timeout,
        _ => ClientError::Protocol(e.to_string()),
    }
}
