//! Which resources an action can be granted on: the resource types of the Service Authorization
//! Reference and their ARN patterns (`iam-resource-types.txt`, generated with the action table
//! by `scripts/catalog/generate.mjs`). Pure; used to warn when a profile names a resource that an
//! action cannot take (an S3 object ARN with a region, a bucket ARN for `s3:GetObject`).

use std::collections::HashMap;
use std::sync::OnceLock;

use super::Action;

const TYPES: &str = include_str!("iam-resource-types.txt");

/// Resources longer than this are not checked (no warning): real ARNs are far shorter, and the
/// check is quadratic in the length.
pub const MAX_CHECKED_RESOURCE: usize = 512;

/// (service, type) → its ARN patterns, space-separated.
fn types() -> &'static HashMap<(&'static str, &'static str), &'static str> {
    static TYPES_MAP: OnceLock<HashMap<(&'static str, &'static str), &'static str>> =
        OnceLock::new();
    TYPES_MAP.get_or_init(|| {
        TYPES
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (key, patterns) = l.split_once(' ')?;
                Some((key.split_once(':')?, patterns))
            })
            .collect()
    })
}

impl Action {
    /// The ARN patterns of the resources this action can be granted on, like
    /// `arn:${Partition}:s3:::${BucketName}/${ObjectName}`; empty when it takes only `"*"`.
    pub fn arn_patterns(&self) -> Vec<&'static str> {
        self.resource_types
            .split(',')
            .filter(|t| !t.is_empty())
            .filter_map(|t| types().get(&(self.service, t)).copied())
            .flat_map(|p| p.split(' '))
            .collect()
    }

    /// Whether a statement naming `resource` can grant this action on something: `"*"` always,
    /// otherwise the resource must be able to name a resource of one of the action's types.
    pub fn can_take(&self, resource: &str) -> bool {
        if resource == "*" || resource.len() > MAX_CHECKED_RESOURCE {
            return true;
        }
        self.arn_patterns()
            .iter()
            .any(|p| arn_may_match(resource, p))
    }
}

/// Whether some ARN matches both `resource` (from a profile: `*` and `?` are wildcards, and
/// `${aws:...}` policy variables stand for any text) and `pattern` (from the reference: each
/// `${Name}` stands for any text). Field by field for the partition, service, region and
/// account, then the rest as two globs. A field the pattern leaves empty must be empty (S3
/// bucket and object ARNs have no region or account); a field that is only a placeholder takes
/// anything, empty included (Multi-Region Access Points have no region). Conservative: `true`
/// wherever it cannot tell, so a warning means no ARN could match.
pub fn arn_may_match(resource: &str, pattern: &str) -> bool {
    if resource.len() > MAX_CHECKED_RESOURCE {
        return true;
    }
    let r = arn_fields(resource);
    let p = arn_fields(pattern);
    if r.len() < 6 || p.len() < 6 {
        // Not a full ARN on one side: only a wildcard can still reach it.
        return resource.contains('*') || p.len() < 6;
    }
    (0..6).all(|i| {
        let (rf, pf) = (glob(r[i]), glob(p[i]));
        if i < 5 {
            if pf == [Tok::Star] {
                return true;
            }
            if pf.is_empty() {
                return rf.is_empty() || rf.iter().all(|t| *t == Tok::Star);
            }
        }
        intersects(&rf, &pf)
    })
}

/// The first five `:`-separated fields and the rest, not splitting inside `${...}`.
fn arn_fields(s: &str) -> Vec<&str> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(6);
    let (mut start, mut depth) = (0, 0usize);
    for (i, &c) in b.iter().enumerate() {
        match c {
            b'{' if i > 0 && b[i - 1] == b'$' => depth += 1,
            b'}' if depth > 0 => depth -= 1,
            b':' if depth == 0 && out.len() < 5 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tok {
    Star,
    One,
    Byte(u8),
}

/// A profile's `*`/`?` or a pattern's `${Name}` (any text) as tokens.
fn glob(s: &str) -> Vec<Tok> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$'
            && b.get(i + 1) == Some(&b'{')
            && let Some(end) = s[i..].find('}')
        {
            out.push(Tok::Star);
            i += end + 1;
            continue;
        }
        out.push(match b[i] {
            b'*' => Tok::Star,
            b'?' => Tok::One,
            c => Tok::Byte(c),
        });
        i += 1;
    }
    out
}

