//! Revocation: a scope (agent, profile, session or everything) stops at once for new issuance;
//! with `--aws`, the roles' inline policy also denies the sessions already issued. `unrevoke`
//! lifts it for new issuance; `revoke --gc` drops AWS denials no live session can match.

use crate::audit::Kind;
use crate::aws::{IamError, Issuer};
use crate::broker::records::admin_record;
use crate::broker::{Broker, BrokerError, Caller, Denial, DenyCode, State, random_id};
use crate::revoke::{Revocation, Scope};

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RevokeReport {
    pub scope: Option<String>,
    pub revocation_id: Option<String>,
    /// Cached sessions dropped.
    pub purged: usize,
    /// Roles whose inline policy was written, with the exact document.
    pub policies: Vec<PolicyWrite>,
    /// Roles whose inline policy was removed (nothing left to deny).
    pub removed: Vec<String>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct PolicyWrite {
    pub role_arn: String,
    pub policy_name: &'static str,
    pub document: String,
    pub chars: usize,
}

impl<I: Issuer> Broker<I> {
    /// Revokes a scope: new issuance stops at once (persisted, cache purged, audited); with
    /// `aws`, the roles' inline policy also denies sessions issued before now.
    pub async fn revoke(
        &self,
        caller: Caller,
        scope: Scope,
        aws: bool,
    ) -> Result<RevokeReport, BrokerError> {
        let what = format!("revoke {scope}");
        let approver = self.approver(&caller, None, &what).await?;
        let state = self.state();
        // A session is found in the store too: one issued before a restart, or (team mode) by
        // another daemon.
        let mut sessions = self.sessions(None);
        if matches!(scope, Scope::Session(_)) {
            let now = self.now();
            sessions.extend(self.db(move |s| s.sessions(now)).await?);
        }
        let (scope, roles) = match self.scope_roles(&state, &scope, &sessions) {
            Ok(r) => r,
            Err(m) => {
                let d = Denial {
                    code: DenyCode::BadRequest,
                    message: m,
                    agent: None,
                };
                return Err(self.refuse_admin(&caller, &what, d).await);
            }
        };
        let _admin = self.admin.lock().await;
        // Sessions issued up to the end of this second are denied at AWS.
        let at = self.now() + 1;
        let rev = Revocation {
            id: random_id()[..16].to_owned(),
            scope: scope.clone(),
            at,
            by: approver.clone(),
            // (A session revocation stops that session's delivery; it never blocks new ones.)
            active: true,
            aws_roles: if aws { roles } else { Vec::new() },
        };
        let stored = rev.clone();
        self.db(move |s| s.put_revocation(&stored)).await?;
        self.update_controls(|c| c.revocations.push(rev.clone()));
        let purged = self.purge(&state, &scope);
        let decision = if aws { "revoked+aws" } else { "revoked" };
        let mut r = admin_record(Kind::Revoked, &caller, approver, decision);
        r.scope = Some(scope.to_string());
        r.message = Some(format!(
            "revocation {}; {purged} cached sessions purged",
            rev.id
        ));
        if let Scope::Agent(a) = &scope {
            r.agent = Some(a.clone());
        }
        self.audit.append_durable(r).await?;
        tracing::warn!(scope = %scope, aws, "revoked");
        let mut report = RevokeReport {
            scope: Some(scope.to_string()),
            revocation_id: Some(rev.id.clone()),
            purged,
            ..RevokeReport::default()
        };
        if aws {
            self.write_policies(&rev.aws_roles, &mut report).await?;
        }
        Ok(report)
    }

    /// Lifts the revocations of a scope for new issuance. Denials already written at AWS stay
    /// until `revoke --gc`: sessions revoked then stay revoked.
    pub async fn unrevoke(&self, caller: Caller, scope: Scope) -> Result<usize, BrokerError> {
        let what = format!("unrevoke {scope}");
        let approver = self.approver(&caller, None, &what).await?;
        let _admin = self.admin.lock().await;
        let lifted: Vec<Revocation> = self
            .controls()
            .revocations
            .iter()
            .filter(|r| r.active && r.scope == scope)
            .map(|r| Revocation {
                active: false,
                ..r.clone()
            })
            .collect();
        if lifted.is_empty() {
            let d = Denial {
                code: DenyCode::UnknownApproval,
                message: format!("{scope} is not revoked"),
                agent: None,
            };
            return Err(self.refuse_admin(&caller, &what, d).await);
        }
        // Loosening: audited before it takes effect.
        let mut r = admin_record(Kind::Revoked, &caller, approver, "unrevoked");
        r.scope = Some(scope.to_string());
        self.audit.append_durable(r).await?;
        let stored = lifted.clone();
        self.db(move |s| {
            for r in &stored {
                if r.aws_roles.is_empty() {
                    s.delete_revocation(&r.id)?;
                } else {
                    s.put_revocation(r)?;
                }
            }
            Ok(())
        })
        .await?;
        self.update_controls(|c| {
            c.revocations
                .retain(|r| !lifted.iter().any(|l| l.id == r.id));
            c.revocations
                .extend(lifted.iter().filter(|l| !l.aws_roles.is_empty()).cloned());
        });
        Ok(lifted.len())
    }

    /// Removes AWS denials that no live session can still match (older than the longest
    /// possible session), rewriting or deleting each role's policy.
    pub async fn revoke_gc(&self, caller: Caller) -> Result<RevokeReport, BrokerError> {
        let approver = self.approver(&caller, None, "revoke --gc").await?;
        let _admin = self.admin.lock().await;
        let now = self.now();
        let all = self.controls().revocations.clone();
        // A session revocation has nothing left to stop once the session cannot be alive.
        let session_over = |r: &Revocation| {
            matches!(r.scope, Scope::Session(_)) && now >= r.at + crate::revoke::MAX_SESSION_SECONDS
        };
        let expired: Vec<Revocation> = all
            .iter()
            .filter(|r| !r.aws_live(now) && (!r.aws_roles.is_empty() || session_over(r)))
            .map(|r| Revocation {
                aws_roles: Vec::new(),
                active: r.active && !session_over(r),
                ..r.clone()
            })
            .collect();
        // Only the roles whose denials changed are rewritten: a gc with nothing to collect
        // touches nothing at AWS.
        let mut roles: Vec<String> = all
            .iter()
            .filter(|r| expired.iter().any(|e| e.id == r.id))
            .flat_map(|r| r.aws_roles.clone())
            .collect();
        roles.sort();
        roles.dedup();
        let stored = expired.clone();
        self.db(move |s| {
            for r in &stored {
                if r.active {
                    s.put_revocation(r)?;
                } else {
                    s.delete_revocation(&r.id)?;
                }
            }
            Ok(())
        })
        .await?;
        self.update_controls(|c| {
            c.revocations
                .retain(|r| !expired.iter().any(|e| e.id == r.id));
            c.revocations
                .extend(expired.iter().filter(|e| e.active).cloned());
        });
        let mut report = RevokeReport::default();
        self.write_policies(&roles, &mut report).await?;
        let mut r = admin_record(Kind::Revoked, &caller, approver, "gc");
        r.message = Some(format!(
            "{} expired AWS denials dropped; {} role policies rewritten, {} removed",
            expired.len(),
            report.policies.len(),
            report.removed.len()
        ));
        self.audit.append_durable(r).await?;
        Ok(report)
    }

    /// Puts (or deletes) the revocation policy of each role from the current revocations.
    async fn write_policies(
        &self,
        roles: &[String],
        report: &mut RevokeReport,
    ) -> Result<(), BrokerError> {
        let now = self.now();
        let revs = self.controls().revocations.clone();
        for arn in roles {
            let name = crate::revoke::role_name(arn);
            match crate::revoke::role_policy(&revs, arn, now) {
                Some(doc) => {
                    let chars = crate::revoke::policy_chars(&doc);
                    if chars > crate::revoke::ROLE_INLINE_BUDGET {
                        return Err(IamError {
                            op: "PutRolePolicy",
                            role: arn.clone(),
                            message: format!(
                                "the revocation policy would be {chars} characters, over the role's inline budget of {}; `mandate revoke --all --aws` replaces the older narrower denials with one, and `mandate revoke --gc` drops those over 12 hours old",
                                crate::revoke::ROLE_INLINE_BUDGET
                            ),
                        }
                        .into());
                    }
                    self.parts
                        .revoker
                        .put_role_policy(name, crate::revoke::POLICY_NAME, &doc)
                        .await?;
                    report.policies.push(PolicyWrite {
                        role_arn: arn.clone(),
                        policy_name: crate::revoke::POLICY_NAME,
                        document: doc,
                        chars,
                    });
                }
                None => {
                    self.parts
                        .revoker
                        .delete_role_policy(name, crate::revoke::POLICY_NAME)
                        .await?;
                    report.removed.push(arn.clone());
                }
            }
        }
        Ok(())
    }

    /// The role ARNs a scope's sessions can have, and the scope with a session named by its
    /// request id (what its `mandate-request-id` tag and the cache know it by).
    fn scope_roles(
        &self,
        state: &State,
        scope: &Scope,
        sessions: &[crate::store::SessionInfo],
    ) -> Result<(Scope, Vec<String>), String> {
        let mut scope = scope.clone();
        let role_of = |profile: &str| {
            state
                .profiles
                .get(profile)
                .and_then(|p| state.config.roles.get(p.profile.role.as_str()))
                .map(|r| r.arn.clone())
        };
        let mut roles: Vec<String> = match &scope.clone() {
            Scope::Agent(a) => match state.config.agents.get(a) {
                Some(agent) => agent
                    .profiles
                    .iter()
                    .filter_map(|p| role_of(p.as_str()))
                    .collect(),
                None => return Err(format!("no agent named {}", crate::diag::quoted(a))),
            },
            Scope::Profile(p) => match role_of(p) {
                Some(r) => vec![r],
                None => return Err(format!("no profile named {}", crate::diag::quoted(p))),
            },
            Scope::Session(id) => {
                match sessions
                    .iter()
                    .find(|s| s.request_id == *id || s.session_name == *id)
                {
                    Some(s) => {
                        let roles = state
                            .config
                            .roles
                            .get(&s.role)
                            .map(|r| vec![r.arn.clone()])
                            .unwrap_or_default();
                        scope = Scope::Session(s.request_id.clone());
                        roles
                    }
                    None => {
                        return Err(format!(
                            "no live session {} (use the request id or session name from `mandate status`, or revoke --agent)",
                            crate::diag::quoted(id)
                        ));
                    }
                }
            }
            Scope::All => state.config.roles.values().map(|r| r.arn.clone()).collect(),
        };
        roles.sort();
        roles.dedup();
        Ok((scope, roles))
    }
}
