//! What the small `mandate` binary answers itself, and where the full program is.
//!
//! `credential-process` runs before every AWS CLI command, so it should cost about a process
//! start. The full program links the AWS SDK, SQLite, TLS and an argument parser, and loading
//! it costs more than the whole request (docs/performance.md). So `mandate` is a small binary
//! that recognises only the plain forms a `credential_process` line uses, and hands everything
//! else (every other command, help, a typo, an unusual spelling) unchanged to the full program,
//! `mandate-broker`, installed beside it, which answers exactly as it always did.

use std::ffi::OsString;
use std::path::PathBuf;

/// The full program's file name; it lives in the same directory as `mandate`.
pub const FULL_PROGRAM: &str = "mandate-broker";

/// A `credential-process` call in one of the plain forms:
/// `[--config FILE] credential-process [--agent NAME] PROFILE`, each option at most once, in
/// any position after the program name, spelled `--opt VALUE` or `--opt=VALUE`.
#[derive(Debug, PartialEq, Eq)]
pub struct CredentialProcess {
    pub config: Option<PathBuf>,
    pub profile: String,
    pub agent: Option<String>,
}

impl CredentialProcess {
    /// `args` without the program name. `None` means "not a plain `credential-process` call":
    /// run the full program, whose parser then decides (and reports any error) as before.
    pub fn recognise(args: &[OsString]) -> Option<CredentialProcess> {
        let mut config: Option<String> = None;
        let mut agent: Option<String> = None;
        let mut profile: Option<String> = None;
        let mut subcommand = false;
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let a = a.to_str()?;
            if let Some(v) = a.strip_prefix("--config=") {
                once(&mut config, v)?;
            } else if a == "--config" {
                once(&mut config, it.next()?.to_str()?)?;
            } else if !subcommand {
                subcommand = a == "credential-process";
                if !subcommand {
                    return None;
                }
            } else if let Some(v) = a.strip_prefix("--agent=") {
                once(&mut agent, v)?;
            } else if a == "--agent" {
                once(&mut agent, it.next()?.to_str()?)?;
            } else if a.starts_with('-') {
                return None;
            } else {
                once(&mut profile, a)?;
            }
        }
        Some(CredentialProcess {
            config: config.map(PathBuf::from),
            profile: profile?,
            agent,
        })
    }
}

/// Sets a value that may be given once; refuses (`None`) a second one, an empty one, or one
/// that looks like a flag (the full parser's business).
fn once(slot: &mut Option<String>, value: &str) -> Option<()> {
    if slot.is_some() || value.is_empty() || value.starts_with('-') {
        return None;
    }
    *slot = Some(value.to_owned());
    Some(())
}

/// Where the full program is: beside the running executable (symlinks resolved).
pub fn full_program() -> std::io::Result<PathBuf> {
    Ok(std::env::current_exe()?.with_file_name(FULL_PROGRAM))
}

/// The program a `credential_process` line should name: `mandate` beside the running
/// executable when it is there (the full program writes such lines in `mandate init`), else
/// the running executable itself.
pub fn front_program() -> std::io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let front = exe.with_file_name("mandate");
    Ok(if front.is_file() { front } else { exe })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Option<CredentialProcess> {
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        CredentialProcess::recognise(&args)
    }

    fn cp(config: Option<&str>, profile: &str, agent: Option<&str>) -> Option<CredentialProcess> {
        Some(CredentialProcess {
            config: config.map(PathBuf::from),
            profile: profile.into(),
            agent: agent.map(String::from),
        })
    }

    #[test]
    fn the_plain_forms_are_answered_here() {
        let table: &[(&[&str], Option<CredentialProcess>)] = &[
            (
                &["credential-process", "readonly"],
                cp(None, "readonly", None),
            ),
            (
                &["--config", "/etc/m.toml", "credential-process", "ro"],
                cp(Some("/etc/m.toml"), "ro", None),
            ),
            (
                &["--config=/etc/m.toml", "credential-process", "ro"],
                cp(Some("/etc/m.toml"), "ro", None),
            ),
            (
                &["credential-process", "ro", "--config", "b.toml"],
                cp(Some("b.toml"), "ro", None),
            ),
            (
                &["credential-process", "--agent", "claude", "ro"],
                cp(None, "ro", Some("claude")),
            ),
            (
                &["credential-process", "ro", "--agent=claude"],
                cp(None, "ro", Some("claude")),
            ),
        ];
        for (args, want) in table {
            assert_eq!(&parse(args), want, "{args:?}");
        }
    }

    #[test]
    fn everything_else_goes_to_the_full_program() {
        let table: &[&[&str]] = &[
            &[],
            &["serve"],
            &["--version"],
            &["credential-process"],
            &["credential-process", "--help"],
            &["credential-process", "-h"],
            &["credential-process", "ro", "--version"],
            &["credential-process", "a", "b"],
            &["credential-process", "--", "ro"],
            &["credential-process", "ro", "--agent"],
            &["credential-process", "ro", "--agent", "--config"],
            &["credential-process", "ro", "--agent="],
            &["credential-process", "ro", "--agent", "a", "--agent", "b"],
            &["--config", "a", "--config", "b", "credential-process", "ro"],
            &["--config", "credential-process", "ro"],
            &["--config"],
            &["credential-process", ""],
            &["credential-process", "ro", "--reason", "x"],
            &["request", "ro"],
            &["credential-proces", "ro"],
            &["help", "credential-process"],
        ];
        for args in table {
            assert_eq!(parse(args), None, "{args:?}");
        }
        use std::os::unix::ffi::OsStringExt;
        let bad = vec![
            OsString::from("credential-process"),
            OsString::from_vec(vec![0x72, 0xff]),
        ];
        assert_eq!(CredentialProcess::recognise(&bad), None);
    }
}
