use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::verify::{self, Report};
use super::*;

fn key() -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&[7; 32])
}

fn private_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    dir
}

fn opts(every: u64, rotate: u64) -> Options {
    Options {
        rotate_bytes: rotate,
        checkpoint_every: every,
        ..Options::default()
    }
}

/// Reads a log directory and verifies it the way `mandate audit verify` does (with the
/// writer's signing cadence when one is given).
fn verify_dir_with(
    dir: &Path,
    key: &ed25519_dalek::VerifyingKey,
    cadence: Option<verify::Cadence>,
) -> Report {
    let cp = std::fs::read(dir.join(checkpoint::CHECKPOINT_FILE)).unwrap_or_default();
    let (cps, bad) = checkpoint::read(&cp, key);
    let mut v = verify::Verifier::new(&cps, bad);
    if let Some(c) = cadence {
        v = v.with_cadence(c);
    }
    for (n, p) in segments(dir).unwrap() {
        v.segment(&segment_name(n), &std::fs::read(p).unwrap());
    }
    v.finish()
}

pub(crate) fn verify_dir(dir: &Path, key: &ed25519_dalek::VerifyingKey) -> Report {
    verify_dir_with(dir, key, None)
}

async fn write_n(log: &AuditLog, n: usize) {
    for i in 0..n {
        let mut r = Record::new(Kind::Issued);
        r.access_key_id = Some(format!("ASIA{i:016}"));
        log.append_durable(r).await.unwrap();
    }
}

#[tokio::test]
async fn records_are_chained_one_per_line_and_resume_after_reopen() {
    let dir = private_dir();
    let (log, rec) = AuditLog::open(dir.path(), key(), Options::default()).unwrap();
    assert!(rec.is_none());
    let mut r = Record::new(Kind::Request);
    r.reason = Some("line\nbreak \u{1b}[31m del\u{7f} csi\u{9b}2J".into());
    assert_eq!(log.append_durable(r).await.unwrap(), 1);
    assert_eq!(
        log.append_durable(Record::new(Kind::Issued)).await.unwrap(),
        2
    );
    drop(log);
    std::thread::sleep(Duration::from_millis(50));
    let (log, _) = AuditLog::open(dir.path(), key(), Options::default()).unwrap();
    // The reopened writer first signs the tail it recovered; that checkpoint is recorded in
    // the chain (seq 3) with the next write.
    assert_eq!(
        log.append_durable(Record::new(Kind::Delivered))
            .await
            .unwrap(),
        4
    );
    let text = std::fs::read_to_string(dir.path().join(segment_name(1))).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[0]["prev"], verify::GENESIS);
    assert_eq!(lines[1]["prev"], lines[0]["hash"]);
    assert_eq!(lines[2]["prev"], lines[1]["hash"]);
    assert_eq!(lines[2]["kind"], "checkpoint");
    assert_eq!(lines[2]["covers_seq"], 2);
    assert_eq!(lines[2]["covers_hash"], lines[1]["hash"]);
    assert_eq!(lines[3]["prev"], lines[2]["hash"]);
    assert_eq!(lines[0]["v"], 1);
    assert_eq!(
        lines[0]["reason"],
        "line\nbreak \u{1b}[31m del\u{7f} csi\u{9b}2J"
    );
    assert!(
        !text.trim_end().chars().any(|c| c.is_control() && c != '\n'),
        "every control character is escaped: {text}"
    );
    assert_eq!(text.lines().count(), 4, "one record, one line");
    let mode = std::fs::metadata(dir.path().join(segment_name(1)))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let report = verify_dir(dir.path(), &key().verifying_key());
    assert!(report.intact(), "{report:?}");
    assert_eq!(report.last_seq, 4);
}

#[test]
fn refuses_missing_shared_or_symlinked_directories() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let e = AuditLog::open(&missing, key(), Options::default())
        .err()
        .unwrap();
    assert!(
        e.to_string().contains("create it with `mandate init`"),
        "{e}"
    );
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o770)).unwrap();
    let e = AuditLog::open(dir.path(), key(), Options::default())
        .err()
        .unwrap();
    assert!(e.to_string().contains("mode 770 lets others in"), "{e}");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(dir.path(), &link).unwrap();
    let e = AuditLog::open(&link, key(), Options::default())
        .err()
        .unwrap();
    assert!(e.to_string().contains("symlinks are refused"), "{e}");
}

