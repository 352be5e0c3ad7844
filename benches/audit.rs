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
}
