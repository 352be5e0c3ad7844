//! The audit log: JSON Lines, one record per line, hash-chained, written by one dedicated thread
//! that groups concurrent records into one fsync (group commit).
//!
//! Invariants this module gives the broker:
//! * [`AuditLog::append_durable`] returns only after the record is on disk (write + fdatasync);
//! * after any write or sync failure the log is *failed* for good: every later append is refused
//!   at once, and the broker stops issuing (recovery needs a restart);
//! * a record never contains a secret (there is no field for one) and is always one line
//!   (serde_json escapes every control character).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::SystemTime;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::clock;
use crate::policy::hex;

pub const SCHEMA: u32 = 1;
/// Records waiting for the writer; producers beyond this get "audit unavailable".
const QUEUE: usize = 4096;
const MAX_BATCH: usize = 512;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Started,
    Stopped,
    Request,
    Denied,
    Issued,
    Delivered,
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
}

impl Record {
    pub fn new(kind: Kind) -> Self {
        Record {
            kind: Some(kind),
            ..Record::default()
        }
    }
}

/// The envelope actually written: schema, seq, time, the record, the chain.
#[derive(Serialize)]
struct Line<'a> {
    v: u32,
    seq: u64,
    time: String,
    #[serde(flatten)]
    record: &'a Record,
    prev: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    hash: Option<&'a str>,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum AuditError {
    #[error(
        "audit unavailable: {0}; the broker has stopped issuing credentials (restart it after fixing the log)"
    )]
    Unavailable(String),
    #[error("cannot open the audit log {path}: {reason}")]
    Open { path: String, reason: String },
}

type Ack = tokio::sync::oneshot::Sender<Result<u64, AuditError>>;

struct Job {
    record: Record,
    ack: Option<Ack>,
}

/// Handle to the log; cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    tx: SyncSender<Job>,
    failed: Arc<AtomicBool>,
    path: PathBuf,
}

impl AuditLog {
    /// Opens (or creates, mode 0600) `dir/audit.jsonl`, picks up the chain from its last line, and
    /// starts the writer thread. `dir` must exist, be a directory, and not be writable by others.
    pub fn open(dir: &Path) -> Result<Self, AuditError> {
        let path = dir.join("audit.jsonl");
        let open_err = |reason: String| AuditError::Open {
            path: path.display().to_string(),
            reason,
        };
        let meta = std::fs::metadata(dir)
            .map_err(|e| open_err(format!("directory {}: {e}", dir.display())))?;
        if !meta.is_dir() {
            return Err(open_err(format!("{} is not a directory", dir.display())));
        }
        if meta.permissions().mode() & 0o022 != 0 {
            return Err(open_err(format!(
                "{} is writable by group or others; chmod 700 it",
                dir.display()
            )));
        }
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| open_err(e.to_string()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| open_err(e.to_string()))?;
        let (seq, prev) = last_link(&mut file).map_err(open_err)?;
        let (tx, rx) = sync_channel(QUEUE);
        let failed = Arc::new(AtomicBool::new(false));
        let f2 = failed.clone();
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer(file, rx, seq, prev, f2))
            .map_err(|e| open_err(e.to_string()))?;
        Ok(AuditLog { tx, failed, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Marks the log failed, as a write error would (tests of the fail-closed path).
    #[cfg(test)]
    pub fn failed_for_test(&self) {
        self.failed.store(true, Ordering::SeqCst);
    }

    pub fn is_failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }

    fn send(&self, job: Job) -> Result<(), AuditError> {
        if self.is_failed() {
            return Err(AuditError::Unavailable("an earlier write failed".into()));
        }
        match self.tx.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => {
                Err(AuditError::Unavailable("the writer is overloaded".into()))
            }
            Err(TrySendError::Disconnected(_)) => {
                Err(AuditError::Unavailable("the writer stopped".into()))
            }
        }
    }

    /// Appends and waits until the record is synced to disk; returns its seq.
    pub async fn append_durable(&self, record: Record) -> Result<u64, AuditError> {
        let (ack, rx) = tokio::sync::oneshot::channel();
        self.send(Job {
            record,
            ack: Some(ack),
        })?;
        rx.await
            .unwrap_or_else(|_| Err(AuditError::Unavailable("the writer stopped".into())))
    }

