//! The request lifecycle: authenticate the caller, authorize (agent ↔ profile), approval gate,
//! cache or mint, audit, respond. Plain async code over the [`Issuer`] trait.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use crate::approval::{ApprovalId, ApprovalRequest, Binding, Requirement};
use crate::audit::{AuditError, AuditLog, Kind, Record};
use crate::aws::{AssumeRoleInput, Credentials, IamError, Issuer, Revoker, StsError};
use crate::clock;
use crate::config::{CachePolicy, Config, Loaded, Role};
use crate::notify::Notifier;
use crate::policy::CompiledProfile;
use crate::profile::{Approval, BROKER_TAG_KEYS};
use crate::revoke::{Pause, Revocation, Scope, Trip};
use crate::store::SessionInfo;
use crate::store::{Opened, Store, StoreError};

mod control;
mod volume;
pub use control::{Controls, RevokeReport, VoteReport};

/// Who is asking: never what the request claims.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// A Unix socket peer, as the kernel reports it (SO_PEERCRED).
    Peer { uid: u32, pid: Option<i32> },
    /// An HTTP client that presented this agent's token (checked by the transport).
    Token { agent: String },
}

impl Caller {
    pub fn uid(&self) -> Option<u32> {
        match self {
            Caller::Peer { uid, .. } => Some(*uid),
            Caller::Token { .. } => None,
        }
    }
    pub fn pid(&self) -> Option<i32> {
        match self {
            Caller::Peer { pid, .. } => *pid,
            Caller::Token { .. } => None,
        }
    }
}

/// What the caller asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CredRequest {
    pub profile: String,
    /// Which agent to act as when the uid belongs to several.
    pub agent: Option<String>,
    pub reason: Option<String>,
    /// Shorter than the profile's duration (never longer).
    pub duration_seconds: Option<u32>,
    /// Redeem (or wait for) this approval request.
    pub approval_id: Option<ApprovalId>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DenyCode {
    /// The uid is not bound to any (or the named) agent.
    UnknownCaller,
    /// No such profile.
    UnknownProfile,
    /// The agent is not bound to the profile.
    NotBound,
    /// The request itself is malformed.
    BadRequest,
    /// The global kill switch is on.
    Paused,
    /// The agent's circuit breaker tripped.
    BreakerOpen,
    /// A human revoked the agent, the profile or everything.
    Revoked,
    /// Too many new sessions in the window.
    RateLimited,
    /// Too many unexpired sessions.
    TooManySessions,
    /// Too many approval requests waiting.
    TooManyPending,
    /// The approval request was rejected, expired, already used or bound to another request.
    ApprovalClosed,
    /// No such approval request (or not this agent's).
    UnknownApproval,
    /// The caller may not approve, revoke, pause or reset (not a declared approver).
    NotApprover,
    /// The vote is not allowed (see the message).
    VoteRefused,
}

impl DenyCode {
    pub const ALL: [DenyCode; 14] = [
        DenyCode::UnknownCaller,
        DenyCode::UnknownProfile,
        DenyCode::NotBound,
        DenyCode::BadRequest,
        DenyCode::Paused,
        DenyCode::BreakerOpen,
        DenyCode::Revoked,
        DenyCode::RateLimited,
        DenyCode::TooManySessions,
        DenyCode::TooManyPending,
        DenyCode::ApprovalClosed,
        DenyCode::UnknownApproval,
        DenyCode::NotApprover,
        DenyCode::VoteRefused,
    ];

    /// Whether an error code on the wire is a refusal (exit 5) rather than an outage.
    pub fn is_refusal_code(code: &str) -> bool {
        code == "approval_pending" || DenyCode::ALL.iter().any(|d| d.as_str() == code)
    }

