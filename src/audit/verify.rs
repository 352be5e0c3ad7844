//! The pure audit verifier: chain, hashes, order and signed checkpoints. No I/O: callers hand
//! it the bytes of each segment and of the checkpoint file.

use std::fmt;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::policy::hex;

/// The hash a log starts its chain from.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// JSON with object keys sorted, compact, and every control character (C0, DEL and C1, which
/// serde_json leaves raw) escaped as `\uXXXX`: the form every record is written in and every
/// record hash and checkpoint signature is computed over. A record is therefore always one line
/// of printable text, and no control character reaches a terminal that shows it.
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
                write_string(k, out);
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
        Value::String(text) => write_string(text, out),
        other => out.push_str(&other.to_string()),
    }
}

fn write_string(text: &str, out: &mut String) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
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

/// How often the writer signs a checkpoint ([`super::Options`]): at least every `every` records
/// (it never writes more between two) and every `interval`. A log whose unsigned tail is longer,
/// or spans more time than that (with room for scheduling), had its checkpoints removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cadence {
    pub every: u64,
    pub interval: std::time::Duration,
}

impl Cadence {
    pub fn of(opts: &super::Options) -> Self {
        Cadence {
            every: opts.checkpoint_every,
            interval: opts.checkpoint_interval,
        }
    }

    fn record_limit(&self) -> u64 {
        self.every
    }

    fn span_limit_ms(&self) -> i64 {
        let ms = self.interval.as_millis() as i64;
        ms + (ms / 10).max(10_000)
    }
}

/// The unsigned tail seen so far: records after the last checkpoint (the in-chain `checkpoint`
/// records themselves excepted) and the times of its first and last record.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tail {
    pub records: u64,
    first_ms: Option<i64>,
    last_ms: Option<i64>,
}

impl Tail {
    /// Counts one record (its parsed JSON).
    pub fn add(&mut self, v: &Value) {
        if v["kind"] == "checkpoint" {
            return;
        }
        self.records += 1;
        if let Some(ms) = v["time"]
            .as_str()
            .and_then(crate::clock::parse_rfc3339_millis)
        {
            self.first_ms.get_or_insert(ms);
            self.last_ms = Some(ms);
        }
    }

    /// Why this tail cannot be what the writer left (checkpoints were removed), if it cannot.
    pub fn problem(&self, cadence: &Cadence, after_seq: u64) -> Option<String> {
        let span = match (self.first_ms, self.last_ms) {
            (Some(a), Some(b)) => b - a,
            _ => 0,
        };
        let signed = if after_seq == 0 {
            "no signed checkpoint".to_owned()
        } else {
            format!("the last signed checkpoint (seq {after_seq})")
        };
        if self.records > cadence.record_limit() {
            return Some(format!(
                "{} records follow {signed}, but the daemon signs one at least every {} records: checkpoints were removed or the log was rewritten",
                self.records, cadence.every
            ));
        }
        if span > cadence.span_limit_ms() {
            return Some(format!(
                "the records after {signed} span {} s, but the daemon signs one at least every {} s: checkpoints were removed or the log was rewritten",
                span / 1000,
                cadence.interval.as_secs()
            ));
        }
        None
    }
}

/// The problem with an in-chain `checkpoint` record `v`, given the signed checkpoints known
/// (`signed(seq)` gives the hash a signed checkpoint at that seq covers).
pub fn check_checkpoint_record(
    v: &Value,
    signed: impl Fn(u64) -> Option<String>,
) -> Option<String> {
    if v["kind"] != "checkpoint" {
        return None;
    }
    let (Some(seq), Some(hash)) = (v["covers_seq"].as_u64(), v["covers_hash"].as_str()) else {
        return Some("a checkpoint record without covers_seq and covers_hash".into());
    };
    match signed(seq) {
        Some(h) if h == hash => None,
        Some(_) => Some(format!(
            "records a signed checkpoint of seq {seq} that does not match the checkpoint file"
        )),
        None => Some(format!(
            "records a signed checkpoint of seq {seq} that the checkpoint file lacks (checkpoints were removed)"
        )),
    }
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
    let mut v = Verifier::new(checkpoints, bad_checkpoint);
    for (name, bytes) in segments {
        v.segment(name, bytes);
    }
    v.finish()
}

