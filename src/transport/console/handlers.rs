//! The console's routes, each as named steps: who is asking (a session, and for a state change
//! its CSRF token and origin), what they ask, the broker's answer, the page.

use hyper::StatusCode;
use serde::Deserialize;
use serde_json::json;

use super::pages::{self, Viewer};
use super::passkey::PasskeyError;
use super::session::{self, NoSession, Session};
use super::{Ctx, Incoming2, Reply};
use crate::approval::ApprovalId;
use crate::aws::Issuer;
use crate::broker::{BrokerError, Caller, ConsoleEvent, ConsoleUser};

/// What a passkey confirms (the challenge is derived from its text and a one-time nonce).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Vote {
        id: String,
        digest: String,
        approve: bool,
        note: Option<String>,
    },
    Resume,
    ResetBreaker {
        agent: String,
    },
}

impl Action {
    /// The canonical text the challenge covers: what, on what exactly, by whom.
    pub fn text(&self, approver: &str) -> String {
        match self {
            Action::Vote {
                id,
                digest,
                approve,
                note,
            } => format!(
                "vote\n{id}\n{digest}\n{}\n{approver}\n{}",
                if *approve { "approve" } else { "reject" },
                note.as_deref().unwrap_or("")
            ),
            Action::Resume => format!("resume\n{approver}"),
            Action::ResetBreaker { agent } => format!("breaker-reset\n{agent}\n{approver}"),
        }
    }
}

const JS: &str = include_str!("assets/console.js");
const CSS: &str = include_str!("assets/console.css");
/// The longest note a vote may carry, and the longest pause reason.
pub const MAX_NOTE_CHARS: usize = 500;

pub(super) async fn route<I: Issuer>(ctx: &Ctx<I>, req: Incoming2) -> Reply {
    use hyper::Method;
    let path = req.path.clone();
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (&req.method, segs.as_slice()) {
        (&Method::GET, ["static", "console.js"]) => asset(JS, "text/javascript; charset=utf-8"),
        (&Method::GET, ["static", "console.css"]) => asset(CSS, "text/css; charset=utf-8"),
        (&Method::GET, [""]) => home(ctx, &req).await,
        (&Method::GET, ["auth", "login"]) => login(ctx).await,
        (&Method::GET, ["auth", "callback"]) => callback(ctx, &req).await,
        (&Method::POST, ["auth", "logout"]) => logout(ctx, &req).await,
        (&Method::GET, ["passkey"]) => passkey_page(ctx, &req).await,
        (&Method::POST, ["passkey", "options"]) => passkey_options(ctx, &req).await,
        (&Method::POST, ["passkey", "register"]) => passkey_register(ctx, &req).await,
        (&Method::GET, ["requests", id]) => request_page(ctx, &req, id).await,
        (&Method::POST, ["requests", id, "operator-vote"]) => operator_vote(ctx, &req, id).await,
        (&Method::POST, ["confirm", "options"]) => confirm_options(ctx, &req).await,
        (&Method::POST, ["confirm"]) => confirm(ctx, &req).await,
        (&Method::GET, ["sessions"]) => sessions_page(ctx, &req).await,
        (&Method::POST, ["sessions", "revoke"]) => revoke_session(ctx, &req).await,
        (&Method::GET, ["controls"]) => controls_page(ctx, &req).await,
        (&Method::POST, ["controls", "pause"]) => pause(ctx, &req).await,
        (&Method::GET | &Method::POST, _) => Reply::html(
            StatusCode::NOT_FOUND,
            pages::problem("Not found", "There is no such page.", None),
        ),
        _ => Reply::html(
            StatusCode::METHOD_NOT_ALLOWED,
            pages::problem("Not allowed", "Only GET and POST are served.", None),
        ),
    }
}

fn asset(body: &'static str, content_type: &'static str) -> Reply {
    Reply {
        status: StatusCode::OK,
        content_type,
        body: body.as_bytes().to_vec(),
        headers: Vec::new(),
    }
}

fn event(what: &str, refused: bool, s: Option<&Session>, message: String) -> ConsoleEvent {
    ConsoleEvent {
        what: what.to_owned(),
        refused,
        approver: s.map(|s| s.approver.clone()),
        subject: s.map(|s| s.subject.clone()),
        passkey: None,
        approval_id: None,
        message,
    }
}

