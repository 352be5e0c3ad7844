//! One credential request, top-down. [`Broker::credentials`]: the audit log is writable, then
//! [`authorize`] decides who is asking, which profile, whether the stop buttons (pause,
//! breaker, revocation) allow it, the duration and whether a human must approve; the approval
//! gate comes next for those that need one. [`Broker::issue`] then: the cache (single flight),
//! the limits, the mint at STS between its two durable audit records, a last look at the stop
//! buttons, and delivery.

use std::sync::Arc;

use super::cache::Entry;
use super::decision::{Decision, Grant, authorize};
use super::records::base_record;
use super::{Broker, BrokerError, Caller, CredRequest, Issued, State, random_id};
use crate::approval::ApprovalId;
use crate::audit::{AuditError, Kind, Record};
use crate::aws::{AssumeRoleInput, Credentials, Issuer};
use crate::clock;
use crate::config::Limits;
use crate::profile::BROKER_TAG_KEYS;
use crate::store::SessionInfo;

impl<I: Issuer> Broker<I> {
    /// The whole lifecycle for one credential request.
    pub async fn credentials(
        &self,
        caller: Caller,
        req: CredRequest,
    ) -> Result<Issued, BrokerError> {
        self.audit_available()?;
        // Team mode: fail closed when the view of the shared stop buttons is not current.
        self.fresh().map_err(BrokerError::Stale)?;
        let state = self.state();
        let controls = self.controls();
        match authorize(&state, &controls, &caller, &req) {
            Decision::Granted(g) => self.issue(&state, caller, g, req.reason, None).await,
            Decision::NeedsApproval(c) => self.approval_gate(&state, caller, c, req).await,
            Decision::Denied(d) => {
                tracing::debug!(uid = ?caller.uid(), profile = %req.profile, code = d.code.as_str(), "denied");
                Err(self
                    .refuse(&caller, &req.profile, req.reason.clone(), d)
                    .await)
            }
        }
    }

    /// A session for an authorized grant: the one another caller just minted for the same
    /// key, or a new one from STS.
    pub(super) async fn issue(
        &self,
        state: &State,
        caller: Caller,
        grant: Grant,
        reason: Option<String>,
        approval_id: Option<ApprovalId>,
    ) -> Result<Issued, BrokerError> {
        // The cache, single flight: one caller per key mints, the others wait and deliver.
        let mut flight = self.single_flight(&grant).await;
        if let Some(entry) = flight
            .entry()
            .filter(|e| self.servable_entry(&state.config.cache, e))
        {
            return self.deliver(&caller, &grant, &reason, entry).await;
        }
        if let Err(d) = self.check_limits(grant.agent(), &state.config.limits) {
            drop(flight);
            return Err(self.refuse(&caller, grant.profile_name(), reason, d).await);
        }
        // The mint, between its `request` and `issued` records.
        let mint = self.start_mint(&caller, &grant, &reason, &approval_id, &state.config.limits);
        self.audit.append_durable(mint.request_record()).await?;
        let creds = self.assume_role(&mint).await?;
        self.audit_available()?;
        self.withhold_if_stopped(&mint, &creds).await?;
        // Invariant 1: nothing leaves before its `issued` record is durable.
        self.audit
            .append_durable(mint.issued_record(&creds))
            .await?;
        // Delivery: cached for the next caller, indexed as live, handed over.
        flight.fill(mint.cache_entry(&creds));
        drop(flight);
        self.index_session(mint.session_info(&creds)).await;
        Ok(mint.issued(creds))
    }

    /// Refuses everything once an audit write has failed.
    fn audit_available(&self) -> Result<(), AuditError> {
        if self.audit.is_failed() {
            return Err(AuditError::Unavailable("an earlier write failed".into()));
        }
        Ok(())
    }

    /// A new request id, counted toward the agent's rate limit, and the session's names.
    fn start_mint<'a>(
        &self,
        caller: &'a Caller,
        grant: &'a Grant,
        reason: &'a Option<String>,
        approval_id: &'a Option<ApprovalId>,
        limits: &Limits,
    ) -> Mint<'a> {
        let request_id = random_id();
        self.record_issuance(grant.agent(), limits);
        let session_name = format!("mandate-{}-{}", grant.agent(), &request_id[..12]);
        let session_name: String = session_name.chars().take(64).collect();
        let source_identity = format!("mandate-{}", grant.agent());
        Mint {
            caller,
            grant,
            reason,
            approval_id,
            request_id,
            session_name,
            source_identity,
        }
    }

    /// The session from STS; a failure is audited (best effort) and returned.
    async fn assume_role(&self, mint: &Mint<'_>) -> Result<Arc<Credentials>, BrokerError> {
        match self.issuer.assume_role(mint.input()).await {
            Ok(c) => Ok(Arc::new(c)),
            Err(e) => {
                let mut r = mint.record(Kind::Denied);
                r.decision = Some("error".into());
                r.code = Some("sts_error".into());
                r.message = Some(e.to_string());
                let _ = self.audit.append_durable(r).await;
                Err(e.into())
            }
        }
    }

    /// A revoke or pause that landed while STS was minting: the session never leaves.
    async fn withhold_if_stopped(
        &self,
        mint: &Mint<'_>,
        creds: &Credentials,
    ) -> Result<(), BrokerError> {
        let grant = mint.grant;
        let Some(d) =
            self.controls()
                .stopped(grant.agent(), grant.profile_name(), Some(&mint.request_id))
        else {
            return Ok(());
        };
        let mut r = mint.record(Kind::Denied);
        r.access_key_id = Some(creds.access_key_id.clone());
        r.decision = Some("withheld".into());
        r.code = Some(d.code.as_str().into());
        r.message = Some(format!("minted, then withheld: {}", d.message));
        self.audit.append_durable(r).await?;
        Err(BrokerError::Denied(d))
    }
}

