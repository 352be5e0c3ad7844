//! `mandate mcp`: the MCP server on stdio (the library's `mcp` module does the work). Stdout is
//! the protocol; anything for a human goes to stderr.

use std::path::PathBuf;

use super::Exit;

pub fn run(config: Option<PathBuf>, agent: Option<String>) -> Exit {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return Exit::Unavailable;
        }
    };
    let r = runtime.block_on(mandate::mcp::serve(config.as_deref(), agent));
    // Stdin's blocking read cannot be cancelled: do not wait for it.
    runtime.shutdown_background();
    match r {
        Ok(()) => Exit::Ok,
        Err(e @ mandate::mcp::McpError::Config(_)) => {
            eprintln!(
                "mandate mcp: {}",
                mandate::diag::terminal_line(&e.to_string())
            );
            Exit::NotFound
        }
        Err(e) => {
            eprintln!(
                "mandate mcp: {}",
                mandate::diag::terminal_line(&e.to_string())
            );
            Exit::Unavailable
        }
    }
}
