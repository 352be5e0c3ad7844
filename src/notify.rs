//! Notifications for humans: a pending approval or a tripped breaker runs the configured command
//! (event JSON on stdin) and/or POSTs the event to a webhook, each with a timeout.
//!
//! Events go through a bounded queue to one worker, so a slow or dead receiver never delays an
//! issuance; when the queue is full the event is dropped and logged.

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::config::Notify;

/// Events waiting to be delivered.
pub const QUEUE: usize = 64;
#[derive(Clone)]
pub struct Notifier {
    tx: Option<mpsc::Sender<serde_json::Value>>,
}

impl Notifier {
    /// A notifier that drops everything (no `[notify]` configured).
    pub fn none() -> Notifier {
        Notifier { tx: None }
    }

    /// Starts the worker on the current runtime.
    pub fn start(cfg: Notify) -> Notifier {
        if cfg.command.is_none() && cfg.webhook.is_none() {
            return Notifier::none();
        }
        let (tx, mut rx) = mpsc::channel::<serde_json::Value>(QUEUE);
        tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                let body = event.to_string();
                if let Some(argv) = &cfg.command
                    && let Err(e) = run_command(argv, &body, cfg.timeout).await
                {
                    tracing::warn!(command = %argv[0], error = %e, "notification command failed");
                }
                let body = match cfg.format {
                    crate::config::NotifyFormat::Json => body,
                    crate::config::NotifyFormat::Slack => slack_message(&event).to_string(),
                };
                if let Some(url) = &cfg.webhook
                    && let Err(e) = post(url, body, cfg.timeout).await
                {
                    tracing::warn!(error = %e, "notification webhook failed");
                }
            }
        });
        Notifier { tx: Some(tx) }
    }

    /// Queues an event; never waits.
    pub fn send(&self, event: serde_json::Value) {
        if let Some(tx) = &self.tx
            && let Err(e) = tx.try_send(event)
        {
            tracing::warn!(error = %e, "notification dropped (queue full or worker gone)");
        }
    }
}

/// A Slack-compatible incoming-webhook message for an event: what happened, in words, and
/// the console link. No button approves anything: approving happens in the console, with a
/// passkey. Text from the agent (the reason) is quoted and stripped of Slack's link and
/// mention syntax.
pub fn slack_message(event: &serde_json::Value) -> serde_json::Value {
    let s = |k: &str| event[k].as_str().unwrap_or("").to_owned();
    let tame = |t: String| -> String {
        t.chars()
            .map(|c| match c {
                '<' | '>' | '&' | '@' | '*' | '_' | '~' | '`' => ' ',
                c if c.is_control() => ' ',
                c => c,
            })
            .collect()
    };
    let link = |label: &str| match event["console_url"].as_str() {
        Some(u) => format!("<{u}|{label}>"),
        None => "(no console configured: use the mandate CLI)".into(),
    };
    let text = match event["event"].as_str() {
        Some("approval_pending") => format!(
            "Agent {} asks for profile {} ({} s). It needs {}. Reason given by the agent: \"{}\". Decide before {}. {}",
            tame(s("agent")),
            tame(s("profile")),
            event["duration_seconds"],
            tame(s("needs")),
            tame(s("reason")),
            s("expires"),
            link("Review request in the console")
        ),
        Some("breaker_tripped") => format!(
            "The circuit breaker of agent {} tripped: {}. {}",
            tame(s("agent")),
            tame(s("reason")),
            link("Open the console")
        ),
        _ => format!("mandate: {}", tame(s("event"))),
    };
    serde_json::json!({ "text": text })
}

async fn run_command(argv: &[String], body: &str, timeout: Duration) -> Result<(), String> {
    // A small, fixed environment: never the daemon's own (which may hold base credentials).
    let mut child = tokio::process::Command::from(crate::os::helper_command(&argv[0], &argv[1..]))
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start: {e}"))?;
    let mut stdin = child.stdin.take();
    let run = async {
        if let Some(s) = stdin.as_mut() {
            s.write_all(body.as_bytes()).await.ok();
        }
        drop(stdin);
        child.wait().await
    };
    match tokio::time::timeout(timeout, run).await {
        Err(_) => Err(format!("killed after {} s", timeout.as_secs())),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(s)) if s.success() => Ok(()),
        Ok(Ok(s)) => Err(format!("exited with {s}")),
    }
}

async fn post(url: &str, body: String, timeout: Duration) -> Result<(), String> {
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_native_roots()
        .map_err(|e| format!("no TLS root certificates: {e}"))?
        .https_or_http()
        .enable_http1()
        .build();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build::<_, Full<Bytes>>(https);
    let req = hyper::Request::post(url)
        .header("content-type", "application/json")
        .header("user-agent", concat!("mandate/", env!("CARGO_PKG_VERSION")))
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let send = async {
        let resp = client.request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        // Read (and discard) a bounded amount of the answer so the connection completes.
        let _ = http_body_util::Limited::new(resp.into_body(), 64 * 1024)
            .collect()
            .await;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("answered {status}"))
        }
    };
    tokio::time::timeout(timeout, send)
        .await
        .map_err(|_| format!("no answer within {} s", timeout.as_secs()))?
}
