//! The tools' arguments: JSON schemas for the host, then parsed into checked types at the
//! boundary. Every check here is also a refusal the daemon audits (see `Daemon::report_refusal`).

use rmcp::schemars::{self, JsonSchema};
use serde::Deserialize;

use crate::approval::ApprovalId;
use crate::profile::{ProfileName, SessionDuration};
use crate::protocol::MAX_REASON_BYTES;

/// Longest wait `request_status` accepts.
pub const MAX_WAIT_SECONDS: u32 = 300;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestCapability {
    /// The capability profile to ask for (a name from list_capabilities, e.g. "s3-data").
    pub profile: String,
    /// Why the agent needs it: one line the approver reads (at most 1024 bytes, no control
    /// characters).
    pub reason: String,
    /// Session length in seconds: leave it out. Only the profile's own duration is accepted
    /// (credential_process fetches sessions of that length).
    #[serde(default)]
    pub duration: Option<u32>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestStatus {
    /// The approval request id that request_capability returned (16 hexadecimal characters).
    pub id: String,
    /// Wait up to this many seconds (at most 300) for a human to decide, with progress
    /// notifications; 0 or omitted answers at once.
    #[serde(default)]
    pub wait_seconds: Option<u32>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WhichProfile {
    /// One IAM action as service:Action, e.g. "s3:GetObject".
    pub action: String,
    /// The resource ARN it acts on, e.g. "arn:aws:s3:::my-bucket/key"; any resource when
    /// omitted.
    #[serde(default)]
    pub resource: Option<String>,
}

/// `request_capability`'s arguments, checked.
#[derive(Debug)]
pub struct Capability {
    pub profile: ProfileName,
    pub reason: String,
    pub duration_seconds: Option<u32>,
}

/// A reason: non-empty, at most [`MAX_REASON_BYTES`] bytes, no control characters (it is
/// shown to approvers and kept in the audit log).
pub fn reason(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        return Err("reason is empty: say why the agent needs this capability".into());
    }
    if s.len() > MAX_REASON_BYTES {
        return Err(format!(
            "reason is longer than {MAX_REASON_BYTES} bytes (UTF-8): {} bytes",
            s.len()
        ));
    }
    if let Some(c) = s.chars().find(|c| c.is_control()) {
        return Err(format!(
            "reason contains a control character (U+{:04X}); send one line of plain text",
            c as u32
        ));
    }
    Ok(s.to_owned())
}

impl RequestCapability {
    pub fn parse(&self) -> Result<Capability, String> {
        let profile = ProfileName::parse(&self.profile).map_err(|m| {
            format!(
                "profile {}: {m}",
                crate::diag::quoted(&short(&self.profile))
            )
        })?;
        let reason = reason(&self.reason)?;
        let duration_seconds = match self.duration {
            None => None,
            Some(d)
                if (SessionDuration::MIN_SECONDS..=SessionDuration::MAX_SECONDS).contains(&d) =>
            {
                Some(d)
            }
            Some(d) => {
                return Err(format!(
                    "duration {d} s is outside {} to {} s",
                    SessionDuration::MIN_SECONDS,
                    SessionDuration::MAX_SECONDS
                ));
            }
        };
        Ok(Capability {
            profile,
            reason,
            duration_seconds,
        })
    }
}

impl RequestStatus {
    /// The id and the wait, checked.
    pub fn parse(&self) -> Result<(ApprovalId, u32), String> {
        let id = ApprovalId::parse(&self.id)?;
        let wait = self.wait_seconds.unwrap_or(0);
        if wait > MAX_WAIT_SECONDS {
            return Err(format!(
                "wait_seconds {wait} is more than {MAX_WAIT_SECONDS}"
            ));
        }
        Ok((id, wait))
    }
}

impl WhichProfile {
    /// The action and resource, checked (the daemon checks them again against the catalog).
    pub fn parse(&self) -> Result<(String, Option<String>), String> {
        let action = crate::policy::evaluate::parse_action(&self.action)?.full_name();
        let resource = self
            .resource
            .as_deref()
            .map(crate::policy::evaluate::parse_resource)
            .transpose()?;
        Ok((action, resource))
    }
}

/// The first characters of an argument, for a message.
fn short(s: &str) -> String {
    s.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_bounded_single_lines() {
        assert!(reason("deploy the fix for #12").is_ok());
        assert_eq!(
            reason(&"x".repeat(100_000)).unwrap_err(),
            "reason is longer than 1024 bytes (UTF-8): 100000 bytes"
        );
        assert_eq!(
            reason("a\u{1b}[2Jb").unwrap_err(),
            "reason contains a control character (U+001B); send one line of plain text"
        );
        assert!(reason("line\nbreak").is_err());
        assert!(reason("  ").is_err());
    }

    #[test]
    fn capability_arguments_parse_into_types() {
        let ok = RequestCapability {
            profile: "s3-data".into(),
            reason: "read the report".into(),
            duration: Some(900),
        };
        assert_eq!(ok.parse().unwrap().profile.as_str(), "s3-data");
        let bad = RequestCapability {
            profile: "../etc".into(),
            reason: "x".into(),
            duration: None,
        };
        assert!(bad.parse().unwrap_err().starts_with("profile \"../etc\": "));
        let long = RequestCapability {
            profile: "s3-data".into(),
            reason: "x".into(),
            duration: Some(13 * 3600),
        };
        assert_eq!(
            long.parse().unwrap_err(),
            "duration 46800 s is outside 900 to 43200 s"
        );
        let wait = RequestStatus {
            id: "0123456789abcdef".into(),
            wait_seconds: Some(301),
        };
        assert_eq!(
            wait.parse().unwrap_err(),
            "wait_seconds 301 is more than 300"
        );
    }
}