/// Text from the request, for a record: at most 120 characters, printable.
fn shown(s: &str) -> String {
    let mut out: String = s
        .chars()
        .take(120)
        .map(|c| if crate::diag::must_escape(c) { '?' } else { c })
        .collect();
    if s.chars().count() > 120 {
        out.push('…');
    }
    out
}

fn caller(s: &Session, passkey: Option<String>) -> Caller {
    Caller::Console(ConsoleUser {
        approver: s.approver.clone(),
        subject: s.subject.clone(),
        email: s.email.clone(),
        passkey,
    })
}

fn viewer(s: &Session) -> Viewer<'_> {
    Viewer {
        approver: &s.approver,
        subject: &s.subject,
        csrf: s.csrf(),
    }
}

/// What the client may see of a broker error: a refusal's own message; nothing internal.
fn client_message(e: &BrokerError) -> String {
    match e {
        BrokerError::Denied(d) => d.message.clone(),
        BrokerError::Stale(m) => m.clone(),
        other => {
            tracing::error!(error = %other, "console action failed");
            "the broker could not do that now; try again, and see the broker's log".into()
        }
    }
}

fn is_json(req: &Incoming2) -> bool {
    req.content_type
        .as_deref()
        .is_some_and(|c| c.starts_with("application/json"))
}

/// Step one of every page: the signed-in session, or the audited refusal.
async fn signed_in<I: Issuer>(ctx: &Ctx<I>, req: &Incoming2) -> Result<Session, Reply> {
    match ctx.console.sessions.get(req.cookie.as_deref()) {
        // The config may have changed since the sign-in: the mapping must still hold.
        Ok(s) => match ctx.broker.approver_of(&caller(&s, None), None) {
            Ok(_) => Ok(s),
            Err(d) => {
                ctx.console.sessions.end(&s.key);
                ctx.refused(event("unmapped", true, Some(&s), d.message.clone()))
                    .await;
                let issuer = ctx
                    .console
                    .config
                    .oidc
                    .issuer
                    .host_str()
                    .unwrap_or("")
                    .to_owned();
                Err(Reply::html(
                    StatusCode::FORBIDDEN,
                    pages::sign_in(&issuer, Some(&d.message)),
                )
                .with(
                    hyper::header::SET_COOKIE,
                    clear_cookie(session::SESSION_COOKIE, "/"),
                ))
            }
        },
        Err(why) => {
            let (what, message) = match why {
                NoSession::Missing => ("no_session", "sign in first"),
                NoSession::Expired => ("session_expired", "your sign-in expired; sign in again"),
            };
            ctx.refused(event(
                what,
                true,
                None,
                format!("{} {}: {message}", req.method, shown(&req.path)),
            ))
            .await;
            let issuer = ctx
                .console
                .config
                .oidc
                .issuer
                .host_str()
                .unwrap_or("")
                .to_owned();
            let mut r = if is_json(req) || req.method == hyper::Method::POST {
                Reply::json(StatusCode::UNAUTHORIZED, &json!({ "error": message }))
            } else {
                Reply::html(
                    StatusCode::UNAUTHORIZED,
                    pages::sign_in(&issuer, Some(message)),
                )
            };
            if why == NoSession::Expired {
                r = r.with(
                    hyper::header::SET_COOKIE,
                    clear_cookie(session::SESSION_COOKIE, "/"),
                );
            }
            Err(r)
        }
    }
}

/// Step one of every state change: the session, its CSRF token, and our own origin.
async fn signed_in_post<I: Issuer>(ctx: &Ctx<I>, req: &Incoming2) -> Result<Session, Reply> {
    let s = signed_in(ctx, req).await?;
    if let Some(origin) = &req.origin
        && *origin != ctx.console.origin()
    {
        ctx.refused(event(
            "origin",
            true,
            Some(&s),
            format!(
                "{} {} from origin {}",
                req.method,
                shown(&req.path),
                shown(origin)
            ),
        ))
        .await;
        return Err(Reply::json(
            StatusCode::FORBIDDEN,
            &json!({"error": "this request did not come from the console's own pages"}),
        ));
    }
    let token = req
        .csrf_header
        .clone()
        .or_else(|| req.form().remove("csrf"));
    match token {
        Some(t) if s.csrf_ok(&t) => Ok(s),
        given => {
            ctx.refused(event(
                "csrf",
                true,
                Some(&s),
                format!(
                    "{} {}: {} CSRF token",
                    req.method,
                    shown(&req.path),
                    if given.is_some() { "a wrong" } else { "no" }
                ),
            ))
            .await;
            Err(Reply::json(
                StatusCode::FORBIDDEN,
                &json!({"error": "the form is stale or forged (CSRF token); reload the page and try again"}),
            ))
        }
    }
}

