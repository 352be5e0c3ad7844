//! `mandate config check`: the daemon's full check of the config and its profiles, without
//! starting anything.

use std::path::PathBuf;

use clap::Subcommand;
use mandate::config;

use super::{Exit, config_error, print_bytes};

#[derive(Debug, Subcommand)]
pub enum ConfigCmd {
    /// Check the broker config and every profile it uses, exactly as `serve` and reload do
    #[command(
        long_about = "Check the broker config and every profile in its profiles_dir, \
        exactly as `mandate serve` and a reload do (strict keys, roles, agents, approvers, \
        approval rules, files others could write). Every problem is reported at once as \
        FILE:LINE:COL: MESSAGE; the exit code is 3 if there is any. Nothing is started."
    )]
    Check,
}

pub fn run(config_flag: Option<PathBuf>, cmd: ConfigCmd) -> Exit {
    let ConfigCmd::Check = cmd;
    let path = match config::locate(config_flag.as_deref()) {
        Ok(p) => p,
        Err(e) => return config_error(&e),
    };
    match config::load(&path) {
        Ok(loaded) => {
            for p in loaded.profiles.values() {
                for w in &p.profile.warnings {
                    eprintln!("{w}");
                }
            }
            let c = &loaded.config;
            print_bytes(
                format!(
                    "ok: {} ({} role(s), {} agent(s), {} approver(s), {} profile(s) in {})\n",
                    path.display(),
                    c.roles.len(),
                    c.agents.len(),
                    c.approvers.len(),
                    loaded.profiles.len(),
                    c.profiles_dir.display()
                )
                .as_bytes(),
            )
        }
        Err(e) => config_error(&e),
    }
}
