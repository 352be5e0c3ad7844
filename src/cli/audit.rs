//! `mandate audit verify|tail|show`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Subcommand;
use mandate::audit::{self, checkpoint, verify};
use mandate::config;
use mandate::diag::quoted;

use super::{Exit, config_error, print_bytes};

#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// Check the hash chain, the order and the signed checkpoints; exit 0 only when intact
    #[command(
        long_about = "Check the hash chain, the order and the signed checkpoints of the audit log.\n\n\
        Exits 0 only when the log is intact; otherwise names the first bad seq and why (exit 3). \
        Reports how many records at the end are not yet covered by a signed checkpoint. For the \
        strongest check pass --key with a copy of signing.pub kept away from this machine."
    )]
    Verify {
        /// The audit directory [default: STATE_DIR/audit from the config]
        #[arg(long, value_name = "DIR")]
        log: Option<PathBuf>,
        /// Public key (hex, as in signing.pub) [default: from STATE_DIR/signing.key or signing.pub]
        #[arg(long, value_name = "FILE")]
        key: Option<PathBuf>,
        /// Also check against checkpoints shipped elsewhere (lines of checkpoints.jsonl, e.g.
        /// what `checkpoint_command` received): detects truncation after the last local one
        #[arg(long, value_name = "FILE")]
        against: Option<PathBuf>,
        /// Also check against the checkpoints this daemon anchored in the shared store (team
        /// mode, `[store]`): detects a truncated log or a rewritten tail
        #[arg(long)]
        store: bool,
        /// Machine-readable output
        #[arg(long)]
        json: bool,
    },
    /// Print the last records, optionally filtered, and follow new ones with -f
    Tail {
        /// The audit directory [default: STATE_DIR/audit from the config]
        #[arg(long, value_name = "DIR")]
        log: Option<PathBuf>,
        /// How many records
        #[arg(short = 'n', long, default_value_t = 20)]
        lines: usize,
        /// Keep printing records as they are written
        #[arg(short, long)]
        follow: bool,
        /// Only this agent's records
        #[arg(long)]
        agent: Option<String>,
        /// Only records of this kind (request, denied, issued, delivered, ...)
        #[arg(long)]
        kind: Option<String>,
        /// Print raw JSON lines
        #[arg(long)]
        json: bool,
    },
    /// Print one record, by seq
    Show {
        seq: u64,
        /// The audit directory [default: STATE_DIR/audit from the config]
        #[arg(long, value_name = "DIR")]
        log: Option<PathBuf>,
    },
}

fn state_dir(config_flag: Option<&Path>) -> Result<PathBuf, Exit> {
    let path = config::locate(config_flag).map_err(|e| config_error(&e))?;
    let c = config::read(&path).map_err(|e| config_error(&e))?;
    Ok(c.state_dir)
}

fn log_dir(config_flag: Option<&Path>, log: Option<PathBuf>) -> Result<PathBuf, Exit> {
    match log {
        Some(l) => Ok(l),
        None => Ok(state_dir(config_flag)?.join("audit")),
    }
}

pub fn run(config_flag: Option<PathBuf>, cmd: AuditCmd) -> Exit {
    let result = match cmd {
        AuditCmd::Verify {
            log,
            key,
            against,
            store,
            json,
        } => verify_cmd(config_flag.as_deref(), log, key, (against, store), json),
        AuditCmd::Tail {
            log,
            lines,
            follow,
            agent,
            kind,
            json,
        } => {
            if let Some(k) = &kind
                && !audit::Kind::ALL.contains(&k.as_str())
            {
                eprintln!(
                    "error: --kind {}: expected one of {}",
                    quoted(k),
                    audit::Kind::ALL.join(", ")
                );
                return Exit::Usage;
            }
            log_dir(config_flag.as_deref(), log)
                .map(|dir| tail(&dir, lines, follow, agent, kind, json))
        }
        AuditCmd::Show { seq, log } => {
            log_dir(config_flag.as_deref(), log).map(|dir| show(&dir, seq))
        }
    };
    result.unwrap_or_else(|e| e)
}

