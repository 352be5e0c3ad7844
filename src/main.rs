//! The `mandate` binary: parse arguments, call the library, print, pick an exit code.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
