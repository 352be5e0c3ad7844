//! Ships signed checkpoint lines to the configured `checkpoint_command`.

use std::io::Write;
use std::sync::mpsc::sync_channel;
use std::time::Duration;

/// Ships checkpoint lines to `checkpoint_command`, one at a time and in order, on its own
/// thread (so a slow command never delays issuance); each run is bounded by 10 s.
pub(super) struct Shipper {
    tx: std::sync::mpsc::SyncSender<ShipJob>,
}

enum ShipJob {
    Line(String),
    /// Answered once every line queued before it was shipped (shutdown waits for this).
    Flush(std::sync::mpsc::Sender<()>),
}

impl Shipper {
    pub(super) fn start(cmd: Vec<String>) -> Option<Shipper> {
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

    pub(super) fn send(&self, line: String) {
        if self.tx.try_send(ShipJob::Line(line)).is_err() {
            tracing::warn!(
                "the checkpoint command is falling behind; a checkpoint was not shipped"
            );
        }
    }

    /// Waits (at most `limit`) until everything queued so far was shipped.
    pub(super) fn flush(&self, limit: Duration) {
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
