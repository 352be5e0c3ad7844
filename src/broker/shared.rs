//! Team mode: the in-memory view of a store that other daemons share (design §8).
//!
//! The hot path never waits on the database for approval-free profiles: it reads the stop
//! buttons (pause, revocations, breakers) and the other daemons' counters from memory. This
//! module keeps that memory current: a notification from another daemon (LISTEN/NOTIFY) or a
//! periodic tick re-reads them ([`Broker::resync`]). Fail closed: when the view has not been
//! confirmed against the store within the bound, nothing is issued ([`Broker::fresh`]) until a
//! resync succeeds again, without a restart.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Broker;
use crate::aws::Issuer;
use crate::clock;
use crate::store::{DaemonInfo, Notice, RemoteCounts, StoreError};

/// How often a daemon re-reads the shared state and says it is alive, and how old that state
/// may get before it stops issuing (the config's `[store]` overrides both).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Freshness {
    pub resync: Duration,
    pub stale_after: Duration,
}

impl Default for Freshness {
    fn default() -> Self {
        Freshness {
            resync: Duration::from_secs(5),
            stale_after: Duration::from_secs(30),
        }
    }
}

/// What this daemon knows of the shared store.
#[derive(Debug)]
pub(super) struct View {
    /// `None`: no other daemon shares the store; the view is always current.
    freshness: Option<Freshness>,
    /// When the last successful resync started (what it read is at least this fresh).
    confirmed: Instant,
    confirmed_at: i64,
    /// Whether notifications are arriving (else only the periodic resync keeps the view).
    listening: bool,
    /// The last failure, until a resync succeeds.
    problem: Option<String>,
    /// Whether the last check found the view stale (to log the change once).
    stale: bool,
    remote: HashMap<String, RemoteCounts>,
    daemons: Vec<DaemonInfo>,
    /// The last audit checkpoint (seq) anchored in the store.
    anchored: u64,
}

impl View {
    pub(super) fn new(shared: bool, now: i64) -> View {
        View {
            freshness: shared.then(Freshness::default),
            confirmed: Instant::now(),
            confirmed_at: now,
            listening: false,
            problem: None,
            stale: false,
            remote: HashMap::new(),
            daemons: Vec::new(),
            anchored: 0,
        }
    }
}

/// This daemon's name among those sharing the store: its signing key's fingerprint.
pub(super) fn daemon_id(key: &ed25519_dalek::SigningKey) -> String {
    crate::approval::proof::fingerprint(&key.verifying_key())
}

pub(super) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().chars().take(253).collect())
        .unwrap_or_else(|_| "unknown".into())
}

impl<I: Issuer> Broker<I> {
    fn view(&self) -> std::sync::MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether other daemons may share this broker's store (team mode).
    pub fn shares_store(&self) -> bool {
        self.parts.store.describe().shared
    }

    /// The store's notices of other daemons' changes (`None` for a store nobody else
    /// writes). Call from within the runtime.
    pub fn subscribe_store(&self) -> Option<tokio::sync::mpsc::Receiver<Notice>> {
        self.parts.store.subscribe()
    }

    /// Fail closed on staleness: an error when other daemons share the store and this one has
    /// not confirmed its view of the stop buttons within the bound.
    pub(super) fn fresh(&self) -> Result<(), String> {
        // The bound of the current config (a reload may change it).
        let bound = self.state().config.store.as_ref().map(|s| s.stale_after);
        let mut v = self.view();
        let Some(mut f) = v.freshness else {
            return Ok(());
        };
        if let Some(b) = bound {
            f.stale_after = b;
        }
        let age = v.confirmed.elapsed();
        if age <= f.stale_after {
            return Ok(());
        }
        let why = v
            .problem
            .clone()
            .unwrap_or_else(|| "no resync has completed since".into());
        let message = format!(
            "the broker cannot confirm its view of the shared store (pause, revocations, breakers): last confirmed {} s ago, the bound is {} s ({why}); nothing is issued until the store answers again",
            age.as_secs(),
            f.stale_after.as_secs()
        );
        if !v.stale {
            v.stale = true;
            tracing::error!(age_seconds = age.as_secs(), problem = %why, "the shared store is stale: issuing stops");
        }
        Err(message)
    }

    /// What the other daemons issued to and hold for `agent` (team mode; zero otherwise).
    pub(super) fn remote_counts(&self, agent: &str) -> RemoteCounts {
        self.view().remote.get(agent).copied().unwrap_or_default()
    }

    /// Re-reads the stop buttons and the other daemons' counters from the store and swaps
    /// them in; cached sessions of scopes newly revoked elsewhere are dropped.
    pub async fn resync(&self) -> Result<(), StoreError> {
        let started = Instant::now();
        let now = self.now();
        let window = self.state().config.limits.window.as_secs() as i64;
        // Serialized with this daemon's own changes, so a read from before one of them never
        // replaces it.
        let _admin = self.admin.lock().await;
        let read = self
            .db(move |s| {
                Ok((
                    s.pause()?,
                    s.revocations()?,
                    s.trips()?,
                    s.remote_counts(now - window, now)?,
                    s.daemons(now - 120)?,
                ))
            })
            .await;
        let (paused, revocations, trips, remote, daemons) = match read {
            Ok(r) => r,
            Err(e) => {
                let mut v = self.view();
                if v.problem.is_none() {
                    tracing::warn!(error = %e, "cannot read the shared store");
                }
                v.problem = Some(e.to_string());
                return Err(e);
            }
        };
        let known: HashSet<String> = self
            .controls()
            .revocations
            .iter()
            .filter(|r| r.active)
            .map(|r| r.id.clone())
            .collect();
        let fresh: Vec<_> = revocations
            .iter()
            .filter(|r| r.active && !known.contains(&r.id))
            .map(|r| r.scope.clone())
            .collect();
        self.update_controls(|c| {
            c.paused = paused;
            c.revocations = revocations;
            c.trips = trips.into_iter().map(|t| (t.agent.clone(), t)).collect();
        });
        let state = self.state();
        for scope in &fresh {
            let purged = self.purge(&state, scope);
            tracing::warn!(scope = %scope, purged, "revoked by another daemon");
        }
        let mut v = self.view();
        v.confirmed = started;
        v.confirmed_at = now;
        v.remote = remote;
        v.daemons = daemons;
        if v.stale {
            tracing::info!("the shared store answers again: issuing resumes");
        }
        v.stale = false;
        v.problem = None;
        Ok(())
    }

