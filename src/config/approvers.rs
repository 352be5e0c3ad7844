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
        for (k, val) in t.iter() {
            let kp = format!("{path}.{}", k.get_ref());
            match k.get_ref().as_ref() {
                "uids" => uids = self.uids(val, &kp),
                _ => self.unknown(k, &path, &["uids"]),
            }
        }
        if !name_ok {
            return None;
        }
        Some(Approver { name, uids: uids? })
    }
}