    /// Whether this denial counts toward the agent's circuit breaker (an agent that keeps
    /// pushing); the breaker and the global pause themselves do not.
    pub fn counts_toward_breaker(self) -> bool {
        !matches!(self, DenyCode::Paused | DenyCode::BreakerOpen)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DenyCode::UnknownCaller => "unknown_caller",
            DenyCode::UnknownProfile => "unknown_profile",
            DenyCode::NotBound => "not_bound",
            DenyCode::BadRequest => "bad_request",
            DenyCode::Paused => "paused",
            DenyCode::BreakerOpen => "breaker_open",
            DenyCode::Revoked => "revoked",
            DenyCode::RateLimited => "rate_limited",
            DenyCode::TooManySessions => "too_many_sessions",
            DenyCode::TooManyPending => "too_many_pending",
            DenyCode::ApprovalClosed => "approval_closed",
            DenyCode::UnknownApproval => "unknown_approval",
            DenyCode::NotApprover => "not_approver",
            DenyCode::VoteRefused => "vote_refused",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denial {
    pub code: DenyCode,
    pub message: String,
    /// The agent, when the caller was identified.
    pub agent: Option<String>,
}

/// Permission to mint one session. Only [`authorize`] can build one, and minting requires one,
/// so skipping the check does not compile.
#[derive(Clone, Debug)]
pub struct Grant {
    agent: String,
    profile: Arc<CompiledProfile>,
    role: Role,
    duration_seconds: u32,
    /// Whether the caller asked for a non-default duration (such requests bypass the cache).
    custom_duration: bool,
}

impl Grant {
    pub fn agent(&self) -> &str {
        &self.agent
    }
    pub fn profile(&self) -> &CompiledProfile {
        &self.profile
    }
    pub fn duration_seconds(&self) -> u32 {
        self.duration_seconds
    }
}

/// A grant that needs a human first: it becomes a [`Grant`] only through
/// [`Candidate::redeemed`], which needs the proof that an approval was consumed.
#[derive(Debug)]
pub struct Candidate {
    grant: Grant,
    requirement: Requirement,
    binding: Binding,
}

/// Proof that the store marked an approval used for this request (built only by the broker's
/// redemption path).
#[derive(Debug)]
struct Redemption {
    id: ApprovalId,
    digest: String,
}

impl Candidate {
    pub fn binding(&self) -> &Binding {
        &self.binding
    }
    pub fn requirement(&self) -> &Requirement {
        &self.requirement
    }
    fn redeemed(self, proof: &Redemption) -> Grant {
        debug_assert_eq!(proof.digest, self.binding.digest());
        self.grant
    }
}

/// The authorization result.
#[must_use]
#[derive(Debug)]
pub enum Decision {
    Granted(Grant),
    /// Allowed once a human approves this exact request.
    NeedsApproval(Candidate),
    Denied(Denial),
}

/// The validated config and compiled profiles, swapped as a whole on reload.
#[derive(Debug)]
pub struct State {
    pub config: Config,
    pub profiles: BTreeMap<String, Arc<CompiledProfile>>,
    /// The broker's base credentials are temporary: sessions are capped at one hour.
    pub base_is_temporary: bool,
    /// What approving a request for each profile unlocks (computed once per profile and config
    /// load, bounded by the number of profiles).
    unlocks: Mutex<HashMap<String, Arc<serde_json::Value>>>,
}

impl State {
    pub fn new(loaded: Loaded, base_is_temporary: bool) -> Self {
        State {
            profiles: loaded
                .profiles
                .into_iter()
                .map(|(k, v)| (k, Arc::new(v)))
                .collect(),
            config: loaded.config,
            base_is_temporary,
            unlocks: Mutex::new(HashMap::new()),
        }
    }

    /// `unlocks` of profile `name`, computed on first use.
    pub(crate) fn unlocks_of(
        &self,
        name: &str,
        compute: impl FnOnce(&CompiledProfile) -> serde_json::Value,
    ) -> Option<Arc<serde_json::Value>> {
        let c = self.profiles.get(name)?;
        let mut cache = self.unlocks.lock().unwrap_or_else(|e| e.into_inner());
        Some(
            cache
                .entry(name.to_owned())
                .or_insert_with(|| Arc::new(compute(c)))
                .clone(),
        )
    }
}

/// Pure authorization: identity from the uid, agent ↔ profile binding, the human stop buttons
/// (pause, breaker, revocation), duration, approval gate.
pub fn authorize(
    state: &State,
    controls: &Controls,
    caller: &Caller,
    req: &CredRequest,
) -> Decision {
    let deny = |code, message: String, agent: Option<&str>| {
        Decision::Denied(Denial {
            code,
            message,
            agent: agent.map(str::to_owned),
        })
    };
    let agent = match caller {
        Caller::Peer { uid, .. } => match state.config.agent_for_uid(*uid, req.agent.as_deref()) {
            Ok(a) => a,
            Err(m) => return deny(DenyCode::UnknownCaller, m, None),
        },
        Caller::Token { agent } => match state.config.agents.get(agent) {
            Some(a) if req.agent.as_ref().is_none_or(|r| r == agent) => a,
            _ => {
                return deny(
                    DenyCode::UnknownCaller,
                    format!("the token does not act as agent {agent}"),
                    None,
                );
            }
        },
    };
    let Some(profile) = state.profiles.get(&req.profile) else {
        return deny(
            DenyCode::UnknownProfile,
            format!("no profile named {}", crate::diag::quoted(&req.profile)),
            Some(&agent.name),
        );
    };
    if !agent.profiles.iter().any(|p| p.as_str() == req.profile) {
        return deny(
            DenyCode::NotBound,
            format!(
                "agent {} is not bound to profile {}",
                agent.name, req.profile
            ),
            Some(&agent.name),
        );
    }
    if let Some(d) = controls.stopped(&agent.name, &req.profile, None) {
        return Decision::Denied(d);
    }
    let Some(role) = state.config.roles.get(profile.profile.role.as_str()) else {
        return deny(
            DenyCode::UnknownProfile,
            format!("profile {} names an unknown role", req.profile),
            Some(&agent.name),
        );
    };
    let mut duration = profile
        .profile
        .duration
        .seconds()
        .min(role.max_session.seconds());
    if state.base_is_temporary {
        duration = duration.min(3600);
    }
    let mut custom_duration = false;
    if let Some(d) = req.duration_seconds {
        if !(900..=duration).contains(&d) {
            return deny(
                DenyCode::BadRequest,
                format!(
                    "duration {d} s is outside 900 to {duration} s, the range allowed for {}",
                    req.profile
                ),
                Some(&agent.name),
            );
        }
        custom_duration = d != duration;
        duration = d;
    }
    let grant = Grant {
        agent: agent.name.clone(),
        profile: profile.clone(),
        role: role.clone(),
        duration_seconds: duration,
        custom_duration,
    };
    let requirement = match profile.profile.approval {
        Approval::None => return Decision::Granted(grant),
        Approval::Operator => match &agent.operator {
            Some(op) => Requirement::Operator {
                operator: op.clone(),
            },
            // `config::load` refuses this; fail closed anyway.
            None => {
                return deny(
                    DenyCode::NotBound,
                    format!(
                        "profile {} needs the operator's approval and agent {} has no operator",
                        req.profile, agent.name
                    ),
                    Some(&agent.name),
                );
            }
        },
        Approval::Peers(n) => Requirement::Peers {
            n,
            operator: agent.operator.clone(),
        },
    };
    let binding = Binding {
        agent: agent.name.clone(),
        profile: req.profile.clone(),
        profile_sha256: profile.profile_sha256.clone(),
        policy_sha256: profile.policy.sha256().to_owned(),
        role_arn: role.arn.clone(),
        duration_seconds: duration,
        reason: req.reason.clone(),
    };
    Decision::NeedsApproval(Candidate {
        grant,
        requirement,
        binding,
    })
}

/// Whether a cached credential may still be served at `now` (Unix seconds).
pub fn servable(policy: &CachePolicy, expiration: i64, duration_seconds: u32, now: i64) -> bool {
    let remaining = expiration - now;
    let ahead = policy
        .refresh_ahead
        .as_secs()
        .min(u64::from(duration_seconds) / 2) as i64;
    remaining > ahead.max(policy.min_remaining.as_secs() as i64)
}

/// A request waiting for a human.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pending {
    pub id: ApprovalId,
    pub agent: String,
    pub profile: String,
    pub requirement: Requirement,
    /// Unix seconds.
    pub pending_until: i64,
    /// Approvals so far and needed.
    pub have: usize,
    pub need: usize,
}

impl Pending {
    pub fn message(&self) -> String {
        let who = match &self.requirement {
            Requirement::Operator { operator } => format!("ask {operator}"),
            Requirement::Peers { n, .. } => format!(
                "ask {} approver{} other than the operator",
                n,
                if *n == 1 { "" } else { "s" }
            ),
        };
        format!(
            "profile {} needs approval: request {} is pending ({}/{} approvals, expires {}); {who} to run `mandate approve {}`",
            self.profile,
            self.id,
            self.have,
            self.need,
            clock::rfc3339(self.pending_until),
            self.id
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("{}", .0.message)]
    Denied(Denial),
    #[error("{}", .0.message())]
    Pending(Pending),
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error(transparent)]
    Sts(#[from] StsError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "{0}; the revocation is in force for new issuance, but sessions already issued are not denied at AWS (fix the cause and run the same `mandate revoke --aws` again)"
    )]
    Iam(#[from] IamError),
}

impl BrokerError {
    pub fn code(&self) -> &'static str {
        match self {
            BrokerError::Denied(d) => d.code.as_str(),
            BrokerError::Pending(_) => "approval_pending",
            BrokerError::Audit(_) => "audit_unavailable",
            BrokerError::Sts(_) => "sts_error",
            BrokerError::Store(_) => "store_unavailable",
            BrokerError::Iam(_) => "iam_error",
        }
    }
    /// A refusal (exit 5) rather than an outage (exit 6).
    pub fn is_refusal(&self) -> bool {
        matches!(self, BrokerError::Denied(_) | BrokerError::Pending(_))
    }
}

