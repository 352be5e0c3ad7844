//! `mandate-broker`, the full program: every command, the daemon included. Parse arguments,
//! call the library, print, pick an exit code. `mandate` (src/main.rs) runs it for every
//! command but a plain `credential-process`.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
