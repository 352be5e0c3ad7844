//! The `[tags]` table: session tags, checked against AWS's rules and the broker's own keys.

use std::collections::{BTreeMap, BTreeSet};

use toml::Spanned;
use toml::de::DeValue;

use super::parse::{Parser, TOP_KEYS};
use super::{BROKER_TAG_KEYS, MAX_PROFILE_TAGS, check_tag_key, check_tag_value};
use crate::diag::quoted;

impl Parser<'_> {
    pub(super) fn tags(&mut self, v: &Spanned<DeValue<'_>>) -> Option<BTreeMap<String, String>> {
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