/// A credential handed to a caller.
#[derive(Clone, Debug)]
pub struct Issued {
    pub credentials: Arc<Credentials>,
    pub request_id: String,
    pub agent: String,
    pub profile: String,
    pub cached: bool,
    /// The approval this issuance redeemed.
    pub approval_id: Option<ApprovalId>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct CacheKey {
    agent: String,
    /// The name as well as the hash: two profiles with identical content are still two
    /// profiles, and a session is tagged (`mandate-profile`) and audited with exactly one.
    profile: String,
    profile_sha256: String,
    role: String,
}
#[derive(Clone, Debug)]
struct Entry {
    credentials: Arc<Credentials>,
    duration_seconds: u32,
    request_id: String,
}

type Slot = Arc<tokio::sync::Mutex<Option<Entry>>>;

/// Seconds since the epoch; a function so tests can move time.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// What the broker needs besides STS: where approvals and stop buttons persist, how to deny at
/// AWS, whom to tell, and what time it is.
pub struct Parts {
    pub store: Arc<dyn Store>,
    pub revoker: Arc<dyn Revoker>,
    pub notifier: Notifier,
    pub clock: Clock,
}

impl Parts {
    /// An in-memory store, no AWS revocation, no notifications, the system clock.
    pub fn ephemeral() -> Parts {
        Parts {
            store: Arc::new(crate::store::SqliteStore::in_memory()),
            revoker: Arc::new(crate::aws::NoRevoker),
            notifier: Notifier::none(),
            clock: Arc::new(clock::unix_now),
        }
    }
}

pub struct Broker<I: Issuer> {
    state: RwLock<Arc<State>>,
    issuer: I,
    audit: AuditLog,
    cache: Mutex<HashMap<CacheKey, Slot>>,
    sessions: Mutex<Vec<SessionInfo>>,
    parts: Parts,
    controls: RwLock<Arc<Controls>>,
    counters: Mutex<HashMap<String, control::Counters>>,
    volume: volume::Volume,
    /// Serializes changes to revocations, trips and the pause (rare, human-driven).
    admin: tokio::sync::Mutex<()>,
}

/// 128 random bits, hex.
pub fn random_id() -> String {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).expect("the OS random source is available");
    crate::policy::hex(&b)
}

