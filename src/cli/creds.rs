//! Client commands: `credential-process`, `request`, `env`, `exec`, `status`.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::time::Duration;

pub use mandate::client::calls::{Failure, call, call_raw, ok};
use mandate::protocol::{Request, Response, WireCredentials};

use super::{Exit, print_bytes};

fn one_line(s: &str) -> String {
    mandate::diag::terminal_line(s)
}

fn credentials(
    config_flag: Option<&std::path::Path>,
    profile: String,
    agent: Option<String>,
    reason: Option<String>,
    duration_seconds: Option<u32>,
) -> Result<(Response, WireCredentials), Failure> {
    let resp = call(
        config_flag,
        &Request::Credentials {
            profile,
            agent,
            reason,
            duration_seconds,
            approval_id: None,
        },
    )?;
    take_credentials(resp)
}

fn take_credentials(mut resp: Response) -> Result<(Response, WireCredentials), Failure> {
    let creds = resp
        .credentials
        .take()
        .ok_or_else(|| Failure(Exit::Unavailable, "the daemon sent no credentials".into()))?;
    Ok((resp, creds))
}

fn fail(f: Failure) -> Exit {
    eprintln!("{}", mandate::client::calls::failure_line(&f));
    f.0
}

/// `credential-process`: the AWS `credential_process` format on stdout, or one line on stderr.
pub fn credential_process(
    config_flag: Option<PathBuf>,
    profile: String,
    agent: Option<String>,
) -> Exit {
    match mandate::client::calls::credential_process(config_flag.as_deref(), profile, agent) {
        Ok(line) => print_bytes(&line),
        Err(f) => fail(f),
    }
}

/// What `mandate request` was asked to do.
pub struct RequestArgs {
    pub profile: String,
    pub agent: Option<String>,
    pub reason: Option<String>,
    pub duration: Option<String>,
    pub approval: Option<String>,
    pub wait: bool,
    pub timeout: String,
}