/// The session cookie: no Max-Age, so that the browser keeps it for the browser session and
/// the server, which expires sessions itself, can say that a sign-in expired.
fn session_cookie(value: &str) -> String {
    format!(
        "{}={value}; Path=/; HttpOnly; Secure; SameSite=Strict",
        session::SESSION_COOKIE
    )
}

fn clear_cookie(name: &str, path: &str) -> String {
    format!("{name}=; Path={path}; HttpOnly; Secure; SameSite=Strict; Max-Age=0")
}

async fn home<I: Issuer>(ctx: &Ctx<I>, req: &Incoming2) -> Reply {
    if req.cookie.is_none() {
        let issuer = ctx
            .console
            .config
            .oidc
            .issuer
            .host_str()
            .unwrap_or("")
            .to_owned();
        return Reply::html(StatusCode::OK, pages::sign_in(&issuer, None));
    }
    let s = match signed_in(ctx, req).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let has_passkey = !ctx.console.passkeys.registered(&s.approver).is_empty();
    match ctx.broker.approvals(&caller(&s, None), false).await {
        Ok(list) => {
            let pending: Vec<_> = list
                .into_iter()
                .filter(|r| r["status"] == "pending")
                .collect();
            Reply::html(
                StatusCode::OK,
                pages::home(&viewer(&s), &pending, has_passkey),
            )
        }
        Err(e) => Reply::html(
            StatusCode::FORBIDDEN,
            pages::problem("Refused", &client_message(&e), Some(&viewer(&s))),
        ),
    }
}

async fn login<I: Issuer>(ctx: &Ctx<I>) -> Reply {
    match ctx.console.oidc.begin().await {
        Ok((url, pending)) => {
            let state = ctx
                .console
                .sessions
                .seal_login(&pending, crate::clock::unix_now());
            // Lax: the provider's redirect back is a cross-site navigation.
            Reply::redirect(&url).with(
                hyper::header::SET_COOKIE,
                format!(
                    "{}={state}; Path=/; HttpOnly; Secure; SameSite=Lax; Max-Age={}",
                    session::LOGIN_COOKIE,
                    session::LOGIN_TTL.as_secs()
                ),
            )
        }
        Err(e) => {
            tracing::error!(error = %e, "console sign-in cannot start");
            Reply::html(
                StatusCode::BAD_GATEWAY,
                pages::problem(
                    "Sign-in unavailable",
                    "The identity provider cannot be reached; try again in a moment.",
                    None,
                ),
            )
        }
    }
}

