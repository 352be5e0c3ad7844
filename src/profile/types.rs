//! Validated value types of a capability profile. Each `parse` is the only way to build the type,
//! so code further in can rely on the invariant without re-checking it.

use std::collections::BTreeMap;
use std::fmt;

use crate::catalog::{self, Action};
use crate::diag::quoted;
use crate::suggest::closest;

/// A slug: 1..=64 of `[a-z0-9-]`, not starting or ending with `-`. Used for profile, role and
/// agent names, which end up in file names, session names and tags.
pub fn check_slug(what: &str, s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} {} must be 1 to 64 lowercase letters, digits or '-', not starting or ending with '-'",
            quoted(s)
        ))
    }
}

/// The name of a profile: the file stem of its TOML file.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProfileName(String);

impl ProfileName {
    pub fn parse(s: &str) -> Result<Self, String> {
        check_slug("profile name", s)?;
        Ok(ProfileName(s.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ProfileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The name of a role declared in `broker.toml` (never a raw ARN in a profile).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RoleName(String);

impl RoleName {
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.starts_with("arn:") {
            return Err(format!(
                "role {} is an ARN; name a role declared in broker.toml's [roles] instead",
                quoted(s)
            ));
        }
        check_slug("role", s)?;
        Ok(RoleName(s.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Parses a duration written as hours, minutes and seconds in that order (`"1h30m"`, `"15m"`,
/// `"90s"`) into seconds.
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "invalid duration {}: use hours, minutes and seconds like \"1h\", \"15m\" or \"1h30m\"",
            quoted(s)
        )
    };
    let mut total: u64 = 0;
    let mut digits = String::new();
    let mut last_unit = 0u64; // units must go down: h, then m, then s
    for c in s.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return Err(bad()),
        };
        if digits.is_empty() || digits.len() > 6 || (last_unit != 0 && unit >= last_unit) {
            return Err(bad());
        }
        total += digits.parse::<u64>().map_err(|_| bad())? * unit;
        last_unit = unit;
        digits.clear();
    }
    if !digits.is_empty() || last_unit == 0 {
        return Err(bad());
    }
    Ok(total)
}

/// Session duration in seconds, within the AWS AssumeRole range of 15 minutes to 12 hours.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SessionDuration(u32);

impl SessionDuration {
    pub const MIN_SECONDS: u32 = 15 * 60;
    pub const MAX_SECONDS: u32 = 12 * 60 * 60;
    pub const DEFAULT: SessionDuration = SessionDuration(3600);

    /// Parses `"1h"`, `"15m"`, `"1h30m"`, `"900s"` within the AWS range.
    pub fn parse(s: &str) -> Result<Self, String> {
        let total = parse_duration(s)?;
        if total < u64::from(Self::MIN_SECONDS) {
            return Err(format!(
                "duration {} is {} s, below the AWS minimum of 15m (900 s)",
                quoted(s),
                total
            ));
        }
        if total > u64::from(Self::MAX_SECONDS) {
            return Err(format!(
                "duration {} is {} s, above the AWS maximum of 12h (43200 s)",
                quoted(s),
                total
            ));
        }
        Ok(SessionDuration(total as u32))
    }

    pub fn seconds(self) -> u32 {
        self.0
    }
}

impl fmt::Display for SessionDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (h, m, s) = (self.0 / 3600, self.0 % 3600 / 60, self.0 % 60);
        if h > 0 {
            write!(f, "{h}h")?;
        }
        if m > 0 {
            write!(f, "{m}m")?;
        }
        if s > 0 {
            write!(f, "{s}s")?;
        }
        Ok(())
    }
}

/// Who must approve a session before it is issued.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Approval {
    /// Issued without a human.
    None,
    /// Ask-first: a human approver confirms each session request (the default).
    Operator,
    /// Two-person rule: this many distinct approvers, never counting the agent's operator.
    Peers(u8),
}

impl Approval {
    pub const MAX_PEERS: i64 = 10;

