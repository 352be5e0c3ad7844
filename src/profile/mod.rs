//! Capability profiles: one TOML file per profile, parsed once into a validated [`Profile`].
//!
//! Parsing walks the spanned TOML tree by hand rather than through `#[serde(deny_unknown_fields)]`
//! so that *every* problem in a file is reported at once, each with `file:line:col` and the key
//! path it concerns. Unknown keys are errors: a typo must never widen or silently drop a rule.

mod condition;
mod destructive;
mod load;
mod parse;
mod resources;
mod rules;
mod tags;
mod top;
mod types;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

pub use load::{discover, load, locate};
pub use parse::parse;
pub use types::*;

use crate::catalog::Action;
use crate::diag::Diagnostic;

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
