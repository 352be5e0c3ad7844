//! The request lifecycle: authenticate the caller, authorize (agent ↔ profile), approval gate,
//! cache or mint, audit, respond. Plain async code over the [`Issuer`] trait.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use crate::audit::{AuditError, AuditLog, Kind, Record};
use crate::aws::{AssumeRoleInput, Credentials, Issuer, StsError};
use crate::clock;
use crate::config::{CachePolicy, Config, Loaded, Role};
use crate::policy::CompiledProfile;
use crate::profile::{Approval, BROKER_TAG_KEYS};

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
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DenyCode {
    /// The uid is not bound to any (or the named) agent.
    UnknownCaller,
    /// No such profile.
    UnknownProfile,
    /// The agent is not bound to the profile.
    NotBound,
    /// The profile needs human approval, which this version cannot collect.
    ApprovalRequired,
    /// The request itself is malformed.
    BadRequest,
}

impl DenyCode {
    pub fn as_str(self) -> &'static str {
        match self {
            DenyCode::UnknownCaller => "unknown_caller",
            DenyCode::UnknownProfile => "unknown_profile",
            DenyCode::NotBound => "not_bound",
            DenyCode::ApprovalRequired => "approval_required",
            DenyCode::BadRequest => "bad_request",
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

/// The authorization result.
#[must_use]
#[derive(Debug)]
pub enum Decision {
    Granted(Grant),
    Denied(Denial),
}

/// The validated config and compiled profiles, swapped as a whole on reload.
#[derive(Debug)]
pub struct State {
    pub config: Config,
    pub profiles: BTreeMap<String, Arc<CompiledProfile>>,
    /// The broker's base credentials are temporary: sessions are capped at one hour.
    pub base_is_temporary: bool,
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
        }
    }
}

/// Pure authorization: identity from the uid, agent ↔ profile binding, approval gate, duration.
pub fn authorize(state: &State, caller: &Caller, req: &CredRequest) -> Decision {
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
    if profile.profile.approval != Approval::None {
        return deny(
            DenyCode::ApprovalRequired,
            format!(
                "profile {} needs approval ({}), and this broker version cannot collect approvals yet; nothing was issued",
                req.profile, profile.profile.approval
            ),
            Some(&agent.name),
        );
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
                    "duration {d} s is outside 900..={duration} s allowed for {}",
                    req.profile
                ),
                Some(&agent.name),
            );
        }
        custom_duration = d != duration;
        duration = d;
    }
    Decision::Granted(Grant {
        agent: agent.name.clone(),
        profile: profile.clone(),
        role: role.clone(),
        duration_seconds: duration,
        custom_duration,
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

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("{}", .0.message)]
    Denied(Denial),
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error(transparent)]
    Sts(#[from] StsError),
}

impl BrokerError {
    pub fn code(&self) -> &'static str {
        match self {
            BrokerError::Denied(d) => d.code.as_str(),
            BrokerError::Audit(_) => "audit_unavailable",
            BrokerError::Sts(_) => "sts_error",
        }
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
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct CacheKey {
    agent: String,
    profile_sha256: String,
    role: String,
}

#[derive(Clone, Debug)]
struct Entry {
    credentials: Arc<Credentials>,
    duration_seconds: u32,
    request_id: String,
}

/// A live session, for `mandate status`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SessionInfo {
    pub agent: String,
    pub profile: String,
    pub role: String,
    pub session_name: String,
    pub access_key_id: String,
    pub expiration: String,
    pub request_id: String,
    #[serde(skip)]
    expires_at: i64,
}

type Slot = Arc<tokio::sync::Mutex<Option<Entry>>>;

pub struct Broker<I: Issuer> {
    state: RwLock<Arc<State>>,
    issuer: I,
    audit: AuditLog,
    cache: Mutex<HashMap<CacheKey, Slot>>,
    sessions: Mutex<Vec<SessionInfo>>,
}

/// 128 random bits, hex.
pub fn random_id() -> String {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).expect("the OS random source is available");
    crate::policy::hex(&b)
}

impl<I: Issuer> Broker<I> {
    pub fn new(state: State, issuer: I, audit: AuditLog) -> Self {
        Broker {
            state: RwLock::new(Arc::new(state)),
            issuer,
            audit,
            cache: Mutex::new(HashMap::new()),
            sessions: Mutex::new(Vec::new()),
        }
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
        let grant = match authorize(&state, &caller, &req) {
            Decision::Granted(g) => g,
            Decision::Denied(d) => {
                tracing::debug!(uid = ?caller.uid(), profile = %req.profile, code = d.code.as_str(), "denied");
                let mut r = Record::new(Kind::Denied);
                r.agent = d.agent.clone();
                r.uid = caller.uid();
                r.pid = caller.pid();
                r.profile = Some(req.profile.clone());
                r.reason = req.reason.clone();
                r.decision = Some("deny".into());
                r.code = Some(d.code.as_str().into());
                r.message = Some(d.message.clone());
                self.audit.append_durable(r).await?;
                return Err(BrokerError::Denied(d));
            }
        };
        self.issue(&state, caller, grant, req.reason).await
    }

    async fn issue(
        &self,
        state: &State,
        caller: Caller,
        grant: Grant,
        reason: Option<String>,
    ) -> Result<Issued, BrokerError> {
        let key = CacheKey {
            agent: grant.agent.clone(),
            profile_sha256: grant.profile.profile_sha256.clone(),
            role: grant.role.name.as_str().to_owned(),
        };
        let base = |kind| {
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
            && servable(
                &state.config.cache,
                entry.credentials.expiration,
                entry.duration_seconds,
                clock::unix_now(),
            )
        {
            let mut r = base(Kind::Delivered);
            r.request_id = Some(entry.request_id.clone());
            r.access_key_id = Some(entry.credentials.access_key_id.clone());
            r.expiration = Some(clock::rfc3339(entry.credentials.expiration));
            self.audit.append(r).await?;
            tracing::debug!(
                agent = %grant.agent,
                profile = %grant.profile.profile.name,
                request_id = %entry.request_id,
                access_key_id = %entry.credentials.access_key_id,
                "delivered a cached session"
            );
            return Ok(Issued {
                credentials: entry.credentials.clone(),
                request_id: entry.request_id.clone(),
                agent: grant.agent.clone(),
                profile: grant.profile.profile.name.as_str().to_owned(),
                cached: true,
            });
        }

        let request_id = random_id();
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
        })
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

/// Upper bound on how long a caller may wait for a mint, however STS behaves.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests;
