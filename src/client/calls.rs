//! One request as the CLI sees it: find the config, call the daemon, and turn a refusal or an
//! outage into one line for stderr and an exit code. Both binaries use this, so
//! `credential-process` says the same thing whichever of them answers.

use std::path::Path;
use std::time::Duration;

use super::ClientError;
use crate::exit::Exit;
use crate::protocol::{Request, Response};

/// The broker may take this long (STS retries included) before the CLI gives up.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(70);

/// A failure to report: one line for stderr and the exit code.
pub struct Failure(pub Exit, pub String);

/// Sends one request; only a transport failure is an error (the response may say `ok: false`).
pub fn call_raw(config_flag: Option<&Path>, req: &Request) -> Result<Response, Failure> {
    let path =
        crate::config::locate(config_flag).map_err(|e| Failure(Exit::NotFound, e.to_string()))?;
    let cfg = crate::config::read(&path).map_err(|e| match e {
        crate::config::ConfigError::Invalid(d) => Failure(
            Exit::Invalid,
            format!(
                "{} (run `mandate serve --config {}` to see every problem)",
                d[0],
                path.display()
            ),
        ),
        other => Failure(Exit::NotFound, other.to_string()),
    })?;
    super::call(&cfg.socket, req, CALL_TIMEOUT).map_err(|e| match e {
        ClientError::PermissionDenied(_) => Failure(Exit::Denied, e.to_string()),
        ClientError::NotRunning(_) => {
            let socket = std::path::absolute(&cfg.socket).unwrap_or(cfg.socket.clone());
            let config = std::path::absolute(&path).unwrap_or(path.clone());
            Failure(
                Exit::Unavailable,
                format!(
                    "the mandate daemon is not running (no socket at {}); start it with `mandate --config {} serve`",
                    socket.display(),
                    config.display()
                ),
            )
        }
        _ => Failure(Exit::Unavailable, e.to_string()),
    })
}

/// Sends one request; a refusal or failure becomes the one line to print and the exit code.
pub fn call(config_flag: Option<&Path>, req: &Request) -> Result<Response, Failure> {
    ok(call_raw(config_flag, req)?)
}

/// A response that says `ok: false` becomes the failure to report: a refusal exits 5, an
/// unknown profile 4, anything else 6.
pub fn ok(resp: Response) -> Result<Response, Failure> {
    if resp.ok {
        return Ok(resp);
    }
    let err = resp.error.unwrap_or_else(|| crate::protocol::WireError {
        code: "error".into(),
        message: "unknown error".into(),
    });
    let exit = if err.code == "unknown_profile" {
        // A named profile that does not exist (README: exit code 4).
        Exit::NotFound
    } else if crate::broker::DenyCode::is_refusal_code(&err.code) {
        Exit::Denied
    } else {
        Exit::Unavailable
    };
    Err(Failure(exit, err.message))
}

/// `credential-process` for `profile`: the line the AWS `credential_process` format wants
/// on stdout (with a newline), or the failure to report.
pub fn credential_process(
    config_flag: Option<&Path>,
    profile: String,
    agent: Option<String>,
) -> Result<Vec<u8>, Failure> {
    let resp = call(
        config_flag,
        &Request::Credentials {
            profile,
            agent,
            reason: None,
            duration_seconds: None,
            approval_id: None,
        },
    )?;
    let c = resp
        .credentials
        .ok_or_else(|| Failure(Exit::Unavailable, "the daemon sent no credentials".into()))?;
    let body = serde_json::json!({
        "Version": 1,
        "AccessKeyId": c.access_key_id,
        "SecretAccessKey": c.secret_access_key.expose(),
        "SessionToken": c.session_token.expose(),
        "Expiration": c.expiration,
    });
    Ok(format!("{body}\n").into_bytes())
}

/// What to print on stderr for a failure: one line, terminal-safe.
pub fn failure_line(f: &Failure) -> String {
    format!("mandate: {}", crate::diag::terminal_line(&f.1))
}
