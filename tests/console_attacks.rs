//! The adversarial review of the approval console, kept as regression tests. Each test states a
//! property the console claims and tries to break it over plain HTTP against the daemon and the
//! misbehaving provider (tests/console/evil_idp.mjs in mode "ok": sub = SUB, email =
//! SUB@example.test, email_verified = true). Each failed when written: a subject-pinned
//! approver reached by email, one person as two approvers, Unicode email folding, sign-ins
//! cancelled by strangers, refusals hidden by anonymous noise, slow bodies holding the console.
//!
//!   cargo test --test console_attacks -- --test-threads=2

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::console::{cookie_value, evil_idp, header, http};
use common::{Daemon, Guard, Moto};

struct Setup {
    d: Daemon,
    port: u16,
    idp_port: u16,
    _idp: Guard,
    _moto: Moto,
}

fn config(moto: &Moto, port: u16, idp_port: u16, approvers: &str) -> String {
    common::config_text(
        &moto.endpoint(),
        &format!(
            r#"oidc_subject = "human"

{approvers}

[console]
listen = "127.0.0.1:{port}"
public_url = "http://localhost:{port}"

[console.oidc]
issuer = "http://localhost:{idp_port}"
client_id = "mandate-console"
"#
        ),
    )
}

/// The daemon with its console, the extra `[approvers.*]` tables, and the evil provider.
fn setup(approvers: &str) -> Setup {
    let moto = Moto::start();
    let port = common::free_port();
    let idp_port = common::free_port();
    let idp = evil_idp(port, idp_port, "ok", "nobody");
    let d = Daemon::start(&config(&moto, port, idp_port, approvers));
    common::wait_until("the console", Duration::from_secs(10), || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    Setup {
        d,
        port,
        idp_port,
        _idp: idp,
        _moto: moto,
    }
}

/// The provider now vouches for `sub` (percent-encoded by the caller if need be).
fn vouch_for(idp_port: u16, sub: &str) {
    common::console::set_mode(idp_port, "ok", sub);
}

/// A sign-in started and taken through the provider: (login cookie, callback path).
fn start_sign_in(port: u16, idp_port: u16) -> (String, String) {
    let (status, h, _) = http(port, "GET", "/auth/login", &[], "");
    assert_eq!(status, 303);
    let login = cookie_value(&h, "__Host-mandate_login").expect("a login cookie");
    let authorize = header(&h, "location").unwrap().to_owned();
    let path = authorize
        .strip_prefix(&format!("http://localhost:{idp_port}"))
        .unwrap_or_else(|| panic!("{authorize}"))
        .to_owned();
    let (status, h, body) = http(
        idp_port,
        "GET",
        &path,
        &[("Host", &format!("localhost:{idp_port}"))],
        "",
    );
    assert_eq!(status, 302, "{body}");
    let back = header(&h, "location").unwrap().to_owned();
    let path = back
        .strip_prefix(&format!("http://localhost:{port}"))
        .unwrap_or_else(|| panic!("{back}"))
        .to_owned();
    (login, path)
}

fn finish_sign_in(port: u16, login: &str, callback: &str) -> (u16, Option<String>, String) {
    let (status, h, body) = http(
        port,
        "GET",
        callback,
        &[("Cookie", &format!("__Host-mandate_login={login}"))],
        "",
    );
    (status, cookie_value(&h, "__Host-mandate_session"), body)
}

/// Signs in as whoever the provider vouches for: (status, session cookie, body).
fn sign_in(s: &Setup) -> (u16, Option<String>, String) {
    let (login, callback) = start_sign_in(s.port, s.idp_port);
    finish_sign_in(s.port, &login, &callback)
}

/// Who a session is signed in as, from the page header ("Signed in as <strong>NAME</strong>").
fn signed_in_as(port: u16, session: &str) -> (u16, Option<String>) {
    let (status, _, body) = http(
        port,
        "GET",
        "/controls",
        &[("Cookie", &format!("__Host-mandate_session={session}"))],
        "",
    );
    let who = body
        .split("Signed in as <strong>")
        .nth(1)
        .and_then(|s| s.split("</strong>").next())
        .map(str::to_owned);
    (status, who)
}

/// Claim 1/4: an approver pinned by `oidc_subject` is that subject. Today an approver that has
/// both `oidc_subject` and `email` is also reached by ANY other subject whose provider-verified
/// email matches: the subject pin is decorative.
#[test]
fn an_approver_pinned_by_subject_is_not_reached_by_another_subject_with_its_email() {
    let s = setup(
        r#"[approvers.pinned]
oidc_subject = "pinned-subject-0001"
email = "pinned@example.test""#,
    );
    // Sanity: the pinned subject itself signs in.
    vouch_for(s.idp_port, "pinned-subject-0001");
    let (status, _, body) = sign_in(&s);
    assert_eq!(status, 200, "{body}");
    // Another account at the provider (sub "pinned"), whose verified email is the approver's.
    vouch_for(s.idp_port, "pinned");
    let (status, cookie, _) = sign_in(&s);
    let who = cookie.as_deref().map(|c| signed_in_as(s.port, c));
    assert_eq!(
        status, 403,
        "subject \"pinned\" (not the pinned subject) signed in as {who:?}"
    );
}

/// Claim 4 (case differences in email): the config lowercases ASCII only, the ID token's email
/// is lowercased with full Unicode rules. U+212A KELVIN SIGN lowercases to ASCII 'k', so the
/// distinct address "\u{212A}ate@example.test" signs in as the approver "kate@example.test".
#[test]
fn a_different_address_that_unicode_lowercases_to_an_approvers_email_signs_nobody_in() {
    let s = setup(
        r#"[approvers.kate]
email = "kate@example.test""#,
    );
    // sub = "\u{212A}ate" (percent-encoded UTF-8), email "\u{212A}ate@example.test".
    vouch_for(s.idp_port, "%E2%84%AAate");
    let (status, cookie, _) = sign_in(&s);
    let who = cookie.as_deref().map(|c| signed_in_as(s.port, c));
    assert_eq!(
        status, 403,
        "the address \\u{{212A}}ate@example.test signed in as {who:?}"
    );
}

/// Claim 4 (each approver once): one human (one OpenID subject) must never hold sessions as two
/// approvers. After a config change that maps the same subject to another approver name, the
/// session opened under the old mapping stays valid (approver_of accepts "subject OR email"
/// instead of recomputing the mapping), so the same person is two peers at once: each name may
/// register its own passkey (neither has one) and cast a peer vote.
#[test]
fn one_subject_never_holds_sessions_as_two_approvers() {
    let s = setup(
        r#"[approvers.dana]
email = "dana@example.test""#,
    );
    vouch_for(s.idp_port, "dana");
    let (status, old, body) = sign_in(&s);
    assert_eq!(status, 200, "{body}");
    let old = old.unwrap();
    assert_eq!(signed_in_as(s.port, &old).1.as_deref(), Some("dana"));
    // The admin adds a subject-mapped approver entry for the same person (a rename, a second
    // role, a migration from email to subject mapping...). Reload.
    let text = std::fs::read_to_string(&s.d.config).unwrap();
    let text = text.replace(
        "[approvers.dana]",
        "[approvers.dana-ops]\noidc_subject = \"dana\"\n\n[approvers.dana]",
    );
    std::fs::write(&s.d.config, text).unwrap();
    let pid = s.d.pid().unwrap().to_string();
    Command::new("kill").args(["-HUP", &pid]).status().unwrap();
    common::wait_until("the reload", Duration::from_secs(15), || {
        s.d.log().contains("reloaded the config")
    });
    // The one person is now two approvers (dana-ops by subject, dana by email): refused.
    let (status, new, body) = sign_in(&s);
    assert_eq!(status, 403, "{body}");
    assert!(new.is_none());
    assert!(
        body.contains("Your sign-in matches two approvers here"),
        "{body}"
    );
    let audit = s.d.audit();
    assert!(
        audit
            .iter()
            .any(|r| r["code"] == "console_ambiguous_approver"),
        "{audit:#?}"
    );
    let can_register = "(no second session)";
    let (status, who) = signed_in_as(s.port, &old);
    assert_ne!(
        status, 200,
        "subject dana is still signed in as {who:?} while also signed in as dana-ops; passkey registration answered {can_register:?}"
    );
}

/// Claim 7 (pending sign-ins bounded): the bound must not let anyone on the network cancel an
/// approver's sign-in. /auth/login needs no session; 256 of them evict every sign-in in flight.
#[test]
fn strangers_cannot_cancel_an_approvers_sign_in() {
    let s = setup(
        r#"[approvers.erin]
email = "erin@example.test""#,
    );
    vouch_for(s.idp_port, "erin");
    let (login, callback) = start_sign_in(s.port, s.idp_port);
    // Meanwhile, a stranger (no cookie, no account) asks for sign-ins.
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let port = s.port;
            std::thread::spawn(move || {
                for _ in 0..33 {
                    http(port, "GET", "/auth/login", &[], "");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let (status, _, body) = finish_sign_in(s.port, &login, &callback);
    assert_eq!(
        status,
        200,
        "the approver's sign-in was cancelled by 264 anonymous /auth/login: {}",
        body.split("role=\"alert\">").nth(1).unwrap_or(&body)
    );
}

/// Claim 6 (refusals audited within a per-second budget): the budget is one counter for the
/// whole console, so anonymous requests (no cookie) spend it and the refusal of a signed-in
/// approver's forged request (here: no CSRF token) goes unaudited.
#[test]
fn anonymous_noise_does_not_hide_a_signed_in_sessions_refusal_from_the_audit_log() {
    let s = setup(
        r#"[approvers.finn]
email = "finn@example.test""#,
    );
    vouch_for(s.idp_port, "finn");
    let (status, session, body) = sign_in(&s);
    assert_eq!(status, 200, "{body}");
    let session = session.unwrap();
    let cookie = format!("__Host-mandate_session={session}");
    // Control: without the noise, the same refusal is audited.
    let forged = || {
        let (status, _, _) = http(
            s.port,
            "POST",
            "/controls/pause",
            &[
                ("Cookie", &cookie),
                ("Content-Type", "application/x-www-form-urlencoded"),
            ],
            "reason=forged",
        );
        assert_eq!(status, 403);
    };
    let csrf_records = || {
        s.d.audit()
            .iter()
            .filter(|r| r["code"] == "console_csrf" && r["approver"] == "finn")
            .count()
    };
    forged();
    assert_eq!(csrf_records(), 1);
    let mut audited = None;
    for _attempt in 0..3 {
        // Start of a fresh second.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        std::thread::sleep(Duration::from_nanos(
            1_000_000_000 - u64::from(now.subsec_nanos()),
        ));
        let t0 = Instant::now();
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let port = s.port;
                std::thread::spawn(move || {
                    for _ in 0..4 {
                        http(port, "POST", "/controls/pause", &[], "reason=x");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        forged();
        if t0.elapsed() > Duration::from_millis(900) {
            continue; // the second rolled over; try again
        }
        audited = Some(csrf_records() == 2);
        break;
    }
    assert!(audited.is_some(), "could not stay within one second");
    assert!(
        audited == Some(true),
        "the CSRF refusal of approver finn's session is not in the audit log (32 anonymous requests spent the budget first)"
    );
}

/// Claim 7 (connections bounded): the bound must not let a stranger take the console away from
/// approvers. 256 connections that send a request head and then a body slowly are held for the
/// whole-connection limit (120 s, no body-read timeout); every other connection is accepted and
/// dropped at once, so no approver can vote, pause or revoke at the console meanwhile.
#[test]
fn a_stranger_with_256_slow_connections_does_not_lock_approvers_out() {
    let s = setup("");
    let mut held = Vec::new();
    for _ in 0..260 {
        let Ok(mut c) = TcpStream::connect(("127.0.0.1", s.port)) else {
            break;
        };
        let _ = write!(
            c,
            "POST /confirm HTTP/1.1\r\nHost: localhost:{}\r\nContent-Length: 60000\r\n\r\n{{",
            s.port
        );
        held.push(c);
    }
    std::thread::sleep(Duration::from_secs(12)); // past the head timeout
    let (status, _, _) = http(s.port, "GET", "/", &[], "");
    drop(held);
    assert_eq!(
        status, 200,
        "with 256 slow anonymous connections open, the console answers nobody"
    );
}