async fn callback<I: Issuer>(ctx: &Ctx<I>, req: &Incoming2) -> Reply {
    let q = req.query_params();
    let refuse = |what: &'static str, message: String, shown: &'static str| {
        (event(what, true, None, message), shown)
    };
    let problem = match (q.get("state"), q.get("code")) {
        _ if q.contains_key("error") => Some(refuse(
            "provider_error",
            format!(
                "the provider answered {}",
                shown(q.get("error").map(String::as_str).unwrap_or(""))
            ),
            "The identity provider did not sign you in.",
        )),
        (None, _) | (_, None) => Some(refuse(
            "login_state",
            "the provider's answer lacks state or code".into(),
            "The sign-in answer is incomplete; start again.",
        )),
        _ => None,
    };
    if let Some((e, shown)) = problem {
        ctx.refused(e).await;
        return Reply::html(
            StatusCode::BAD_REQUEST,
            pages::problem("Sign-in refused", shown, None),
        );
    }
    let (state, code) = (&q["state"], &q["code"]);
    let opened = req.login_cookie.as_deref().map(|c| {
        ctx.console
            .sessions
            .open_login(c, state, crate::clock::unix_now())
    });
    let pending = match opened {
        Some(Ok(p)) => p,
        problem => {
            let (message, shown) = match problem {
                Some(Err(session::LoginProblem::Expired)) => (
                    "the sign-in took longer than 10 minutes",
                    "This sign-in expired; start again.",
                ),
                Some(Err(session::LoginProblem::OtherState)) => (
                    "the provider sent back another sign-in than this browser started",
                    "This sign-in was not started in this browser; start again.",
                ),
                _ => (
                    "the sign-in came back to a browser that did not start it (no valid login cookie)",
                    "This sign-in was not started in this browser; start again.",
                ),
            };
            ctx.refused(event("login_state", true, None, message.into()))
                .await;
            return Reply::html(
                StatusCode::BAD_REQUEST,
                pages::problem("Sign-in refused", shown, None),
            );
        }
    };
    let identity = match ctx.console.oidc.finish(pending, code).await {
        Ok(i) => i,
        Err(e) => {
            ctx.refused(event(e.reason(), true, None, e.to_string()))
                .await;
            return Reply::html(
                StatusCode::FORBIDDEN,
                pages::problem(
                    "Sign-in refused",
                    "The identity provider's answer did not verify; nothing was signed in.",
                    None,
                ),
            );
        }
    };
    // Who this is here: an approver mapped by subject, or by a verified email.
    let state_now = ctx.broker.state();
    let mapped = match state_now
        .config
        .console_approver(&identity.subject, identity.email.as_deref())
    {
        Ok(a) => a.map(|a| a.name.clone()),
        Err(why) => {
            ctx.refused(ConsoleEvent {
                subject: Some(identity.subject.clone()),
                ..event("ambiguous_approver", true, None, why)
            })
            .await;
            return Reply::html(
                StatusCode::FORBIDDEN,
                pages::problem(
                    "Sign-in refused",
                    "Your sign-in matches two approvers here; ask the broker's owner to fix broker.toml.",
                    None,
                ),
            );
        }
    };
    let Some(approver) = mapped else {
        ctx.refused(ConsoleEvent {
            subject: Some(identity.subject.clone()),
            ..event(
                "not_an_approver",
                true,
                None,
                format!(
                    "subject {} (email {}) is mapped to no approver",
                    identity.subject,
                    identity.email.as_deref().unwrap_or("none verified")
                ),
            )
        })
        .await;
        return Reply::html(
            StatusCode::FORBIDDEN,
            pages::problem(
                "Not an approver",
                "You signed in at the identity provider, but you are not an approver here.",
                None,
            ),
        );
    };
    let lifetime = ctx.console.config.session_lifetime;
    let Some(cookie) = ctx.console.sessions.create(
        approver.clone(),
        identity.subject.clone(),
        identity.email.clone(),
        lifetime,
    ) else {
        ctx.refused(ConsoleEvent {
            approver: Some(approver.clone()),
            subject: Some(identity.subject.clone()),
            ..event(
                "sessions_full",
                true,
                None,
                "the console has as many open sessions as it keeps".into(),
            )
        })
        .await;
        return Reply::html(
            StatusCode::SERVICE_UNAVAILABLE,
            pages::problem(
                "Too many sign-ins",
                "The console has too many open sessions; try again later.",
                None,
            ),
        );
    };
    let e = ConsoleEvent {
        approver: Some(approver.clone()),
        subject: Some(identity.subject.clone()),
        ..event("signed_in", false, None, "signed in at the console".into())
    };
    if let Err(err) = ctx.broker.audit_console(e).await {
        tracing::error!(error = %err, "cannot audit a console sign-in");
        return Reply::html(
            StatusCode::SERVICE_UNAVAILABLE,
            pages::problem("Unavailable", "The audit log cannot be written.", None),
        );
    }
    // First sign-in: straight to registering a passkey.
    let next = if ctx.console.passkeys.registered(&approver).is_empty() {
        "/passkey"
    } else {
        "/"
    };
    Reply::html(StatusCode::OK, pages::signed_in(&approver, next))
        .with(hyper::header::SET_COOKIE, session_cookie(&cookie))
        .with(
            hyper::header::SET_COOKIE,
            clear_cookie(session::LOGIN_COOKIE, "/"),
        )
}

async fn logout<I: Issuer>(ctx: &Ctx<I>, req: &Incoming2) -> Reply {
    let s = match signed_in_post(ctx, req).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    ctx.console.sessions.end(&s.key);
    let _ = ctx
        .broker
        .audit_console(event("signed_out", false, Some(&s), "signed out".into()))
        .await;
    Reply::redirect("/").with(
        hyper::header::SET_COOKIE,
        clear_cookie(session::SESSION_COOKIE, "/"),
    )
}

