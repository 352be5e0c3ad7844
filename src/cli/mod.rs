//! Command-line interface. This is the only place that prints or picks exit codes.
//!
//! Exit codes (also in README.md):
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | internal error (a bug: please report it) |
//! | 2 | usage error (bad flags or arguments) |
//! | 3 | invalid input: a profile (or config) failed validation |
//! | 4 | not found or unreadable: a named profile or path does not exist |

mod profiles;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

/// Exit codes; see the module docs and README.md.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Ok = 0,
    Internal = 1,
    Usage = 2,
    Invalid = 3,
    NotFound = 4,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e as u8)
    }
}

const ABOUT: &str = "A least-privilege credential broker for AI agents on AWS";
const LONG_ABOUT: &str = "\
mandate mints short-lived, scoped-down STS sessions for AI agents from declared capability \
profiles, so an agent never inherits its operator's full role. Destructive actions are denied \
unless a human approves, and every issuance is recorded in a tamper-evident audit log.

Exit codes: 0 success, 1 internal error, 2 usage error, 3 invalid profile or config, \
4 profile or path not found.";

#[derive(Debug, Parser)]
#[command(name = "mandate", version, about = ABOUT, long_about = LONG_ABOUT, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check, show and explain capability profiles
    #[command(subcommand)]
    Profiles(profiles::ProfilesCmd),
    /// Print a shell completion script to stdout
    #[command(long_about = "Print a shell completion script to stdout.\n\n\
        Example (bash): mandate completions bash > ~/.local/share/bash-completion/completions/mandate")]
    Completions {
        /// The shell to generate completions for
        shell: clap_complete::Shell,
    },
    /// Print the mandate(1) man page (roff) to stdout
    #[command(long_about = "Print the mandate(1) man page (roff) to stdout.\n\n\
        Example: mandate man > mandate.1 && man ./mandate.1")]
    Man,
}

/// Where profiles live unless `--profiles` says otherwise.
pub(crate) fn default_profiles_dir() -> PathBuf {
    PathBuf::from("profiles")
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                Exit::Usage.into()
            } else {
                Exit::Ok.into()
            };
        }
    };
    let code = match cli.command {
        Command::Profiles(cmd) => profiles::run(cmd),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "mandate",
                &mut std::io::stdout(),
            );
            Exit::Ok
        }
        Command::Man => {
            let mut out = Vec::new();
            match clap_mangen::Man::new(Cli::command()).render(&mut out) {
                Ok(()) => print_bytes(&out),
                Err(e) => {
                    eprintln!("error: cannot render the man page: {e}");
                    Exit::Internal
                }
            }
        }
    };
    code.into()
}

/// Writes to stdout; a closed pipe (`mandate ... | head`) is not an error worth a panic.
pub(crate) fn print_bytes(bytes: &[u8]) -> Exit {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => Exit::Ok,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Exit::Ok,
        Err(e) => {
            eprintln!("error: cannot write to stdout: {e}");
            Exit::Internal
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
