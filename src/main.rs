//! `mandate`: a small binary that answers `credential-process` itself (no AWS SDK, async
//! runtime or argument parser to load) and runs the full program, `mandate-broker`, for
//! everything else (`mandate::client::front`).

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::process::ExitCode;

use mandate::client::calls;
use mandate::client::front::{self, CredentialProcess, FULL_PROGRAM};
use mandate::exit::Exit;

fn main() -> ExitCode {
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_else(|| OsString::from("mandate"));
    let rest: Vec<OsString> = args.collect();
    match CredentialProcess::recognise(&rest) {
        Some(cp) => credential_process(cp).into(),
        None => run_full_program(arg0, &rest).into(),
    }
}

fn credential_process(cp: CredentialProcess) -> Exit {
    match calls::credential_process(cp.config.as_deref(), cp.profile, cp.agent) {
        Ok(line) => mandate::exit::print(&line),
        Err(f) => {
            eprintln!("{}", calls::failure_line(&f));
            f.0
        }
    }
}

/// Replaces this process with the full program (same pid, arguments and environment); returns
/// only when that is impossible.
fn run_full_program(arg0: OsString, args: &[OsString]) -> Exit {
    let why = match front::full_program() {
        Ok(path) => {
            let e = std::process::Command::new(&path)
                .arg0(arg0)
                .args(args)
                .exec();
            format!("cannot run {}: {e}", path.display())
        }
        Err(e) => format!("cannot find this program's own path: {e}"),
    };
    eprintln!(
        "mandate: {why}; {FULL_PROGRAM} must be installed in the same directory as mandate (`cargo install --path .` installs both)"
    );
    Exit::NotFound
}
