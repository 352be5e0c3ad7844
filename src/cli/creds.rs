//! Client commands: `credential-process`, `request`, `env`, `exec`, `status`.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::time::Duration;

use mandate::client::{self, ClientError};
use mandate::config;
use mandate::protocol::{Request, Response, WireCredentials};

use super::{Exit, print_bytes};

/// The broker may take this long (STS retries included) before the CLI gives up.
const CALL_TIMEOUT: Duration = Duration::from_secs(70);

/// Error codes that mean "refused" rather than "broken".
const DENIED: [&str; 5] = [
    "unknown_caller",
    "unknown_profile",
    "not_bound",
    "approval_required",
    "bad_request",
];

/// A failure to report: one line for stderr and the exit code.
pub struct Failure(pub Exit, pub String);

fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

pub fn call(config_flag: Option<&std::path::Path>, req: &Request) -> Result<Response, Failure> {
    let path = config::locate(config_flag).map_err(|e| Failure(Exit::NotFound, e.to_string()))?;
    let cfg = config::read(&path).map_err(|e| match e {
        config::ConfigError::Invalid(d) => Failure(
            Exit::Invalid,
            format!(
                "{} (run `mandate serve --config {}` to see every problem)",
                d[0],
                path.display()
            ),
        ),
        other => Failure(Exit::NotFound, other.to_string()),
    })?;
    let resp = client::call(&cfg.socket, req, CALL_TIMEOUT).map_err(|e| {
        let code = match e {
            ClientError::PermissionDenied(_) => Exit::Denied,
            _ => Exit::Unavailable,
        };
        Failure(code, e.to_string())
    })?;
    if resp.ok {
        return Ok(resp);
    }
    let err = resp.error.unwrap_or_else(|| mandate::protocol::WireError {
        code: "error".into(),
        message: "unknown error".into(),
    });
    let exit = if DENIED.contains(&err.code.as_str()) {
        Exit::Denied
    } else {
        Exit::Unavailable
    };
    Err(Failure(exit, err.message))
}

fn credentials(
    config_flag: Option<&std::path::Path>,
    profile: String,
    agent: Option<String>,
    reason: Option<String>,
    duration_seconds: Option<u32>,
) -> Result<(Response, WireCredentials), Failure> {
    let mut resp = call(
        config_flag,
        &Request::Credentials {
            profile,
            agent,
            reason,
            duration_seconds,
        },
    )?;
    let creds = resp
        .credentials
        .take()
        .ok_or_else(|| Failure(Exit::Unavailable, "the daemon sent no credentials".into()))?;
    Ok((resp, creds))
}

fn fail(f: Failure) -> Exit {
    eprintln!("mandate: {}", one_line(&f.1));
    f.0
}

/// `credential-process`: the AWS `credential_process` format on stdout, or one line on stderr.
pub fn credential_process(
    config_flag: Option<PathBuf>,
    profile: String,
    agent: Option<String>,
) -> Exit {
    match credentials(config_flag.as_deref(), profile, agent, None, None) {
        Ok((_, c)) => {
            let body = serde_json::json!({
                "Version": 1,
                "AccessKeyId": c.access_key_id,
                "SecretAccessKey": c.secret_access_key.expose(),
                "SessionToken": c.session_token.expose(),
                "Expiration": c.expiration,
            });
            print_bytes(format!("{body}\n").as_bytes())
        }
        Err(f) => fail(f),
    }
}

/// `request`: credentials plus what the broker decided, as JSON.
pub fn request(
    config_flag: Option<PathBuf>,
    profile: String,
    agent: Option<String>,
    reason: Option<String>,
    duration: Option<String>,
) -> Exit {
    let duration_seconds = match duration.as_deref().map(mandate::profile::parse_duration) {
        None => None,
        Some(Ok(s)) => Some(s.min(u64::from(u32::MAX)) as u32),
        Some(Err(m)) => {
            eprintln!("error: --duration: {m}");
            return Exit::Usage;
        }
    };
    match credentials(
        config_flag.as_deref(),
        profile,
        agent,
        reason,
        duration_seconds,
    ) {
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
            });
            print_bytes(format!("{body}\n").as_bytes())
        }
        Err(f) => fail(f),
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

/// `status`: live sessions per agent.
pub fn status(config_flag: Option<PathBuf>, json: bool) -> Exit {
    let resp = match call(config_flag.as_deref(), &Request::Status) {
        Ok(r) => r,
        Err(f) => return fail(f),
    };
    let status = resp.status.unwrap_or_default();
    if json {
        return print_bytes(
            format!(
                "{}\n",
                serde_json::to_string_pretty(&status).unwrap_or_default()
            )
            .as_bytes(),
        );
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
    let sessions = status["sessions"].as_array().cloned().unwrap_or_default();
    for agent in status["agents"].as_array().cloned().unwrap_or_default() {
        let name = agent["name"].as_str().unwrap_or("?");
        let mine: Vec<_> = sessions.iter().filter(|s| s["agent"] == name).collect();
        out.push_str(&format!("\nagent {name}: {} live session(s)\n", mine.len()));
        for s in mine {
            out.push_str(&format!(
                "  {:<16} {:<22} expires {}  {}\n",
                s["profile"].as_str().unwrap_or(""),
                s["access_key_id"].as_str().unwrap_or(""),
                s["expiration"].as_str().unwrap_or(""),
                s["session_name"].as_str().unwrap_or(""),
            ));
        }
    }
    print_bytes(out.as_bytes())
}
