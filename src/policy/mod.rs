//! Compiles a [`Profile`] into the exact session policy sent to STS, checks AWS's limits, and
//! explains what a session can do.
//!
//! The compiled policy is: the declared allows, the declared denies, and one automatic explicit
//! Deny of the classified (destructive in effect, see [`catalog::risk`]) actions the allows
//! reach, minus those the profile opts into. Output is minified and deterministic: the same profile gives the
//! same bytes and the same sha256.

mod document;
pub mod evaluate;
pub mod explain;

use std::collections::BTreeSet;
use std::fmt;

use sha2::{Digest, Sha256};

pub use document::{Effect, OneOrMany, PolicyDocument, Statement};

use crate::catalog::{self, Action};
use crate::profile::{Profile, Rule};

/// AWS: "The plaintext that you use for both inline and managed session policies can't exceed
/// 2,048 characters."
pub const MAX_POLICY_CHARS: usize = 2048;

/// The compiled session policy. It can only be built by [`compile`], so anything holding one
/// holds a policy that passed every check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionPolicy {
    json: String,
    sha256: String,
}

impl SessionPolicy {
    /// The exact minified bytes sent as AssumeRole's `Policy`.
    pub fn as_json(&self) -> &str {
        &self.json
    }
    /// Lower-case hex sha256 of [`Self::as_json`].
    pub fn sha256(&self) -> &str {
        &self.sha256
    }
}

/// What takes the space in the 2,048-character budget.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SizeBreakdown {
    pub parts: Vec<(String, usize)>,
    pub total: usize,
}

impl fmt::Display for SizeBreakdown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = self
            .parts
            .iter()
            .map(|(l, _)| l.chars().count())
            .max()
            .unwrap_or(0);
        for (label, n) in &self.parts {
            writeln!(f, "  {label:<width$}  {n:>5}")?;
        }
        write!(
            f,
            "  {:<width$}  {:>5} / {MAX_POLICY_CHARS}",
            "total", self.total
        )
    }
}

/// A profile compiled into everything AssumeRole needs.
#[derive(Clone, Debug)]
pub struct CompiledProfile {
    pub profile: Profile,
    pub policy: SessionPolicy,
    pub document: PolicyDocument,
    /// The destructive catalog actions the automatic Deny exists for. Its compact patterns may
    /// also match actions the session cannot use anyway (see `auto_deny`).
    pub auto_denied: Vec<&'static Action>,
    pub size: SizeBreakdown,
    /// sha256 over everything that shapes a session (policy, ARNs, role, duration, approval,
    /// tags): the cache and approval key for this profile version.
    pub profile_sha256: String,
}

impl CompiledProfile {
    /// The `mandate-access` session tag: `admin` for `*`, `write` when any declared action is
    /// above Read level, else `read`.
    pub fn access_type(&self) -> &'static str {
        let mut write = false;
        for p in self.profile.allow.iter().flat_map(|r| &r.actions) {
            match p {
                crate::profile::ActionPattern::Any => return "admin",
                _ => {
                    write |= p.expand().any(|a| {
                        !matches!(
                            a.level,
                            catalog::AccessLevel::List | catalog::AccessLevel::Read
                        )
                    })
                }
            }
        }
        if write { "write" } else { "read" }
    }

    pub fn policy_arns(&self) -> Vec<&str> {
        self.profile
            .managed_policies
            .iter()
            .map(|a| a.as_str())
            .collect()
    }

    /// `profiles show --json`.
    pub fn to_json(&self) -> serde_json::Value {
        let p = &self.profile;
        serde_json::json!({
            "profile": p.name.as_str(),
            "source": p.source,
            "description": p.description,
            "role": p.role.as_str(),
            "policy": serde_json::from_str::<serde_json::Value>(self.policy.as_json()).unwrap_or_default(),
            "policy_json": self.policy.as_json(),
            "policy_sha256": self.policy.sha256(),
            "policy_chars": self.size.total,
            "policy_limit": MAX_POLICY_CHARS,
            "policy_size": self.size.parts.iter().map(|(l, n)| serde_json::json!({"part": l, "chars": n})).collect::<Vec<_>>(),
            "policy_arns": self.policy_arns(),
            "duration_seconds": p.duration.seconds(),
            "approval": p.approval.to_json(),
            "destructive": p.destructive.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
            "tags": p.tags,
            "profile_sha256": self.profile_sha256,
        })
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error(
        "the session policy needs {} characters but AWS allows {MAX_POLICY_CHARS} for the inline policy plus managed policy ARNs:\n{breakdown}\n  hint: narrow wildcards, drop services from [[allow]], or opt into fewer destructive actions",
        breakdown.total
    )]
    TooLarge { breakdown: SizeBreakdown },
}

