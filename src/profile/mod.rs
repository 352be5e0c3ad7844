//! Capability profiles: one TOML file per profile, parsed once into a validated [`Profile`].
//!
//! Parsing walks the spanned TOML tree by hand rather than through `#[serde(deny_unknown_fields)]`
//! so that *every* problem in a file is reported at once, each with `file:line:col` and the key
//! path it concerns. Unknown keys are errors: a typo must never widen or silently drop a rule.

mod types;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::Spanned;
use toml::de::{DeTable, DeValue};

pub use types::*;

use crate::catalog::Action;
use crate::diag::{Diagnostic, quoted};
use crate::toml_walk::{self, Walker};

/// Profiles larger than this are refused before parsing.
pub const MAX_PROFILE_BYTES: usize = 256 * 1024;

/// One `[[allow]]` or `[[deny]]` block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub actions: Vec<ActionPattern>,
    pub resources: Vec<ResourcePattern>,
    pub condition: Option<Condition>,
}

/// A validated capability profile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Profile {
    pub name: ProfileName,
    /// The file it came from, as given by the user (for messages).
    pub source: String,
    pub description: String,
    pub role: RoleName,
    pub duration: SessionDuration,
    pub approval: Approval,
    pub allow: Vec<Rule>,
    pub deny: Vec<Rule>,
    /// Destructive actions this profile may use (requires approval ≠ none).
    pub destructive: Vec<ActionPattern>,
    pub managed_policies: Vec<ManagedPolicyArn>,
    pub tags: BTreeMap<String, String>,
    /// Things worth knowing that do not make the profile invalid (`profiles check` prints them):
    /// wildcards that reach classified actions, which the automatic Deny then takes away.
    pub warnings: Vec<Diagnostic>,
}

impl Profile {
    /// Whether the profile's declared allows match `action` (before any deny).
    pub fn declares_allow(&self, action: &Action) -> bool {
        self.allow
            .iter()
            .any(|r| r.actions.iter().any(|p| p.matches(action)))
    }

    /// Whether an allow block names `action` exactly (not through a wildcard).
    pub fn names_exactly(&self, action: &Action) -> bool {
        self.allow.iter().any(|r| {
            r.actions
                .iter()
                .any(|p| matches!(p, ActionPattern::Exact(a) if a == action))
        })
    }

    /// Whether the session may use the classified `action` without opting into it: only an
    /// action of a service nobody has reviewed, named exactly (the author's own decision; a
    /// wildcard never grants it).
    pub fn uses_unreviewed(&self, action: &Action) -> bool {
        action
            .risk()
            .is_some_and(|r| r.class == crate::catalog::RiskClass::Unreviewed)
            && self.names_exactly(action)
    }

    /// Whether `action` is a destructive action the profile opts into.
    pub fn opts_into(&self, action: &Action) -> bool {
        self.destructive.iter().any(|p| p.matches(action))
    }

    /// The services the profile's allows touch, sorted; `None` means every service (`*`).
    pub fn touched_services(&self) -> Option<BTreeSet<&'static str>> {
        let mut out = BTreeSet::new();
        for p in self.allow.iter().flat_map(|r| &r.actions) {
            out.insert(p.service()?);
        }
        Some(out)
    }
}

/// Errors from finding and reading profile files. Validation problems are [`Diagnostic`]s.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("no profile named {name:?} in {dir}: expected the file {}{hint}", dir.join(format!("{name}.toml")).display())]
    NotFound {
        name: String,
        dir: PathBuf,
        /// "; did you mean ...?" when another profile's name is close.
        hint: String,
    },
    #[error("{0}")]
    BadName(String),
    #[error("{} is not a directory or .toml file", .0.display())]
    NotAProfilePath(PathBuf),
    #[error("no profiles (*.toml files) in {}", .0.display())]
    EmptyDir(PathBuf),
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} error(s) in profile {}", .0.len(), .0.first().map(|d| d.file.as_str()).unwrap_or("?"))]
    Invalid(Vec<Diagnostic>),
}

