//! Tool results as an agent reads them: issued (which AWS profile or command to use, never the
//! keys), pending (the request id, who must approve, how to wait), or refused (why, and what to
//! ask for instead). A refusal is a tool error (`isError`) whose text is the exact message.

use rmcp::model::{CallToolResult, ContentBlock};

use super::daemon::Refused;

/// How the agent's tools reach the daemon for credentials: the `mandate` command line with the
/// same config and agent as this server.
#[derive(Clone, Debug)]
pub struct Usage {
    /// ` --config PATH` when the server was started with one, else empty.
    pub config_arg: String,
    /// ` --agent NAME` when the server acts as a named agent, else empty.
    pub agent_arg: String,
}

impl Usage {
    fn credential_process(&self, profile: &str) -> String {
        format!(
            "mandate{} credential-process {profile}{}",
            self.config_arg, self.agent_arg
        )
    }
    fn exec(&self, profile: &str) -> String {
        format!(
            "mandate{} exec {profile}{} -- COMMAND",
            self.config_arg, self.agent_arg
        )
    }
}

/// A success: the JSON as structured content and as its text.
pub fn ok(v: serde_json::Value) -> CallToolResult {
    CallToolResult::structured(v)
}

/// A tool error whose text is exactly `message`, with the details as structured content.
pub fn error(message: &str, details: serde_json::Value) -> CallToolResult {
    let mut r = CallToolResult::error(vec![ContentBlock::text(message.to_owned())]);
    r.structured_content = Some(details);
    r
}

/// A refusal from the daemon (or from the argument checks), with what to do instead.
pub fn refused(r: &Refused, instead: Option<String>) -> CallToolResult {
    let mut v = serde_json::json!({
        "status": "refused",
        "code": r.code,
        "message": r.message,
    });
    if let Some(i) = instead {
        v["instead"] = i.into();
    }
    error(&r.message, v)
}

/// A session the daemon issued (and keeps for `credential_process`).
pub fn issued(result: &serde_json::Value, usage: &Usage) -> CallToolResult {
    let profile = result["profile"].as_str().unwrap_or_default();
    let cp = usage.credential_process(profile);
    let note = "The session is issued and kept by the broker: the AWS CLI and SDKs get it through credential_process (or `mandate exec`) until it expires, then a fresh one. The keys never pass through this server.";
    ok(serde_json::json!({
        "status": "issued",
        "profile": profile,
        "agent": result["agent"],
        "request_id": result["request_id"],
        "expires": result["expires"],
        "cached": result["cached"],
        "approval": result["approval"],
        "used_at": result.get("used_at"),
        "use": {
            "aws_config": format!("[profile mandate-{profile}]\ncredential_process = {cp}"),
            "aws_profile": format!("mandate-{profile}"),
            "credential_process": cp,
            "exec": usage.exec(profile),
        },
        "note": note,
    }))
}

/// A request waiting for a human: its id, who must approve, and how to wait.
pub fn pending(message: &str, approval: &serde_json::Value, waited: Option<u32>) -> CallToolResult {
    let id = approval["id"].as_str().unwrap_or_default();
    let mut v = serde_json::json!({
        "status": "pending",
        "request_id": id,
        "profile": approval["profile"],
        "needs": approval["needs"],
        "have": approval["have"],
        "need": approval["need"],
        "expires": approval["expires"],
        "message": message,
        "console_url": approval["console_url"],
        "next": format!(
            "a human approves with `mandate approve {id}`; call request_status with {{\"id\": \"{id}\", \"wait_seconds\": 120}} to wait for the decision"
        ),
    });
    for k in ["reason", "duration_seconds"] {
        if !approval[k].is_null() {
            v[k] = approval[k].clone();
        }
    }
    if let Some(w) = waited {
        v["waited_seconds"] = w.into();
    }
    ok(v)
}