/// Compiles a validated profile. Pure and deterministic.
pub fn compile(profile: &Profile) -> Result<CompiledProfile, PolicyError> {
    let mut statements = Vec::new();
    let mut labels = Vec::new();
    for (kind, effect, rules) in [
        ("allow", Effect::Allow, &profile.allow),
        ("deny", Effect::Deny, &profile.deny),
    ] {
        for (i, rule) in rules.iter().enumerate() {
            let stmt = rule_statement(effect, rule);
            labels.push(format!(
                "{kind}[{i}] ({} actions, {} resources)",
                stmt.action.iter().count(),
                stmt.resource.iter().count()
            ));
            statements.push(stmt);
        }
    }
    let auto = auto_deny(profile);
    if !auto.patterns.is_empty() {
        statements.push(Statement {
            effect: Effect::Deny,
            action: OneOrMany::from_vec(auto.patterns.clone()),
            resource: OneOrMany::One("*".into()),
            condition: None,
        });
        let services: BTreeSet<&str> = auto.denied.iter().map(|a| a.service).collect();
        labels.push(format!(
            "automatic deny of {} destructive actions ({})",
            auto.denied.len(),
            services.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
    let document = PolicyDocument::new(statements);
    let json = document.to_json();

    let mut parts = Vec::new();
    let mut used = 0;
    for (stmt, label) in document.statement.iter().zip(labels) {
        let n = stmt.to_json().chars().count();
        used += n;
        parts.push((label, n));
    }
    let json_chars = json.chars().count();
    parts.insert(0, ("policy envelope".to_owned(), json_chars - used));
    let arn_chars: usize = profile
        .managed_policies
        .iter()
        .map(|a| a.as_str().chars().count())
        .sum();
    if !profile.managed_policies.is_empty() {
        parts.push((
            format!("managed policy ARNs ({})", profile.managed_policies.len()),
            arn_chars,
        ));
    }
    let size = SizeBreakdown {
        parts,
        total: json_chars + arn_chars,
    };
    if size.total > MAX_POLICY_CHARS {
        return Err(PolicyError::TooLarge { breakdown: size });
    }

    let sha256 = hex(&Sha256::digest(json.as_bytes()));
    let shape = serde_json::json!({
        "approval": profile.approval.to_json(),
        "duration_seconds": profile.duration.seconds(),
        "policy_arns": profile.managed_policies.iter().map(|a| a.as_str()).collect::<Vec<_>>(),
        "policy_sha256": sha256,
        "role": profile.role.as_str(),
        "tags": profile.tags,
    });
    let profile_sha256 = hex(&Sha256::digest(shape.to_string().as_bytes()));
    Ok(CompiledProfile {
        profile: profile.clone(),
        policy: SessionPolicy { json, sha256 },
        document,
        auto_denied: auto.denied,
        size,
        profile_sha256,
    })
}

/// Sorted and deduplicated: the order of a list never changes a policy's meaning, so it must not
/// change its bytes or hash either.
fn sorted_unique(items: impl Iterator<Item = String>) -> Vec<String> {
    let set: BTreeSet<String> = items.collect();
    set.into_iter().collect()
}

fn rule_statement(effect: Effect, rule: &Rule) -> Statement {
    Statement {
        effect,
        action: OneOrMany::from_vec(sorted_unique(rule.actions.iter().map(|a| a.to_string()))),
        resource: OneOrMany::from_vec(sorted_unique(
            rule.resources.iter().map(|r| r.as_str().to_owned()),
        )),
        // Values of one condition key are ORed: their order means nothing, so it must not
        // change the bytes or the hash either.
        condition: rule.condition.as_ref().map(|c| {
            c.iter()
                .map(|(op, keys)| {
                    let keys = keys
                        .iter()
                        .map(|(k, v)| (k.clone(), sorted_unique(v.iter().cloned())))
                        .collect();
                    (op.clone(), keys)
                })
                .collect()
        }),
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of lower- or upper-case hex; None for anything else.
pub(crate) fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

struct AutoDeny {
    /// Exactly the catalog actions denied automatically.
    denied: Vec<&'static Action>,
    /// The compact patterns that deny them, sorted.
    patterns: Vec<String>,
}

/// The automatic Deny: every classified action that the profile's allows reach and that it does
/// not opt into, written as few patterns as possible.
///
/// Without managed policies, an action no allow matches is already denied (a session policy only
/// ever narrows), so only the classified actions within reach need an explicit Deny: a wildcard
/// never grants one implicitly. Managed policies may grant anything; their grants are unknown
/// here, so then every classified action of every touched service is denied (and the profile
/// needs a human anyway).
///
/// A pattern `service:Prefix*` is used when it matches no action the session must keep: the
/// profile's opt-ins and its declared (unclassified) allows. With managed policies it must also
/// keep every unclassified action of the service. Matching an action that is neither
/// classified nor kept is harmless, because the session could not use it anyway.
fn auto_deny(profile: &Profile) -> AutoDeny {
    let cat = catalog::catalog();
    let services: Vec<&'static str> = match profile.touched_services() {
        Some(s) => s.into_iter().collect(),
        None => cat.services().collect(),
    };
    let keep_all_safe = !profile.managed_policies.is_empty();
    let mut denied = Vec::new();
    let mut patterns = Vec::new();
    for service in services {
        let actions = cat.service(service).unwrap_or(&[]);
        let is_denied = |a: &Action| {
            a.is_destructive()
                && !profile.opts_into(a)
                && !profile.uses_unreviewed(a)
                && (keep_all_safe || profile.declares_allow(a))
        };
        let deny: Vec<&'static Action> = actions.iter().filter(|a| is_denied(a)).collect();
        if deny.is_empty() {
            continue;
        }
        let mut keep: Vec<String> = actions
            .iter()
            .filter(|a| {
                !a.is_destructive() && (keep_all_safe || profile.declares_allow(a))
                    || (profile.opts_into(a) || profile.uses_unreviewed(a))
                        && profile.declares_allow(a)
            })
            .map(|a| a.name.to_ascii_lowercase())
            .collect();
        keep.sort();
        let kept_prefix = |p: &str| {
            let i = keep.partition_point(|k| k.as_str() < p);
            keep.get(i).is_some_and(|k| k.starts_with(p))
        };
        let mut svc_patterns = BTreeSet::new();
        if keep.is_empty() {
            svc_patterns.insert(format!("{service}:*"));
        } else {
            for a in &deny {
                let lower = a.name.to_ascii_lowercase();
                let cut = (1..=lower.len())
                    .find(|&i| lower.is_char_boundary(i) && !kept_prefix(&lower[..i]));
                svc_patterns.insert(match cut {
                    Some(i) => format!("{service}:{}*", &a.name[..i]),
                    None => format!("{service}:{}", a.name),
                });
            }
        }
        denied.extend(deny);
        patterns.extend(svc_patterns);
    }
    patterns.sort_by_key(|p| p.to_ascii_lowercase());
    AutoDeny { denied, patterns }
}

#[cfg(test)]
mod tests;
