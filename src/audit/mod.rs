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

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::clock;

pub const SCHEMA: u32 = 1;
/// Records waiting for the writer; producers beyond this get "audit unavailable".
const QUEUE: usize = 4096;
const MAX_BATCH: usize = 512;

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
}

impl Kind {
    pub const ALL: [&'static str; 15] = [
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
}

impl Record {
    pub fn new(kind: Kind) -> Self {
        Record {
            kind: Some(kind),
            ..Record::default()
        }
    }
}

pub mod checkpoint;
pub mod verify;

use verify::{Link, canonical, check_line, record_hash};

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

type Ack = tokio::sync::oneshot::Sender<Result<u64, AuditError>>;

struct Job {
    /// `None`: sign a checkpoint now (graceful shutdown) and then acknowledge.
    record: Option<Record>,
    ack: Option<Ack>,
}

/// Handle to the log; cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    tx: SyncSender<Job>,
    failed: Arc<AtomicBool>,
    dir: PathBuf,
}

/// What start-up found and repaired.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recovery {
    pub trimmed_bytes: u64,
    pub segment: String,
    pub last_seq: u64,
}

pub fn segment_name(n: u32) -> String {
    format!("audit-{n:06}.jsonl")
}

/// The segments of a log directory, in order.
pub fn segments(dir: &Path) -> std::io::Result<Vec<(u32, PathBuf)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name();
        let Some(n) = name
            .to_str()
            .and_then(|s| s.strip_prefix("audit-"))
            .and_then(|s| s.strip_suffix(".jsonl"))
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        out.push((n, e.path()));
    }
    out.sort();
    Ok(out)
}

/// The directory must exist, be ours, and be private: the daemon refuses to start otherwise.
pub fn check_dir(dir: &Path) -> Result<(), AuditError> {
    let err = |reason: String| AuditError::Open {
        path: dir.display().to_string(),
        reason,
    };
    let meta = std::fs::symlink_metadata(dir).map_err(|e| {
        err(format!(
            "{e}; create it with `mandate init` (mode 0700, owned by the daemon's user)"
        ))
    })?;
    if meta.file_type().is_symlink() || !meta.is_dir() {
        return Err(err("not a directory (symlinks are refused)".into()));
    }
    let me = crate::os::effective_uid();
    if meta.uid() != me {
        return Err(err(format!(
            "owned by uid {}, not by the daemon's uid {me}",
            meta.uid()
        )));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(err(format!(
            "mode {:o} lets others in; chmod 700 it",
            meta.permissions().mode() & 0o777
        )));
    }
    Ok(())
}

fn open_append(path: &Path) -> std::io::Result<File> {
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(f)
}

