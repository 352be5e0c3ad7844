//! Approvals: one approver's vote on a pending request, and the list of requests (with what
//! approving each would unlock).

use crate::approval::{ApprovalId, ApprovalRequest, Parties, Status, VoteOutcome, Voter};
use crate::audit::{Kind, Record};
use crate::aws::Issuer;
use crate::broker::{Broker, BrokerError, Caller, Denial, DenyCode, State};
use crate::clock;
use crate::policy::CompiledProfile;

#[derive(Clone, Debug, serde::Serialize)]
pub struct VoteReport {
    pub id: ApprovalId,
    pub approver: String,
    pub status: &'static str,
    pub outcome: String,
    pub have: usize,
    pub need: usize,
}

impl<I: Issuer> Broker<I> {
    /// One approver's vote on a pending request.
    pub async fn vote(
        &self,
        caller: Caller,
        id: ApprovalId,
        approve: bool,
        note: Option<String>,
        as_approver: Option<String>,
    ) -> Result<VoteReport, BrokerError> {
        self.vote_on_seen(caller, id, approve, note, as_approver, None)
            .await
    }

    /// A vote on the request as the approver saw it: with `seen` (its binding digest), a
    /// request that changed since is not voted on.
    pub async fn vote_on_seen(
        &self,
        caller: Caller,
        id: ApprovalId,
        approve: bool,
        note: Option<String>,
        as_approver: Option<String>,
        seen: Option<String>,
    ) -> Result<VoteReport, BrokerError> {
        let what = format!("{} {id}", if approve { "approve" } else { "reject" });
        let approver = self
            .approver(&caller, as_approver.as_deref(), &what)
            .await?;
        let state = self.state();
        if let Some(u) = caller.console()
            && u.passkey.is_none()
        {
            let operator_of = |r: &crate::approval::ApprovalRequest| {
                state
                    .config
                    .agents
                    .get(&r.binding.agent)
                    .and_then(|a| a.operator.as_deref())
                    == Some(approver.as_str())
            };
            let allowed = state
                .config
                .console
                .as_ref()
                .is_some_and(|c| c.oidc_only_operator_votes);
            let lookup = id.clone();
            let is_operator = self
                .db(move |s| s.get(&lookup))
                .await?
                .is_some_and(|r| operator_of(&r));
            if !(allowed && is_operator) {
                let d = Denial {
                    code: DenyCode::VoteRefused,
                    message: if is_operator {
                        format!("a vote on request {id} at the console needs your passkey")
                    } else {
                        format!(
                            "a peer vote on request {id} needs your passkey: the sign-in alone never counts as a peer"
                        )
                    },
                    agent: None,
                };
                return Err(self.refuse_admin(&caller, &what, d).await);
            }
        }
        let voter_uids = state
            .config
            .approvers
            .get(&approver)
            .map(|a| a.uids.clone())
            .unwrap_or_default();
        let voter = Voter {
            name: &approver,
            uids: &voter_uids,
            subject: caller.console().map(|u| u.subject.as_str()),
        };
        let serial = self.admin.lock().await;
        for _ in 0..crate::store::MAX_SWAPS {
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
            if seen.as_ref().is_some_and(|d| *d != r.digest) {
                let d = Denial {
                    code: DenyCode::VoteRefused,
                    message: format!(
                        "request {id} changed since you looked at it; nothing was recorded (look again with `mandate approvals list`)"
                    ),
                    agent: None,
                };
                return Err(self.refuse_admin(&caller, &what, d).await);
            }
            let (mut next, outcome) = match cast(&state, &r, &voter, approve, note.clone(), now) {
                Ok(x) => x,
                Err(d) => return Err(self.refuse_admin(&caller, &what, d).await),
            };
            // This daemon authenticated the approver (the kernel said who): it vouches for the
            // vote, so that the daemon which redeems it can tell it from a forged row.
            if next.votes.len() > r.votes.len() {
                let i = next.votes.len() - 1;
                let mut v = next.votes[i].clone();
                v.via = caller.console().map(|u| crate::approval::Via {
                    oidc_subject: u.subject.clone(),
                    passkey: u.passkey.clone(),
                });
                crate::approval::proof::sign(&next, &mut v, &self.parts.vote_key);
                next.votes[i] = v;
            }
            let (kind, decision, have, need) = tally(&r, &outcome);
            let rec = vote_record(kind, &caller, &approver, &id, &r, note.clone(), &decision);
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
        Err(crate::store::StoreError::Contended(id.to_string()).into())
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
                Caller::Console(_) => return Err(BrokerError::Denied(d)),
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
}

/// The vote applied to `r`, with the parties (the agent's and its operator's uids) from the
/// current config; a refused vote as the denial.
fn cast(
    state: &State,
    r: &ApprovalRequest,
    voter: &Voter<'_>,
    approve: bool,
    note: Option<String>,
    now: i64,
) -> Result<(ApprovalRequest, VoteOutcome), Denial> {
    let agent = state.config.agents.get(&r.binding.agent);
    let agent_uids = agent.map(|a| a.uids.clone()).unwrap_or_default();
    let operator_uids = agent
        .and_then(|a| a.operator.as_ref())
        .and_then(|o| state.config.approvers.get(o))
        .map(|o| o.uids.clone())
        .unwrap_or_default();
    let parties = Parties {
        agent_uids: &agent_uids,
        operator_uids: &operator_uids,
    };
    // A vote is signed, and the signature counts wherever the request is redeemed: sign only
    // what this daemon can vouch for, a request that is what its own config would have opened.
    let refuse = |why: String| Denial {
        code: DenyCode::VoteRefused,
        message: format!(
            "cannot vote on request {}: {why}; nothing was recorded",
            r.id
        ),
        agent: None,
    };
    if r.digest != r.binding.digest() {
        return Err(refuse(
            "it does not match its own binding (the store was edited)".into(),
        ));
    }
    match crate::broker::decision::expected_approval(state, &r.binding) {
        Ok(expected) if expected == r.requirement => {}
        Ok(expected) => {
            return Err(refuse(format!(
                "it asks for {}, but its profile needs {expected} here",
                r.requirement
            )));
        }
        Err(why) => return Err(refuse(why)),
    }
    let use_within = state.config.approvals.use_within.as_secs() as i64;
    r.vote(voter, &parties, approve, note, now, use_within)
        .map_err(|e| Denial {
            code: DenyCode::VoteRefused,
            message: e.to_string(),
            agent: None,
        })
}

/// The vote's record kind and decision, and the approvals it leaves (had, needed).
fn tally(r: &ApprovalRequest, outcome: &VoteOutcome) -> (Kind, String, usize, usize) {
    match outcome {
        VoteOutcome::Counted { have, need } => (Kind::Approved, "counted".to_owned(), *have, *need),
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
    }
}

/// The record of one vote.
fn vote_record(
    kind: Kind,
    caller: &Caller,
    approver: &str,
    id: &ApprovalId,
    r: &ApprovalRequest,
    note: Option<String>,
    decision: &str,
) -> Record {
    let mut rec = Record::new(kind);
    rec.approval_id = Some(id.to_string());
    rec.agent = Some(r.binding.agent.clone());
    rec.profile = Some(r.binding.profile.clone());
    rec.digest = Some(r.digest.clone());
    rec.approver = Some(approver.to_owned());
    rec.uid = caller.uid();
    rec.pid = caller.pid();
    crate::broker::records::console_fields(&mut rec, caller);
    rec.note = note;
    rec.decision = Some(decision.to_owned());
    rec
}

/// What approving `r` lets the session do that needs a human: the classified actions its
/// profile opts into, by class, and the managed policies it passes (not analysed). `null` when
/// the profile changed since the request (the approval could not be used anyway).
fn unlocks(state: &State, r: &ApprovalRequest) -> serde_json::Value {
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
        "policy_sha256": r.binding.policy_sha256,
        "uid": r.uid,
        "host": r.host,
    })
}
