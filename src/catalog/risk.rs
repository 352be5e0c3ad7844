//! The risk classification by effect: which catalog actions the automatic Deny exists for.
//!
//! An action is classified (and so denied unless a profile opts into it through `destructive`,
//! which needs a human) when
//!
//! 1. a row of the reviewed table `risk.txt` names it, exactly (any access level) or through a
//!    wildcard (Write, Tagging and Permissions-management actions only, never List or Read);
//!    the most specific row wins: an exact row, else the longest wildcard; class `safe` means
//!    "reviewed: not dangerous" and overrides the rules below;
//! 2. else it is a Permissions-management action (it changes who may do what);
//! 3. else it is a Write action with a destructive verb anywhere among the words of its name
//!    (`PartiQLDelete`, `AdminDeleteUser`, `StartFHIRBulkDeleteJob`);
//! 4. else it is a Write or Tagging action of a service without a `SERVICE:* reviewed` row:
//!    class `unreviewed`, so that a wildcard over a service nobody has reviewed fails closed.
//!
//! The table is the primary source; the verb rule only supplements it. The unit tests check
//! every row against the catalog.

use std::fmt;

use super::{AccessLevel, Action, wildcard_match};

pub(super) const TABLE: &str = include_str!("risk.txt");

/// What an action can do that makes it need a human.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RiskClass {
    /// Destroys data or keys, or removes the safety nets that prevent it.
    Destroy,
    /// Takes a service down or cuts its traffic.
    Disrupt,
    /// Blinds audit and detection.
    Blind,
    /// Escalates or escapes the profile: new identities or credentials, `iam:PassRole`, role
    /// chaining, changes to permissions, code or commands run as another principal.
    Escalate,
    /// Exposes data publicly or to other accounts.
    Expose,
    /// A Write or Tagging action of a service nobody has reviewed yet: a wildcard never grants
    /// it (fail closed); naming it exactly is the profile author's own decision.
    Unreviewed,
}

impl RiskClass {
    /// In the order a reviewer should read them: what cannot be undone first.
    pub const ALL: [RiskClass; 6] = [
        RiskClass::Destroy,
        RiskClass::Escalate,
        RiskClass::Blind,
        RiskClass::Expose,
        RiskClass::Disrupt,
        RiskClass::Unreviewed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RiskClass::Destroy => "destroy",
            RiskClass::Disrupt => "disrupt",
            RiskClass::Blind => "blind",
            RiskClass::Escalate => "escalate",
            RiskClass::Expose => "expose",
            RiskClass::Unreviewed => "unreviewed",
        }
    }

    /// One line for a human reviewer.
    pub fn describe(self) -> &'static str {
        match self {
            RiskClass::Destroy => "destroy data or keys, or remove the safety nets against that",
            RiskClass::Disrupt => "take a service down or cut its traffic",
            RiskClass::Blind => "blind audit and detection",
            RiskClass::Escalate => {
                "escalate or escape the profile (identities, credentials, roles, code run as another principal)"
            }
            RiskClass::Expose => "expose data publicly or to other accounts",
            RiskClass::Unreviewed => {
                "change things in a service whose actions nobody has reviewed yet"
            }
        }
    }

    fn parse(s: &str) -> Option<Option<RiskClass>> {
        Some(Some(match s {
            "unreviewed" => return None,
            "destroy" => RiskClass::Destroy,
            "disrupt" => RiskClass::Disrupt,
            "blind" => RiskClass::Blind,
            "escalate" => RiskClass::Escalate,
            "expose" => RiskClass::Expose,
            "safe" => return Some(None),
            _ => return None,
        }))
    }
}

impl fmt::Display for RiskClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an action is classified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Basis {
    /// A row of the reviewed table.
    Reviewed {
        pattern: &'static str,
        why: &'static str,
    },
    /// Every Permissions-management action.
    PermissionsManagement,
    /// A Write action whose name contains a destructive verb.
    Verb(&'static str),
    /// A Write or Tagging action of a service without a `SERVICE:* reviewed` row.
    Unreviewed,
}

/// The classification of one action.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Risk {
    pub class: RiskClass,
    pub basis: Basis,
}

