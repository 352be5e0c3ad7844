//! `mandate init`: a starter `broker.toml` and the `~/.aws/config` snippet for each profile.

use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use mandate::profile;

use super::{Exit, print_bytes};

pub struct InitArgs {
    pub config: Option<PathBuf>,
    pub profiles: PathBuf,
    pub role_arn: String,
    pub agent: String,
    pub region: String,
    pub force: bool,
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_owned())
}

pub fn run(a: InitArgs) -> Exit {
    let target = match a
        .config
        .clone()
        .or_else(|| std::env::var_os("MANDATE_CONFIG").map(PathBuf::from))
    {
        Some(p) => p,
        None => match std::env::var_os("HOME") {
            Some(h) => Path::new(&h).join(".config/mandate/broker.toml"),
            None => {
                eprintln!("error: HOME is not set; pass --config FILE");
                return Exit::Usage;
            }
        },
    };
    let target = absolute(&target);
    if target.exists() && !a.force {
        // An existing config is kept; only the state it needs is prepared.
        return match mandate::config::read(&target) {
            Ok(c) => match prepare_state(&c) {
                Ok(msg) => print_bytes(
                    format!(
                        "{} exists (kept; --force rewrites it)\n{msg}{}",
                        target.display(),
                        existing_snippet(&c, &target)
                    )
                    .as_bytes(),
                ),
                Err(e) => {
                    eprintln!("error: {e}");
                    Exit::Unavailable
                }
            },
            Err(e) => super::config_error(&e),
        };
    }
    if let Err(m) = mandate::config::check_agent_name(&a.agent) {
        eprintln!("error: --agent: {m}");
        return Exit::Usage;
    }
    let profiles_dir = absolute(&a.profiles);
    let offer = match offer(&profiles_dir) {
        Ok(o) => o,
        Err(exit) => return exit,
    };
    let toml = render(&profiles_dir, &offer, &a.region, &a.role_arn, &a.agent);
    let names = offer.names;
    // The same full check the daemon runs, before anything is written.
    if let Err(e) = mandate::config::check_text(&target, toml.as_bytes()) {
        let exit = super::config_error(&e);
        eprintln!("nothing was written");
        return exit;
    }
    if let Some(dir) = target.parent()
        && let Err(e) = mandate::os::create_private_dir(dir)
    {
        eprintln!("error: {e}");
        return Exit::Internal;
    }
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&target)
        .and_then(|mut f| {
            // --force over an existing file keeps its old mode otherwise.
            f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
            f.write_all(toml.as_bytes())
        });
    if let Err(e) = written {
        eprintln!("error: cannot write {}: {e}", target.display());
        return Exit::Internal;
    }
    let state_msg = match mandate::config::read(&target) {
        Ok(c) => match prepare_state(&c) {
            Ok(m) => m,
            Err(e) => {
                eprintln!("error: {e}");
                return Exit::Unavailable;
            }
        },
        Err(e) => return super::config_error(&e),
    };
    let out = format!(
        "wrote {}\n{state_msg}{}",
        target.display(),
        aws_config_snippet(
            &target,
            &a.region,
            &names.iter().map(|n| (None, n.clone())).collect::<Vec<_>>()
        )
    );
    print_bytes(out.as_bytes())
}

/// The profiles init can bind to one agent, the ones waiting for peers, and their roles.
struct Offer {
    names: Vec<String>,
    unbound: Vec<String>,
    roles: BTreeSet<String>,
}

/// Reads every profile in `profiles_dir`; one that fails validation stops init (reported as
/// `profiles check` would).
fn offer(profiles_dir: &Path) -> Result<Offer, Exit> {
    let files = match profile::discover(&[profiles_dir.to_path_buf()]) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e}");
            return Err(Exit::NotFound);
        }
    };
    let mut names = Vec::new();
    let mut unbound = Vec::new();
    let mut roles = BTreeSet::new();
    for f in &files {
        match profile::load(f) {
            // One person cannot satisfy the two-person rule: such profiles wait for peers.
            Ok(p) if matches!(p.approval, profile::Approval::Peers(_)) => {
                roles.insert(p.role.as_str().to_owned());
                unbound.push(format!("{} ({})", p.name.as_str(), p.approval));
            }
            Ok(p) => {
                roles.insert(p.role.as_str().to_owned());
                names.push(p.name.as_str().to_owned());
            }
            Err(e) => {
                // Every problem, with file:line:col, as `profiles check` would print them.
                if let profile::ProfileError::Invalid(diags) = &e {
                    for d in diags {
                        eprintln!("{d}");
                    }
                }
                eprintln!(
                    "error: {e}; nothing was written (run `mandate profiles check {}` after fixing it)",
                    profiles_dir.display()
                );
                return Err(Exit::Invalid);
            }
        }
    }
    Ok(Offer {
        names,
        unbound,
        roles,
    })
}

