//! mandate: a least-privilege credential broker for AI agents on AWS.
//!
//! This library holds the pure core of the broker. The binary (`src/main.rs` and `src/cli/`)
//! only parses arguments, calls into here and prints.
//!
//! * [`catalog`]: the embedded table of every IAM action and its access level.
//! * [`profile`]: capability profiles, parsed once from TOML into validated types.
//! * [`policy`]: compiles a [`profile::Profile`] into the exact session policy sent to STS.
#![forbid(unsafe_code)]

pub mod approval;
pub mod audit;
pub mod aws;
pub mod broker;
pub mod catalog;
pub mod client;
pub mod clock;
pub mod config;
pub mod diag;
pub mod exit;
pub mod mcp;
pub mod notify;
pub mod os;
pub mod policy;
pub mod profile;
pub mod protocol;
pub mod revoke;
pub mod secret;
pub mod store;
pub mod suggest;
pub mod toml_walk;
pub mod transport;
