//! Resources checked against the actions of each `[[allow]]` block, from the resource types of
//! the Service Authorization Reference (`catalog::resources`): a warning where a named action can
//! act on none of the block's resources, or where a resource suits none of the block's actions
//! (an S3 object ARN with a region, a bucket ARN for `s3:GetObject`). IAM would not refuse such
//! a statement; it would just grant nothing, which is rarely what the author meant.

use std::collections::BTreeSet;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::parse::Parser;
use super::{ActionPattern, Profile, Rule};
use crate::catalog::resources::{MAX_CHECKED_RESOURCE, arn_may_match};
use crate::diag::{Diagnostic, quoted};

/// At most this many ARN patterns are quoted in one warning.
const SHOWN_PATTERNS: usize = 3;

impl Parser<'_> {
    pub(super) fn resource_rules(&self, p: &Profile, table: &DeTable<'_>) -> Vec<Diagnostic> {
        let mut warnings = Vec::new();
        // A profile that is already wrong gets its errors, not advice.
        if !self.diags.is_empty() {
            return warnings;
        }
        let Some(DeValue::Array(blocks)) = table.get("allow").map(|v| v.get_ref()) else {
            return warnings;
        };
        for (bi, (rule, block)) in p.allow.iter().zip(blocks.iter()).enumerate() {
            let items = |key: &str| match block
                .get_ref()
                .as_table()
                .and_then(|t| t.get(key))
                .map(|v| v.get_ref())
            {
                Some(DeValue::Array(items)) => items.iter().collect::<Vec<_>>(),
                _ => Vec::new(),
            };
            let (actions, resources) = (items("actions"), items("resources"));
            if rule.resources.iter().all(|r| r.as_str() == "*") {
                continue;
            }
            self.actions_without_resources(rule, bi, &actions, &mut warnings);
            self.resources_without_actions(rule, bi, &resources, &mut warnings);
        }
        warnings
    }

    /// A named action that can act on none of the block's resources.
    fn actions_without_resources(
        &self,
        rule: &Rule,
        bi: usize,
        items: &[&Spanned<DeValue<'_>>],
        out: &mut Vec<Diagnostic>,
    ) {
        for (ai, (pat, item)) in rule.actions.iter().zip(items).enumerate() {
            let ActionPattern::Exact(a) = pat else {
                continue;
            };
            if rule.resources.iter().any(|r| a.can_take(r.as_str())) {
                continue;
            }
            let patterns = a.arn_patterns();
            let takes = if patterns.is_empty() {
                "it takes only \"*\" (no resource-level permissions)".to_owned()
            } else {
                let more = patterns.len().saturating_sub(SHOWN_PATTERNS);
                let mut shown: Vec<&str> = patterns.iter().take(SHOWN_PATTERNS).copied().collect();
                let extra = format!("{more} more");
                if more > 0 {
                    shown.push(&extra);
                }
                format!("it takes {}", shown.join(", "))
            };
            out.push(Diagnostic::at(
                self.label,
                self.src,
                item.span().start,
                format!(
                    "warning: allow[{bi}].actions[{ai}]: {} can act on none of this block's resources ({takes}), so the block grants it nothing",
                    quoted(&a.full_name())
                ),
            ));
        }
    }

    /// A resource that none of the block's actions can act on.
    fn resources_without_actions(
        &self,
        rule: &Rule,
        bi: usize,
        items: &[&Spanned<DeValue<'_>>],
        out: &mut Vec<Diagnostic>,
    ) {
        if rule.actions.iter().any(|a| matches!(a, ActionPattern::Any)) {
            return;
        }
        // The distinct ARN patterns of everything the block's actions reach (a wildcard such as
        // `ec2:*` reaches hundreds of actions but about a hundred patterns).
        let patterns: BTreeSet<&str> = rule
            .actions
            .iter()
            .flat_map(|pat| pat.expand())
            .flat_map(|a| a.arn_patterns())
            .collect();
        for (ri, (r, item)) in rule.resources.iter().zip(items).enumerate() {
            let r = r.as_str();
            if r == "*"
                || r.len() > MAX_CHECKED_RESOURCE
                || patterns.iter().any(|p| arn_may_match(r, p))
            {
                continue;
            }
            out.push(Diagnostic::at(
                self.label,
                self.src,
                item.span().start,
                format!(
                    "warning: allow[{bi}].resources[{ri}]: {} names nothing the block's actions can act on (check its service, region, account and resource type against `mandate profiles explain`)",
                    quoted(r)
                ),
            ));
        }
    }
}
