//! Passkeys (WebAuthn, through webauthn-rs): one registered per approver on first sign-in, and
//! an assertion with user verification for every action that loosens (a vote, resume, a breaker
//! reset).
//!
//! The challenge of an assertion is not random: it is
//! `sha256("mandate-console-confirm-v1" ‖ action ‖ nonce)`, where `action` is the canonical text
//! of exactly what is being confirmed (for a vote: the request id, its binding digest, approve
//! or reject, the approver and the note) and `nonce` is a one-time random value the server
//! keeps. webauthn-rs draws its own random challenge; we replace it with the derived one in both
//! the options sent to the browser and the state kept here (its state serialisation is what the
//! `danger-allow-state-serialisation` feature is for). An assertion made for one action
//! therefore cannot confirm another, and, the nonce being spent on first use, cannot be
//! replayed; the server also recomputes the challenge from the action it kept, independently of
//! the library.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use webauthn_rs::prelude::*;

/// Pending ceremonies (registrations and confirmations) kept at most; the oldest go first.
pub const MAX_PENDING: usize = 256;
/// How long the browser has to answer a challenge.
pub const CEREMONY_TTL: Duration = Duration::from_secs(120);
/// Passkeys one approver may have.
pub const MAX_PER_APPROVER: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum PasskeyError {
    #[error("the console's passkey settings are invalid: {0}")]
    Setup(String),
    #[error("cannot read the passkey file {path}: {reason}")]
    Load { path: PathBuf, reason: String },
    #[error("cannot save the passkey file {path}: {reason}")]
    Save { path: PathBuf, reason: String },
    #[error("approver {0} has no passkey yet: register one first")]
    NoPasskey(String),
    #[error(
        "approver {0} already has a passkey; another can only be added by removing the file entry on the broker host"
    )]
    AlreadyRegistered(String),
    #[error("this confirmation is unknown, expired or already used: start again")]
    UnknownCeremony,
    #[error("this confirmation was started in another sign-in")]
    OtherSession,
    #[error("the passkey answer was made for another action")]
    WrongChallenge,
    #[error("the passkey answer does not verify: {0}")]
    Verify(String),
}

impl PasskeyError {
    /// A short stable code for the audit log.
    pub fn reason(&self) -> &'static str {
        match self {
            PasskeyError::Setup(_) | PasskeyError::Load { .. } | PasskeyError::Save { .. } => {
                "passkey_store"
            }
            PasskeyError::NoPasskey(_) => "no_passkey",
            PasskeyError::AlreadyRegistered(_) => "passkey_exists",
            PasskeyError::UnknownCeremony => "assertion_replayed_or_unknown",
            PasskeyError::OtherSession => "assertion_other_session",
            PasskeyError::WrongChallenge => "assertion_other_action",
            PasskeyError::Verify(_) => "assertion",
        }
    }
}

/// One approver's registered passkey, as kept on disk.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Stored {
    /// base64url credential id (what the audit log names).
    id: String,
    registered_at: i64,
    key: Passkey,
}

/// A passkey whose registration verified, not kept yet.
pub struct NewPasskey {
    pub approver: String,
    /// Its credential id (base64url).
    pub id: String,
    stored: Stored,
}

/// A confirmation in flight: what the passkey is asked to confirm.
struct Confirming<A> {
    session: [u8; 32],
    approver: String,
    action: A,
    action_text: String,
    nonce: String,
    state: PasskeyAuthentication,
    at: Instant,
}

struct Registering {
    session: [u8; 32],
    approver: String,
    state: PasskeyRegistration,
    at: Instant,
}

/// The console's passkeys and ceremonies.
pub struct Passkeys<A> {
    webauthn: Webauthn,
    path: PathBuf,
    keys: Mutex<BTreeMap<String, Vec<Stored>>>,
    confirming: Mutex<HashMap<String, Confirming<A>>>,
    registering: Mutex<HashMap<String, Registering>>,
}

/// The challenge for `action_text` with `nonce`.
pub fn challenge(action_text: &str, nonce: &str) -> Vec<u8> {
    let mut h = Sha256::new();
    for part in [
        "mandate-console-confirm-v1".as_bytes(),
        action_text.as_bytes(),
        nonce.as_bytes(),
    ] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    h.finalize().to_vec()
}

