//! `[approvals]`: how long approval requests and approvals live, and how many may be open.

use toml::Spanned;
use toml::de::DeValue;

use super::ApprovalPolicy;
use super::parser::ConfigParser;

const APPROVAL_KEYS: [&str; 3] = ["pending_ttl", "use_within", "max_pending"];

impl ConfigParser<'_> {
    /// `[approvals]`. False if anything was wrong.
    pub(super) fn approvals(
        &mut self,
        value: &Spanned<DeValue<'_>>,
        approvals: &mut ApprovalPolicy,
    ) -> bool {
        self.section(value, "approvals", &APPROVAL_KEYS, |p, name, v, path| {
            Some(match name {
                "pending_ttl" => p
                    .duration(v, path, 60, 7 * 86_400)
                    .map(|d| approvals.pending_ttl = d),
                "use_within" => p
                    .duration(v, path, 60, 86_400)
                    .map(|d| approvals.use_within = d),
                "max_pending" => p
                    .int(v, path, 1, 1000)
                    .map(|n| approvals.max_pending = n as usize),
                _ => return None,
            })
        })
    }
}
