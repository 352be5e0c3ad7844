//! Sign-ins in flight and signed-in sessions, both in memory and bounded.
//!
//! The browser holds only a random session id (in an HttpOnly, Secure, SameSite=Strict cookie);
//! the server keys its sessions by the id's sha256, so nothing it stores would let anyone
//! present a cookie. Each session has its own CSRF token, compared in constant time.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::oidc::Pending;

/// How long the provider may take to send the browser back.
pub const LOGIN_TTL: Duration = Duration::from_secs(600);
/// Signed-in sessions at most (a new sign-in beyond it is refused until one ends).
pub const MAX_SESSIONS: usize = 1024;
/// Sessions one person (OpenID subject) may have; a new sign-in ends their oldest.
pub const MAX_SESSIONS_PER_SUBJECT: usize = 8;

/// The cookie that names a session (`__Host-`: Secure, Path=/, no Domain, so that no sibling
/// subdomain can set or shadow it).
pub const SESSION_COOKIE: &str = "__Host-mandate_session";
/// The cookie that ties a sign-in in flight to the browser that started it.
pub const LOGIN_COOKIE: &str = "__Host-mandate_login";

/// One signed-in approver.
#[derive(Clone, Debug)]
pub struct Session {
    /// The sha256 of the cookie value (what ceremonies are bound to).
    pub key: [u8; 32],
    pub approver: String,
    pub subject: String,
    pub email: Option<String>,
    csrf: String,
    expires: Instant,
}

impl Session {
    pub fn csrf(&self) -> &str {
        &self.csrf
    }

    /// Whether `token` is this session's CSRF token (constant time).
    pub fn csrf_ok(&self, token: &str) -> bool {
        let a = self.csrf.as_bytes();
        let b = token.as_bytes();
        a.len() == b.len() && bool::from(a.ct_eq(b))
    }
}

/// Why a request has no usable session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoSession {
    /// No cookie, or one the server does not know.
    Missing,
    /// A session that was valid and ran out.
    Expired,
}

fn hash(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

/// A random token: 256 bits, hex (the agent tokens' generator).
pub fn token() -> String {
    crate::transport::http::new_token()
}

/// Signed-in sessions, and the key that seals sign-ins in flight.
///
/// A sign-in in flight is kept by the browser, not here: its state, nonce and PKCE verifier go
/// into the login cookie (`HttpOnly; Secure; SameSite=Lax`, the one that comes back with the
/// provider's redirect), with an HMAC under a key only this process has, and the time it began.
/// Nobody can then cancel an approver's sign-in by starting many others, and nothing grows.
pub struct Sessions {
    login_key: [u8; 32],
    live: Mutex<HashMap<[u8; 32], Session>>,
}

impl Default for Sessions {
    fn default() -> Self {
        let mut login_key = [0u8; 32];
        getrandom::fill(&mut login_key).expect("the OS random source works");
        Sessions {
            login_key,
            live: Mutex::new(HashMap::new()),
        }
    }
}

/// Why a login cookie does not name a sign-in in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoginProblem {
    /// Missing, malformed, or sealed by another key (or another process).
    Unknown,
    /// For another sign-in than the one the provider sent back.
    OtherState,
    /// Older than [`LOGIN_TTL`].
    Expired,
}

/// A sealed field's bytes (bounded: a sealed sign-in is small).
fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() > 2048 {
        return None;
    }
    crate::policy::unhex(s)
}

impl Sessions {
    fn mac(&self, body: &str) -> hmac::Hmac<Sha256> {
        use hmac::Mac;
        let mut m = <hmac::Hmac<Sha256> as Mac>::new_from_slice(&self.login_key)
            .expect("HMAC takes any key length");
        m.update(b"mandate-console-login-v1\0");
        m.update(body.as_bytes());
        m
    }

    /// The login cookie's value for a sign-in just begun.
    pub fn seal_login(&self, pending: &Pending, now: i64) -> String {
        use hmac::Mac;
        let (state, nonce, verifier) = pending.parts();
        let body = format!(
            "{now}.{}.{}.{}",
            crate::policy::hex(state.as_bytes()),
            crate::policy::hex(nonce.as_bytes()),
            crate::policy::hex(verifier.as_bytes())
        );
        let tag = self.mac(&body).finalize().into_bytes();
        format!("{body}.{}", crate::policy::hex(&tag))
    }

    /// The sign-in a login cookie seals, if it is this process's, recent, and for `state`.
    pub fn open_login(&self, cookie: &str, state: &str, now: i64) -> Result<Pending, LoginProblem> {
        use hmac::Mac;
        let (body, tag) = cookie.rsplit_once('.').ok_or(LoginProblem::Unknown)?;
        let tag = unhex(tag).ok_or(LoginProblem::Unknown)?;
        self.mac(body)
            .verify_slice(&tag)
            .map_err(|_| LoginProblem::Unknown)?;
        let mut parts = body.split('.');
        let at: i64 = parts
            .next()
            .and_then(|t| t.parse().ok())
            .ok_or(LoginProblem::Unknown)?;
        let mut text = || {
            parts
                .next()
                .and_then(unhex)
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or(LoginProblem::Unknown)
        };
        let (sealed_state, nonce, verifier) = (text()?, text()?, text()?);
        if sealed_state.as_bytes().ct_eq(state.as_bytes()).unwrap_u8() != 1 {
            return Err(LoginProblem::OtherState);
        }
        let age = now.saturating_sub(at);
        if !(0..LOGIN_TTL.as_secs() as i64).contains(&age) {
            return Err(LoginProblem::Expired);
        }
        Ok(Pending::from_parts(
            sealed_state,
            nonce,
            verifier,
            Duration::from_secs(age as u64),
        ))
    }

