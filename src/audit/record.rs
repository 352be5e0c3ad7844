//! What one audit record says: its kind, its fields, and how it is written as one line.

use serde::Serialize;

use super::verify::{canonical, record_hash};

pub const SCHEMA: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Request,
    Denied,
    Pending,
    Approved,
    Rejected,
    Issued,
    Delivered,
    Revoked,
    Breaker,
    Started,
    Stopped,
    Recovered,
    Checkpoint,
    Paused,
    Resumed,
    /// At the approval console: a sign-in, a passkey registered, a sign-out.
    Console,
}

impl Kind {
    pub const ALL: [&'static str; 16] = [
        "request",
        "denied",
        "pending",
        "approved",
        "rejected",
        "issued",
        "delivered",
        "revoked",
        "breaker",
        "started",
        "stopped",
        "recovered",
        "checkpoint",
        "paused",
        "resumed",
        "console",
    ];
}

/// One event. Every field but `kind` is optional; none can hold a secret.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Record {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<Kind>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile_sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_identity: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expiration: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The approval request a record belongs to (pending, votes, redemption, issuance).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval_id: Option<String>,
    /// The digest of the exact request an approval is bound to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// The human who voted, revoked, paused or reset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approver: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// What a revocation, breaker or pause record is about (`agent claude`, `every agent`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// How many events this record stands for, when more than one: the further cached
    /// deliveries of one session within a delivery window (`delivered`), or refusals of one
    /// agent over its record budget (`denied`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// A `checkpoint` record: the seq and hash the signed checkpoint (in `checkpoints.jsonl`)
    /// covers. Recorded in the chain itself, so that deleting checkpoints is visible.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub covers_seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub covers_hash: Option<String>,
    /// A console action: the approver's subject at the OpenID provider, and the passkey
    /// (WebAuthn credential id) that confirmed it, if one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oidc_subject: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub passkey: Option<String>,
}

impl Record {
    pub fn new(kind: Kind) -> Self {
        Record {
            kind: Some(kind),
            ..Record::default()
        }
    }
}

/// One record as written: the envelope plus the event, canonical JSON with its hash.
pub fn encode(seq: u64, prev: &str, time: &str, record: &Record) -> (String, String) {
    let mut v = serde_json::to_value(record).unwrap_or_default();
    if let Some(m) = v.as_object_mut() {
        m.insert("v".into(), SCHEMA.into());
        m.insert("seq".into(), seq.into());
        m.insert("time".into(), time.into());
        m.insert("prev".into(), prev.into());
    }
    let hash = record_hash(&v);
    v["hash"] = hash.clone().into();
    (canonical(&v), hash)
}
