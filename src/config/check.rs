//! The full check of a parsed config against the files it names: token files and helper
//! programs must be trusted, every profile in `profiles_dir` must load and compile, and every
//! agent's profiles must exist and be approvable.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::diag::{Diagnostic, quoted};
use crate::policy::{self, CompiledProfile};
use crate::profile::{self, Approval, ProfileError};

use super::{Config, ConfigError, Loaded, Role};

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

pub(super) fn cross_check(
    mut config: Config,
    path: &Path,
    text: &[u8],
    mut unsafe_files: Vec<Diagnostic>,
) -> Result<Loaded, ConfigError> {
    let label = path.display().to_string();
    untrusted_token_files(&config, &label, &mut unsafe_files);
    untrusted_store_files(&config, &label, &mut unsafe_files);
    resolve_helpers(&mut config, &label, &mut unsafe_files);
    let files = match profile::discover(std::slice::from_ref(&config.profiles_dir)) {
        Ok(f) => f,
        Err(e) => {
            return Err(ConfigError::Invalid(vec![Diagnostic::whole_file(
                &label,
                format!("broker.profiles_dir: {e}"),
            )]));
        }
    };
    let mut diags = unsafe_files;
    let profiles = load_profiles(files, &config.roles, &label, &mut diags);
    missing_profiles(&config, &profiles, text, &label, &mut diags);
    diags.extend(approval_problems(&config, &profiles, &label));
    if diags.is_empty() {
        Ok(Loaded { config, profiles })
    } else {
        Err(ConfigError::Invalid(diags))
    }
}

/// Token files that exist must be as trusted as the config.
fn untrusted_token_files(config: &Config, label: &str, unsafe_files: &mut Vec<Diagnostic>) {
    for agent in config.agents.values() {
        if let Some(t) = &agent.token_file
            && t.exists()
            && let Err(e) = crate::os::trusted_file(t, "token file")
        {
            unsafe_files.push(Diagnostic::whole_file(
                label,
                format!("agents.{}: {e}", agent.name),
            ));
        }
    }
}

/// `[store]`'s CA and password files must be there and as trusted as the config; the
/// password file readable by the daemon's user only.
fn untrusted_store_files(config: &Config, label: &str, unsafe_files: &mut Vec<Diagnostic>) {
    use std::os::unix::fs::PermissionsExt;
    let Some(store) = &config.store else {
        return;
    };
    let mut check = |key: &str, what: &str, file: &Path, private: bool| {
        let r = crate::os::trusted_file(file, what).and_then(|()| {
            let mode = std::fs::metadata(file).map_or(0, |m| m.permissions().mode());
            if private && mode & 0o077 != 0 {
                Err(format!(
                    "{what} {} is readable by group or others; run chmod 600 on it",
                    file.display()
                ))
            } else {
                Ok(())
            }
        });
        if let Err(e) = r {
            unsafe_files.push(Diagnostic::whole_file(label, format!("store.{key}: {e}")));
        }
    };
    if let Some(ca) = &store.ca_file {
        check("ca_file", "store CA file", ca, false);
    }
    if let Some(super::PasswordSource::File(f)) = &store.password {
        check("password_file", "store password file", f, true);
    }
}

/// Helpers run as the daemon's uid: the program and every directory above it must be as
/// trusted as the config. The checked absolute path is the one that runs.
fn resolve_helpers(config: &mut Config, label: &str, unsafe_files: &mut Vec<Diagnostic>) {
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
                Err(e) => unsafe_files.push(Diagnostic::whole_file(label, e)),
            }
        }
    }
}

/// Loads and compiles every profile file; each must be trusted and use a declared role.
fn load_profiles(
    files: Vec<PathBuf>,
    roles: &BTreeMap<String, Role>,
    label: &str,
    diags: &mut Vec<Diagnostic>,
) -> BTreeMap<String, CompiledProfile> {
    let mut profiles = BTreeMap::new();
    for file in files {
        if let Err(e) = crate::os::trusted_file(&file, "profile") {
            diags.push(Diagnostic::whole_file(&file.display().to_string(), e));
            continue;
        }
        match profile::load(&file) {
            Ok(p) => match policy::compile(&p) {
                Ok(c) => {
                    if !roles.contains_key(c.profile.role.as_str()) {
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
    profiles
}

/// Every profile an agent names must exist, unless its file already has a diagnostic.
fn missing_profiles(
    config: &Config,
    profiles: &BTreeMap<String, CompiledProfile>,
    text: &[u8],
    label: &str,
    diags: &mut Vec<Diagnostic>,
) {
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
                    Some(at) => Diagnostic::at(label, &src, at, message),
                    None => Diagnostic::whole_file(label, message),
                });
            }
        }
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
