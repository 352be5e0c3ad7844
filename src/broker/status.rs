//! `mandate status`: what a caller may see of the broker's state. Approvers see every agent;
//! an agent sees its own sessions and the revocations that stop it. Times are RFC 3339, like
//! everywhere else a human or a script reads them.

use super::{Broker, Denial, DenyCode};
use crate::aws::Issuer;
use crate::clock;
use crate::revoke;

impl<I: Issuer> Broker<I> {
    /// The status view for the caller `uid`, as the CLI and scripts read it.
    pub fn status(&self, uid: u32) -> Result<serde_json::Value, Denial> {
        let state = self.state();
        let agent = state
            .config
            .agent_for_uid(uid, None)
            .ok()
            .map(|a| a.name.clone());
        let approver = state
            .config
            .approvers
            .values()
            .any(|a| a.uids.contains(&uid));
        if agent.is_none() && !approver {
            return Err(Denial {
                code: DenyCode::UnknownCaller,
                message: format!("uid {uid} is neither an agent nor an approver"),
                agent: None,
            });
        }
        // Approvers see every agent; an agent sees its own sessions.
        let filter = if approver { None } else { agent.as_deref() };
        let controls = self.controls();
        let sessions = self.sessions(filter);
        // An agent sees the revocations that stop it, not everyone else's.
        let profiles = filter
            .and_then(|f| state.config.agents.get(f))
            .map(|a| a.profiles.clone())
            .unwrap_or_default();
        let concerns = |r: &&revoke::Revocation| match filter {
            None => true,
            Some(f) => {
                profiles.iter().any(|p| r.blocks(f, p.as_str()))
                    || matches!(&r.scope, revoke::Scope::Session(id)
                        if sessions.iter().any(|s| s.request_id == *id))
            }
        };
        // Times as RFC 3339, like everywhere else a human or a script reads them.
        let with_time = |v: serde_json::Value| {
            let mut v = v;
            if let Some(at) = v["at"].as_i64() {
                v["at"] = clock::rfc3339(at).into();
            }
            v
        };
        let revocations: Vec<serde_json::Value> = controls
            .revocations
            .iter()
            .filter(concerns)
            .map(|r| with_time(serde_json::to_value(r).unwrap_or_default()))
            .collect();
        // Each live session says whether a revocation stops it.
        let sessions: Vec<serde_json::Value> = sessions
            .iter()
            .map(|s| {
                let revoked = controls.revocations.iter().any(|r| {
                    r.blocks(&s.agent, &s.profile)
                        || (r.active
                            && matches!(&r.scope, revoke::Scope::Session(id) if *id == s.request_id))
                });
                let mut v = serde_json::to_value(s).unwrap_or_default();
                v["revoked"] = revoked.into();
                v
            })
            .collect();
        Ok(serde_json::json!({

            "revocations": revocations,
            "sessions": sessions,
            "agents": state.config.agents.values().filter(|a| filter.is_none_or(|f| f == a.name)).map(|a| serde_json::json!({
                "name": a.name,
                "profiles": a.profiles.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "audit_ok": !self.audit().is_failed(),
            "store": self.store_view(filter.is_none()),
            "paused": controls.paused.as_ref().map(|p| with_time(serde_json::to_value(p).unwrap_or_default())),
            "breakers": controls.trips.values().filter(|t| filter.is_none_or(|f| f == t.agent)).map(|t| with_time(serde_json::to_value(t).unwrap_or_default())).collect::<Vec<_>>(),
        }))
    }
}
