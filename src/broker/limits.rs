//! Limits per agent: recent issuances (rate limit), the live-session cap, cached deliveries
//! per window, and recent denials, which trip the agent's circuit breaker at the threshold.

use std::collections::VecDeque;

use super::{Broker, BrokerError, Denial, DenyCode};
use crate::audit::{Kind, Record};
use crate::aws::Issuer;
use crate::clock;
use crate::config::Limits;
use crate::revoke::Trip;

/// Recent issuances and denials of one agent (bounded by the limits).
#[derive(Debug, Default)]
pub(super) struct Counters {
    issuances: VecDeque<i64>,
    denials: VecDeque<i64>,
    /// Cached deliveries in the current fixed window: (window start, count).
    deliveries: (i64, u32),
}

fn prune(q: &mut VecDeque<i64>, since: i64) {
    while q.front().is_some_and(|t| *t <= since) {
        q.pop_front();
    }
}

impl<I: Issuer> Broker<I> {
    /// Refuses new sessions beyond the agent's rate limit or live-session cap.
    pub(super) fn check_limits(&self, agent: &str, limits: &Limits) -> Result<(), Denial> {
        let now = self.now();
        let mut counters = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        let c = counters.entry(agent.to_owned()).or_default();
        prune(&mut c.issuances, now - limits.window.as_secs() as i64);
        // Team mode: limits hold across the daemons sharing the store.
        let remote = self.remote_counts(agent);
        if c.issuances.len() + remote.issued as usize >= limits.max_issuances as usize {
            return Err(Denial {
                code: DenyCode::RateLimited,
                message: format!(
                    "agent {agent} reached its limit of {} new sessions per {} s; try again later or ask an approver to raise limits.max_issuances",
                    limits.max_issuances,
                    limits.window.as_secs()
                ),
                agent: Some(agent.to_owned()),
            });
        }
        drop(counters);
        let live = self.sessions(Some(agent)).len() + remote.live as usize;
        if live >= limits.max_live_sessions as usize {
            return Err(Denial {
                code: DenyCode::TooManySessions,
                message: format!(
                    "agent {agent} already holds {live} unexpired sessions (the limit is {}); reuse one or wait for one to expire",
                    limits.max_live_sessions
                ),
                agent: Some(agent.to_owned()),
            });
        }
        Ok(())
    }

    pub(super) fn record_issuance(&self, agent: &str, limits: &Limits) {
        let now = self.now();
        let mut counters = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        let c = counters.entry(agent.to_owned()).or_default();
        c.issuances.push_back(now);
        // Bounded: the limit is checked before each push.
        let cap = limits.max_issuances as usize + 1;
        while c.issuances.len() > cap {
            c.issuances.pop_front();
        }
    }

    /// Counts one cached delivery against the agent's budget (`limits.max_deliveries` per
    /// `limits.window`, in fixed windows): every delivery costs the audit log something.
    pub(super) fn count_delivery(&self, agent: &str, limits: &Limits) -> Result<(), Denial> {
        let now = self.now();
        let mut counters = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        let c = counters.entry(agent.to_owned()).or_default();
        let window = limits.window.as_secs() as i64;
        if now >= c.deliveries.0 + window {
            c.deliveries = (now, 0);
        }
        if c.deliveries.1 >= limits.max_deliveries {
            return Err(Denial {
                code: DenyCode::RateLimited,
                message: format!(
                    "agent {agent} reached its limit of {} cached deliveries per {} s; use the credentials until they expire (the AWS SDKs cache them), or ask an approver to raise limits.max_deliveries",
                    limits.max_deliveries,
                    limits.window.as_secs()
                ),
                agent: Some(agent.to_owned()),
            });
        }
        c.deliveries.1 += 1;
        Ok(())
    }

    /// Counts a denial or rejection; trips the breaker at the threshold.
    pub(super) async fn count_denial(&self, agent: &str) -> Result<(), BrokerError> {
        let limits = self.state().config.limits;
        let now = self.now();
        let tripped = {
            let mut counters = self.counters.lock().unwrap_or_else(|e| e.into_inner());
            let c = counters.entry(agent.to_owned()).or_default();
            prune(&mut c.denials, now - limits.window.as_secs() as i64);
            c.denials.push_back(now);
            while c.denials.len() > limits.breaker_denials as usize {
                c.denials.pop_front();
            }
            c.denials.len() >= limits.breaker_denials as usize
        };
        if !tripped || self.controls().trips.contains_key(agent) {
            return Ok(());
        }
        let _admin = self.admin.lock().await;
        if self.controls().trips.contains_key(agent) {
            return Ok(());
        }
        let trip = Trip {
            agent: agent.to_owned(),
            at: now,
            reason: format!(
                "{} denied or rejected requests within {} s",
                limits.breaker_denials,
                limits.window.as_secs()
            ),
        };
        let t = trip.clone();
        self.db(move |s| s.put_trip(&t)).await?;
        self.update_controls(|c| {
            c.trips.insert(trip.agent.clone(), trip.clone());
        });
        let mut r = Record::new(Kind::Breaker);
        r.agent = Some(agent.to_owned());
        r.decision = Some("tripped".into());
        r.message = Some(trip.reason.clone());
        self.audit.append_durable(r).await?;
        tracing::warn!(agent, reason = %trip.reason, "circuit breaker tripped");
        self.parts.notifier.send(serde_json::json!({
            "event": "breaker_tripped",
            "agent": agent,
            "reason": trip.reason,
            "at": clock::rfc3339(now),
            "reset": format!("mandate breaker reset {agent}"),
            "console_url": self.state().config.console.as_ref().map(|c| format!("{}controls", c.base())),
        }));
        Ok(())
    }
}
