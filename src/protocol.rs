//! The socket protocol between the CLI and the daemon: one JSON request line, one JSON response
//! line, then the connection closes. Requests are parsed strictly (unknown fields are errors).

use serde::{Deserialize, Serialize};

use crate::secret::Secret;

/// Largest request line the daemon reads.
pub const MAX_REQUEST_BYTES: usize = 16 * 1024;
/// Largest response line the client reads.
pub const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;
/// Longest `reason` accepted.
pub const MAX_REASON_CHARS: usize = 1024;

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
    },
    Status,
}

impl Request {
    /// Parses and bounds-checks one request line.
    pub fn parse(line: &[u8]) -> Result<Request, String> {
        let req: Request =
            serde_json::from_slice(line).map_err(|e| format!("malformed request: {e}"))?;
        if let Request::Credentials {
            profile,
            reason,
            agent,
            ..
        } = &req
        {
            if profile.len() > 64 || agent.as_ref().is_some_and(|a| a.len() > 64) {
                return Err(
                    "malformed request: profile and agent names are at most 64 characters".into(),
                );
            }
            if reason
                .as_ref()
                .is_some_and(|r| r.chars().count() > MAX_REASON_CHARS)
            {
                return Err(format!(
                    "malformed request: reason is longer than {MAX_REASON_CHARS} characters"
                ));
            }
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
                duration_seconds: None
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
}
