//! Exit codes of both binaries (also in README.md): the one small table every command maps
//! its errors to.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | internal error (a bug: please report it) |
//! | 2 | usage error (bad flags or arguments) |
//! | 3 | invalid input: a profile (or config) failed validation |
//! | 4 | not found or unreadable: a named profile, config or path does not exist |
//! | 5 | refused: the broker denied the request (unknown caller, profile not bound, approval needed) |
//! | 6 | unavailable: the daemon is not running, or it cannot reach AWS or write its audit log |

use std::process::ExitCode;

/// Exit codes; see the module docs and README.md.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Ok = 0,
    Internal = 1,
    Usage = 2,
    Invalid = 3,
    NotFound = 4,
    Denied = 5,
    Unavailable = 6,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e as u8)
    }
}

/// Writes `bytes` to stdout: `Ok`, or `Internal` (said on stderr) when stdout is unwritable.
/// A closed pipe is not an error: the reader has what it wanted.
pub fn print(bytes: &[u8]) -> Exit {
    use std::io::Write;
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