#[tokio::test]
async fn checkpoints_and_rotation_keep_one_verifiable_chain() {
    let dir = private_dir();
    let (log, _) = AuditLog::open(dir.path(), key(), opts(10, 4096)).unwrap();
    write_n(&log, 95).await;
    log.checkpoint_now().await.unwrap();
    drop(log);
    let segs = segments(dir.path()).unwrap();
    assert!(segs.len() > 3, "rotated into {} segments", segs.len());
    let report = verify_dir(dir.path(), &key().verifying_key());
    assert!(report.intact(), "{report:?}");
    // 95 records and the in-chain records of the 9 checkpoints signed every 10 of them (the
    // last checkpoint, at shutdown, is recorded with the next write).
    assert_eq!(report.last_seq, 104);
    assert_eq!(report.checkpoints, 10);
    assert_eq!(report.uncovered, 0);
    // A reopened log continues the chain in the last segment.
    let (log, _) = AuditLog::open(dir.path(), key(), opts(10, 4096)).unwrap();
    assert_eq!(
        log.append_durable(Record::new(Kind::Started))
            .await
            .unwrap(),
        105
    );
    let report = verify_dir(dir.path(), &key().verifying_key());
    assert!(report.intact(), "{report:?}");
    assert_eq!(report.uncovered, 1);
}

