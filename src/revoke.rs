//! Revocations, circuit-breaker trips and the global pause: the human stop buttons.
//!
//! Pure: the broker persists these through [`crate::store::Store`] and calls AWS
//! through [`crate::aws::Revoker`]. [`role_policy`] builds the inline policy that denies
//! already-issued sessions at AWS.

use serde::{Deserialize, Serialize};

/// The longest session STS can issue (AssumeRole's 12 h maximum): a session issued before a
/// revocation cannot be alive this long after it, so the AWS deny can go.
pub const MAX_SESSION_SECONDS: i64 = 12 * 3600;
/// The inline policy the broker owns on each role.
pub const POLICY_NAME: &str = "mandate-revocations";
/// IAM's budget for all inline policies of one role, in characters (whitespace excluded).
pub const ROLE_INLINE_BUDGET: usize = 10_240;

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(
    rename_all = "snake_case",
    tag = "kind",
    content = "name",
    deny_unknown_fields
)]
pub enum Scope {
    Agent(String),
    Profile(String),
    /// A session, by the broker's request id (the `mandate-request-id` session tag).
    Session(String),
    All,
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::Agent(a) => write!(f, "agent {a}"),
            Scope::Profile(p) => write!(f, "profile {p}"),
            Scope::Session(s) => write!(f, "session {s}"),
            Scope::All => f.write_str("every agent"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Revocation {
    pub id: String,
    pub scope: Scope,
    /// When it was made (Unix seconds); sessions issued before this are denied at AWS.
    pub at: i64,
    pub by: String,
    /// Still blocks new issuance (`mandate unrevoke` clears it).
    pub active: bool,
    /// Role ARNs whose inline policy denies this scope's older sessions (`--aws`).
    pub aws_roles: Vec<String>,
}

impl Revocation {
    /// Whether it stops a new issuance for this agent and profile.
    pub fn blocks(&self, agent: &str, profile: &str) -> bool {
        self.active
            && match &self.scope {
                Scope::Agent(a) => a == agent,
                Scope::Profile(p) => p == profile,
                Scope::Session(_) => false,
                Scope::All => true,
            }
    }

    /// Whether the AWS deny still matters at `now`.
    pub fn aws_live(&self, now: i64) -> bool {
        !self.aws_roles.is_empty() && now < self.at + MAX_SESSION_SECONDS
    }
}

/// A tripped circuit breaker: the agent is locked until a human resets it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trip {
    pub agent: String,
    pub at: i64,
    pub reason: String,
}

/// The global kill switch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pause {
    pub at: i64,
    pub by: String,
    pub reason: Option<String>,
}

/// The inline policy for `role_arn`: one Deny per revoked scope, for sessions issued before the
/// (latest) revocation of that scope. `None` when nothing needs denying any more (delete it).
/// Deterministic: the same revocations give the same bytes, so re-putting it is idempotent.
pub fn role_policy(revocations: &[Revocation], role_arn: &str, now: i64) -> Option<String> {
    let mut latest: std::collections::BTreeMap<&Scope, i64> = Default::default();
    for r in revocations {
        if r.aws_live(now) && r.aws_roles.iter().any(|a| a == role_arn) {
            let t = latest.entry(&r.scope).or_insert(r.at);
            *t = (*t).max(r.at);
        }
    }
    // A revocation of everyone covers every older narrower one (this keeps the policy within
    // the role's budget: `revoke --all --aws` always fits).
    if let Some(&all) = latest.get(&Scope::All) {
        latest.retain(|scope, at| **scope == Scope::All || *at > all);
    }
    if latest.is_empty() {
        return None;
    }
    let statements: Vec<serde_json::Value> = latest
        .iter()
        .enumerate()
        .map(|(i, (scope, at))| {
            let (op, key, value) = match scope {
                Scope::Agent(a) => ("StringEquals", "aws:SourceIdentity", format!("mandate-{a}")),
                Scope::Profile(p) => (
                    "StringEquals",
                    "aws:PrincipalTag/mandate-profile",
                    p.clone(),
                ),
                Scope::Session(s) => (
                    "StringEquals",
                    "aws:PrincipalTag/mandate-request-id",
                    s.clone(),
                ),
                Scope::All => ("StringLike", "aws:SourceIdentity", "mandate-*".to_owned()),
            };
            serde_json::json!({
                "Sid": format!("MandateRevoke{i}"),
                "Effect": "Deny",
                "Action": "*",
                "Resource": "*",
                "Condition": {
                    op: { key: value },
                    "DateLessThan": { "aws:TokenIssueTime": crate::clock::rfc3339(*at) },
                },
            })
        })
        .collect();
    let doc = serde_json::json!({ "Version": "2012-10-17", "Statement": statements });
    Some(doc.to_string())
}