impl<I: Issuer> Broker<I> {
    /// A broker with an ephemeral approval store (tests and benchmarks).
    pub fn new(state: State, issuer: I, audit: AuditLog) -> Self {
        Self::with_parts(state, issuer, audit, Parts::ephemeral())
            .expect("an in-memory store is readable")
    }

    /// A broker over `parts`; revocations, trips and the pause come back from the store.
    pub fn with_parts(
        state: State,
        issuer: I,
        audit: AuditLog,
        parts: Parts,
    ) -> Result<Self, StoreError> {
        // Requests are kept 30 days (pending ones expire within 7); the audit log keeps them.
        parts.store.prune((parts.clock)() - 30 * 86_400)?;
        let controls = Controls {
            paused: parts.store.pause()?,
            revocations: parts.store.revocations()?,
            trips: parts
                .store
                .trips()?
                .into_iter()
                .map(|t| (t.agent.clone(), t))
                .collect(),
        };
        // `expires_at` is not in the stored JSON's serialized form; it comes back from the
        // expiration text.
        let sessions = parts
            .store
            .sessions((parts.clock)())?
            .into_iter()
            .map(|mut s| {
                s.expires_at = clock::parse_rfc3339_millis(&s.expiration).map_or(0, |ms| ms / 1000);
                s
            })
            .collect();
        Ok(Broker {
            state: RwLock::new(Arc::new(state)),
            issuer,
            audit,
            cache: Mutex::new(HashMap::new()),
            sessions: Mutex::new(sessions),
            parts,
            controls: RwLock::new(Arc::new(controls)),
            counters: Mutex::new(HashMap::new()),
            volume: volume::Volume::default(),
            admin: tokio::sync::Mutex::new(()),
        })
    }