/// One session being minted: the request it is for and the names it gets at STS.
struct Mint<'a> {
    caller: &'a Caller,
    grant: &'a Grant,
    reason: &'a Option<String>,
    approval_id: &'a Option<ApprovalId>,
    request_id: String,
    session_name: String,
    source_identity: String,
}

impl Mint<'_> {
    /// A record of this mint, with the fields every one of them carries.
    fn record(&self, kind: Kind) -> Record {
        let mut r = base_record(kind, self.caller, self.grant, self.reason);
        r.approval_id = self.approval_id.as_ref().map(|i| i.to_string());
        r.request_id = Some(self.request_id.clone());
        r
    }

    /// The `request` record, durable before STS is asked.
    fn request_record(&self) -> Record {
        let mut r = self.record(Kind::Request);
        r.session_name = Some(self.session_name.clone());
        r.source_identity = Some(self.source_identity.clone());
        r.duration_seconds = Some(self.grant.duration_seconds());
        r.decision = Some("allow".into());
        r
    }

    /// The `issued` record, durable before the session leaves.
    fn issued_record(&self, creds: &Credentials) -> Record {
        let mut r = self.record(Kind::Issued);
        r.session_name = Some(self.session_name.clone());
        r.source_identity = Some(self.source_identity.clone());
        r.access_key_id = Some(creds.access_key_id.clone());
        r.expiration = Some(clock::rfc3339(creds.expiration));
        r.duration_seconds = Some(self.grant.duration_seconds());
        r
    }

    /// What STS is asked for: the role, the profile's session policy, managed policies and
    /// tags, and the broker's own (transitive) tags.
    fn input(&self) -> AssumeRoleInput {
        let grant = self.grant;
        let p = &grant.profile().profile;
        let mut tags = vec![
            (BROKER_TAG_KEYS[0].to_owned(), grant.agent().to_owned()),
            (BROKER_TAG_KEYS[1].to_owned(), p.name.as_str().to_owned()),
            (BROKER_TAG_KEYS[2].to_owned(), self.request_id.clone()),
            (
                BROKER_TAG_KEYS[3].to_owned(),
                grant.profile().access_type().to_owned(),
            ),
        ];
        tags.extend(p.tags.iter().map(|(k, v)| (k.clone(), v.clone())));
        AssumeRoleInput {
            role_arn: grant.role().arn.clone(),
            session_name: self.session_name.clone(),
            policy: grant.profile().policy.as_json().to_owned(),
            policy_arns: p
                .managed_policies
                .iter()
                .map(|a| a.as_str().to_owned())
                .collect(),
            duration_seconds: grant.duration_seconds(),
            source_identity: self.source_identity.clone(),
            tags,
            transitive_tag_keys: BROKER_TAG_KEYS.iter().map(|k| (*k).to_owned()).collect(),
        }
    }

    fn cache_entry(&self, creds: &Arc<Credentials>) -> Entry {
        Entry {
            credentials: creds.clone(),
            duration_seconds: self.grant.duration_seconds(),
            request_id: self.request_id.clone(),
        }
    }

    /// The session's line in the live-session index.
    fn session_info(&self, creds: &Credentials) -> SessionInfo {
        SessionInfo {
            agent: self.grant.agent().to_owned(),
            profile: self.grant.profile_name().to_owned(),
            role: self.grant.role().name.as_str().to_owned(),
            session_name: self.session_name.clone(),
            access_key_id: creds.access_key_id.clone(),
            expiration: clock::rfc3339(creds.expiration),
            request_id: self.request_id.clone(),
            daemon: String::new(),
            expires_at: creds.expiration,
        }
    }

    /// The new session, handed to the caller.
    fn issued(self, creds: Arc<Credentials>) -> Issued {
        let grant = self.grant;
        tracing::debug!(
            agent = %grant.agent(),
            profile = %grant.profile().profile.name,
            request_id = %self.request_id,
            access_key_id = %creds.access_key_id,
            duration_seconds = grant.duration_seconds(),
            "issued a new session"
        );
        Issued {
            credentials: creds,
            request_id: self.request_id,
            agent: grant.agent().to_owned(),
            profile: grant.profile_name().to_owned(),
            cached: false,
            approval_id: self.approval_id.clone(),
        }
    }
}