/// IAM counts an inline policy's characters without whitespace.
pub fn policy_chars(doc: &str) -> usize {
    doc.chars().filter(|c| !c.is_whitespace()).count()
}

/// The role name in a role ARN (`arn:aws:iam::123:role/path/name` → `name`).
pub fn role_name(arn: &str) -> &str {
    arn.rsplit('/').next().unwrap_or(arn)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rev(scope: Scope, at: i64, roles: &[&str]) -> Revocation {
        Revocation {
            id: format!("r{at}"),
            scope,
            at,
            by: "alice".into(),
            active: true,
            aws_roles: roles.iter().map(|s| s.to_string()).collect(),
        }
    }

    const ROLE: &str = "arn:aws:iam::123456789012:role/agent-role";

    #[test]
    fn policy_denies_each_scope_before_its_latest_revocation() {
        let now = 1_795_000_000;
        let revs = [
            rev(Scope::Agent("claude".into()), now - 100, &[ROLE]),
            rev(Scope::Agent("claude".into()), now - 10, &[ROLE]),
            rev(Scope::Session("abc".into()), now - 5, &[ROLE]),
            rev(
                Scope::Profile("s3-data".into()),
                now - 5,
                &["arn:aws:iam::1:role/x"],
            ),
            rev(Scope::All, now - 20, &[]),
        ];
        let doc = role_policy(&revs, ROLE, now).unwrap();
        assert_eq!(
            doc,
            r#"{"Statement":[{"Action":"*","Condition":{"DateLessThan":{"aws:TokenIssueTime":"2026-11-18T11:06:30Z"},"StringEquals":{"aws:SourceIdentity":"mandate-claude"}},"Effect":"Deny","Resource":"*","Sid":"MandateRevoke0"},{"Action":"*","Condition":{"DateLessThan":{"aws:TokenIssueTime":"2026-11-18T11:06:35Z"},"StringEquals":{"aws:PrincipalTag/mandate-request-id":"abc"}},"Effect":"Deny","Resource":"*","Sid":"MandateRevoke1"}],"Version":"2012-10-17"}"#
        );
        assert_eq!(role_policy(&revs, ROLE, now), Some(doc), "deterministic");
        // Twelve hours on, no session from before the revocations can be alive.
        assert_eq!(role_policy(&revs, ROLE, now + MAX_SESSION_SECONDS), None);
    }

    #[test]
    fn revoking_everyone_subsumes_older_narrower_revocations() {
        let now = 1_795_000_000;
        let mut revs: Vec<Revocation> = (0..100)
            .map(|i| rev(Scope::Session(format!("s{i}")), now - 100 + i, &[ROLE]))
            .collect();
        let many = role_policy(&revs, ROLE, now).unwrap();
        assert!(policy_chars(&many) > ROLE_INLINE_BUDGET);
        revs.push(rev(Scope::All, now - 50, &[ROLE]));
        let doc = role_policy(&revs, ROLE, now).unwrap();
        let v: serde_json::Value = serde_json::from_str(&doc).unwrap();
        // The 49 session revocations made after it stay (plus its own statement); the 51 made
        // at or before it are covered by it.
        assert_eq!(v["Statement"].as_array().unwrap().len(), 50);
        assert!(policy_chars(&doc) < policy_chars(&many));
    }

    #[test]
    fn blocks_only_its_scope_while_active() {
        let mut r = rev(Scope::Agent("claude".into()), 0, &[]);
        assert!(r.blocks("claude", "readonly"));
        assert!(!r.blocks("other", "readonly"));
        r.active = false;
        assert!(!r.blocks("claude", "readonly"));
        assert!(rev(Scope::All, 0, &[]).blocks("x", "y"));
        assert!(rev(Scope::Profile("p".into()), 0, &[]).blocks("x", "p"));
        assert!(!rev(Scope::Session("s".into()), 0, &[]).blocks("x", "p"));
        assert_eq!(role_name(ROLE), "agent-role");
        assert_eq!(role_name("arn:aws:iam::1:role/team/a/r"), "r");
    }
}
