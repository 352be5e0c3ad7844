//! The parser's entry point and shared state: a [`Walker`] over the spanned TOML tree, with the
//! profile's own list of top-level keys for "unknown key" messages.

use toml::Spanned;

use super::Profile;
use crate::diag::Diagnostic;
use crate::toml_walk::{self, Walker};

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

pub(super) const TOP_KEYS: [&str; 9] = [
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

pub(super) struct Parser<'a> {
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
    pub(super) fn unknown_key(
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
}
