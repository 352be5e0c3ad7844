//! `broker.toml`: roles, agents, approvers, paths. Parsed strictly (unknown keys are errors, all
//! problems reported at once with file:line:col) and cross-checked against the profiles before
//! the daemon binds anything.
//!
//! The validated types live here; the parser is split by table, the way the file reads:
//! `parser` walks the document and checks across tables, and one file per table parses it
//! (`broker`, `audit`, `roles`, `agents`, `approvers`, `http`, `approvals`, `limits`,
//! `notify`, `store`). `check` cross-checks a parsed config against the profiles.

mod agents;
mod approvals;
mod approvers;
mod audit;
mod broker;
mod check;
mod console;
mod http;
mod limits;
mod notify;
mod parser;
mod roles;
mod store;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::diag::{Diagnostic, quoted};
use crate::policy::CompiledProfile;
use crate::profile::{ProfileName, RoleName, SessionDuration};

pub use agents::{MAX_AGENT_NAME, check_agent_name};
pub use console::{ConsoleConfig, OidcConfig, parse_public_url};
pub use http::check_listen;
pub use notify::check_url;
pub use parser::parse;
pub use store::{PasswordSource, SslMode, StoreConfig, StoreUrl, parse_store_url};

use check::cross_check;

/// Config files larger than this are refused.
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// How `--config` is found when not given: `MANDATE_CONFIG`, then
/// `~/.config/mandate/broker.toml`, then `/etc/mandate/broker.toml`.
pub fn locate(explicit: Option<&Path>) -> Result<PathBuf, ConfigError> {
    if let Some(p) = explicit {
        return Ok(p.to_owned());
    }
    if let Some(p) = std::env::var_os("MANDATE_CONFIG").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let mut tried = Vec::new();
    if let Some(home) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        let p = Path::new(&home).join(".config/mandate/broker.toml");
        if p.is_file() {
            return Ok(p);
        }
        tried.push(p);
    }
    let etc = PathBuf::from("/etc/mandate/broker.toml");
    if etc.is_file() {
        return Ok(etc);
    }
    tried.push(etc);
    Err(ConfigError::NotFound(tried))
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "no broker config: pass --config FILE or set MANDATE_CONFIG (looked in {}); `mandate init` writes a starter one",
        .0.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    NotFound(Vec<PathBuf>),
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} problem(s) in the broker config or its profiles", .0.len())]
    Invalid(Vec<Diagnostic>),
}

/// A role the broker may assume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Role {
    pub name: RoleName,
    pub arn: String,
    /// The role's MaxSessionDuration (as configured in IAM); sessions are clamped to it.
    pub max_session: SessionDuration,
}

/// An agent: who may speak for it on the socket, and which profiles it may use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Agent {
    pub name: String,
    pub profiles: Vec<ProfileName>,
    pub uids: Vec<u32>,
    pub operator: Option<String>,
    /// For the HTTP endpoint: the file holding this agent's token.
    pub token_file: Option<PathBuf>,
    /// For the HTTP endpoint: the profile served at `/`.
    pub default_profile: Option<ProfileName>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Approver {
    pub name: String,
    pub uids: Vec<u32>,
    /// Who this approver is at the console's OpenID provider (`sub`), if mapped that way.
    pub oidc_subject: Option<String>,
    /// Or: a verified email at the provider (`email` with `email_verified: true`).
    pub email: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// When a cached credential may still be served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CachePolicy {
    /// Mint a fresh credential once less than this remains (botocore refreshes at 15 minutes,
    /// so the default of 20 minutes keeps clients out of their refresh window). Capped at half
    /// the session's lifetime, so short sessions are still reused.
    pub refresh_ahead: Duration,
    /// Never serve a credential with less than this remaining, whatever else holds.
    pub min_remaining: Duration,
}

impl Default for CachePolicy {
    fn default() -> Self {
        CachePolicy {
            refresh_ahead: Duration::from_secs(20 * 60),
            min_remaining: Duration::from_secs(5 * 60),
        }
    }
}

/// How long approval requests and approvals live, and how many may be open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApprovalPolicy {
    /// A request nobody decided within this is expired.
    pub pending_ttl: Duration,
    /// An approval not used within this of being granted is void.
    pub use_within: Duration,
    /// Pending requests one agent may have open at once.
    pub max_pending: usize,
}

