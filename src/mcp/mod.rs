//! `mandate mcp`: a Model Context Protocol server on stdio (the `rmcp` SDK) that an agent host
//! starts. It talks to the daemon over the Unix socket as the process's own uid, so the kernel
//! says which agent is asking, exactly as for the CLI; it never asks for, holds or prints a
//! secret (`acquire` sessions stay in the daemon for `credential_process`).
//!
//! * this file: the server, its four tools and the bounded stdio transport;
//! * [`args`]: the tools' arguments, their JSON schemas and checks;
//! * [`answer`]: tool results (issued, pending, refused);
//! * [`daemon`]: the requests to the daemon.
//!
//! Every refusal is audited by the daemon: a bad argument caught here is reported to it
//! (`client_refusal`) before the tool error goes back.

pub mod answer;
pub mod args;
pub mod daemon;

use std::path::Path;
use std::time::Duration;

use rmcp::handler::server::{router::tool::ToolRouter, wrapper::Parameters};
use rmcp::model::{
    CallToolResult, Implementation, ProgressNotificationParam, ServerCapabilities, ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::transport::async_rw::AsyncRwTransport;
use rmcp::{ErrorData, RoleServer, ServerHandler, ServiceExt, tool, tool_handler, tool_router};

use crate::protocol::Request;
use answer::Usage;
use daemon::{Daemon, Refused};

/// Largest MCP message (one JSON-RPC line) read from the host; longer lines are dropped by
/// the transport. A tool's arguments are far smaller (a reason is at most 1 KiB), but a 100 KB
/// hostile one must still reach the checks and get its clear error.
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;
/// How often `request_status` asks the daemon while it waits.
const POLL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum McpError {
    #[error("{0}")]
    Config(String),
    #[error("the MCP session failed: {0}")]
    Session(String),
}

/// The MCP server: the daemon it asks and how the agent's tools get credentials.
#[derive(Clone)]
pub struct Server {
    daemon: Daemon,
    usage: Usage,
    #[allow(dead_code, reason = "read by the tool_handler macro")]
    tool_router: ToolRouter<Self>,
}

const INSTRUCTIONS: &str = "mandate brokers scoped, short-lived AWS credentials for this agent. \
Call list_capabilities to see the agent's profiles, which_profile to find the least privileged \
profile for an AWS action, request_capability with a reason before using one (some profiles need \
a human's approval: then wait with request_status). Credentials never appear here: use the \
credential_process line or `mandate exec` that request_capability returns.";

#[tool_router]
impl Server {
    pub fn new(daemon: Daemon, usage: Usage) -> Self {
        Server {
            daemon,
            usage,
            tool_router: Self::tool_router(),
        }
    }

    #[tool(
        description = "The agent's capability profiles: what each allows in plain words, how long sessions last, and which need a human's approval.",
        annotations(read_only_hint = true)
    )]
    async fn list_capabilities(&self) -> Result<CallToolResult, ErrorData> {
        let req = Request::Capabilities {
            agent: self.daemon.agent.clone(),
        };
        Ok(match self.daemon.call(req).await {
            Ok(resp) => answer::ok(resp.result.unwrap_or_default()),
            Err(r) => answer::refused(&r, None),
        })
    }

    #[tool(
        description = "Ask for a capability profile, saying why. Answers issued (with the AWS profile / credential_process line to use; never keys), pending (the approval request id, who must approve; wait with request_status) or refused (why, and what to ask for instead)."
    )]
    async fn request_capability(
        &self,
        Parameters(a): Parameters<args::RequestCapability>,
    ) -> Result<CallToolResult, ErrorData> {
        let c = match a.parse() {
            Ok(c) => c,
            Err(m) => return Ok(self.bad_argument("request_capability", &m).await),
        };
        let req = Request::Acquire {
            profile: c.profile.as_str().to_owned(),
            agent: self.daemon.agent.clone(),
            reason: Some(c.reason),
            duration_seconds: c.duration_seconds,
            approval_id: None,
        };
        Ok(self.acquired(req, None).await)
    }

    #[tool(
        description = "The state of one of the agent's approval requests. With wait_seconds (at most 300), waits for a human's decision, sending progress notifications; once approved, the session is issued and the answer says how to use it."
    )]
    async fn request_status(
        &self,
        Parameters(a): Parameters<args::RequestStatus>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let (id, wait) = match a.parse() {
            Ok(p) => p,
            Err(m) => return Ok(self.bad_argument("request_status", &m).await),
        };
        let token = ctx.meta.get_progress_token();
        let start = tokio::time::Instant::now();
        let deadline = start + Duration::from_secs(u64::from(wait));
        loop {
            let req = Request::ApprovalStatus {
                id: id.to_string(),
                agent: self.daemon.agent.clone(),
            };
            let status = match self.daemon.call(req).await {
                Ok(resp) => resp.result.unwrap_or_default(),
                Err(r) => return Ok(answer::refused(&r, None)),
            };
            let waited = start.elapsed().as_secs() as u32;
            match status["status"].as_str().unwrap_or_default() {
                "approved" => {
                    let req = Request::Acquire {
                        profile: status["profile"].as_str().unwrap_or_default().to_owned(),
                        agent: self.daemon.agent.clone(),
                        reason: status["reason"].as_str().map(str::to_owned),
                        duration_seconds: status["duration_seconds"]
                            .as_u64()
                            .and_then(|d| u32::try_from(d).ok()),
                        approval_id: Some(id.clone()),
                    };
                    return Ok(self.acquired(req, Some(waited)).await);
                }
                "pending" if tokio::time::Instant::now() < deadline => {
                    if let Some(t) = &token {
                        let msg = format!(
                            "waiting for the approval of {} on request {id} ({}/{} approvals; {} s of {wait} s)",
                            status["needs"].as_str().unwrap_or("an approver"),
                            status["have"],
                            status["need"],
                            waited
                        );
                        let _ = ctx
                            .peer
                            .notify_progress(
                                ProgressNotificationParam::new(t.clone(), f64::from(waited))
                                    .with_total(f64::from(wait))
                                    .with_message(msg),
                            )
                            .await;
                    }
                    tokio::select! {
                        _ = ctx.ct.cancelled() => return Ok(answer::pending(
                            "the wait was cancelled; the request is still pending",
                            &status,
                            Some(waited),
                        )),
                        _ = tokio::time::sleep(POLL) => {}
                    }
                }
                "pending" => {
                    let msg = format!(
                        "approval request {id} is still pending ({}/{} approvals; expires {})",
                        status["have"],
                        status["need"],
                        status["expires"].as_str().unwrap_or("")
                    );
                    return Ok(answer::pending(&msg, &status, Some(waited)));
                }
                "redeemed" => {
                    // Issued earlier (by this tool or by credential_process): the same answer
                    // as then, without the expiry this view does not know.
                    let issued = serde_json::json!({
                        "profile": status["profile"],
                        "used_at": status["used_at"],
                        "approval": { "id": id },
                    });
                    return Ok(answer::issued(&issued, &self.usage));
                }
                "rejected" => {
                    let note = status["note"]
                        .as_str()
                        .map(|n| format!(": {n}"))
                        .unwrap_or_default();
                    let r = Refused::new(
                        "approval_closed",
                        format!(
                            "approval request {id} is rejected by {}{note}; nothing was issued",
                            status["rejected_by"].as_str().unwrap_or("an approver")
                        ),
                    );
                    return Ok(answer::refused(
                        &r,
                        Some("ask for less (which_profile finds the least privileged profile), or give a better reason in a new request_capability".into()),
                    ));
                }
                other => {
                    let r = Refused::new(
                        "approval_closed",
                        format!("approval request {id} is {other}; nothing was issued"),
                    );
                    return Ok(answer::refused(
                        &r,
                        Some("call request_capability again to open a new request".into()),
                    ));
                }
            }
        }
    }

    #[tool(
        description = "Which of the agent's profiles would allow an AWS action (service:Action, optionally on a resource ARN), least privileged first, or why none does.",
        annotations(read_only_hint = true)
    )]
    async fn which_profile(
        &self,
        Parameters(a): Parameters<args::WhichProfile>,
    ) -> Result<CallToolResult, ErrorData> {
        let (action, resource) = match a.parse() {
            Ok(p) => p,
            Err(m) => return Ok(self.bad_argument("which_profile", &m).await),
        };
        let req = Request::WhichProfile {
            action,
            resource,
            agent: self.daemon.agent.clone(),
        };
        Ok(match self.daemon.call(req).await {
            Ok(resp) => answer::ok(resp.result.unwrap_or_default()),
            Err(r) => answer::refused(&r, None),
        })
    }
}

