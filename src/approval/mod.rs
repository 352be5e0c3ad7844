//! Approvals: pending requests, votes, binding digests and expiry (design §6, invariant 5).
//!
//! Everything here is pure: time comes in as `now` (Unix seconds), identities come in already
//! established by the transport, and every transition returns the next state instead of writing
//! it. The broker persists states through [`store::Store`].

use serde::{Deserialize, Serialize};

pub mod proof;
use sha2::{Digest, Sha256};

/// Longest approval id accepted on the wire.
pub const ID_LEN: usize = 16;
/// Longest note accepted with a vote.
pub const MAX_NOTE_CHARS: usize = 512;

/// An approval request id: 16 lowercase hex characters (64 random bits).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ApprovalId(String);

impl ApprovalId {
    pub fn parse(s: &str) -> Result<ApprovalId, String> {
        if s.len() == ID_LEN
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            Ok(ApprovalId(s.to_owned()))
        } else {
            Err(format!(
                "{} is not an approval id (16 hexadecimal characters, as `mandate approvals list` shows)",
                crate::diag::quoted(&s.chars().take(40).collect::<String>())
            ))
        }
    }
    pub fn random() -> ApprovalId {
        let mut b = [0u8; ID_LEN / 2];
        getrandom::fill(&mut b).expect("the OS random source is available");
        ApprovalId(crate::policy::hex(&b))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ApprovalId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        ApprovalId::parse(&s)
    }
}

impl From<ApprovalId> for String {
    fn from(id: ApprovalId) -> String {
        id.0
    }
}

impl std::fmt::Display for ApprovalId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A vote's note: bounded, single line once printed (control characters are escaped on output).
pub fn check_note(note: &str) -> Result<(), String> {
    if note.chars().count() > MAX_NOTE_CHARS {
        return Err(format!(
            "the note is longer than {MAX_NOTE_CHARS} characters"
        ));
    }
    Ok(())
}

/// Everything an approval is bound to. Changing any field gives another digest, so an approval
/// for one request can never be redeemed by another.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Binding {
    pub agent: String,
    pub profile: String,
    pub profile_sha256: String,
    pub policy_sha256: String,
    pub role_arn: String,
    pub duration_seconds: u32,
    pub reason: Option<String>,
}

impl Binding {
    /// sha256 over a length-prefixed encoding of every field (unambiguous, no JSON involved).
    pub fn digest(&self) -> String {
        let mut h = Sha256::new();
        let mut field = |s: &[u8]| {
            h.update((s.len() as u64).to_be_bytes());
            h.update(s);
        };
        field(b"mandate-approval-binding-v1");
        field(self.agent.as_bytes());
        field(self.profile.as_bytes());
        field(self.profile_sha256.as_bytes());
        field(self.policy_sha256.as_bytes());
        field(self.role_arn.as_bytes());
        field(&self.duration_seconds.to_be_bytes());
        match &self.reason {
            None => field(b"\x00"),
            Some(r) => field(format!("\x01{r}").as_bytes()),
        }
        crate::policy::hex(&h.finalize())
    }
}

/// What a profile's `approval` asks for, resolved against the agent at request time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Requirement {
    /// The agent's operator confirms (ask-first).
    Operator { operator: String },
    /// `n` distinct approvers, never the agent's operator, never one sharing a uid with the agent.
    Peers { n: u8, operator: Option<String> },
}

impl std::fmt::Display for Requirement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Requirement::Operator { operator } => write!(f, "operator {operator}"),
            Requirement::Peers { n, .. } => {
                write!(
                    f,
                    "{n} peer approver{} other than the operator",
                    if *n == 1 { "" } else { "s" }
                )
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vote {
    pub approver: String,
    /// The uids the approver had when voting (one uid never counts twice).
    #[serde(default)]
    pub uids: Vec<u32>,
    pub approve: bool,
    pub note: Option<String>,
    pub at: i64,
    /// Who vouches for this vote: a signature by the component that authenticated the
    /// approver ([`proof`]). Only signed votes release a credential.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof: Option<proof::Proof>,
    /// Cast at the console (not on the broker's socket): who the OpenID provider said the
    /// approver is, and the passkey that confirmed the vote. Covered by the proof.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<Via>,
}

/// Where a console vote came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Via {
    pub oidc_subject: String,
    /// The WebAuthn credential id (base64url) that confirmed the vote; None for an
    /// operator-level vote the config lets the sign-in alone cast.
    pub passkey: Option<String>,
}

/// The stored state of a request. Expiry is not stored: it follows from the times.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state", deny_unknown_fields)]
pub enum Stage {
    Pending,
    Approved { at: i64, use_by: i64 },
    Rejected { at: i64, by: String },
    Redeemed { at: i64, request_id: String },
}

