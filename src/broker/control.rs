//! The human side of the broker: votes, revocation, circuit breakers and the global pause.
//! Every change is persisted in the store and audited before the call returns.

use std::collections::{BTreeMap, VecDeque};

use super::*;
use crate::approval::{Status, VoteOutcome, Voter};
use crate::config::Limits;
use crate::policy::CompiledProfile;

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

/// The CLI flag that names a scope (`--agent claude`).
pub fn scope_flag(scope: &Scope) -> String {
    match scope {
        Scope::Agent(a) => format!("--agent {a}"),
        Scope::Profile(p) => format!("--profile {p}"),
        Scope::Session(s) => format!("--session {s}"),
        Scope::All => "--all".into(),
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct VoteReport {
    pub id: ApprovalId,
    pub approver: String,
    pub status: &'static str,
    pub outcome: String,
    pub have: usize,
    pub need: usize,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RevokeReport {
    pub scope: Option<String>,
    pub revocation_id: Option<String>,
    /// Cached sessions dropped.
    pub purged: usize,
    /// Roles whose inline policy was written, with the exact document.
    pub policies: Vec<PolicyWrite>,
    /// Roles whose inline policy was removed (nothing left to deny).
    pub removed: Vec<String>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct PolicyWrite {
    pub role_arn: String,
    pub policy_name: &'static str,
    pub document: String,
    pub chars: usize,
}

impl<I: Issuer> Broker<I> {
    /// Refuses new sessions beyond the agent's rate limit or live-session cap.
    pub(super) fn check_limits(&self, agent: &str, limits: &Limits) -> Result<(), Denial> {
        let now = self.now();
        let mut counters = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        let c = counters.entry(agent.to_owned()).or_default();
        prune(&mut c.issuances, now - limits.window.as_secs() as i64);
        if c.issuances.len() >= limits.max_issuances as usize {
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
        let live = self.sessions(Some(agent)).len();
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

    /// Counts a denial or rejection; trips the breaker at the threshold.
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
        }));
        Ok(())
    }

    fn update_controls(&self, f: impl FnOnce(&mut Controls)) {
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
    async fn approver(
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

    /// Audits a refused human action (who tried what) and returns it as the error.
    async fn refuse_admin(&self, caller: &Caller, what: &str, d: Denial) -> BrokerError {
        let mut r = Record::new(Kind::Denied);
        r.uid = caller.uid();
        r.pid = caller.pid();
        if let Caller::Token { agent } = caller {
            r.agent = Some(agent.clone());
        }
        r.decision = Some("deny".into());
        r.code = Some(d.code.as_str().into());
        r.message = Some(format!("{what}: {}", d.message));
        if let Err(e) = self.audit.append_durable(r).await {
            return e.into();
        }
        BrokerError::Denied(d)
    }

    /// One approver's vote on a pending request.
    pub async fn vote(
        &self,
        caller: Caller,
        id: ApprovalId,
        approve: bool,
        note: Option<String>,
        as_approver: Option<String>,
    ) -> Result<VoteReport, BrokerError> {
        let what = format!("{} {id}", if approve { "approve" } else { "reject" });
        let approver = self
            .approver(&caller, as_approver.as_deref(), &what)
            .await?;
        let state = self.state();
        let voter_uids = state
            .config
            .approvers
            .get(&approver)
            .map(|a| a.uids.clone())
            .unwrap_or_default();
        let serial = self.admin.lock().await;
        loop {
            let now = self.now();
            let lookup = id.clone();
            let Some(r) = self.db(move |s| s.get(&lookup)).await? else {
                let d = Denial {
                    code: DenyCode::UnknownApproval,
                    message: format!("no approval request {id}"),
                    agent: None,
                };
                return Err(self.refuse_admin(&caller, &what, d).await);
            };
            let agent = state.config.agents.get(&r.binding.agent);
            let agent_uids = agent.map(|a| a.uids.clone()).unwrap_or_default();
            let operator_uids = agent
                .and_then(|a| a.operator.as_ref())
                .and_then(|o| state.config.approvers.get(o))
                .map(|o| o.uids.clone())
                .unwrap_or_default();
            let parties = crate::approval::Parties {
                agent_uids: &agent_uids,
                operator_uids: &operator_uids,
            };
            let voter = Voter {
                name: &approver,
                uids: &voter_uids,
            };
            let use_within = state.config.approvals.use_within.as_secs() as i64;
            let (next, outcome) =
                match r.vote(&voter, &parties, approve, note.clone(), now, use_within) {
                    Ok(x) => x,
                    Err(e) => {
                        let d = Denial {
                            code: DenyCode::VoteRefused,
                            message: e.to_string(),
                            agent: None,
                        };
                        return Err(self.refuse_admin(&caller, &what, d).await);
                    }
                };
            let (kind, decision, have, need) = match &outcome {
                VoteOutcome::Counted { have, need } => {
                    (Kind::Approved, "counted".to_owned(), *have, *need)
                }
                VoteOutcome::Duplicate { have, need } => {
                    (Kind::Approved, "duplicate".to_owned(), *have, *need)
                }
                VoteOutcome::Approved { .. } => (
                    Kind::Approved,
                    "approved".to_owned(),
                    r.needed(),
                    r.needed(),
                ),
                VoteOutcome::Rejected => (Kind::Rejected, "rejected".to_owned(), 0, r.needed()),
            };
            let mut rec = Record::new(kind);
            rec.approval_id = Some(id.to_string());
            rec.agent = Some(r.binding.agent.clone());
            rec.profile = Some(r.binding.profile.clone());
            rec.digest = Some(r.digest.clone());
            rec.approver = Some(approver.clone());
            rec.uid = caller.uid();
            rec.pid = caller.pid();
            rec.note = note.clone();
            rec.decision = Some(decision.clone());
            // An approval loosens: it is audited before it can take effect. A rejection
            // tightens: it takes effect first, even if the audit write then fails.
            if approve {
                self.audit.append_durable(rec.clone()).await?;
            }
            let expected = r.version;
            let stored = next.clone();
            if !self.db(move |s| s.replace(expected, &stored)).await? {
                // Another daemon sharing the store changed it first (votes in this daemon are
                // serialized): read again and vote again.
                continue;
            }
            if !approve {
                self.audit.append_durable(rec).await?;
            }
            drop(serial); // count_denial may take it to trip the breaker
            if outcome == VoteOutcome::Rejected {
                self.count_denial(&r.binding.agent).await?;
            }
            tracing::info!(id = %id, approver = %approver, decision = %decision, "vote");
            return Ok(VoteReport {
                id,
                approver,
                status: next.status(now).as_str(),
                outcome: decision,
                have,
                need,
            });
        }
    }

    /// Approval requests: every one for approvers, their own for agents.
    pub async fn approvals(
        &self,
        caller: &Caller,
        all: bool,
    ) -> Result<Vec<serde_json::Value>, BrokerError> {
        let now = self.now();
        let state = self.state();
        let only_agent = match self.approver_of(caller, None) {
            Ok(_) => None,
            Err(d) => match caller {
                Caller::Peer { uid, .. } => match state.config.agent_for_uid(*uid, None) {
                    Ok(a) => Some(a.name.clone()),
                    Err(_) => return Err(BrokerError::Denied(d)),
                },
                Caller::Token { agent } => Some(agent.clone()),
            },
        };
        let since = if all { 0 } else { now - 7 * 86_400 };
        let list = self.db(move |s| s.list(since, 1000)).await?;
        Ok(list
            .into_iter()
            .filter(|r| only_agent.as_ref().is_none_or(|a| *a == r.binding.agent))
            .filter(|r| all || !r.status(now).is_final())
            .map(|r| {
                let mut v = approval_view(&r, now);
                v["unlocks"] = unlocks(&state, &r);
                v
            })
            .collect())
    }

    /// Revokes a scope: new issuance stops at once (persisted, cache purged, audited); with
    /// `aws`, the roles' inline policy also denies sessions issued before now.
    pub async fn revoke(
        &self,
        caller: Caller,
        scope: Scope,
        aws: bool,
    ) -> Result<RevokeReport, BrokerError> {
        let what = format!("revoke {scope}");
        let approver = self.approver(&caller, None, &what).await?;
        let state = self.state();
        let (scope, roles) = match self.scope_roles(&state, &scope) {
            Ok(r) => r,
            Err(m) => {
                let d = Denial {
                    code: DenyCode::BadRequest,
                    message: m,
                    agent: None,
                };
                return Err(self.refuse_admin(&caller, &what, d).await);
            }
        };
        let _admin = self.admin.lock().await;
        // Sessions issued up to the end of this second are denied at AWS.
        let at = self.now() + 1;
        let rev = Revocation {
            id: random_id()[..16].to_owned(),
            scope: scope.clone(),
            at,
            by: approver.clone(),
            // (A session revocation stops that session's delivery; it never blocks new ones.)
            active: true,
            aws_roles: if aws { roles } else { Vec::new() },
        };
        let stored = rev.clone();
        self.db(move |s| s.put_revocation(&stored)).await?;
        self.update_controls(|c| c.revocations.push(rev.clone()));
        let purged = self.purge(&state, &scope);
        let decision = if aws { "revoked+aws" } else { "revoked" };
        let mut r = admin_record(Kind::Revoked, &caller, approver, decision);
        r.scope = Some(scope.to_string());
        r.message = Some(format!(
            "revocation {}; {purged} cached sessions purged",
            rev.id
        ));
        if let Scope::Agent(a) = &scope {
            r.agent = Some(a.clone());
        }
        self.audit.append_durable(r).await?;
        tracing::warn!(scope = %scope, aws, "revoked");
        let mut report = RevokeReport {
            scope: Some(scope.to_string()),
            revocation_id: Some(rev.id.clone()),
            purged,
            ..RevokeReport::default()
        };
        if aws {
            self.write_policies(&rev.aws_roles, &mut report).await?;
        }
        Ok(report)
    }

    /// Lifts the revocations of a scope for new issuance. Denials already written at AWS stay
    /// until `revoke --gc`: sessions revoked then stay revoked.
    pub async fn unrevoke(&self, caller: Caller, scope: Scope) -> Result<usize, BrokerError> {
        let what = format!("unrevoke {scope}");
        let approver = self.approver(&caller, None, &what).await?;
        let _admin = self.admin.lock().await;
        let lifted: Vec<Revocation> = self
            .controls()
            .revocations
            .iter()
            .filter(|r| r.active && r.scope == scope)
            .map(|r| Revocation {
                active: false,
                ..r.clone()
            })
            .collect();
        if lifted.is_empty() {
            let d = Denial {
                code: DenyCode::UnknownApproval,
                message: format!("{scope} is not revoked"),
                agent: None,
            };
            return Err(self.refuse_admin(&caller, &what, d).await);
        }
        // Loosening: audited before it takes effect.
        let mut r = admin_record(Kind::Revoked, &caller, approver, "unrevoked");
        r.scope = Some(scope.to_string());
        self.audit.append_durable(r).await?;
        let stored = lifted.clone();
        self.db(move |s| {
            for r in &stored {
                if r.aws_roles.is_empty() {
                    s.delete_revocation(&r.id)?;
                } else {
                    s.put_revocation(r)?;
                }
            }
            Ok(())
        })
        .await?;
        self.update_controls(|c| {
            c.revocations
                .retain(|r| !lifted.iter().any(|l| l.id == r.id));
            c.revocations
                .extend(lifted.iter().filter(|l| !l.aws_roles.is_empty()).cloned());
        });
        Ok(lifted.len())
    }

    /// Removes AWS denials that no live session can still match (older than the longest
    /// possible session), rewriting or deleting each role's policy.
    pub async fn revoke_gc(&self, caller: Caller) -> Result<RevokeReport, BrokerError> {
        let approver = self.approver(&caller, None, "revoke --gc").await?;
        let _admin = self.admin.lock().await;
        let now = self.now();
        let all = self.controls().revocations.clone();
        // A session revocation has nothing left to stop once the session cannot be alive.
        let session_over = |r: &Revocation| {
            matches!(r.scope, Scope::Session(_)) && now >= r.at + crate::revoke::MAX_SESSION_SECONDS
        };
        let expired: Vec<Revocation> = all
            .iter()
            .filter(|r| !r.aws_live(now) && (!r.aws_roles.is_empty() || session_over(r)))
            .map(|r| Revocation {
                aws_roles: Vec::new(),
                active: r.active && !session_over(r),
                ..r.clone()
            })
            .collect();
        // Only the roles whose denials changed are rewritten: a gc with nothing to collect
        // touches nothing at AWS.
        let mut roles: Vec<String> = all
            .iter()
            .filter(|r| expired.iter().any(|e| e.id == r.id))
            .flat_map(|r| r.aws_roles.clone())
            .collect();
        roles.sort();
        roles.dedup();
        let stored = expired.clone();
        self.db(move |s| {
            for r in &stored {
                if r.active {
                    s.put_revocation(r)?;
                } else {
                    s.delete_revocation(&r.id)?;
                }
            }
            Ok(())
        })
        .await?;
        self.update_controls(|c| {
            c.revocations
                .retain(|r| !expired.iter().any(|e| e.id == r.id));
            c.revocations
                .extend(expired.iter().filter(|e| e.active).cloned());
        });
        let mut report = RevokeReport::default();
        self.write_policies(&roles, &mut report).await?;
        let mut r = admin_record(Kind::Revoked, &caller, approver, "gc");
        r.message = Some(format!(
            "{} expired AWS denials dropped; {} role policies rewritten, {} removed",
            expired.len(),
            report.policies.len(),
            report.removed.len()
        ));
        self.audit.append_durable(r).await?;
        Ok(report)
    }

    /// Puts (or deletes) the revocation policy of each role from the current revocations.
    async fn write_policies(
        &self,
        roles: &[String],
        report: &mut RevokeReport,
    ) -> Result<(), BrokerError> {
        let now = self.now();
        let revs = self.controls().revocations.clone();
        for arn in roles {
            let name = crate::revoke::role_name(arn);
            match crate::revoke::role_policy(&revs, arn, now) {
                Some(doc) => {
                    let chars = crate::revoke::policy_chars(&doc);
                    if chars > crate::revoke::ROLE_INLINE_BUDGET {
                        return Err(IamError {
                            op: "PutRolePolicy",
                            role: arn.clone(),
                            message: format!(
                                "the revocation policy would be {chars} characters, over the role's inline budget of {}; `mandate revoke --all --aws` replaces the older narrower denials with one, and `mandate revoke --gc` drops those over 12 hours old",
                                crate::revoke::ROLE_INLINE_BUDGET
                            ),
                        }
                        .into());
                    }
                    self.parts
                        .revoker
                        .put_role_policy(name, crate::revoke::POLICY_NAME, &doc)
                        .await?;
                    report.policies.push(PolicyWrite {
                        role_arn: arn.clone(),
                        policy_name: crate::revoke::POLICY_NAME,
                        document: doc,
                        chars,
                    });
                }
                None => {
                    self.parts
                        .revoker
                        .delete_role_policy(name, crate::revoke::POLICY_NAME)
                        .await?;
                    report.removed.push(arn.clone());
                }
            }
        }
        Ok(())
    }

    /// The role ARNs a scope's sessions can have, and the scope with a session named by its
    /// request id (what its `mandate-request-id` tag and the cache know it by).
    fn scope_roles(&self, state: &State, scope: &Scope) -> Result<(Scope, Vec<String>), String> {
        let mut scope = scope.clone();
        let role_of = |profile: &str| {
            state
                .profiles
                .get(profile)
                .and_then(|p| state.config.roles.get(p.profile.role.as_str()))
                .map(|r| r.arn.clone())
        };
        let mut roles: Vec<String> = match &scope.clone() {
            Scope::Agent(a) => match state.config.agents.get(a) {
                Some(agent) => agent
                    .profiles
                    .iter()
                    .filter_map(|p| role_of(p.as_str()))
                    .collect(),
                None => return Err(format!("no agent named {}", crate::diag::quoted(a))),
            },
            Scope::Profile(p) => match role_of(p) {
                Some(r) => vec![r],
                None => return Err(format!("no profile named {}", crate::diag::quoted(p))),
            },
            Scope::Session(id) => {
                let sessions = self.sessions(None);
                match sessions
                    .iter()
                    .find(|s| s.request_id == *id || s.session_name == *id)
                {
                    Some(s) => {
                        let roles = state
                            .config
                            .roles
                            .get(&s.role)
                            .map(|r| vec![r.arn.clone()])
                            .unwrap_or_default();
                        scope = Scope::Session(s.request_id.clone());
                        roles
                    }
                    None => {
                        return Err(format!(
                            "no live session {} (use the request id or session name from `mandate status`, or revoke --agent)",
                            crate::diag::quoted(id)
                        ));
                    }
                }
            }
            Scope::All => state.config.roles.values().map(|r| r.arn.clone()).collect(),
        };
        roles.sort();
        roles.dedup();
        Ok((scope, roles))
    }

    /// Drops cached sessions in the scope; returns how many.
    fn purge(&self, state: &State, scope: &Scope) -> usize {
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

    /// Resets a tripped breaker.
    pub async fn breaker_reset(&self, caller: Caller, agent: String) -> Result<(), BrokerError> {
        let what = format!("breaker reset {agent}");
        let approver = self.approver(&caller, None, &what).await?;
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

/// A record of a human's action: who (approver, uid, pid) did `decision`.
fn admin_record(kind: Kind, caller: &Caller, approver: String, decision: &str) -> Record {
    let mut r = Record::new(kind);
    r.approver = Some(approver);
    r.uid = caller.uid();
    r.pid = caller.pid();
    r.decision = Some(decision.into());
    r
}

/// What approving `r` lets the session do that needs a human: the classified actions its
/// profile opts into, by class, and the managed policies it passes (not analysed). `null` when
/// the profile changed since the request (the approval could not be used anyway).
fn unlocks(state: &super::State, r: &ApprovalRequest) -> serde_json::Value {
    if state
        .profiles
        .get(&r.binding.profile)
        .is_none_or(|c| c.profile_sha256 != r.binding.profile_sha256)
    {
        return serde_json::Value::Null;
    }
    state
        .unlocks_of(&r.binding.profile, unlocks_json)
        .map(|v| (*v).clone())
        .unwrap_or_default()
}

/// Names listed per class in `unlocks`; the rest are counted (a `*` profile unlocks ~20,000).
const UNLOCKS_LISTED: usize = 20;

fn unlocks_json(c: &CompiledProfile) -> serde_json::Value {
    let e = crate::policy::explain::explain(c);
    let mut classes = serde_json::Map::new();
    for (class, list) in &e.classes {
        let usable: Vec<String> = list
            .iter()
            .filter(|(_, f)| *f == crate::policy::explain::Fate::NeedsApproval)
            .map(|(a, _)| a.full_name())
            .collect();
        if !usable.is_empty() {
            classes.insert(
                class.as_str().to_owned(),
                serde_json::json!({
                    "count": usable.len(),
                    "actions": usable.iter().take(UNLOCKS_LISTED).collect::<Vec<_>>(),
                }),
            );
        }
    }
    serde_json::json!({
        "classes": classes,
        "managed_policies": e.managed_policies,
        "usable_actions": e.usable_count(),
    })
}

/// What `mandate approvals list` shows of a request.
pub fn approval_view(r: &ApprovalRequest, now: i64) -> serde_json::Value {
    let status: Status = r.status(now);
    serde_json::json!({
        "id": r.id,
        "status": status.as_str(),
        "agent": r.binding.agent,
        "profile": r.binding.profile,
        "role": r.binding.role_arn,
        "duration_seconds": r.binding.duration_seconds,
        "reason": r.binding.reason,
        "needs": r.requirement.to_string(),
        "approvals": r.votes.iter().filter(|v| v.approve).map(|v| v.approver.clone()).collect::<std::collections::BTreeSet<_>>(),
        "need": r.needed(),
        "votes": r.votes,
        "created": clock::rfc3339(r.created_at),
        "expires": clock::rfc3339(r.pending_until),
        "use_by": match r.stage { crate::approval::Stage::Approved { use_by, .. } => Some(clock::rfc3339(use_by)), _ => None },
        "digest": r.digest,
        "uid": r.uid,
    })
}
