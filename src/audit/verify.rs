//! The pure audit verifier: chain, hashes, order and signed checkpoints. No I/O: callers hand
//! it the bytes of each segment and of the checkpoint file.

use std::fmt;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::policy::hex;

/// The hash a log starts its chain from.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// JSON with object keys sorted, compact: the form every record hash and checkpoint signature is
/// computed over (independent of any map ordering feature of serde_json).
pub fn canonical(v: &Value) -> String {
    let mut out = String::new();
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String((*k).clone()).to_string());
                out.push(':');
                write_canonical(&map[*k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// sha256 (hex) of a record's canonical form without its `hash` field.
pub fn record_hash(record: &Value) -> String {
    let mut r = record.clone();
    if let Some(m) = r.as_object_mut() {
        m.remove("hash");
    }
    hex(&Sha256::digest(canonical(&r).as_bytes()))
}

/// Where a problem is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The seq the record at that place should have had.
    pub seq: u64,
    pub segment: String,
    pub line: usize,
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seq {} ({} line {}): {}",
            self.seq, self.segment, self.line, self.reason
        )
    }
}

/// The chain state after a record: what the next one must link to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub seq: u64,
    pub hash: String,
}

impl Link {
    pub fn genesis() -> Self {
        Link {
            seq: 0,
            hash: GENESIS.to_owned(),
        }
    }
}

/// Checks one record line against the link before it; returns the new link.
pub fn check_line(line: &[u8], before: &Link) -> Result<(Link, Value), String> {
    let expected = before.seq + 1;
    let v: Value =
        serde_json::from_slice(line).map_err(|_| "not a complete JSON record".to_owned())?;
    let seq = v["seq"].as_u64().ok_or("no seq")?;
    if seq != expected {
        return Err(format!(
            "found seq {seq} where seq {expected} belongs (a line was deleted, duplicated or moved)"
        ));
    }
    let prev = v["prev"].as_str().ok_or("no prev")?;
    if prev != before.hash {
        return Err(
            "prev does not match the hash of the record before it (the chain is broken)".into(),
        );
    }
    let hash = v["hash"].as_str().ok_or("no hash")?;
    if record_hash(&v) != hash {
        return Err("the record does not match its hash (it was edited)".into());
    }
    Ok((
        Link {
            seq,
            hash: hash.to_owned(),
        },
        v,
    ))
}

/// A checkpoint as stored (signature checked separately, by [`super::checkpoint`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub seq: u64,
    pub hash: String,
    pub segment: String,
    pub offset: u64,
    pub line: usize,
}

/// What `mandate audit verify` reports.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Report {
    pub records: u64,
    pub last_seq: u64,
    pub segments: usize,
    pub checkpoints: usize,
    /// Records after the last valid checkpoint: not yet protected by a signature.
    pub uncovered: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_bad_seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

impl Report {
    pub fn intact(&self) -> bool {
        self.problem.is_none()
    }
}

/// Verifies segments (in order) and checkpoints whose signatures were already checked.
/// `checkpoints` must be in file order; `bad_checkpoint` is the first checkpoint whose signature
/// or form failed, if any.
pub fn verify(
    segments: &[(String, Vec<u8>)],
    checkpoints: &[Checkpoint],
    bad_checkpoint: Option<String>,
) -> Report {
    let mut report = Report {
        segments: segments.len(),
        checkpoints: checkpoints.len(),
        ..Report::default()
    };
    let mut link = Link::genesis();
    let mut by_seq: std::collections::HashMap<u64, &Checkpoint> = std::collections::HashMap::new();
    let mut last_cp = 0;
    for cp in checkpoints {
        if cp.seq <= last_cp && last_cp != 0 {
            report.problem = Some(format!(
                "checkpoint at line {} goes back to seq {} after seq {last_cp}",
                cp.line, cp.seq
            ));
            report.first_bad_seq = Some(cp.seq);
            return report;
        }
        last_cp = cp.seq;
        by_seq.insert(cp.seq, cp);
    }
    if let Some(why) = bad_checkpoint {
        report.problem = Some(why);
        return report;
    }
    for (name, bytes) in segments {
        let mut start = 0;
        let mut line_no = 0;
        while start < bytes.len() {
            line_no += 1;
            let end = bytes[start..]
                .iter()
                .position(|&b| b == b'\n')
                .map(|i| start + i);
            let Some(end) = end else {
                report.first_bad_seq = Some(link.seq + 1);
                report.problem = Some(
                    Problem {
                        seq: link.seq + 1,
                        segment: name.clone(),
                        line: line_no,
                        reason: "the last line is incomplete (a torn write or truncation)".into(),
                    }
                    .to_string(),
                );
                return report;
            };
            match check_line(&bytes[start..end], &link) {
                Ok((next, _)) => {
                    if let Some(cp) = by_seq.get(&next.seq) {
                        if cp.hash != next.hash {
                            report.first_bad_seq = Some(next.seq);
                            report.problem = Some(
                                Problem {
                                    seq: next.seq,
                                    segment: name.clone(),
                                    line: line_no,
                                    reason: "does not match its signed checkpoint (the log up to here was rewritten)".into(),
                                }
                                .to_string(),
                            );
                            return report;
                        }
                    }
                    link = next;
                    report.records += 1;
                }
                Err(reason) => {
                    report.first_bad_seq = Some(link.seq + 1);
                    report.problem = Some(
                        Problem {
                            seq: link.seq + 1,
                            segment: name.clone(),
                            line: line_no,
                            reason,
                        }
                        .to_string(),
                    );
                    return report;
                }
            }
            start = end + 1;
        }
    }
    report.last_seq = link.seq;
    if last_cp > link.seq {
        report.first_bad_seq = Some(link.seq + 1);
        report.problem = Some(format!(
            "the log ends at seq {} but a signed checkpoint covers seq {last_cp} (records were removed from the end)",
            link.seq
        ));
        return report;
    }
    report.uncovered = link.seq - last_cp;
    report
}