/// What a request looks like at a given moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pending,
    Approved,
    Rejected,
    Redeemed,
    /// Nobody decided before the pending expiry.
    Expired,
    /// Approved but not used before the use-by time.
    Unused,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Approved => "approved",
            Status::Rejected => "rejected",
            Status::Redeemed => "redeemed",
            Status::Expired => "expired",
            Status::Unused => "unused",
        }
    }
    /// Whether no further vote or redemption can change it.
    pub fn is_final(self) -> bool {
        !matches!(self, Status::Pending | Status::Approved)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalRequest {
    pub id: ApprovalId,
    pub binding: Binding,
    pub digest: String,
    pub requirement: Requirement,
    /// The uid that asked (socket callers), for the approver's information.
    pub uid: Option<u32>,
    /// The host whose daemon opened it, for the approver's information (not bound).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    pub created_at: i64,
    pub pending_until: i64,
    pub votes: Vec<Vote>,
    pub stage: Stage,
    /// Bumped on every change: the store updates only the version it read (compare and swap).
    pub version: u64,
}

/// Who votes: an approver already identified by the transport (never by what the request
/// claims).
#[derive(Clone, Debug)]
pub struct Voter<'a> {
    pub name: &'a str,
    pub uids: &'a [u32],
    /// At the console: the subject the OpenID provider vouched for (one person, whatever
    /// approver names map to them).
    pub subject: Option<&'a str>,
}

/// Who else is involved, from the current config: the uids the requesting agent and its
/// operator run as.
#[derive(Clone, Copy, Debug, Default)]
pub struct Parties<'a> {
    pub agent_uids: &'a [u32],
    pub operator_uids: &'a [u32],
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VoteError {
    #[error("request {id} is {status} and can no longer be voted on")]
    Closed {
        id: ApprovalId,
        status: &'static str,
    },
    #[error("only {operator}, agent {agent}'s operator, can approve request {id}")]
    NotOperator {
        id: ApprovalId,
        agent: String,
        operator: String,
    },
    #[error(
        "{approver} is agent {agent}'s operator and does not count toward the two-person rule for request {id}; another approver must approve"
    )]
    OperatorIsNotPeer {
        id: ApprovalId,
        agent: String,
        approver: String,
    },
    #[error(
        "{approver} shares uid {uid} with agent {agent}, so their approval would be the agent's own; a peer approval must come from another uid"
    )]
    SharesUid {
        approver: String,
        agent: String,
        uid: u32,
    },
    #[error(
        "{approver} shares uid {uid} with {other}, who is the operator or has already approved; a peer approval must come from another uid"
    )]
    SharesUidWithApprover {
        approver: String,
        other: String,
        uid: u32,
    },
    #[error(
        "{approver} signed in at the console as the same person as {other}, who has already approved; a peer approval must come from another person"
    )]
    SameSignIn { approver: String, other: String },
}

/// What a vote changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VoteOutcome {
    /// Recorded; more approvals are needed.
    Counted { have: usize, need: usize },
    /// The same approver already voted this way: counted once.
    Duplicate { have: usize, need: usize },
    /// The request is now approved; redeem it before `use_by`.
    Approved { use_by: i64 },
    /// The request is rejected for good.
    Rejected,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RedeemError {
    #[error("request {id} is {status}")]
    NotApproved {
        id: ApprovalId,
        status: &'static str,
    },
    #[error(
        "request {id} was approved for a different request (profile, policy, role, duration or reason changed); ask again"
    )]
    Changed { id: ApprovalId },
}

impl ApprovalRequest {
    pub fn new(
        id: ApprovalId,
        binding: Binding,
        requirement: Requirement,
        uid: Option<u32>,
        now: i64,
        pending_ttl: i64,
    ) -> Self {
        ApprovalRequest {
            id,
            digest: binding.digest(),
            binding,
            requirement,
            uid,
            host: None,
            created_at: now,
            pending_until: now + pending_ttl,
            votes: Vec::new(),
            stage: Stage::Pending,
            version: 0,
        }
    }

    pub fn status(&self, now: i64) -> Status {
        match &self.stage {
            Stage::Pending if now >= self.pending_until => Status::Expired,
            Stage::Pending => Status::Pending,
            Stage::Approved { use_by, .. } if now >= *use_by => Status::Unused,
            Stage::Approved { .. } => Status::Approved,
            Stage::Rejected { .. } => Status::Rejected,
            Stage::Redeemed { .. } => Status::Redeemed,
        }
    }

