//! `[store]`: team mode's shared PostgreSQL database (design §8). Absent, the daemon keeps its
//! state in the SQLite file in the state directory.
//!
//! The URL is parsed here into its parts, so the daemon never hands a string it has not read
//! to the driver: no password in it (a config file is not a secret store), and TLS either
//! verified against a named CA or off on loopback, nothing in between.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;
use toml::de::DeValue;

use super::parser::{ConfigParser, Key};

const STORE_KEYS: [&str; 10] = [
    "url",
    "ca_file",
    "password_file",
    "password_env",
    "connect_timeout",
    "pool",
    "stale_after",
    "resync",
    "vote_signers",
    "statement_timeout",
];

/// The validated `[store]` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreConfig {
    pub url: StoreUrl,
    /// The only CA the server's certificate may chain to (`verify-full`).
    pub ca_file: Option<PathBuf>,
    pub password: Option<PasswordSource>,
    pub connect_timeout: Duration,
    /// Longest a single statement may run (server side and client side).
    pub statement_timeout: Duration,
    /// Connections this daemon holds at most.
    pub pool: usize,
    /// With no word from the database for this long, the daemon treats its view as stale.
    pub stale_after: Duration,
    /// How often the daemon re-reads everything, whatever it heard.
    pub resync: Duration,
    /// Name → public key (another daemon's or a console's `signing.pub`) whose signed votes
    /// this daemon accepts.
    pub vote_signers: BTreeMap<String, ed25519_dalek::VerifyingKey>,
}

/// Where the password comes from (read when the daemon opens the store, never stored here).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PasswordSource {
    File(PathBuf),
    Env(String),
}

/// `postgres://user@host:port/dbname?sslmode=...`, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreUrl {
    pub host: String,
    pub port: u16,
    pub dbname: String,
    pub user: String,
    pub sslmode: SslMode,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    /// TLS, the certificate checked against `ca_file` and the host name.
    VerifyFull,
    /// No TLS: loopback hosts only.
    Disable,
}

impl StoreUrl {
    /// `host:port/dbname`, as `status` and the log show it.
    pub fn location(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}/{}", self.host, self.port, self.dbname)
        } else {
            format!("{}:{}/{}", self.host, self.port, self.dbname)
        }
    }
}

fn is_loopback(host: &str) -> bool {
    matches!(host, "127.0.0.1" | "::1" | "localhost")
}

/// Parses a store URL. The message never repeats the URL (it may hold a password).
pub fn parse_store_url(s: &str) -> Result<StoreUrl, String> {
    const SHAPE: &str = "postgres://USER@HOST:PORT/DBNAME?sslmode=verify-full";
    let rest = s
        .strip_prefix("postgres://")
        .or_else(|| s.strip_prefix("postgresql://"))
        .ok_or_else(|| format!("must be a URL like {SHAPE}"))?;
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    let (authority, dbname) = rest
        .split_once('/')
        .ok_or_else(|| format!("names no database: expected {SHAPE}"))?;
    let (user, hostport) = authority
        .rsplit_once('@')
        .ok_or_else(|| format!("names no user: expected {SHAPE}"))?;
    if user.contains(':') {
        return Err(
            "holds a password: put the password in password_file or password_env".to_owned(),
        );
    }
    if user.is_empty() || !user.chars().all(name_char) {
        return Err("the user must be letters, digits, '_', '-' or '.'".to_owned());
    }
    if dbname.is_empty() || !dbname.chars().all(name_char) {
        return Err("the database name must be letters, digits, '_', '-' or '.'".to_owned());
    }
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or("has an unclosed '[' in the host")?;
        (h, after.strip_prefix(':'))
    } else {
        match hostport.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if host.is_empty()
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'))
    {
        return Err(format!("names no valid host: expected {SHAPE}"));
    }
    let port = match port {
        None => 5432,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or("has a port that is not a number from 1 to 65535")?,
    };
    let mut sslmode = None;
    for pair in query.into_iter().flat_map(|q| q.split('&')) {
        match pair.split_once('=') {
            Some(("sslmode", m)) => {
                sslmode = Some(match m {
                    "verify-full" => SslMode::VerifyFull,
                    "disable" => SslMode::Disable,
                    "require" | "prefer" | "allow" => {
                        return Err(format!(
                            "sslmode={m} does not check the server's certificate, so anyone on the path can pose as the database: use sslmode=verify-full with ca_file"
                        ));
                    }
                    "verify-ca" => {
                        return Err("sslmode=verify-ca does not check the host name, so any server with a certificate from that CA can pose as the database: use sslmode=verify-full with ca_file".to_owned());
                    }
                    _ => return Err("sslmode must be verify-full or disable".to_owned()),
                });
            }
            _ => {
                return Err(
                    "takes only the parameter sslmode (verify-full or disable); the other settings are keys of [store]"
                        .to_owned(),
                );
            }
        }
    }
    let sslmode = sslmode.unwrap_or(SslMode::VerifyFull);
    if sslmode == SslMode::Disable && !is_loopback(host) {
        return Err(format!(
            "sslmode=disable sends everything in clear text; it is allowed only for a loopback host (127.0.0.1, ::1, localhost), not {host}: use sslmode=verify-full with ca_file"
        ));
    }
    Ok(StoreUrl {
        host: host.to_owned(),
        port,
        dbname: dbname.to_owned(),
        user: user.to_owned(),
        sslmode,
    })
}

fn name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')
}

