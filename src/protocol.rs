//! The socket protocol between the CLI and the daemon: one JSON request line, one JSON response
//! line, then the connection closes. Requests are parsed strictly (unknown fields are errors).

use serde::{Deserialize, Serialize};

use crate::approval::{ApprovalId, MAX_NOTE_CHARS};
use crate::revoke::Scope;
use crate::secret::Secret;

/// Largest request line the daemon reads.
pub const MAX_REQUEST_BYTES: usize = 16 * 1024;
/// Largest response line the client reads.
pub const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;
/// Longest `reason` accepted.
/// A reason is at most this many bytes (not characters: four-byte characters must not make
/// records four times larger).
pub const MAX_REASON_BYTES: usize = 1024;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Credentials {
        profile: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        agent: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        duration_seconds: Option<u32>,
        /// Redeem (or ask about) this approval request.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        approval_id: Option<ApprovalId>,
    },
    Status,
    /// Approval requests (open ones unless `all`).
    Approvals {
        #[serde(default)]
        all: bool,
    },
    /// An approver's vote.
    Vote {
        id: ApprovalId,
        approve: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        note: Option<String>,
        /// Which approver to act as when the uid belongs to several.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        approver: Option<String>,
        /// The binding digest of the request as the approver was shown it: a request that
        /// changed since is not voted on.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        digest: Option<String>,
    },
    Revoke {
        scope: Scope,
        #[serde(default)]
        aws: bool,
    },
    Unrevoke {
        scope: Scope,
    },
    RevokeGc,
    BreakerReset {
        agent: String,
    },
    Pause {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    Resume,
    /// The caller's own profiles, in plain words (the MCP server's `list_capabilities`).
    Capabilities {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        agent: Option<String>,
    },
    /// Which of the caller's profiles would allow `action` (on `resource`). Checked by the
    /// daemon, so that a malformed one is refused and audited.
    WhichProfile {
        action: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resource: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        agent: Option<String>,
    },
    /// One of the caller's own approval requests (a string, so that a malformed id is refused
    /// and audited by the daemon rather than by the wire format).
    ApprovalStatus {
        id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        agent: Option<String>,
    },
    /// A credential request whose keys stay in the daemon: the same lifecycle as
    /// `credentials` (the session is cached, so the caller's next `credential_process` gets
    /// it), answered without any secret (the MCP server's `request_capability`).
    Acquire {
        profile: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        agent: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        duration_seconds: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        approval_id: Option<ApprovalId>,
    },
    /// A request the client refused before sending it (an MCP tool's arguments): the daemon
    /// audits it as this caller's refusal.
    ClientRefusal {
        what: String,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        agent: Option<String>,
    },
}

/// Longest action name (`service:Action`) accepted on the wire.
pub const MAX_ACTION_CHARS: usize = 256;
/// Longest label of a client-side refusal (`mcp request_capability`).
pub const MAX_REFUSAL_WHAT: usize = 64;
/// Longest message of a client-side refusal.
pub const MAX_REFUSAL_MESSAGE: usize = 1024;

/// Longest agent, profile or approver name, or session id, accepted on the wire.
const MAX_NAME: usize = 64;

impl Request {
    /// Parses and bounds-checks one request line.
    pub fn parse(line: &[u8]) -> Result<Request, String> {
        let req: Request =
            serde_json::from_slice(line).map_err(|e| format!("malformed request: {e}"))?;
        let long = |s: &Option<String>| s.as_ref().is_some_and(|s| s.len() > MAX_NAME);
        let bad = |m: String| Err(format!("malformed request: {m}"));
        match &req {
            Request::Credentials {
                profile,
                reason,
                agent,
                ..
            }
            | Request::Acquire {
                profile,
                reason,
                agent,
                ..
            } => {
                if profile.len() > MAX_NAME || long(agent) {
                    return bad(format!(
                        "profile and agent names are at most {MAX_NAME} characters"
                    ));
                }
                if reason.as_ref().is_some_and(|r| r.len() > MAX_REASON_BYTES) {
                    return bad(format!(
                        "reason is longer than {MAX_REASON_BYTES} bytes (UTF-8)"
                    ));
                }
            }
            Request::Vote {
                note,
                approver,
                digest,
                ..
            } => {
                if long(approver) {
                    return bad(format!("approver names are at most {MAX_NAME} characters"));
                }
                if digest
                    .as_ref()
                    .is_some_and(|d| d.len() != 64 || !d.bytes().all(|b| b.is_ascii_hexdigit()))
                {
                    return bad("a digest is 64 hex digits".into());
                }
                if let Some(n) = note
                    && let Err(m) = crate::approval::check_note(n)
                {
                    return bad(m);
                }
            }
            Request::Revoke { scope, .. } | Request::Unrevoke { scope } => match scope {
                Scope::Agent(n) | Scope::Profile(n) | Scope::Session(n)
                    if n.is_empty() || n.len() > MAX_NAME =>
                {
                    return bad(format!("names are 1 to {MAX_NAME} characters"));
                }
                _ => {}
            },
            Request::BreakerReset { agent } if agent.is_empty() || agent.len() > MAX_NAME => {
                return bad(format!("agent names are 1 to {MAX_NAME} characters"));
            }
            Request::Pause { reason }
                if reason
                    .as_ref()
                    .is_some_and(|r| r.chars().count() > MAX_NOTE_CHARS) =>
            {
                return bad(format!("reason is longer than {MAX_NOTE_CHARS} characters"));
            }
            Request::Capabilities { agent } if long(agent) => {
                return bad(format!("agent names are at most {MAX_NAME} characters"));
            }
            Request::WhichProfile {
                action,
                resource,
                agent,
            } => {
                if long(agent) || action.len() > MAX_ACTION_CHARS {
                    return bad(format!(
                        "actions are at most {MAX_ACTION_CHARS} and agent names {MAX_NAME} characters"
                    ));
                }
                if resource
                    .as_ref()
                    .is_some_and(|r| r.len() > crate::policy::evaluate::MAX_RESOURCE_CHARS)
                {
                    return bad(format!(
                        "resources are at most {} characters",
                        crate::policy::evaluate::MAX_RESOURCE_CHARS
                    ));
                }
            }
            Request::ApprovalStatus { id, agent } if id.len() > MAX_NAME || long(agent) => {
                return bad(format!(
                    "approval ids and agent names are at most {MAX_NAME} characters"
                ));
            }
            Request::ClientRefusal {
                what,
                message,
                agent,
            } if long(agent)
                || what.len() > MAX_REFUSAL_WHAT
                || message.len() > MAX_REFUSAL_MESSAGE =>
            {
                return bad("the refusal is too long".into());
            }
            _ => {}
        }
        Ok(req)
    }
}

