//! The global pause (the kill switch) and resetting an agent's tripped circuit breaker (the
//! breaker trips in `limits`).

use crate::audit::Kind;
use crate::aws::Issuer;
use crate::broker::records::admin_record;
use crate::broker::{Broker, BrokerError, Caller, Denial, DenyCode};
use crate::revoke::Pause;

impl<I: Issuer> Broker<I> {
    /// At the console, what loosens (resume, a breaker reset) is confirmed with a passkey.
    async fn loosening_needs_passkey(
        &self,
        caller: &Caller,
        what: &str,
    ) -> Result<(), BrokerError> {
        match caller.console() {
            Some(u) if u.passkey.is_none() => {
                let d = Denial {
                    code: DenyCode::NotApprover,
                    message: format!("{what} at the console needs your passkey"),
                    agent: None,
                };
                Err(self.refuse_admin(caller, what, d).await)
            }
            _ => Ok(()),
        }
    }

    /// Resets a tripped breaker.
    pub async fn breaker_reset(&self, caller: Caller, agent: String) -> Result<(), BrokerError> {
        let what = format!("breaker reset {agent}");
        let approver = self.approver(&caller, None, &what).await?;
        self.loosening_needs_passkey(&caller, &what).await?;
        let _admin = self.admin.lock().await;
        let state = self.state();
        if !state.config.agents.contains_key(&agent) {
            let known: Vec<&str> = state.config.agents.keys().map(String::as_str).collect();
            let hint = crate::suggest::closest(&agent, known.iter().copied())
                .map(|c| format!("; did you mean {c:?}?"))
                .unwrap_or_else(|| format!(" (agents: {})", known.join(", ")));
            let d = Denial {
                code: DenyCode::BadRequest,
                message: format!("there is no agent {agent:?} in the broker config{hint}"),
                agent: None,
            };
            return Err(self.refuse_admin(&caller, &what, d).await);
        }
        if !self.controls().trips.contains_key(&agent) {
            let d = Denial {
                code: DenyCode::BadRequest,
                message: format!("agent {agent}'s breaker is not tripped"),
                agent: None,
            };
            return Err(self.refuse_admin(&caller, &what, d).await);
        }
        // Loosening: audited before it takes effect.
        let mut r = admin_record(Kind::Breaker, &caller, approver, "reset");
        r.agent = Some(agent.clone());
        self.audit.append_durable(r).await?;
        let a = agent.clone();
        self.db(move |s| s.delete_trip(&a)).await?;
        self.update_controls(|c| {
            c.trips.remove(&agent);
        });
        self.counters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&agent);
        Ok(())
    }

    /// The global kill switch: `pause` stops every issuance and delivery until `resume`.
    pub async fn set_paused(
        &self,
        caller: Caller,
        pause: bool,
        reason: Option<String>,
    ) -> Result<(), BrokerError> {
        let what = if pause { "pause" } else { "resume" };
        let approver = self.approver(&caller, None, what).await?;
        if !pause {
            self.loosening_needs_passkey(&caller, what).await?;
        }
        let _admin = self.admin.lock().await;
        let p = pause.then(|| Pause {
            at: self.now(),
            by: approver.clone(),
            reason: reason.clone(),
        });
        let decision = if pause { "paused" } else { "resumed" };
        let kind = if pause { Kind::Paused } else { Kind::Resumed };
        let mut r = admin_record(kind, &caller, approver, decision);
        r.scope = Some("every agent".into());
        r.note = reason;
        // Resuming loosens: audited first. Pausing tightens: in force first.
        if !pause {
            self.audit.append_durable(r.clone()).await?;
        }
        let stored = p.clone();
        self.db(move |s| s.set_pause(stored.as_ref())).await?;
        self.update_controls(|c| c.paused = p);
        if pause {
            self.audit.append_durable(r).await?;
        }
        tracing::warn!(what, "global switch");
        Ok(())
    }
}
