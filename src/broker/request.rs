//! What comes in (who is asking, and for what) and what goes out (the credential).

use std::sync::Arc;

use crate::approval::ApprovalId;
use crate::aws::Credentials;

/// Who is asking: never what the request claims.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// A Unix socket peer, as the kernel reports it (SO_PEERCRED).
    Peer { uid: u32, pid: Option<i32> },
    /// An HTTP client that presented this agent's token (checked by the transport).
    Token { agent: String },
    /// An approver signed in at the console: the OpenID provider vouched for `subject`, which
    /// the config maps to approver `approver`; `passkey` is the WebAuthn credential that
    /// confirmed this very action (None: the sign-in alone).
    Console(ConsoleUser),
}

/// An approver at the console, as the console transport authenticated them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsoleUser {
    pub approver: String,
    pub subject: String,
    /// The verified email the provider gave, if any (an approver may be mapped by it).
    pub email: Option<String>,
    pub passkey: Option<String>,
}

impl Caller {
    pub fn uid(&self) -> Option<u32> {
        match self {
            Caller::Peer { uid, .. } => Some(*uid),
            Caller::Token { .. } | Caller::Console(_) => None,
        }
    }
    pub fn pid(&self) -> Option<i32> {
        match self {
            Caller::Peer { pid, .. } => *pid,
            Caller::Token { .. } | Caller::Console(_) => None,
        }
    }
    pub fn console(&self) -> Option<&ConsoleUser> {
        match self {
            Caller::Console(u) => Some(u),
            _ => None,
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
