//! The writer thread: group commit of queued records, checkpoint signing, and rotation.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, SystemTime};

use super::shipper::Shipper;
use super::verify::Link;
use super::{AuditError, Kind, Options, Record, checkpoint, encode, segment_name};
use crate::clock;

const MAX_BATCH: usize = 512;

pub(super) type Ack = tokio::sync::oneshot::Sender<Result<u64, AuditError>>;

pub(super) struct Job {
    /// `None`: sign a checkpoint now (graceful shutdown) and then acknowledge.
    pub(super) record: Option<Record>,
    pub(super) ack: Option<Ack>,
}

pub(super) struct Writer {
    pub(super) dir: PathBuf,
    pub(super) file: File,
    pub(super) segment: u32,
    pub(super) cp_file: File,
    pub(super) key: ed25519_dalek::SigningKey,
    pub(super) opts: Options,
    pub(super) link: Link,
    pub(super) since_checkpoint: u64,
    /// When the last checkpoint was signed: one is signed at least every interval, busy or not.
    pub(super) last_signed: std::time::Instant,
    /// The in-chain record of the last checkpoint, written with the next batch.
    pub(super) pending_cp: Option<Record>,
    pub(super) shipper: Option<Shipper>,
    pub(super) failed: Arc<AtomicBool>,
}

impl Writer {
    pub(super) fn run(mut self, rx: Receiver<Job>) {
        if self.since_checkpoint > 0 {
            self.checkpoint();
        }
        loop {
            let wait = if self.since_checkpoint > 0 {
                self.opts
                    .checkpoint_interval
                    .saturating_sub(self.last_signed.elapsed())
            } else {
                self.opts.checkpoint_interval
            };
            let first = match rx.recv_timeout(wait) {
                Ok(j) => j,
                Err(RecvTimeoutError::Timeout) => {
                    if self.since_checkpoint > 0 && !self.failed.load(Ordering::SeqCst) {
                        self.checkpoint();
                    }
                    continue;
                }
                // Shutdown signs explicitly (checkpoint_now); a dropped handle just stops.
                Err(RecvTimeoutError::Disconnected) => return,
            };
            let mut batch = vec![first];
            // Never more records past a checkpoint than checkpoint_every: the verifier holds
            // the unsigned tail to that (a longer one means checkpoints were removed).
            let room = (self
                .opts
                .checkpoint_every
                .saturating_sub(self.since_checkpoint) as usize)
                .clamp(1, MAX_BATCH);
            while batch.len() < room && batch.last().is_some_and(|j| j.record.is_some()) {
                match rx.try_recv() {
                    Ok(j) => batch.push(j),
                    Err(_) => break,
                }
            }
            let sign = batch
                .last()
                .is_some_and(|j| j.record.is_none())
                .then(|| batch.pop())
                .flatten();
            if !batch.is_empty() {
                self.write_batch(batch);
            }
            if let Some(job) = sign {
                let failed = self.failed.load(Ordering::SeqCst);
                if self.since_checkpoint > 0 && !failed {
                    self.checkpoint();
                }
                // A requested checkpoint is the shutdown's: ship everything before answering.
                if let Some(s) = &self.shipper {
                    s.flush(Duration::from_secs(10));
                }
                if let Some(ack) = job.ack {
                    let result = if self.failed.load(Ordering::SeqCst) {
                        Err(AuditError::Unavailable("an earlier write failed".into()))
                    } else {
                        Ok(self.link.seq)
                    };
                    let _ = ack.send(result);
                }
            }
        }
    }

    fn fail(&self, what: &str, e: &std::io::Error) -> AuditError {
        self.failed.store(true, Ordering::SeqCst);
        tracing::error!(error = %e, "audit {what} failed; no more credentials will be issued");
        AuditError::Unavailable(format!("{what} failed: {e}"))
    }

    fn write_batch(&mut self, batch: Vec<Job>) {
        if self.failed.load(Ordering::SeqCst) {
            for j in batch {
                if let Some(ack) = j.ack {
                    let _ = ack.send(Err(AuditError::Unavailable(
                        "an earlier write failed".into(),
                    )));
                }
            }
            return;
        }
        let mut buf = Vec::with_capacity(batch.len() * 512);
        let mut link = self.link.clone();
        let mut seqs = Vec::with_capacity(batch.len());
        if let Some(cp) = self.pending_cp.take() {
            let seq = link.seq + 1;
            let (line, hash) = encode(
                seq,
                &link.hash,
                &clock::rfc3339_millis(SystemTime::now()),
                &cp,
            );
            buf.extend_from_slice(line.as_bytes());
            buf.push(b'\n');
            link = Link { seq, hash };
        }
        for j in &batch {
            let Some(record) = &j.record else { continue };
            let seq = link.seq + 1;
            let (line, hash) = encode(
                seq,
                &link.hash,
                &clock::rfc3339_millis(SystemTime::now()),
                record,
            );
            buf.extend_from_slice(line.as_bytes());
            buf.push(b'\n');
            link = Link { seq, hash };
            seqs.push(seq);
        }
        // Never retried: after a failed write or fsync the file's state is unknown (fail closed).
        let result = self
            .file
            .write_all(&buf)
            .and_then(|()| self.file.sync_data());
        let outcome = match result {
            Ok(()) => {
                self.link = link;
                self.since_checkpoint += seqs.len() as u64;
                Ok(())
            }
            Err(e) => Err(self.fail("write", &e)),
        };
        for (j, s) in batch.into_iter().zip(seqs) {
            if let Some(ack) = j.ack {
                let _ = ack.send(outcome.clone().map(|()| s));
            }
        }
        if outcome.is_ok() {
            if self.since_checkpoint >= self.opts.checkpoint_every
                || (self.since_checkpoint > 0
                    && self.last_signed.elapsed() >= self.opts.checkpoint_interval)
            {
                self.checkpoint();
            }
            self.maybe_rotate();
        }
    }

    fn checkpoint(&mut self) {
        let offset = match self.file.metadata() {
            Ok(m) => m.len(),
            Err(e) => {
                self.fail("checkpoint", &e);
                return;
            }
        };
        let line = checkpoint::signed_line(
            &self.key,
            self.link.seq,
            &self.link.hash,
            &clock::rfc3339_millis(SystemTime::now()),
            &segment_name(self.segment),
            offset,
        );
        if let Err(e) = self
            .cp_file
            .write_all(line.as_bytes())
            .and_then(|()| self.cp_file.sync_data())
        {
            self.fail("checkpoint write", &e);
            return;
        }
        self.since_checkpoint = 0;
        self.last_signed = std::time::Instant::now();
        let mut r = Record::new(Kind::Checkpoint);
        r.covers_seq = Some(self.link.seq);
        r.covers_hash = Some(self.link.hash.clone());
        self.pending_cp = Some(r);
        if let Some(s) = &self.shipper {
            s.send(line);
        }
    }

    fn maybe_rotate(&mut self) {
        let size = self.file.metadata().map(|m| m.len()).unwrap_or(0);
        if size < self.opts.rotate_bytes {
            return;
        }
        let next = self.dir.join(segment_name(self.segment + 1));
        let opened = OpenOptions::new()
            .create_new(true)
            .append(true)
            .mode(0o600)
            .open(&next)
            .and_then(|f| {
                std::fs::set_permissions(&next, std::fs::Permissions::from_mode(0o600))?;
                File::open(&self.dir)?.sync_all()?;
                Ok(f)
            });
        match opened {
            Ok(f) => {
                self.file = f;
                self.segment += 1;
            }
            Err(e) => {
                self.fail("rotation", &e);
            }
        }
    }
}
