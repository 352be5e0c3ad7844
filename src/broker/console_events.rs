//! What the console records that no broker decision covers: sign-ins, passkeys registered,
//! sign-outs, and refusals at the console's door (no session, a bad CSRF token, an ID token or
//! a passkey assertion that does not verify). Votes, revocations, the pause and breaker resets
//! made at the console go through the same broker calls as on the socket, and are recorded
//! there, with the approver's OpenID subject and passkey.

use super::{Broker, BrokerError};
use crate::audit::{Kind, Record};
use crate::aws::Issuer;

/// One console event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsoleEvent {
    /// `signed_in`, `signed_out`, `passkey_registered`, or a refusal's code (`no_session`,
    /// `session_expired`, `csrf`, `id_token_audience`, `assertion`, ...).
    pub what: String,
    pub refused: bool,
    /// The approver, when the sign-in was mapped to one.
    pub approver: Option<String>,
    /// The subject the provider vouched for, when it did.
    pub subject: Option<String>,
    /// The passkey (credential id) involved, if any.
    pub passkey: Option<String>,
    /// The approval request concerned, if any.
    pub approval_id: Option<String>,
    /// What happened, for the reader of the log (no secret, no token).
    pub message: String,
}

impl<I: Issuer> Broker<I> {
    /// Writes a console event to the audit log (durably: a refusal is evidence).
    pub async fn audit_console(&self, e: ConsoleEvent) -> Result<(), BrokerError> {
        let mut r = Record::new(if e.refused {
            Kind::Denied
        } else {
            Kind::Console
        });
        r.decision = Some(if e.refused {
            "deny".into()
        } else {
            e.what.clone()
        });
        if e.refused {
            r.code = Some(format!("console_{}", e.what));
        }
        r.approver = e.approver;
        r.oidc_subject = e.subject;
        r.passkey = e.passkey;
        r.approval_id = e.approval_id;
        r.message = Some(e.message);
        self.audit.append_durable(r).await?;
        Ok(())
    }
}
