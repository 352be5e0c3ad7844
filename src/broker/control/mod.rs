//! The human side of the broker: votes, revocation, circuit breakers and the global pause.
//! Every change is persisted in the store and audited before the call returns. Here: the stop
//! buttons in force, and who may press them.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{Broker, BrokerError, Caller, Denial, DenyCode};
use crate::aws::Issuer;
use crate::clock;
use crate::revoke::{Pause, Revocation, Scope, Trip};

mod pause;
mod revocation;
mod votes;

pub use revocation::RevokeReport;
pub use votes::VoteReport;

/// The stop buttons in force, swapped as a whole (readers never lock).
#[derive(Clone, Debug, Default)]
pub struct Controls {
    pub paused: Option<Pause>,
    pub revocations: Vec<Revocation>,
    pub trips: BTreeMap<String, Trip>,
}

impl Controls {
    /// Why the stop buttons refuse this agent and profile now (and, with `session`, that
    /// session in particular), if they do.
    pub fn stopped(&self, agent: &str, profile: &str, session: Option<&str>) -> Option<Denial> {
        let deny = |code, message| {
            Some(Denial {
                code,
                message,
                agent: Some(agent.to_owned()),
            })
        };
        if let Some(p) = &self.paused {
            return deny(
                DenyCode::Paused,
                format!(
                    "the broker is paused (by {} at {}{}); nothing is issued until an approver runs `mandate resume`",
                    p.by,
                    clock::rfc3339(p.at),
                    p.reason
                        .as_deref()
                        .map(|r| format!(": {r}"))
                        .unwrap_or_default()
                ),
            );
        }
        if let Some(t) = self.trips.get(agent) {
            return deny(
                DenyCode::BreakerOpen,
                format!(
                    "agent {agent} is locked by its circuit breaker since {} ({}); an approver runs `mandate breaker reset {agent}`",
                    clock::rfc3339(t.at),
                    t.reason,
                ),
            );
        }
        let hit = self.revocations.iter().find(|r| {
            r.blocks(agent, profile)
                || (r.active
                    && matches!((&r.scope, session), (Scope::Session(id), Some(s)) if id == s))
        });
        if let Some(r) = hit {
            let lift = match r.scope {
                Scope::Session(_) => "; new sessions may still be requested".to_owned(),
                _ => format!(
                    "; nothing is issued until an approver runs `mandate unrevoke {}`",
                    scope_flag(&r.scope)
                ),
            };
            return deny(
                DenyCode::Revoked,
                format!(
                    "{} is revoked (by {} at {}){lift}",
                    r.scope,
                    r.by,
                    clock::rfc3339(r.at)
                ),
            );
        }
        None
    }
}

/// The CLI flag that names a scope (`--agent claude`).
pub fn scope_flag(scope: &Scope) -> String {
    match scope {
        Scope::Agent(a) => format!("--agent {a}"),
        Scope::Profile(p) => format!("--profile {p}"),
        Scope::Session(s) => format!("--session {s}"),
        Scope::All => "--all".into(),
    }
}

impl<I: Issuer> Broker<I> {
    pub fn controls(&self) -> Arc<Controls> {
        self.controls
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(super) fn update_controls(&self, f: impl FnOnce(&mut Controls)) {
        let mut guard = self.controls.write().unwrap_or_else(|e| e.into_inner());
        let mut next = (**guard).clone();
        f(&mut next);
        *guard = Arc::new(next);
    }

    /// The approver a socket caller speaks for. Agents (by token, or by a uid that is no
    /// approver's) never get one.
    pub fn approver_of(&self, caller: &Caller, requested: Option<&str>) -> Result<String, Denial> {
        let state = self.state();
        let refuse = |message: String| Denial {
            code: DenyCode::NotApprover,
            message,
            agent: None,
        };
        let uid = match caller {
            Caller::Token { agent } => {
                return Err(refuse(format!(
                    "agent {agent}'s token cannot approve, revoke or pause: only approvers can, on the broker's socket"
                )));
            }
            Caller::Peer { uid, .. } => *uid,
            // The console mapped the sign-in to an approver; the config (perhaps reloaded
            // since) must still say so.
            Caller::Console(u) => {
                let mapped = state.config.console.is_some()
                    && state
                        .config
                        .console_approver(&u.subject, u.email.as_deref())
                        .ok()
                        .flatten()
                        .is_some_and(|a| a.name == u.approver);
                return if !mapped {
                    Err(refuse(format!(
                        "the console sign-in {} is no longer mapped to approver {}",
                        crate::diag::quoted(&u.subject),
                        u.approver
                    )))
                } else if requested.is_some_and(|r| r != u.approver) {
                    Err(refuse(format!(
                        "signed in as approver {}, not {}",
                        u.approver,
                        crate::diag::quoted(requested.unwrap_or(""))
                    )))
                } else {
                    Ok(u.approver.clone())
                };
            }
        };
        let mine = state.config.approvers_for_uid(uid);
        let chosen: Vec<_> = mine
            .iter()
            .filter(|a| requested.is_none_or(|r| r == a.name))
            .collect();
        match chosen.as_slice() {
            [one] => Ok(one.name.clone()),
            [] if requested.is_some() && !mine.is_empty() => Err(refuse(format!(
                "uid {uid} may not act as approver {}",
                crate::diag::quoted(requested.unwrap_or(""))
            ))),
            [] => {
                let agents: Vec<&str> = state
                    .config
                    .agents
                    .values()
                    .filter(|a| a.uids.contains(&uid))
                    .map(|a| a.name.as_str())
                    .collect();
                Err(refuse(if agents.is_empty() {
                    format!("uid {uid} is not a declared approver")
                } else {
                    format!(
                        "uid {uid} belongs to agent {} and to no approver: agents cannot approve, revoke or pause",
                        agents.join(", ")
                    )
                }))
            }
            _ => Err(refuse(format!(
                "uid {uid} belongs to several approvers; pass --as NAME"
            ))),
        }
    }

    /// The approver behind a human command, or the audited refusal of `what`.
    pub(super) async fn approver(
        &self,
        caller: &Caller,
        requested: Option<&str>,
        what: &str,
    ) -> Result<String, BrokerError> {
        match self.approver_of(caller, requested) {
            Ok(a) => Ok(a),
            Err(d) => Err(self.refuse_admin(caller, what, d).await),
        }
    }
}