fn public_key(
    dir: &Path,
    config_flag: Option<&Path>,
    key: Option<PathBuf>,
) -> Result<ed25519_dalek::VerifyingKey, String> {
    if let Some(k) = key {
        let text = std::fs::read_to_string(&k).map_err(|e| format!("{}: {e}", k.display()))?;
        return checkpoint::parse_public(&text);
    }
    // Next to the log (the default layout is STATE_DIR/audit and STATE_DIR/signing.key).
    let state = match dir.parent() {
        Some(p) if p.join("signing.key").exists() || p.join("signing.pub").exists() => p.to_owned(),
        _ => state_dir(config_flag).map_err(|_| "no key: pass --key FILE".to_owned())?,
    };
    if let Ok(k) = checkpoint::load_key(&state.join("signing.key")) {
        return Ok(k.verifying_key());
    }
    let text = std::fs::read_to_string(state.join("signing.pub")).map_err(|e| {
        format!(
            "no signing key or signing.pub in {}: {e}; pass --key FILE",
            state.display()
        )
    })?;
    checkpoint::parse_public(&text)
}

/// The writer's signing cadence from the config, or the defaults when no config is found.
fn cadence(config_flag: Option<&Path>) -> verify::Cadence {
    let opts = config::locate(config_flag)
        .ok()
        .and_then(|p| config::read(&p).ok())
        .map(|c| c.audit)
        .unwrap_or_default();
    verify::Cadence::of(&opts)
}

/// Local and shipped checkpoints, in seq order, one per seq; two that disagree about a seq are
/// a problem.
fn merge_checkpoints(
    mut local: Vec<verify::Checkpoint>,
    shipped: Vec<verify::Checkpoint>,
) -> (Vec<verify::Checkpoint>, Option<String>) {
    let mut problem = None;
    for cp in shipped {
        match local.iter().find(|c| c.seq == cp.seq) {
            Some(c) if c.hash != cp.hash => {
                problem.get_or_insert(format!(
                    "the shipped checkpoint of seq {} does not match the local one (the log up to there was rewritten)",
                    cp.seq
                ));
            }
            Some(_) => {}
            None => local.push(cp),
        }
    }
    local.sort_by_key(|c| c.seq);
    (local, problem)
}

/// The checkpoint lines the daemon with key `vk` anchored in the shared store.
fn store_checkpoints(
    config_flag: Option<&Path>,
    vk: &ed25519_dalek::VerifyingKey,
) -> Result<Vec<u8>, Exit> {
    use mandate::store::Store;
    let path = config::locate(config_flag).map_err(|e| config_error(&e))?;
    let c = config::read(&path).map_err(|e| config_error(&e))?;
    let Some(s) = &c.store else {
        eprintln!(
            "error: --store checks against a shared store, and {} has no [store] table (README \"Team mode\")",
            path.display()
        );
        return Err(Exit::Usage);
    };
    let me = checkpoint::fingerprint(vk);
    let lines = mandate::store::PgStore::open(&super::serve::pg_options(s), &me)
        .and_then(|store| store.checkpoints(&me))
        .map_err(|e| {
            eprintln!("error: {e}");
            Exit::Unavailable
        })?;
    Ok(lines
        .iter()
        .flat_map(|l| format!("{l}\n").into_bytes())
        .collect())
}

