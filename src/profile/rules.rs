//! `[[allow]]` and `[[deny]]` blocks.

use toml::Spanned;
use toml::de::DeValue;

use super::parse::Parser;
use super::{ActionPattern, ResourcePattern, Rule};
use crate::diag::quoted;

const RULE_KEYS: [&str; 3] = ["actions", "resources", "condition"];

impl Parser<'_> {
    pub(super) fn rules(&mut self, v: &Spanned<DeValue<'_>>, kind: &str) -> Option<Vec<Rule>> {
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
}