/// The path of profile `name` in `dir`. The name is validated first, so it cannot escape `dir`.
pub fn locate(dir: &Path, name: &str) -> Result<PathBuf, ProfileError> {
    ProfileName::parse(name).map_err(ProfileError::BadName)?;
    let path = dir.join(format!("{name}.toml"));
    if path.is_file() {
        return Ok(path);
    }
    let stems: Vec<String> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".toml"))
                .map(str::to_owned)
        })
        .collect();
    let hint = crate::suggest::closest(name, stems.iter().map(String::as_str))
        .map(|c| format!("; did you mean {c:?}?"))
        .unwrap_or_default();
    Err(ProfileError::NotFound {
        name: name.to_owned(),
        dir: dir.to_owned(),
        hint,
    })
}

/// Expands the paths given to `profiles check`: directories to their `*.toml` files (sorted),
/// files as they are.
pub fn discover(paths: &[PathBuf]) -> Result<Vec<PathBuf>, ProfileError> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let entries = fs::read_dir(p).map_err(|e| ProfileError::Io {
                path: p.clone(),
                source: e,
            })?;
            let mut found = Vec::new();
            for e in entries {
                let e = e.map_err(|e| ProfileError::Io {
                    path: p.clone(),
                    source: e,
                })?;
                let path = e.path();
                if path.extension().is_some_and(|x| x == "toml") && path.is_file() {
                    found.push(path);
                }
            }
            if found.is_empty() {
                return Err(ProfileError::EmptyDir(p.clone()));
            }
            found.sort();
            out.extend(found);
        } else if p.is_file() {
            out.push(p.clone());
        } else if !p.exists() {
            return Err(ProfileError::Io {
                path: p.clone(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            });
        } else {
            return Err(ProfileError::NotAProfilePath(p.clone()));
        }
    }
    Ok(out)
}

/// Reads and parses one profile file; its name is the file stem.
pub fn load(path: &Path) -> Result<Profile, ProfileError> {
    let label = path.display().to_string();
    let meta = fs::metadata(path).map_err(|e| ProfileError::Io {
        path: path.into(),
        source: e,
    })?;
    if meta.len() > MAX_PROFILE_BYTES as u64 {
        return Err(ProfileError::Invalid(vec![Diagnostic::whole_file(
            &label,
            format!(
                "the file is {} bytes; profiles are limited to {MAX_PROFILE_BYTES}",
                meta.len()
            ),
        )]));
    }
    let bytes = fs::read(path).map_err(|e| ProfileError::Io {
        path: path.into(),
        source: e,
    })?;
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    parse(&label, &stem, &bytes).map_err(ProfileError::Invalid)
}

/// Parses a profile from bytes. `label` names the file in diagnostics; `name` is the profile name
/// (the file stem). Returns every problem found, in file order.
pub fn parse(label: &str, name: &str, bytes: &[u8]) -> Result<Profile, Vec<Diagnostic>> {
    let (w, table) = toml_walk::parse(label, bytes, "profiles")?;
    let mut p = Parser { w };
    let profile = p.profile(name, &table);
    let diags = p.w.finish();
    match profile {
        Some(profile) if diags.is_empty() => Ok(profile),
        _ => Err(diags),
    }
}

const TOP_KEYS: [&str; 9] = [
    "description",
    "role",
    "duration",
    "approval",
    "allow",
    "deny",
    "destructive",
    "managed_policies",
    "tags",
];
const RULE_KEYS: [&str; 3] = ["actions", "resources", "condition"];

struct Parser<'a> {
    w: Walker<'a>,
}

impl<'a> std::ops::Deref for Parser<'a> {
    type Target = Walker<'a>;
    fn deref(&self) -> &Walker<'a> {
        &self.w
    }
}

impl std::ops::DerefMut for Parser<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.w
    }
}