impl Server {
    /// A refused argument: audited by the daemon, returned as a tool error with the message.
    async fn bad_argument(&self, tool: &str, message: &str) -> CallToolResult {
        self.daemon.report_refusal(tool, message).await;
        answer::refused(&Refused::new("bad_request", message.to_owned()), None)
    }

    /// An `acquire` and what it came to: issued, pending or refused.
    async fn acquired(&self, req: Request, waited: Option<u32>) -> CallToolResult {
        let profile = match &req {
            Request::Acquire { profile, .. } => profile.clone(),
            _ => String::new(),
        };
        match self.daemon.call(req).await {
            Ok(resp) => answer::issued(&resp.result.unwrap_or_default(), &self.usage),
            Err(r) if r.code == "approval_pending" => {
                let mut approval = r.approval.clone().unwrap_or_default();
                approval["profile"] = profile.into();
                answer::pending(&r.message, &approval, waited)
            }
            Err(r) => {
                let instead = self.instead(&r).await;
                answer::refused(&r, instead)
            }
        }
    }

    /// What to ask for instead of a refused profile.
    async fn instead(&self, r: &Refused) -> Option<String> {
        match r.code.as_str() {
            "unknown_profile" | "not_bound" => {
                let caps = self
                    .daemon
                    .call(Request::Capabilities {
                        agent: self.daemon.agent.clone(),
                    })
                    .await
                    .ok()?
                    .result?;
                let names: Vec<&str> = caps["profiles"]
                    .as_array()?
                    .iter()
                    .filter_map(|p| p["profile"].as_str())
                    .collect();
                Some(format!(
                    "this agent's profiles are {}; which_profile names the least privileged one for an action",
                    if names.is_empty() {
                        "none".to_owned()
                    } else {
                        names.join(", ")
                    }
                ))
            }
            "bad_request" => Some("fix the argument and ask again".into()),
            "approval_closed" => Some("call request_capability again to open a new request".into()),
            "paused" | "revoked" | "breaker_open" => {
                Some("nothing to ask for instead: an approver must lift the stop first".into())
            }
            "rate_limited" | "too_many_sessions" | "too_many_pending" => {
                Some("wait, then ask again".into())
            }
            _ => None,
        }
    }
}

