//! `[audit]`: log rotation, checkpoints and the delivery window.

use toml::Spanned;
use toml::de::DeValue;

use super::parser::ConfigParser;

const AUDIT_KEYS: [&str; 5] = [
    "rotate_bytes",
    "checkpoint_every",
    "checkpoint_interval",
    "checkpoint_command",
    "delivery_window",
];

impl ConfigParser<'_> {
    /// `[audit]`. False if anything was wrong.
    pub(super) fn audit(
        &mut self,
        value: &Spanned<DeValue<'_>>,
        audit: &mut crate::audit::Options,
    ) -> bool {
        self.section(value, "audit", &AUDIT_KEYS, |p, name, v, path| {
            Some(match name {
                "rotate_bytes" => p
                    .int(v, path, 4096, 1 << 40)
                    .map(|n| audit.rotate_bytes = n),
                "checkpoint_every" => p
                    .int(v, path, 1, 1_000_000)
                    .map(|n| audit.checkpoint_every = n),
                "checkpoint_interval" => p
                    .duration(v, path, 1, 86_400)
                    .map(|d| audit.checkpoint_interval = d),
                "checkpoint_command" => {
                    p.w.list(v, path, false, |s| Ok::<_, String>(s.to_owned()))
                        .map(|argv| audit.checkpoint_command = Some(argv))
                }
                "delivery_window" => p
                    .duration(v, path, 0, 3600)
                    .map(|d| audit.delivery_window = d),
                _ => return None,
            })
        })
    }
}