fn b64url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A random one-time value (128 bits), base64url.
pub fn nonce() -> String {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).expect("the OS random source works");
    b64url(&b)
}

/// The user handle of an approver: stable, derived from the name (not secret).
fn user_id(approver: &str) -> Uuid {
    let d = Sha256::digest(format!("mandate-approver:{approver}").as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    Uuid::from_bytes(b)
}

/// Ceremonies one sign-in may have in flight; beyond it, its own oldest goes.
pub const MAX_PENDING_PER_SESSION: usize = 4;

/// Drops expired ceremonies; makes room for one more of `session`: its own oldest goes when it
/// has [`MAX_PENDING_PER_SESSION`], and when the table is full, the oldest of the session
/// holding the most (so that one approver cannot cancel another's confirmation).
fn prune<V>(
    map: &mut HashMap<String, V>,
    session: [u8; 32],
    at: impl Fn(&V) -> Instant,
    of: impl Fn(&V) -> [u8; 32],
) {
    map.retain(|_, v| at(v).elapsed() < CEREMONY_TTL);
    loop {
        let mut per: HashMap<[u8; 32], usize> = HashMap::new();
        for v in map.values() {
            *per.entry(of(v)).or_default() += 1;
        }
        let victim = if per.get(&session).copied().unwrap_or(0) >= MAX_PENDING_PER_SESSION {
            session
        } else if map.len() >= MAX_PENDING {
            match per.iter().max_by_key(|(_, n)| **n) {
                Some((s, _)) => *s,
                None => break,
            }
        } else {
            break;
        };
        let Some(oldest) = map
            .iter()
            .filter(|(_, v)| of(v) == victim)
            .min_by_key(|(_, v)| at(v))
            .map(|(k, _)| k.clone())
        else {
            break;
        };
        map.remove(&oldest);
    }
}

fn expire<V>(map: &mut HashMap<String, V>, at: impl Fn(&V) -> Instant) {
    map.retain(|_, v| at(v).elapsed() < CEREMONY_TTL);
}

impl<A: Clone> Passkeys<A> {
    /// The relying party is `public_url` (its host is the RP id); passkeys are kept in `path`.
    pub fn open(public_url: &url::Url, path: &Path) -> Result<Self, PasskeyError> {
        let rp_id = public_url.host_str().unwrap_or_default();
        let webauthn = WebauthnBuilder::new(rp_id, public_url)
            .and_then(|b| b.rp_name("mandate approvals").build())
            .map_err(|e| PasskeyError::Setup(e.to_string()))?;
        let keys = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| PasskeyError::Load {
                path: path.to_owned(),
                reason: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => {
                return Err(PasskeyError::Load {
                    path: path.to_owned(),
                    reason: e.to_string(),
                });
            }
        };
        Ok(Passkeys {
            webauthn,
            path: path.to_owned(),
            keys: Mutex::new(keys),
            confirming: Mutex::new(HashMap::new()),
            registering: Mutex::new(HashMap::new()),
        })
    }

    /// The credential ids an approver has registered.
    pub fn registered(&self, approver: &str) -> Vec<String> {
        let keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        keys.get(approver)
            .map(|v| v.iter().map(|s| s.id.clone()).collect())
            .unwrap_or_default()
    }

    fn save(&self, keys: &BTreeMap<String, Vec<Stored>>) -> Result<(), PasskeyError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let err = |e: std::io::Error| PasskeyError::Save {
            path: self.path.clone(),
            reason: e.to_string(),
        };
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let tmp = self.path.with_extension("tmp");
        let bytes = serde_json::to_vec_pretty(keys).map_err(|e| PasskeyError::Save {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(err)?;
        f.write_all(&bytes).map_err(err)?;
        f.sync_all().map_err(err)?;
        std::fs::rename(&tmp, &self.path).map_err(err)
    }

    /// Starts registering a passkey: only for an approver who has none yet (first sign-in).
    pub fn begin_registration(
        &self,
        session: [u8; 32],
        approver: &str,
        display: &str,
    ) -> Result<(String, CreationChallengeResponse), PasskeyError> {
        if !self.registered(approver).is_empty() {
            return Err(PasskeyError::AlreadyRegistered(approver.to_owned()));
        }
        let (options, state) = self
            .webauthn
            .start_passkey_registration(user_id(approver), approver, display, None)
            .map_err(|e| PasskeyError::Verify(e.to_string()))?;
        let id = nonce();
        let mut reg = self.registering.lock().unwrap_or_else(|e| e.into_inner());
        prune(&mut reg, session, |r| r.at, |r| r.session);
        reg.insert(
            id.clone(),
            Registering {
                session,
                approver: approver.to_owned(),
                state,
                at: Instant::now(),
            },
        );
        Ok((id, options))
    }

    /// Checks a registration's answer: the passkey to keep (not kept yet: the caller audits
    /// it first, then [`Passkeys::keep`]s it).
    pub fn finish_registration(
        &self,
        session: [u8; 32],
        id: &str,
        answer: &RegisterPublicKeyCredential,
        now: i64,
    ) -> Result<NewPasskey, PasskeyError> {
        let r = {
            let mut reg = self.registering.lock().unwrap_or_else(|e| e.into_inner());
            expire(&mut reg, |r| r.at);
            reg.remove(id).ok_or(PasskeyError::UnknownCeremony)?
        };
        if r.session != session {
            return Err(PasskeyError::OtherSession);
        }
        let key = self
            .webauthn
            .finish_passkey_registration(answer, &r.state)
            .map_err(|e| PasskeyError::Verify(e.to_string()))?;
        let cred = b64url(key.cred_id().as_ref());
        if !self.registered(&r.approver).is_empty() {
            return Err(PasskeyError::AlreadyRegistered(r.approver));
        }
        Ok(NewPasskey {
            approver: r.approver,
            id: cred.clone(),
            stored: Stored {
                id: cred,
                registered_at: now,
                key,
            },
        })
    }

    /// Keeps a registered passkey (written to the file before it counts).
    pub fn keep(&self, new: NewPasskey) -> Result<(), PasskeyError> {
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        let mine = keys.entry(new.approver.clone()).or_default();
        if !mine.is_empty() || mine.len() >= MAX_PER_APPROVER {
            return Err(PasskeyError::AlreadyRegistered(new.approver));
        }
        mine.push(new.stored);
        let snapshot = keys.clone();
        drop(keys);
        self.save(&snapshot)
    }

    /// Starts confirming `action` (described by `action_text`) with the approver's passkey:
    /// the nonce the answer must come back with, and the options for the browser.
    pub fn begin_confirm(
        &self,
        session: [u8; 32],
        approver: &str,
        action: A,
        action_text: String,
    ) -> Result<(String, RequestChallengeResponse), PasskeyError> {
        let creds: Vec<Passkey> = {
            let keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
            keys.get(approver)
                .map(|v| v.iter().map(|s| s.key.clone()).collect())
                .unwrap_or_default()
        };
        if creds.is_empty() {
            return Err(PasskeyError::NoPasskey(approver.to_owned()));
        }
        let (mut options, state) = self
            .webauthn
            .start_passkey_authentication(&creds)
            .map_err(|e| PasskeyError::Verify(e.to_string()))?;
        let nonce = nonce();
        let derived = challenge(&action_text, &nonce);
        options.public_key.challenge = derived.clone();
        let state = with_challenge(state, &derived)?;
        let mut pending = self.confirming.lock().unwrap_or_else(|e| e.into_inner());
        prune(&mut pending, session, |c| c.at, |c| c.session);
        pending.insert(
            nonce.clone(),
            Confirming {
                session,
                approver: approver.to_owned(),
                action,
                action_text,
                nonce: nonce.clone(),
                state,
                at: Instant::now(),
            },
        );
        Ok((nonce, options))
    }

    /// Checks the answer to confirmation `nonce` (spent whatever the outcome): the action it
    /// confirmed, and the credential id that did.
    pub fn finish_confirm(
        &self,
        session: [u8; 32],
        nonce: &str,
        answer: &PublicKeyCredential,
    ) -> Result<(String, A, String), PasskeyError> {
        let c = {
            let mut pending = self.confirming.lock().unwrap_or_else(|e| e.into_inner());
            expire(&mut pending, |c| c.at);
            pending.remove(nonce).ok_or(PasskeyError::UnknownCeremony)?
        };
        if c.session != session {
            return Err(PasskeyError::OtherSession);
        }
        // Our own check, before the library's: the browser signed our derived challenge.
        let expected = challenge(&c.action_text, &c.nonce);
        if signed_challenge(answer).as_deref() != Some(expected.as_slice()) {
            return Err(PasskeyError::WrongChallenge);
        }
        let result = self
            .webauthn
            .finish_passkey_authentication(answer, &c.state)
            .map_err(|e| PasskeyError::Verify(e.to_string()))?;
        if !result.user_verified() {
            return Err(PasskeyError::Verify(
                "the authenticator did not verify the user".into(),
            ));
        }
        let cred = b64url(result.cred_id().as_ref());
        if result.needs_update() {
            let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(mine) = keys.get_mut(&c.approver) {
                for s in mine.iter_mut() {
                    s.key.update_credential(&result);
                }
            }
            let snapshot = keys.clone();
            drop(keys);
            self.save(&snapshot)?;
        }
        Ok((c.approver, c.action, cred))
    }
}

/// The challenge the browser signed, from the answer's clientDataJSON.
fn signed_challenge(answer: &PublicKeyCredential) -> Option<Vec<u8>> {
    let client: serde_json::Value =
        serde_json::from_slice(answer.response.client_data_json.as_ref()).ok()?;
    let text = client.get("challenge")?.as_str()?;
    from_b64url(text)
}

fn from_b64url(s: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .ok()
}

/// The library's authentication state with our challenge in place of its random one.
fn with_challenge(
    state: PasskeyAuthentication,
    derived: &[u8],
) -> Result<PasskeyAuthentication, PasskeyError> {
    let mut v = serde_json::to_value(&state).map_err(|e| PasskeyError::Setup(e.to_string()))?;
    let slot = v
        .get_mut("ast")
        .and_then(|a| a.get_mut("challenge"))
        .ok_or_else(|| PasskeyError::Setup("unexpected webauthn state layout".into()))?;
    *slot = serde_json::Value::String(b64url(derived));
    serde_json::from_value(v).map_err(|e| PasskeyError::Setup(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_round_trips() {
        for n in 0..40u8 {
            let bytes: Vec<u8> = (0..n).map(|i| i.wrapping_mul(37)).collect();
            assert_eq!(from_b64url(&b64url(&bytes)).unwrap(), bytes);
        }
        assert_eq!(b64url(b"\xfb\xff"), "-_8");
        assert_eq!(from_b64url("not base64!"), None);
    }

    #[test]
    fn the_challenge_binds_the_action_and_the_nonce() {
        let a = challenge("vote r1 digest1 approve", "n1");
        assert_eq!(a.len(), 32);
        assert_ne!(a, challenge("vote r2 digest1 approve", "n1"));
        assert_ne!(a, challenge("vote r1 digest1 approve", "n2"));
        assert_ne!(a, challenge("vote r1 digest1 reject", "n1"));
        // Length-prefixed: moving text between the parts changes it.
        assert_ne!(challenge("ab", "c"), challenge("a", "bc"));
    }

    #[test]
    fn the_derived_challenge_replaces_the_librarys() {
        let url = url::Url::parse("http://localhost:8443").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p: Passkeys<()> = Passkeys::open(&url, &dir.path().join("passkeys.json")).unwrap();
        // No passkey yet: nothing to confirm with.
        assert!(matches!(
            p.begin_confirm([0; 32], "alice", (), "x".into()),
            Err(PasskeyError::NoPasskey(_))
        ));
        // Registration options bind the approver's stable user handle and need UV.
        let (_, options) = p.begin_registration([1; 32], "alice", "Alice").unwrap();
        let v = serde_json::to_value(&options).unwrap();
        assert_eq!(v["publicKey"]["rp"]["id"], "localhost");
        assert_eq!(
            v["publicKey"]["authenticatorSelection"]["userVerification"],
            "required"
        );
        assert!(matches!(
            p.finish_registration([2; 32], "unknown", &serde_json::from_value(serde_json::json!({
                "id": "AA", "rawId": "AA", "type": "public-key",
                "response": {"attestationObject": "AA", "clientDataJSON": "AA"}, "extensions": {}
            })).unwrap(), 0),
            Err(PasskeyError::UnknownCeremony)
        ));
    }
}
