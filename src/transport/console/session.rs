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

/// Sign-ins started and not finished, at most; the oldest go first.
pub const MAX_LOGINS: usize = 256;
/// How long the provider may take to send the browser back.
pub const LOGIN_TTL: Duration = Duration::from_secs(600);
/// Signed-in sessions at most (a new sign-in beyond it is refused until one ends).
pub const MAX_SESSIONS: usize = 1024;

/// The cookie that names a session.
pub const SESSION_COOKIE: &str = "mandate_session";
/// The cookie that ties a sign-in in flight to the browser that started it.
pub const LOGIN_COOKIE: &str = "mandate_login";

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

/// A random token: 256 bits, base64url.
pub fn token() -> String {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).expect("the OS random source works");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[derive(Default)]
pub struct Sessions {
    logins: Mutex<HashMap<String, (Pending, Instant)>>,
    live: Mutex<HashMap<[u8; 32], Session>>,
}

impl Sessions {
    /// Keeps a sign-in in flight under its `state`.
    pub fn start_login(&self, pending: Pending) {
        let mut logins = self.logins.lock().unwrap_or_else(|e| e.into_inner());
        logins.retain(|_, (_, at)| at.elapsed() < LOGIN_TTL);
        while logins.len() >= MAX_LOGINS {
            let Some(oldest) = logins
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            logins.remove(&oldest);
        }
        logins.insert(pending.state().to_owned(), (pending, Instant::now()));
    }

    /// Takes the sign-in in flight for `state` (once).
    pub fn take_login(&self, state: &str) -> Option<Pending> {
        let mut logins = self.logins.lock().unwrap_or_else(|e| e.into_inner());
        logins.retain(|_, (_, at)| at.elapsed() < LOGIN_TTL);
        logins.remove(state).map(|(p, _)| p)
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
