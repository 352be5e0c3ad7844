//! `mandate profiles check|show|explain`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::Subcommand;
use mandate::catalog::AccessLevel;
use mandate::diag::Diagnostic;
use mandate::policy::{self, CompiledProfile, MAX_POLICY_CHARS, explain};
use mandate::profile::{self, ProfileError};

use super::{Exit, config_error, default_profiles_dir, print_bytes};

#[derive(Debug, Subcommand)]
pub enum ProfilesCmd {
    /// Validate profiles and compile their session policies; report every problem at once
    #[command(
        long_about = "Validate profiles and compile their session policies.\n\n\
        Every problem in every file is reported at once, as FILE:LINE:COL: MESSAGE, and the exit \
        code is 3 if there is any. Directories are searched for *.toml files."
    )]
    Check {
        /// Profile files or directories [default: the config's profiles_dir when a config is
        /// found, else profiles]
        paths: Vec<PathBuf>,
        /// Print only problems
        #[arg(short, long)]
        quiet: bool,
    },
    /// Print the compiled session policy of a profile, its sha256 and its size against the limit
    Show(NamedProfile),
    /// List the concrete actions a session can use, by access level, and what is denied
    Explain(NamedProfile),
}

#[derive(Debug, clap::Args)]
pub struct NamedProfile {
    /// Profile name (the file stem)
    name: String,
    /// Directory holding the profiles [default: the config's profiles_dir when a config is
    /// found, else profiles]
    #[arg(long, value_name = "DIR", env = "MANDATE_PROFILES_DIR")]
    profiles: Option<PathBuf>,
    /// Machine-readable output
    #[arg(long)]
    json: bool,
}

pub fn run(config: Option<PathBuf>, cmd: ProfilesCmd) -> Exit {
    match cmd {
        ProfilesCmd::Check { paths, quiet } => {
            let paths = if paths.is_empty() {
                match profiles_dir(config, None) {
                    Ok(d) => vec![d],
                    Err(exit) => return exit,
                }
            } else {
                paths
            };
            check(paths, quiet)
        }
        ProfilesCmd::Show(p) => with_compiled(config, &p.name, p.profiles, |c| {
            if p.json { show_json(c) } else { show_text(c) }
        }),
        ProfilesCmd::Explain(p) => with_compiled(config, &p.name, p.profiles, |c| {
            let e = explain::explain(c);
            if p.json {
                json_text(&e.to_json(c))
            } else {
                explain_text(c, &e)
            }
        }),
    }
}

/// Where the profiles are: `--profiles`, else the `profiles_dir` of the config when one is given
/// (`--config`, `MANDATE_CONFIG`) or found in the usual places, else `profiles`.
fn profiles_dir(config: Option<PathBuf>, explicit: Option<PathBuf>) -> Result<PathBuf, Exit> {
    if let Some(d) = explicit {
        return Ok(d);
    }
    match mandate::config::locate(config.as_deref()) {
        Ok(path) => mandate::config::read(&path)
            .map(|c| c.profiles_dir)
            .map_err(|e| config_error(&e)),
        Err(mandate::config::ConfigError::NotFound(_)) => Ok(default_profiles_dir()),
        Err(e) => Err(config_error(&e)),
    }
}

fn load_and_compile(path: &Path) -> Result<CompiledProfile, ProfileError> {
    let p = profile::load(path)?;
    policy::compile(&p)
        .map_err(|e| ProfileError::Invalid(vec![Diagnostic::whole_file(&p.source, e.to_string())]))
}

fn report(e: &ProfileError) -> Exit {
    match e {
        ProfileError::Invalid(diags) => {
            for d in diags {
                eprintln!("{d}");
            }
            Exit::Invalid
        }
        ProfileError::BadName(_) => {
            eprintln!("error: {e}");
            Exit::Usage
        }
        other => {
            eprintln!("error: {other}");
            Exit::NotFound
        }
    }
}

