//! Audit records besides the mint's own: the fields every record of a request shares,
//! refusals (within each agent's record budget, counted toward its breaker), refused human
//! actions, and the deferred counts of coalesced deliveries and suppressed refusals.

use super::decision::Grant;
use super::{Broker, BrokerError, Caller, Denial, volume};
use crate::audit::{Kind, Record};
use crate::aws::Issuer;

/// The fields every record of one request carries: who, which profile, policy and role, why.
pub(super) fn base_record(
    kind: Kind,
    caller: &Caller,
    grant: &Grant,
    reason: &Option<String>,
) -> Record {
    let mut r = Record::new(kind);
    r.agent = Some(grant.agent().to_owned());
    r.uid = caller.uid();
    r.pid = caller.pid();
    r.profile = Some(grant.profile_name().to_owned());
    r.profile_sha256 = Some(grant.profile().profile_sha256.clone());
    r.policy_sha256 = Some(grant.profile().policy.sha256().to_owned());
    r.role = Some(grant.role().arn.clone());
    r.reason = reason.clone();
    r
}

/// A record of a human's action: who (approver, uid, pid) did `decision`.
pub(super) fn admin_record(
    kind: Kind,
    caller: &Caller,
    approver: String,
    decision: &str,
) -> Record {
    let mut r = Record::new(kind);
    r.approver = Some(approver);
    r.uid = caller.uid();
    r.pid = caller.pid();
    r.decision = Some(decision.into());
    console_fields(&mut r, caller);
    r
}

/// Who acted at the console: the provider's subject and the confirming passkey.
pub(super) fn console_fields(r: &mut Record, caller: &Caller) {
    if let Some(u) = caller.console() {
        r.oidc_subject = Some(u.subject.clone());
        r.passkey = u.passkey.clone();
    }
}

impl<I: Issuer> Broker<I> {
    /// Audits a denial, counts it toward the agent's breaker, and returns it as the error.
    pub(super) async fn refuse(
        &self,
        caller: &Caller,
        profile: &str,
        reason: Option<String>,
        d: Denial,
    ) -> BrokerError {
        let mut r = Record::new(Kind::Denied);
        r.agent = d.agent.clone();
        r.uid = caller.uid();
        r.pid = caller.pid();
        r.profile = Some(profile.to_owned());
        r.reason = reason;
        r.decision = Some("deny".into());
        r.code = Some(d.code.as_str().into());
        r.message = Some(d.message.clone());
        // One agent (or unknown uid) cannot make the log grow without bound by being refused:
        // over its record budget, refusals are counted into the next record written.
        let who = match (&d.agent, caller.uid()) {
            (Some(a), _) => volume::Who::Agent(a.clone()),
            (None, Some(uid)) => volume::Who::Uid(uid),
            (None, None) => volume::Who::Unknown,
        };
        match self.volume.refusal(&who, self.now()) {
            None => {}
            Some(suppressed) => {
                if suppressed > 0 {
                    r.count = Some(suppressed + 1);
                    r.message = Some(format!(
                        "{} ({suppressed} earlier refusals of {who} over the record budget were counted here, not recorded one by one)",
                        d.message
                    ));
                }
                if let Err(e) = self.audit.append_durable(r).await {
                    return e.into();
                }
            }
        }
        if let Some(agent) = &d.agent
            && d.code.counts_toward_breaker()
            && let Err(e) = self.count_denial(agent).await
        {
            return e;
        }
        BrokerError::Denied(d)
    }

    /// Audits a refused human action (who tried what) and returns it as the error.
    pub(super) async fn refuse_admin(&self, caller: &Caller, what: &str, d: Denial) -> BrokerError {
        let mut r = Record::new(Kind::Denied);
        r.uid = caller.uid();
        r.pid = caller.pid();
        if let Caller::Token { agent } = caller {
            r.agent = Some(agent.clone());
        }
        console_fields(&mut r, caller);
        r.decision = Some("deny".into());
        r.code = Some(d.code.as_str().into());
        r.message = Some(format!("{what}: {}", d.message));
        if let Err(e) = self.audit.append_durable(r).await {
            return e.into();
        }
        BrokerError::Denied(d)
    }

    /// Writes the counts of delivery windows that have closed (all of them with `force`, at
    /// shutdown). The daemon calls it every few seconds.
    pub async fn flush_deliveries(&self, force: bool) -> Result<(), BrokerError> {
        let window = self.state().config.audit.delivery_window;
        for r in self.volume.close_expired(self.now(), window, force) {
            self.audit.append(r).await?;
        }
        // Refusals counted over their record budget are written, in one record per agent.
        for (who, n) in self.volume.take_suppressed() {
            let mut r = Record::new(Kind::Denied);
            match &who {
                volume::Who::Agent(a) => r.agent = Some(a.clone()),
                volume::Who::Uid(u) => r.uid = Some(*u),
                volume::Who::Unknown => {}
            }
            r.count = Some(n);
            r.code = Some("suppressed".into());
            r.message = Some(format!(
                "{n} refusals of {who} over the record budget (counted, not recorded one by one)"
            ));
            self.audit.append(r).await?;
        }
        Ok(())
    }
}
