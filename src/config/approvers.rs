//! `[approvers.NAME]`: the humans who may approve, and the uids they speak from.

use std::collections::BTreeMap;

use toml::Spanned;
use toml::de::DeValue;

use crate::profile::check_slug;

use super::Approver;
use super::parser::{ConfigParser, Key};

impl ConfigParser<'_> {
    /// `[approvers]`: every `[approvers.NAME]` in it. False if any was wrong.
    pub(super) fn approvers(
        &mut self,
        value: &Spanned<DeValue<'_>>,
        approvers: &mut BTreeMap<String, Approver>,
    ) -> bool {
        self.named(value, "approvers", Self::approver, |a, _| {
            approvers.insert(a.name.clone(), a);
        })
    }

    fn approver(&mut self, key: &Key<'_>, v: &Spanned<DeValue<'_>>) -> Option<Approver> {
        let name = key.get_ref().as_ref().to_owned();
        let path = format!("approvers.{name}");
        let name_ok = check_slug("approver name", &name)
            .map_err(|m| self.w.err(key.span(), "approvers", m))
            .is_ok();
        let t = self.table(v, &path)?;
        let mut uids = Some(Vec::new());
        let mut oidc_subject = None;
        let mut email = None;
        let mut ok = true;
        for (k, val) in t.iter() {
            let kp = format!("{path}.{}", k.get_ref());
            match k.get_ref().as_ref() {
                "uids" => uids = self.uids(val, &kp),
                "oidc_subject" => match self.w.string(
                    val,
                    &kp,
                    "the approver's subject (`sub`) at the console's OpenID provider",
                ) {
                    Some(s)
                        if !s.is_empty() && s.len() <= 255 && !s.chars().any(char::is_control) =>
                    {
                        oidc_subject = Some(s.to_owned())
                    }
                    Some(_) => {
                        self.w
                            .err(val.span(), &kp, "must be 1 to 255 printable characters");
                        ok = false;
                    }
                    None => ok = false,
                },
                "email" => {
                    match self
                        .w
                        .string(val, &kp, "an email address the provider has verified")
                    {
                        Some(s) if valid_email(s) => email = Some(s.to_ascii_lowercase()),
                        Some(_) => {
                            self.w.err(
                                val.span(),
                                &kp,
                                "expected an email address like \"alice@example.com\"",
                            );
                            ok = false;
                        }
                        None => ok = false,
                    }
                }
                _ => {
                    self.unknown(k, &path, &["uids", "oidc_subject", "email"]);
                    ok = false;
                }
            }
        }
        if !name_ok || !ok {
            return None;
        }
        Some(Approver {
            name,
            uids: uids?,
            oidc_subject,
            email,
        })
    }
}

/// A plausible address: one '@', something on each side, no spaces or controls.
fn valid_email(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains('@')
        && s.len() <= 254
        && s.is_ascii()
        && !s.chars().any(|c| c.is_whitespace() || c.is_control())
}
