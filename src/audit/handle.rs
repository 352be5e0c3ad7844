//! The handle the broker holds: opening the log, and queueing records for the writer.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::time::Duration;

use super::recover::recover;
use super::segment::open_append;
use super::shipper::Shipper;
use super::writer::{Job, Writer};
use super::{AuditError, Options, Record, Recovery, check_dir, checkpoint, segment_name, verify};

/// Records waiting for the writer; producers beyond this get "audit unavailable".
const QUEUE: usize = 4096;

/// Handle to the log; cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    tx: SyncSender<Job>,
    failed: Arc<AtomicBool>,
    dir: PathBuf,
}

impl AuditLog {
    /// Checks the directory, recovers the tail, and starts the writer thread. A torn final
    /// record is trimmed and a `recovered` record written before anything else.
    pub fn open(
        dir: &Path,
        key: ed25519_dalek::SigningKey,
        opts: Options,
    ) -> Result<(Self, Option<Recovery>), AuditError> {
        check_dir(dir)?;
        let (seg, link, uncovered, recovery) = recover(dir, &key, &verify::Cadence::of(&opts))?;
        let open_err = |reason: String| AuditError::Open {
            path: dir.display().to_string(),
            reason,
        };
        let path = dir.join(segment_name(seg));
        let file = open_append(&path).map_err(|e| open_err(format!("{}: {e}", path.display())))?;
        let cp_file = open_append(&dir.join(checkpoint::CHECKPOINT_FILE))
            .map_err(|e| open_err(e.to_string()))?;
        let (tx, rx) = sync_channel(QUEUE);
        let failed = Arc::new(AtomicBool::new(false));
        let opts_shipper = opts.checkpoint_command.clone().and_then(Shipper::start);
        let w = Writer {
            dir: dir.to_owned(),
            file,
            segment: seg,
            cp_file,
            key,
            opts,
            link,
            // The recovered tail was just checked: the writer signs it before anything else.
            since_checkpoint: uncovered,
            last_signed: std::time::Instant::now(),
            pending_cp: None,
            shipper: opts_shipper,
            failed: failed.clone(),
        };
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || w.run(rx))
            .map_err(|e| open_err(e.to_string()))?;
        Ok((
            AuditLog {
                tx,
                failed,
                dir: dir.to_owned(),
            },
            recovery,
        ))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
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
            record: Some(record),
            ack: Some(ack),
        })?;
        rx.await
            .unwrap_or_else(|_| Err(AuditError::Unavailable("the writer stopped".into())))
    }

    /// Signs a checkpoint over everything written so far (at shutdown) and waits for it.
    pub async fn checkpoint_now(&self) -> Result<u64, AuditError> {
        let (ack, rx) = tokio::sync::oneshot::channel();
        self.send(Job {
            record: None,
            ack: Some(ack),
        })?;
        rx.await
            .unwrap_or_else(|_| Err(AuditError::Unavailable("the writer stopped".into())))
    }

    /// Appends without waiting for the fsync; the writer syncs it with its batch, at once. If
    /// the queue is full the caller waits for room (back-pressure) for up to a second before
    /// the append fails, so a burst slows callers down instead of failing them.
    pub async fn append(&self, record: Record) -> Result<(), AuditError> {
        let mut job = Job {
            record: Some(record),
            ack: None,
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        loop {
            if self.is_failed() {
                return Err(AuditError::Unavailable("an earlier write failed".into()));
            }
            match self.tx.try_send(job) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Full(j)) if std::time::Instant::now() < deadline => {
                    job = j;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err(TrySendError::Full(_)) => {
                    return Err(AuditError::Unavailable("the writer is overloaded".into()));
                }
                Err(TrySendError::Disconnected(_)) => {
                    return Err(AuditError::Unavailable("the writer stopped".into()));
                }
            }
        }
    }
}