/// Start-up recovery: from the last signed checkpoint (or the beginning), check every record to
/// the end; trim a torn final line; any other damage is fatal and names the first bad seq.
/// Reads only what follows the last checkpoint, so start-up time does not grow with the log.
fn recover(
    dir: &Path,
    key: &ed25519_dalek::SigningKey,
    cadence: &verify::Cadence,
) -> Result<(u32, Link, u64, Option<Recovery>), AuditError> {
    let open_err = |reason: String| AuditError::Open {
        path: dir.display().to_string(),
        reason,
    };
    let segs = segments(dir).map_err(|e| open_err(e.to_string()))?;
    // Only the last checkpoint matters at start-up: read the file's tail, trim a torn final
    // line (a crash while signing), and check that one signature.
    let cp_path = dir.join(checkpoint::CHECKPOINT_FILE);
    let cp_bytes = match File::open(&cp_path) {
        Ok(mut f) => {
            let len = f.metadata().map_err(|e| open_err(e.to_string()))?.len();
            let from = len.saturating_sub(64 * 1024);
            f.seek(SeekFrom::Start(from))
                .map_err(|e| open_err(e.to_string()))?;
            let mut tail = Vec::new();
            f.read_to_end(&mut tail)
                .map_err(|e| open_err(e.to_string()))?;
            let complete = tail.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            if complete < tail.len() {
                let f = OpenOptions::new()
                    .write(true)
                    .open(&cp_path)
                    .map_err(|e| open_err(e.to_string()))?;
                f.set_len(from + complete as u64)
                    .and_then(|()| f.sync_all())
                    .map_err(|e| open_err(e.to_string()))?;
                tail.truncate(complete);
            }
            let body = &tail[..complete];
            let start = body[..body.len().saturating_sub(1)]
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |i| i + 1);
            body[start..].to_vec()
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(open_err(e.to_string())),
    };
    let (cps, bad) = checkpoint::read(&cp_bytes, &key.verifying_key());
    if let Some(why) = bad {
        return Err(AuditError::Damaged(
            why.replace("checkpoint line 1", "the last checkpoint"),
        ));
    }
    let Some(&(last_n, _)) = segs.last() else {
        if let Some(cp) = cps.last() {
            return Err(AuditError::Damaged(format!(
                "seq 1: every segment is gone but a checkpoint covers seq {}",
                cp.seq
            )));
        }
        return Ok((1, Link::genesis(), 0, None));
    };
    // Where to start checking.
    let (mut link, start_seg, mut offset) = match cps.last() {
        Some(cp) => {
            let n = cp
                .segment
                .strip_prefix("audit-")
                .and_then(|s| s.strip_suffix(".jsonl"))
                .and_then(|s| s.parse::<u32>().ok())
                .ok_or_else(|| {
                    AuditError::Damaged(format!(
                        "checkpoint names an unknown segment {}",
                        cp.segment
                    ))
                })?;
            (
                Link {
                    seq: cp.seq,
                    hash: cp.hash.clone(),
                },
                n,
                cp.offset,
            )
        }
        None => (Link::genesis(), segs[0].0, 0),
    };
    let signed = link.clone();
    let mut tail = verify::Tail::default();
    let mut recovery = None;
    for (n, path) in segs.iter().filter(|(n, _)| *n >= start_seg) {
        let mut f = File::open(path).map_err(|e| open_err(e.to_string()))?;
        let len = f.metadata().map_err(|e| open_err(e.to_string()))?.len();
        if offset > len {
            return Err(AuditError::Damaged(format!(
                "seq {}: {} is shorter than its signed checkpoint says (records were removed)",
                link.seq + 1,
                segment_name(*n)
            )));
        }
        if offset > 0 && *n == start_seg {
            // The checkpointed record must end exactly at the signed offset; anything else
            // means the bytes before it changed.
            let from = offset.saturating_sub(64 * 1024);
            f.seek(SeekFrom::Start(from))
                .map_err(|e| open_err(e.to_string()))?;
            let mut window = vec![0u8; (offset - from) as usize];
            f.read_exact(&mut window)
                .map_err(|e| open_err(e.to_string()))?;
            let last =
                window
                    .strip_suffix(b"\n")
                    .map(|w| match w.iter().rposition(|&b| b == b'\n') {
                        Some(i) => &w[i + 1..],
                        None => w,
                    });
            let matches = last
                .and_then(|l| serde_json::from_slice::<serde_json::Value>(l).ok())
                .is_some_and(|v| {
                    v["seq"].as_u64() == Some(link.seq) && v["hash"] == link.hash.as_str()
                });
            if !matches {
                return Err(AuditError::Damaged(format!(
                    "seq {} ({}): the record at the last signed checkpoint is not where the checkpoint says; the log before it was changed",
                    link.seq,
                    segment_name(*n)
                )));
            }
        }
        f.seek(SeekFrom::Start(offset))
            .map_err(|e| open_err(e.to_string()))?;
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes)
            .map_err(|e| open_err(e.to_string()))?;
        let mut pos = 0usize;
        while pos < bytes.len() {
            match bytes[pos..].iter().position(|&b| b == b'\n') {
                Some(i) => {
                    let (next, v) = check_line(&bytes[pos..pos + i], &link).map_err(|reason| {
                        AuditError::Damaged(format!(
                            "seq {} ({}): {reason}",
                            link.seq + 1,
                            segment_name(*n)
                        ))
                    })?;
                    // After the last signed checkpoint, an in-chain checkpoint record can only
                    // be that checkpoint's own.
                    if let Some(reason) = verify::check_checkpoint_record(&v, |s| {
                        (s == signed.seq && signed.seq > 0).then(|| signed.hash.clone())
                    }) {
                        return Err(AuditError::Damaged(format!(
                            "seq {} ({}): {reason}",
                            next.seq,
                            segment_name(*n)
                        )));
                    }
                    tail.add(&v);
                    link = next;
                    pos += i + 1;
                }
                None if *n == last_n => {
                    // A torn final record: never acknowledged (acks follow the fsync), so trim it.
                    let keep = offset + pos as u64;
                    let f = OpenOptions::new()
                        .write(true)
                        .open(path)
                        .map_err(|e| open_err(e.to_string()))?;
                    f.set_len(keep)
                        .and_then(|()| f.sync_all())
                        .map_err(|e| open_err(e.to_string()))?;
                    recovery = Some(Recovery {
                        trimmed_bytes: (bytes.len() - pos) as u64,
                        segment: segment_name(*n),
                        last_seq: link.seq,
                    });
                    break;
                }
                None => {
                    return Err(AuditError::Damaged(format!(
                        "seq {} ({}): an incomplete line before the last segment",
                        link.seq + 1,
                        segment_name(*n)
                    )));
                }
            }
        }
        offset = 0;
    }
    if let Some(cp) = cps.last()
        && link.seq < cp.seq
    {
        return Err(AuditError::Damaged(format!(
            "seq {}: the log ends before its signed checkpoint at seq {}",
            link.seq + 1,
            cp.seq
        )));
    }
    if let Some(reason) = tail.problem(cadence, signed.seq) {
        return Err(AuditError::Damaged(format!(
            "seq {}: {reason}; keep the directory as evidence and see docs/threat-model.md",
            signed.seq + 1
        )));
    }
    let uncovered = link.seq - signed.seq;
    Ok((last_n, link, uncovered, recovery))
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