impl Risk {
    /// One line: why this action needs a human.
    pub fn why(&self) -> String {
        match self.basis {
            Basis::Reviewed { why, .. } => why.to_owned(),
            Basis::PermissionsManagement => {
                "a Permissions-management action: it changes who may do what".to_owned()
            }
            Basis::Verb(v) => format!("a Write action that says {v:?}"),
            Basis::Unreviewed => format!(
                "a {} action of a service the classification has not reviewed yet",
                if self.class == RiskClass::Unreviewed {
                    "Write or Tagging"
                } else {
                    "Write"
                }
            ),
        }
    }
}

/// Destructive verbs, wherever they stand in an action's name (ignoring case, for names such as
/// `apigateway:DELETE`), with the class they imply.
pub const DESTRUCTIVE_VERBS: [(&str, RiskClass); 34] = [
    ("Bypass", RiskClass::Destroy),
    ("Delete", RiskClass::Destroy),
    ("Deprovision", RiskClass::Destroy),
    ("Redact", RiskClass::Destroy),
    ("Reset", RiskClass::Destroy),
    ("Unlock", RiskClass::Destroy),
    ("Destroy", RiskClass::Destroy),
    ("Drop", RiskClass::Destroy),
    ("Erase", RiskClass::Destroy),
    ("Expire", RiskClass::Destroy),
    ("Purge", RiskClass::Destroy),
    ("Remove", RiskClass::Destroy),
    ("Terminate", RiskClass::Destroy),
    ("Truncate", RiskClass::Destroy),
    ("Wipe", RiskClass::Destroy),
    ("Deactivate", RiskClass::Disrupt),
    ("Deregister", RiskClass::Disrupt),
    ("Detach", RiskClass::Disrupt),
    ("Disable", RiskClass::Disrupt),
    ("Disassociate", RiskClass::Disrupt),
    ("Disconnect", RiskClass::Disrupt),
    ("Evict", RiskClass::Disrupt),
    ("Failover", RiskClass::Disrupt),
    ("Reboot", RiskClass::Disrupt),
    ("Release", RiskClass::Disrupt),
    ("Revoke", RiskClass::Disrupt),
    ("Shutdown", RiskClass::Disrupt),
    ("Stop", RiskClass::Disrupt),
    ("Suspend", RiskClass::Disrupt),
    ("Unassign", RiskClass::Disrupt),
    ("Unlink", RiskClass::Disrupt),
    ("Unshare", RiskClass::Disrupt),
    ("Unsubscribe", RiskClass::Disrupt),
    ("Withdraw", RiskClass::Disrupt),
];

/// The words of a CamelCase action name: `PartiQLDelete` → `Parti`, `QL`, `Delete`;
/// `ESHttpDelete` → `ES`, `Http`, `Delete`; digits, `-` and `_` separate words too.
pub fn words(name: &str) -> impl Iterator<Item = &str> {
    let b = name.as_bytes();
    let mut cuts = Vec::new();
    let mut start = None;
    for i in 0..b.len() {
        let c = b[i];
        if c == b'-' || c == b'_' {
            if let Some(s) = start.take() {
                cuts.push((s, i));
            }
            continue;
        }
        let Some(s) = start else {
            start = Some(i);
            continue;
        };
        let prev = b[i - 1];
        let next = b.get(i + 1).copied();
        let boundary = (c.is_ascii_uppercase()
            && (prev.is_ascii_lowercase() || prev.is_ascii_digit()))
            || (c.is_ascii_uppercase()
                && prev.is_ascii_uppercase()
                && next.is_some_and(|n| n.is_ascii_lowercase()))
            || (c.is_ascii_digit() != prev.is_ascii_digit());
        if boundary {
            cuts.push((s, i));
            start = Some(i);
        }
    }
    if let Some(s) = start {
        cuts.push((s, b.len()));
    }
    cuts.into_iter().map(move |(s, e)| &name[s..e])
}

