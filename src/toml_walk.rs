//! Walking a spanned TOML document by hand, so that every problem in a file is reported at once
//! with `file:line:col` and the key path it concerns. Shared by profiles and the broker config.

use std::borrow::Cow;
use std::ops::Range;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::diag::{Diagnostic, quoted};
use crate::suggest::closest;

/// Collects diagnostics for one file.
pub struct Walker<'a> {
    pub label: &'a str,
    pub src: &'a str,
    pub diags: Vec<Diagnostic>,
}

/// Decodes `bytes` as UTF-8 and parses TOML; syntax errors (all of them) are diagnostics.
pub fn parse<'a>(
    label: &'a str,
    bytes: &'a [u8],
    what: &str,
) -> Result<(Walker<'a>, DeTable<'a>), Vec<Diagnostic>> {
    let src = match std::str::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => {
            let valid = std::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or_default();
            return Err(vec![Diagnostic::at(
                label,
                valid,
                valid.len(),
                format!("the file is not valid UTF-8; {what} must be UTF-8 text"),
            )]);
        }
    };
    let (table, errors) = DeTable::parse_recoverable(src);
    let mut w = Walker {
        label,
        src,
        diags: Vec::new(),
    };
    if !errors.is_empty() {
        for e in errors {
            let msg = e
                .message()
                .lines()
                .next()
                .unwrap_or("syntax error")
                .to_owned();
            w.err(e.span().unwrap_or(0..0), "", format!("invalid TOML: {msg}"));
        }
        return Err(w.diags);
    }
    Ok((w, table.into_inner()))
}

impl Walker<'_> {
    pub fn whole_file(&mut self, msg: impl Into<String>) {
        self.diags.push(Diagnostic::whole_file(self.label, msg));
    }

    /// The diagnostics in file order (whole-file ones first).
    pub fn finish(mut self) -> Vec<Diagnostic> {
        self.diags.sort_by_key(|d| d.position);
        self.diags
    }
}

fn at(path: &str, msg: impl std::fmt::Display) -> String {
    if path.is_empty() {
        msg.to_string()
    } else {
        format!("{path}: {msg}")
    }
}

impl<'a> Walker<'a> {
    pub fn err(&mut self, span: Range<usize>, path: &str, msg: impl std::fmt::Display) {
        self.diags.push(Diagnostic::at(
            self.label,
            self.src,
            span.start,
            at(path, msg),
        ));
    }

    /// An unknown key, with a "did you mean" or, when a top-level key landed inside a table
    /// (TOML puts every key after a `[table]` header into that table), how to fix it.
    pub fn unknown_key(
        &mut self,
        key: &Spanned<Cow<'_, str>>,
        parent: &str,
        allowed: &[&str],
        top_keys: &[&str],
        tables: &str,
    ) {
        let k = key.get_ref().as_ref();
        let hint = if !parent.is_empty() && top_keys.contains(&k) {
            format!(
                "; {} is a top-level key: move it above the first {tables} table",
                quoted(k)
            )
        } else {
            match closest(k, allowed.iter().copied()) {
                Some(c) => format!("; did you mean {}?", quoted(c)),
                None => format!(" (expected one of: {})", allowed.join(", ")),
            }
        };
        self.err(
            key.span(),
            parent,
            format!("unknown key {}{hint}", quoted(k)),
        );
    }

    pub fn type_err(&mut self, v: &Spanned<DeValue<'_>>, path: &str, expected: &str) {
        self.err(
            v.span(),
            path,
            format!("expected {expected}, found {}", v.get_ref().type_str()),
        );
    }

    pub fn string<'v>(
        &mut self,
        v: &'v Spanned<DeValue<'_>>,
        path: &str,
        expected: &str,
    ) -> Option<&'v str> {
        match v.get_ref() {
            DeValue::String(s) => Some(s.as_ref()),
            _ => {
                self.type_err(v, path, expected);
                None
            }
        }
    }

    /// A non-empty array of strings, each parsed by `f`. Returns `None` if anything failed.
    pub fn list<T>(
        &mut self,
        v: &Spanned<DeValue<'_>>,
        path: &str,
        allow_empty: bool,
        f: impl Fn(&str) -> Result<T, String>,
    ) -> Option<Vec<T>> {
        let DeValue::Array(arr) = v.get_ref() else {
            self.type_err(v, path, "an array of strings");
            return None;
        };
        if arr.is_empty() && !allow_empty {
            self.err(v.span(), path, "must not be empty");
            return None;
        }
        let mut out = Vec::new();
        let mut ok = true;
        for (i, item) in arr.iter().enumerate() {
            let p = format!("{path}[{i}]");
            match self.string(item, &p, "a string") {
                Some(s) => match f(s) {
                    Ok(t) => out.push(t),
                    Err(m) => {
                        self.err(item.span(), &p, m);
                        ok = false;
                    }
                },
                None => ok = false,
            }
        }
        ok.then_some(out)
    }
}
