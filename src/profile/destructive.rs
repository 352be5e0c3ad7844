//! The cross-field rules about destructive actions: the `destructive` list against the
//! approval and the `[[allow]]` blocks, and classified actions the allows reach.

use std::collections::BTreeMap;
use std::ops::Range;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::parse::Parser;
use super::{ActionPattern, Approval, Profile};
use crate::catalog::Action;
use crate::diag::{Diagnostic, quoted};

impl Parser<'_> {
    /// Cross-field rules about destructive actions.
    pub(super) fn destructive_rules(
        &mut self,
        p: &Profile,
        table: &DeTable<'_>,
        destructive: &[(ActionPattern, Range<usize>)],
        destructive_span: Range<usize>,
    ) -> Vec<Diagnostic> {
        let mut warnings = Vec::new();
        self.destructive_list_rules(p, destructive, destructive_span);
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
                let warning = match pat {
                    ActionPattern::Exact(a) => self.named_action(p, a, item, &path),
                    _ => self.wildcard_reach(p, pat, item, &path),
                };
                warnings.extend(warning);
            }
        }
        warnings
    }

    /// Each entry of `destructive` must be destructive and granted, and needs a human.
    fn destructive_list_rules(
        &mut self,
        p: &Profile,
        destructive: &[(ActionPattern, Range<usize>)],
        destructive_span: Range<usize>,
    ) {
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
    }

    /// An action an allow block names exactly: a classified one must be opted into (an error
    /// otherwise); an unreviewed one is allowed, with a warning.
    fn named_action(
        &mut self,
        p: &Profile,
        a: &Action,
        item: &Spanned<DeValue<'_>>,
        path: &str,
    ) -> Option<Diagnostic> {
        if p.uses_unreviewed(a) && !p.opts_into(a) {
            return Some(Diagnostic::at(
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
                path,
                format!(
                    "{} is destructive ({}: {}); add it to `destructive` (which requires approval) or remove it",
                    quoted(&a.full_name()),
                    risk.class,
                    risk.why()
                ),
            );
        }
        None
    }

    /// A wildcard never grants a classified action implicitly: the automatic deny takes those
    /// away. Say how many, so nobody is surprised.
    fn wildcard_reach(
        &self,
        p: &Profile,
        pat: &ActionPattern,
        item: &Spanned<DeValue<'_>>,
        path: &str,
    ) -> Option<Diagnostic> {
        let mut by_class: BTreeMap<crate::catalog::RiskClass, usize> = BTreeMap::new();
        for a in pat.expand().filter(|a| !p.opts_into(a)) {
            if let Some(r) = a.risk() {
                *by_class.entry(r.class).or_default() += 1;
            }
        }
        if by_class.is_empty() {
            return None;
        }
        let total: usize = by_class.values().sum();
        let classes: Vec<String> = by_class.iter().map(|(c, n)| format!("{c} {n}")).collect();
        Some(Diagnostic::at(
            self.label,
            self.src,
            item.span().start,
            format!(
                "warning: {path}: {} reaches {total} classified action(s) ({}); the automatic deny takes them away unless `destructive` lists them (see `mandate profiles explain {}`)",
                quoted(&pat.to_string()),
                classes.join(", "),
                p.name
            ),
        ))
    }
}
