//! `[limits]`: the per-agent circuit breakers.

use toml::Spanned;
use toml::de::DeValue;

use super::Limits;
use super::parser::ConfigParser;

const LIMIT_KEYS: [&str; 5] = [
    "max_issuances",
    "max_live_sessions",
    "max_deliveries",
    "breaker_denials",
    "window",
];

impl ConfigParser<'_> {
    /// `[limits]`. False if anything was wrong.
    pub(super) fn limits(&mut self, value: &Spanned<DeValue<'_>>, limits: &mut Limits) -> bool {
        self.section(value, "limits", &LIMIT_KEYS, |p, name, v, path| {
            Some(match name {
                "max_issuances" => p
                    .int(v, path, 1, 1_000_000)
                    .map(|n| limits.max_issuances = n as u32),
                "max_live_sessions" => p
                    .int(v, path, 1, 100_000)
                    .map(|n| limits.max_live_sessions = n as u32),
                "max_deliveries" => p
                    .int(v, path, 1, 100_000_000)
                    .map(|n| limits.max_deliveries = n as u32),
                "breaker_denials" => p
                    .int(v, path, 1, 1_000_000)
                    .map(|n| limits.breaker_denials = n as u32),
                "window" => p
                    .duration(v, path, 1, 7 * 86_400)
                    .map(|d| limits.window = d),
                _ => return None,
            })
        })
    }
}
