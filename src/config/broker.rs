//! `[broker]`: the daemon's own keys (paths, region, STS endpoint, log format, cache policy).

use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::diag::quoted;

use super::parser::ConfigParser;
use super::{CachePolicy, LogFormat};

const BROKER_KEYS: [&str; 9] = [
    "state_dir",
    "socket",
    "profiles_dir",
    "region",
    "endpoint_url",
    "log_format",
    "refresh_ahead",
    "min_remaining",
    "sts_timeout",
];

/// The `[broker]` keys as given so far, with the defaults of the optional ones; `None` for a
/// required value not (validly) given.
pub(super) struct BrokerTable {
    pub(super) state_dir: Option<PathBuf>,
    pub(super) socket: Option<PathBuf>,
    pub(super) profiles_dir: Option<PathBuf>,
    pub(super) region: Option<String>,
    pub(super) endpoint_url: Option<String>,
    pub(super) log_format: Option<LogFormat>,
    pub(super) cache: CachePolicy,
    pub(super) sts_timeout: Option<Duration>,
}

impl Default for BrokerTable {
    fn default() -> Self {
        BrokerTable {
            state_dir: None,
            socket: None,
            profiles_dir: None,
            region: Some("us-east-1".to_owned()),
            endpoint_url: None,
            log_format: Some(LogFormat::Text),
            cache: CachePolicy::default(),
            sts_timeout: Some(Duration::from_secs(10)),
        }
    }
}

impl ConfigParser<'_> {
    /// `[broker]`. False if anything was wrong (a bad required value shows as its `None`).
    pub(super) fn broker(&mut self, value: &Spanned<DeValue<'_>>, b: &mut BrokerTable) -> bool {
        let Some(t) = self.table(value, "broker") else {
            return false;
        };
        let mut ok = true;
        for (k, v) in t.iter() {
            let name = k.get_ref().as_ref();
            let path = format!("broker.{name}");
            match name {
                "state_dir" => b.state_dir = self.path(v, &path),
                "socket" => b.socket = self.path(v, &path),
                "profiles_dir" => b.profiles_dir = self.path(v, &path),
                "region" => b.region = self.region(v, &path),
                "endpoint_url" => {
                    b.endpoint_url = self.endpoint_url(v, &path);
                    if b.endpoint_url.is_none() {
                        ok = false;
                    }
                }
                "log_format" => b.log_format = self.log_format(v, &path),
                "refresh_ahead" => match self.duration(v, &path, 60, 6 * 3600) {
                    Some(d) => b.cache.refresh_ahead = d,
                    None => ok = false,
                },
                "min_remaining" => match self.duration(v, &path, 60, 14 * 60) {
                    Some(d) => b.cache.min_remaining = d,
                    None => ok = false,
                },
                "sts_timeout" => b.sts_timeout = self.duration(v, &path, 1, 120),
                _ => {
                    self.unknown(k, "broker", &BROKER_KEYS);
                    ok = false;
                }
            }
        }
        ok
    }

    fn region(&mut self, v: &Spanned<DeValue<'_>>, path: &str) -> Option<String> {
        self.w
            .string(v, path, "a region like \"us-east-1\"")
            .and_then(|s| {
                let good = !s.is_empty()
                    && s.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
                if !good {
                    self.w
                        .err(v.span(), path, format!("invalid region {}", quoted(s)));
                }
                good.then(|| s.to_owned())
            })
    }

    fn endpoint_url(&mut self, v: &Spanned<DeValue<'_>>, path: &str) -> Option<String> {
        self.w.string(v, path, "a URL").and_then(|s| {
            let good = s.starts_with("http://") || s.starts_with("https://");
            if !good {
                self.w.err(
                    v.span(),
                    path,
                    format!("{} must start with http:// or https://", quoted(s)),
                );
            }
            good.then(|| s.to_owned())
        })
    }

    fn log_format(&mut self, v: &Spanned<DeValue<'_>>, path: &str) -> Option<LogFormat> {
        match self.w.string(v, path, "\"text\" or \"json\"") {
            Some("text") => Some(LogFormat::Text),
            Some("json") => Some(LogFormat::Json),
            Some(other) => {
                self.w.err(
                    v.span(),
                    path,
                    format!("expected \"text\" or \"json\", found {}", quoted(other)),
                );
                None
            }
            None => None,
        }
    }

    /// `state_dir`, `socket` and `profiles_dir` must be given: at the `[broker]` header if there
    /// is one, else for the whole file.
    pub(super) fn required_broker_keys(&mut self, table: &DeTable<'_>, b: &BrokerTable) {
        let broker_span = table
            .iter()
            .find(|(k, _)| k.get_ref() == "broker")
            .map(|(k, _)| k.span());
        for (name, val) in [
            ("state_dir", b.state_dir.is_some()),
            ("socket", b.socket.is_some()),
            ("profiles_dir", b.profiles_dir.is_some()),
        ] {
            let given = table
                .get("broker")
                .and_then(|b| b.get_ref().as_table())
                .is_some_and(|t| t.keys().any(|k| k.get_ref() == name));
            if !val && !given {
                match &broker_span {
                    Some(span) => self.w.err(
                        span.clone(),
                        "broker",
                        format!("missing required key {}", quoted(name)),
                    ),
                    None => self
                        .w
                        .whole_file(format!("missing required key \"broker.{name}\"")),
                }
            }
        }
    }

    /// A credential must be refreshed before it gets too short to serve. False if not.
    pub(super) fn cache_order(&mut self, cache: &CachePolicy) -> bool {
        if cache.min_remaining >= cache.refresh_ahead {
            self.w
                .whole_file("broker.min_remaining must be shorter than broker.refresh_ahead");
            return false;
        }
        true
    }
}