/// `request`: credentials plus what the broker decided, as JSON. With `--wait`, a pending
/// approval is polled until a human decides or it expires.
pub fn request(config_flag: Option<PathBuf>, a: RequestArgs) -> Exit {
    let duration_seconds = match a.duration.as_deref().map(mandate::profile::parse_duration) {
        None => None,
        Some(Ok(s)) => Some(s.min(u64::from(u32::MAX)) as u32),
        Some(Err(m)) => {
            eprintln!("error: --duration: {m}");
            return Exit::Usage;
        }
    };
    let timeout = match mandate::profile::parse_duration(&a.timeout) {
        Ok(s) => Duration::from_secs(s),
        Err(m) => {
            eprintln!("error: --timeout: {m}");
            return Exit::Usage;
        }
    };
    let mut approval_id = match a
        .approval
        .as_deref()
        .map(mandate::approval::ApprovalId::parse)
    {
        None => None,
        Some(Ok(id)) => Some(id),
        Some(Err(m)) => {
            eprintln!("error: --approval: {m}");
            return Exit::Usage;
        }
    };
    let deadline = std::time::Instant::now() + timeout;
    let mut announced = false;
    loop {
        let req = Request::Credentials {
            profile: a.profile.clone(),
            agent: a.agent.clone(),
            reason: a.reason.clone(),
            duration_seconds,
            approval_id: approval_id.clone(),
        };
        let resp = match call_raw(config_flag.as_deref(), &req) {
            Ok(r) => r,
            Err(f) => return fail(f),
        };
        let pending = resp
            .error
            .as_ref()
            .is_some_and(|e| e.code == "approval_pending");
        if !pending {
            return match ok(resp).and_then(take_credentials) {
                Ok((r, c)) => {
                    let body = serde_json::json!({
                        "AccessKeyId": c.access_key_id,
                        "SecretAccessKey": c.secret_access_key.expose(),
                        "SessionToken": c.session_token.expose(),
                        "Expiration": c.expiration,
                        "request_id": r.request_id,
                        "agent": r.agent,
                        "profile": r.profile,
                        "cached": r.cached,
                        "approval": r.approval,
                    });
                    print_bytes(format!("{body}\n").as_bytes())
                }
                Err(f) => fail(f),
            };
        }
        if !a.wait {
            return fail(Failure(
                Exit::Denied,
                resp.error.map(|e| e.message).unwrap_or_default(),
            ));
        }
        if !announced {
            eprintln!(
                "mandate: {} (waiting up to {} s)",
                one_line(&resp.error.map(|e| e.message).unwrap_or_default()),
                timeout.as_secs()
            );
            announced = true;
        }
        // Follow this exact request from now on, so a decision on it is what ends the wait.
        if approval_id.is_none() {
            approval_id = resp
                .approval
                .as_ref()
                .and_then(|v| v.get("id"))
                .and_then(|v| v.as_str())
                .and_then(|s| mandate::approval::ApprovalId::parse(s).ok());
        }
        if std::time::Instant::now() >= deadline {
            return fail(Failure(
                Exit::Denied,
                "gave up waiting for approval (--timeout); the request stays pending until it expires"
                    .into(),
            ));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// `env`: shell `export` lines for `eval "$(mandate env PROFILE)"`.
pub fn env(config_flag: Option<PathBuf>, profile: String, agent: Option<String>) -> Exit {
    match credentials(config_flag.as_deref(), profile, agent, None, None) {
        Ok((_, c)) => {
            let out = format!(
                "export AWS_ACCESS_KEY_ID={}\nexport AWS_SECRET_ACCESS_KEY={}\nexport AWS_SESSION_TOKEN={}\nexport AWS_CREDENTIAL_EXPIRATION={}\nunset AWS_PROFILE AWS_DEFAULT_PROFILE\n",
                sh_quote(&c.access_key_id),
                sh_quote(c.secret_access_key.expose()),
                sh_quote(c.session_token.expose()),
                sh_quote(&c.expiration),
            );
            print_bytes(out.as_bytes())
        }
        Err(f) => fail(f),
    }
}

/// Variables passed through to `exec`'s child. Everything else, including any other `AWS_*`
/// credential or profile setting, is dropped.
const PASS_THROUGH: [&str; 14] = [
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "TERM",
    "LANG",
    "TZ",
    "TMPDIR",
    "PWD",
    "COLORTERM",
    "NO_COLOR",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
];

fn passes(name: &str) -> bool {
    PASS_THROUGH.contains(&name)
        || name.starts_with("LC_")
        // Where to send requests is not a credential (and is how the local emulator is reached).
        || name == "AWS_ENDPOINT_URL"
        || name.starts_with("AWS_ENDPOINT_URL_")
}

/// `exec`: run a command with only the scoped credentials. The child cannot fall back to the
/// operator's config or credentials files: both point at /dev/null, and the instance metadata
/// service is disabled.
pub fn exec(
    config_flag: Option<PathBuf>,
    profile: String,
    agent: Option<String>,
    command: Vec<OsString>,
) -> Exit {
    let Some((program, args)) = command.split_first() else {
        eprintln!("error: give a command after --");
        return Exit::Usage;
    };
    let (_, c) = match credentials(config_flag.as_deref(), profile, agent, None, None) {
        Ok(x) => x,
        Err(f) => return fail(f),
    };
    let mut cmd = std::process::Command::new(program);
    cmd.args(args).env_clear();
    for (k, v) in std::env::vars_os() {
        if k.to_str().is_some_and(passes) {
            cmd.env(k, v);
        }
    }
    cmd.env("AWS_ACCESS_KEY_ID", &c.access_key_id)
        .env("AWS_SECRET_ACCESS_KEY", c.secret_access_key.expose())
        .env("AWS_SESSION_TOKEN", c.session_token.expose())
        .env("AWS_CREDENTIAL_EXPIRATION", &c.expiration)
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("AWS_EC2_METADATA_DISABLED", "true");
    let err = cmd.exec();
    eprintln!("mandate: cannot run {}: {err}", program.to_string_lossy());
    if err.kind() == std::io::ErrorKind::NotFound {
        Exit::NotFound
    } else {
        Exit::Internal
    }
}

/// The store's line of `status`: where the state lives and, in team mode, how fresh this
/// daemon's view of it is and which daemons share it.
fn store_line(store: &serde_json::Value) -> String {
    let text = |v: &serde_json::Value| one_line(v.as_str().unwrap_or(""));
    if store.is_null() {
        return String::new();
    }
    let mut line = format!("store: {}", text(&store["kind"]));
    if let Some(l) = store["location"].as_str() {
        line.push_str(&format!(" {}", one_line(l)));
    }
    if store["shared"] != true {
        return line + "\n";
    }
    let age = store["age_seconds"].as_u64().unwrap_or(0);
    if store["fresh"] == true {
        line.push_str(&format!(", shared; view confirmed {age} s ago"));
    } else {
        line = format!(
            "STORE STALE: {line}, view last confirmed {age} s ago (the bound is {} s){}: nothing is issued until it answers",
            store["stale_after_seconds"].as_u64().unwrap_or(0),
            store["problem"]
                .as_str()
                .map(|p| format!(" ({})", one_line(p)))
                .unwrap_or_default()
        );
    }
    if store["listening"] == false {
        line.push_str("; not hearing notifications (resyncing periodically)");
    }
    let daemons: Vec<String> = store["daemons"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| {
            format!(
                "{} ({}, seen {})",
                text(&d["host"]),
                text(&d["id"]),
                text(&d["seen_at"])
            )
        })
        .collect();
    if !daemons.is_empty() {
        line.push_str(&format!(
            "; {} daemon{} seen: {}",
            daemons.len(),
            if daemons.len() == 1 { "" } else { "s" },
            daemons.join(", ")
        ));
    }
    line + "\n"
}

/// `status`: live sessions per agent.
pub fn status(config_flag: Option<PathBuf>, json: bool) -> Exit {
    let resp = match call(config_flag.as_deref(), &Request::Status) {
        Ok(r) => r,
        Err(f) => return fail(f),
    };
    let status = resp.status.unwrap_or_default();
    if json {
        return super::print_json(&status, true);
    }
    let mut out = String::new();
    let audit_ok = status["audit_ok"].as_bool().unwrap_or(false);
    out.push_str(&format!(
        "audit log: {}\n",
        if audit_ok {
            "ok"
        } else {
            "FAILED: no credentials are being issued"
        }
    ));
    // What stops issuance comes first: during an incident that is what a human looks for.
    let text = |v: &serde_json::Value| one_line(v.as_str().unwrap_or(""));
    out.push_str(&store_line(&status["store"]));
    if let Some(p) = status["paused"].as_object() {
        out.push_str(&format!(
            "PAUSED since {} by {}{}: nothing is issued until `mandate resume`\n",
            text(&p["at"]),
            text(&p["by"]),
            p["reason"]
                .as_str()
                .map(|r| format!(" ({})", one_line(r)))
                .unwrap_or_default()
        ));
    }
    for t in status["breakers"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "BREAKER OPEN for agent {} since {}: {} (`mandate breaker reset {}`)\n",
            text(&t["agent"]),
            text(&t["at"]),
            text(&t["reason"]),
            text(&t["agent"])
        ));
    }
    for r in status["revocations"].as_array().into_iter().flatten() {
        let scope = match &r["scope"] {
            serde_json::Value::String(s) => one_line(s),
            serde_json::Value::Object(o) => match (o.get("kind"), o.get("name")) {
                (Some(k), Some(n)) => format!("{} {}", text(k), text(n)),
                (Some(k), None) if k == "all" => "every agent".to_owned(),
                (Some(k), None) => text(k),
                _ => one_line(&r["scope"].to_string()),
            },
            other => one_line(&other.to_string()),
        };
        let active = if r["active"] == true {
            "blocks new credentials"
        } else {
            "lifted"
        };
        let aws = r["aws_roles"]
            .as_array()
            .filter(|a| !a.is_empty())
            .map(|a| format!("; denied at AWS on {} role(s)", a.len()))
            .unwrap_or_default();
        out.push_str(&format!(
            "REVOKED {scope} at {} by {}: {active}{aws}\n",
            text(&r["at"]),
            text(&r["by"])
        ));
    }
    let sessions = status["sessions"].as_array().cloned().unwrap_or_default();
    for agent in status["agents"].as_array().cloned().unwrap_or_default() {
        let name = agent["name"].as_str().unwrap_or("?");
        let mine: Vec<_> = sessions.iter().filter(|s| s["agent"] == name).collect();
        out.push_str(&format!(
            "\nagent {}: {} live session(s)\n",
            one_line(name),
            mine.len()
        ));
        for s in mine {
            out.push_str(&format!(
                "  {:<16} {:<22} expires {}  {}{}\n",
                text(&s["profile"]),
                text(&s["access_key_id"]),
                text(&s["expiration"]),
                text(&s["session_name"]),
                if s["revoked"] == true {
                    "  [REVOKED]"
                } else {
                    ""
                }
            ));
        }
    }
    print_bytes(out.as_bytes())
}
