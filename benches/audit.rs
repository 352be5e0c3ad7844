//! Audit log throughput with fsync on: durable records per second at 1, 16 and 64 concurrent
//! writers (group commit shares one fsync among everyone waiting). Run with
//! `cargo bench --bench audit`; the directory is a temporary one on the same disk as /tmp.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mandate::audit::{AuditLog, Kind, Options, Record};

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!("| concurrent writers | durable records/s | p99 append latency |");
    println!("|---|---|---|");
    for writers in [1usize, 16, 64] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let key = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
        let (log, _) = AuditLog::open(dir.path(), key, Options::default()).unwrap();
        let count = Arc::new(AtomicU64::new(0));
        let secs = 3.0;
        let lat = rt.block_on(async {
            let deadline = Instant::now() + Duration::from_secs_f64(secs);
            let tasks: Vec<_> = (0..writers)
                .map(|i| {
                    let (log, count) = (log.clone(), count.clone());
                    tokio::spawn(async move {
                        let mut lat = Vec::new();
                        while Instant::now() < deadline {
                            let mut r = Record::new(Kind::Issued);
                            r.agent = Some(format!("agent-{i}"));
                            r.access_key_id = Some("ASIAXXXXXXXXXXXXXXXX".into());
                            r.profile = Some("s3-data".into());
                            let t = Instant::now();
                            log.append_durable(r).await.unwrap();
                            lat.push(t.elapsed());
                            count.fetch_add(1, Ordering::Relaxed);
                        }
                        lat
                    })
                })
                .collect();
            let mut all = Vec::new();
            for t in tasks {
                all.extend(t.await.unwrap());
            }
            all
        });
        let mut lat = lat;
        lat.sort();
        let p99 = lat[((lat.len() - 1) as f64 * 0.99) as usize];
        println!(
            "| {writers} | {:.0} | {:.2} ms |",
            count.load(Ordering::Relaxed) as f64 / secs,
            p99.as_secs_f64() * 1e3
        );
    }
    startup_and_verify(&rt);
}

/// Writes `n` records (batched, one fsync per batch) with a checkpoint every 1,000, like the
/// daemon would, and returns the directory.
fn build_log(rt: &tokio::runtime::Runtime, n: u64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let key = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
    let opts = Options {
        checkpoint_every: 1000,
        ..Options::default()
    };
    let (log, _) = AuditLog::open(dir.path(), key, opts).unwrap();
    rt.block_on(async {
        for i in 0..n {
            let mut r = Record::new(Kind::Delivered);
            r.agent = Some("claude".into());
            r.profile = Some("s3-data".into());
            r.access_key_id = Some(format!("ASIA{i:016}"));
            r.request_id = Some(format!("{i:032x}"));
            log.append(r).await.unwrap(); // waits for room when the queue is full
        }
        log.checkpoint_now().await.unwrap();
    });
    drop(log);
    dir
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

fn startup_and_verify(rt: &tokio::runtime::Runtime) {
    println!(
        "\n| log size | on disk | daemon start-up (open + recover) | `audit verify` (whole log) | verify throughput |"
    );
    println!("|---|---|---|---|---|");
    for n in [1_000u64, 1_000_000] {
        let dir = build_log(rt, n);
        let bytes = dir_bytes(dir.path());
        let key = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
        let t = Instant::now();
        let (log, _) = AuditLog::open(dir.path(), key.clone(), Options::default()).unwrap();
        let open = t.elapsed();
        drop(log);
        let exe = env!("CARGO_BIN_EXE_mandate");
        std::fs::write(
            dir.path().join("signing.pub"),
            hex(key.verifying_key().as_bytes()),
        )
        .unwrap();
        let t = Instant::now();
        let out = std::process::Command::new(exe)
            .args(["audit", "verify", "--log"])
            .arg(dir.path())
            .arg("--key")
            .arg(dir.path().join("signing.pub"))
            .output()
            .unwrap();
        let verify = t.elapsed();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        println!(
            "| {n} records | {:.1} MB | {:.2} ms | {:.2} s | {:.0} MB/s |",
            bytes as f64 / 1e6,
            open.as_secs_f64() * 1e3,
            verify.as_secs_f64(),
            bytes as f64 / 1e6 / verify.as_secs_f64()
        );
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
