//! `broker.toml`: roles, agents, approvers, paths. Parsed strictly (unknown keys are errors, all
//! problems reported at once with file:line:col) and cross-checked against the profiles before
//! the daemon binds anything.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::diag::{Diagnostic, quoted};
use crate::policy::{self, CompiledProfile};
use crate::profile::{
    self, Approval, ProfileError, ProfileName, RoleName, SessionDuration, check_slug,
    parse_duration,
};
use crate::toml_walk::{self, Walker};

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

/// Agent names appear in `SourceIdentity` (`mandate-NAME`, at most 64 characters at AWS) and in
/// session names (`mandate-NAME-REQUESTID`, at most 64), so they are shorter than other names.
pub const MAX_AGENT_NAME: usize = 40;

pub fn check_agent_name(name: &str) -> Result<(), String> {
    check_slug("agent name", name)?;
    if name.len() > MAX_AGENT_NAME {
        return Err(format!(
            "agent name {} is {} characters; at most {MAX_AGENT_NAME} (it goes into SourceIdentity and session names)",
            quoted(name),
            name.len()
        ));
    }
    Ok(())
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
    pub timeout: Duration,
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

const TOP: [&str; 9] = [
    "broker",
    "audit",
    "roles",
    "agents",
    "approvers",
    "http",
    "approvals",
    "limits",
    "notify",
];
const APPROVAL_KEYS: [&str; 3] = ["pending_ttl", "use_within", "max_pending"];
const LIMIT_KEYS: [&str; 5] = [
    "max_issuances",
    "max_live_sessions",
    "max_deliveries",
    "breaker_denials",
    "window",
];
const NOTIFY_KEYS: [&str; 3] = ["command", "webhook", "timeout"];
const AUDIT_KEYS: [&str; 5] = [
    "rotate_bytes",
    "checkpoint_every",
    "checkpoint_interval",
    "checkpoint_command",
    "delivery_window",
];
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
const AGENT_KEYS: [&str; 5] = [
    "profiles",
    "uids",
    "operator",
    "token_file",
    "default_profile",
];
const TABLES: &str = "[broker], [audit], [roles.NAME], [agents.NAME], [approvers.NAME], [http], [approvals], [limits] or [notify]";

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

/// Where `"name"` stands in the `[agents.AGENT]` table of the config text, for a diagnostic.
fn agent_profile_offset(text: &[u8], agent: &str, name: &str) -> Option<usize> {
    let text = std::str::from_utf8(text).ok()?;
    let header = format!("[agents.{agent}]");
    let start = text.find(&header)?;
    let section_end = text[start + header.len()..]
        .find("\n[")
        .map_or(text.len(), |i| start + header.len() + i);
    text[start..section_end]
        .find(&format!("\"{name}\""))
        .map(|i| start + i)
}

fn cross_check(
    mut config: Config,
    path: &Path,
    text: &[u8],
    mut unsafe_files: Vec<Diagnostic>,
) -> Result<Loaded, ConfigError> {
    let label = path.display().to_string();
    for agent in config.agents.values() {
        if let Some(t) = &agent.token_file
            && t.exists()
            && let Err(e) = crate::os::trusted_file(t, "token file")
        {
            unsafe_files.push(Diagnostic::whole_file(
                &label,
                format!("agents.{}: {e}", agent.name),
            ));
        }
    }
    // Helpers run as the daemon's uid: the program and every directory above it must be as
    // trusted as the config. The checked absolute path is the one that runs.
    for (what, argv) in [
        (
            "audit.checkpoint_command",
            config.audit.checkpoint_command.as_mut(),
        ),
        ("notify.command", config.notify.command.as_mut()),
    ] {
        if let Some(argv) = argv {
            match crate::os::trusted_helper(argv, what) {
                Ok(real) => argv[0] = real.display().to_string(),
                Err(e) => unsafe_files.push(Diagnostic::whole_file(&label, e)),
            }
        }
    }
    let mut diags = Vec::new();
    let mut profiles = BTreeMap::new();
    let files = match profile::discover(std::slice::from_ref(&config.profiles_dir)) {
        Ok(f) => f,
        Err(e) => {
            return Err(ConfigError::Invalid(vec![Diagnostic::whole_file(
                &label,
                format!("broker.profiles_dir: {e}"),
            )]));
        }
    };
    diags.extend(unsafe_files);
    for file in files {
        if let Err(e) = crate::os::trusted_file(&file, "profile") {
            diags.push(Diagnostic::whole_file(&file.display().to_string(), e));
            continue;
        }
        match profile::load(&file) {
            Ok(p) => match policy::compile(&p) {
                Ok(c) => {
                    if !config.roles.contains_key(c.profile.role.as_str()) {
                        diags.push(Diagnostic::whole_file(
                            &p.source,
                            format!(
                                "role: {} is not declared in {} (declare [roles.{}])",
                                quoted(p.role.as_str()),
                                label,
                                p.role.as_str()
                            ),
                        ));
                    }
                    profiles.insert(p.name.as_str().to_owned(), c);
                }
                Err(e) => diags.push(Diagnostic::whole_file(&p.source, e.to_string())),
            },
            Err(ProfileError::Invalid(d)) => diags.extend(d),
            Err(e) => diags.push(Diagnostic::whole_file(
                &file.display().to_string(),
                e.to_string(),
            )),
        }
    }
    for agent in config.agents.values() {
        for p in &agent.profiles {
            if !profiles.contains_key(p.as_str())
                && !diags.iter().any(|d| d.file.ends_with(&format!("{p}.toml")))
            {
                let hint = crate::suggest::closest(p.as_str(), profiles.keys().map(String::as_str))
                    .map(|c| format!("; did you mean {}?", quoted(c)))
                    .unwrap_or_default();
                let message = format!(
                    "agents.{}.profiles: no profile {} in {}{hint}",
                    agent.name,
                    quoted(p.as_str()),
                    config.profiles_dir.display()
                );
                let src = String::from_utf8_lossy(text);
                diags.push(match agent_profile_offset(text, &agent.name, p.as_str()) {
                    Some(at) => Diagnostic::at(&label, &src, at, message),
                    None => Diagnostic::whole_file(&label, message),
                });
            }
        }
    }
    diags.extend(approval_problems(&config, &profiles, &label));
    if diags.is_empty() {
        Ok(Loaded { config, profiles })
    } else {
        Err(ConfigError::Invalid(diags))
    }
}

/// Every agent bound to a profile that needs approval must have someone who can give it.
fn approval_problems(
    config: &Config,
    profiles: &BTreeMap<String, CompiledProfile>,
    label: &str,
) -> Vec<Diagnostic> {
    let mut diags = Vec::new();
    for agent in config.agents.values() {
        for p in &agent.profiles {
            let Some(c) = profiles.get(p.as_str()) else {
                continue;
            };
            match c.profile.approval {
                Approval::None => {}
                Approval::Operator => {
                    if agent.operator.is_none() {
                        diags.push(Diagnostic::whole_file(
                            label,
                            format!(
                                "agents.{}: profile {p} needs its operator's approval, but the agent has no operator (set operator = \"NAME\" to one of [approvers])",
                                agent.name
                            ),
                        ));
                    }
                }
                Approval::Peers(n) => {
                    let eligible = config.peer_approvers(agent).count();
                    if eligible < usize::from(n) {
                        diags.push(Diagnostic::whole_file(
                            label,
                            format!(
                                "agents.{}: profile {p} needs {n} peer approvers, but only {eligible} qualify (the operator and approvers sharing a uid with the agent never count)",
                                agent.name
                            ),
                        ));
                    }
                }
            }
        }
    }
    diags
}

/// Parses the config text. Relative paths are resolved against `base` (the config's directory).
pub fn parse(
    label: &str,
    bytes: &[u8],
    base: &Path,
    source: &Path,
) -> Result<Config, Vec<Diagnostic>> {
    let (w, table) = toml_walk::parse(label, bytes, "the broker config")?;
    let mut p = ConfigParser { w, base };
    let config = p.config(&table, source);
    let diags = p.w.finish();
    match config {
        Some(c) if diags.is_empty() => Ok(c),
        _ => Err(diags),
    }
}

struct ConfigParser<'a> {
    w: Walker<'a>,
    base: &'a Path,
}

