//! Agent tokens: minting them, and holding them only as hashes, re-read when their files change.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::RwLock;
use std::time::SystemTime;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::Config;

/// Shortest acceptable token: 128 bits as hex.
pub const MIN_TOKEN_CHARS: usize = 32;

/// 256 random bits, hex: a new agent token.
pub fn new_token() -> String {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).expect("the OS random source is available");
    crate::policy::hex(&b)
}

pub(super) fn token_hash(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct FileStamp {
    len: u64,
    modified: SystemTime,
    inode: u64,
}

/// An agent's token hash and the file state it was read from.
pub(super) type TokenEntry = ([u8; 32], Option<FileStamp>);

/// Agent tokens, held only as hashes, refreshed from their files.
#[derive(Default)]
pub struct Tokens {
    pub(super) inner: RwLock<BTreeMap<String, TokenEntry>>,
}

impl Tokens {
    /// Reads every agent's token file. Problems are returned (and the agent then has no valid
    /// token) rather than stopping the daemon; start-up reports them.
    pub fn refresh(&self, config: &Config) -> Vec<String> {
        let mut problems = Vec::new();
        let mut next = BTreeMap::new();
        let old = self.inner.read().unwrap_or_else(|e| e.into_inner()).clone();
        for agent in config.agents.values() {
            let Some(path) = &agent.token_file else {
                continue;
            };
            let stamp = std::fs::metadata(path).ok().map(|m| FileStamp {
                len: m.len(),
                modified: m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                inode: m.ino(),
            });
            if let (Some(s), Some((hash, Some(old_stamp)))) = (&stamp, old.get(&agent.name))
                && s == old_stamp
            {
                next.insert(agent.name.clone(), (*hash, stamp));
                continue;
            }
            match read_token(path) {
                Ok(hash) => {
                    next.insert(agent.name.clone(), (hash, stamp));
                }
                Err(e) => problems.push(format!("agent {}: {e}", agent.name)),
            }
        }
        *self.inner.write().unwrap_or_else(|e| e.into_inner()) = next;
        problems
    }

    /// The agent whose token this is. Every stored hash is compared, in constant time.
    pub fn agent_for(&self, token: &[u8]) -> Option<String> {
        let presented = token_hash(token);
        let mut found = None;
        for (agent, (hash, _)) in self.inner.read().unwrap_or_else(|e| e.into_inner()).iter() {
            if bool::from(hash.ct_eq(&presented)) {
                found = Some(agent.clone());
            }
        }
        found
    }
}

/// Reads and hashes a token file. Symlinks are followed (Kubernetes Secret volumes are made of
/// them) but the file and every directory on the way must be safe (`trust::trusted_file`).
pub(super) fn read_token(path: &PathBuf) -> Result<[u8; 32], String> {
    crate::os::trusted_file(path, "token file")?;
    let bytes = std::fs::read(path).map_err(|e| format!("token file {}: {e}", path.display()))?;
    if bytes.ends_with(b"\n") || bytes.ends_with(b"\r") {
        return Err(format!(
            "token file {} ends with a newline, which the AWS SDKs would send as part of the token; rewrite it without one (`mandate agent rotate`)",
            path.display()
        ));
    }
    if bytes.len() < MIN_TOKEN_CHARS || !bytes.iter().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "token file {} must hold at least {MIN_TOKEN_CHARS} printable characters",
            path.display()
        ));
    }
    Ok(token_hash(&bytes))
}