/// What the keys gave, before the checks across keys.
#[derive(Default)]
struct StoreDraft {
    url: Option<StoreUrl>,
    ca_file: Option<PathBuf>,
    password_file: Option<PathBuf>,
    password_env: Option<String>,
    connect_timeout: Option<Duration>,
    statement_timeout: Option<Duration>,
    pool: Option<usize>,
    stale_after: Option<Duration>,
    resync: Option<Duration>,
    vote_signers: BTreeMap<String, ed25519_dalek::VerifyingKey>,
}

impl ConfigParser<'_> {
    /// `[store]` (`key` is its name, where table-wide problems are reported). False if
    /// anything was wrong.
    pub(super) fn store(
        &mut self,
        key: &Key<'_>,
        value: &Spanned<DeValue<'_>>,
        store: &mut Option<StoreConfig>,
    ) -> bool {
        let mut d = StoreDraft::default();
        let mut ok = self.section(value, "store", &STORE_KEYS, |p, name, v, path| {
            Some(match name {
                "url" => p
                    .w
                    .string(v, path, "a URL like \"postgres://mandate@db.internal:5432/mandate?sslmode=verify-full\"")
                    .and_then(|s| parse_store_url(s).map_err(|m| p.w.err(v.span(), path, m)).ok())
                    .map(|u| d.url = Some(u)),
                "ca_file" => p.path(v, path).map(|f| d.ca_file = Some(f)),
                "password_file" => p.path(v, path).map(|f| d.password_file = Some(f)),
                "password_env" => p
                    .w
                    .string(v, path, "an environment variable name")
                    .and_then(|s| {
                        let good = !s.is_empty()
                            && !s.starts_with(|c: char| c.is_ascii_digit())
                            && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                        if good {
                            Some(s.to_owned())
                        } else {
                            p.w.err(v.span(), path, "must be an environment variable name (letters, digits and '_')");
                            None
                        }
                    })
                    .map(|s| d.password_env = Some(s)),
                "connect_timeout" => p
                    .duration(v, path, 1, 60)
                    .map(|t| d.connect_timeout = Some(t)),
                "statement_timeout" => p
                    .duration(v, path, 1, 300)
                    .map(|t| d.statement_timeout = Some(t)),
                "pool" => p.int(v, path, 1, 32).map(|n| d.pool = Some(n as usize)),
                "stale_after" => p
                    .duration(v, path, 2, 600)
                    .map(|t| d.stale_after = Some(t)),
                "resync" => p.duration(v, path, 1, 300).map(|t| d.resync = Some(t)),
                "vote_signers" => p.vote_signers(v, path, &mut d.vote_signers),
                _ => return None,
            })
        });
        let Some(t) = self.table(value, "store") else {
            return false;
        };
        let has = |k: &str| t.keys().any(|x| x.get_ref() == k);
        if !has("url") {
            self.w
                .err(key.span(), "store", "missing required key \"url\"");
            ok = false;
        }
        if has("password_file") && has("password_env") {
            self.w.err(
                key.span(),
                "store",
                "give password_file or password_env, not both",
            );
            ok = false;
        }
        if let Some(u) = &d.url {
            match u.sslmode {
                SslMode::VerifyFull if !has("ca_file") => {
                    self.w.err(
                        key.span(),
                        "store",
                        "sslmode=verify-full needs ca_file: the CA certificate (PEM) the database's certificate must chain to",
                    );
                    ok = false;
                }
                SslMode::Disable if has("ca_file") => {
                    self.w.err(
                        key.span(),
                        "store",
                        "ca_file is used only with sslmode=verify-full",
                    );
                    ok = false;
                }
                _ => {}
            }
        }
        let stale_after = d.stale_after.unwrap_or(Duration::from_secs(30));
        let resync = d.resync.unwrap_or(Duration::from_secs(5));
        if resync >= stale_after {
            self.w.err(
                key.span(),
                "store",
                format!(
                    "resync ({} s) must be less than stale_after ({} s): a quiet database would look stale between two re-reads",
                    resync.as_secs(),
                    stale_after.as_secs()
                ),
            );
            ok = false;
        }
        if !ok {
            return false;
        }
        let Some(url) = d.url else {
            return false;
        };
        *store = Some(StoreConfig {
            url,
            ca_file: d.ca_file,
            password: d
                .password_file
                .map(PasswordSource::File)
                .or(d.password_env.map(PasswordSource::Env)),
            connect_timeout: d.connect_timeout.unwrap_or(Duration::from_secs(5)),
            statement_timeout: d.statement_timeout.unwrap_or(Duration::from_secs(10)),
            pool: d.pool.unwrap_or(4),
            stale_after,
            resync,
            vote_signers: d.vote_signers,
        });
        true
    }

    /// `[store.vote_signers]`: name = "64 hex digits".
    fn vote_signers(
        &mut self,
        value: &Spanned<DeValue<'_>>,
        path: &str,
        out: &mut BTreeMap<String, ed25519_dalek::VerifyingKey>,
    ) -> Option<()> {
        let t = self.table(value, path)?;
        let mut ok = true;
        for (k, v) in t.iter() {
            let name = k.get_ref().as_ref();
            let kp = format!("{path}.{name}");
            if name.is_empty() || !name.chars().all(name_char) {
                self.w.err(
                    k.span(),
                    &kp,
                    "a signer's name must be letters, digits, '_', '-' or '.'",
                );
                ok = false;
                continue;
            }
            let Some(s) = self
                .w
                .string(v, &kp, "a public key (the 64 hex digits of signing.pub)")
            else {
                ok = false;
                continue;
            };
            match crate::audit::checkpoint::parse_public(s) {
                Ok(key) => {
                    out.insert(name.to_owned(), key);
                }
                Err(m) => {
                    self.w.err(v.span(), &kp, m);
                    ok = false;
                }
            }
        }
        ok.then_some(())
    }
}