type Key<'a> = Spanned<std::borrow::Cow<'a, str>>;

impl ConfigParser<'_> {
    fn unknown(&mut self, key: &Key<'_>, parent: &str, allowed: &[&str]) {
        self.w.unknown_key(key, parent, allowed, &TOP, TABLES);
    }

    fn table<'t, 'v>(
        &mut self,
        v: &'t Spanned<DeValue<'v>>,
        path: &str,
    ) -> Option<&'t DeTable<'v>> {
        match v.get_ref() {
            DeValue::Table(t) => Some(t),
            _ => {
                self.w.type_err(v, path, "a table");
                None
            }
        }
    }

    fn path(&mut self, v: &Spanned<DeValue<'_>>, path: &str) -> Option<PathBuf> {
        let s = self.w.string(v, path, "a path")?;
        if s.is_empty() {
            self.w.err(v.span(), path, "must not be empty");
            return None;
        }
        Some(self.base.join(s))
    }

    fn duration(
        &mut self,
        v: &Spanned<DeValue<'_>>,
        path: &str,
        min: u64,
        max: u64,
    ) -> Option<Duration> {
        let s = self.w.string(v, path, "a duration like \"5m\"")?;
        match parse_duration(s) {
            Ok(n) if (min..=max).contains(&n) => Some(Duration::from_secs(n)),
            Ok(n) => {
                self.w.err(
                    v.span(),
                    path,
                    format!("{n} s is outside the allowed range, {min} to {max} s"),
                );
                None
            }
            Err(m) => {
                self.w.err(v.span(), path, m);
                None
            }
        }
    }

    /// Walks a flat table `[name]`: `f` parses one key (`None` for an unknown key, which is
    /// reported with suggestions; `Some(None)` for a bad value, already reported). False if
    /// anything was wrong.
    fn section(
        &mut self,
        value: &Spanned<DeValue<'_>>,
        name: &str,
        allowed: &[&str],
        mut f: impl FnMut(&mut Self, &str, &Spanned<DeValue<'_>>, &str) -> Option<Option<()>>,
    ) -> bool {
        let Some(t) = self.table(value, name) else {
            return false;
        };
        let mut ok = true;
        for (k, v) in t.iter() {
            let key = k.get_ref().as_ref();
            let path = format!("{name}.{key}");
            match f(self, key, v, &path) {
                Some(parsed) => ok &= parsed.is_some(),
                None => {
                    self.unknown(k, name, allowed);
                    ok = false;
                }
            }
        }
        ok
    }

    fn int(&mut self, v: &Spanned<DeValue<'_>>, path: &str, min: u64, max: u64) -> Option<u64> {
        match v
            .get_ref()
            .as_integer()
            .and_then(|i| i.as_str().parse::<u64>().ok())
        {
            Some(n) if (min..=max).contains(&n) => Some(n),
            _ => {
                self.w.err(
                    v.span(),
                    path,
                    format!("expected an integer from {min} to {max}"),
                );
                None
            }
        }
    }

    fn uids(&mut self, v: &Spanned<DeValue<'_>>, path: &str) -> Option<Vec<u32>> {
        let DeValue::Array(arr) = v.get_ref() else {
            self.w.type_err(v, path, "an array of numeric uids");
            return None;
        };
        let mut out = Vec::new();
        for (i, item) in arr.iter().enumerate() {
            match item
                .get_ref()
                .as_integer()
                .and_then(|n| n.as_str().parse::<u32>().ok())
            {
                Some(u) => out.push(u),
                None => {
                    self.w
                        .type_err(item, &format!("{path}[{i}]"), "a numeric uid");
                    return None;
                }
            }
        }
        Some(out)
    }

    fn config(&mut self, table: &DeTable<'_>, source: &Path) -> Option<Config> {
        let mut state_dir = None;
        let mut socket = None;
        let mut profiles_dir = None;
        let mut region = Some("us-east-1".to_owned());
        let mut endpoint_url = None;
        let mut log_format = Some(LogFormat::Text);
        let mut cache = CachePolicy::default();
        let mut sts_timeout = Some(Duration::from_secs(10));
        let mut roles = BTreeMap::new();
        let mut agents = BTreeMap::new();
        let mut approvers = BTreeMap::new();
        let mut audit = crate::audit::Options::default();
        let mut http = None;
        let mut approvals = ApprovalPolicy::default();
        let mut limits = Limits::default();
        let mut notify = Notify {
            timeout: Duration::from_secs(5),
            ..Notify::default()
        };
        let mut ok = true;

        for (key, value) in table.iter() {
            match key.get_ref().as_ref() {
                "broker" => {
                    let Some(t) = self.table(value, "broker") else {
                        ok = false;
                        continue;
                    };
                    for (k, v) in t.iter() {
                        let name = k.get_ref().as_ref();
                        let path = format!("broker.{name}");
                        match name {
                            "state_dir" => state_dir = self.path(v, &path),
                            "socket" => socket = self.path(v, &path),
                            "profiles_dir" => profiles_dir = self.path(v, &path),
                            "region" => {
                                region = self
                                    .w
                                    .string(v, &path, "a region like \"us-east-1\"")
                                    .and_then(|s| {
                                        let good = !s.is_empty()
                                            && s.bytes().all(|b| {
                                                b.is_ascii_lowercase()
                                                    || b.is_ascii_digit()
                                                    || b == b'-'
                                            });
                                        if !good {
                                            self.w.err(
                                                v.span(),
                                                &path,
                                                format!("invalid region {}", quoted(s)),
                                            );
                                        }
                                        good.then(|| s.to_owned())
                                    })
                            }
                            "endpoint_url" => {
                                endpoint_url = self.w.string(v, &path, "a URL").and_then(|s| {
                                    let good =
                                        s.starts_with("http://") || s.starts_with("https://");
                                    if !good {
                                        self.w.err(
                                            v.span(),
                                            &path,
                                            format!(
                                                "{} must start with http:// or https://",
                                                quoted(s)
                                            ),
                                        );
                                    }
                                    good.then(|| s.to_owned())
                                });
                                if endpoint_url.is_none() {
                                    ok = false;
                                }
                            }
                            "log_format" => {
                                log_format = match self.w.string(v, &path, "\"text\" or \"json\"") {
                                    Some("text") => Some(LogFormat::Text),
                                    Some("json") => Some(LogFormat::Json),
                                    Some(other) => {
                                        self.w.err(
                                            v.span(),
                                            &path,
                                            format!(
                                                "expected \"text\" or \"json\", found {}",
                                                quoted(other)
                                            ),
                                        );
                                        None
                                    }
                                    None => None,
                                }
                            }
                            "refresh_ahead" => match self.duration(v, &path, 60, 6 * 3600) {
                                Some(d) => cache.refresh_ahead = d,
                                None => ok = false,
                            },
                            "min_remaining" => match self.duration(v, &path, 60, 14 * 60) {
                                Some(d) => cache.min_remaining = d,
                                None => ok = false,
                            },
                            "sts_timeout" => sts_timeout = self.duration(v, &path, 1, 120),
                            _ => {
                                self.unknown(k, "broker", &BROKER_KEYS);
                                ok = false;
                            }
                        }
                    }
                }
                "audit" => {
                    ok &= self.section(value, "audit", &AUDIT_KEYS, |p, name, v, path| {
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
                    });
                }
                "roles" => {
                    let Some(t) = self.table(value, "roles") else {
                        ok = false;
                        continue;
                    };
                    for (k, v) in t.iter() {
                        match self.role(k, v) {
                            Some(r) => {
                                roles.insert(r.name.as_str().to_owned(), r);
                            }
                            None => ok = false,
                        }
                    }
                }
                "agents" => {
                    let Some(t) = self.table(value, "agents") else {
                        ok = false;
                        continue;
                    };
                    for (k, v) in t.iter() {
                        match self.agent(k, v) {
                            Some(a) => {
                                agents.insert(a.name.clone(), (a, k.span()));
                            }
                            None => ok = false,
                        }
                    }
                }
                "approvers" => {
                    let Some(t) = self.table(value, "approvers") else {
                        ok = false;
                        continue;
                    };
                    for (k, v) in t.iter() {
                        match self.approver(k, v) {
                            Some(a) => {
                                approvers.insert(a.name.clone(), a);
                            }
                            None => ok = false,
                        }
                    }
                }
                "approvals" => {
                    ok &= self.section(value, "approvals", &APPROVAL_KEYS, |p, name, v, path| {
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
                    });
                }
                "limits" => {
                    ok &= self.section(value, "limits", &LIMIT_KEYS, |p, name, v, path| {
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
                    });
                }
                "notify" => {
                    ok &= self.section(value, "notify", &NOTIFY_KEYS, |p, name, v, path| {
                        Some(match name {
                            "command" => {
                                p.w.list(v, path, false, |s| Ok::<_, String>(s.to_owned()))
                                    .map(|argv| notify.command = Some(argv))
                            }
                            "webhook" => {
                                p.w.string(v, path, "an http:// or https:// URL")
                                    .and_then(|s| match crate::config::check_url(s) {
                                        Ok(()) => Some(s.to_owned()),
                                        Err(m) => {
                                            p.w.err(v.span(), path, m);
                                            None
                                        }
                                    })
                                    .map(|u| notify.webhook = Some(u))
                            }
                            "timeout" => p.duration(v, path, 1, 60).map(|d| notify.timeout = d),
                            _ => return None,
                        })
                    });
                }
                "http" => {
                    let Some(t) = self.table(value, "http") else {
                        ok = false;
                        continue;
                    };
                    for (k, v) in t.iter() {
                        match k.get_ref().as_ref() {
                            "listen" => {
                                let addr = self
                                    .w
                                    .string(v, "http.listen", "an address like \"127.0.0.1:9911\"")
                                    .and_then(|s| {
                                        crate::config::check_listen(s)
                                            .map_err(|m| self.w.err(v.span(), "http.listen", m))
                                            .ok()
                                    });
                                ok &= addr.is_some();
                                http = addr;
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
                }
                _ => {
                    self.unknown(key, "", &TOP);
                    ok = false;
                }
            }
        }

        let broker_span = table
            .iter()
            .find(|(k, _)| k.get_ref() == "broker")
            .map(|(k, _)| k.span());
        for (name, val) in [
            ("state_dir", state_dir.is_some()),
            ("socket", socket.is_some()),
            ("profiles_dir", profiles_dir.is_some()),
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
        if roles.is_empty() && !table.keys().any(|k| k.get_ref() == "roles") {
            self.w
                .whole_file("no roles: declare at least one [roles.NAME] with an arn");
        }
        for (agent, span) in agents.values() {
            if let Some(op) = &agent.operator
                && !approvers.contains_key(op)
            {
                self.w.err(
                    span.clone(),
                    &format!("agents.{}", agent.name),
                    format!("operator {} is not declared in [approvers]", quoted(op)),
                );
            }
        }
        if cache.min_remaining >= cache.refresh_ahead {
            self.w
                .whole_file("broker.min_remaining must be shorter than broker.refresh_ahead");
            ok = false;
        }

        if !ok {
            return None;
        }
        Some(Config {
            source: source.to_owned(),
            state_dir: state_dir?,
            socket: socket?,
            profiles_dir: profiles_dir?,
            region: region?,
            endpoint_url,
            log_format: log_format?,
            cache,
            sts_timeout: sts_timeout?,
            roles,
            agents: agents.into_iter().map(|(k, (a, _))| (k, a)).collect(),
            approvers,
            audit,
            approvals,
            limits,
            notify,
            http,
        })
    }

    fn role(&mut self, key: &Key<'_>, v: &Spanned<DeValue<'_>>) -> Option<Role> {
        let name_s = key.get_ref().as_ref();
        let path = format!("roles.{name_s}");
        let name = RoleName::parse(name_s)
            .map_err(|m| self.w.err(key.span(), "roles", m))
            .ok();
        let t = self.table(v, &path)?;
        let mut arn = None;
        let mut max_session = Some(SessionDuration::DEFAULT);
        for (k, val) in t.iter() {
            let kp = format!("{path}.{}", k.get_ref());
            match k.get_ref().as_ref() {
                "arn" => {
                    arn = self.w.string(val, &kp, "a role ARN").and_then(|s| {
                        let good = is_role_arn(s);
                        if !good {
                            self.w.err(
                                val.span(),
                                &kp,
                                format!(
                                    "{} is not a role ARN like arn:aws:iam::123456789012:role/NAME",
                                    quoted(s)
                                ),
                            );
                        }
                        good.then(|| s.to_owned())
                    })
                }
                "max_session" => {
                    max_session = self
                        .w
                        .string(val, &kp, "a duration like \"1h\"")
                        .and_then(|s| {
                            SessionDuration::parse(s)
                                .map_err(|m| self.w.err(val.span(), &kp, m))
                                .ok()
                        })
                }
                _ => self.unknown(k, &path, &["arn", "max_session"]),
            }
        }
        if arn.is_none() && !t.keys().any(|k| k.get_ref() == "arn") {
            self.w.err(v.span(), &path, "missing required key \"arn\"");
        }
        Some(Role {
            name: name?,
            arn: arn?,
            max_session: max_session?,
        })
    }

    fn agent(&mut self, key: &Key<'_>, v: &Spanned<DeValue<'_>>) -> Option<Agent> {
        let name = key.get_ref().as_ref().to_owned();
        let path = format!("agents.{name}");
        let name_ok = check_agent_name(&name)
            .map_err(|m| self.w.err(key.span(), "agents", m))
            .is_ok();
        let t = self.table(v, &path)?;
        let mut profiles = None;
        let mut uids = Some(Vec::new());
        let mut operator = Some(None);
        let mut token_file = Some(None);
        let mut default_profile: Option<Option<(ProfileName, std::ops::Range<usize>)>> = Some(None);
        for (k, val) in t.iter() {
            let kp = format!("{path}.{}", k.get_ref());
            match k.get_ref().as_ref() {
                "profiles" => profiles = self.w.list(val, &kp, false, ProfileName::parse),
                "uids" => uids = self.uids(val, &kp),
                "operator" => {
                    operator = self
                        .w
                        .string(val, &kp, "an approver name")
                        .map(|s| Some(s.to_owned()))
                }
                "token_file" => token_file = self.path(val, &kp).map(Some),
                "default_profile" => {
                    default_profile = self.w.string(val, &kp, "a profile name").and_then(|s| {
                        ProfileName::parse(s)
                            .map_err(|m| self.w.err(val.span(), &kp, m))
                            .ok()
                            .map(|p| Some((p, val.span())))
                    })
                }
                _ => self.unknown(k, &path, &AGENT_KEYS),
            }
        }
        if profiles.is_none() && !t.keys().any(|k| k.get_ref() == "profiles") {
            self.w
                .err(v.span(), &path, "missing required key \"profiles\"");
        }
        if !name_ok {
            return None;
        }
        let mut profiles: Vec<ProfileName> = profiles?;
        let unique: BTreeSet<_> = profiles.iter().cloned().collect();
        profiles = unique.into_iter().collect();
        let default_profile = match default_profile? {
            Some((p, span)) if !profiles.contains(&p) => {
                self.w.err(
                    span,
                    &format!("{path}.default_profile"),
                    format!("{} is not one of this agent's profiles", quoted(p.as_str())),
                );
                return None;
            }
            other => other.map(|(p, _)| p),
        };
        Some(Agent {
            name,
            profiles,
            uids: uids?,
            operator: operator?,
            token_file: token_file?,
            default_profile,
        })
    }

    fn approver(&mut self, key: &Key<'_>, v: &Spanned<DeValue<'_>>) -> Option<Approver> {
        let name = key.get_ref().as_ref().to_owned();
        let path = format!("approvers.{name}");
        let name_ok = check_slug("approver name", &name)
            .map_err(|m| self.w.err(key.span(), "approvers", m))
            .is_ok();
        let t = self.table(v, &path)?;
        let mut uids = Some(Vec::new());
        for (k, val) in t.iter() {
            let kp = format!("{path}.{}", k.get_ref());
            match k.get_ref().as_ref() {
                "uids" => uids = self.uids(val, &kp),
                _ => self.unknown(k, &path, &["uids"]),
            }
        }
        if !name_ok {
            return None;
        }
        Some(Approver { name, uids: uids? })
    }
}

fn is_role_arn(s: &str) -> bool {
    let parts: Vec<&str> = s.splitn(6, ':').collect();
    parts.len() == 6
        && parts[0] == "arn"
        && parts[1].starts_with("aws")
        && parts[2] == "iam"
        && parts[3].is_empty()
        && parts[4].len() == 12
        && parts[4].bytes().all(|b| b.is_ascii_digit())
        && parts[5].strip_prefix("role/").is_some_and(|n| {
            !n.is_empty()
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-/".contains(&b))
        })
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

/// Checks a webhook URL at config time.
pub fn check_url(s: &str) -> Result<(), String> {
    // The URL itself is never echoed: webhook URLs often embed a secret.
    let uri: hyper::Uri = s.parse().map_err(|e| format!("not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") if uri.host().is_some() => Ok(()),
        _ => Err("must be an http:// or https:// URL with a host".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[broker]
state_dir = "state"
socket = "run/mandate.sock"
profiles_dir = "profiles"
endpoint_url = "http://127.0.0.1:5055"

[roles.sandbox]
arn = "arn:aws:iam::123456789012:role/agent-role"
max_session = "1h"

[agents.claude]
profiles = ["readonly", "s3-data"]
uids = [1000]
operator = "alice"

[approvers.alice]
uids = [1000]
"#;

    fn parse_str(s: &str) -> Result<Config, Vec<String>> {
        parse(
            "broker.toml",
            s.as_bytes(),
            Path::new("/etc/m"),
            Path::new("/etc/m/broker.toml"),
        )
        .map_err(|d| d.iter().map(|d| d.to_string()).collect())
    }

    #[test]
    fn parses_and_resolves_relative_paths() {
        let c = parse_str(GOOD).unwrap();
        assert_eq!(c.socket, Path::new("/etc/m/run/mandate.sock"));
        assert_eq!(c.region, "us-east-1");
        assert_eq!(c.endpoint_url.as_deref(), Some("http://127.0.0.1:5055"));
        assert_eq!(c.roles["sandbox"].max_session.seconds(), 3600);
        assert_eq!(c.agents["claude"].uids, vec![1000]);
        assert_eq!(c.agent_for_uid(1000, None).unwrap().name, "claude");
        assert!(c.agent_for_uid(1001, None).is_err());
        assert!(c.agent_for_uid(1000, Some("other")).is_err());
    }

    #[test]
    fn bad_configs_report_every_problem() {
        let cases: &[(&str, &str, &[&str])] = &[
            (
                "unknown broker key",
                "[broker]\nstate_dri = \"x\"\n",
                &[
                    "broker.toml: no roles: declare at least one [roles.NAME] with an arn",
                    "broker.toml:1:2: broker: missing required key \"state_dir\"",
                    "broker.toml:1:2: broker: missing required key \"socket\"",
                    "broker.toml:1:2: broker: missing required key \"profiles_dir\"",
                    "broker.toml:2:1: broker: unknown key \"state_dri\"; did you mean \"state_dir\"?",
                ],
            ),
            (
                "bad role arn",
                "[broker]\nstate_dir = \"s\"\nsocket = \"s\"\nprofiles_dir = \"p\"\n[roles.sandbox]\narn = \"arn:aws:iam::123:user/x\"\n",
                &[
                    "broker.toml:6:7: roles.sandbox.arn: \"arn:aws:iam::123:user/x\" is not a role ARN like arn:aws:iam::123456789012:role/NAME",
                ],
            ),
            (
                "unknown operator",
                "[broker]\nstate_dir = \"s\"\nsocket = \"s\"\nprofiles_dir = \"p\"\n[roles.r]\narn = \"arn:aws:iam::123456789012:role/r\"\n[agents.a]\nprofiles = [\"x\"]\noperator = \"bob\"\n",
                &["broker.toml:7:9: agents.a: operator \"bob\" is not declared in [approvers]"],
            ),
            (
                "http not loopback",
                "[broker]\nstate_dir = \"s\"\nsocket = \"s\"\nprofiles_dir = \"p\"\n[roles.r]\narn = \"arn:aws:iam::123456789012:role/r\"\n[http]\nlisten = \"0.0.0.0:9911\"\n",
                &[
                    "broker.toml:8:10: http.listen: 0.0.0.0:9911 is not 127.0.0.1 or [::1]: the credentials endpoint listens on loopback only (share the agent's network namespace instead)",
                ],
            ),
            (
                "default profile not bound",
                "[broker]\nstate_dir = \"s\"\nsocket = \"s\"\nprofiles_dir = \"p\"\n[roles.r]\narn = \"arn:aws:iam::123456789012:role/r\"\n[agents.a]\nprofiles = [\"x\"]\ndefault_profile = \"y\"\n",
                &[
                    "broker.toml:9:19: agents.a.default_profile: \"y\" is not one of this agent's profiles",
                ],
            ),
            (
                "audit",
                "[broker]\nstate_dir = \"s\"\nsocket = \"s\"\nprofiles_dir = \"p\"\n[roles.r]\narn = \"arn:aws:iam::123456789012:role/r\"\n[audit]\nrotate_bytes = 10\ncheckpoint_evry = 5\n",
                &[
                    "broker.toml:8:16: audit.rotate_bytes: expected an integer from 4096 to 1099511627776",
                    "broker.toml:9:1: audit: unknown key \"checkpoint_evry\"; did you mean \"checkpoint_every\"?",
                ],
            ),
            (
                "limits, approvals and notify",
                "[broker]\nstate_dir = \"s\"\nsocket = \"s\"\nprofiles_dir = \"p\"\n[roles.r]\narn = \"arn:aws:iam::123456789012:role/r\"\n[limits]\nmax_issuance = 3\nwindow = \"0s\"\n[approvals]\nuse_within = \"30s\"\nmax_pending = 0\n[notify]\nwebhook = \"ftp://x\"\ncommand = []\ntimeout = \"2m\"\n",
                &[
                    "broker.toml:8:1: limits: unknown key \"max_issuance\"; did you mean \"max_issuances\"?",
                    "broker.toml:9:10: limits.window: 0 s is outside the allowed range, 1 to 604800 s",
                    "broker.toml:11:14: approvals.use_within: 30 s is outside the allowed range, 60 to 86400 s",
                    "broker.toml:12:15: approvals.max_pending: expected an integer from 1 to 1000",
                    "broker.toml:14:11: notify.webhook: must be an http:// or https:// URL with a host",
                    "broker.toml:15:11: notify.command: must not be empty",
                    "broker.toml:16:11: notify.timeout: 120 s is outside the allowed range, 1 to 60 s",
                ],
            ),
        ];
        for (what, src, want) in cases {
            let got = parse_str(src).unwrap_err();
            assert_eq!(&got, want, "{what}");
        }
    }

    #[test]
    fn webhook_urls() {
        assert!(check_url("https://hooks.example.com/x").is_ok());
        assert!(check_url("http://127.0.0.1:8080/hook").is_ok());
        assert_eq!(
            check_url("ftp://secret-token@x").unwrap_err(),
            "must be an http:// or https:// URL with a host"
        );
        assert!(check_url("not a url").is_err());
    }

    #[test]
    fn only_loopback_listeners() {
        assert!(check_listen("127.0.0.1:9911").is_ok());
        assert!(check_listen("[::1]:9911").is_ok());
        assert!(check_listen("0.0.0.0:9911").is_err());
        assert!(check_listen("10.0.0.5:9911").is_err());
        assert!(
            check_listen("localhost:9911").is_err(),
            "names are not resolved"
        );
        assert!(
            check_listen("127.0.0.2:9911").is_err(),
            "exactly the addresses Host may name"
        );
    }
}