    /// Appends without waiting; the writer syncs it with its batch, at once.
    pub fn append(&self, record: Record) -> Result<(), AuditError> {
        self.send(Job { record, ack: None })
    }
}

/// The seq and hash of the last record, reading only the file's tail.
fn last_link(file: &mut File) -> Result<(u64, String), String> {
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    if len == 0 {
        return Ok((0, "0".repeat(64)));
    }
    let start = len.saturating_sub(64 * 1024);
    file.seek(SeekFrom::Start(start))
        .map_err(|e| e.to_string())?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&tail);
    let last = text
        .trim_end_matches('\n')
        .rsplit('\n')
        .next()
        .unwrap_or("");
    let v: serde_json::Value = serde_json::from_str(last).map_err(|_| {
        "its last line is not a complete record (a torn write?); inspect the file".to_owned()
    })?;
    match (v["seq"].as_u64(), v["hash"].as_str()) {
        (Some(seq), Some(hash)) => Ok((seq, hash.to_owned())),
        _ => Err("its last line has no seq or hash".into()),
    }
}

fn writer(
    mut file: File,
    rx: Receiver<Job>,
    mut seq: u64,
    mut prev: String,
    failed: Arc<AtomicBool>,
) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        if failed.load(Ordering::SeqCst) {
            for j in batch {
                if let Some(ack) = j.ack {
                    let _ = ack.send(Err(AuditError::Unavailable(
                        "an earlier write failed".into(),
                    )));
                }
            }
            continue;
        }
        let mut buf = Vec::with_capacity(batch.len() * 400);
        let mut seqs = Vec::with_capacity(batch.len());
        for j in &batch {
            seq += 1;
            let time = clock::rfc3339_millis(SystemTime::now());
            let mut line = Line {
                v: SCHEMA,
                seq,
                time,
                record: &j.record,
                prev: &prev,
                hash: None,
            };
            let unsigned = serde_json::to_vec(&line).unwrap_or_default();
            let hash = hex(&Sha256::digest(&unsigned));
            line.hash = Some(&hash);
            serde_json::to_writer(&mut buf, &line).unwrap_or_default();
            buf.push(b'\n');
            prev = hash;
            seqs.push(seq);
        }
        let result = file.write_all(&buf).and_then(|()| file.sync_data());
        match result {
            Ok(()) => {
                for (j, s) in batch.into_iter().zip(seqs) {
                    if let Some(ack) = j.ack {
                        let _ = ack.send(Ok(s));
                    }
                }
            }
            Err(e) => {
                failed.store(true, Ordering::SeqCst);
                tracing::error!(error = %e, "audit write failed; no more credentials will be issued");
                for j in batch {
                    if let Some(ack) = j.ack {
                        let _ =
                            ack.send(Err(AuditError::Unavailable(format!("write failed: {e}"))));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn records_are_chained_one_per_line_and_resume_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let log = AuditLog::open(dir.path()).unwrap();
        let mut r = Record::new(Kind::Request);
        r.reason = Some("line\nbreak \u{1b}[31m".into());
        assert_eq!(log.append_durable(r).await.unwrap(), 1);
        assert_eq!(
            log.append_durable(Record::new(Kind::Issued)).await.unwrap(),
            2
        );
        drop(log);
        let log = AuditLog::open(dir.path()).unwrap();
        assert_eq!(
            log.append_durable(Record::new(Kind::Delivered))
                .await
                .unwrap(),
            3
        );
        let text = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0]["prev"], "0".repeat(64));
        assert_eq!(lines[1]["prev"], lines[0]["hash"]);
        assert_eq!(lines[2]["prev"], lines[1]["hash"]);
        assert_eq!(lines[0]["reason"], "line\nbreak \u{1b}[31m");
        assert!(!text.contains('\u{1b}'), "control characters are escaped");
        let mode = std::fs::metadata(dir.path().join("audit.jsonl"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn refuses_a_group_writable_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o770)).unwrap();
        assert!(AuditLog::open(dir.path()).is_err());
    }
}