fn check(paths: Vec<PathBuf>, quiet: bool) -> Exit {
    let files = match profile::discover(&paths) {
        Ok(f) => f,
        Err(e) => return report(&e),
    };
    let mut bad_files = 0;
    let mut problems = 0;
    let mut out = String::new();
    for file in &files {
        match load_and_compile(file) {
            Ok(c) => {
                for w in &c.profile.warnings {
                    eprintln!("{w}");
                }
                if !quiet {
                    let _ = writeln!(
                        out,
                        "ok    {}  ({} / {MAX_POLICY_CHARS} chars, approval {})",
                        file.display(),
                        c.size.total,
                        c.profile.approval
                    );
                }
            }
            Err(ProfileError::Invalid(diags)) => {
                bad_files += 1;
                problems += diags.len();
                for d in diags {
                    eprintln!("{d}");
                }
            }
            Err(e) => {
                bad_files += 1;
                problems += 1;
                eprintln!("error: {e}");
            }
        }
    }
    let printed = print_bytes(out.as_bytes());
    if bad_files > 0 {
        eprintln!(
            "error: {problems} problem(s) in {bad_files} of {} profile(s)",
            files.len()
        );
        return Exit::Invalid;
    }
    if !quiet {
        let _ = print_bytes(format!("{} profile(s) ok\n", files.len()).as_bytes());
    }
    printed
}

fn with_compiled(
    config: Option<PathBuf>,
    name: &str,
    dir: Option<PathBuf>,
    f: impl FnOnce(&CompiledProfile) -> Exit,
) -> Exit {
    let dir = match profiles_dir(config, dir) {
        Ok(d) => d,
        Err(exit) => return exit,
    };
    match profile::locate(&dir, name).and_then(|p| load_and_compile(&p)) {
        Ok(c) => f(&c),
        Err(e) => report(&e),
    }
}

fn json_text(v: &serde_json::Value) -> Exit {
    super::print_json(v, true)
}

fn show_json(c: &CompiledProfile) -> Exit {
    json_text(&c.to_json())
}

fn show_text(c: &CompiledProfile) -> Exit {
    let p = &c.profile;
    let mut s = String::new();
    let pct = c.size.total * 100 / MAX_POLICY_CHARS;
    let _ = writeln!(s, "profile      {}  ({})", p.name, p.source);
    let _ = writeln!(s, "description  {}", p.description);
    let _ = writeln!(s, "role         {}", p.role.as_str());
    let _ = writeln!(
        s,
        "duration     {} ({} s)",
        p.duration,
        p.duration.seconds()
    );
    let _ = writeln!(s, "approval     {}", p.approval);
    let _ = writeln!(
        s,
        "policy size  {} / {MAX_POLICY_CHARS} characters ({pct}%)",
        c.size.total
    );
    for (label, n) in &c.size.parts {
        let _ = writeln!(s, "               {n:>5}  {label}");
    }
    let _ = writeln!(s, "sha256       {}", c.policy.sha256());
    let arns = c.policy_arns();
    let _ = writeln!(
        s,
        "policy arns  {}",
        if arns.is_empty() {
            "(none)".to_owned()
        } else {
            arns.join(", ")
        }
    );
    let tags: Vec<String> = p.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let _ = writeln!(
        s,
        "tags         {}",
        if tags.is_empty() {
            "(none)".to_owned()
        } else {
            tags.join(", ")
        }
    );
    if !p.destructive.is_empty() {
        let d: Vec<String> = p.destructive.iter().map(|d| d.to_string()).collect();
        let _ = writeln!(
            s,
            "destructive  {} (each session needs approval {})",
            d.join(", "),
            p.approval
        );
    }
    let _ = writeln!(
        s,
        "\nsession policy (exact bytes sent to STS; the sha256 is over this line):"
    );
    let _ = writeln!(s, "{}", c.policy.as_json());
    print_bytes(s.as_bytes())
}

const LIST_LIMIT: usize = 40;

/// Per class: every classified action the profile's allows reach, and what becomes of it.
fn explain_classes(s: &mut String, e: &explain::Explanation) {
    if e.classes.is_empty() {
        let _ = writeln!(
            s,
            "\nClassified actions within reach: none (nothing the allows grant can destroy, \
             disrupt, blind, escalate or expose)"
        );
        return;
    }
    let _ = writeln!(s, "\nClassified actions within reach, by class:");
    for class in mandate::catalog::RiskClass::ALL {
        let Some(list) = e.classes.get(&class) else {
            continue;
        };
        let n = |fate| list.iter().filter(|(_, f)| *f == fate).count();
        let exact = n(explain::Fate::NamedExactly);
        let _ = writeln!(
            s,
            "  {class} ({}): {} denied, {} need approval{}",
            class.describe(),
            n(explain::Fate::Denied),
            n(explain::Fate::NeedsApproval),
            if exact > 0 {
                format!(", {exact} usable because named exactly")
            } else {
                String::new()
            }
        );
        for (a, fate) in list.iter().take(LIST_LIMIT) {
            let why = a.risk().map(|r| r.why()).unwrap_or_default();
            let _ = writeln!(s, "    {:<48} {:<15} {why}", a.full_name(), fate.as_str());
        }
        if list.len() > LIST_LIMIT {
            let _ = writeln!(
                s,
                "    ... {} more (--json lists all)",
                list.len() - LIST_LIMIT
            );
        }
    }
}

