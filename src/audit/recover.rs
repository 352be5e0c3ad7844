//! Start-up recovery: check the log from its last signed checkpoint and trim a torn tail.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use super::verify::{self, Checkpoint, Link, check_line};
use super::{AuditError, checkpoint, segment_name, segments};

/// What start-up found and repaired.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recovery {
    pub trimmed_bytes: u64,
    pub segment: String,
    pub last_seq: u64,
}

fn open_err(dir: &Path, reason: String) -> AuditError {
    AuditError::Open {
        path: dir.display().to_string(),
        reason,
    }
}

/// Start-up recovery: from the last signed checkpoint (or the beginning), check every record to
/// the end; trim a torn final line; any other damage is fatal and names the first bad seq.
/// Reads only what follows the last checkpoint, so start-up time does not grow with the log.
pub(super) fn recover(
    dir: &Path,
    key: &ed25519_dalek::SigningKey,
    cadence: &verify::Cadence,
) -> Result<(u32, Link, u64, Option<Recovery>), AuditError> {
    let segs = segments(dir).map_err(|e| open_err(dir, e.to_string()))?;
    let cp_bytes = last_checkpoint_line(dir)?;
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
    let (link, start_seg, mut offset) = match cps.last() {
        Some(cp) => resume_at(cp)?,
        None => (Link::genesis(), segs[0].0, 0),
    };
    let mut scan = Scan {
        signed: link.clone(),
        link,
        tail: verify::Tail::default(),
        recovery: None,
    };
    for (n, path) in segs.iter().filter(|(n, _)| *n >= start_seg) {
        let at_checkpoint = offset > 0 && *n == start_seg;
        let bytes = scan.read_segment(dir, *n, path, offset, at_checkpoint)?;
        scan.check_records(dir, *n, path, offset, &bytes, *n == last_n)?;
        offset = 0;
    }
    let Scan {
        link,
        signed,
        tail,
        recovery,
    } = scan;
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

/// The last line of `checkpoints.jsonl` (empty if there is none).
fn last_checkpoint_line(dir: &Path) -> Result<Vec<u8>, AuditError> {
    // Only the last checkpoint matters at start-up: read the file's tail, trim a torn final
    // line (a crash while signing), and check that one signature.
    let cp_path = dir.join(checkpoint::CHECKPOINT_FILE);
    match File::open(&cp_path) {
        Ok(mut f) => {
            let len = f
                .metadata()
                .map_err(|e| open_err(dir, e.to_string()))?
                .len();
            let from = len.saturating_sub(64 * 1024);
            f.seek(SeekFrom::Start(from))
                .map_err(|e| open_err(dir, e.to_string()))?;
            let mut tail = Vec::new();
            f.read_to_end(&mut tail)
                .map_err(|e| open_err(dir, e.to_string()))?;
            let complete = tail.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            if complete < tail.len() {
                let f = OpenOptions::new()
                    .write(true)
                    .open(&cp_path)
                    .map_err(|e| open_err(dir, e.to_string()))?;
                f.set_len(from + complete as u64)
                    .and_then(|()| f.sync_all())
                    .map_err(|e| open_err(dir, e.to_string()))?;
                tail.truncate(complete);
            }
            let body = &tail[..complete];
            let start = body[..body.len().saturating_sub(1)]
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |i| i + 1);
            Ok(body[start..].to_vec())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(open_err(dir, e.to_string())),
    }
}

/// The chain state, segment and offset the last signed checkpoint vouches for.
fn resume_at(cp: &Checkpoint) -> Result<(Link, u32, u64), AuditError> {
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
    Ok((
        Link {
            seq: cp.seq,
            hash: cp.hash.clone(),
        },
        n,
        cp.offset,
    ))
}

/// How far recovery has checked the chain.
struct Scan {
    /// The last record checked.
    link: Link,
    /// The last signed checkpoint's record (genesis when there is none).
    signed: Link,
    tail: verify::Tail,
    recovery: Option<Recovery>,
}

impl Scan {
    /// The bytes of segment `n` from `offset` on; at the checkpoint's own segment, first checks
    /// that the checkpointed record ends exactly there.
    fn read_segment(
        &self,
        dir: &Path,
        n: u32,
        path: &Path,
        offset: u64,
        at_checkpoint: bool,
    ) -> Result<Vec<u8>, AuditError> {
        let link = &self.link;
        let mut f = File::open(path).map_err(|e| open_err(dir, e.to_string()))?;
        let len = f
            .metadata()
            .map_err(|e| open_err(dir, e.to_string()))?
            .len();
        if offset > len {
            return Err(AuditError::Damaged(format!(
                "seq {}: {} is shorter than its signed checkpoint says (records were removed)",
                link.seq + 1,
                segment_name(n)
            )));
        }
        if at_checkpoint {
            // The checkpointed record must end exactly at the signed offset; anything else
            // means the bytes before it changed.
            let from = offset.saturating_sub(64 * 1024);
            f.seek(SeekFrom::Start(from))
                .map_err(|e| open_err(dir, e.to_string()))?;
            let mut window = vec![0u8; (offset - from) as usize];
            f.read_exact(&mut window)
                .map_err(|e| open_err(dir, e.to_string()))?;
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
                    segment_name(n)
                )));
            }
        }
        f.seek(SeekFrom::Start(offset))
            .map_err(|e| open_err(dir, e.to_string()))?;
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes)
            .map_err(|e| open_err(dir, e.to_string()))?;
        Ok(bytes)
    }

    /// Checks every record of `bytes` (segment `n` from `offset`); trims a torn final record
    /// of the last segment.
    fn check_records(
        &mut self,
        dir: &Path,
        n: u32,
        path: &Path,
        offset: u64,
        bytes: &[u8],
        last: bool,
    ) -> Result<(), AuditError> {
        let mut pos = 0usize;
        while pos < bytes.len() {
            match bytes[pos..].iter().position(|&b| b == b'\n') {
                Some(i) => {
                    let (next, v) =
                        check_line(&bytes[pos..pos + i], &self.link).map_err(|reason| {
                            AuditError::Damaged(format!(
                                "seq {} ({}): {reason}",
                                self.link.seq + 1,
                                segment_name(n)
                            ))
                        })?;
                    // After the last signed checkpoint, an in-chain checkpoint record can only
                    // be that checkpoint's own.
                    let signed = &self.signed;
                    if let Some(reason) = verify::check_checkpoint_record(&v, |s| {
                        (s == signed.seq && signed.seq > 0).then(|| signed.hash.clone())
                    }) {
                        return Err(AuditError::Damaged(format!(
                            "seq {} ({}): {reason}",
                            next.seq,
                            segment_name(n)
                        )));
                    }
                    self.tail.add(&v);
                    self.link = next;
                    pos += i + 1;
                }
                None if last => {
                    // A torn final record: never acknowledged (acks follow the fsync), so trim it.
                    let keep = offset + pos as u64;
                    let f = OpenOptions::new()
                        .write(true)
                        .open(path)
                        .map_err(|e| open_err(dir, e.to_string()))?;
                    f.set_len(keep)
                        .and_then(|()| f.sync_all())
                        .map_err(|e| open_err(dir, e.to_string()))?;
                    self.recovery = Some(Recovery {
                        trimmed_bytes: (bytes.len() - pos) as u64,
                        segment: segment_name(n),
                        last_seq: self.link.seq,
                    });
                    break;
                }
                None => {
                    return Err(AuditError::Damaged(format!(
                        "seq {} ({}): an incomplete line before the last segment",
                        self.link.seq + 1,
                        segment_name(n)
                    )));
                }
            }
        }
        Ok(())
    }
}
