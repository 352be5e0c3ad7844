//! `mandate agent add|rotate`: agents of the container-credentials endpoint and their tokens.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use clap::Subcommand;
use mandate::config;
use mandate::profile::ProfileName;

use super::{Exit, config_error, print_bytes};

#[derive(Debug, Subcommand)]
pub enum AgentCmd {
    /// Declare an agent for the HTTP endpoint, create its token file and print its environment
    #[command(
        long_about = "Declare an agent for the container-credentials endpoint.\n\n\
        Creates the agent's token file (256 random bits, mode 0600, no trailing newline), adds \
        [agents.NAME] to the broker config, and prints the environment an agent container needs \
        (AWS_CONTAINER_CREDENTIALS_FULL_URI, AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE)."
    )]
    Add {
        /// The agent's name
        name: String,
        /// Profiles the agent may use, comma-separated
        #[arg(long, value_delimiter = ',', required = true)]
        profiles: Vec<String>,
        /// The profile served at the endpoint's root [default: the first of --profiles]
        #[arg(long)]
        default: Option<String>,
        /// Where to write the token [default: STATE_DIR/tokens/NAME]
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
        /// The approver this agent works for (needed for profiles with approval = "operator")
        #[arg(long, value_name = "APPROVER")]
        operator: Option<String>,
    },
    /// Replace an agent's token; the daemon picks the new one up without a restart
    Rotate {
        /// The agent's name
        name: String,
    },
}

pub fn run(config_flag: Option<PathBuf>, cmd: AgentCmd) -> Exit {
    let path = match config::locate(config_flag.as_deref()) {
        Ok(p) => p,
        Err(e) => return config_error(&e),
    };
    let cfg = match config::read(&path) {
        Ok(c) => c,
        Err(e) => return config_error(&e),
    };
    match cmd {
        AgentCmd::Add {
            name,
            profiles,
            default,
            token_file,
            operator,
        } => add(&path, &cfg, name, profiles, default, token_file, operator),
        AgentCmd::Rotate { name } => {
            let Some(file) = cfg.agents.get(&name).and_then(|a| a.token_file.clone()) else {
                eprintln!(
                    "error: agent {name:?} has no token_file in {}",
                    path.display()
                );
                return Exit::NotFound;
            };
            match write_token(&file, true) {
                Ok(()) => {
                    print_bytes(format!("rotated the token in {}\n", file.display()).as_bytes())
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    Exit::Internal
                }
            }
        }
    }
}

/// Writes a fresh token atomically (temp file + rename): mode 0600, no trailing newline.
fn write_token(file: &Path, replace: bool) -> Result<(), String> {
    if let Some(dir) = file.parent() {
        mandate::os::create_private_dir(dir)?;
    }
    if file.exists() && !replace {
        return Err(format!(
            "{} exists; use `mandate agent rotate` to replace a token",
            file.display()
        ));
    }
    let tmp = file.with_extension("new");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| e.to_string())?;
    f.write_all(mandate::transport::http::new_token().as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, file).map_err(|e| format!("cannot replace {}: {e}", file.display()))
}

fn add(
    path: &Path,
    cfg: &config::Config,
    name: String,
    profiles: Vec<String>,
    default: Option<String>,
    token_file: Option<PathBuf>,
    operator: Option<String>,
) -> Exit {
    if let Some(op) = &operator
        && !cfg.approvers.contains_key(op)
    {
        eprintln!(
            "error: --operator {op} is not declared in [approvers] of {}",
            path.display()
        );
        return Exit::Usage;
    }
    if let Err(m) = config::check_agent_name(&name) {
        eprintln!("error: {m}");
        return Exit::Usage;
    }
    if cfg.agents.contains_key(&name) {
        eprintln!(
            "error: agent {name} already exists in {}; use `mandate agent rotate {name}` for a new token",
            path.display()
        );
        return Exit::Usage;
    }
    for p in profiles.iter().chain(default.iter()) {
        if let Err(m) = ProfileName::parse(p) {
            eprintln!("error: {m}");
            return Exit::Usage;
        }
    }
    for p in &profiles {
        if !cfg.profiles_dir.join(format!("{p}.toml")).is_file() {
            eprintln!("error: no profile {p:?} in {}", cfg.profiles_dir.display());
            return Exit::NotFound;
        }
    }
    let default = default.unwrap_or_else(|| profiles[0].clone());
    if !profiles.contains(&default) {
        eprintln!("error: --default {default} is not one of --profiles");
        return Exit::Usage;
    }
    let Some(listen) = cfg.http else {
        eprintln!(
            "error: {} has no [http] listen address; add [http] listen = \"127.0.0.1:9911\" first",
            path.display()
        );
        return Exit::Usage;
    };
    let token_file =
        std::path::absolute(token_file.unwrap_or_else(|| cfg.state_dir.join("tokens").join(&name)))
            .unwrap_or_default();
    let section = format!(
        "\n[agents.{name}]\nprofiles = [{}]\ndefault_profile = {default:?}\ntoken_file = {:?}\n{}",
        profiles
            .iter()
            .map(|p| format!("{p:?}"))
            .collect::<Vec<_>>()
            .join(", "),
        token_file.display().to_string(),
        operator
            .map(|o| format!("operator = {o:?}\n"))
            .unwrap_or_default()
    );
    // The same full check the daemon runs on reload, before the token or the config is
    // written: an agent the daemon would refuse is never half-added.
    let mut text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: cannot read {}: {e}", path.display());
            return Exit::NotFound;
        }
    };
    text.extend_from_slice(section.as_bytes());
    if let Err(e) = config::check_text(path, &text) {
        let exit = config_error(&e);
        eprintln!("nothing was written");
        return exit;
    }
    if let Err(e) = write_token(&token_file, false) {
        eprintln!("error: {e}");
        return Exit::Usage;
    }
    let appended = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(section.as_bytes()));
    if let Err(e) = appended {
        eprintln!("error: cannot update {}: {e}", path.display());
        return Exit::Internal;
    }
    print_bytes(
        format!(
            "added agent {name} to {} (the daemon reloads it) and wrote its token to {}\n\n\
             Environment for the agent's container (mount the token file read-only):\n\
             AWS_CONTAINER_CREDENTIALS_FULL_URI=http://{listen}/\n\
             AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE={}\n",
            path.display(),
            token_file.display(),
            token_file.display()
        )
        .as_bytes(),
    )
}
