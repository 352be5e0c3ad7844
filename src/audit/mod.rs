//! The audit log: JSON Lines, one record per line, hash-chained, written by one dedicated thread
//! that groups concurrent records into one fsync (group commit), rotated by size into segments
//! (`audit-000001.jsonl`, ...), with signed checkpoints in `checkpoints.jsonl`.
//!
//! Invariants this module gives the broker:
//! * [`AuditLog::append_durable`] returns only after the record is on disk (write + fdatasync);
//! * after any write or sync failure the log is *failed* for good: every later append is refused
//!   at once, and the broker stops issuing (recovery needs a restart);
//! * a record never contains a secret (there is no field for one) and is always one line
//!   (serde_json escapes every control character).

use std::time::Duration;

pub mod checkpoint;
mod handle;
mod recent;
mod record;
mod recover;
mod segment;
mod shipper;
pub mod verify;
mod writer;

pub use handle::AuditLog;
pub use recent::recent;
pub use record::{Kind, Record, SCHEMA, encode};
pub use recover::Recovery;
pub use segment::{check_dir, segment_name, segments};

/// Tunables from `[audit]` in broker.toml.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// Start a new segment once the current one reaches this size.
    pub rotate_bytes: u64,
    /// Sign a checkpoint after this many records...
    pub checkpoint_every: u64,
    /// ...or after this long with unsigned records.
    pub checkpoint_interval: Duration,
    /// Run with each checkpoint line on stdin, to ship it elsewhere (argv, no shell).
    pub checkpoint_command: Option<Vec<String>>,
    /// Cached deliveries of one session to one uid within this window share records: the
    /// first is written (durably) before the credential leaves, the rest are counted in one
    /// record when the window closes. Zero writes one (non-durable) record per delivery.
    pub delivery_window: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            rotate_bytes: 64 * 1024 * 1024,
            checkpoint_every: 1000,
            checkpoint_interval: Duration::from_secs(60),
            checkpoint_command: None,
            delivery_window: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum AuditError {
    #[error(
        "audit unavailable: {0}; the broker has stopped issuing credentials (restart it after fixing the log)"
    )]
    Unavailable(String),
    #[error("cannot use the audit log in {path}: {reason}")]
    Open { path: String, reason: String },
    #[error(
        "the audit log is damaged at {0}; run `mandate audit verify` and restore it before starting"
    )]
    Damaged(String),
}

#[cfg(test)]
mod tests;