    pub fn now(&self) -> i64 {
        (self.parts.clock)()
    }

    pub fn controls(&self) -> Arc<Controls> {
        self.controls
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Runs a store operation on the blocking pool (SQLite fsyncs).
    async fn db<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = self.parts.store.clone();
        tokio::task::spawn_blocking(move || f(&*store))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }

    pub fn state(&self) -> Arc<State> {
        self.state.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// Swaps in a reloaded config; cache entries of changed profiles die with their hash.
    pub fn replace_state(&self, state: State) {
        let live: std::collections::HashSet<String> = state
            .profiles
            .values()
            .map(|p| p.profile_sha256.clone())
            .collect();
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|k, _| live.contains(&k.profile_sha256));
        *self.state.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(state);
    }

    /// The whole lifecycle for one credential request.
    pub async fn credentials(
        &self,
        caller: Caller,
        req: CredRequest,
    ) -> Result<Issued, BrokerError> {
        if self.audit.is_failed() {
            return Err(AuditError::Unavailable("an earlier write failed".into()).into());
        }
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

    /// Audits a denial, counts it toward the agent's breaker, and returns it as the error.
    async fn refuse(
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

    /// A request for a profile that needs a human: deliver the approved session from the cache,
    /// redeem a matching approval, report the pending one, or open a new request.
    async fn approval_gate(
        &self,
        state: &State,
        caller: Caller,
        c: Candidate,
        req: CredRequest,
    ) -> Result<Issued, BrokerError> {
        if let Some(issued) = self.cached(state, &caller, &c.grant, &req.reason).await? {
            return Ok(issued);
        }
        let now = self.now();
        let digest = c.binding.digest();
        let agent = c.grant.agent.clone();
        let deny = |code, message: String| Denial {
            code,
            message,
            agent: Some(agent.clone()),
        };
        let found: Vec<ApprovalRequest> = match &req.approval_id {
            Some(id) => {
                let id = id.clone();
                match self.db(move |s| s.get(&id)).await? {
                    Some(r) if r.binding.agent == agent => vec![r],
                    _ => {
                        let d = deny(
                            DenyCode::UnknownApproval,
                            format!(
                                "agent {agent} has no approval request {}",
                                req.approval_id.as_ref().map(|i| i.as_str()).unwrap_or("")
                            ),
                        );
                        return Err(self.refuse(&caller, &req.profile, req.reason, d).await);
                    }
                }
            }
            None => {
                let (a, d) = (agent.clone(), digest.clone());
                self.db(move |s| s.by_digest(&a, &d)).await?
            }
        };
        for r in found {
            let status = r.status(now);
            match status {
                crate::approval::Status::Approved => {
                    // Limits first, so that a refusal does not use up the approval.
                    if r.digest == digest
                        && let Err(d) = self.check_limits(&agent, &state.config.limits)
                    {
                        return Err(self.refuse(&caller, &req.profile, req.reason, d).await);
                    }
                    match self.redeem(r, &digest, now).await? {
                        Ok(proof) => {
                            let grant = c.redeemed(&proof);
                            return self
                                .issue(state, caller, grant, req.reason, Some(proof.id))
                                .await;
                        }
                        Err(e) if req.approval_id.is_some() => {
                            let d = deny(DenyCode::ApprovalClosed, e.to_string());
                            return Err(self.refuse(&caller, &req.profile, req.reason, d).await);
                        }
                        Err(_) => continue,
                    }
                }
                crate::approval::Status::Pending => {
                    return Err(BrokerError::Pending(pending_of(&r)));
                }
                // The same request again after a rejection: the rejection stands (with its
                // note) while the rejected request would still have been pending; it never
                // silently opens a new one.
                crate::approval::Status::Rejected if now < r.pending_until => {
                    let d = deny(DenyCode::ApprovalClosed, rejection_message(&r));
                    return Err(self.refuse(&caller, &req.profile, req.reason, d).await);
                }
                closed if req.approval_id.is_some() => {
                    let message = match &r.stage {
                        crate::approval::Stage::Rejected { .. } => rejection_message(&r),
                        _ => format!(
                            "approval request {} is {}; nothing was issued",
                            r.id,
                            closed.as_str()
                        ),
                    };
                    let d = deny(DenyCode::ApprovalClosed, message);
                    return Err(self.refuse(&caller, &req.profile, req.reason, d).await);
                }
                _ => continue,
            }
        }
        self.open_request(caller, c, req, now).await
    }

    /// Marks an approved request used, exactly once across every caller (compare and swap).
    async fn redeem(
        &self,
        mut r: ApprovalRequest,
        digest: &str,
        now: i64,
    ) -> Result<Result<Redemption, crate::approval::RedeemError>, StoreError> {
        loop {
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
                    return Ok(Err(crate::approval::RedeemError::NotApproved {
                        id: r.id,
                        status: "gone",
                    }));
                }
            }
        }
    }

