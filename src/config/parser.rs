//! The walk over `broker.toml`: the shared helpers every table uses, the dispatch to one
//! function per top-level table (in the files beside this one), and the checks across tables.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::diag::Diagnostic;
use crate::profile::parse_duration;
use crate::toml_walk::{self, Walker};

use super::broker::BrokerTable;
use super::{Agent, ApprovalPolicy, Approver, Config, Limits, Notify, Role};

const TOP: [&str; 11] = [
    "broker",
    "audit",
    "roles",
    "agents",
    "approvers",
    "http",
    "approvals",
    "limits",
    "notify",
    "store",
    "console",
];
const TABLES: &str = "[broker], [audit], [roles.NAME], [agents.NAME], [approvers.NAME], [http], [approvals], [limits], [notify], [store] or [console]";

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

pub(super) struct ConfigParser<'a> {
    pub(super) w: Walker<'a>,
    base: &'a Path,
}

pub(super) type Key<'a> = Spanned<std::borrow::Cow<'a, str>>;

/// What the tables have given so far: defaults for what is absent, `None` in the broker table
/// for a required key missing or wrong (already reported).
struct Draft {
    broker: BrokerTable,
    roles: BTreeMap<String, Role>,
    /// With the span of each agent's name, for the operator check.
    agents: BTreeMap<String, (Agent, Range<usize>)>,
    approvers: BTreeMap<String, Approver>,
    audit: crate::audit::Options,
    http: Option<SocketAddr>,
    approvals: ApprovalPolicy,
    limits: Limits,
    notify: Notify,
    store: Option<super::StoreConfig>,
    console: Option<super::ConsoleConfig>,
}

impl Draft {
    fn new() -> Self {
        Draft {
            broker: BrokerTable::default(),
            roles: BTreeMap::new(),
            agents: BTreeMap::new(),
            approvers: BTreeMap::new(),
            audit: crate::audit::Options::default(),
            http: None,
            approvals: ApprovalPolicy::default(),
            limits: Limits::default(),
            notify: Notify {
                timeout: Duration::from_secs(5),
                ..Notify::default()
            },
            store: None,
            console: None,
        }
    }

    /// The validated config, if every required value is there.
    fn into_config(self, source: &Path) -> Option<Config> {
        let b = self.broker;
        Some(Config {
            source: source.to_owned(),
            state_dir: b.state_dir?,
            socket: b.socket?,
            profiles_dir: b.profiles_dir?,
            region: b.region?,
            endpoint_url: b.endpoint_url,
            log_format: b.log_format?,
            cache: b.cache,
            sts_timeout: b.sts_timeout?,
            roles: self.roles,
            agents: self.agents.into_iter().map(|(k, (a, _))| (k, a)).collect(),
            approvers: self.approvers,
            audit: self.audit,
            approvals: self.approvals,
            limits: self.limits,
            notify: self.notify,
            http: self.http,
            store: self.store,
            console: self.console,
        })
    }
}

impl ConfigParser<'_> {
    /// The whole document: every top-level table, then the checks across tables.
    fn config(&mut self, table: &DeTable<'_>, source: &Path) -> Option<Config> {
        let mut draft = Draft::new();
        let mut ok = true;
        for (key, value) in table.iter() {
            ok &= self.top_level(key, value, &mut draft);
        }
        self.required_broker_keys(table, &draft.broker);
        self.roles_declared(table, &draft.roles);
        self.operators_declared(&draft.agents, &draft.approvers);
        ok &= self.console_identities(&draft.approvers, draft.console.is_some());
        ok &= self.cache_order(&draft.broker.cache);
        if !ok {
            return None;
        }
        draft.into_config(source)
    }

    /// One top-level key and the table it names. False if anything in it was wrong.
    fn top_level(&mut self, key: &Key<'_>, value: &Spanned<DeValue<'_>>, d: &mut Draft) -> bool {
        match key.get_ref().as_ref() {
            "broker" => self.broker(value, &mut d.broker),
            "audit" => self.audit(value, &mut d.audit),
            "roles" => self.roles(value, &mut d.roles),
            "agents" => self.agents(value, &mut d.agents),
            "approvers" => self.approvers(value, &mut d.approvers),
            "approvals" => self.approvals(value, &mut d.approvals),
            "limits" => self.limits(value, &mut d.limits),
            "notify" => self.notify(value, &mut d.notify),
            "http" => self.http(key, value, &mut d.http),
            "store" => self.store(key, value, &mut d.store),
            "console" => self.console(key, value, &mut d.console),
            _ => {
                self.unknown(key, "", &TOP);
                false
            }
        }
    }

    /// Walks a table of named tables (`[roles.NAME]`): `f` parses one, `keep` takes it with
    /// the span of its name. False if any failed.
    pub(super) fn named<T>(
        &mut self,
        value: &Spanned<DeValue<'_>>,
        name: &str,
        mut f: impl FnMut(&mut Self, &Key<'_>, &Spanned<DeValue<'_>>) -> Option<T>,
        mut keep: impl FnMut(T, Range<usize>),
    ) -> bool {
        let Some(t) = self.table(value, name) else {
            return false;
        };
        let mut ok = true;
        for (k, v) in t.iter() {
            match f(self, k, v) {
                Some(x) => keep(x, k.span()),
                None => ok = false,
            }
        }
        ok
    }

    pub(super) fn unknown(&mut self, key: &Key<'_>, parent: &str, allowed: &[&str]) {
        self.w.unknown_key(key, parent, allowed, &TOP, TABLES);
    }

    pub(super) fn table<'t, 'v>(
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

    pub(super) fn path(&mut self, v: &Spanned<DeValue<'_>>, path: &str) -> Option<PathBuf> {
        let s = self.w.string(v, path, "a path")?;
        if s.is_empty() {
            self.w.err(v.span(), path, "must not be empty");
            return None;
        }
        Some(self.base.join(s))
    }

    pub(super) fn duration(
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
    pub(super) fn section(
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

    pub(super) fn int(
        &mut self,
        v: &Spanned<DeValue<'_>>,
        path: &str,
        min: u64,
        max: u64,
    ) -> Option<u64> {
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

    pub(super) fn uids(&mut self, v: &Spanned<DeValue<'_>>, path: &str) -> Option<Vec<u32>> {
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
}
