//! The cache of issued sessions: one slot per grant key, filled by the one caller that mints
//! for it (single flight), served while far enough from expiry, purged by revocations.

use std::sync::Arc;

use super::decision::Grant;
use super::records::base_record;
use super::{Broker, BrokerError, Caller, Issued, State, volume};
use crate::audit::Kind;
use crate::aws::{Credentials, Issuer};
use crate::clock;
use crate::config::CachePolicy;
use crate::revoke::Scope;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct CacheKey {
    agent: String,
    /// The name as well as the hash: two profiles with identical content are still two
    /// profiles, and a session is tagged (`mandate-profile`) and audited with exactly one.
    profile: String,
    profile_sha256: String,
    role: String,
}

#[derive(Clone, Debug)]
pub(super) struct Entry {
    pub(super) credentials: Arc<Credentials>,
    pub(super) duration_seconds: u32,
    pub(super) request_id: String,
}

pub(super) type Slot = Arc<tokio::sync::Mutex<Option<Entry>>>;

fn cache_key(grant: &Grant) -> CacheKey {
    CacheKey {
        agent: grant.agent().to_owned(),
        profile: grant.profile_name().to_owned(),
        profile_sha256: grant.profile().profile_sha256.clone(),
        role: grant.role().name.as_str().to_owned(),
    }
}

/// Whether a cached credential may still be served at `now` (Unix seconds).
pub fn servable(policy: &CachePolicy, expiration: i64, duration_seconds: u32, now: i64) -> bool {
    let remaining = expiration - now;
    let ahead = policy
        .refresh_ahead
        .as_secs()
        .min(u64::from(duration_seconds) / 2) as i64;
    remaining > ahead.max(policy.min_remaining.as_secs() as i64)
}

/// The cache slot of one grant's key, held by the one caller that may mint for it; empty for a
/// grant that bypasses the cache (a custom duration).
pub(super) struct Flight(Option<tokio::sync::OwnedMutexGuard<Option<Entry>>>);

impl Flight {
    /// What the slot holds (another caller may have just filled it).
    pub(super) fn entry(&self) -> Option<&Entry> {
        self.0.as_deref().and_then(Option::as_ref)
    }

    /// Fills the slot with a freshly minted session (nothing for a grant that bypasses it).
    pub(super) fn fill(&mut self, entry: Entry) {
        if let Some(g) = self.0.as_deref_mut() {
            *g = Some(entry);
        }
    }
}

impl<I: Issuer> Broker<I> {
    /// Single flight: one caller per key mints; the others wait here and then read the cache.
    pub(super) async fn single_flight(&self, grant: &Grant) -> Flight {
        if grant.custom_duration() {
            return Flight(None);
        }
        let slot: Slot = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(cache_key(grant))
            .or_default()
            .clone();
        Flight(Some(slot.lock_owned().await))
    }

    /// A servable cached session for this grant's key, delivered (and audited) without minting.
    pub(super) async fn cached(
        &self,
        state: &State,
        caller: &Caller,
        grant: &Grant,
        reason: &Option<String>,
    ) -> Result<Option<Issued>, BrokerError> {
        if grant.custom_duration() {
            return Ok(None);
        }
        let slot = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&cache_key(grant))
            .cloned();
        let Some(slot) = slot else { return Ok(None) };
        let entry = slot.lock().await.clone();
        match entry {
            Some(e) if self.servable_entry(&state.config.cache, &e) => {
                self.deliver(caller, grant, reason, &e).await.map(Some)
            }
            _ => Ok(None),
        }
    }

    pub(super) fn servable_entry(&self, policy: &CachePolicy, e: &Entry) -> bool {
        servable(
            policy,
            e.credentials.expiration,
            e.duration_seconds,
            clock::unix_now(),
        )
    }

    /// Hands out a cached session: unless a stop button or the delivery budget refuses it,
    /// with its delivery audited (coalesced per window).
    pub(super) async fn deliver(
        &self,
        caller: &Caller,
        grant: &Grant,
        reason: &Option<String>,
        entry: &Entry,
    ) -> Result<Issued, BrokerError> {
        // A revoke or pause may have landed since this request was authorized.
        let profile = grant.profile_name();
        if let Some(d) = self
            .controls()
            .stopped(grant.agent(), profile, Some(&entry.request_id))
        {
            return Err(self.refuse(caller, profile, reason.clone(), d).await);
        }
        let state = self.state();
        if let Err(d) = self.count_delivery(grant.agent(), &state.config.limits) {
            return Err(self.refuse(caller, profile, reason.clone(), d).await);
        }
        let mut r = base_record(Kind::Delivered, caller, grant, reason);
        r.request_id = Some(entry.request_id.clone());
        r.access_key_id = Some(entry.credentials.access_key_id.clone());
        r.expiration = Some(clock::rfc3339(entry.credentials.expiration));
        let window = state.config.audit.delivery_window;
        match self
            .volume
            .delivery(&entry.request_id, caller.uid(), self.now(), window, r)
        {
            volume::DeliveryWrite::Counted => {}
            volume::DeliveryWrite::Each(r) => self.audit.append(*r).await?,
            volume::DeliveryWrite::Opened { closed, first } => {
                if let Some(c) = closed {
                    self.audit.append(*c).await?;
                }
                // Each window's first delivery is on disk before the credential leaves; if it
                // cannot be written, nothing leaves and the next delivery tries again.
                if let Err(e) = self.audit.append_durable(*first).await {
                    self.volume.forget(&entry.request_id, caller.uid());
                    return Err(e.into());
                }
            }
        }
        tracing::debug!(
            agent = %grant.agent(),
            profile = %grant.profile().profile.name,
            request_id = %entry.request_id,
            access_key_id = %entry.credentials.access_key_id,
            "delivered a cached session"
        );
        Ok(Issued {
            credentials: entry.credentials.clone(),
            request_id: entry.request_id.clone(),
            agent: grant.agent().to_owned(),
            profile: grant.profile_name().to_owned(),
            cached: true,
            approval_id: None,
        })
    }

    /// Drops cached sessions in the scope; returns how many.
    pub(super) fn purge(&self, state: &State, scope: &Scope) -> usize {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let before = cache.len();
        match scope {
            Scope::All => cache.clear(),
            Scope::Agent(a) => cache.retain(|k, _| k.agent != *a),
            Scope::Profile(p) => {
                let hash = state.profiles.get(p).map(|c| c.profile_sha256.clone());
                cache.retain(|k, _| Some(&k.profile_sha256) != hash.as_ref());
            }
            Scope::Session(id) => cache.retain(|_, slot| match slot.try_lock() {
                Ok(g) => g.as_ref().is_none_or(|e| e.request_id != *id),
                Err(_) => true,
            }),
        }
        before - cache.len()
    }

    /// Drops the cache entries of profiles whose hash is not in `state` (a reload changed them).
    pub(super) fn forget_changed_profiles(&self, state: &State) {
        let live: std::collections::HashSet<String> = state
            .profiles
            .values()
            .map(|p| p.profile_sha256.clone())
            .collect();
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|k, _| live.contains(&k.profile_sha256));
    }
}