#[tokio::test]
async fn a_torn_final_line_is_trimmed_and_recorded() {
    let dir = private_dir();
    let (log, _) = AuditLog::open(dir.path(), key(), Options::default()).unwrap();
    write_n(&log, 5).await;
    log.checkpoint_now().await.unwrap(); // nothing left for the writer to sign on its way out
    drop(log);
    let seg = dir.path().join(segment_name(1));
    let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
    f.write_all(br#"{"kind":"issued","seq":6,"prev":"ab"#)
        .unwrap();
    drop(f);
    assert!(!verify_dir(dir.path(), &key().verifying_key()).intact());
    let (log, rec) = AuditLog::open(dir.path(), key(), Options::default()).unwrap();
    let rec = rec.unwrap();
    assert_eq!((rec.last_seq, rec.trimmed_bytes), (5, 35));
    log.append_durable(Record::new(Kind::Recovered))
        .await
        .unwrap();
    assert!(verify_dir(dir.path(), &key().verifying_key()).intact());
}

#[tokio::test]
async fn damage_before_the_tail_is_fatal_and_names_the_seq() {
    let dir = private_dir();
    let (log, _) = AuditLog::open(dir.path(), key(), Options::default()).unwrap();
    write_n(&log, 5).await;
    drop(log); // no checkpoint yet: start-up checks the whole (short) log
    let seg = dir.path().join(segment_name(1));
    let text = std::fs::read_to_string(&seg).unwrap();
    std::fs::write(
        &seg,
        text.replacen("ASIA0000000000000002", "ASIA0000000000000009", 1),
    )
    .unwrap();
    let e = AuditLog::open(dir.path(), key(), Options::default())
        .err()
        .unwrap();
    assert_eq!(
        e.to_string(),
        "the audit log is damaged at seq 3 (audit-000001.jsonl): the record does not match its hash (it was edited); run `mandate audit verify` and restore it before starting"
    );
}

#[tokio::test]
async fn runtime_write_failures_stop_everything_and_are_not_retried() {
    let dir = private_dir();
    let (log, _) = AuditLog::open(dir.path(), key(), Options::default()).unwrap();
    write_n(&log, 1).await;
    log.failed_for_test();
    let e = log
        .append_durable(Record::new(Kind::Issued))
        .await
        .unwrap_err();
    assert!(e.to_string().starts_with("audit unavailable"), "{e}");
    assert!(log.append(Record::new(Kind::Delivered)).await.is_err());
}

/// The tamper corpus: every kind of edit is detected, naming the first bad seq.
#[tokio::test]
async fn tamper_corpus_is_detected_naming_the_seq() {
    let dir = private_dir();
    let (log, _) = AuditLog::open(dir.path(), key(), opts(5, u64::MAX)).unwrap();
    write_n(&log, 12).await;
    drop(log);
    std::thread::sleep(Duration::from_millis(100));
    let seg = dir.path().join(segment_name(1));
    let original = std::fs::read_to_string(&seg).unwrap();
    let lines: Vec<&str> = original.lines().collect();
    let join = |v: Vec<&str>| v.join("\n") + "\n";
    let mut other_key_log = String::new();
    {
        // Re-hash the whole log consistently (as someone without the signing key would).
        let mut prev = verify::GENESIS.to_owned();
        for (i, l) in lines.iter().enumerate() {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            if i == 3 {
                v["access_key_id"] = "ASIAFORGED".into();
            }
            v["prev"] = prev.clone().into();
            let h = verify::record_hash(&v);
            v["hash"] = h.clone().into();
            other_key_log.push_str(&verify::canonical(&v));
            other_key_log.push('\n');
            prev = h;
        }
    }
    let cases: Vec<(&str, String, u64)> = vec![
        // (seq 6 and 12 are the in-chain records of the checkpoints at seq 5 and 11, so the
        // record of ASIA…06 is seq 8.)
        (
            "edit a field",
            original.replacen("ASIA0000000000000006", "ASIA0000000000000007", 1),
            8,
        ),
        (
            "delete a line",
            join([&lines[..4], &lines[5..]].concat()),
            5,
        ),
        (
            "swap two lines",
            {
                let mut v = lines.clone();
                v.swap(7, 8);
                join(v)
            },
            8,
        ),
        (
            "duplicate a line",
            {
                let mut v = lines.clone();
                v.insert(9, lines[9]);
                join(v)
            },
            11,
        ),
        (
            "truncate in the middle",
            original[..original.len() / 2].to_owned(),
            original[..original.len() / 2].matches('\n').count() as u64 + 1,
        ),
        (
            "remove the tail under a checkpoint",
            join(lines[..8].to_vec()),
            9,
        ),
        ("re-hash the whole log after a checkpoint", other_key_log, 5),
    ];
    let vk = key().verifying_key();
    for (what, text, seq) in cases {
        std::fs::write(&seg, &text).unwrap();
        let r = verify_dir(dir.path(), &vk);
        assert_eq!(r.first_bad_seq, Some(seq), "{what}: {r:?}");
        assert!(r.problem.is_some(), "{what}");
    }
    // Checkpoints signed with another key are refused outright.
    std::fs::write(&seg, &original).unwrap();
    assert!(verify_dir(dir.path(), &vk).intact());
    let other = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let r = verify_dir(dir.path(), &other.verifying_key());
    assert!(r.problem.unwrap().contains("signature does not verify"));
}

fn cadence(every: u64) -> verify::Cadence {
    verify::Cadence {
        every,
        interval: Duration::from_secs(60),
    }
}

fn verify_dir_cadence(dir: &Path, every: u64) -> Report {
    verify_dir_with(dir, &key().verifying_key(), Some(cadence(every)))
}

/// Review point 2: a log stripped of its checkpoints, with records removed and the chain
/// recomputed (all without the key), no longer verifies, and the daemon refuses to open it;
/// deleting the checkpoint file alone is visible through the checkpoints recorded in the chain.
#[tokio::test]
async fn a_log_stripped_of_its_checkpoints_is_refused() {
    let dir = private_dir();
    let (log, _) = AuditLog::open(dir.path(), key(), opts(5, u64::MAX)).unwrap();
    write_n(&log, 30).await;
    log.checkpoint_now().await.unwrap();
    drop(log);
    std::thread::sleep(Duration::from_millis(100));
    assert!(verify_dir_cadence(dir.path(), 5).intact());
    let seg = dir.path().join(segment_name(1));
    let cp_file = dir.path().join(checkpoint::CHECKPOINT_FILE);
    let original = std::fs::read_to_string(&seg).unwrap();

    // 1. Only the checkpoint file emptied.
    std::fs::write(&cp_file, "").unwrap();
    let r = verify_dir_cadence(dir.path(), 5);
    assert_eq!(r.first_bad_seq, Some(6), "{r:?}");
    assert!(
        r.problem
            .as_deref()
            .unwrap()
            .contains("records a signed checkpoint of seq 5 that the checkpoint file lacks"),
        "{r:?}"
    );
    let e = AuditLog::open(dir.path(), key(), opts(5, u64::MAX))
        .err()
        .expect("refused");
    assert!(e.to_string().contains("the checkpoint file lacks"), "{e}");

    // 2. Records removed, checkpoint records dropped, the chain recomputed, no checkpoints.
    let mut forged = String::new();
    let mut prev = verify::GENESIS.to_owned();
    let mut seq = 0;
    for l in original.lines() {
        let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
        let key_id = v["access_key_id"].as_str().unwrap_or_default().to_owned();
        if v["kind"] == "checkpoint" || key_id.ends_with("0012") || key_id.ends_with("0013") {
            continue;
        }
        seq += 1;
        v["seq"] = seq.into();
        v["prev"] = prev.clone().into();
        let h = verify::record_hash(&v);
        v["hash"] = h.clone().into();
        forged.push_str(&verify::canonical(&v));
        forged.push('\n');
        prev = h;
    }
    std::fs::write(&seg, &forged).unwrap();
    // Without the cadence rule this is what used to pass as intact.
    let plain = verify_dir(dir.path(), &key().verifying_key());
    assert!(plain.intact(), "{plain:?}");
    let r = verify_dir_cadence(dir.path(), 5);
    assert_eq!(r.first_bad_seq, Some(1), "{r:?}");
    assert_eq!(
        r.problem.as_deref().unwrap(),
        "28 records follow no signed checkpoint, but the daemon signs one at least every 5 records: checkpoints were removed or the log was rewritten"
    );
    let e = AuditLog::open(dir.path(), key(), opts(5, u64::MAX))
        .err()
        .expect("refused");
    assert!(
        e.to_string()
            .contains("28 records follow no signed checkpoint"),
        "{e}"
    );
    // The writer never leaves more than checkpoint_every records unsigned, so the genuine log
    // passes the same rule (checked above) and a short genuine tail does too.
    assert!(verify_dir_cadence(dir.path(), 28).intact());
}

#[test]
fn an_unsigned_tail_may_not_span_more_than_the_interval() {
    let c = verify::Cadence {
        every: 1000,
        interval: Duration::from_secs(60),
    };
    let rec = |t: &str| serde_json::json!({"kind": "issued", "time": t});
    let mut tail = verify::Tail::default();
    tail.add(&rec("2026-12-01T10:00:00.000Z"));
    tail.add(&serde_json::json!({"kind": "checkpoint", "time": "2026-12-01T11:00:00.000Z"}));
    tail.add(&rec("2026-12-01T10:01:09.000Z"));
    assert_eq!(tail.problem(&c, 7), None, "60 s and the 10 s allowance");
    tail.add(&rec("2026-12-01T10:01:11.000Z"));
    assert_eq!(
        tail.problem(&c, 7).unwrap(),
        "the records after the last signed checkpoint (seq 7) span 71 s, but the daemon signs one at least every 60 s: checkpoints were removed or the log was rewritten"
    );
}

/// The writer signs at least every interval even while busy (before, only after an idle
/// interval), and never writes more than checkpoint_every records past a checkpoint.
#[tokio::test]
async fn checkpoints_are_signed_on_time_under_steady_traffic() {
    let dir = private_dir();
    let o = Options {
        checkpoint_every: 1_000_000,
        checkpoint_interval: Duration::from_secs(1),
        ..Options::default()
    };
    let (log, _) = AuditLog::open(dir.path(), key(), o).unwrap();
    let start = std::time::Instant::now();
    // A record every 100 ms for 3.5 s: never idle for a whole interval.
    while start.elapsed() < Duration::from_millis(3500) {
        log.append_durable(Record::new(Kind::Delivered))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(log);
    let cps = std::fs::read_to_string(dir.path().join(checkpoint::CHECKPOINT_FILE)).unwrap();
    assert!(
        cps.lines().count() >= 3,
        "{} checkpoints in 3.5 s",
        cps.lines().count()
    );
}