fn verify_cmd(
    config_flag: Option<&Path>,
    log: Option<PathBuf>,
    key: Option<PathBuf>,
    (against, store): (Option<PathBuf>, bool),
    json: bool,
) -> Result<Exit, Exit> {
    let dir = log_dir(config_flag, log)?;
    let vk = public_key(&dir, config_flag, key).map_err(|e| {
        eprintln!("error: {e}");
        Exit::NotFound
    })?;
    let segs = audit::segments(&dir).map_err(|e| {
        eprintln!("error: cannot read {}: {e}", dir.display());
        Exit::NotFound
    })?;
    let cp = std::fs::read(dir.join(checkpoint::CHECKPOINT_FILE)).unwrap_or_default();
    let (mut cps, mut bad) = checkpoint::read(&cp, &vk);
    if let Some(file) = &against {
        let shipped = std::fs::read(file).map_err(|e| {
            eprintln!("error: cannot read {}: {e}", file.display());
            Exit::NotFound
        })?;
        let (theirs, bad_theirs) = checkpoint::read(&shipped, &vk);
        if bad.is_none() {
            bad = bad_theirs.map(|b| format!("{}: {b}", file.display()));
        }
        let (merged, conflict) = merge_checkpoints(cps, theirs);
        cps = merged;
        if bad.is_none() {
            bad = conflict;
        }
    }
    let mut anchored_count = None;
    if store {
        let anchored = store_checkpoints(config_flag, &vk)?;
        let (theirs, bad_theirs) = checkpoint::read(&anchored, &vk);
        // Nothing anchored while the log has signed checkpoints: the store cannot vouch for
        // anything (a fresh or wiped database, or another one).
        if theirs.is_empty() && !cps.is_empty() && bad.is_none() {
            bad = Some(format!(
                "the store holds no checkpoint of key {} while the local log has {}: it cannot vouch for this log (another database, or its rows were deleted)",
                checkpoint::fingerprint(&vk),
                cps.len()
            ));
        }
        anchored_count = Some(theirs.len());
        if bad.is_none() {
            bad = bad_theirs.map(|b| format!("the store's {b}"));
        }
        let (merged, conflict) = merge_checkpoints(cps, theirs);
        cps = merged;
        if bad.is_none() {
            bad = conflict;
        }
    }
    // One segment in memory at a time.
    let mut verifier = verify::Verifier::new(&cps, bad).with_cadence(cadence(config_flag));
    for (n, p) in segs {
        let bytes = std::fs::read(&p).map_err(|e| {
            eprintln!("error: cannot read {}: {e}", p.display());
            Exit::NotFound
        })?;
        verifier.segment(&audit::segment_name(n), &bytes);
    }
    let report = verifier.finish();
    let fp = checkpoint::fingerprint(&vk);
    if json {
        let mut v = serde_json::to_value(&report).unwrap_or_default();
        v["intact"] = report.intact().into();
        v["key"] = fp.into();
        if let Some(n) = anchored_count {
            v["anchored"] = n.into();
        }
        super::print_json(&v, true);
    } else if let Some(problem) = &report.problem {
        eprintln!("audit log DAMAGED: {problem}");
    } else {
        print_bytes(
            format!(
                "audit log intact: {} record(s), seq 1..{}, in {} segment(s); {} signed checkpoint(s) (key {fp}){}; {} record(s) after the last checkpoint are not yet covered by a signature\n",
                report.records,
                report.last_seq,
                report.segments,
                report.checkpoints,
                anchored_count
                    .map(|n| format!(", {n} of them anchored in the store"))
                    .unwrap_or_default(),
                report.uncovered
            )
            .as_bytes(),
        );
    }
    Ok(if report.intact() {
        Exit::Ok
    } else {
        Exit::Invalid
    })
}

fn human(v: &serde_json::Value) -> String {
    let mut s = format!(
        "{:>7} {} {:<10}",
        v["seq"].as_u64().unwrap_or(0),
        v["time"].as_str().unwrap_or(""),
        v["kind"].as_str().unwrap_or("?")
    );
    for k in [
        "agent",
        "uid",
        "profile",
        "access_key_id",
        "expiration",
        "code",
        "request_id",
        "approval_id",
        "approver",
        "decision",
        "scope",
        "reason",
        "note",
        "message",
    ] {
        match &v[k] {
            serde_json::Value::Null => {}
            serde_json::Value::String(x) => s.push_str(&format!(" {k}={}", quoted(x))),
            other => s.push_str(&format!(" {k}={other}")),
        }
    }
    s
}