/// The built-in rules (2 to 4 above) for an action no table row decides; `reviewed` says
/// whether the action's service has a `SERVICE:* reviewed` row.
fn built_in(action: &Action, reviewed: bool) -> Option<Risk> {
    let unreviewed = (!reviewed
        && matches!(action.level, AccessLevel::Write | AccessLevel::Tagging))
    .then_some(Risk {
        class: RiskClass::Unreviewed,
        basis: Basis::Unreviewed,
    });
    match action.level {
        AccessLevel::PermissionsManagement => Some(Risk {
            class: RiskClass::Escalate,
            basis: Basis::PermissionsManagement,
        }),
        AccessLevel::Write => words(action.name)
            .find_map(|w| {
                DESTRUCTIVE_VERBS
                    .iter()
                    .find(|(v, _)| v.eq_ignore_ascii_case(w))
                    .map(|&(v, class)| Risk {
                        class,
                        basis: Basis::Verb(v),
                    })
            })
            .or(unreviewed),
        _ => unreviewed,
    }
}

/// One parsed row of `risk.txt`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Row {
    pub line: usize,
    pub service: &'static str,
    /// The action name or wildcard within the service.
    pub pattern: &'static str,
    pub full: &'static str,
    /// `None` for `safe` (and for `reviewed` markers).
    pub class: Option<RiskClass>,
    /// A `SERVICE:* reviewed` marker: every action of the service was reviewed, so its Write
    /// actions that no row or built-in rule classifies are everyday work. It classifies nothing
    /// itself.
    pub reviewed: bool,
    pub why: &'static str,
}

impl Row {
    fn is_wildcard(&self) -> bool {
        self.pattern.contains(['*', '?'])
    }

    fn matches(&self, a: &Action) -> bool {
        if !self.service.eq_ignore_ascii_case(a.service) {
            return false;
        }
        if self.is_wildcard() {
            !matches!(a.level, AccessLevel::List | AccessLevel::Read)
                && wildcard_match(self.pattern, a.name)
        } else {
            self.pattern.eq_ignore_ascii_case(a.name)
        }
    }

    /// Exact rows beat every wildcard; among wildcards the longest is the most specific.
    fn specificity(&self) -> usize {
        if self.is_wildcard() {
            self.pattern.len()
        } else {
            usize::MAX
        }
    }
}

/// Parses the table; malformed lines are returned as errors (`line: message`).
pub fn parse_table(table: &'static str) -> (Vec<Row>, Vec<String>) {
    let mut rows = Vec::new();
    let mut errors = Vec::new();
    for (i, line) in table.lines().enumerate() {
        let line_no = i + 1;
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let mut parts = trimmed.splitn(3, char::is_whitespace);
        let (Some(full), Some(class), Some(why)) = (parts.next(), parts.next(), parts.next())
        else {
            errors.push(format!("{line_no}: expected PATTERN CLASS WHY"));
            continue;
        };
        let reviewed = class == "reviewed";
        let Some(class) = (if reviewed {
            Some(None)
        } else {
            RiskClass::parse(class)
        }) else {
            errors.push(format!("{line_no}: unknown class {class:?}"));
            continue;
        };
        let Some((service, pattern)) = full.split_once(':') else {
            errors.push(format!("{line_no}: {full:?} is not service:Action"));
            continue;
        };
        let why = why.trim();
        if why.is_empty() {
            errors.push(format!("{line_no}: {full} has no why"));
            continue;
        }
        if reviewed && pattern != "*" {
            errors.push(format!(
                "{line_no}: a reviewed marker names a whole service: {service}:*"
            ));
            continue;
        }
        rows.push(Row {
            line: line_no,
            service,
            pattern,
            full,
            class,
            reviewed,
            why,
        });
    }
    (rows, errors)
}

