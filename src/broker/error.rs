//! Why a request gets no credential: a refusal (a [`Denial`] with its code, or an approval
//! still [`Pending`]) or an outage (audit, STS, store, IAM).

use crate::approval::{ApprovalId, Requirement};
use crate::audit::AuditError;
use crate::aws::{IamError, StsError};
use crate::clock;
use crate::store::StoreError;

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
    /// The request's page at the approval console, when there is one.
    pub console_url: Option<String>,
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
        ) + &self
            .console_url
            .as_ref()
            .map(|u| format!(" or open {u}"))
            .unwrap_or_default()
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
    /// Team mode: this daemon cannot confirm that its view of the shared stop buttons (pause,
    /// revocations, breakers) is fresh, so it issues nothing (fail closed).
    #[error("{0}")]
    Stale(String),
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
            BrokerError::Stale(_) => "store_stale",
            BrokerError::Iam(_) => "iam_error",
        }
    }
    /// A refusal (exit 5) rather than an outage (exit 6).
    pub fn is_refusal(&self) -> bool {
        matches!(self, BrokerError::Denied(_) | BrokerError::Pending(_))
    }
}
