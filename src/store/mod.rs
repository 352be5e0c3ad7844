//! Where approvals, revocations, breaker trips and the pause flag live across restarts.
//!
//! A narrow interface ([`Store`]) with one backend so far, an embedded SQLite file
//! ([`SqliteStore`], `sqlite.rs`); a shared database for team mode is the second. Every
//! state change is a compare-and-swap on the row's version, so several daemons sharing one
//! database (a later backend) still redeem an approval at most once.

use std::path::PathBuf;

use crate::approval::{ApprovalId, ApprovalRequest};
use crate::revoke::{Pause, Revocation, Trip};

#[doc(hidden)]
pub mod contract;
pub mod postgres;
mod sqlite;
#[cfg(test)]
mod tests;

pub use postgres::{PgOptions, PgPassword, PgStore, PgTls};
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
    /// A compare-and-swap kept losing: other writers change the row faster than this daemon
    /// can (or a row edited by hand never matches).
    #[error("approval request {0} kept changing under this daemon; try again")]
    Contended(String),
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

    // Team mode. A store only this daemon uses (SQLite) keeps the defaults: nobody else
    // changes it, so there is nothing to hear about, count or anchor.

    /// What the store is, for `status` and the log (never a password).
    fn describe(&self) -> StoreInfo;
    /// Changes other daemons make, as they happen (LISTEN/NOTIFY). `None`: nobody else writes
    /// this store. Must be called from within the async runtime.
    fn subscribe(&self) -> Option<tokio::sync::mpsc::Receiver<Notice>> {
        None
    }
    /// Per agent, what the *other* daemons sharing this store issued since `since` and still
    /// hold live at `now` (so limits hold across daemons).
    fn remote_counts(
        &self,
        _since: i64,
        _now: i64,
    ) -> Result<std::collections::HashMap<String, RemoteCounts>, StoreError> {
        Ok(Default::default())
    }
    /// Says this daemon is alive (`status` lists the daemons seen recently).
    fn heartbeat(&self, _me: &DaemonInfo) -> Result<(), StoreError> {
        Ok(())
    }
    /// Daemons seen at or after `since`, this one included.
    fn daemons(&self, _since: i64) -> Result<Vec<DaemonInfo>, StoreError> {
        Ok(Vec::new())
    }
    /// Anchors one signed audit checkpoint line of daemon `daemon` (its key fingerprint) off
    /// the host; putting the same `seq` twice keeps the first.
    fn put_checkpoint(&self, _daemon: &str, _seq: u64, _line: &str) -> Result<(), StoreError> {
        Ok(())
    }
    /// The anchored checkpoint lines of `daemon`, in `seq` order.
    fn checkpoints(&self, _daemon: &str) -> Result<Vec<String>, StoreError> {
        Ok(Vec::new())
    }
}

/// Where the state lives, as `status` shows it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct StoreInfo {
    /// `sqlite` or `postgres`.
    pub kind: &'static str,
    /// The file, or `host:port/database` (never a password).
    pub location: String,
    /// Whether other daemons may share it (team mode).
    pub shared: bool,
}

/// A change another daemon made to the shared store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// Revocations, breaker trips or the pause changed.
    Controls,
    /// An approval request was opened, voted on or redeemed (its id).
    Approval(String),
    /// A session was indexed or the counters moved.
    Sessions,
    /// The listening connection is (re)established: everything may have changed meanwhile.
    Connected,
    /// The listening connection was lost: nothing is heard until `Connected`.
    Lost(String),
}

/// What other daemons issued and hold for one agent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RemoteCounts {
    pub issued: u32,
    pub live: u32,
}

/// A daemon that shares the store.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DaemonInfo {
    /// The fingerprint of its audit signing key.
    pub id: String,
    pub host: String,
    pub version: String,
    pub started_at: i64,
    pub seen_at: i64,
}

/// How many times a daemon reads a request again after losing a compare-and-swap on it.
pub const MAX_SWAPS: usize = 64;

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
    /// Team mode: the daemon that issued it (its key fingerprint), as a shared store reports
    /// it; empty in a store only one daemon uses.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub daemon: String,
    #[serde(skip_serializing, default)]
    pub(crate) expires_at: i64,
}

impl SessionInfo {
    pub fn expires_at(&self) -> i64 {
        self.expires_at
    }
}
