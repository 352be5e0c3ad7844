//! Decisions are types: [`authorize`] is pure and returns a [`Decision`]; only it builds the
//! [`Grant`] that minting needs, and a [`Candidate`] becomes one only with the proof that an
//! approval was redeemed.

use std::sync::Arc;

use super::approval_gate::Redemption;
use super::{Caller, Controls, CredRequest, Denial, DenyCode, State};
use crate::approval::{Binding, Requirement};
use crate::config::{Agent, Role};
use crate::policy::CompiledProfile;
use crate::profile::Approval;

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
    pub(super) fn role(&self) -> &Role {
        &self.role
    }
    pub(super) fn custom_duration(&self) -> bool {
        self.custom_duration
    }
    /// The profile's name.
    pub(super) fn profile_name(&self) -> &str {
        self.profile.profile.name.as_str()
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

impl Candidate {
    pub fn binding(&self) -> &Binding {
        &self.binding
    }
    pub fn requirement(&self) -> &Requirement {
        &self.requirement
    }
    /// The grant it would be (to look it up in the cache, not to mint with).
    pub(super) fn grant(&self) -> &Grant {
        &self.grant
    }
    pub(super) fn redeemed(self, proof: &Redemption) -> Grant {
        debug_assert_eq!(proof.digest(), self.binding.digest());
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

/// Pure authorization: identity from the uid, agent ↔ profile binding, the human stop buttons
/// (pause, breaker, revocation), duration, approval gate.
pub fn authorize(
    state: &State,
    controls: &Controls,
    caller: &Caller,
    req: &CredRequest,
) -> Decision {
    let agent = match who_is_asking(state, caller, req) {
        Ok(a) => a,
        Err(d) => return Decision::Denied(d),
    };
    let profile = match bound_profile(state, agent, req) {
        Ok(p) => p,
        Err(d) => return Decision::Denied(d),
    };
    if let Some(d) = controls.stopped(&agent.name, &req.profile, None) {
        return Decision::Denied(d);
    }
    let Some(role) = state.config.roles.get(profile.profile.role.as_str()) else {
        return Decision::Denied(denial(
            DenyCode::UnknownProfile,
            format!("profile {} names an unknown role", req.profile),
            Some(&agent.name),
        ));
    };
    let (duration, custom_duration) = match duration(state, agent, profile, role, req) {
        Ok(d) => d,
        Err(d) => return Decision::Denied(d),
    };
    let grant = Grant {
        agent: agent.name.clone(),
        profile: profile.clone(),
        role: role.clone(),
        duration_seconds: duration,
        custom_duration,
    };
    let requirement = match requirement(agent, profile, req) {
        Ok(None) => return Decision::Granted(grant),
        Ok(Some(r)) => r,
        Err(d) => return Decision::Denied(d),
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

fn denial(code: DenyCode, message: String, agent: Option<&str>) -> Denial {
    Denial {
        code,
        message,
        agent: agent.map(str::to_owned),
    }
}

/// The agent the caller acts as: from the kernel's uid, or from the token the transport checked.
fn who_is_asking<'a>(
    state: &'a State,
    caller: &Caller,
    req: &CredRequest,
) -> Result<&'a Agent, Denial> {
    match caller {
        Caller::Peer { uid, .. } => state
            .config
            .agent_for_uid(*uid, req.agent.as_deref())
            .map_err(|m| denial(DenyCode::UnknownCaller, m, None)),
        Caller::Token { agent } => match state.config.agents.get(agent) {
            Some(a) if req.agent.as_ref().is_none_or(|r| r == agent) => Ok(a),
            _ => Err(denial(
                DenyCode::UnknownCaller,
                format!("the token does not act as agent {agent}"),
                None,
            )),
        },
        Caller::Console(u) => Err(denial(
            DenyCode::UnknownCaller,
            format!("approver {} at the console is not an agent", u.approver),
            None,
        )),
    }
}

/// The requested profile, if it exists and the agent is bound to it.
fn bound_profile<'a>(
    state: &'a State,
    agent: &Agent,
    req: &CredRequest,
) -> Result<&'a Arc<CompiledProfile>, Denial> {
    let Some(profile) = state.profiles.get(&req.profile) else {
        return Err(denial(
            DenyCode::UnknownProfile,
            format!("no profile named {}", crate::diag::quoted(&req.profile)),
            Some(&agent.name),
        ));
    };
    if !agent.profiles.iter().any(|p| p.as_str() == req.profile) {
        return Err(denial(
            DenyCode::NotBound,
            format!(
                "agent {} is not bound to profile {}",
                agent.name, req.profile
            ),
            Some(&agent.name),
        ));
    }
    Ok(profile)
}

/// The session's duration (the profile's, clamped by the role and by temporary base
/// credentials, or the shorter one asked for), and whether it was asked for.
fn duration(
    state: &State,
    agent: &Agent,
    profile: &CompiledProfile,
    role: &Role,
    req: &CredRequest,
) -> Result<(u32, bool), Denial> {
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
            return Err(denial(
                DenyCode::BadRequest,
                format!(
                    "duration {d} s is outside 900 to {duration} s, the range allowed for {}",
                    req.profile
                ),
                Some(&agent.name),
            ));
        }
        custom_duration = d != duration;
        duration = d;
    }
    Ok((duration, custom_duration))
}

/// What this daemon's config says the request bound by `b` needs, for a vote on it: the agent,
/// the profile (with the same hashes) and the binding must all be what this daemon would have
/// asked for itself. A request row is not trusted to say what it needs (team mode: anyone who
/// can write the shared database could lower it).
pub(super) fn expected_approval(state: &State, b: &Binding) -> Result<Requirement, String> {
    let agent = state
        .config
        .agents
        .get(&b.agent)
        .ok_or_else(|| format!("agent {} is not declared in this daemon's config", b.agent))?;
    let profile = state
        .profiles
        .get(&b.profile)
        .ok_or_else(|| format!("profile {} is not known to this daemon", b.profile))?;
    if profile.profile_sha256 != b.profile_sha256 || profile.policy.sha256() != b.policy_sha256 {
        return Err(format!(
            "profile {} here differs from the one the request was made with; vote on a daemon with the same profiles",
            b.profile
        ));
    }
    if !agent.profiles.iter().any(|p| p.as_str() == b.profile) {
        return Err(format!(
            "agent {} is not bound to profile {} here",
            b.agent, b.profile
        ));
    }
    let req = CredRequest {
        profile: b.profile.clone(),
        ..CredRequest::default()
    };
    match requirement(agent, profile, &req) {
        Ok(Some(r)) => Ok(r),
        Ok(None) => Err(format!("profile {} needs no approval here", b.profile)),
        Err(d) => Err(d.message),
    }
}

/// Whose approval the profile needs, if anyone's.
fn requirement(
    agent: &Agent,
    profile: &CompiledProfile,
    req: &CredRequest,
) -> Result<Option<Requirement>, Denial> {
    match profile.profile.approval {
        Approval::None => Ok(None),
        Approval::Operator => match &agent.operator {
            Some(op) => Ok(Some(Requirement::Operator {
                operator: op.clone(),
            })),
            // `config::load` refuses this; fail closed anyway.
            None => Err(denial(
                DenyCode::NotBound,
                format!(
                    "profile {} needs the operator's approval and agent {} has no operator",
                    req.profile, agent.name
                ),
                Some(&agent.name),
            )),
        },
        Approval::Peers(n) => Ok(Some(Requirement::Peers {
            n,
            operator: agent.operator.clone(),
        })),
    }
}