struct Writer {
    dir: PathBuf,
    file: File,
    segment: u32,
    cp_file: File,
    key: ed25519_dalek::SigningKey,
    opts: Options,
    link: Link,
    since_checkpoint: u64,
    /// When the last checkpoint was signed: one is signed at least every interval, busy or not.
    last_signed: std::time::Instant,
    /// The in-chain record of the last checkpoint, written with the next batch.
    pending_cp: Option<Record>,
    shipper: Option<Shipper>,
    failed: Arc<AtomicBool>,
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

impl Writer {
    fn run(mut self, rx: Receiver<Job>) {
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

/// Ships checkpoint lines to `checkpoint_command`, one at a time and in order, on its own
/// thread (so a slow command never delays issuance); each run is bounded by 10 s.
struct Shipper {
    tx: std::sync::mpsc::SyncSender<ShipJob>,
}

enum ShipJob {
    Line(String),
    /// Answered once every line queued before it was shipped (shutdown waits for this).
    Flush(std::sync::mpsc::Sender<()>),
}

impl Shipper {
    fn start(cmd: Vec<String>) -> Option<Shipper> {
        let (tx, rx) = sync_channel::<ShipJob>(64);
        std::thread::Builder::new()
            .name("audit-shipper".into())
            .spawn(move || {
                for job in rx {
                    match job {
                        ShipJob::Line(line) => ship(&cmd, &line),
                        ShipJob::Flush(done) => {
                            let _ = done.send(());
                        }
                    }
                }
            })
            .ok()?;
        Some(Shipper { tx })
    }

    fn send(&self, line: String) {
        if self.tx.try_send(ShipJob::Line(line)).is_err() {
            tracing::warn!(
                "the checkpoint command is falling behind; a checkpoint was not shipped"
            );
        }
    }

    /// Waits (at most `limit`) until everything queued so far was shipped.
    fn flush(&self, limit: Duration) {
        let (done, wait) = std::sync::mpsc::channel();
        if self.tx.send(ShipJob::Flush(done)).is_ok() && wait.recv_timeout(limit).is_err() {
            tracing::warn!("shipping checkpoints did not finish in time");
        }
    }
}

/// Runs the configured command with one checkpoint line on stdin, with a timeout.
fn ship(cmd: &[String], line: &str) {
    let Some((program, args)) = cmd.split_first() else {
        return;
    };
    // A small, fixed environment: never the daemon's own (which holds the base credentials).
    let child = crate::os::helper_command(program, args).spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "cannot run the checkpoint command");
            return;
        }
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(line.as_bytes());
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match child.try_wait() {
            Ok(Some(status)) if !status.success() => {
                tracing::warn!(%status, "the checkpoint command failed");
                return;
            }
            Ok(Some(_)) => return,
            Ok(None) if std::time::Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                tracing::warn!("the checkpoint command timed out and was killed");
                return;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests;
