//! The top-level keys of a profile, and the profile they make.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::parse::{Parser, TOP_KEYS};
use super::{
    ActionPattern, Approval, ManagedPolicyArn, Profile, ProfileName, RoleName, Rule,
    SessionDuration,
};
use crate::diag::quoted;

/// The top-level values read so far: a key's default until it is seen, `None` once its value
/// was refused (the problem is already reported).
struct Fields {
    description: Option<String>,
    role: Option<RoleName>,
    duration: Option<SessionDuration>,
    approval: Option<Approval>,
    allow: Option<Vec<Rule>>,
    deny: Option<Vec<Rule>>,
    destructive: Option<Vec<(ActionPattern, Range<usize>)>>,
    destructive_span: Range<usize>,
    managed: Option<Vec<ManagedPolicyArn>>,
    managed_span: Range<usize>,
    tags: Option<BTreeMap<String, String>>,
}

impl Fields {
    /// What a profile that leaves out an optional key gets.
    fn defaults() -> Self {
        Fields {
            description: None,
            role: None,
            duration: Some(SessionDuration::DEFAULT),
            approval: Some(Approval::Operator),
            allow: None,
            deny: Some(Vec::new()),
            destructive: Some(Vec::new()),
            destructive_span: 0..0,
            managed: Some(Vec::new()),
            managed_span: 0..0,
            tags: Some(BTreeMap::new()),
        }
    }
}

