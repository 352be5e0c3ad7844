//! Which resources an action can be granted on: the resource types of the Service Authorization
//! Reference and their ARN patterns (`iam-resource-types.txt`, generated with the action table
//! by `scripts/catalog/generate.mjs`). Pure; used to warn when a profile names a resource that an
//! action cannot take (an S3 object ARN with a region, a bucket ARN for `s3:GetObject`).

use std::collections::HashMap;
use std::sync::OnceLock;

use super::Action;

const TYPES: &str = include_str!("iam-resource-types.txt");

/// `service:type` → its ARN patterns, space-separated.
fn types() -> &'static HashMap<&'static str, &'static str> {
    static TYPES_MAP: OnceLock<HashMap<&'static str, &'static str>> = OnceLock::new();
    TYPES_MAP.get_or_init(|| {
        TYPES
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_once(' '))
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
            .filter_map(|t| {
                // Conditions-only types ("aws:RequestTag/...") are not resources; skip unknowns.
                types()
                    .get(format!("{}:{t}", self.service).as_str())
                    .copied()
            })
            .flat_map(|p| p.split(' '))
            .collect()
    }

    /// Whether a statement naming `resource` can grant this action on something: `"*"` always,
    /// otherwise the resource must be able to name a resource of one of the action's types.
    pub fn can_take(&self, resource: &str) -> bool {
        if resource == "*" {
            return true;
        }
        self.arn_patterns()
            .iter()
            .any(|p| arn_may_match(resource, p))
    }
}

/// Whether some ARN matches both `resource` (from a profile: `*` and `?` are wildcards) and
/// `pattern` (from the reference: each `${Name}` stands for any text). Field by field for the
/// partition, service, region and account (an empty field in the pattern must be empty in the
/// resource: S3 object and bucket ARNs have no region or account), then the rest as two globs.
pub fn arn_may_match(resource: &str, pattern: &str) -> bool {
    let r: Vec<&str> = resource.splitn(6, ':').collect();
    let p: Vec<&str> = pattern.splitn(6, ':').collect();
    if r.len() < 6 || p.len() < 6 {
        // Not a full ARN on one side: only a wildcard can still reach it.
        return resource.contains('*') || p.len() < 6;
    }
    (0..6).all(|i| {
        let (rf, pf) = (glob(r[i]), glob(p[i]));
        if i < 5 && pf.is_empty() != rf.is_empty() && !rf.contains(&Tok::Star) {
            return false;
        }
        intersects(&rf, &pf)
    })
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

/// Whether two globs match a common string (dynamic programming over both positions).
fn intersects(a: &[Tok], b: &[Tok]) -> bool {
    let (n, m) = (a.len(), b.len());
    // reach[i][j]: some common prefix takes a to i and b to j.
    let mut reach = vec![vec![false; m + 1]; n + 1];
    reach[0][0] = true;
    for i in 0..=n {
        for j in 0..=m {
            if !reach[i][j] {
                continue;
            }
            // A star may match nothing.
            if i < n && a[i] == Tok::Star {
                reach[i + 1][j] = true;
            }
            if j < m && b[j] == Tok::Star {
                reach[i][j + 1] = true;
            }
            // One more character of the common string, taken by each side's token (a star
            // stays where it is).
            if i < n && j < m {
                let same = match (a[i], b[j]) {
                    (Tok::Byte(x), Tok::Byte(y)) => x == y,
                    _ => true,
                };
                if same {
                    let ni = if a[i] == Tok::Star { i } else { i + 1 };
                    let nj = if b[j] == Tok::Star { j } else { j + 1 };
                    if (ni, nj) != (i, j) {
                        reach[ni][nj] = true;
                    }
                }
            }
        }
    }
    reach[n][m]
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
    }

    #[test]
    fn every_resource_type_an_action_names_has_a_pattern() {
        let mut missing = Vec::new();
        for a in catalog().actions() {
            for t in a.resource_types.split(',').filter(|t| !t.is_empty()) {
                if !types().contains_key(format!("{}:{t}", a.service).as_str()) {
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
