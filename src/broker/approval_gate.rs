//! The approval gate, for a profile that needs a human: deliver the approved session from the
//! cache, redeem a matching approval (exactly once), report the pending request, or open one.

use super::decision::Candidate;
use super::{
    Broker, BrokerError, Caller, CredRequest, Denial, DenyCode, Issued, Pending, State, random_id,
};
use crate::approval::{ApprovalId, ApprovalRequest, RedeemError, Stage, Status};
use crate::audit::{Kind, Record};
use crate::aws::Issuer;
use crate::clock;
use crate::store::{Opened, StoreError};

/// Proof that the store marked an approval used for this request (built only by the broker's
/// redemption path).
#[derive(Debug)]
pub(super) struct Redemption {
    id: ApprovalId,
    digest: String,
}

impl Redemption {
    pub(super) fn digest(&self) -> &str {
        &self.digest
    }
}

fn denial(code: DenyCode, message: String, agent: &str) -> Denial {
    Denial {
        code,
        message,
        agent: Some(agent.to_owned()),
    }
}

/// One request at the gate: who asks, for what, as which agent, its digest, and the time.
struct AtGate<'a> {
    caller: &'a Caller,
    req: &'a CredRequest,
    agent: &'a str,
    digest: &'a str,
    /// What this daemon's config says the request needs.
    requirement: &'a crate::approval::Requirement,
    now: i64,
}

impl<I: Issuer> Broker<I> {
    /// A request for a profile that needs a human: deliver the approved session from the cache,
    /// redeem a matching approval, report the pending one, or open a new request.
    pub(super) async fn approval_gate(
        &self,
        state: &State,
        caller: Caller,
        c: Candidate,
        req: CredRequest,
    ) -> Result<Issued, BrokerError> {
        if let Some(issued) = self.cached(state, &caller, c.grant(), &req.reason).await? {
            return Ok(issued);
        }
        let now = self.now();
        let digest = c.binding().digest();
        let agent = c.grant().agent().to_owned();
        let at = AtGate {
            caller: &caller,
            req: &req,
            agent: &agent,
            digest: &digest,
            requirement: c.requirement(),
            now,
        };
        for r in self.approvals_for(&at).await? {
            match r.status(now) {
                Status::Approved => {
                    if let Some(proof) = self.redeem_approved(state, &at, r).await? {
                        let grant = c.redeemed(&proof);
                        return self
                            .issue(state, caller, grant, req.reason, Some(proof.id))
                            .await;
                    }
                }
                status => {
                    if let Some(e) = self.not_approved(&at, &r, status).await {
                        return Err(e);
                    }
                }
            }
        }
        self.open_request(caller, c, req, now).await
    }

    /// Audits and returns the refusal of the request at the gate.
    async fn refuse_at_gate(
        &self,
        at: &AtGate<'_>,
        code: DenyCode,
        message: String,
    ) -> BrokerError {
        let d = denial(code, message, at.agent);
        self.refuse(at.caller, &at.req.profile, at.req.reason.clone(), d)
            .await
    }

    /// The approval requests that may let this request through: the one the caller named (if
    /// it is this agent's), or every one for this exact request (its digest).
    async fn approvals_for(&self, at: &AtGate<'_>) -> Result<Vec<ApprovalRequest>, BrokerError> {
        let agent = at.agent;
        match &at.req.approval_id {
            Some(id) => {
                let id = id.clone();
                match self.db(move |s| s.get(&id)).await? {
                    Some(r) if r.binding.agent == agent => Ok(vec![r]),
                    _ => {
                        let message = format!(
                            "agent {agent} has no approval request {}",
                            at.req
                                .approval_id
                                .as_ref()
                                .map(|i| i.as_str())
                                .unwrap_or("")
                        );
                        Err(self
                            .refuse_at_gate(at, DenyCode::UnknownApproval, message)
                            .await)
                    }
                }
            }
            None => {
                let (a, d) = (agent.to_owned(), at.digest.to_owned());
                Ok(self.db(move |s| s.by_digest(&a, &d)).await?)
            }
        }
    }