/// The classification of every action of `actions` (aligned by index), from the table rows and
/// the built-in rules.
pub(super) fn classify_all(actions: &[Action], rows: &[Row]) -> Vec<Option<Risk>> {
    // The best row per action: (specificity, row index).
    let mut best: Vec<Option<(usize, usize)>> = vec![None; actions.len()];
    let reviewed: std::collections::HashSet<&str> = rows
        .iter()
        .filter(|r| r.reviewed)
        .map(|r| r.service)
        .collect();
    for (ri, row) in rows.iter().enumerate().filter(|(_, r)| !r.reviewed) {
        let start = actions.partition_point(|a| a.service < row.service);
        for (offset, a) in actions[start..]
            .iter()
            .take_while(|a| a.service == row.service)
            .enumerate()
        {
            if row.matches(a) {
                let slot = &mut best[start + offset];
                let s = row.specificity();
                if slot.is_none_or(|(prev, _)| s > prev) {
                    *slot = Some((s, ri));
                }
            }
        }
    }
    actions
        .iter()
        .zip(best)
        .map(|(a, b)| match b {
            Some((_, ri)) => rows[ri].class.map(|class| Risk {
                class,
                basis: Basis::Reviewed {
                    pattern: rows[ri].full,
                    why: rows[ri].why,
                },
            }),
            None => built_in(a, reviewed.contains(a.service)),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::catalog;

    #[test]
    fn words_find_verbs_anywhere() {
        let cases: [(&str, &[&str]); 8] = [
            ("DeleteObject", &["Delete", "Object"]),
            ("PartiQLDelete", &["Parti", "QL", "Delete"]),
            ("ESHttpDelete", &["ES", "Http", "Delete"]),
            (
                "StartFHIRBulkDeleteJob",
                &["Start", "FHIR", "Bulk", "Delete", "Job"],
            ),
            ("AdminDeleteUser", &["Admin", "Delete", "User"]),
            (
                "GetV2LoggingOptions",
                &["Get", "V", "2", "Logging", "Options"],
            ),
            (
                "ListAWSServiceAccess",
                &["List", "AWS", "Service", "Access"],
            ),
            ("x-y_Z", &["x", "y", "Z"]),
        ];
        for (name, want) in cases {
            assert_eq!(words(name).collect::<Vec<_>>(), want, "{name}");
        }
        // A verb must be a whole word: `Deleted` and `Deletion` are not `Delete`.
        let a = |name| Action {
            service: "x",
            name,
            level: AccessLevel::Write,
            resource_types: "",
        };
        assert!(built_in(&a("RestoreDeletedThing"), true).is_none());
        assert!(built_in(&a("UpdateDeletionPolicy"), true).is_none());
        assert_eq!(
            built_in(&a("PartiQLDelete"), true).map(|r| r.class),
            Some(RiskClass::Destroy)
        );
        let read = Action {
            level: AccessLevel::Read,
            ..a("DeleteNothing")
        };
        assert!(
            built_in(&read, true).is_none(),
            "only Write actions have verbs"
        );
        // Unreviewed services fail closed for Write and Tagging, never for reads.
        assert_eq!(
            built_in(&a("UpdateThing"), false).map(|r| r.class),
            Some(RiskClass::Unreviewed)
        );
        assert_eq!(
            built_in(&a("DeleteThing"), false).map(|r| r.class),
            Some(RiskClass::Destroy),
            "a verb still says more"
        );
        assert!(built_in(&read, false).is_none());
    }

    /// Checked in CI: every row of the reviewed table parses, names a known service and matches
    /// at least one catalog action (a wildcard row at least one Write/Tagging/Permissions action),
    /// no pattern appears twice, and every row decides at least one action (it is not shadowed by
    /// more specific rows everywhere).
    #[test]
    fn every_row_names_real_actions() {
        let (rows, errors) = parse_table(TABLE);
        assert!(errors.is_empty(), "risk.txt: {errors:#?}");
        assert!(rows.len() > 100, "{} rows", rows.len());
        let c = catalog();
        let mut problems = Vec::new();
        let mut seen = std::collections::BTreeMap::new();
        for row in &rows {
            if let Some(prev) = seen.insert(row.full.to_ascii_lowercase(), row.line) {
                problems.push(format!(
                    "risk.txt:{}: {} repeats line {prev}",
                    row.line, row.full
                ));
            }
            let Some(actions) = c.service(row.service) else {
                problems.push(format!(
                    "risk.txt:{}: unknown service in {}",
                    row.line, row.full
                ));
                continue;
            };
            if actions[0].service != row.service {
                problems.push(format!(
                    "risk.txt:{}: write the service in lower case: {}",
                    row.line, row.full
                ));
            }
            let matched: Vec<&Action> = actions.iter().filter(|a| row.matches(a)).collect();
            if matched.is_empty() {
                problems.push(format!(
                    "risk.txt:{}: {} matches no catalog action{}",
                    row.line,
                    row.full,
                    if row.is_wildcard() {
                        " of Write, Tagging or Permissions-management level"
                    } else {
                        ""
                    }
                ));
                continue;
            }
            if !row.is_wildcard() && matched[0].name != row.pattern {
                problems.push(format!(
                    "risk.txt:{}: write {} as {}",
                    row.line,
                    row.full,
                    matched[0].full_name()
                ));
            }
            if row.reviewed {
                continue;
            }
            let decides = matched.iter().any(|a| match a.risk().map(|r| r.basis) {
                Some(Basis::Reviewed { pattern, .. }) => pattern == row.full,
                _ => row.class.is_none() && a.risk().is_none(),
            });
            if !decides {
                problems.push(format!(
                    "risk.txt:{}: {} is shadowed by more specific rows for every action it matches",
                    row.line, row.full
                ));
            }
        }
        assert!(problems.is_empty(), "{problems:#?}");
    }

    #[test]
    fn precedence_exact_then_longest_wildcard_then_built_in() {
        let table: &'static str = "x:* reviewed all of x\nx:Put* expose p\nx:PutBucket* destroy pb\nx:PutBucketAcl safe fine\nx:DeleteIt safe reviewed\nx:GetSecret expose read\nx:Get* destroy never for reads\n";
        let (rows, errors) = parse_table(table);
        assert!(errors.is_empty(), "{errors:?}");
        let act = |name, level| Action {
            service: "x",
            name,
            level,
            resource_types: "",
        };
        let actions = [
            act("DeleteIt", AccessLevel::Write),
            act("DeleteOther", AccessLevel::Write),
            act("GetObject", AccessLevel::Read),
            act("GetSecret", AccessLevel::Read),
            act("PutBucketAcl", AccessLevel::PermissionsManagement),
            act("PutBucketLifecycle", AccessLevel::Write),
            act("PutObject", AccessLevel::Write),
            act("SetPolicy", AccessLevel::PermissionsManagement),
        ];
        let got: Vec<Option<&str>> = classify_all(&actions, &rows)
            .iter()
            .map(|r| r.map(|r| r.class.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                None,             // safe row beats the verb
                Some("destroy"),  // verb
                None,             // wildcard rows never classify reads
                Some("expose"),   // an exact row classifies a read
                None,             // exact safe beats a wildcard and the Permissions rule
                Some("destroy"),  // the longer wildcard wins
                Some("expose"),   // the shorter one
                Some("escalate"), // Permissions management
            ]
        );
        let (_, errors) = parse_table(
            "x:Y nosuch why\nnocolon destroy why\nx:Z destroy\nx:Put* reviewed no\nx:A unreviewed no\n",
        );
        assert_eq!(
            errors,
            [
                "1: unknown class \"nosuch\"",
                "2: \"nocolon\" is not service:Action",
                "3: expected PATTERN CLASS WHY",
                "4: a reviewed marker names a whole service: x:*",
                "5: unknown class \"unreviewed\"",
            ]
        );
    }
}
