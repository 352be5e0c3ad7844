//! Signed checkpoints: every N records or T seconds the writer signs (seq, hash, time, position)
//! with an Ed25519 key created by `mandate init`, and appends it to `checkpoints.jsonl`. A log
//! rewritten after a checkpoint no longer matches it, and the signature cannot be redone
//! without the key.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::verify::{Checkpoint, canonical};
use crate::policy::{hex, unhex};

pub const CHECKPOINT_FILE: &str = "checkpoints.jsonl";

/// Short, stable name of a public key (first 16 hex digits of its sha256).
pub fn fingerprint(key: &VerifyingKey) -> String {
    hex(&Sha256::digest(key.as_bytes()))[..16].to_owned()
}

/// Creates a new key file (mode 0600) and its public half (`.pub`, 0644); refuses to overwrite.
pub fn create_key(path: &Path) -> Result<VerifyingKey, String> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| format!("no randomness: {e}"))?;
    let key = SigningKey::from_bytes(&seed);
    seed.fill(0);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| e.to_string())?;
    f.write_all(hex(key.as_bytes()).as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| e.to_string())?;
    let public = key.verifying_key();
    let pub_path = path.with_extension("pub");
    std::fs::write(&pub_path, hex(public.as_bytes()))
        .map_err(|e| format!("cannot write {}: {e}", pub_path.display()))?;
    std::fs::set_permissions(&pub_path, std::fs::Permissions::from_mode(0o644))
        .map_err(|e| e.to_string())?;
    Ok(public)
}

/// Loads the signing key; refuses a symlink or a file others can read or write.
pub fn load_key(path: &Path) -> Result<SigningKey, String> {
    let meta = std::fs::symlink_metadata(path)
        .map_err(|e| format!("signing key {}: {e} (run `mandate init`)", path.display()))?;
    if meta.file_type().is_symlink() {
        return Err(format!(
            "signing key {} is a symlink; refusing it",
            path.display()
        ));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(format!(
            "signing key {} is readable or writable by others; chmod 600 it",
            path.display()
        ));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("signing key {}: {e}", path.display()))?;
    let bytes: [u8; 32] = unhex(text.trim())
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| format!("signing key {} is not 64 hex digits", path.display()))?;
    Ok(SigningKey::from_bytes(&bytes))
}

/// A public key given as hex (the content of `signing.pub`).
pub fn parse_public(hex_text: &str) -> Result<VerifyingKey, String> {
    let bytes: [u8; 32] = unhex(hex_text.trim())
        .and_then(|b| b.try_into().ok())
        .ok_or("a public key is 64 hex digits")?;
    VerifyingKey::from_bytes(&bytes).map_err(|e| format!("invalid public key: {e}"))
}

fn payload(seq: u64, hash: &str, time: &str, segment: &str, offset: u64) -> Value {
    json!({ "v": 1, "seq": seq, "hash": hash, "time": time, "segment": segment, "offset": offset })
}

/// One signed checkpoint line (with its newline).
pub fn signed_line(
    key: &SigningKey,
    seq: u64,
    hash: &str,
    time: &str,
    segment: &str,
    offset: u64,
) -> String {
    let p = payload(seq, hash, time, segment, offset);
    let sig = key.sign(canonical(&p).as_bytes());
    let mut full = p;
    full["key"] = Value::String(fingerprint(&key.verifying_key()));
    full["sig"] = Value::String(hex(&sig.to_bytes()));
    format!("{}\n", canonical(&full))
}

/// Parses the checkpoint file and checks every signature. Returns the checkpoints up to the
/// first bad one, and why that one is bad. A torn final line (crash while writing) is ignored.
pub fn read(bytes: &[u8], key: &VerifyingKey) -> (Vec<Checkpoint>, Option<String>) {
    let mut out = Vec::new();
    let text = String::from_utf8_lossy(bytes);
    let complete = match text.rfind('\n') {
        Some(i) => &text[..=i],
        None => "",
    };
    for (i, line) in complete.lines().enumerate() {
        let n = i + 1;
        let bad = |why: &str| Some(format!("checkpoint line {n}: {why}"));
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            return (out, bad("not a complete JSON record"));
        };
        let (Some(seq), Some(hash), Some(time), Some(segment), Some(offset), Some(sig)) = (
            v["seq"].as_u64(),
            v["hash"].as_str(),
            v["time"].as_str(),
            v["segment"].as_str(),
            v["offset"].as_u64(),
            v["sig"].as_str(),
        ) else {
            return (out, bad("missing fields"));
        };
        let p = payload(seq, hash, time, segment, offset);
        let Some(sig) = unhex(sig).and_then(|b| <[u8; 64]>::try_from(b).ok()) else {
            return (out, bad("malformed signature"));
        };
        if key
            .verify(canonical(&p).as_bytes(), &Signature::from_bytes(&sig))
            .is_err()
        {
            return (
                out,
                bad(&format!(
                    "signature does not verify with key {} (seq {seq})",
                    fingerprint(key)
                )),
            );
        }
        out.push(Checkpoint {
            seq,
            hash: hash.to_owned(),
            segment: segment.to_owned(),
            offset,
            line: n,
        });
    }
    (out, None)
}
