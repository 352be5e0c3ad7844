//! The live-session index: every unexpired session issued, in memory for `status` and
//! `revoke --session`, and in the store so that it (and the live-session cap) survives a
//! restart.

use super::{Broker, BrokerError, Caller};
use crate::aws::Issuer;
use crate::clock;
use crate::store::{SessionInfo, Store, StoreError};

/// Sessions kept in memory at most (expired ones are dropped first).
const MAX_INDEXED: usize = 100_000;

/// The live sessions this daemon issued (`me`: its id) in the store at `now`. Another daemon's
/// sessions are its own to index (and count toward limits through `remote_counts`).
pub(super) fn load(store: &dyn Store, now: i64, me: &str) -> Result<Vec<SessionInfo>, StoreError> {
    // `expires_at` is not in the stored JSON's serialized form; it comes back from the
    // expiration text.
    Ok(store
        .sessions(now)?
        .into_iter()
        .filter(|s| s.daemon.is_empty() || s.daemon == me)
        .map(|mut s| {
            s.expires_at = clock::parse_rfc3339_millis(&s.expiration).map_or(0, |ms| ms / 1000);
            s
        })
        .collect())
}

impl<I: Issuer> Broker<I> {
    /// Live (unexpired) sessions, optionally of one agent.
    pub fn sessions(&self, agent: Option<&str>) -> Vec<SessionInfo> {
        let now = clock::unix_now();
        let mut s = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        s.retain(|x| x.expires_at > now);
        s.iter()
            .filter(|x| agent.is_none_or(|a| x.agent == a))
            .cloned()
            .collect()
    }

    /// Every live session an approver may revoke: this daemon's and (team mode, or issued
    /// before a restart) the store's, once each.
    pub async fn live_sessions(&self, caller: &Caller) -> Result<Vec<SessionInfo>, BrokerError> {
        self.approver(caller, None, "list sessions").await?;
        let mut all = self.sessions(None);
        let now = self.now();
        let stored = self.db(move |s| s.sessions(now)).await?;
        for s in stored {
            if !all.iter().any(|x| x.request_id == s.request_id) {
                all.push(s);
            }
        }
        Ok(all)
    }

    /// Adds a session just issued to the index, in memory and in the store. A store failure
    /// does not withhold a session that is already audited: it is logged.
    pub(super) async fn index_session(&self, info: SessionInfo) {
        let request_id = info.request_id.clone();
        {
            let now = clock::unix_now();
            let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
            sessions.retain(|s| s.expires_at > now);
            if sessions.len() < MAX_INDEXED {
                sessions.push(info);
            }
        }
        // The live-session index survives a restart (status, revoke --session).
        let info = self
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|s| s.request_id == request_id)
            .cloned();
        let Some(info) = info else { return };
        let now = clock::unix_now();
        let store = self.parts.store.clone();
        let put = move || {
            if let Err(e) = store.put_session(&info, now) {
                tracing::warn!(error = %e, "could not record the session in the store");
            }
        };
        if self.shares_store() {
            // A shared database is not waited on: the session is audited already, and a slow
            // or unreachable database must not hold up approval-free issuance (the view's
            // staleness bound decides when issuing stops).
            tokio::task::spawn_blocking(put);
        } else {
            let _ = tokio::task::spawn_blocking(put).await;
        }
    }
}