    async fn open_request(
        &self,
        caller: Caller,
        c: Candidate,
        req: CredRequest,
        now: i64,
    ) -> Result<Issued, BrokerError> {
        let cfg = self.state().config.approvals;
        let agent = c.grant.agent.clone();
        let r = ApprovalRequest::new(
            ApprovalId::random(),
            c.binding.clone(),
            c.requirement.clone(),
            caller.uid(),
            now,
            cfg.pending_ttl.as_secs() as i64,
        );
        // Count, deduplicate and insert as one step in the store, so that concurrent requests
        // can neither exceed max_pending nor open two requests for the same binding.
        let stored = r.clone();
        let max = cfg.max_pending;
        match self.db(move |s| s.open_pending(&stored, max, now)).await? {
            Opened::Inserted => {}
            Opened::Existing(existing) => return Err(BrokerError::Pending(pending_of(&existing))),
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
        let mut rec = Record::new(Kind::Pending);
        rec.approval_id = Some(r.id.to_string());
        rec.agent = Some(agent.clone());
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
        // If this write fails the daemon stops issuing altogether (audit unavailable), so the
        // stored request can never lead to a credential without its record.
        self.audit.append_durable(rec).await?;
        let pending = pending_of(&r);
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
            "approve": format!("mandate approve {}", r.id),
            "reject": format!("mandate reject {}", r.id),
        }));
        tracing::info!(id = %r.id, agent = %pending.agent, profile = %pending.profile, "approval request pending");
        Err(BrokerError::Pending(pending))
    }

    /// A servable cached session for this grant's key, delivered (and audited) without minting.
    async fn cached(
        &self,
        state: &State,
        caller: &Caller,
        grant: &Grant,
        reason: &Option<String>,
    ) -> Result<Option<Issued>, BrokerError> {
        if grant.custom_duration {
            return Ok(None);
        }
        let slot = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&cache_key(grant))
            .cloned();
        let Some(slot) = slot else { return Ok(None) };
        let entry = slot.lock().await.clone();
        match entry {
            Some(e) if self.servable_entry(&state.config.cache, &e) => {
                self.deliver(caller, grant, reason, &e).await.map(Some)
            }
            _ => Ok(None),
        }
    }

    fn servable_entry(&self, policy: &CachePolicy, e: &Entry) -> bool {
        servable(
            policy,
            e.credentials.expiration,
            e.duration_seconds,
            clock::unix_now(),
        )
    }

    async fn deliver(
        &self,
        caller: &Caller,
        grant: &Grant,
        reason: &Option<String>,
        entry: &Entry,
    ) -> Result<Issued, BrokerError> {
        // A revoke or pause may have landed since this request was authorized.
        let profile = grant.profile.profile.name.as_str();
        if let Some(d) = self
            .controls()
            .stopped(&grant.agent, profile, Some(&entry.request_id))
        {
            return Err(self.refuse(caller, profile, reason.clone(), d).await);
        }
        let state = self.state();
        if let Err(d) = self.count_delivery(&grant.agent, &state.config.limits) {
            return Err(self.refuse(caller, profile, reason.clone(), d).await);
        }
        let mut r = base_record(Kind::Delivered, caller, grant, reason);
        r.request_id = Some(entry.request_id.clone());
        r.access_key_id = Some(entry.credentials.access_key_id.clone());
        r.expiration = Some(clock::rfc3339(entry.credentials.expiration));
        let window = state.config.audit.delivery_window;
        match self
            .volume
            .delivery(&entry.request_id, caller.uid(), self.now(), window, r)
        {
            volume::DeliveryWrite::Counted => {}
            volume::DeliveryWrite::Each(r) => self.audit.append(*r).await?,
            volume::DeliveryWrite::Opened { closed, first } => {
                if let Some(c) = closed {
                    self.audit.append(*c).await?;
                }
                // Each window's first delivery is on disk before the credential leaves; if it
                // cannot be written, nothing leaves and the next delivery tries again.
                if let Err(e) = self.audit.append_durable(*first).await {
                    self.volume.forget(&entry.request_id, caller.uid());
                    return Err(e.into());
                }
            }
        }
        tracing::debug!(
            agent = %grant.agent,
            profile = %grant.profile.profile.name,
            request_id = %entry.request_id,
            access_key_id = %entry.credentials.access_key_id,
            "delivered a cached session"
        );
        Ok(Issued {
            credentials: entry.credentials.clone(),
            request_id: entry.request_id.clone(),
            agent: grant.agent.clone(),
            profile: grant.profile.profile.name.as_str().to_owned(),
            cached: true,
            approval_id: None,
        })
    }

    async fn issue(
        &self,
        state: &State,
        caller: Caller,
        grant: Grant,
        reason: Option<String>,
        approval_id: Option<ApprovalId>,
    ) -> Result<Issued, BrokerError> {
        let key = cache_key(&grant);
        let base = |kind| {
            let mut r = base_record(kind, &caller, &grant, &reason);
            r.approval_id = approval_id.as_ref().map(|i| i.to_string());
            r
        };
        let slot: Option<Slot> = if grant.custom_duration {
            None
        } else {
            Some(
                self.cache
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(key)
                    .or_default()
                    .clone(),
            )
        };
        // Single flight: one caller per key mints; the others wait here and then read the cache.
        let mut guard = match &slot {
            Some(s) => Some(s.lock().await),
            None => None,
        };
        if let Some(Some(entry)) = guard.as_deref()
            && self.servable_entry(&state.config.cache, entry)
        {
            return self.deliver(&caller, &grant, &reason, entry).await;
        }
        if let Err(d) = self.check_limits(&grant.agent, &state.config.limits) {
            drop(guard);
            let profile = grant.profile.profile.name.as_str().to_owned();
            return Err(self.refuse(&caller, &profile, reason.clone(), d).await);
        }

        let request_id = random_id();
        self.record_issuance(&grant.agent, &state.config.limits);
        let session_name = format!("mandate-{}-{}", grant.agent, &request_id[..12]);
        let session_name: String = session_name.chars().take(64).collect();
        let source_identity = format!("mandate-{}", grant.agent);
        let p = &grant.profile.profile;
        let mut tags = vec![
            (BROKER_TAG_KEYS[0].to_owned(), grant.agent.clone()),
            (BROKER_TAG_KEYS[1].to_owned(), p.name.as_str().to_owned()),
            (BROKER_TAG_KEYS[2].to_owned(), request_id.clone()),
            (
                BROKER_TAG_KEYS[3].to_owned(),
                grant.profile.access_type().to_owned(),
            ),
        ];
        tags.extend(p.tags.iter().map(|(k, v)| (k.clone(), v.clone())));
        let input = AssumeRoleInput {
            role_arn: grant.role.arn.clone(),
            session_name: session_name.clone(),
            policy: grant.profile.policy.as_json().to_owned(),
            policy_arns: p
                .managed_policies
                .iter()
                .map(|a| a.as_str().to_owned())
                .collect(),
            duration_seconds: grant.duration_seconds,
            source_identity: source_identity.clone(),
            tags,
            transitive_tag_keys: BROKER_TAG_KEYS.iter().map(|k| (*k).to_owned()).collect(),
        };

        let mut r = base(Kind::Request);
        r.request_id = Some(request_id.clone());
        r.session_name = Some(session_name.clone());
        r.source_identity = Some(source_identity.clone());
        r.duration_seconds = Some(grant.duration_seconds);
        r.decision = Some("allow".into());
        self.audit.append_durable(r).await?;

        let creds = match self.issuer.assume_role(input).await {
            Ok(c) => Arc::new(c),
            Err(e) => {
                let mut r = base(Kind::Denied);
                r.request_id = Some(request_id.clone());
                r.decision = Some("error".into());
                r.code = Some("sts_error".into());
                r.message = Some(e.to_string());
                let _ = self.audit.append_durable(r).await;
                return Err(e.into());
            }
        };
        if self.audit.is_failed() {
            return Err(AuditError::Unavailable("an earlier write failed".into()).into());
        }
        // A revoke or pause that landed while STS was minting: the session never leaves.
        if let Some(d) = self
            .controls()
            .stopped(&grant.agent, p.name.as_str(), Some(&request_id))
        {
            let mut r = base(Kind::Denied);
            r.request_id = Some(request_id.clone());
            r.access_key_id = Some(creds.access_key_id.clone());
            r.decision = Some("withheld".into());
            r.code = Some(d.code.as_str().into());
            r.message = Some(format!("minted, then withheld: {}", d.message));
            self.audit.append_durable(r).await?;
            return Err(BrokerError::Denied(d));
        }
        let mut r = base(Kind::Issued);
        r.request_id = Some(request_id.clone());
        r.session_name = Some(session_name.clone());
        r.source_identity = Some(source_identity);
        r.access_key_id = Some(creds.access_key_id.clone());
        r.expiration = Some(clock::rfc3339(creds.expiration));
        r.duration_seconds = Some(grant.duration_seconds);
        // Invariant 1: nothing leaves before its `issued` record is durable.
        self.audit.append_durable(r).await?;

        if let Some(g) = guard.as_deref_mut() {
            *g = Some(Entry {
                credentials: creds.clone(),
                duration_seconds: grant.duration_seconds,
                request_id: request_id.clone(),
            });
        }
        drop(guard);
        {
            let now = clock::unix_now();
            let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
            sessions.retain(|s| s.expires_at > now);
            if sessions.len() < 100_000 {
                sessions.push(SessionInfo {
                    agent: grant.agent.clone(),
                    profile: p.name.as_str().to_owned(),
                    role: grant.role.name.as_str().to_owned(),
                    session_name,
                    access_key_id: creds.access_key_id.clone(),
                    expiration: clock::rfc3339(creds.expiration),
                    request_id: request_id.clone(),
                    expires_at: creds.expiration,
                });
            }
        }
        // The live-session index survives a restart (status, revoke --session). A store
        // failure does not withhold a session that is already audited: it is logged.
        let info = self
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|s| s.request_id == request_id)
            .cloned();
        if let Some(info) = info {
            let now = clock::unix_now();
            if let Err(e) = self.db(move |s| s.put_session(&info, now)).await {
                tracing::warn!(error = %e, "could not record the session in the store");
            }
        }
        tracing::debug!(
            agent = %grant.agent,
            profile = %p.name,
            request_id = %request_id,
            access_key_id = %creds.access_key_id,
            duration_seconds = grant.duration_seconds,
            "issued a new session"
        );
        Ok(Issued {
            credentials: creds,
            request_id,
            agent: grant.agent,
            profile: p.name.as_str().to_owned(),
            cached: false,
            approval_id,
        })
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
}

