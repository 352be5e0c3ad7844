//! `[http]`: the container-credentials endpoint, on loopback only.

use std::net::SocketAddr;

use toml::Spanned;
use toml::de::DeValue;

use super::parser::{ConfigParser, Key};

impl ConfigParser<'_> {
    /// `[http]` (`key` is its name, where a missing `listen` is reported). False if anything
    /// was wrong.
    pub(super) fn http(
        &mut self,
        key: &Key<'_>,
        value: &Spanned<DeValue<'_>>,
        http: &mut Option<SocketAddr>,
    ) -> bool {
        let Some(t) = self.table(value, "http") else {
            return false;
        };
        let mut ok = true;
        for (k, v) in t.iter() {
            match k.get_ref().as_ref() {
                "listen" => {
                    let addr = self
                        .w
                        .string(v, "http.listen", "an address like \"127.0.0.1:9911\"")
                        .and_then(|s| {
                            check_listen(s)
                                .map_err(|m| self.w.err(v.span(), "http.listen", m))
                                .ok()
                        });
                    ok &= addr.is_some();
                    *http = addr;
                }
                _ => {
                    self.unknown(k, "http", &["listen"]);
                    ok = false;
                }
            }
        }
        if http.is_none() && !t.keys().any(|k| k.get_ref() == "listen") {
            self.w
                .err(key.span(), "http", "missing required key \"listen\"");
            ok = false;
        }
        ok
    }
}

/// Refuses any listen address that is not loopback.
pub fn check_listen(addr: &str) -> Result<SocketAddr, String> {
    let sa: SocketAddr = addr
        .parse()
        .map_err(|_| format!("{addr:?} is not an address like \"127.0.0.1:9911\""))?;
    let exact = matches!(sa.ip(), std::net::IpAddr::V4(ip) if ip == std::net::Ipv4Addr::LOCALHOST)
        || matches!(sa.ip(), std::net::IpAddr::V6(ip) if ip == std::net::Ipv6Addr::LOCALHOST);
    if !exact {
        return Err(format!(
            "{addr} is not 127.0.0.1 or [::1]: the credentials endpoint listens on loopback only (share the agent's network namespace instead)"
        ));
    }
    Ok(sa)
}
