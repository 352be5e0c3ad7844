//! Where approvals, revocations, breaker trips and the pause flag live across restarts.
//!
//! A narrow interface ([`Store`]) with one backend so far, an embedded SQLite file
//! ([`SqliteStore`], `sqlite.rs`); a shared database for team mode is the second. Every
//! state change is a compare-and-swap on the row's version, so several daemons sharing one
//! database (a later backend) still redeem an approval at most once.

use std::path::PathBuf;

use crate::approval::{ApprovalId, ApprovalRequest};
use crate::revoke::{Pause, Revocation, Trip};

mod sqlite;
#[cfg(test)]
mod tests;

pub use sqlite::SqliteStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the approval store {path}: {source}")]
    Db {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("cannot create the approval store {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("refusing the approval store: {0}")]
    Untrusted(String),
    #[error("the approval store holds an unreadable record: {0}")]
    Corrupt(String),
}

/// The operations the broker needs; nothing else touches the database.
pub trait Store: Send + Sync {
    fn insert(&self, r: &ApprovalRequest) -> Result<(), StoreError>;
    fn get(&self, id: &ApprovalId) -> Result<Option<ApprovalRequest>, StoreError>;
    /// Requests of `agent` with this binding digest, newest first.
    fn by_digest(&self, agent: &str, digest: &str) -> Result<Vec<ApprovalRequest>, StoreError>;
    /// Requests created at or after `since`, newest first, at most `limit`.
    fn list(&self, since: i64, limit: usize) -> Result<Vec<ApprovalRequest>, StoreError>;
    /// Replaces the request if the stored version is still `expected`; false if someone else
    /// changed it first.
    fn replace(&self, expected: u64, r: &ApprovalRequest) -> Result<bool, StoreError>;
    /// Requests of `agent` still pending at `now`.
    fn count_pending(&self, agent: &str, now: i64) -> Result<usize, StoreError>;
    /// Opens `r` as one atomic step: if a request of the same agent with the same binding
    /// digest is still pending, that one is returned instead; if the agent already has
    /// `max_pending` pending requests, nothing is inserted. Never read-then-write across calls.
    fn open_pending(
        &self,
        r: &ApprovalRequest,
        max_pending: usize,
        now: i64,
    ) -> Result<Opened, StoreError>;
    /// Forgets requests created before `before` (all long decided or expired; the audit log
    /// keeps their story). Returns how many.
    fn prune(&self, before: i64) -> Result<usize, StoreError>;

    fn put_revocation(&self, r: &Revocation) -> Result<(), StoreError>;
    fn delete_revocation(&self, id: &str) -> Result<(), StoreError>;
    fn revocations(&self) -> Result<Vec<Revocation>, StoreError>;

    fn put_trip(&self, t: &Trip) -> Result<(), StoreError>;
    fn delete_trip(&self, agent: &str) -> Result<bool, StoreError>;
    fn trips(&self) -> Result<Vec<Trip>, StoreError>;

    fn set_pause(&self, p: Option<&Pause>) -> Result<(), StoreError>;
    fn pause(&self) -> Result<Option<Pause>, StoreError>;

    /// The live-session index (what `status` lists and `revoke --session` finds), so that it
    /// survives a restart. Expired sessions are dropped as new ones are put.
    fn put_session(&self, s: &crate::store::SessionInfo, now: i64) -> Result<(), StoreError>;
    /// Sessions unexpired at `now`.
    fn sessions(&self, now: i64) -> Result<Vec<crate::store::SessionInfo>, StoreError>;
}

/// What [`Store::open_pending`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Opened {
    Inserted,
    /// A pending request with the same digest already exists.
    Existing(Box<ApprovalRequest>),
    /// The agent already has this many pending requests.
    Full(usize),
}

/// A live session, for `mandate status` and `revoke --session` (kept in the store too, so it
/// survives a restart).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SessionInfo {
    pub agent: String,
    pub profile: String,
    pub role: String,
    pub session_name: String,
    pub access_key_id: String,
    pub expiration: String,
    pub request_id: String,
    #[serde(skip_serializing, default)]
    pub(crate) expires_at: i64,
}

impl SessionInfo {
    pub fn expires_at(&self) -> i64 {
        self.expires_at
    }
}