/// Whether two globs match a common string. A product automaton over positions (i in `a`, j in
/// `b`): a star may match nothing (skip it) or take one more character (stay); every other
/// token takes one character, and both sides take the same one. Every move but a star meeting
/// a star (a loop, skipped) goes to a later position, so one pass in order decides it.
fn intersects(a: &[Tok], b: &[Tok]) -> bool {
    let (n, m) = (a.len(), b.len());
    let w = m + 1;
    let mut reach = vec![false; (n + 1) * w];
    reach[0] = true;
    for i in 0..=n {
        for j in 0..=m {
            if !reach[i * w + j] {
                continue;
            }
            if i < n && a[i] == Tok::Star {
                reach[(i + 1) * w + j] = true;
            }
            if j < m && b[j] == Tok::Star {
                reach[i * w + j + 1] = true;
            }
            if i < n && j < m {
                let same = match (a[i], b[j]) {
                    (Tok::Byte(x), Tok::Byte(y)) => x == y,
                    _ => true,
                };
                let ni = if a[i] == Tok::Star { i } else { i + 1 };
                let nj = if b[j] == Tok::Star { j } else { j + 1 };
                if same && (ni, nj) != (i, j) {
                    reach[ni * w + nj] = true;
                }
            }
        }
    }
    reach[n * w + m]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::catalog;

    fn action(name: &str) -> Action {
        let (service, name) = name.split_once(':').unwrap();
        *catalog()
            .lookup(service, name)
            .unwrap_or_else(|| panic!("{service}:{name}"))
    }

    #[test]
    fn resources_an_action_can_and_cannot_take() {
        let table: &[(&str, &str, bool)] = &[
            ("s3:GetObject", "arn:aws:s3:::my-bucket/reports/*", true),
            ("s3:GetObject", "arn:aws:s3:::my-bucket/*", true),
            ("s3:GetObject", "*", true),
            ("s3:GetObject", "arn:aws:s3:::*", true),
            // An object ARN with a region or an account names nothing.
            ("s3:GetObject", "arn:aws:s3:us-east-1::my-bucket/key", false),
            (
                "s3:GetObject",
                "arn:aws:s3::123456789012:my-bucket/key",
                false,
            ),
            // A bucket ARN is not an object.
            ("s3:GetObject", "arn:aws:s3:::my-bucket", false),
            ("s3:ListBucket", "arn:aws:s3:::my-bucket", true),
            // A `${Name}` may stand for any text, `/` included, so the bucket pattern also
            // reaches `bucket/*`: the check warns only where no ARN could match.
            ("s3:ListBucket", "arn:aws:s3:::my-bucket/*", true),
            // Another service's ARN.
            (
                "s3:GetObject",
                "arn:aws:dynamodb:us-east-1:123456789012:table/t",
                false,
            ),
            (
                "dynamodb:GetItem",
                "arn:aws:dynamodb:us-east-1:123456789012:table/orders",
                true,
            ),
            ("dynamodb:GetItem", "arn:aws:dynamodb:*:*:table/*", true),
            (
                "dynamodb:GetItem",
                "arn:aws:dynamodb:us-east-1:123456789012:backup/x",
                false,
            ),
            // Only "*": no resource-level permissions.
            (
                "sts:GetCallerIdentity",
                "arn:aws:iam::123456789012:role/r",
                false,
            ),
            ("sts:GetCallerIdentity", "*", true),
            ("ec2:DescribeInstances", "arn:aws:ec2:*:*:instance/*", false),
            // Policy variables, also in the account field (they hold a colon).
            (
                "dynamodb:GetItem",
                "arn:aws:dynamodb:us-east-1:${aws:PrincipalAccount}:table/orders",
                true,
            ),
            (
                "s3:GetObject",
                "arn:aws:s3:::team-data/home/${aws:username}/*",
                true,
            ),
            // Multi-Region Access Points have no region.
            (
                "s3:GetObject",
                "arn:aws:s3::123456789012:accesspoint/x.mrap/object/*",
                true,
            ),
            // Colons in the resource part.
            (
                "logs:PutLogEvents",
                "arn:aws:logs:us-east-1:123456789012:log-group:app:log-stream:*",
                true,
            ),
        ];
        for (a, r, want) in table {
            assert_eq!(action(a).can_take(r), *want, "{a} on {r}");
        }
    }

    #[test]
    fn globs_intersect_exactly_when_a_common_string_exists() {
        let t = |a: &str, b: &str| intersects(&glob(a), &glob(b));
        assert!(t("bucket/*", "${BucketName}/${ObjectName}"));
        assert!(t("*", ""));
        assert!(t("a*c", "ab*"));
        assert!(!t("a*c", "b*"));
        assert!(t("a?c", "abc"));
        assert!(!t("a?c", "ac"));
        assert!(t("accesspoint/*", "accesspoint/${AccessPointName}"));
        assert!(!t("bucket", "accesspoint/${AccessPointName}"));
        assert!(!t("", "x"));
        assert!(t("**", "*"));
        assert!(t("a*b*c", "*b*"));
        assert!(!t("a*b", "*c"));
    }

    #[test]
    fn every_resource_type_an_action_names_has_a_pattern() {
        let mut missing = Vec::new();
        for a in catalog().actions() {
            for t in a.resource_types.split(',').filter(|t| !t.is_empty()) {
                if !types().contains_key(&(a.service, t)) {
                    missing.push(format!("{a} {t}"));
                }
            }
        }
        assert!(
            missing.is_empty(),
            "{} missing: {:?}",
            missing.len(),
            &missing[..20.min(missing.len())]
        );
    }
}
