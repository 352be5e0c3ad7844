//! Human commands: `approvals list`, `approve`, `reject`, `revoke`, `unrevoke`,
//! `breaker reset`, `pause`, `resume`. The daemon decides who may; this file only prints.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use mandate::approval::ApprovalId;
use mandate::protocol::Request;
use mandate::revoke::Scope;

use super::creds::{Failure, call};
use super::{Exit, print_bytes, print_json};

#[derive(Debug, Subcommand)]
pub enum ApprovalsCmd {
    /// List approval requests (open ones, unless --all)
    List {
        /// Also decided and expired requests
        #[arg(long)]
        all: bool,
        /// Machine-readable output
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum BreakerCmd {
    /// Unlock an agent whose circuit breaker tripped
    Reset {
        /// The agent
        agent: String,
    },
}

/// Exactly one of the scopes.
#[derive(Debug, Args)]
#[group(required = false, multiple = false)]
pub struct ScopeArgs {
    /// Every session and request of this agent
    #[arg(long, value_name = "NAME")]
    agent: Option<String>,
    /// Every session and request of this profile
    #[arg(long, value_name = "NAME")]
    profile: Option<String>,
    /// One session, by request id or session name (see `mandate status`)
    #[arg(long, value_name = "ID")]
    session: Option<String>,
    /// Every agent
    #[arg(long)]
    all: bool,
}

impl ScopeArgs {
    fn scope(self) -> Option<Scope> {
        match (self.agent, self.profile, self.session, self.all) {
            (Some(a), _, _, _) => Some(Scope::Agent(a)),
            (_, Some(p), _, _) => Some(Scope::Profile(p)),
            (_, _, Some(s), _) => Some(Scope::Session(s)),
            (_, _, _, true) => Some(Scope::All),
            _ => None,
        }
    }
}

fn fail(f: Failure) -> Exit {
    eprintln!("{}", mandate::client::calls::failure_line(&f));
    f.0
}

fn safe(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => {
            mandate::diag::terminal_json(&serde_json::to_string(s).unwrap_or_default())
                .trim_matches('"')
                .to_owned()
        }
        serde_json::Value::Null => "-".into(),
        other => other.to_string(),
    }
}

pub fn list(config: Option<PathBuf>, all: bool, json: bool) -> Exit {
    let resp = match call(config.as_deref(), &Request::Approvals { all }) {
        Ok(r) => r,
        Err(f) => return fail(f),
    };
    let items = resp.result.unwrap_or_default();
    if json {
        return print_json(&items, false);
    }
    let rows = items.as_array().cloned().unwrap_or_default();
    if rows.is_empty() {
        return print_bytes(b"no approval requests\n");
    }
    let mut out = format!(
        "{:<16}  {:<8}  {:<12}  {:<18}  {:<9}  {:<20}  {}\n",
        "ID", "STATUS", "AGENT", "PROFILE", "APPROVALS", "EXPIRES", "REASON"
    );
    for r in rows {
        let have = r["approvals"].as_array().map(|a| a.len()).unwrap_or(0);
        out.push_str(&format!(
            "{:<16}  {:<8}  {:<12}  {:<18}  {:<9}  {:<20}  {}\n",
            safe(&r["id"]),
            safe(&r["status"]),
            safe(&r["agent"]),
            safe(&r["profile"]),
            format!("{have}/{}", r["need"]),
            safe(&r["expires"]),
            safe(&r["reason"]),
        ));
    }
    print_bytes(out.as_bytes())
}

/// What an approver sees before approving: the request as the daemon holds it.
fn describe(r: &serde_json::Value) -> String {
    let mut s = format!(
        "request {} ({}, {}/{} approvals, expires {}):\n",
        safe(&r["id"]),
        safe(&r["status"]),
        r["approvals"].as_array().map_or(0, Vec::len),
        r["need"],
        safe(&r["expires"])
    );
    let uid = r["uid"]
        .as_u64()
        .map(|u| format!(" (uid {u})"))
        .unwrap_or_default();
    s.push_str(&format!("  agent     {}{uid}\n", safe(&r["agent"])));
    s.push_str(&format!("  profile   {}\n", safe(&r["profile"])));
    s.push_str(&format!("  role      {}\n", safe(&r["role"])));
    s.push_str(&format!("  duration  {} s\n", r["duration_seconds"]));
    s.push_str(&format!(
        "  reason    {}  (the agent's own claim)\n",
        match &r["reason"] {
            serde_json::Value::String(x) => mandate::diag::quoted(x),
            _ => "(none given)".into(),
        }
    ));
    s.push_str(&format!("  needs     {}\n", safe(&r["needs"])));
    match &r["unlocks"] {
        serde_json::Value::Object(u) => {
            let classes = u["classes"].as_object().cloned().unwrap_or_default();
            if classes.is_empty() {
                s.push_str("  unlocks   no classified action\n");
            }
            // Destructive classes first, in the order a reviewer should read them.
            for class in mandate::catalog::RiskClass::ALL {
                let Some(c) = classes.get(class.as_str()) else {
                    continue;
                };
                let names: Vec<String> = c["actions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(safe)
                    .collect();
                let count = c["count"].as_u64().unwrap_or(names.len() as u64);
                let more = count.saturating_sub(names.len() as u64);
                s.push_str(&format!(
                    "  unlocks   {class} ({}): {}{}\n",
                    class.describe(),
                    names.join(", "),
                    if more > 0 {
                        format!(" and {more} more")
                    } else {
                        String::new()
                    }
                ));
            }
            if let Some(m) = u["managed_policies"].as_array().filter(|m| !m.is_empty()) {
                let names: Vec<String> = m.iter().map(safe).collect();
                s.push_str(&format!(
                    "  unlocks   whatever these managed policies grant (not analysed): {}\n",
                    names.join(", ")
                ));
            }
        }
        _ => s.push_str("  unlocks   unknown: the profile changed since the request\n"),
    }
    s
}

/// On a terminal (unless `--yes`), shows the pending request about to be approved and asks to
/// confirm; scripts (stdin not a terminal) are not asked. `Ok(false)` means the approver said no.
/// Shows the request and asks; `Some(digest)` of what was shown when the approver said yes
/// (`Some(None)` with --yes or no terminal: nothing was shown), `None` when declined.
fn confirm(
    config: Option<&std::path::Path>,
    id: &ApprovalId,
    yes: bool,
) -> Result<Option<Option<String>>, Exit> {
    use std::io::{BufRead, IsTerminal, Write};
    let stdin = std::io::stdin();
    if yes || !stdin.is_terminal() {
        return Ok(Some(None));
    }
    // Open requests only: a pending one is always among them.
    let resp = call(config, &Request::Approvals { all: false }).map_err(fail)?;
    let items = resp.result.unwrap_or_default();
    let found = items
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["id"] == id.as_str() && r["status"] == "pending");
    // Fail closed: what cannot be shown is not approved from a terminal.
    let Some(r) = found else {
        eprintln!(
            "mandate: request {id} is not among the pending requests you can see; nothing was approved (check `mandate approvals list --all`)"
        );
        return Ok(None);
    };
    eprint!("{}", describe(r));
    eprint!("Approve this request? [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    if stdin.lock().read_line(&mut answer).is_err() {
        return Ok(None);
    }
    // The vote is for exactly what was shown: the daemon refuses it if the request changed.
    let shown = r["digest"].as_str().map(str::to_owned);
    Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes").then_some(shown))
}

pub fn vote(
    config: Option<PathBuf>,
    id: String,
    approve: bool,
    note: Option<String>,
    as_approver: Option<String>,
    yes: bool,
) -> Exit {
    let id = match ApprovalId::parse(&id) {
        Ok(id) => id,
        Err(m) => {
            eprintln!("error: {m}");
            return Exit::Usage;
        }
    };
    let mut seen = None;
    if approve {
        match confirm(config.as_deref(), &id, yes) {
            Ok(Some(digest)) => seen = digest,
            Ok(None) => {
                eprintln!(
                    "mandate: not approved (confirmation declined); request {id} is unchanged"
                );
                return Exit::Denied;
            }
            Err(exit) => return exit,
        }
    }
    let req = Request::Vote {
        id,
        approve,
        note,
        approver: as_approver,
        digest: seen,
    };
    match call(config.as_deref(), &req) {
        Ok(r) => {
            let v = r.result.unwrap_or_default();
            let line = match v["status"].as_str() {
                Some("approved") => format!(
                    "approved request {}: the agent may now use it once",
                    safe(&v["id"])
                ),
                Some("rejected") => format!("rejected request {}", safe(&v["id"])),
                _ if v["outcome"] == "duplicate" => format!(
                    "{} already approved request {} (counted once): {}/{} approvals",
                    safe(&v["approver"]),
                    safe(&v["id"]),
                    v["have"],
                    v["need"]
                ),
                _ => format!(
                    "counted {}'s approval of request {}: {}/{} approvals",
                    safe(&v["approver"]),
                    safe(&v["id"]),
                    v["have"],
                    v["need"]
                ),
            };
            print_bytes(format!("{line}\n").as_bytes())
        }
        Err(f) => fail(f),
    }
}

pub fn revoke(
    config: Option<PathBuf>,
    scope: Option<ScopeArgs>,
    gc: bool,
    aws: bool,
    json: bool,
) -> Exit {
    let req = match (scope.and_then(ScopeArgs::scope), gc) {
        (None, true) => Request::RevokeGc,
        (Some(scope), false) => Request::Revoke { scope, aws },
        _ => {
            eprintln!("error: pass one of --agent, --profile, --session, --all, or --gc");
            return Exit::Usage;
        }
    };
    match call(config.as_deref(), &req) {
        Ok(r) => {
            let v = r.result.unwrap_or_default();
            if json {
                return print_json(&v, false);
            }
            let mut out = String::new();
            if let Some(scope) = v["scope"].as_str() {
                let shown = safe(&serde_json::Value::String(scope.into()));
                out.push_str(&if scope.starts_with("session") {
                    format!(
                        "revoked {shown}: that session is no longer served ({} cached copies dropped); the agent may still get other sessions\n",
                        v["purged"]
                    )
                } else {
                    format!(
                        "revoked {shown}: no new credentials from now on; {} cached sessions dropped\n",
                        v["purged"]
                    )
                });
            }
            for p in v["policies"].as_array().into_iter().flatten() {
                out.push_str(&format!(
                    "wrote inline policy {} on {} ({} characters): it denies sessions issued before now; AWS takes a few minutes to apply it everywhere\n",
                    safe(&p["policy_name"]),
                    safe(&p["role_arn"]),
                    p["chars"]
                ));
            }
            for role in v["removed"].as_array().into_iter().flatten() {
                out.push_str(&format!(
                    "removed the revocation policy from {} (no session it denied can still be alive)\n",
                    safe(role)
                ));
            }
            if out.is_empty() {
                out.push_str("nothing to collect\n");
            }
            print_bytes(out.as_bytes())
        }
        Err(f) => fail(f),
    }
}

pub fn unrevoke(config: Option<PathBuf>, scope: ScopeArgs) -> Exit {
    let Some(scope) = scope.scope() else {
        eprintln!("error: pass one of --agent, --profile, --session or --all");
        return Exit::Usage;
    };
    match call(config.as_deref(), &Request::Unrevoke { scope: scope.clone() }) {
        Ok(_) => print_bytes(
            format!(
                "lifted the revocation of {scope}: new credentials may be issued again (sessions revoked at AWS stay revoked)\n"
            )
            .as_bytes(),
        ),
        Err(f) => fail(f),
    }
}

pub fn breaker(config: Option<PathBuf>, cmd: BreakerCmd) -> Exit {
    let BreakerCmd::Reset { agent } = cmd;
    match call(
        config.as_deref(),
        &Request::BreakerReset {
            agent: agent.clone(),
        },
    ) {
        Ok(_) => print_bytes(format!("reset agent {agent}'s circuit breaker\n").as_bytes()),
        Err(f) => fail(f),
    }
}

pub fn pause(config: Option<PathBuf>, pause: bool, reason: Option<String>) -> Exit {
    let req = if pause {
        Request::Pause { reason }
    } else {
        Request::Resume
    };
    match call(config.as_deref(), &req) {
        Ok(_) => print_bytes(if pause {
            b"paused: no agent gets credentials until `mandate resume`\n".as_slice()
        } else {
            b"resumed: credentials are issued again\n".as_slice()
        }),
        Err(f) => fail(f),
    }
}