    /// Distinct approvers who approved and count toward the requirement.
    fn approvals(&self) -> usize {
        let mut names: Vec<&str> = self
            .votes
            .iter()
            .filter(|v| v.approve)
            .map(|v| v.approver.as_str())
            .collect();
        names.sort_unstable();
        names.dedup();
        names.len()
    }

    pub fn needed(&self) -> usize {
        match &self.requirement {
            Requirement::Operator { .. } => 1,
            Requirement::Peers { n, .. } => usize::from(*n),
        }
    }

    /// Casts one vote. Any eligible rejection is final; duplicate approvals count once.
    pub fn vote(
        &self,
        voter: &Voter<'_>,
        parties: &Parties<'_>,
        approve: bool,
        note: Option<String>,
        now: i64,
        use_within: i64,
    ) -> Result<(ApprovalRequest, VoteOutcome), VoteError> {
        let status = self.status(now);
        if status != Status::Pending {
            return Err(VoteError::Closed {
                id: self.id.clone(),
                status: status.as_str(),
            });
        }
        let agent = &self.binding.agent;
        match &self.requirement {
            Requirement::Operator { operator } => {
                if approve && voter.name != operator {
                    return Err(VoteError::NotOperator {
                        id: self.id.clone(),
                        agent: agent.clone(),
                        operator: operator.clone(),
                    });
                }
            }
            Requirement::Peers { operator, .. } => {
                if approve {
                    if operator.as_deref() == Some(voter.name) {
                        return Err(VoteError::OperatorIsNotPeer {
                            id: self.id.clone(),
                            agent: agent.clone(),
                            approver: voter.name.to_owned(),
                        });
                    }
                    if let Some(uid) = voter.uids.iter().find(|u| parties.agent_uids.contains(u)) {
                        return Err(VoteError::SharesUid {
                            approver: voter.name.to_owned(),
                            agent: agent.clone(),
                            uid: *uid,
                        });
                    }
                    if let Some(uid) = voter
                        .uids
                        .iter()
                        .find(|u| parties.operator_uids.contains(u))
                    {
                        return Err(VoteError::SharesUidWithApprover {
                            approver: voter.name.to_owned(),
                            other: operator.clone().unwrap_or_default(),
                            uid: *uid,
                        });
                    }
                    // Two approver names on one uid are one person.
                    for v in self
                        .votes
                        .iter()
                        .filter(|v| v.approve && v.approver != voter.name)
                    {
                        if let Some(uid) = voter.uids.iter().find(|u| v.uids.contains(u)) {
                            return Err(VoteError::SharesUidWithApprover {
                                approver: voter.name.to_owned(),
                                other: v.approver.clone(),
                                uid: *uid,
                            });
                        }
                        if voter.subject.is_some()
                            && v.via.as_ref().map(|x| x.oidc_subject.as_str()) == voter.subject
                        {
                            return Err(VoteError::SameSignIn {
                                approver: voter.name.to_owned(),
                                other: v.approver.clone(),
                            });
                        }
                    }
                }
            }
        }
        let mut next = self.clone();
        next.version += 1;
        let need = self.needed();
        if approve
            && self
                .votes
                .iter()
                .any(|v| v.approve && v.approver == voter.name)
        {
            return Ok((
                next,
                VoteOutcome::Duplicate {
                    have: self.approvals(),
                    need,
                },
            ));
        }
        next.votes.push(Vote {
            approver: voter.name.to_owned(),
            uids: voter.uids.to_vec(),
            approve,
            note,
            at: now,
            proof: None,
            via: None,
        });
        if !approve {
            next.stage = Stage::Rejected {
                at: now,
                by: voter.name.to_owned(),
            };
            return Ok((next, VoteOutcome::Rejected));
        }
        let have = next.approvals();
        if have >= need {
            let use_by = now + use_within;
            next.stage = Stage::Approved { at: now, use_by };
            Ok((next, VoteOutcome::Approved { use_by }))
        } else {
            Ok((next, VoteOutcome::Counted { have, need }))
        }
    }

    /// Uses an approval for one issuance of exactly the bound request.
    pub fn redeem(
        &self,
        digest: &str,
        request_id: &str,
        now: i64,
    ) -> Result<ApprovalRequest, RedeemError> {
        let status = self.status(now);
        if status != Status::Approved {
            return Err(RedeemError::NotApproved {
                id: self.id.clone(),
                status: status.as_str(),
            });
        }
        if digest != self.digest {
            return Err(RedeemError::Changed {
                id: self.id.clone(),
            });
        }
        let mut next = self.clone();
        next.version += 1;
        next.stage = Stage::Redeemed {
            at: now,
            request_id: request_id.to_owned(),
        };
        Ok(next)
    }
}

#[cfg(test)]
pub(crate) mod tests;
