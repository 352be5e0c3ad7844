//! `[console]`: the approval console (design §9), a web page on its own listener where remote
//! approvers sign in with the company's OpenID provider and confirm each vote with a passkey.
//!
//! `public_url` is what browsers see: links in notifications, the WebAuthn origin, and (its
//! host) the WebAuthn relying-party id. Plain HTTP is allowed only where the browser treats the
//! origin as secure anyway (`http://localhost`), i.e. behind a TLS proxy or for a local test;
//! anything else needs `https` in `public_url` and either `tls_cert`/`tls_key` here or a proxy.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;
use toml::de::DeValue;

use super::parser::{ConfigParser, Key};

const CONSOLE_KEYS: [&str; 7] = [
    "listen",
    "public_url",
    "tls_cert",
    "tls_key",
    "session_lifetime",
    "oidc_only_operator_votes",
    "oidc",
];
const OIDC_KEYS: [&str; 4] = ["issuer", "client_id", "client_secret_file", "ca_file"];

/// The validated `[console]` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsoleConfig {
    pub listen: SocketAddr,
    /// Scheme, host and port as browsers see them, without a trailing slash.
    pub public_url: url::Url,
    /// Certificate chain and key (PEM) to serve TLS directly; both or neither.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// How long a sign-in lasts (the cookie and the server-side session).
    pub session_lifetime: Duration,
    /// Operator-level votes may be cast with the sign-in alone (never peer votes).
    pub oidc_only_operator_votes: bool,
    pub oidc: OidcConfig,
}

/// `[console.oidc]`: the OpenID provider approvers sign in with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OidcConfig {
    /// The issuer exactly as the provider names itself (`iss`); discovery is at
    /// `{issuer}/.well-known/openid-configuration`.
    pub issuer: url::Url,
    pub client_id: String,
    /// A confidential client's secret, read at start (mode 0600); a public client has none and
    /// relies on PKCE.
    pub client_secret_file: Option<PathBuf>,
    /// The only CA the provider's certificate may chain to; without it, the system's roots.
    pub ca_file: Option<PathBuf>,
}

impl ConsoleConfig {
    /// The console page of one approval request.
    pub fn request_link(&self, id: &str) -> String {
        format!("{}requests/{id}", self.base())
    }

    /// `public_url` with exactly one trailing slash.
    pub fn base(&self) -> String {
        let s = self.public_url.as_str();
        if s.ends_with('/') {
            s.to_owned()
        } else {
            format!("{s}/")
        }
    }

    /// Where the provider sends the browser back.
    pub fn redirect_url(&self) -> String {
        format!("{}auth/callback", self.base())
    }

    /// The WebAuthn relying-party id: the public host.
    pub fn rp_id(&self) -> &str {
        self.public_url.host_str().unwrap_or("")
    }
}

fn loopback_host(u: &url::Url) -> bool {
    match u.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(a)) => a.is_loopback(),
        Some(url::Host::Ipv6(a)) => a.is_loopback(),
        None => false,
    }
}

/// Parses an http(s) URL with no user info, query or fragment; plain http only on loopback.
fn web_url(s: &str, what: &str) -> Result<url::Url, String> {
    let u = url::Url::parse(s).map_err(|e| format!("{what} is not a URL ({e})"))?;
    if !matches!(u.scheme(), "https" | "http") {
        return Err(format!("{what} must be an https URL"));
    }
    if u.scheme() == "http" && !loopback_host(&u) {
        return Err(format!(
            "{what} must be https (plain http only for localhost)"
        ));
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err(format!("{what} must not contain a user or password"));
    }
    if u.query().is_some() || u.fragment().is_some() {
        return Err(format!("{what} must not have a query or fragment"));
    }
    Ok(u)
}

pub fn parse_public_url(s: &str) -> Result<url::Url, String> {
    let u = web_url(s, "public_url")?;
    if u.path() != "/" {
        return Err(
            "public_url must be an origin like \"https://approve.example.com\", without a path"
                .into(),
        );
    }
    if matches!(u.host(), Some(url::Host::Ipv4(_) | url::Host::Ipv6(_))) {
        return Err("public_url must name a host, not an IP address: passkeys are bound to a domain (use http://localhost:PORT for a local console)".into());
    }
    Ok(u)
}

#[derive(Default)]
struct Draft {
    listen: Option<SocketAddr>,
    public_url: Option<url::Url>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    session_lifetime: Option<Duration>,
    oidc_only_operator_votes: bool,
    oidc: Option<OidcConfig>,
}