    pub fn to_json(self) -> serde_json::Value {
        match self {
            Approval::None => "none".into(),
            Approval::Operator => "operator".into(),
            Approval::Peers(n) => serde_json::json!({ "peers": n }),
        }
    }
}

impl fmt::Display for Approval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Approval::None => f.write_str("none"),
            Approval::Operator => f.write_str("operator"),
            Approval::Peers(n) => write!(f, "{{ peers = {n} }}"),
        }
    }
}

/// An IAM action pattern that matches at least one action in the catalog.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ActionPattern {
    /// `*`: every action of every service.
    Any,
    /// One catalog action, normalised to AWS's casing.
    Exact(Action),
    /// `service:Pat*`: a wildcard within one service (the service itself is never a wildcard).
    Wildcard {
        service: &'static str,
        pattern: String,
    },
}

impl ActionPattern {
    pub fn parse(s: &str) -> Result<Self, String> {
        if s == "*" {
            return Ok(ActionPattern::Any);
        }
        let cat = catalog::catalog();
        let Some((service, name)) = s.split_once(':') else {
            return Err(format!(
                "invalid action {}: expected \"service:Action\", like \"s3:GetObject\"",
                quoted(s)
            ));
        };
        if service.contains(['*', '?']) {
            return Err(format!(
                "invalid action {}: wildcards in the service prefix are not supported; list each service",
                quoted(s)
            ));
        }
        let name_ok = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'*' | b'?' | b'-' | b'_'));
        if service.is_empty() || !name_ok {
            return Err(format!(
                "invalid action {}: expected \"service:Action\", like \"s3:GetObject\"",
                quoted(s)
            ));
        }
        let Some(actions) = cat.service(service) else {
            let hint = match closest(service, cat.services()) {
                Some(c) => format!("; did you mean {}?", quoted(c)),
                None => String::new(),
            };
            return Err(format!(
                "unknown service {} in action {}{hint}",
                quoted(service),
                quoted(s)
            ));
        };
        let service = actions[0].service;
        if name.contains(['*', '?']) {
            if cat.matching(service, name).next().is_none() {
                return Err(format!(
                    "wildcard {} matches no known {service} action",
                    quoted(s)
                ));
            }
            return Ok(ActionPattern::Wildcard {
                service,
                pattern: name.to_owned(),
            });
        }
        match cat.lookup(service, name) {
            Some(a) => Ok(ActionPattern::Exact(*a)),
            None => {
                let hint = match closest(name, actions.iter().map(|a| a.name)) {
                    Some(c) => format!("; did you mean {}?", quoted(&format!("{service}:{c}"))),
                    None => String::new(),
                };
                Err(format!("unknown action {}{hint}", quoted(s)))
            }
        }
    }

    /// Whether the pattern matches `action` (IAM semantics: case-insensitive wildcards).
    pub fn matches(&self, action: &Action) -> bool {
        match self {
            ActionPattern::Any => true,
            ActionPattern::Exact(a) => a == action,
            ActionPattern::Wildcard { service, pattern } => {
                *service == action.service && catalog::wildcard_match(pattern, action.name)
            }
        }
    }

    /// The one service this pattern is confined to, or `None` for `*`.
    pub fn service(&self) -> Option<&'static str> {
        match self {
            ActionPattern::Any => None,
            ActionPattern::Exact(a) => Some(a.service),
            ActionPattern::Wildcard { service, .. } => Some(service),
        }
    }

    /// The catalog actions this pattern matches.
    pub fn expand(&self) -> Box<dyn Iterator<Item = &'static Action> + '_> {
        let cat = catalog::catalog();
        match self {
            ActionPattern::Any => Box::new(cat.actions().iter()),
            ActionPattern::Exact(a) => Box::new(cat.lookup(a.service, a.name).into_iter()),
            ActionPattern::Wildcard { service, pattern } => {
                Box::new(cat.matching(service, pattern))
            }
        }
    }
}