#[tool_handler]
impl ServerHandler for Server {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("mandate", env!("CARGO_PKG_VERSION")))
            .with_instructions(INSTRUCTIONS)
    }
}

/// Runs the server on stdin/stdout until the host closes it. `config_flag` and `agent` are
/// the command line's; the daemon's socket comes from the config.
pub async fn serve(config_flag: Option<&Path>, agent: Option<String>) -> Result<(), McpError> {
    let path = crate::config::locate(config_flag).map_err(|e| McpError::Config(e.to_string()))?;
    let cfg = crate::config::read(&path).map_err(|e| match e {
        crate::config::ConfigError::Invalid(d) => McpError::Config(d[0].to_string()),
        other => McpError::Config(other.to_string()),
    })?;
    let usage = Usage {
        config_arg: config_flag
            .map(|_| {
                format!(
                    " --config {}",
                    std::path::absolute(&path).unwrap_or(path.clone()).display()
                )
            })
            .unwrap_or_default(),
        agent_arg: agent
            .as_ref()
            .map(|a| format!(" --agent {a}"))
            .unwrap_or_default(),
    };
    let server = Server::new(
        Daemon {
            socket: cfg.socket.clone(),
            agent,
        },
        usage,
    );
    let transport =
        AsyncRwTransport::<RoleServer, _, _>::new(tokio::io::stdin(), tokio::io::stdout())
            .with_max_line_length(MAX_MESSAGE_BYTES);
    let running = server
        .serve(transport)
        .await
        .map_err(|e| McpError::Session(e.to_string()))?;
    running
        .waiting()
        .await
        .map_err(|e| McpError::Session(e.to_string()))?;
    Ok(())
}
