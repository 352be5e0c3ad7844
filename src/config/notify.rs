//! `[notify]`: where pending approvals and tripped breakers are announced.

use toml::Spanned;
use toml::de::DeValue;

use super::Notify;
use super::parser::ConfigParser;

const NOTIFY_KEYS: [&str; 4] = ["command", "webhook", "timeout", "format"];

impl ConfigParser<'_> {
    /// `[notify]`. False if anything was wrong.
    pub(super) fn notify(&mut self, value: &Spanned<DeValue<'_>>, notify: &mut Notify) -> bool {
        self.section(value, "notify", &NOTIFY_KEYS, |p, name, v, path| {
            Some(match name {
                "command" => {
                    p.w.list(v, path, false, |s| Ok::<_, String>(s.to_owned()))
                        .map(|argv| notify.command = Some(argv))
                }
                "webhook" => {
                    p.w.string(v, path, "an http:// or https:// URL")
                        .and_then(|s| match check_url(s) {
                            Ok(()) => Some(s.to_owned()),
                            Err(m) => {
                                p.w.err(v.span(), path, m);
                                None
                            }
                        })
                        .map(|u| notify.webhook = Some(u))
                }
                "timeout" => p.duration(v, path, 1, 60).map(|d| notify.timeout = d),
                "format" => match p.w.string(v, path, "\"json\" or \"slack\"") {
                    Some(f @ ("json" | "slack")) => {
                        notify.format = if f == "json" {
                            super::NotifyFormat::Json
                        } else {
                            super::NotifyFormat::Slack
                        };
                        Some(())
                    }
                    Some(_) => {
                        p.w.err(v.span(), path, "expected \"json\" or \"slack\"");
                        None
                    }
                    None => None,
                },
                _ => return None,
            })
        })
    }
}

/// Checks a webhook URL at config time.
pub fn check_url(s: &str) -> Result<(), String> {
    // The URL itself is never echoed: webhook URLs often embed a secret.
    let uri: hyper::Uri = s.parse().map_err(|e| format!("not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") if uri.host().is_some() => Ok(()),
        _ => Err("must be an http:// or https:// URL with a host".into()),
    }
}
