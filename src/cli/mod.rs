//! Command-line interface of the full program (`mandate-broker`; `mandate` runs it for every
//! command but `credential-process`). This is the only place that prints or picks exit codes
//! ([`mandate::exit::Exit`], the table in README.md).

mod agent;
mod approve;
mod audit;
mod completions;
mod config_cmd;
mod creds;
mod init;
mod mcp;
mod profiles;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
pub use mandate::exit::Exit;

const ABOUT: &str = "A least-privilege credential broker for AI agents on AWS";
const LONG_ABOUT: &str = "\
mandate mints short-lived, scoped-down STS sessions for AI agents from declared capability \
profiles, so an agent never inherits its operator's full role. Destructive actions are denied \
unless a human approves, and every issuance is recorded in a tamper-evident audit log.

Exit codes: 0 success, 1 internal error, 2 usage error, 3 invalid profile or config, \
4 profile, config or path not found, 5 refused by the broker, 6 broker or AWS unavailable.";

#[derive(Debug, Parser)]
#[command(name = "mandate", version, about = ABOUT, long_about = LONG_ABOUT, propagate_version = true)]
pub struct Cli {
    /// The broker config [default: $MANDATE_CONFIG, ~/.config/mandate/broker.toml, /etc/mandate/broker.toml]
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the broker daemon
    #[command(long_about = "Run the broker daemon.\n\n\
        Validates the config and every profile, checks the base AWS credentials and the audit \
        log, then listens on the Unix socket. Reloads on SIGHUP or when a file changes; stops on \
        SIGINT or SIGTERM. Logs go to stderr (MANDATE_LOG sets the level, e.g. debug).")]
    Serve,
    /// Print credentials in the AWS credential_process format (for ~/.aws/config)
    #[command(
        long_about = "Print credentials in the AWS credential_process format.\n\n\
        Use it in ~/.aws/config:  credential_process = mandate credential-process PROFILE\n\
        On any failure it prints one line on stderr, nothing on stdout, and exits non-zero."
    )]
    CredentialProcess {
        /// Profile name
        profile: String,
        /// Act as this agent (when your uid belongs to several)
        #[arg(long)]
        agent: Option<String>,
    },
    /// Request credentials, with a reason and an optional shorter duration; prints JSON
    Request {
        /// Profile name
        profile: String,
        /// Act as this agent (when your uid belongs to several)
        #[arg(long)]
        agent: Option<String>,
        /// Why the session is needed (recorded in the audit log)
        #[arg(long)]
        reason: Option<String>,
        /// A duration shorter than the profile's, like 15m
        #[arg(long)]
        duration: Option<String>,
        /// If the profile needs approval, wait until a human decides (or the request expires)
        #[arg(long)]
        wait: bool,
        /// How long --wait waits at most
        #[arg(long, default_value = "15m", requires = "wait")]
        timeout: String,
        /// Redeem (or wait for) this approval request id
        #[arg(long, value_name = "ID")]
        approval: Option<String>,
    },
    /// Print shell export lines: eval "$(mandate env PROFILE)"
    Env {
        /// Profile name
        profile: String,
        /// Act as this agent
        #[arg(long)]
        agent: Option<String>,
    },
    /// Run a command with the profile's credentials and nothing else from AWS
    #[command(
        long_about = "Run a command with the profile's credentials and nothing else from AWS.\n\n\
        The child's environment is built from an allow-list (PATH, HOME, locale, terminal, \
        AWS_REGION, AWS_ENDPOINT_URL*) plus the credentials; AWS_CONFIG_FILE and \
        AWS_SHARED_CREDENTIALS_FILE point to /dev/null and instance metadata is disabled, so \
        the child cannot fall back to broader credentials.\n\n\
        Example: mandate exec s3-data -- aws s3 ls s3://team-data/projects/agent/"
    )]
    Exec {
        /// Profile name
        profile: String,
        /// Act as this agent
        #[arg(long)]
        agent: Option<String>,
        /// The command and its arguments
        #[arg(last = true, required = true)]
        command: Vec<std::ffi::OsString>,
    },
    /// Show live sessions per agent
    Status {
        /// Machine-readable output
        #[arg(long)]
        json: bool,
    },
    /// Write a starter broker.toml, prepare the state directory and the audit signing key, and
    /// print the ~/.aws/config snippet for each profile (an existing config is kept)
    Init {
        /// Directory of the profiles to offer
        #[arg(long, value_name = "DIR", default_value = "profiles")]
        profiles: PathBuf,
        /// The role ARN the profiles' roles point at (edit broker.toml to split them)
        #[arg(
            long,
            value_name = "ARN",
            default_value = "arn:aws:iam::123456789012:role/agent-role"
        )]
        role_arn: String,
        /// The agent to declare for your uid
        #[arg(long, default_value = "agent")]
        agent: String,
        /// AWS region
        #[arg(long, default_value = "us-east-1")]
        region: String,
        /// Overwrite an existing config
        #[arg(long)]
        force: bool,
    },
    /// List approval requests
    #[command(subcommand)]
    Approvals(approve::ApprovalsCmd),
    /// Approve a pending request (approvers only)
    #[command(long_about = "Approve a pending request (approvers only).\n\n\
        An approval binds the exact request (agent, profile and policy hash, role, duration, \
        reason), is used for one session, and expires if not used in time. Under the two-person \
        rule the agent's operator never counts, and each approver counts once.")]
    Approve {
        /// The request id (from the agent's message or `mandate approvals list`)
        id: String,
        /// A note for the audit log
        #[arg(long)]
        note: Option<String>,
        /// Act as this approver (when your uid belongs to several)
        #[arg(long = "as", value_name = "NAME")]
        as_approver: Option<String>,
        /// Do not ask for confirmation on a terminal (for scripts)
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// Reject a pending request for good (approvers only)
    Reject {
        /// The request id
        id: String,
        /// Why (recorded in the audit log and shown to the agent)
        #[arg(long)]
        note: Option<String>,
        /// Act as this approver
        #[arg(long = "as", value_name = "NAME")]
        as_approver: Option<String>,
    },
    /// Stop issuing to an agent, a profile, a session or everyone (approvers only)
    #[command(
        long_about = "Stop issuing to an agent, a profile, a session or everyone (approvers only).\n\n\
        Takes effect at once for new credentials: persisted, cached sessions dropped, audited \
        before the command returns. With --aws, also writes an inline policy \
        (mandate-revocations) on the affected roles that denies every action to sessions of the \
        scope issued before now (aws:SourceIdentity / session tag and aws:TokenIssueTime); AWS \
        takes a few minutes to apply it. `mandate revoke --gc` removes denials no live session \
        can match any more (12 hours on)."
    )]
    Revoke {
        #[command(flatten)]
        scope: Option<approve::ScopeArgs>,
        /// Remove AWS denials that can no longer match a live session
        #[arg(long, conflicts_with = "aws")]
        gc: bool,
        /// Also deny already-issued sessions at AWS (IAM PutRolePolicy)
        #[arg(long)]
        aws: bool,
        /// Machine-readable output (includes the exact policy documents)
        #[arg(long)]
        json: bool,
    },
    /// Lift a revocation for new credentials (approvers only)
    Unrevoke {
        #[command(flatten)]
        scope: approve::ScopeArgs,
    },
    /// Reset a tripped circuit breaker (approvers only)
    #[command(subcommand)]
    Breaker(approve::BreakerCmd),
    /// Stop every issuance and delivery until `mandate resume` (approvers only)
    Pause {
        /// Why (recorded in the audit log and shown to agents)
        #[arg(long)]
        reason: Option<String>,
    },
    /// Lift `mandate pause` (approvers only)
    Resume,
    /// Declare agents of the container-credentials endpoint and rotate their tokens
    #[command(subcommand)]
    Agent(agent::AgentCmd),
    /// Verify, tail and show the audit log
    #[command(subcommand)]
    Audit(audit::AuditCmd),
    /// Check, show and explain capability profiles
    #[command(subcommand)]
    Profiles(profiles::ProfilesCmd),
    /// Check the broker config and its profiles as the daemon would
    #[command(subcommand)]
    Config(config_cmd::ConfigCmd),
    /// Serve the Model Context Protocol on stdio, for an agent host (Claude Code, Cursor, ...)
    #[command(
        long_about = "Serve the Model Context Protocol on stdio, for an agent host.\n\n\
        The host starts it (see README: MCP); it asks the daemon as this uid, like the CLI. \
        Tools: list_capabilities, request_capability, request_status, which_profile. \
        No tool result ever contains a secret."
    )]
    Mcp {
        /// Act as this agent (when your uid belongs to several)
        #[arg(long)]
        agent: Option<String>,
    },
    /// Print a shell completion script to stdout
    #[command(long_about = "Print a shell completion script to stdout.\n\n\
        Example (bash): mandate completions bash > ~/.local/share/bash-completion/completions/mandate")]
    Completions {
        /// The shell to generate completions for
        shell: clap_complete::Shell,
    },
    /// Print the mandate(1) man page (roff), or write every page with --dir
    #[command(
        long_about = "Print the mandate(1) man page (roff) to stdout, or with --dir write \
        it and one page per subcommand (mandate-serve(1), mandate-approve(1), ...), which it refers \
        to.\n\n\
        Example: mandate man --dir /usr/local/share/man/man1 && man mandate-approve"
    )]
    Man {
        /// Write mandate.1 and every mandate-COMMAND.1 into this directory
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// The profile names of the config's profiles_dir, one per line (for shell completion)
    #[command(name = "__profiles", hide = true)]
    ProfileNames,
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
    let config = cli.config;
    // --config is global for clap, but means nothing to these two: say so instead of ignoring it.
    if config.is_some()
        && matches!(
            cli.command,
            Command::Man { .. } | Command::Completions { .. }
        )
    {
        eprintln!(
            "error: --config has no effect on `mandate man` or `mandate completions`; leave it out"
        );
        return Exit::Usage.into();
    }
    let code = match cli.command {
        Command::Serve => serve::run(config),
        Command::Mcp { agent } => mcp::run(config, agent),
        Command::CredentialProcess { profile, agent } => {
            creds::credential_process(config, profile, agent)
        }
        Command::Request {
            profile,
            agent,
            reason,
            duration,
            wait,
            timeout,
            approval,
        } => creds::request(
            config,
            creds::RequestArgs {
                profile,
                agent,
                reason,
                duration,
                approval,
                wait,
                timeout,
            },
        ),
        Command::Env { profile, agent } => creds::env(config, profile, agent),
        Command::Exec {
            profile,
            agent,
            command,
        } => creds::exec(config, profile, agent, command),
        Command::Status { json } => creds::status(config, json),
        Command::Init {
            profiles,
            role_arn,
            agent,
            region,
            force,
        } => init::run(init::InitArgs {
            config,
            profiles,
            role_arn,
            agent,
            region,
            force,
        }),
        Command::Agent(cmd) => agent::run(config, cmd),
        Command::Approvals(approve::ApprovalsCmd::List { all, json }) => {
            approve::list(config, all, json)
        }
        Command::Approve {
            id,
            note,
            as_approver,
            yes,
        } => approve::vote(config, id, true, note, as_approver, yes),
        Command::Reject {
            id,
            note,
            as_approver,
        } => approve::vote(config, id, false, note, as_approver, true),
        Command::Revoke {
            scope,
            gc,
            aws,
            json,
        } => approve::revoke(config, scope, gc, aws, json),
        Command::Unrevoke { scope } => approve::unrevoke(config, scope),
        Command::Breaker(cmd) => approve::breaker(config, cmd),
        Command::Pause { reason } => approve::pause(config, true, reason),
        Command::Resume => approve::pause(config, false, None),
        Command::Audit(cmd) => audit::run(config, cmd),
        Command::Profiles(cmd) => profiles::run(config, cmd),
        Command::Config(cmd) => config_cmd::run(config, cmd),
        Command::Completions { shell } => completions::run(shell),
        Command::ProfileNames => completions::profile_names(config),
        Command::Man { dir: Some(dir) } => match clap_mangen::generate_to(Cli::command(), &dir) {
            Ok(()) => print_bytes(format!("wrote the man pages to {}\n", dir.display()).as_bytes()),
            Err(e) => {
                eprintln!(
                    "error: cannot write the man pages to {}: {e}",
                    dir.display()
                );
                Exit::NotFound
            }
        },
        Command::Man { dir: None } => {
            let mut out = Vec::new();
            match clap_mangen::Man::new(Cli::command().disable_help_subcommand(true))
                .render(&mut out)
            {
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

/// Reports a config problem: every diagnostic for invalid files.
pub(crate) fn config_error(e: &mandate::config::ConfigError) -> Exit {
    match e {
        mandate::config::ConfigError::Invalid(diags) => {
            for d in diags {
                eprintln!("{d}");
            }
            eprintln!("error: {e}");
            Exit::Invalid
        }
        other => {
            eprintln!("error: {other}");
            Exit::NotFound
        }
    }
}

/// Prints JSON for a machine (or a human piping it to a terminal): with the one terminal rule
/// applied inside strings, so it stays the same JSON and never carries a raw control, bidi or
/// zero-width character.
pub(crate) fn print_json(v: &serde_json::Value, pretty: bool) -> Exit {
    let text = if pretty {
        serde_json::to_string_pretty(v).unwrap_or_default()
    } else {
        v.to_string()
    };
    print_bytes(format!("{}\n", mandate::diag::terminal_json(&text)).as_bytes())
}

/// Writes to stdout; a closed pipe (`mandate ... | head`) is not an error worth a panic.
pub(crate) fn print_bytes(bytes: &[u8]) -> Exit {
    mandate::exit::print(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