impl Parser<'_> {
    pub(super) fn profile(&mut self, name: &str, table: &DeTable<'_>) -> Option<Profile> {
        let name = match ProfileName::parse(name) {
            Ok(n) => Some(n),
            Err(m) => {
                self.whole_file(format!(
                    "{m} (the profile name is the file name without .toml)"
                ));
                None
            }
        };
        if table.is_empty() {
            self.whole_file(
                "the profile is empty; it needs at least description, role and one [[allow]] block",
            );
            return None;
        }

        let mut f = Fields::defaults();
        for (key, value) in table.iter() {
            self.top_key(&mut f, key, value);
        }

        for (key, found) in [
            ("description", f.description.is_some()),
            ("role", f.role.is_some()),
        ] {
            if !found && !table.keys().any(|k| k.get_ref() == key) {
                self.whole_file(format!("missing required key {}", quoted(key)));
            }
        }
        if !table.keys().any(|k| k.get_ref() == "allow") {
            self.whole_file(
                "missing required key \"allow\": a profile needs at least one [[allow]] block",
            );
        }

        let Fields {
            description,
            role,
            duration,
            approval,
            allow,
            deny,
            destructive,
            destructive_span,
            managed,
            managed_span,
            tags,
        } = f;
        let (Some(name), Some(description), Some(role), Some(duration), Some(approval)) =
            (name, description, role, duration, approval)
        else {
            return None;
        };
        let (Some(allow), Some(deny), Some(destructive), Some(managed), Some(tags)) =
            (allow, deny, destructive, managed, tags)
        else {
            return None;
        };

        let profile = Profile {
            name,
            source: self.label.to_owned(),
            description,
            role,
            duration,
            approval,
            allow,
            deny,
            destructive: destructive.iter().map(|(a, _)| a.clone()).collect(),
            managed_policies: managed,
            tags,
            warnings: Vec::new(),
        };
        if !profile.managed_policies.is_empty() && profile.approval == Approval::None {
            self.err(
                managed_span,
                "managed_policies",
                "managed policies are opaque to mandate: what they grant is not analysed and the automatic deny does not cover it, so every session needs a human: set approval = \"operator\" or approval = { peers = N }, or move their statements into [[allow]] blocks",
            );
        }
        let mut profile = profile;
        profile.warnings = self.destructive_rules(&profile, table, &destructive, destructive_span);
        let resource_warnings = self.resource_rules(&profile, table);
        profile.warnings.extend(resource_warnings);
        Some(profile)
    }

    /// One top-level key and its value, into `f`.
    fn top_key(
        &mut self,
        f: &mut Fields,
        key: &Spanned<std::borrow::Cow<'_, str>>,
        value: &Spanned<DeValue<'_>>,
    ) {
        let k = key.get_ref().as_ref();
        match k {
            "description" => f.description = self.description(value, k),
            "role" => {
                f.role = self
                    .string(value, k, "a role name from broker.toml")
                    .and_then(|s| {
                        RoleName::parse(s)
                            .map_err(|m| self.err(value.span(), k, m))
                            .ok()
                    });
            }
            "duration" => {
                f.duration = self.string(value, k, "a string like \"1h\"").and_then(|s| {
                    SessionDuration::parse(s)
                        .map_err(|m| self.err(value.span(), k, m))
                        .ok()
                });
            }
            "approval" => f.approval = self.approval(value),
            "allow" => f.allow = self.rules(value, "allow"),
            "deny" => f.deny = self.rules(value, "deny"),
            "destructive" => {
                f.destructive_span = value.span();
                f.destructive = self.destructive_list(value, k);
            }
            "managed_policies" => {
                f.managed_span = value.span();
                f.managed = self.managed_policies(value, k);
            }
            "tags" => f.tags = self.tags(value),
            _ => self.unknown_key(key, "", &TOP_KEYS),
        }
    }

    fn description(&mut self, value: &Spanned<DeValue<'_>>, k: &str) -> Option<String> {
        self.string(value, k, "a string").and_then(|s| {
            let s = s.trim();
            if s.is_empty() || s.chars().count() > 1024 || s.chars().any(char::is_control) {
                self.err(value.span(), k, "must be one line of 1 to 1024 characters");
                None
            } else {
                Some(s.to_owned())
            }
        })
    }

    /// The `destructive` list, each action with its span (for the cross-field rules).
    fn destructive_list(
        &mut self,
        value: &Spanned<DeValue<'_>>,
        k: &str,
    ) -> Option<Vec<(ActionPattern, Range<usize>)>> {
        match value.get_ref() {
            DeValue::Array(arr) => {
                let mut out = Vec::new();
                let mut ok = true;
                for (i, item) in arr.iter().enumerate() {
                    let p = format!("destructive[{i}]");
                    let parsed = self
                        .string(item, &p, "a string")
                        .map(|s| ActionPattern::parse(s).map_err(|m| self.err(item.span(), &p, m)));
                    match parsed {
                        Some(Ok(a)) => out.push((a, item.span())),
                        _ => ok = false,
                    }
                }
                ok.then_some(out)
            }
            _ => {
                self.type_err(value, k, "an array of action names");
                None
            }
        }
    }

    fn managed_policies(
        &mut self,
        value: &Spanned<DeValue<'_>>,
        k: &str,
    ) -> Option<Vec<ManagedPolicyArn>> {
        self.list(value, k, true, ManagedPolicyArn::parse)
            .and_then(|arns| {
                if arns.len() > ManagedPolicyArn::MAX {
                    self.err(
                        value.span(),
                        k,
                        format!(
                            "{} managed policy ARNs; AWS allows at most {}",
                            arns.len(),
                            ManagedPolicyArn::MAX
                        ),
                    );
                    return None;
                }
                let unique: BTreeSet<_> = arns.iter().collect();
                if unique.len() != arns.len() {
                    self.err(value.span(), k, "lists the same ARN twice");
                    return None;
                }
                Some(arns)
            })
    }

    fn approval(&mut self, v: &Spanned<DeValue<'_>>) -> Option<Approval> {
        match v.get_ref() {
            DeValue::String(s) => match s.as_ref() {
                "none" => Some(Approval::None),
                "operator" => Some(Approval::Operator),
                other => {
                    self.err(
                        v.span(),
                        "approval",
                        format!("unknown approval {}: expected \"none\", \"operator\" or {{ peers = N }}", quoted(other)),
                    );
                    None
                }
            },
            DeValue::Table(t) => {
                let mut peers = None;
                for (key, value) in t.iter() {
                    if key.get_ref() != "peers" {
                        self.unknown_key(key, "approval", &["peers"]);
                        continue;
                    }
                    let n = value
                        .get_ref()
                        .as_integer()
                        .and_then(|i| i.as_str().parse::<i64>().ok());
                    match n {
                        Some(n) if (1..=Approval::MAX_PEERS).contains(&n) => peers = Some(n as u8),
                        Some(n) => self.err(
                            value.span(),
                            "approval.peers",
                            format!("must be between 1 and {}, found {n}", Approval::MAX_PEERS),
                        ),
                        None => self.type_err(value, "approval.peers", "an integer"),
                    }
                }
                if peers.is_none() && !t.keys().any(|k| k.get_ref() == "peers") {
                    self.err(
                        v.span(),
                        "approval",
                        "missing key \"peers\": write approval = { peers = 2 }",
                    );
                }
                peers.map(Approval::Peers)
            }
            _ => {
                self.type_err(v, "approval", "\"none\", \"operator\" or { peers = N }");
                None
            }
        }
    }
}