/// Credentials as they travel to the CLI (the only place secrets leave the daemon).
#[derive(Debug, Deserialize)]
pub struct WireCredentials {
    #[serde(rename = "AccessKeyId")]
    pub access_key_id: String,
    #[serde(rename = "SecretAccessKey")]
    pub secret_access_key: Secret,
    #[serde(rename = "SessionToken")]
    pub session_token: Secret,
    #[serde(rename = "Expiration")]
    pub expiration: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WireError {
    pub code: String,
    pub message: String,
}

/// A response as the client reads it.
#[derive(Debug, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default)]
    pub credentials: Option<WireCredentials>,
    #[serde(default)]
    pub request_id: Option<String>,
    #[serde(default)]
    pub agent: Option<String>,
    #[serde(default)]
    pub profile: Option<String>,
    #[serde(default)]
    pub cached: Option<bool>,
    #[serde(default)]
    pub error: Option<WireError>,
    #[serde(default)]
    pub status: Option<serde_json::Value>,
    /// A pending approval request (with error code `approval_pending`), or the approval an
    /// issuance redeemed.
    #[serde(default)]
    pub approval: Option<serde_json::Value>,
    /// What an approver's command did (votes, revocations, lists).
    #[serde(default)]
    pub result: Option<serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_strictly() {
        assert_eq!(
            Request::parse(br#"{"op":"credentials","profile":"s3-data"}"#).unwrap(),
            Request::Credentials {
                profile: "s3-data".into(),
                agent: None,
                reason: None,
                duration_seconds: None,
                approval_id: None,
            }
        );
        assert_eq!(
            Request::parse(br#"{"op":"status"}"#).unwrap(),
            Request::Status
        );
        for bad in [
            &br#"{"op":"credentials","profile":"x","role":"arn:aws:iam::1:role/admin"}"#[..],
            br#"{"op":"credentials"}"#,
            br#"{"op":"nope"}"#,
            b"not json",
            b"\xff\xfe",
            br#"{"op":"credentials","profile":"x","duration_seconds":-1}"#,
        ] {
            assert!(
                Request::parse(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = format!(
            r#"{{"op":"credentials","profile":"x","reason":"{}"}}"#,
            "a".repeat(2000)
        );
        assert!(
            Request::parse(long.as_bytes())
                .unwrap_err()
                .contains("reason is longer")
        );
    }

    #[test]
    fn the_agent_requests_parse_strictly_and_bounded() {
        assert_eq!(
            Request::parse(br#"{"op":"approval_status","id":"not-an-id"}"#).unwrap(),
            Request::ApprovalStatus {
                id: "not-an-id".into(),
                agent: None
            },
            "a malformed id reaches the daemon, which refuses and audits it"
        );
        assert!(Request::parse(br#"{"op":"capabilities"}"#).is_ok());
        assert!(Request::parse(br#"{"op":"which_profile","action":"s3:GetObject"}"#).is_ok());
        assert!(
            Request::parse(br#"{"op":"acquire","profile":"p","reason":"r","credentials":true}"#)
                .is_err()
        );
        let long = |op: &str, field: &str, n: usize| {
            format!(r#"{{"op":"{op}",{field}"{}"}}"#, "a".repeat(n))
        };
        for bad in [
            long("approval_status", r#""id":"#, 65),
            long("which_profile", r#""action":"#, MAX_ACTION_CHARS + 1),
            format!(
                r#"{{"op":"client_refusal","what":"mcp x","message":"{}"}}"#,
                "m".repeat(MAX_REFUSAL_MESSAGE + 1)
            ),
            format!(
                r#"{{"op":"acquire","profile":"p","reason":"{}"}}"#,
                "r".repeat(MAX_REASON_BYTES + 1)
            ),
        ] {
            assert!(Request::parse(bad.as_bytes()).is_err(), "{bad:.80}");
        }
    }
}