impl ConfigParser<'_> {
    /// `[console]`. False if anything was wrong.
    pub(super) fn console(
        &mut self,
        key: &Key<'_>,
        value: &Spanned<DeValue<'_>>,
        out: &mut Option<ConsoleConfig>,
    ) -> bool {
        let mut d = Draft::default();
        let mut ok = self.section(value, "console", &CONSOLE_KEYS, |p, name, v, path| {
            Some(match name {
                "listen" => {
                    p.w.string(v, path, "an address like \"127.0.0.1:8443\"")
                        .and_then(|s| match s.parse::<SocketAddr>() {
                            Ok(a) => Some(a),
                            Err(_) => {
                                p.w.err(
                                    v.span(),
                                    path,
                                    "expected an address like \"127.0.0.1:8443\"",
                                );
                                None
                            }
                        })
                        .map(|a| d.listen = Some(a))
                }
                "public_url" => {
                    p.w.string(v, path, "a URL like \"https://approve.example.com\"")
                        .and_then(|s| {
                            parse_public_url(s)
                                .map_err(|m| p.w.err(v.span(), path, m))
                                .ok()
                        })
                        .map(|u| d.public_url = Some(u))
                }
                "tls_cert" => p.path(v, path).map(|f| d.tls_cert = Some(f)),
                "tls_key" => p.path(v, path).map(|f| d.tls_key = Some(f)),
                "session_lifetime" => p
                    .duration(v, path, 1, 12 * 3600)
                    .map(|t| d.session_lifetime = Some(t)),
                "oidc_only_operator_votes" => match v.get_ref().as_bool() {
                    Some(b) => {
                        d.oidc_only_operator_votes = b;
                        Some(())
                    }
                    None => {
                        p.w.type_err(v, path, "true or false");
                        None
                    }
                },
                "oidc" => p.oidc(v, path).map(|o| d.oidc = Some(o)),
                _ => return None,
            })
        });
        let Some(t) = self.table(value, "console") else {
            return false;
        };
        let has = |k: &str| t.keys().any(|x| x.get_ref() == k);
        for required in ["listen", "public_url", "oidc"] {
            if !has(required) {
                self.w.err(
                    key.span(),
                    "console",
                    format!("missing required key \"{required}\""),
                );
                ok = false;
            }
        }
        if has("tls_cert") != has("tls_key") {
            self.w.err(
                key.span(),
                "console",
                "give both tls_cert and tls_key, or neither (then a TLS proxy in front)",
            );
            ok = false;
        }
        if let Some(a) = d.listen
            && !a.ip().is_loopback()
            && !has("tls_cert")
        {
            self.w.err(
                key.span(),
                "console",
                format!(
                    "listen = \"{a}\" is not loopback: serve TLS yourself (tls_cert and tls_key) or listen on 127.0.0.1 behind a TLS proxy"
                ),
            );
            ok = false;
        }
        if !ok {
            return false;
        }
        let (Some(listen), Some(public_url), Some(oidc)) = (d.listen, d.public_url, d.oidc) else {
            return false;
        };
        *out = Some(ConsoleConfig {
            listen,
            public_url,
            tls: d.tls_cert.zip(d.tls_key),
            session_lifetime: d.session_lifetime.unwrap_or(Duration::from_secs(15 * 60)),
            oidc_only_operator_votes: d.oidc_only_operator_votes,
            oidc,
        });
        true
    }

    /// `[console.oidc]`.
    fn oidc(&mut self, value: &Spanned<DeValue<'_>>, path: &str) -> Option<OidcConfig> {
        let mut issuer = None;
        let mut client_id = None;
        let mut client_secret_file = None;
        let mut ca_file = None;
        let ok = self.section(value, path, &OIDC_KEYS, |p, name, v, kp| {
            Some(match name {
                "issuer" => {
                    p.w.string(v, kp, "a URL like \"https://login.example.com\"")
                        .and_then(|s| {
                            web_url(s, "issuer")
                                .map_err(|m| p.w.err(v.span(), kp, m))
                                .ok()
                        })
                        .map(|u| issuer = Some(u))
                }
                "client_id" => {
                    p.w.string(v, kp, "the client id registered at the provider")
                        .and_then(|s| {
                            if s.is_empty() || s.len() > 256 || s.chars().any(char::is_control) {
                                p.w.err(v.span(), kp, "must be 1 to 256 printable characters");
                                None
                            } else {
                                Some(s.to_owned())
                            }
                        })
                        .map(|s| client_id = Some(s))
                }
                "client_secret_file" => p.path(v, kp).map(|f| client_secret_file = Some(f)),
                "ca_file" => p.path(v, kp).map(|f| ca_file = Some(f)),
                _ => return None,
            })
        });
        let t = self.table(value, path)?;
        let mut missing = false;
        for required in ["issuer", "client_id"] {
            if !t.keys().any(|x| x.get_ref() == required) {
                self.w.err(
                    value.span(),
                    path,
                    format!("missing required key \"{required}\""),
                );
                missing = true;
            }
        }
        if !ok || missing {
            return None;
        }
        Some(OidcConfig {
            issuer: issuer?,
            client_id: client_id?,
            client_secret_file,
            ca_file,
        })
    }
}

impl ConfigParser<'_> {
    /// Each console identity names one approver; with a console, someone can sign in.
    pub(super) fn console_identities(
        &mut self,
        approvers: &std::collections::BTreeMap<String, super::Approver>,
        console: bool,
    ) -> bool {
        let mut ok = true;
        let mut seen: std::collections::BTreeMap<(&str, &str), &str> = Default::default();
        for a in approvers.values() {
            for (kind, id) in [("oidc_subject", &a.oidc_subject), ("email", &a.email)] {
                let Some(id) = id else { continue };
                if let Some(first) = seen.insert((kind, id.as_str()), a.name.as_str()) {
                    self.w.whole_file(format!(
                        "approvers.{}: {kind} {} is also approver {first}'s: one sign-in must name one approver",
                        a.name,
                        crate::diag::quoted(id)
                    ));
                    ok = false;
                }
            }
        }
        if console && seen.is_empty() {
            self.w.whole_file(
                "console: no approver has oidc_subject or email, so nobody can sign in (map approvers in [approvers.NAME])",
            );
            ok = false;
        }
        ok
    }
}