fn matches(v: &serde_json::Value, agent: &Option<String>, kind: &Option<String>) -> bool {
    agent.as_ref().is_none_or(|a| v["agent"] == a.as_str())
        && kind.as_ref().is_none_or(|k| v["kind"] == k.as_str())
}

fn render(line: &str, json: bool) -> String {
    match serde_json::from_str::<serde_json::Value>(line) {
        // Raw lines are already one-line, escaped JSON.
        Ok(_) if json => format!("{}\n", mandate::diag::terminal_json(line)),
        Ok(v) => format!("{}\n", human(&v)),
        Err(_) => format!("(unreadable line: {})\n", quoted(line)),
    }
}

fn tail(
    dir: &Path,
    n: usize,
    follow: bool,
    agent: Option<String>,
    kind: Option<String>,
    json: bool,
) -> Exit {
    let segs = match audit::segments(dir) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot read {}: {e}", dir.display());
            return Exit::NotFound;
        }
    };
    let mut picked: Vec<String> = Vec::new();
    for (_, p) in segs.iter().rev() {
        let text = std::fs::read_to_string(p).unwrap_or_default();
        let mut these: Vec<String> = text
            .lines()
            .filter(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .is_ok_and(|v| matches(&v, &agent, &kind))
            })
            .map(str::to_owned)
            .collect();
        these.append(&mut picked);
        picked = these;
        if picked.len() >= n {
            break;
        }
    }
    let skip = picked.len().saturating_sub(n);
    let out: String = picked[skip..].iter().map(|l| render(l, json)).collect();
    if print_bytes(out.as_bytes()) != Exit::Ok || !follow {
        return Exit::Ok;
    }
    // Follow: poll the newest segment for growth; move on when a new segment appears.
    let (mut seg, mut path) = match segs.last() {
        Some((n, p)) => (*n, p.clone()),
        None => (1, dir.join(audit::segment_name(1))),
    };
    let mut pos = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let mut partial = String::new();
    loop {
        std::thread::sleep(Duration::from_millis(250));
        if let Ok(bytes) = std::fs::read(&path)
            && (bytes.len() as u64) > pos
        {
            partial.push_str(&String::from_utf8_lossy(&bytes[pos as usize..]));
            pos = bytes.len() as u64;
            while let Some(i) = partial.find('\n') {
                let line: String = partial.drain(..=i).collect();
                let line = line.trim_end();
                if serde_json::from_str::<serde_json::Value>(line)
                    .is_ok_and(|v| matches(&v, &agent, &kind))
                    && print_bytes(render(line, json).as_bytes()) != Exit::Ok
                {
                    return Exit::Ok;
                }
            }
        }
        let next = dir.join(audit::segment_name(seg + 1));
        if next.exists() && partial.is_empty() {
            let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            if len == pos {
                seg += 1;
                path = next;
                pos = 0;
            }
        }
    }
}

fn show(dir: &Path, seq: u64) -> Exit {
    let segs = audit::segments(dir).unwrap_or_default();
    for (_, p) in segs.iter().rev() {
        let text = std::fs::read_to_string(p).unwrap_or_default();
        let first = text
            .lines()
            .next()
            .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok());
        if first
            .as_ref()
            .and_then(|v| v["seq"].as_u64())
            .is_some_and(|s| s > seq)
        {
            continue;
        }
        for l in text.lines() {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(l)
                && v["seq"].as_u64() == Some(seq)
            {
                let pretty = serde_json::to_string_pretty(&v).unwrap_or_default();
                return print_bytes(
                    format!("{}\n", mandate::diag::terminal_json(&pretty)).as_bytes(),
                );
            }
        }
    }
    eprintln!("error: no record with seq {seq} in {}", dir.display());
    Exit::NotFound
}