async fn passkey_page<I: Issuer>(ctx: &Ctx<I>, req: &Incoming2) -> Reply {
    let s = match signed_in(ctx, req).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let registered = ctx.console.passkeys.registered(&s.approver);
    Reply::html(StatusCode::OK, pages::passkey(&viewer(&s), &registered))
}

async fn passkey_options<I: Issuer>(ctx: &Ctx<I>, req: &Incoming2) -> Reply {
    let s = match signed_in_post(ctx, req).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    match ctx
        .console
        .passkeys
        .begin_registration(s.key, &s.approver, &s.approver)
    {
        Ok((id, options)) => Reply::json(StatusCode::OK, &json!({"id": id, "options": options})),
        Err(e) => passkey_refused(ctx, &s, &e, None).await,
    }
}

async fn passkey_refused<I: Issuer>(
    ctx: &Ctx<I>,
    s: &Session,
    e: &PasskeyError,
    approval_id: Option<String>,
) -> Reply {
    ctx.refused(ConsoleEvent {
        approval_id,
        ..event(e.reason(), true, Some(s), e.to_string())
    })
    .await;
    Reply::json(StatusCode::FORBIDDEN, &json!({"error": e.to_string()}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterBody {
    id: String,
    credential: webauthn_rs::prelude::RegisterPublicKeyCredential,
}

async fn passkey_register<I: Issuer>(ctx: &Ctx<I>, req: &Incoming2) -> Reply {
    let s = match signed_in_post(ctx, req).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let Ok(body) = serde_json::from_slice::<RegisterBody>(&req.body) else {
        return bad_json();
    };
    let now = crate::clock::unix_now();
    match ctx
        .console
        .passkeys
        .finish_registration(s.key, &body.id, &body.credential, now)
    {
        Ok(new) => {
            // Audited before it counts.
            let cred = new.id.clone();
            let e = ConsoleEvent {
                passkey: Some(cred.clone()),
                ..event(
                    "passkey_registered",
                    false,
                    Some(&s),
                    format!("approver {} registered a passkey", new.approver),
                )
            };
            if let Err(err) = ctx.broker.audit_console(e).await {
                tracing::error!(error = %err, "cannot audit a passkey registration");
                return Reply::json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &json!({"error": "the audit log cannot be written; nothing was registered"}),
                );
            }
            match ctx.console.passkeys.keep(new) {
                Ok(()) => Reply::json(
                    StatusCode::OK,
                    &json!({"message": "Your passkey is registered.", "passkey": cred}),
                ),
                Err(e) => passkey_refused(ctx, &s, &e, None).await,
            }
        }
        Err(e) => passkey_refused(ctx, &s, &e, None).await,
    }
}

fn bad_json() -> Reply {
    Reply::json(
        StatusCode::BAD_REQUEST,
        &json!({"error": "the request body is not what this page sends"}),
    )
}

/// The request as the broker shows it to this approver.
async fn find_request<I: Issuer>(
    ctx: &Ctx<I>,
    s: &Session,
    id: &str,
) -> Result<serde_json::Value, Reply> {
    if ApprovalId::parse(id).is_err() {
        return Err(Reply::html(
            StatusCode::NOT_FOUND,
            pages::problem("Not found", "There is no such request.", Some(&viewer(s))),
        ));
    }
    match ctx.broker.approvals(&caller(s, None), true).await {
        Ok(list) => list.into_iter().find(|r| r["id"] == id).ok_or_else(|| {
            Reply::html(
                StatusCode::NOT_FOUND,
                pages::problem("Not found", "There is no such request.", Some(&viewer(s))),
            )
        }),
        Err(e) => Err(Reply::html(
            StatusCode::FORBIDDEN,
            pages::problem("Refused", &client_message(&e), Some(&viewer(s))),
        )),
    }
}

async fn request_page<I: Issuer>(ctx: &Ctx<I>, req: &Incoming2, id: &str) -> Reply {
    let s = match signed_in(ctx, req).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let view = match find_request(ctx, &s, id).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let state = ctx.broker.state();
    let agent_name = view["agent"].as_str().unwrap_or_default();
    let agent = state.config.agents.get(agent_name);
    let operator = agent.and_then(|a| a.operator.as_deref());
    let profile = state
        .profiles
        .get(view["profile"].as_str().unwrap_or_default())
        .filter(|c| Some(c.policy.sha256()) == view["policy_sha256"].as_str());
    let voted: Vec<&str> = view["votes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["approver"].as_str())
        .collect();
    let operator_level = view["needs"]
        .as_str()
        .is_some_and(|n| n.starts_with("operator "));
    let still_eligible: Vec<String> = match (operator_level, agent) {
        (true, _) => operator
            .filter(|o| !voted.contains(o))
            .map(|o| vec![o.to_owned()])
            .unwrap_or_default(),
        (false, Some(a)) => state
            .config
            .peer_approvers(a)
            .filter(|p| !voted.contains(&p.name.as_str()))
            .map(|p| p.name.clone())
            .collect(),
        (false, None) => Vec::new(),
    };
    let me = s.approver.as_str();
    let has_passkey = !ctx.console.passkeys.registered(me).is_empty();
    let oidc_only =
        ctx.console.config.oidc_only_operator_votes && operator_level && operator == Some(me);
    let cannot_vote = if voted.contains(&me) {
        Some("You have voted on this request already: each approver counts once.".to_owned())
    } else if !operator_level && operator == Some(me) {
        Some(format!(
            "You are agent {agent_name}'s operator: the operator never counts as a peer approver, so your approval cannot count here."
        ))
    } else if operator_level && operator != Some(me) {
        Some(format!(
            "Only {}, agent {agent_name}'s operator, can approve this request.",
            operator.unwrap_or("the operator")
        ))
    } else if !operator_level && !still_eligible.iter().any(|n| n == me) {
        Some(format!(
            "You share a uid with agent {agent_name}, so your approval cannot count as a peer's."
        ))
    } else if !has_passkey {
        Some("Register a passkey first: every vote is confirmed with it.".to_owned())
    } else {
        None
    };
    let recent = crate::audit::recent(&state.config.audit_dir(), agent_name, 10);
    let page = pages::RequestPage {
        view: &view,
        operator,
        policy_json: profile.map(|c| c.policy.as_json()),
        policy_sha256: profile.map(|c| c.policy.sha256()),
        still_eligible,
        cannot_vote,
        operator_without_passkey: oidc_only,
        recent: &recent,
    };
    Reply::html(StatusCode::OK, pages::request(&viewer(&s), &page))
}

/// A note as the approver typed it: bounded, without control characters but newlines.
fn clean_note(note: Option<String>) -> Result<Option<String>, &'static str> {
    match note {
        None => Ok(None),
        Some(n) if n.trim().is_empty() => Ok(None),
        Some(n) if n.chars().count() > MAX_NOTE_CHARS => {
            Err("the note is longer than 500 characters")
        }
        Some(n) if n.chars().any(|c| c != '\n' && crate::diag::must_escape(c)) => {
            Err("the note contains control or invisible characters")
        }
        Some(n) => Ok(Some(n.trim().to_owned())),
    }
}

#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
enum ConfirmRequest {
    Vote {
        id: String,
        digest: String,
        decision: String,
        #[serde(default)]
        note: Option<String>,
    },
    Resume,
    Reset {
        agent: String,
    },
}

async fn confirm_options<I: Issuer>(ctx: &Ctx<I>, req: &Incoming2) -> Reply {
    let s = match signed_in_post(ctx, req).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let Ok(body) = serde_json::from_slice::<ConfirmRequest>(&req.body) else {
        return bad_json();
    };
    let (action, approval_id) = match body {
        ConfirmRequest::Vote {
            id,
            digest,
            decision,
            note,
        } => {
            let approve = match decision.as_str() {
                "approve" => true,
                "reject" => false,
                _ => return bad_json(),
            };
            let note = match clean_note(note) {
                Ok(n) => n,
                Err(m) => return Reply::json(StatusCode::BAD_REQUEST, &json!({"error": m})),
            };
            // The request must still be what the approver looked at.
            let view = match find_request(ctx, &s, &id).await {
                Ok(v) => v,
                Err(_) => {
                    return Reply::json(
                        StatusCode::NOT_FOUND,
                        &json!({"error": "there is no such request"}),
                    );
                }
            };
            if view["digest"] != digest.as_str() {
                ctx.refused(ConsoleEvent {
                    approval_id: Some(id.clone()),
                    ..event(
                        "changed",
                        true,
                        Some(&s),
                        "the request changed since the page was shown".into(),
                    )
                })
                .await;
                return Reply::json(
                    StatusCode::CONFLICT,
                    &json!({"error": "the request changed since you looked at it; reload the page"}),
                );
            }
            (
                Action::Vote {
                    id: id.clone(),
                    digest,
                    approve,
                    note,
                },
                Some(id),
            )
        }
        ConfirmRequest::Resume => (Action::Resume, None),
        ConfirmRequest::Reset { agent } => {
            if !ctx.broker.state().config.agents.contains_key(&agent) {
                return Reply::json(StatusCode::NOT_FOUND, &json!({"error": "no such agent"}));
            }
            (Action::ResetBreaker { agent }, None)
        }
    };
    let text = action.text(&s.approver);
    match ctx
        .console
        .passkeys
        .begin_confirm(s.key, &s.approver, action, text)
    {
        Ok((nonce, options)) => {
            Reply::json(StatusCode::OK, &json!({"nonce": nonce, "options": options}))
        }
        Err(e) => passkey_refused(ctx, &s, &e, approval_id).await,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfirmBody {
    nonce: String,
    credential: webauthn_rs::prelude::PublicKeyCredential,
}

async fn confirm<I: Issuer>(ctx: &Ctx<I>, req: &Incoming2) -> Reply {
    let s = match signed_in_post(ctx, req).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let Ok(body) = serde_json::from_slice::<ConfirmBody>(&req.body) else {
        return bad_json();
    };
    let (approver, action, passkey) =
        match ctx
            .console
            .passkeys
            .finish_confirm(s.key, &body.nonce, &body.credential)
        {
            Ok(x) => x,
            Err(e) => return passkey_refused(ctx, &s, &e, None).await,
        };
    if approver != s.approver {
        return passkey_refused(ctx, &s, &PasskeyError::OtherSession, None).await;
    }
    let who = caller(&s, Some(passkey));
    let done = match action {
        Action::Vote {
            id,
            digest,
            approve,
            note,
        } => {
            let Ok(aid) = ApprovalId::parse(&id) else {
                return bad_json();
            };
            ctx.broker
                .vote_on_seen(who, aid, approve, note, None, Some(digest))
                .await
                .map(|r| match r.outcome.as_str() {
                    "approved" => format!(
                        "Approved: request {} can now be redeemed by the agent.",
                        r.id
                    ),
                    "rejected" => format!("Rejected: request {} is closed.", r.id),
                    _ => format!("Your approval is counted: {} of {} so far.", r.have, r.need),
                })
        }
        Action::Resume => ctx
            .broker
            .set_paused(who, false, None)
            .await
            .map(|()| "Resumed: agents may be issued credentials again.".to_owned()),
        Action::ResetBreaker { agent } => ctx
            .broker
            .breaker_reset(who, agent.clone())
            .await
            .map(|()| format!("The breaker of agent {agent} is reset.")),
    };
    match done {
        Ok(message) => Reply::json(StatusCode::OK, &json!({"message": message})),
        Err(e) => Reply::json(StatusCode::FORBIDDEN, &json!({"error": client_message(&e)})),
    }
}

async fn operator_vote<I: Issuer>(ctx: &Ctx<I>, req: &Incoming2, id: &str) -> Reply {
    let s = match signed_in_post(ctx, req).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let form = req.form();
    let (Ok(aid), Some(digest), Some("approve")) = (
        ApprovalId::parse(id),
        form.get("digest"),
        form.get("decision").map(String::as_str),
    ) else {
        return Reply::html(
            StatusCode::BAD_REQUEST,
            pages::problem(
                "Bad request",
                "That form is not one this console sends.",
                Some(&viewer(&s)),
            ),
        );
    };
    let result = ctx
        .broker
        .vote_on_seen(
            caller(&s, None),
            aid,
            true,
            None,
            None,
            Some(digest.clone()),
        )
        .await;
    match result {
        Ok(_) => Reply::redirect(&format!("/requests/{id}")),
        Err(e) => Reply::html(
            StatusCode::FORBIDDEN,
            pages::problem("Vote refused", &client_message(&e), Some(&viewer(&s))),
        ),
    }
}

async fn sessions_page<I: Issuer>(ctx: &Ctx<I>, req: &Incoming2) -> Reply {
    let s = match signed_in(ctx, req).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    match ctx.broker.live_sessions(&caller(&s, None)).await {
        Ok(list) => {
            let rows: Vec<pages::SessionRow> = list
                .into_iter()
                .map(|x| pages::SessionRow {
                    request_id: x.request_id,
                    agent: x.agent,
                    profile: x.profile,
                    expiration: x.expiration,
                    access_key_id: x.access_key_id,
                })
                .collect();
            Reply::html(StatusCode::OK, pages::sessions(&viewer(&s), &rows))
        }
        Err(e) => Reply::html(
            StatusCode::FORBIDDEN,
            pages::problem("Refused", &client_message(&e), Some(&viewer(&s))),
        ),
    }
}

async fn revoke_session<I: Issuer>(ctx: &Ctx<I>, req: &Incoming2) -> Reply {
    let s = match signed_in_post(ctx, req).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let form = req.form();
    let Some(session) = form
        .get("session")
        .filter(|x| !x.is_empty() && x.len() <= 128)
    else {
        return Reply::html(
            StatusCode::BAD_REQUEST,
            pages::problem("Bad request", "Which session?", Some(&viewer(&s))),
        );
    };
    let aws = form.get("aws").map(String::as_str) == Some("on");
    let scope = crate::revoke::Scope::Session(session.clone());
    match ctx.broker.revoke(caller(&s, None), scope, aws).await {
        Ok(_) => Reply::redirect("/sessions"),
        Err(e) => Reply::html(
            StatusCode::FORBIDDEN,
            pages::problem("Revoke refused", &client_message(&e), Some(&viewer(&s))),
        ),
    }
}

async fn controls_page<I: Issuer>(ctx: &Ctx<I>, req: &Incoming2) -> Reply {
    let s = match signed_in(ctx, req).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    if let Err(d) = ctx.broker.approver_of(&caller(&s, None), None) {
        return Reply::html(
            StatusCode::FORBIDDEN,
            pages::problem("Refused", &d.message, Some(&viewer(&s))),
        );
    }
    let controls = ctx.broker.controls();
    let paused = controls.paused.as_ref().map(|p| {
        format!(
            "Paused by {} at {}{}",
            p.by,
            crate::clock::rfc3339(p.at),
            p.reason
                .as_deref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        )
    });
    let tripped: Vec<(String, String)> = controls
        .trips
        .values()
        .map(|t| (t.agent.clone(), t.reason.clone()))
        .collect();
    Reply::html(
        StatusCode::OK,
        pages::controls(&viewer(&s), paused.as_deref(), &tripped),
    )
}

async fn pause<I: Issuer>(ctx: &Ctx<I>, req: &Incoming2) -> Reply {
    let s = match signed_in_post(ctx, req).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let reason = req.form().remove("reason").unwrap_or_default();
    let reason = match clean_note(Some(reason)) {
        Ok(Some(r)) if r.chars().count() <= 200 => r,
        _ => {
            return Reply::html(
                StatusCode::BAD_REQUEST,
                pages::problem(
                    "Bad request",
                    "Give a reason (at most 200 characters, no control characters).",
                    Some(&viewer(&s)),
                ),
            );
        }
    };
    match ctx
        .broker
        .set_paused(caller(&s, None), true, Some(reason))
        .await
    {
        Ok(()) => Reply::redirect("/controls"),
        Err(e) => Reply::html(
            StatusCode::FORBIDDEN,
            pages::problem("Pause refused", &client_message(&e), Some(&viewer(&s))),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn action_texts_differ_in_every_part() {
        let v = |id: &str, d: &str, a: bool, n: Option<&str>| Action::Vote {
            id: id.into(),
            digest: d.into(),
            approve: a,
            note: n.map(Into::into),
        };
        let base = v("r1", "d1", true, None).text("alice");
        for other in [
            v("r2", "d1", true, None).text("alice"),
            v("r1", "d2", true, None).text("alice"),
            v("r1", "d1", false, None).text("alice"),
            v("r1", "d1", true, Some("x")).text("alice"),
            v("r1", "d1", true, None).text("bob"),
            Action::Resume.text("alice"),
        ] {
            assert_ne!(base, other);
        }
    }

    #[test]
    fn notes_are_bounded_and_printable() {
        assert_eq!(clean_note(None), Ok(None));
        assert_eq!(clean_note(Some("  ".into())), Ok(None));
        assert_eq!(clean_note(Some(" ok\n".into())), Ok(Some("ok".into())));
        assert_eq!(
            clean_note(Some("a\u{1b}[31m".into())),
            Err("the note contains control or invisible characters")
        );
        assert_eq!(
            clean_note(Some("x".repeat(501))),
            Err("the note is longer than 500 characters")
        );
    }
}
