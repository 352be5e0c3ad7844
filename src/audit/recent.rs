//! The latest records about one agent, read back from the newest segments: what the console
//! shows a reviewer next to a request. Bounded: at most [`MAX_BYTES`] are read, from the end.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// How much of the log's tail is read at most.
pub const MAX_BYTES: u64 = 4 * 1024 * 1024;

/// Up to `limit` records whose `agent` is `agent`, newest first. A problem reading the log
/// gives fewer records, never an error: this is for display; `audit verify` is the check.
pub fn recent(dir: &Path, agent: &str, limit: usize) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    let Ok(segments) = super::segments(dir) else {
        return out;
    };
    let mut budget = MAX_BYTES;
    for (_, path) in segments.iter().rev() {
        if out.len() >= limit || budget == 0 {
            break;
        }
        let Ok(mut f) = std::fs::File::open(path) else {
            continue;
        };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let take = len.min(budget);
        budget -= take;
        if f.seek(SeekFrom::Start(len - take)).is_err() {
            continue;
        }
        let mut buf = Vec::with_capacity(take as usize);
        if f.take(take).read_to_end(&mut buf).is_err() {
            continue;
        }
        let mut lines: Vec<&[u8]> = buf.split(|b| *b == b'\n').collect();
        if take < len && !lines.is_empty() {
            lines.remove(0); // the first line was cut
        }
        for line in lines.into_iter().rev() {
            if out.len() >= limit {
                break;
            }
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(line) else {
                continue;
            };
            if v.get("agent").and_then(|a| a.as_str()) == Some(agent) {
                out.push(v);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_first_only_the_agent_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = String::new();
        for i in 0..5 {
            a.push_str(&format!("{{\"seq\":{i},\"agent\":\"claude\"}}\n"));
            a.push_str(&format!("{{\"seq\":{i},\"agent\":\"other\"}}\n"));
        }
        std::fs::write(dir.path().join(super::super::segment_name(1)), &a).unwrap();
        std::fs::write(
            dir.path().join(super::super::segment_name(2)),
            "{\"seq\":9,\"agent\":\"claude\"}\nnot json\n",
        )
        .unwrap();
        let got: Vec<u64> = recent(dir.path(), "claude", 3)
            .iter()
            .map(|v| v["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(got, vec![9, 4, 3]);
        assert!(recent(dir.path(), "nobody", 3).is_empty());
        assert!(recent(&dir.path().join("missing"), "claude", 3).is_empty());
    }
}