    /// An approved request, redeemed for this one; `None` when another caller used it first
    /// and this caller did not name it (the next one may do).
    async fn redeem_approved(
        &self,
        state: &State,
        at: &AtGate<'_>,
        r: ApprovalRequest,
    ) -> Result<Option<Redemption>, BrokerError> {
        // Limits first, so that a refusal does not use up the approval.
        if r.digest == at.digest
            && let Err(d) = self.check_limits(at.agent, &state.config.limits)
        {
            return Err(self
                .refuse(at.caller, &at.req.profile, at.req.reason.clone(), d)
                .await);
        }
        // What the store says is not trusted: only validly signed votes release anything.
        let use_within = state.config.approvals.use_within.as_secs() as i64;
        let is_approver = |name: &str| state.config.approvers.contains_key(name);
        let expect = crate::approval::proof::Expect {
            requirement: at.requirement,
            is_approver: &is_approver,
            oidc_only_operator: state
                .config
                .console
                .as_ref()
                .is_some_and(|c| c.oidc_only_operator_votes),
        };
        if r.digest == at.digest
            && let Err(why) = crate::approval::proof::check_approved(
                &r,
                &self.vote_trust(state),
                &expect,
                use_within,
                at.now,
            )
        {
            tracing::error!(id = %r.id, agent = at.agent, why = %why, "an approved request in the store does not carry valid signed votes; refusing it");
            let message = format!("approval request {} cannot be used: {why}", r.id);
            return Err(self
                .refuse_at_gate(at, DenyCode::ApprovalClosed, message)
                .await);
        }
        match self.redeem(r, at.digest, at.now).await? {
            Ok(proof) => Ok(Some(proof)),
            Err(e) if at.req.approval_id.is_some() => Err(self
                .refuse_at_gate(at, DenyCode::ApprovalClosed, e.to_string())
                .await),
            Err(_) => Ok(None),
        }
    }

    /// What a request that is not approved tells the caller: it is pending, its rejection
    /// stands, or (when the caller named it) it is closed; `None` to look at the next one.
    async fn not_approved(
        &self,
        at: &AtGate<'_>,
        r: &ApprovalRequest,
        status: Status,
    ) -> Option<BrokerError> {
        let message = match status {
            Status::Pending => {
                return Some(BrokerError::Pending(pending_of(
                    r,
                    self.state().config.console.as_ref(),
                )));
            }
            // The same request again after a rejection: the rejection stands (with its
            // note) while the rejected request would still have been pending; it never
            // silently opens a new one.
            Status::Rejected if at.now < r.pending_until => rejection_message(r),
            closed if at.req.approval_id.is_some() => match &r.stage {
                Stage::Rejected { .. } => rejection_message(r),
                _ => format!(
                    "approval request {} is {}; nothing was issued",
                    r.id,
                    closed.as_str()
                ),
            },
            _ => return None,
        };
        Some(
            self.refuse_at_gate(at, DenyCode::ApprovalClosed, message)
                .await,
        )
    }

    /// Marks an approved request used, exactly once across every caller (compare and swap).
    async fn redeem(
        &self,
        mut r: ApprovalRequest,
        digest: &str,
        now: i64,
    ) -> Result<Result<Redemption, RedeemError>, StoreError> {
        for _ in 0..crate::store::MAX_SWAPS {
            let next = match r.redeem(digest, &random_id(), now) {
                Ok(n) => n,
                Err(e) => return Ok(Err(e)),
            };
            let expected = r.version;
            let id = r.id.clone();
            let (won, current) = self
                .db(move |s| {
                    let won = s.replace(expected, &next)?;
                    let current = if won { None } else { s.get(&id)? };
                    Ok((won, current))
                })
                .await?;
            if won {
                return Ok(Ok(Redemption {
                    id: r.id,
                    digest: digest.to_owned(),
                }));
            }
            match current {
                Some(c) => r = c,
                None => {
                    return Ok(Err(RedeemError::NotApproved {
                        id: r.id,
                        status: "gone",
                    }));
                }
            }
        }
        Err(StoreError::Contended(r.id.to_string()))
    }

