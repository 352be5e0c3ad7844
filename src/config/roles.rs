//! `[roles.NAME]`: the roles the broker may assume.

use std::collections::BTreeMap;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::diag::quoted;
use crate::profile::{RoleName, SessionDuration};

use super::Role;
use super::parser::{ConfigParser, Key};

impl ConfigParser<'_> {
    /// `[roles]`: every `[roles.NAME]` in it. False if any was wrong.
    pub(super) fn roles(
        &mut self,
        value: &Spanned<DeValue<'_>>,
        roles: &mut BTreeMap<String, Role>,
    ) -> bool {
        self.named(value, "roles", Self::role, |r, _| {
            roles.insert(r.name.as_str().to_owned(), r);
        })
    }

    /// At least one role must be declared.
    pub(super) fn roles_declared(&mut self, table: &DeTable<'_>, roles: &BTreeMap<String, Role>) {
        if roles.is_empty() && !table.keys().any(|k| k.get_ref() == "roles") {
            self.w
                .whole_file("no roles: declare at least one [roles.NAME] with an arn");
        }
    }

    fn role(&mut self, key: &Key<'_>, v: &Spanned<DeValue<'_>>) -> Option<Role> {
        let name_s = key.get_ref().as_ref();
        let path = format!("roles.{name_s}");
        let name = RoleName::parse(name_s)
            .map_err(|m| self.w.err(key.span(), "roles", m))
            .ok();
        let t = self.table(v, &path)?;
        let mut arn = None;
        let mut max_session = Some(SessionDuration::DEFAULT);
        for (k, val) in t.iter() {
            let kp = format!("{path}.{}", k.get_ref());
            match k.get_ref().as_ref() {
                "arn" => {
                    arn = self.w.string(val, &kp, "a role ARN").and_then(|s| {
                        let good = is_role_arn(s);
                        if !good {
                            self.w.err(
                                val.span(),
                                &kp,
                                format!(
                                    "{} is not a role ARN like arn:aws:iam::123456789012:role/NAME",
                                    quoted(s)
                                ),
                            );
                        }
                        good.then(|| s.to_owned())
                    })
                }
                "max_session" => {
                    max_session = self
                        .w
                        .string(val, &kp, "a duration like \"1h\"")
                        .and_then(|s| {
                            SessionDuration::parse(s)
                                .map_err(|m| self.w.err(val.span(), &kp, m))
                                .ok()
                        })
                }
                _ => self.unknown(k, &path, &["arn", "max_session"]),
            }
        }
        if arn.is_none() && !t.keys().any(|k| k.get_ref() == "arn") {
            self.w.err(v.span(), &path, "missing required key \"arn\"");
        }
        Some(Role {
            name: name?,
            arn: arn?,
            max_session: max_session?,
        })
    }
}

fn is_role_arn(s: &str) -> bool {
    let parts: Vec<&str> = s.splitn(6, ':').collect();
    parts.len() == 6
        && parts[0] == "arn"
        && parts[1].starts_with("aws")
        && parts[2] == "iam"
        && parts[3].is_empty()
        && parts[4].len() == 12
        && parts[4].bytes().all(|b| b.is_ascii_digit())
        && parts[5].strip_prefix("role/").is_some_and(|n| {
            !n.is_empty()
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-/".contains(&b))
        })
}