impl Default for ApprovalPolicy {
    fn default() -> Self {
        ApprovalPolicy {
            pending_ttl: Duration::from_secs(15 * 60),
            use_within: Duration::from_secs(10 * 60),
            max_pending: 5,
        }
    }
}

/// Per-agent circuit breakers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// New sessions (STS calls) per agent per `window`; cached deliveries do not count.
    pub max_issuances: u32,
    /// Unexpired sessions per agent.
    pub max_live_sessions: u32,
    /// Cached deliveries per agent per `window` (each costs the audit log, so one agent
    /// cannot make it grow without bound).
    pub max_deliveries: u32,
    /// Denied or rejected requests per agent per `window` that trip the breaker.
    pub breaker_denials: u32,
    pub window: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_issuances: 60,
            max_live_sessions: 20,
            max_deliveries: 100_000,
            breaker_denials: 20,
            window: Duration::from_secs(3600),
        }
    }
}

/// Where pending approvals and tripped breakers are announced.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Notify {
    /// argv of a command that gets the event as JSON on stdin.
    pub command: Option<Vec<String>>,
    /// A URL the event is POSTed to as JSON.
    pub webhook: Option<String>,
    /// What the webhook is sent: the event itself, or a Slack-compatible message.
    pub format: NotifyFormat,
    pub timeout: Duration,
}

/// `[notify] format`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NotifyFormat {
    /// The event JSON, as the command gets it.
    #[default]
    Json,
    /// `{"text": ...}` for Slack-compatible incoming webhooks: what happened and the console
    /// link (never an approve button: approving happens in the console).
    Slack,
}

/// The validated broker config.
#[derive(Clone, Debug)]
pub struct Config {
    pub source: PathBuf,
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    pub profiles_dir: PathBuf,
    pub region: String,
    pub endpoint_url: Option<String>,
    pub log_format: LogFormat,
    pub cache: CachePolicy,
    /// Per-attempt timeout of an STS call.
    pub sts_timeout: Duration,
    pub roles: BTreeMap<String, Role>,
    pub agents: BTreeMap<String, Agent>,
    pub approvers: BTreeMap<String, Approver>,
    pub audit: crate::audit::Options,
    pub approvals: ApprovalPolicy,
    pub limits: Limits,
    pub notify: Notify,
    /// The container-credentials endpoint, if enabled.
    pub http: Option<std::net::SocketAddr>,
    /// Team mode's shared database (`[store]`); `None`: the SQLite file in `state_dir`.
    pub store: Option<StoreConfig>,
    /// The approval console (`[console]`), if enabled.
    pub console: Option<ConsoleConfig>,
}

impl Config {
    /// Where the audit log lives.
    pub fn audit_dir(&self) -> PathBuf {
        self.state_dir.join("audit")
    }

    /// The approval store (approvals, revocations, breaker trips, the pause).
    pub fn store_path(&self) -> PathBuf {
        self.state_dir.join("approvals.db")
    }

    /// The checkpoint signing key (created by `mandate init`).
    pub fn signing_key(&self) -> PathBuf {
        self.state_dir.join("signing.key")
    }

    /// The approver a console sign-in is: the one pinned to the provider's `subject`, or else
    /// the one (not pinned to any subject) whose email is the provider's verified `email`,
    /// compared in ASCII only. A sign-in that would be two approvers is refused.
    pub fn console_approver(
        &self,
        subject: &str,
        email: Option<&str>,
    ) -> Result<Option<&Approver>, String> {
        let by_subject = self
            .approvers
            .values()
            .find(|a| a.oidc_subject.as_deref() == Some(subject));
        let by_email = email.filter(|e| e.is_ascii()).and_then(|e| {
            self.approvers.values().find(|a| {
                a.oidc_subject.is_none()
                    && a.email
                        .as_deref()
                        .is_some_and(|x| x.eq_ignore_ascii_case(e))
            })
        });
        match (by_subject, by_email) {
            (Some(a), Some(b)) if a.name != b.name => Err(format!(
                "the sign-in is approver {} by its subject and approver {} by its email; one person must be one approver",
                a.name, b.name
            )),
            (Some(a), _) => Ok(Some(a)),
            (None, b) => Ok(b),
        }
    }

