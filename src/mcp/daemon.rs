//! The MCP server's side of the socket: one request per tool call, as the process's own uid
//! (the kernel tells the daemon who is asking, exactly as for the CLI). Only requests whose
//! answers carry no secret are sent: `acquire` (never `credentials`), `capabilities`,
//! `which_profile`, `approval_status` and `client_refusal`.

use std::path::PathBuf;

use crate::client::{self, ClientError};
use crate::protocol::{Request, Response, WireError};

/// The daemon's socket and the agent to act as (when the uid belongs to several).
#[derive(Clone, Debug)]
pub struct Daemon {
    pub socket: PathBuf,
    pub agent: Option<String>,
}

/// A refusal or an outage, with the daemon's code and message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    pub code: String,
    pub message: String,
    /// The pending approval request, with code `approval_pending`.
    pub approval: Option<serde_json::Value>,
}

impl Refused {
    pub fn new(code: &str, message: String) -> Refused {
        Refused {
            code: code.into(),
            message,
            approval: None,
        }
    }
}

impl Daemon {
    /// Sends one request (blocking I/O on the blocking pool) and returns its `result`, or the
    /// refusal. A response that carries credentials is dropped unread: this server never
    /// handles a secret.
    pub async fn call(&self, req: Request) -> Result<Response, Refused> {
        let socket = self.socket.clone();
        let joined = tokio::task::spawn_blocking(move || {
            client::call(&socket, &req, client::calls::CALL_TIMEOUT)
        })
        .await;
        let resp = match joined {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                let code = match e {
                    ClientError::PermissionDenied(_) => "permission_denied",
                    ClientError::NotRunning(_) => "not_running",
                    ClientError::Timeout => "timeout",
                    ClientError::Protocol(_) => "unavailable",
                };
                return Err(Refused::new(code, e.to_string()));
            }
            Err(_) => {
                return Err(Refused::new(
                    "unavailable",
                    "the request to the daemon did not finish".into(),
                ));
            }
        };
        if resp.credentials.is_some() {
            return Err(Refused::new(
                "unavailable",
                "the daemon answered with credentials; refusing to handle them".into(),
            ));
        }
        if resp.ok {
            return Ok(resp);
        }
        let WireError { code, message } = resp.error.clone().unwrap_or(WireError {
            code: "error".into(),
            message: "unknown error".into(),
        });
        Err(Refused {
            code,
            message,
            approval: resp.approval,
        })
    }

    /// A tool argument refused here, before any request: the daemon audits it as this caller's
    /// refusal (best effort: when the daemon is down there is nobody to tell).
    pub async fn report_refusal(&self, tool: &str, message: &str) {
        let message: String = crate::diag::terminal_line(message)
            .chars()
            .take(crate::protocol::MAX_REFUSAL_MESSAGE / 4)
            .collect();
        let _ = self
            .call(Request::ClientRefusal {
                what: format!("mcp {tool}"),
                message,
                agent: self.agent.clone(),
            })
            .await;
    }
}