/// The starter config: the roles the profiles use, one agent for this uid bound to the
/// profiles one person can approve, and this person as its operator and approver.
fn render(profiles_dir: &Path, offer: &Offer, region: &str, role_arn: &str, agent: &str) -> String {
    let uid = mandate::os::effective_uid();
    // The operator is the person running init: their login name (USER, LOGNAME, or the
    // password database entry of this uid), lower-cased to a valid name.
    let user = ["USER", "LOGNAME"]
        .iter()
        .filter_map(|v| std::env::var(v).ok())
        .chain(login_name(uid))
        .map(|u| u.to_ascii_lowercase())
        .find(|u| profile::check_slug("user", u).is_ok())
        .unwrap_or_else(|| "operator".into());
    let mut toml = format!(
        "# mandate broker config, written by `mandate init`. Reference: README.md.\n\
         [broker]\n\
         state_dir = \"state\"            # audit log and broker state (relative to this file)\n\
         socket = \"run/mandate.sock\"     # the agents' Unix socket\n\
         profiles_dir = {:?}\n\
         region = {:?}\n\
         # endpoint_url = \"http://127.0.0.1:5055\"   # a local AWS emulator only\n",
        profiles_dir.display().to_string(),
        region
    );
    for role in &offer.roles {
        toml.push_str(&format!(
            "\n[roles.{role}]\narn = {:?}   # the role agents of this kind assume\nmax_session = \"1h\"\n",
            role_arn
        ));
    }
    if !offer.unbound.is_empty() {
        toml.push_str(&format!(
            "\n# Not bound below, because they need approvers other than you: {}.\n\
             # Declare those people in [approvers] (with their own uids) and add the profiles.\n",
            offer.unbound.join(", ")
        ));
    }
    toml.push_str(&format!(
        "\n[agents.{}]\nprofiles = [{}]\nuids = [{uid}]\noperator = {:?}\n\n[approvers.{}]\nuids = [{uid}]\n",
        agent,
        offer.names.iter().map(|n| format!("{n:?}")).collect::<Vec<_>>().join(", "),
        user,
        user
    ));
    toml
}

/// What to add to ~/.aws/config, one AWS profile per (agent, profile), and how to start the
/// daemon. `agent` is named on each line only when this uid runs as several agents (the daemon
/// then needs to be told which).
fn aws_config_snippet(target: &Path, region: &str, entries: &[(Option<&str>, String)]) -> String {
    let exe = mandate::client::front::front_program()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "mandate".into());
    let config = shell_word(&target.display().to_string());
    let mut out = "\nAdd to ~/.aws/config (one AWS profile per mandate profile):\n".to_owned();
    for (agent, n) in entries {
        let (section, flag) = match agent {
            Some(a) => (format!("mandate-{a}-{n}"), format!(" --agent {a}")),
            None => (format!("mandate-{n}"), String::new()),
        };
        out.push_str(&format!(
            "\n[profile {section}]\ncredential_process = {} --config {config} credential-process{flag} {n}\nregion = {region}\n",
            shell_word(&exe),
        ));
    }
    out.push_str(&format!("\nThen: mandate --config {config} serve\n"));
    out
}

/// A word as botocore splits `credential_process` (POSIX shell rules): as is when it is plain,
/// else in single quotes.
fn shell_word(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+:=@%,".contains(&b));
    if plain {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// The snippet for a config that already exists: the profiles of the agents this uid runs as
/// (the ones `credential_process` can use), or why there are none.
fn existing_snippet(c: &mandate::config::Config, target: &Path) -> String {
    let uid = mandate::os::effective_uid();
    let mine: Vec<&mandate::config::Agent> = c
        .agents
        .values()
        .filter(|a| a.uids.contains(&uid))
        .collect();
    let several = mine.len() > 1;
    let entries: Vec<(Option<&str>, String)> = mine
        .iter()
        .flat_map(|a| {
            a.profiles
                .iter()
                .map(move |p| (several.then_some(a.name.as_str()), p.as_str().to_owned()))
        })
        .collect();
    if entries.is_empty() {
        return format!(
            "\nNo agent in {} runs as uid {uid}, so no credential_process line applies to you; add one with `mandate --config {} agent add NAME --profiles ...` (agents of the HTTP endpoint use their token instead)\n",
            target.display(),
            target.display()
        );
    }
    aws_config_snippet(target, &c.region, &entries)
}

/// Creates the state directory and the audit directory (0700) and the checkpoint signing key
/// (0600, with its public half beside it) if they are missing.
fn prepare_state(c: &mandate::config::Config) -> Result<String, String> {
    for dir in [&c.state_dir, &c.audit_dir()] {
        mandate::os::create_private_dir(dir)?;
    }
    mandate::audit::check_dir(&c.audit_dir()).map_err(|e| e.to_string())?;
    let key = c.signing_key();
    let (verb, public) = if key.exists() {
        (
            "uses",
            mandate::audit::checkpoint::load_key(&key)?.verifying_key(),
        )
    } else {
        ("created", mandate::audit::checkpoint::create_key(&key)?)
    };
    Ok(format!(
        "state in {} (audit log in {}); {verb} the checkpoint signing key {} (fingerprint {}); keep a copy of {} elsewhere to verify the log with `mandate audit verify --key`\n",
        c.state_dir.display(),
        c.audit_dir().display(),
        key.display(),
        mandate::audit::checkpoint::fingerprint(&public),
        key.with_extension("pub").display()
    ))
}

/// The login name of `uid` from /etc/passwd, if any.
fn login_name(uid: u32) -> Option<String> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        let _ = f.next();
        (f.next()?.parse::<u32>().ok()? == uid).then(|| name.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::shell_word;

    #[test]
    fn words_botocore_splits_back_into_themselves() {
        for (word, want) in [
            ("/usr/local/bin/mandate", "/usr/local/bin/mandate"),
            ("/home/a b/broker.toml", "'/home/a b/broker.toml'"),
            ("/tmp/it's", "'/tmp/it'\\''s'"),
            ("", "''"),
            ("/x/$(id)", "'/x/$(id)'"),
        ] {
            assert_eq!(shell_word(word), want, "{word}");
        }
    }
}