    /// A new session; the cookie value, or None when the console is full.
    pub fn create(
        &self,
        approver: String,
        subject: String,
        email: Option<String>,
        lifetime: Duration,
    ) -> Option<String> {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.retain(|_, s| s.expires > Instant::now());
        while live.values().filter(|s| s.subject == subject).count() >= MAX_SESSIONS_PER_SUBJECT {
            let Some(oldest) = live
                .iter()
                .filter(|(_, s)| s.subject == subject)
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| *k)
            else {
                break;
            };
            live.remove(&oldest);
        }
        if live.len() >= MAX_SESSIONS {
            return None;
        }
        let cookie = token();
        let key = hash(&cookie);
        live.insert(
            key,
            Session {
                key,
                approver,
                subject,
                email,
                csrf: token(),
                expires: Instant::now() + lifetime,
            },
        );
        Some(cookie)
    }

    /// The session a cookie names.
    pub fn get(&self, cookie: Option<&str>) -> Result<Session, NoSession> {
        let cookie = cookie.ok_or(NoSession::Missing)?;
        let key = hash(cookie);
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        match live.get(&key) {
            Some(s) if s.expires > Instant::now() => Ok(s.clone()),
            Some(_) => {
                live.remove(&key);
                Err(NoSession::Expired)
            }
            None => Err(NoSession::Missing),
        }
    }

    /// Ends a session.
    pub fn end(&self, key: &[u8; 32]) {
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_person_holds_a_bounded_number_of_sessions() {
        let s = Sessions::default();
        let first = s
            .create("a".into(), "sub".into(), None, Duration::from_secs(60))
            .unwrap();
        for _ in 0..MAX_SESSIONS_PER_SUBJECT {
            s.create("a".into(), "sub".into(), None, Duration::from_secs(60))
                .unwrap();
        }
        assert_eq!(s.get(Some(&first)).unwrap_err(), NoSession::Missing);
        let other = s
            .create("b".into(), "other".into(), None, Duration::from_secs(60))
            .unwrap();
        assert!(s.get(Some(&other)).is_ok());
    }

    #[test]
    fn sessions_expire_and_end_and_csrf_is_exact() {
        let s = Sessions::default();
        let c = s
            .create(
                "alice".into(),
                "sub".into(),
                None,
                Duration::from_millis(50),
            )
            .unwrap();
        let got = s.get(Some(&c)).unwrap();
        assert!(got.csrf_ok(got.csrf()));
        assert!(!got.csrf_ok(""));
        assert!(!got.csrf_ok(&got.csrf()[1..]));
        assert_eq!(s.get(Some("nope")).unwrap_err(), NoSession::Missing);
        assert_eq!(s.get(None).unwrap_err(), NoSession::Missing);
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(s.get(Some(&c)).unwrap_err(), NoSession::Expired);
        assert_eq!(s.get(Some(&c)).unwrap_err(), NoSession::Missing);
        let c = s
            .create("alice".into(), "sub".into(), None, Duration::from_secs(60))
            .unwrap();
        let key = s.get(Some(&c)).unwrap().key;
        s.end(&key);
        assert_eq!(s.get(Some(&c)).unwrap_err(), NoSession::Missing);
    }
}

#[cfg(test)]
mod login_tests {
    use super::*;

    #[test]
    fn a_sealed_sign_in_opens_only_here_for_its_state_and_in_time() {
        let s = Sessions::default();
        let p = Pending::from_parts("st".into(), "no".into(), "ve".into(), Duration::ZERO);
        let c = s.seal_login(&p, 1000);
        let back = s.open_login(&c, "st", 1005).unwrap();
        assert_eq!(back.parts(), ("st", "no", "ve"));
        assert_eq!(
            s.open_login(&c, "other", 1005).unwrap_err(),
            LoginProblem::OtherState
        );
        assert_eq!(
            s.open_login(&c, "st", 1000 + LOGIN_TTL.as_secs() as i64)
                .unwrap_err(),
            LoginProblem::Expired
        );
        // Another process (another key), or any change to the cookie: unknown.
        assert_eq!(
            Sessions::default().open_login(&c, "st", 1005).unwrap_err(),
            LoginProblem::Unknown
        );
        let tampered = c.replacen("1000.", "1004.", 1);
        assert_eq!(
            s.open_login(&tampered, "st", 1005).unwrap_err(),
            LoginProblem::Unknown
        );
        for junk in ["", ".", "x.y", "1000.zz.zz.zz.00"] {
            assert_eq!(
                s.open_login(junk, "st", 1005).unwrap_err(),
                LoginProblem::Unknown
            );
        }
    }
}
