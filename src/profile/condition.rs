//! A rule's `condition` table: operators, condition keys, and their values.

use toml::Spanned;
use toml::de::DeValue;

use super::parse::Parser;
use super::{Condition, check_condition_key, check_condition_operator};
use crate::diag::quoted;

impl Parser<'_> {
    pub(super) fn condition(&mut self, v: &Spanned<DeValue<'_>>, path: &str) -> Option<Condition> {
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
}