    /// Approvers who may count toward an agent's two-person rule.
    pub fn peer_approvers<'a>(&'a self, agent: &'a Agent) -> impl Iterator<Item = &'a Approver> {
        self.approvers.values().filter(move |a| {
            agent.operator.as_deref() != Some(a.name.as_str())
                && !a.uids.iter().any(|u| agent.uids.contains(u))
        })
    }

    /// Agents that share a uid with an approver, one line each for the daemon to log at start:
    /// with their operator, approval is advisory (design §6, invariant 7); with another approver,
    /// the agent can act as that approver.
    pub fn advisory_approvals(&self) -> Vec<String> {
        let mut out = Vec::new();
        for agent in self.agents.values() {
            for a in self.approvers.values() {
                let Some(uid) = a.uids.iter().find(|u| agent.uids.contains(u)) else {
                    continue;
                };
                out.push(if agent.operator.as_deref() == Some(a.name.as_str()) {
                    format!(
                        "agent {} and its operator {} share uid {uid}: operator approval for this agent is advisory, not a boundary (run the agent as another uid or in a container with the sidecar)",
                        agent.name, a.name
                    )
                } else {
                    format!(
                        "agent {} shares uid {uid} with approver {}: that agent can act as {} (approve other agents' requests, revoke, pause); give each human a uid of their own",
                        agent.name, a.name, a.name
                    )
                });
            }
        }
        out
    }

    /// The approvers a socket uid speaks for.
    pub fn approvers_for_uid(&self, uid: u32) -> Vec<&Approver> {
        self.approvers
            .values()
            .filter(|a| a.uids.contains(&uid))
            .collect()
    }

    /// The agent a peer uid may speak for. With `requested`, the uid must be one of that agent's;
    /// without, it must belong to exactly one agent.
    pub fn agent_for_uid(&self, uid: u32, requested: Option<&str>) -> Result<&Agent, String> {
        if let Some(name) = requested {
            return match self.agents.get(name) {
                Some(a) if a.uids.contains(&uid) => Ok(a),
                _ => Err(format!("uid {uid} may not act as agent {}", quoted(name))),
            };
        }
        let mut found = self.agents.values().filter(|a| a.uids.contains(&uid));
        match (found.next(), found.next()) {
            (Some(a), None) => Ok(a),
            (None, _) => Err(format!(
                "uid {uid} is not bound to any agent in the broker config"
            )),
            (Some(_), Some(_)) => Err(format!(
                "uid {uid} belongs to several agents; pass --agent NAME"
            )),
        }
    }
}

/// Everything the daemon needs, validated together.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub config: Config,
    pub profiles: BTreeMap<String, CompiledProfile>,
}

/// Reads and parses only the config file (what clients need: the socket path), without the
/// profiles.
pub fn read(path: &Path) -> Result<Config, ConfigError> {
    let meta = std::fs::metadata(path).map_err(|e| ConfigError::Io {
        path: path.into(),
        source: e,
    })?;
    let label = path.display().to_string();
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(ConfigError::Invalid(vec![Diagnostic::whole_file(
            &label,
            format!(
                "the file is {} bytes; the config is limited to {MAX_CONFIG_BYTES}",
                meta.len()
            ),
        )]));
    }
    let bytes = std::fs::read(path).map_err(|e| ConfigError::Io {
        path: path.into(),
        source: e,
    })?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    parse(&label, &bytes, &base, path).map_err(ConfigError::Invalid)
}

/// Reads the config and every profile in its `profiles_dir`, and cross-checks them: the one
/// full check that `serve`, reload, `config check`, `init` and `agent add` all use.
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let config = read(path)?;
    let text = std::fs::read(path).unwrap_or_default();
    // Files the daemon trusts must not be writable by anyone else (design §6, invariant 6).
    let mut unsafe_files = Vec::new();
    if let Err(e) = crate::os::trusted_file(path, "config") {
        unsafe_files.push(Diagnostic::whole_file(&path.display().to_string(), e));
    }
    cross_check(config, path, &text, unsafe_files)
}

/// The same full check for config text not written yet (as it would be at `path`): `init` and
/// `agent add` run it before they write anything.
pub fn check_text(path: &Path, bytes: &[u8]) -> Result<Loaded, ConfigError> {
    let label = path.display().to_string();
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let config = parse(&label, bytes, &base, path).map_err(ConfigError::Invalid)?;
    cross_check(config, path, bytes, Vec::new())
}

#[cfg(test)]
mod tests;