fn explain_text(c: &CompiledProfile, e: &explain::Explanation) -> Exit {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{}: {} — {} action(s) usable (role {}, approval {})",
        c.profile.name,
        c.profile.description,
        e.usable_count(),
        c.profile.role.as_str(),
        c.profile.approval
    );
    for level in AccessLevel::ALL {
        let Some(list) = e.usable.get(&level) else {
            continue;
        };
        let _ = writeln!(s, "\n{level} ({})", list.len());
        if list.len() > LIST_LIMIT {
            let mut per_service: Vec<(&str, usize)> = Vec::new();
            for u in list {
                match per_service.last_mut() {
                    Some((svc, n)) if *svc == u.action.service => *n += 1,
                    _ => per_service.push((u.action.service, 1)),
                }
            }
            let shown: Vec<String> = per_service
                .iter()
                .map(|(s, n)| format!("{s} ({n})"))
                .collect();
            let _ = writeln!(s, "  {}", shown.join(", "));
            let _ = writeln!(s, "  (--json lists every action)");
            continue;
        }
        for u in list {
            let mut notes = Vec::new();
            if u.conditional {
                notes.push("conditional");
            }
            if u.partly_denied {
                notes.push("partly denied");
            }
            let class_note;
            if let Some(r) = u.action.risk() {
                class_note = format!("{}: needs approval", r.class);
                notes.push(class_note.as_str());
            }
            let resources: Vec<&str> = u.resources.iter().map(String::as_str).collect();
            let unfit_note;
            if u.unfit_resources.len() == u.resources.len() {
                notes.push("fits none of these resources: grants nothing");
            } else if !u.unfit_resources.is_empty() {
                let unfit: Vec<&str> = u.unfit_resources.iter().map(String::as_str).collect();
                unfit_note = format!("cannot act on {}", unfit.join(", "));
                notes.push(unfit_note.as_str());
            }
            let notes = if notes.is_empty() {
                String::new()
            } else {
                format!("  [{}]", notes.join(", "))
            };
            let _ = writeln!(
                s,
                "  {:<48} on {}{notes}",
                u.action.full_name(),
                resources.join(", ")
            );
        }
    }
    let summary = |s: &mut String, title: &str, list: &[&mandate::catalog::Action]| {
        let _ = writeln!(s, "\n{title} ({})", list.len());
        if list.len() > LIST_LIMIT {
            let names: Vec<String> = list
                .iter()
                .take(LIST_LIMIT)
                .map(|a| a.full_name())
                .collect();
            let _ = writeln!(s, "  {} ... (--json lists all)", names.join(", "));
        } else if !list.is_empty() {
            let names: Vec<String> = list.iter().map(|a| a.full_name()).collect();
            let _ = writeln!(s, "  {}", names.join(", "));
        }
    };
    explain_classes(&mut s, e);
    summary(
        &mut s,
        "Denied automatically as destructive",
        &e.auto_denied,
    );
    summary(
        &mut s,
        "Denied by the profile's [[deny]] blocks",
        &e.declared_denied,
    );
    summary(
        &mut s,
        "Destructive, usable only with approval",
        &e.needs_approval,
    );
    if !e.managed_policies.is_empty() {
        let _ = writeln!(
            s,
            "\nManaged policies ({}): NOT ANALYSED. What they grant is not listed above and the \
             automatic deny does not cover it; this is why every session needs a human.\n  {}",
            e.managed_policies.len(),
            e.managed_policies.join(", ")
        );
    }
    let _ = writeln!(
        s,
        "\nEvery session of this profile needs approval: {}",
        match c.profile.approval {
            profile::Approval::None => "no (issued without a human)".to_owned(),
            profile::Approval::Operator => "yes, from a human approver (ask-first)".to_owned(),
            profile::Approval::Peers(n) =>
                format!("yes, from {n} distinct approvers, never the agent's operator"),
        }
    );
    print_bytes(s.as_bytes())
}