/// The same check fed one segment at a time, so a large log never has to be in memory at once.
pub struct Verifier<'c> {
    by_seq: std::collections::HashMap<u64, &'c Checkpoint>,
    last_cp: u64,
    link: Link,
    report: Report,
    cadence: Option<Cadence>,
    tail: Tail,
}

impl<'c> Verifier<'c> {
    pub fn new(checkpoints: &'c [Checkpoint], bad_checkpoint: Option<String>) -> Self {
        let mut report = Report {
            checkpoints: checkpoints.len(),
            ..Report::default()
        };
        let mut by_seq = std::collections::HashMap::new();
        let mut last_cp = 0;
        for cp in checkpoints {
            if report.problem.is_none() && last_cp != 0 && cp.seq <= last_cp {
                report.problem = Some(format!(
                    "checkpoint at line {} goes back to seq {} after seq {last_cp}",
                    cp.line, cp.seq
                ));
                report.first_bad_seq = Some(cp.seq);
            }
            last_cp = last_cp.max(cp.seq);
            by_seq.insert(cp.seq, cp);
        }
        if report.problem.is_none() {
            report.problem = bad_checkpoint;
        }
        Verifier {
            by_seq,
            last_cp,
            link: Link::genesis(),
            report,
            cadence: None,
            tail: Tail::default(),
        }
    }

    /// Also require the unsigned tail to fit the writer's cadence (see [`Cadence`]).
    pub fn with_cadence(mut self, cadence: Cadence) -> Self {
        self.cadence = Some(cadence);
        self
    }

    fn fail(&mut self, seq: u64, segment: &str, line: usize, reason: String) {
        self.report.first_bad_seq = Some(seq);
        self.report.problem = Some(
            Problem {
                seq,
                segment: segment.to_owned(),
                line,
                reason,
            }
            .to_string(),
        );
    }

    /// Checks the next segment; after the first problem, further segments are ignored.
    pub fn segment(&mut self, name: &str, bytes: &[u8]) {
        if self.report.problem.is_some() {
            return;
        }
        self.report.segments += 1;
        let mut start = 0;
        let mut line_no = 0;
        while start < bytes.len() {
            line_no += 1;
            let Some(end) = bytes[start..]
                .iter()
                .position(|&b| b == b'\n')
                .map(|i| start + i)
            else {
                let seq = self.link.seq + 1;
                self.fail(
                    seq,
                    name,
                    line_no,
                    "the last line is incomplete (a torn write or truncation)".into(),
                );
                return;
            };
            match check_line(&bytes[start..end], &self.link) {
                Ok((next, v)) => {
                    let by_seq = &self.by_seq;
                    if let Some(reason) =
                        check_checkpoint_record(&v, |s| by_seq.get(&s).map(|cp| cp.hash.clone()))
                    {
                        self.fail(next.seq, name, line_no, reason);
                        return;
                    }
                    if next.seq > self.last_cp {
                        self.tail.add(&v);
                    }
                    if self
                        .by_seq
                        .get(&next.seq)
                        .is_some_and(|cp| cp.hash != next.hash)
                    {
                        let reason = "does not match its signed checkpoint (the log up to here was rewritten)".into();
                        self.fail(next.seq, name, line_no, reason);
                        return;
                    }
                    self.link = next;
                    self.report.records += 1;
                }
                Err(reason) => {
                    let seq = self.link.seq + 1;
                    self.fail(seq, name, line_no, reason);
                    return;
                }
            }
            start = end + 1;
        }
    }

    pub fn finish(mut self) -> Report {
        if self.report.problem.is_some() {
            return self.report;
        }
        self.report.last_seq = self.link.seq;
        if self.last_cp > self.link.seq {
            self.report.first_bad_seq = Some(self.link.seq + 1);
            self.report.problem = Some(format!(
                "the log ends at seq {} but a signed checkpoint covers seq {} (records were removed from the end)",
                self.link.seq, self.last_cp
            ));
            return self.report;
        }
        self.report.uncovered = self.link.seq - self.last_cp;
        if let Some(c) = &self.cadence
            && let Some(reason) = self.tail.problem(c, self.last_cp)
        {
            self.report.first_bad_seq = Some(self.last_cp + 1);
            self.report.problem = Some(reason);
        }
        self.report
    }
}
