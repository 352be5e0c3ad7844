//! What a broker is built from, and building one: the store, the AWS revoker, the notifier and
//! the clock; revocations, trips, the pause and the live sessions come back from the store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use super::{Broker, Controls, State, sessions, shared, volume};
use crate::audit::AuditLog;
use crate::aws::{Issuer, Revoker};
use crate::clock;
use crate::notify::Notifier;
use crate::store::{Store, StoreError};

/// Seconds since the epoch; a function so tests can move time.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// What the broker needs besides STS: where approvals and stop buttons persist, how to deny at
/// AWS, whom to tell, and what time it is.
pub struct Parts {
    pub store: Arc<dyn Store>,
    pub revoker: Arc<dyn Revoker>,
    pub notifier: Notifier,
    pub clock: Clock,
    /// Signs the votes this daemon's approvers cast (the audit signing key): the daemon that
    /// redeems an approval counts only signed votes (`approval::proof`).
    pub vote_key: Arc<ed25519_dalek::SigningKey>,
}

impl Parts {
    /// An in-memory store, no AWS revocation, no notifications, the system clock.
    pub fn ephemeral() -> Parts {
        Parts {
            store: Arc::new(crate::store::SqliteStore::in_memory()),
            revoker: Arc::new(crate::aws::NoRevoker),
            notifier: Notifier::none(),
            clock: Arc::new(clock::unix_now),
            vote_key: Arc::new(random_key()),
        }
    }
}

/// A fresh signing key (an ephemeral broker's vote key).
fn random_key() -> ed25519_dalek::SigningKey {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).expect("the OS random source is available");
    let key = ed25519_dalek::SigningKey::from_bytes(&seed);
    seed.fill(0);
    key
}

/// 128 random bits, hex.
pub fn random_id() -> String {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).expect("the OS random source is available");
    crate::policy::hex(&b)
}

impl<I: Issuer> Broker<I> {
    /// A broker with an ephemeral approval store (tests and benchmarks).
    pub fn new(state: State, issuer: I, audit: AuditLog) -> Self {
        Self::with_parts(state, issuer, audit, Parts::ephemeral())
            .expect("an in-memory store is readable")
    }

    /// A broker over `parts`; revocations, trips and the pause come back from the store.
    pub fn with_parts(
        state: State,
        issuer: I,
        audit: AuditLog,
        parts: Parts,
    ) -> Result<Self, StoreError> {
        // Requests are kept 30 days (pending ones expire within 7); the audit log keeps them.
        parts.store.prune((parts.clock)() - 30 * 86_400)?;
        let controls = Controls {
            paused: parts.store.pause()?,
            revocations: parts.store.revocations()?,
            trips: parts
                .store
                .trips()?
                .into_iter()
                .map(|t| (t.agent.clone(), t))
                .collect(),
        };
        let me = shared::daemon_id(&parts.vote_key);
        let sessions = sessions::load(&*parts.store, (parts.clock)(), &me)?;
        let view = shared::View::new(parts.store.describe().shared, (parts.clock)());
        Ok(Broker {
            state: RwLock::new(Arc::new(state)),
            issuer,
            audit,
            cache: Mutex::new(HashMap::new()),
            sessions: Mutex::new(sessions),
            parts,
            controls: RwLock::new(Arc::new(controls)),
            counters: Mutex::new(HashMap::new()),
            volume: volume::Volume::default(),
            admin: tokio::sync::Mutex::new(()),
            view: Mutex::new(view),
        })
    }

    /// The keys whose signed votes count here: this daemon's own, and the vote signers of the
    /// config (`[store.vote_signers]`, other daemons and consoles sharing the store).
    pub(super) fn vote_trust(&self, state: &State) -> crate::approval::proof::Trust {
        let own = (
            "this daemon".to_owned(),
            self.parts.vote_key.verifying_key(),
        );
        let configured = state
            .config
            .store
            .iter()
            .flat_map(|s| s.vote_signers.iter().map(|(n, k)| (n.clone(), *k)));
        crate::approval::proof::Trust::new(std::iter::once(own).chain(configured))
    }

    pub fn now(&self) -> i64 {
        (self.parts.clock)()
    }

    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// Runs a store operation on the blocking pool (SQLite fsyncs).
    pub(super) async fn db<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = self.parts.store.clone();
        tokio::task::spawn_blocking(move || f(&*store))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }
}