impl fmt::Display for ActionPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ActionPattern::Any => f.write_str("*"),
            ActionPattern::Exact(a) => write!(f, "{a}"),
            ActionPattern::Wildcard { service, pattern } => write!(f, "{service}:{pattern}"),
        }
    }
}

const PARTITIONS: [&str; 8] = [
    "aws",
    "aws-cn",
    "aws-us-gov",
    "aws-iso",
    "aws-iso-b",
    "aws-iso-e",
    "aws-iso-f",
    "aws-eusc",
];

fn is_wild(s: &str) -> bool {
    s.contains(['*', '?'])
}

/// A resource in a policy statement: `*` or an ARN (`arn:PARTITION:SERVICE:REGION:ACCOUNT:RESOURCE`),
/// wildcards and policy variables allowed.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResourcePattern(String);

impl ResourcePattern {
    pub fn parse(s: &str) -> Result<Self, String> {
        if s == "*" {
            return Ok(ResourcePattern(s.to_owned()));
        }
        let bad = |why: String| format!("invalid resource ARN {}: {why}", quoted(s));
        if s.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(bad("contains whitespace or control characters".into()));
        }
        if s.chars().count() > 2048 {
            return Err(bad("longer than 2048 characters".into()));
        }
        let parts: Vec<&str> = s.splitn(6, ':').collect();
        if parts.len() != 6 {
            return Err(bad(format!(
                "expected arn:PARTITION:SERVICE:REGION:ACCOUNT:RESOURCE (6 parts separated by ':'), found {}",
                parts.len()
            )));
        }
        let [arn, partition, service, region, account, resource] =
            [parts[0], parts[1], parts[2], parts[3], parts[4], parts[5]];
        if arn != "arn" {
            return Err(bad("must start with \"arn:\"".into()));
        }
        if !is_wild(partition) && !PARTITIONS.contains(&partition) {
            return Err(bad(format!(
                "unknown partition {} (expected one of {})",
                quoted(partition),
                PARTITIONS.join(", ")
            )));
        }
        let slug = |t: &str| {
            t.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'*' || b == b'?'
            })
        };
        if service.is_empty() || !slug(service) {
            return Err(bad(format!("invalid service {}", quoted(service))));
        }
        if !slug(region) {
            return Err(bad(format!("invalid region {}", quoted(region))));
        }
        let account_ok = account.is_empty()
            || account == "aws"
            || is_wild(account)
            || account.contains("${")
            || (account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit()));
        if !account_ok {
            return Err(bad(format!(
                "account {} must be 12 digits (or empty, or a wildcard)",
                quoted(account)
            )));
        }
        if resource.is_empty() {
            return Err(bad("the resource part after the fifth ':' is empty".into()));
        }
        Ok(ResourcePattern(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A managed policy ARN passed to AssumeRole as `PolicyArns`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ManagedPolicyArn(String);

impl ManagedPolicyArn {
    pub const MAX: usize = 10;

    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "invalid managed policy ARN {}: expected arn:aws:iam::ACCOUNT:policy/NAME (ACCOUNT is 12 digits or \"aws\")",
                quoted(s)
            )
        };
        let parts: Vec<&str> = s.splitn(6, ':').collect();
        if parts.len() != 6 {
            return Err(bad());
        }
        let account = parts[4];
        let ok = parts[0] == "arn"
            && PARTITIONS.contains(&parts[1])
            && parts[2] == "iam"
            && parts[3].is_empty()
            && (account == "aws"
                || (account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit())))
            && parts[5].strip_prefix("policy/").is_some_and(|n| {
                !n.is_empty()
                    && !n.ends_with('/')
                    && n.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-/".contains(&b))
            });
        if ok {
            Ok(ManagedPolicyArn(s.to_owned()))
        } else {
            Err(bad())
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Session tags the profile adds. Keys starting with `mandate-` are the broker's own and `aws:` is
/// AWS's; both are reserved.
pub const BROKER_TAG_KEYS: [&str; 4] = [
    "mandate-agent",
    "mandate-profile",
    "mandate-request-id",
    "mandate-access",
];
/// AWS allows 50 session tags; the broker sets [`BROKER_TAG_KEYS`] itself.
pub const MAX_PROFILE_TAGS: usize = 50 - BROKER_TAG_KEYS.len();

fn tag_chars_ok(s: &str) -> bool {
    s.chars()
        .all(|c| c.is_alphanumeric() || c == ' ' || "_.:/=+-@".contains(c))
}

pub fn check_tag_key(k: &str) -> Result<(), String> {
    if k.is_empty() || k.chars().count() > 128 {
        return Err(format!("tag key {} must be 1 to 128 characters", quoted(k)));
    }
    if !tag_chars_ok(k) {
        return Err(format!(
            "tag key {} may only contain letters, digits, spaces and _ . : / = + - @",
            quoted(k)
        ));
    }
    let lower = k.to_ascii_lowercase();
    if lower.starts_with("aws:") || lower.starts_with("mandate-") {
        return Err(format!(
            "tag key {} is reserved (\"aws:\" is AWS's, \"mandate-\" is the broker's)",
            quoted(k)
        ));
    }
    Ok(())
}

pub fn check_tag_value(k: &str, v: &str) -> Result<(), String> {
    if v.chars().count() > 256 {
        return Err(format!(
            "tag {} has a value of {} characters; AWS allows 256",
            quoted(k),
            v.chars().count()
        ));
    }
    if !tag_chars_ok(v) {
        return Err(format!(
            "tag {} value {} may only contain letters, digits, spaces and _ . : / = + - @",
            quoted(k),
            quoted(v)
        ));
    }
    Ok(())
}

/// The IAM condition operators a profile may use (with optional `IfExists` suffix and
/// `ForAllValues:` / `ForAnyValue:` prefix).
pub const CONDITION_OPERATORS: [&str; 27] = [
    "StringEquals",
    "StringNotEquals",
    "StringEqualsIgnoreCase",
    "StringNotEqualsIgnoreCase",
    "StringLike",
    "StringNotLike",
    "NumericEquals",
    "NumericNotEquals",
    "NumericLessThan",
    "NumericLessThanEquals",
    "NumericGreaterThan",
    "NumericGreaterThanEquals",
    "DateEquals",
    "DateNotEquals",
    "DateLessThan",
    "DateLessThanEquals",
    "DateGreaterThan",
    "DateGreaterThanEquals",
    "Bool",
    "BinaryEquals",
    "IpAddress",
    "NotIpAddress",
    "ArnEquals",
    "ArnLike",
    "ArnNotEquals",
    "ArnNotLike",
    "Null",
];

pub fn check_condition_operator(op: &str) -> Result<(), String> {
    let base = op
        .strip_prefix("ForAllValues:")
        .or_else(|| op.strip_prefix("ForAnyValue:"))
        .unwrap_or(op);
    let base = match base.strip_suffix("IfExists") {
        Some(b) if b != "Null" => b,
        _ => base,
    };
    if CONDITION_OPERATORS.contains(&base) {
        return Ok(());
    }
    let hint = match closest(base, CONDITION_OPERATORS) {
        Some(c) => format!("; did you mean {}?", quoted(c)),
        None => String::new(),
    };
    Err(format!("unknown condition operator {}{hint}", quoted(op)))
}

pub fn check_condition_key(key: &str) -> Result<(), String> {
    let ok = key.split_once(':').is_some_and(|(p, rest)| {
        !p.is_empty()
            && !rest.is_empty()
            && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    }) && key.len() <= 256
        && !key.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid condition key {}: expected \"prefix:name\", like \"aws:RequestedRegion\"",
            quoted(key)
        ))
    }
}

/// operator → key → values, kept sorted so the compiled policy is deterministic.
pub type Condition = BTreeMap<String, BTreeMap<String, Vec<String>>>;

#[cfg(test)]
mod tests;