fn cache_key(grant: &Grant) -> CacheKey {
    CacheKey {
        agent: grant.agent.clone(),
        profile: grant.profile.profile.name.as_str().to_owned(),
        profile_sha256: grant.profile.profile_sha256.clone(),
        role: grant.role.name.as_str().to_owned(),
    }
}

fn base_record(kind: Kind, caller: &Caller, grant: &Grant, reason: &Option<String>) -> Record {
    let mut r = Record::new(kind);
    r.agent = Some(grant.agent.clone());
    r.uid = caller.uid();
    r.pid = caller.pid();
    r.profile = Some(grant.profile.profile.name.as_str().to_owned());
    r.profile_sha256 = Some(grant.profile.profile_sha256.clone());
    r.policy_sha256 = Some(grant.profile.policy.sha256().to_owned());
    r.role = Some(grant.role.arn.clone());
    r.reason = reason.clone();
    r
}

/// "approval request ID is rejected by NAME: NOTE; nothing was issued".
fn rejection_message(r: &ApprovalRequest) -> String {
    let by = match &r.stage {
        crate::approval::Stage::Rejected { by, .. } => by.as_str(),
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

fn pending_of(r: &ApprovalRequest) -> Pending {
    let have = r.votes.iter().filter(|v| v.approve).count();
    Pending {
        id: r.id.clone(),
        agent: r.binding.agent.clone(),
        profile: r.binding.profile.clone(),
        requirement: r.requirement.clone(),
        pending_until: r.pending_until,
        have: have.min(r.needed()),
        need: r.needed(),
    }
}

/// Upper bound on how long a caller may wait for a mint, however STS behaves.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests;