    /// Opens an approval request for this exact request (or reports the one already open),
    /// audits it and tells the approvers.
    async fn open_request(
        &self,
        caller: Caller,
        c: Candidate,
        req: CredRequest,
        now: i64,
    ) -> Result<Issued, BrokerError> {
        let cfg = self.state().config.approvals;
        let agent = c.grant().agent().to_owned();
        let mut r = ApprovalRequest::new(
            ApprovalId::random(),
            c.binding().clone(),
            c.requirement().clone(),
            caller.uid(),
            now,
            cfg.pending_ttl.as_secs() as i64,
        );
        r.host = Some(super::shared::hostname());
        // Count, deduplicate and insert as one step in the store, so that concurrent requests
        // can neither exceed max_pending nor open two requests for the same binding.
        let stored = r.clone();
        let max = cfg.max_pending;
        match self.db(move |s| s.open_pending(&stored, max, now)).await? {
            Opened::Inserted => {}
            Opened::Existing(existing) => {
                return Err(BrokerError::Pending(pending_of(
                    &existing,
                    self.state().config.console.as_ref(),
                )));
            }
            Opened::Full(open) => {
                let d = Denial {
                    code: DenyCode::TooManyPending,
                    message: format!(
                        "agent {agent} already has {open} approval requests waiting (the limit is {}); wait for a decision",
                        cfg.max_pending
                    ),
                    agent: Some(agent.clone()),
                };
                return Err(self.refuse(&caller, &req.profile, req.reason, d).await);
            }
        }
        // If this write fails the daemon stops issuing altogether (audit unavailable), so the
        // stored request can never lead to a credential without its record.
        self.audit
            .append_durable(pending_record(&caller, &agent, &r))
            .await?;
        let pending = pending_of(&r, self.state().config.console.as_ref());
        self.notify_pending(&agent, &r);
        tracing::info!(id = %r.id, agent = %pending.agent, profile = %pending.profile, "approval request pending");
        Err(BrokerError::Pending(pending))
    }

    fn notify_pending(&self, agent: &str, r: &ApprovalRequest) {
        self.parts.notifier.send(serde_json::json!({
            "event": "approval_pending",
            "id": r.id,
            "agent": agent,
            "profile": r.binding.profile,
            "role": r.binding.role_arn,
            "duration_seconds": r.binding.duration_seconds,
            "reason": r.binding.reason,
            "needs": r.requirement.to_string(),
            "expires": clock::rfc3339(r.pending_until),
            "console_url": self.state().config.console.as_ref().map(|c| c.request_link(r.id.as_str())),
            "approve": format!("mandate approve {}", r.id),
            "reject": format!("mandate reject {}", r.id),
        }));
    }
}

/// The `pending` record of a request just opened.
fn pending_record(caller: &Caller, agent: &str, r: &ApprovalRequest) -> Record {
    let mut rec = Record::new(Kind::Pending);
    rec.approval_id = Some(r.id.to_string());
    rec.agent = Some(agent.to_owned());
    rec.uid = caller.uid();
    rec.pid = caller.pid();
    rec.profile = Some(r.binding.profile.clone());
    rec.profile_sha256 = Some(r.binding.profile_sha256.clone());
    rec.policy_sha256 = Some(r.binding.policy_sha256.clone());
    rec.role = Some(r.binding.role_arn.clone());
    rec.duration_seconds = Some(r.binding.duration_seconds);
    rec.reason = r.binding.reason.clone();
    rec.digest = Some(r.digest.clone());
    rec.decision = Some("pending".into());
    rec.message = Some(format!("needs {}", r.requirement));
    rec
}

/// "approval request ID is rejected by NAME: NOTE; nothing was issued".
fn rejection_message(r: &ApprovalRequest) -> String {
    let by = match &r.stage {
        Stage::Rejected { by, .. } => by.as_str(),
        _ => "an approver",
    };
    let note = r
        .votes
        .iter()
        .rev()
        .find(|v| !v.approve)
        .and_then(|v| v.note.as_deref())
        .map(|n| format!(": {n}"))
        .unwrap_or_default();
    format!(
        "approval request {} is rejected by {by}{note}; nothing was issued",
        r.id
    )
}

fn pending_of(r: &ApprovalRequest, console: Option<&crate::config::ConsoleConfig>) -> Pending {
    let have = r.votes.iter().filter(|v| v.approve).count();
    Pending {
        id: r.id.clone(),
        agent: r.binding.agent.clone(),
        profile: r.binding.profile.clone(),
        requirement: r.requirement.clone(),
        pending_until: r.pending_until,
        have: have.min(r.needed()),
        need: r.needed(),
        console_url: console.map(|c| c.request_link(r.id.as_str())),
    }
}