    /// Keeps the view of a shared store current until `stop`: every notice from another
    /// daemon, and every `freshness.resync`, re-reads it; every tick also says this daemon is
    /// alive and anchors its new audit checkpoints in the store.
    pub async fn follow(
        self: Arc<Self>,
        mut notices: Option<tokio::sync::mpsc::Receiver<Notice>>,
        freshness: Freshness,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        self.view().freshness = Some(freshness);
        let me = DaemonInfo {
            id: daemon_id(&self.parts.vote_key),
            host: hostname(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started_at: self.now(),
            seen_at: self.now(),
        };
        let mut tick = tokio::time::interval(freshness.resync);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let notice = tokio::select! {
                _ = stop.changed() => return,
                n = async {
                    match notices.as_mut() {
                        Some(rx) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                } => n,
                _ = tick.tick() => {
                    let beat = DaemonInfo { seen_at: self.now(), ..me.clone() };
                    let _ = self.resync().await;
                    if let Err(e) = self.db(move |s| s.heartbeat(&beat)).await {
                        tracing::debug!(error = %e, "heartbeat");
                    }
                    self.anchor_checkpoints().await;
                    continue;
                }
            };
            match notice {
                None => {
                    notices = None;
                    self.view().listening = false;
                }
                Some(Notice::Lost(why)) => {
                    let mut v = self.view();
                    v.listening = false;
                    tracing::warn!(problem = %why, "lost the store's notifications; resyncing every {} s", freshness.resync.as_secs());
                }
                Some(n) => {
                    if n == Notice::Connected {
                        self.view().listening = true;
                    }
                    // Several notices in a row need one resync.
                    if let Some(rx) = notices.as_mut() {
                        while let Ok(m) = rx.try_recv() {
                            if let Notice::Lost(_) = m {
                                self.view().listening = false;
                            }
                            if m == Notice::Connected {
                                self.view().listening = true;
                            }
                        }
                    }
                    let _ = self.resync().await;
                }
            }
        }
    }

    /// Writes the audit checkpoints signed since the last call into a shared store: an anchor
    /// off the host (`mandate audit verify --store`). Also called on the way out, after the
    /// last checkpoint.
    pub async fn anchor_checkpoints(&self) {
        if !self.shares_store() {
            return;
        }
        let path = self
            .audit
            .dir()
            .join(crate::audit::checkpoint::CHECKPOINT_FILE);
        let me = daemon_id(&self.parts.vote_key);
        let after = self.view().anchored;
        let r = self
            .db(move |s| {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                let mut last = after;
                // Only complete lines; a torn last line is the writer's, mid-write.
                let complete = text.rfind('\n').map_or("", |i| &text[..i]);
                for line in complete.lines() {
                    let seq = serde_json::from_str::<serde_json::Value>(line)
                        .ok()
                        .and_then(|v| v["seq"].as_u64());
                    if let Some(seq) = seq.filter(|s| *s > after) {
                        s.put_checkpoint(&me, seq, line)?;
                        last = last.max(seq);
                    }
                }
                Ok(last)
            })
            .await;
        match r {
            Ok(last) => self.view().anchored = last,
            Err(e) => tracing::debug!(error = %e, "could not anchor the audit checkpoints"),
        }
    }

    /// The store as `status` shows it: what it is, how fresh this daemon's view of it is, and
    /// (to approvers) where it is and the daemons seen recently.
    pub(super) fn store_view(&self, approver: bool) -> serde_json::Value {
        let info = self.parts.store.describe();
        let v = self.view();
        let mut out = serde_json::json!({
            "kind": info.kind,
            "shared": info.shared,
        });
        if approver {
            out["location"] = info.location.into();
        }
        if let Some(f) = v.freshness {
            let age = v.confirmed.elapsed();
            out["fresh"] = (age <= f.stale_after).into();
            out["confirmed_at"] = clock::rfc3339(v.confirmed_at).into();
            out["age_seconds"] = age.as_secs().into();
            out["stale_after_seconds"] = f.stale_after.as_secs().into();
            out["listening"] = v.listening.into();
            out["problem"] = v.problem.clone().into();
        }
        if let (Some(_), true) = (v.freshness, approver) {
            out["daemon"] = daemon_id(&self.parts.vote_key).into();
            out["daemons"] = v
                .daemons
                .iter()
                .map(|d| {
                    serde_json::json!({
                        "id": d.id,
                        "host": d.host,
                        "version": d.version,
                        "started_at": clock::rfc3339(d.started_at),
                        "seen_at": clock::rfc3339(d.seen_at),
                    })
                })
                .collect::<Vec<_>>()
                .into();
        }
        out
    }
}