impl Parser<'_> {
    fn unknown_key(
        &mut self,
        key: &Spanned<std::borrow::Cow<'_, str>>,
        parent: &str,
        allowed: &[&str],
    ) {
        self.w.unknown_key(
            key,
            parent,
            allowed,
            &TOP_KEYS,
            "[[allow]], [[deny]] or [tags]",
        );
    }

    fn profile(&mut self, name: &str, table: &DeTable<'_>) -> Option<Profile> {
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

        let mut description = None;
        let mut role = None;
        let mut duration = Some(SessionDuration::DEFAULT);
        let mut approval = Some(Approval::Operator);
        let mut allow = None;
        let mut deny = Some(Vec::new());
        let mut destructive: Option<Vec<(ActionPattern, Range<usize>)>> = Some(Vec::new());
        let mut destructive_span = 0..0;
        let mut managed = Some(Vec::new());
        let mut managed_span = 0..0;
        let mut tags = Some(BTreeMap::new());

        for (key, value) in table.iter() {
            let k = key.get_ref().as_ref();
            match k {
                "description" => {
                    description = self.string(value, k, "a string").and_then(|s| {
                        let s = s.trim();
                        if s.is_empty()
                            || s.chars().count() > 1024
                            || s.chars().any(char::is_control)
                        {
                            self.err(value.span(), k, "must be one line of 1 to 1024 characters");
                            None
                        } else {
                            Some(s.to_owned())
                        }
                    });
                }
                "role" => {
                    role = self
                        .string(value, k, "a role name from broker.toml")
                        .and_then(|s| {
                            RoleName::parse(s)
                                .map_err(|m| self.err(value.span(), k, m))
                                .ok()
                        });
                }
                "duration" => {
                    duration = self.string(value, k, "a string like \"1h\"").and_then(|s| {
                        SessionDuration::parse(s)
                            .map_err(|m| self.err(value.span(), k, m))
                            .ok()
                    });
                }
                "approval" => approval = self.approval(value),
                "allow" => allow = self.rules(value, "allow"),
                "deny" => deny = self.rules(value, "deny"),
                "destructive" => {
                    destructive_span = value.span();
                    destructive = match value.get_ref() {
                        DeValue::Array(arr) => {
                            let mut out = Vec::new();
                            let mut ok = true;
                            for (i, item) in arr.iter().enumerate() {
                                let p = format!("destructive[{i}]");
                                let parsed = self.string(item, &p, "a string").map(|s| {
                                    ActionPattern::parse(s)
                                        .map_err(|m| self.err(item.span(), &p, m))
                                });
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
                    };
                }
                "managed_policies" => {
                    managed_span = value.span();
                    managed = self
                        .list(value, k, true, ManagedPolicyArn::parse)
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
                        });
                }
                "tags" => tags = self.tags(value),
                _ => self.unknown_key(key, "", &TOP_KEYS),
            }
        }

        for (key, found) in [
            ("description", description.is_some()),
            ("role", role.is_some()),
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
        Some(profile)
    }

    /// Cross-field rules about destructive actions.
    fn destructive_rules(
        &mut self,
        p: &Profile,
        table: &DeTable<'_>,
        destructive: &[(ActionPattern, Range<usize>)],
        destructive_span: Range<usize>,
    ) -> Vec<Diagnostic> {
        let mut warnings = Vec::new();
        if !destructive.is_empty() && p.approval == Approval::None {
            self.err(
                destructive_span,
                "destructive",
                "destructive actions need a human: set approval = \"operator\" or approval = { peers = N }, or empty this list",
            );
        }
        for (i, (pat, span)) in destructive.iter().enumerate() {
            let path = format!("destructive[{i}]");
            let matched: Vec<&Action> = pat.expand().collect();
            if !matched.iter().any(|a| a.is_destructive()) {
                let level = matched.first().map(|a| a.level.as_str()).unwrap_or("?");
                self.err(
                    span.clone(),
                    &path,
                    format!(
                        "{} is not classified as destructive ({level}); list it in an [[allow]] block only",
                        quoted(&pat.to_string())
                    ),
                );
            } else if !matched
                .iter()
                .any(|a| a.is_destructive() && p.declares_allow(a))
            {
                self.err(
                    span.clone(),
                    &path,
                    format!(
                        "{} is listed as destructive but no [[allow]] block grants it",
                        quoted(&pat.to_string())
                    ),
                );
            }
        }
        // An explicitly named destructive action in an allow block would be silently killed by the
        // automatic deny; say so instead.
        let Some(allow_v) = table.get("allow") else {
            return warnings;
        };
        let DeValue::Array(blocks) = allow_v.get_ref() else {
            return warnings;
        };
        for (bi, (rule, block)) in p.allow.iter().zip(blocks.iter()).enumerate() {
            let Some(DeValue::Array(items)) = block
                .get_ref()
                .as_table()
                .and_then(|t| t.get("actions"))
                .map(|v| v.get_ref())
            else {
                continue;
            };
            for (ai, (pat, item)) in rule.actions.iter().zip(items.iter()).enumerate() {
                let path = format!("allow[{bi}].actions[{ai}]");
                if let ActionPattern::Exact(a) = pat {
                    if p.uses_unreviewed(a) && !p.opts_into(a) {
                        warnings.push(Diagnostic::at(
                            self.label,
                            self.src,
                            item.span().start,
                            format!(
                                "warning: {path}: {} belongs to a service the classification has not reviewed; it is allowed because it is named exactly: make sure it cannot destroy, disrupt, blind, escalate or expose (or list it in `destructive`)",
                                quoted(&a.full_name())
                            ),
                        ));
                    } else if let Some(risk) = a.risk()
                        && !p.opts_into(a)
                    {
                        self.err(
                            item.span(),
                            &path,
                            format!(
                                "{} is destructive ({}: {}); add it to `destructive` (which requires approval) or remove it",
                                quoted(&a.full_name()),
                                risk.class,
                                risk.why()
                            ),
                        );
                    }
                    continue;
                }
                // A wildcard never grants a classified action implicitly: the automatic deny
                // takes those away. Say how many, so nobody is surprised.
                let mut by_class: BTreeMap<crate::catalog::RiskClass, usize> = BTreeMap::new();
                for a in pat.expand().filter(|a| !p.opts_into(a)) {
                    if let Some(r) = a.risk() {
                        *by_class.entry(r.class).or_default() += 1;
                    }
                }
                if !by_class.is_empty() {
                    let total: usize = by_class.values().sum();
                    let classes: Vec<String> =
                        by_class.iter().map(|(c, n)| format!("{c} {n}")).collect();
                    warnings.push(Diagnostic::at(
                        self.label,
                        self.src,
                        item.span().start,
                        format!(
                            "warning: {path}: {} reaches {total} classified action(s) ({}); the automatic deny takes them away unless `destructive` lists them (see `mandate profiles explain {}`)",
                            quoted(&pat.to_string()),
                            classes.join(", "),
                            p.name
                        ),
                    ));
                }
            }
        }
        warnings
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

    fn rules(&mut self, v: &Spanned<DeValue<'_>>, kind: &str) -> Option<Vec<Rule>> {
        let DeValue::Array(arr) = v.get_ref() else {
            self.type_err(v, kind, &format!("an array of tables ([[{kind}]] blocks)"));
            return None;
        };
        if arr.is_empty() && kind == "allow" {
            self.err(v.span(), kind, "must have at least one block");
            return None;
        }
        let mut out = Vec::new();
        let mut ok = true;
        for (i, item) in arr.iter().enumerate() {
            let path = format!("{kind}[{i}]");
            match self.rule(item, &path) {
                Some(r) => out.push(r),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn rule(&mut self, v: &Spanned<DeValue<'_>>, path: &str) -> Option<Rule> {
        let DeValue::Table(t) = v.get_ref() else {
            self.type_err(v, path, "a table with actions and resources");
            return None;
        };
        let mut actions = None;
        let mut resources = None;
        let mut condition = Some(None);
        for (key, value) in t.iter() {
            let k = key.get_ref().as_ref();
            let p = format!("{path}.{k}");
            match k {
                "actions" => actions = self.list(value, &p, false, ActionPattern::parse),
                "resources" => resources = self.list(value, &p, false, ResourcePattern::parse),
                "condition" => condition = self.condition(value, &p).map(Some),
                _ => self.unknown_key(key, path, &RULE_KEYS),
            }
        }
        for required in ["actions", "resources"] {
            if !t.keys().any(|k| k.get_ref() == required) {
                self.err(
                    v.span(),
                    path,
                    format!("missing required key {}", quoted(required)),
                );
            }
        }
        // Kept in file order (diagnostics refer to positions); the compiler sorts and dedups.
        Some(Rule {
            actions: actions?,
            resources: resources?,
            condition: condition?,
        })
    }

    fn condition(&mut self, v: &Spanned<DeValue<'_>>, path: &str) -> Option<Condition> {
        let DeValue::Table(ops) = v.get_ref() else {
            self.type_err(
                v,
                path,
                "a table like { StringEquals = { \"aws:RequestedRegion\" = \"eu-west-1\" } }",
            );
            return None;
        };
        if ops.is_empty() {
            self.err(v.span(), path, "must not be empty; remove it instead");
            return None;
        }
        let mut out = Condition::new();
        let mut ok = true;
        for (op, keys) in ops.iter() {
            let op_s = op.get_ref().as_ref();
            let op_path = format!("{path}.{op_s}");
            if let Err(m) = check_condition_operator(op_s) {
                self.err(op.span(), path, m);
                ok = false;
                continue;
            }
            let DeValue::Table(keys_t) = keys.get_ref() else {
                self.type_err(keys, &op_path, "a table of condition keys to values");
                ok = false;
                continue;
            };
            let entry = out.entry(op_s.to_owned()).or_default();
            for (key, value) in keys_t.iter() {
                let key_s = key.get_ref().as_ref();
                let key_path = format!("{op_path}.{}", quoted(key_s));
                if let Err(m) = check_condition_key(key_s) {
                    self.err(key.span(), &op_path, m);
                    ok = false;
                    continue;
                }
                let scalar = |d: &DeValue<'_>| -> Option<String> {
                    match d {
                        DeValue::String(s) => Some(s.to_string()),
                        DeValue::Boolean(b) => Some(b.to_string()),
                        DeValue::Integer(i) => Some(i.as_str().to_owned()),
                        _ => None,
                    }
                };
                let values = match value.get_ref() {
                    DeValue::Array(arr) if !arr.is_empty() => arr
                        .iter()
                        .map(|x| scalar(x.get_ref()))
                        .collect::<Option<Vec<_>>>(),
                    other => scalar(other).map(|s| vec![s]),
                };
                match values {
                    Some(vals) => {
                        entry.insert(key_s.to_owned(), vals);
                    }
                    None => {
                        self.type_err(
                            value,
                            &key_path,
                            "a string, boolean, integer or non-empty array of them",
                        );
                        ok = false;
                    }
                }
            }
        }
        ok.then_some(out)
    }

    fn tags(&mut self, v: &Spanned<DeValue<'_>>) -> Option<BTreeMap<String, String>> {
        let DeValue::Table(t) = v.get_ref() else {
            self.type_err(v, "tags", "a table of tag names to string values");
            return None;
        };
        let mut out = BTreeMap::new();
        let mut ok = true;
        let mut seen_lower = BTreeSet::new();
        for (key, value) in t.iter() {
            let k = key.get_ref().as_ref();
            let path = format!("tags.{k}");
            // `approval = "none"` after `[tags]` is a tag in TOML: it must never silently
            // become one while the profile keeps its defaults.
            if TOP_KEYS.contains(&k) {
                self.err(
                    key.span(),
                    "tags",
                    format!(
                        "{} is a top-level key: move it above the first [[allow]], [[deny]] or [tags] table (a tag cannot be named like a profile key)",
                        quoted(k)
                    ),
                );
                ok = false;
                continue;
            }
            if let Err(m) = check_tag_key(k) {
                self.err(key.span(), "tags", m);
                ok = false;
                continue;
            }
            if !seen_lower.insert(k.to_lowercase()) {
                self.err(
                    key.span(),
                    "tags",
                    format!(
                        "tag key {} differs from another only in case; AWS treats them as one",
                        quoted(k)
                    ),
                );
                ok = false;
                continue;
            }
            match self.string(value, &path, "a string") {
                Some(s) => match check_tag_value(k, s) {
                    Ok(()) => {
                        out.insert(k.to_owned(), s.to_owned());
                    }
                    Err(m) => {
                        self.err(value.span(), &path, m);
                        ok = false;
                    }
                },
                None => ok = false,
            }
        }
        if t.len() > MAX_PROFILE_TAGS {
            self.err(
                v.span(),
                "tags",
                format!(
                    "{} tags; at most {MAX_PROFILE_TAGS} are allowed (AWS allows 50 session tags and mandate sets {} of its own)",
                    t.len(),
                    BROKER_TAG_KEYS.len()
                ),
            );
            ok = false;
        }
        ok.then_some(out)
    }
}
