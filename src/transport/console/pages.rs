//! The console's pages: server-rendered HTML, every value escaped, no inline script or style
//! (the Content-Security-Policy allows only this origin's `/static/` files). Each control has a
//! visible label; state changes are forms (CSRF token inside) or buttons that the script turns
//! into a passkey confirmation.

use std::fmt::Write;

use serde_json::Value;

use crate::catalog::RiskClass;

/// Escapes text for HTML content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // Control and invisible formatting characters (bidi controls, zero-width, ...) are
            // shown, never obeyed: the rule the CLI follows (diag::must_escape).
            c if c != '\n' && crate::diag::must_escape(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => esc(s),
        Value::Null => "—".into(),
        other => esc(&other.to_string()),
    }
}

/// Who is signed in, for the header.
pub struct Viewer<'a> {
    pub approver: &'a str,
    pub subject: &'a str,
    pub csrf: &'a str,
}

/// A whole page around `body`.
pub fn layout(title: &str, viewer: Option<&Viewer<'_>>, body: &str) -> String {
    let mut nav = String::new();
    if let Some(v) = viewer {
        let _ = write!(
            nav,
            r#"<nav aria-label="Console"><ul>
<li><a href="/">Pending requests</a></li>
<li><a href="/sessions">Live sessions</a></li>
<li><a href="/controls">Pause and breakers</a></li>
<li><a href="/passkey">Passkey</a></li>
</ul>
<form method="post" action="/auth/logout" class="signout"><input type="hidden" name="csrf" value="{csrf}">
<span>Signed in as <strong>{who}</strong> (<span class="mono">{sub}</span>)</span>
<button type="submit">Sign out</button></form></nav>"#,
            csrf = esc(v.csrf),
            who = esc(v.approver),
            sub = esc(v.subject),
        );
    }
    let csrf_meta = viewer
        .map(|v| format!(r#"<meta name="csrf-token" content="{}">"#, esc(v.csrf)))
        .unwrap_or_default();
    format!(
        r##"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
{csrf_meta}
<title>{title} · mandate</title>
<link rel="stylesheet" href="/static/console.css">
<script src="/static/console.js" defer></script>
</head>
<body>
<a class="skip" href="#main">Skip to content</a>
<header><p class="brand">mandate · approvals</p>{nav}</header>
<main id="main" tabindex="-1">
<h1>{title}</h1>
<div id="status" role="status" aria-live="polite"></div>
{body}
</main>
</body>
</html>
"##,
        title = esc(title),
    )
}

pub fn sign_in(issuer: &str, message: Option<&str>) -> String {
    let note = message
        .map(|m| format!(r#"<p class="problem" role="alert">{}</p>"#, esc(m)))
        .unwrap_or_default();
    layout(
        "Sign in",
        None,
        &format!(
            r#"{note}<p>Approvers sign in with the company's identity provider, then confirm every vote with their passkey.</p>
<p><a class="button" id="sign-in" href="/auth/login">Sign in with {}</a></p>"#,
            esc(issuer)
        ),
    )
}

/// A refusal the browser sees (the details are in the audit log, not here).
pub fn problem(title: &str, message: &str, viewer: Option<&Viewer<'_>>) -> String {
    layout(
        title,
        viewer,
        &format!(
            r#"<p class="problem" role="alert">{}</p><p><a href="/">Back to the console</a></p>"#,
            esc(message)
        ),
    )
}

/// After the provider sent the browser back: a same-site step, so that the Strict cookie is
/// sent on the next request (a redirect chain that began at the provider would not send it).
pub fn signed_in(approver: &str, next: &str) -> String {
    format!(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="0;url={next}"><title>Signed in · mandate</title><link rel="stylesheet" href="/static/console.css"></head><body><main><p>Signed in as {who}. <a href="{next}">Continue to the console</a></p></main></body></html>"#,
        who = esc(approver),
        next = esc(next),
    )
}

pub fn passkey(v: &Viewer<'_>, registered: &[String]) -> String {
    let body = if registered.is_empty() {
        r#"<p>Before you can vote, register a passkey on this device. Every vote is confirmed with it (with your fingerprint, face or PIN), so that a stolen sign-in alone approves nothing.</p>
<p><button type="button" id="register" data-register>Register a passkey</button></p>"#
            .to_owned()
    } else {
        let list: String = registered
            .iter()
            .map(|id| format!(r#"<li class="mono">{}</li>"#, esc(id)))
            .collect();
        format!(
            r#"<p>Your passkey is registered; every vote is confirmed with it.</p><ul aria-label="Registered passkeys">{list}</ul><p><a href="/">Pending requests</a></p>"#
        )
    };
    layout("Your passkey", Some(v), &body)
}

pub fn home(v: &Viewer<'_>, requests: &[Value], has_passkey: bool) -> String {
    let mut rows = String::new();
    for r in requests {
        let id = r["id"].as_str().unwrap_or_default();
        let _ = write!(
            rows,
            r#"<tr><td><a href="/requests/{id}">{id_text}</a></td><td>{agent}</td><td>{profile}</td><td>{needs}</td><td>{have} of {need}</td><td>{status}</td><td>{expires}</td></tr>"#,
            id = esc(id),
            id_text = esc(id),
            agent = text(&r["agent"]),
            profile = text(&r["profile"]),
            needs = text(&r["needs"]),
            have = r["approvals"].as_array().map_or(0, |a| a.len()),
            need = text(&r["need"]),
            status = text(&r["status"]),
            expires = text(&r["expires"]),
        );
    }
    let mut body = if has_passkey {
        String::new()
    } else {
        r#"<p class="problem">You have no passkey yet, so you cannot vote: <a href="/passkey">register one</a>.</p>"#.to_owned()
    };
    body += &if requests.is_empty() {
        r#"<p id="no-requests">No request is waiting for a decision.</p>"#.to_owned()
    } else {
        format!(
            r#"<table id="requests"><caption>Requests waiting for approval</caption>
<thead><tr><th scope="col">Request</th><th scope="col">Agent</th><th scope="col">Profile</th><th scope="col">Needs</th><th scope="col">Approvals</th><th scope="col">Status</th><th scope="col">Expires</th></tr></thead>
<tbody>{rows}</tbody></table>"#
        )
    };
    layout("Pending requests", Some(v), &body)
}

/// What the reviewer needs for one request.
pub struct RequestPage<'a> {
    pub view: &'a Value,
    pub operator: Option<&'a str>,
    pub policy_json: Option<&'a str>,
    pub policy_sha256: Option<&'a str>,
    pub still_eligible: Vec<String>,
    /// Why this approver cannot vote (shown by the disabled button), if they cannot.
    pub cannot_vote: Option<String>,
    /// The approver may cast an operator vote with the sign-in alone.
    pub operator_without_passkey: bool,
    pub recent: &'a [Value],
}

pub fn request(v: &Viewer<'_>, p: &RequestPage<'_>) -> String {
    let r = p.view;
    let id = r["id"].as_str().unwrap_or_default();
    let digest = r["digest"].as_str().unwrap_or_default();
    let mut body = String::new();
    let _ = write!(
        body,
        r#"<section aria-labelledby="who"><h2 id="who">The request</h2><dl class="facts">
<dt>Request</dt><dd class="mono" id="request-id">{id}</dd>
<dt>Status</dt><dd id="request-status">{status}</dd>
<dt>Agent</dt><dd>{agent}</dd>
<dt>Operator</dt><dd>{operator}</dd>
<dt>Host</dt><dd>{host}</dd>
<dt>Asked from uid</dt><dd>{uid}</dd>
<dt>Reason <span class="claim">(the agent's own claim, not verified)</span></dt><dd><q class="reason">{reason}</q></dd>
<dt>Profile</dt><dd>{profile}</dd>
<dt>Role</dt><dd class="mono">{role}</dd>
<dt>Duration</dt><dd>{duration} s</dd>
<dt>Asked</dt><dd>{created}</dd>
<dt>Decide before</dt><dd>{expires}</dd>
<dt>Needs</dt><dd>{needs}</dd>
</dl></section>"#,
        id = esc(id),
        status = text(&r["status"]),
        agent = text(&r["agent"]),
        operator = esc(p.operator.unwrap_or("none")),
        host = text(&r["host"]),
        uid = text(&r["uid"]),
        reason = text(&r["reason"]),
        profile = text(&r["profile"]),
        role = text(&r["role"]),
        duration = text(&r["duration_seconds"]),
        created = text(&r["created"]),
        expires = text(&r["expires"]),
        needs = text(&r["needs"]),
    );
    // Votes so far, and who may still vote.
    let mut votes = String::new();
    for vote in r["votes"].as_array().into_iter().flatten() {
        let via = if vote["via"].is_object() {
            format!(
                " at the console (passkey {})",
                text(&vote["via"]["passkey"])
            )
        } else {
            " on the broker's socket".into()
        };
        let _ = write!(
            votes,
            "<li>{} {}{} at {}{}</li>",
            text(&vote["approver"]),
            if vote["approve"].as_bool() == Some(true) {
                "approved"
            } else {
                "rejected"
            },
            via,
            crate::clock::rfc3339(vote["at"].as_i64().unwrap_or(0)),
            vote["note"]
                .as_str()
                .map(|n| format!(": “{}”", esc(n)))
                .unwrap_or_default(),
        );
    }
    if votes.is_empty() {
        votes = "<li>No votes yet.</li>".into();
    }
    let eligible = if p.still_eligible.is_empty() {
        "nobody".to_owned()
    } else {
        esc(&p.still_eligible.join(", "))
    };
    let _ = write!(
        body,
        r#"<section aria-labelledby="votes"><h2 id="votes">Votes</h2><ul id="vote-list">{votes}</ul><p>May still vote: <span id="eligible">{eligible}</span>. The operator never counts as a peer; each approver counts once; a rejection is final.</p></section>"#
    );
    // What approving unlocks, what cannot be undone first.
    let _ = write!(
        body,
        r#"<section aria-labelledby="unlocks"><h2 id="unlocks">What an approved session could do that the agent's standing profiles cannot</h2>"#
    );
    let unlocks = &r["unlocks"];
    let mut any = false;
    for class in RiskClass::ALL {
        let c = &unlocks["classes"][class.as_str()];
        let Some(count) = c["count"].as_u64() else {
            continue;
        };
        any = true;
        let names: Vec<String> = c["actions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a.as_str().map(esc))
            .collect();
        let more = count.saturating_sub(names.len() as u64);
        let _ = write!(
            body,
            r#"<div class="class class-{cls}"><h3>{label}: {count} action{s}</h3><p>{describe}</p><p class="mono">{names}{more}</p></div>"#,
            cls = class.as_str(),
            label = esc(&capitalize(class.as_str())),
            s = if count == 1 { "" } else { "s" },
            describe = esc(class.describe()),
            names = names.join(", "),
            more = if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            },
        );
    }
    if let Some(m) = unlocks["managed_policies"]
        .as_array()
        .filter(|m| !m.is_empty())
    {
        any = true;
        let list: Vec<String> = m.iter().filter_map(|x| x.as_str().map(esc)).collect();
        let _ = write!(
            body,
            r#"<p class="problem">It also passes managed policies, whose grants are not analysed here: <span class="mono">{}</span></p>"#,
            list.join(", ")
        );
    }
    if unlocks.is_null() {
        body.push_str(r#"<p class="problem">The profile changed since this request: the approval could not be used.</p>"#);
    } else if !any {
        body.push_str("<p>Nothing beyond what the profile allows without approval.</p>");
    }
    body.push_str("</section>");
    // The exact policy.
    let _ = write!(
        body,
        r#"<section aria-labelledby="policy"><h2 id="policy">The exact session policy</h2><p>sha256 <span class="mono" id="policy-sha256">{sha}</span></p><pre class="policy" tabindex="0" aria-label="Session policy JSON">{json}</pre></section>"#,
        sha = esc(p.policy_sha256.unwrap_or("unknown")),
        json = esc(&pretty(
            p.policy_json.unwrap_or("(the profile is no longer loaded)")
        )),
    );
    // The decision.
    let pending = r["status"].as_str() == Some("pending");
    let _ = write!(
        body,
        r#"<section aria-labelledby="decide"><h2 id="decide">Your decision</h2><form id="vote-form" data-request="{id}" data-digest="{digest}">
<label for="note">Note (optional, recorded with your vote)</label>
<textarea id="note" name="note" maxlength="500" rows="2"></textarea>"#,
        id = esc(id),
        digest = esc(digest),
    );
    match (&p.cannot_vote, pending) {
        (_, false) => {
            let _ = write!(
                body,
                r#"<p id="why-not">This request is {} and can no longer be voted on.</p>"#,
                text(&r["status"])
            );
        }
        (Some(why), true) => {
            let _ = write!(
                body,
                r#"<p><button type="button" id="approve" disabled aria-describedby="why-not">Approve</button> <button type="button" id="reject" data-confirm="reject">Reject</button></p><p id="why-not">{}</p>"#,
                esc(why)
            );
        }
        (None, true) => {
            body.push_str(r#"<p><button type="button" id="approve" data-confirm="approve">Approve with passkey</button> <button type="button" id="reject" data-confirm="reject">Reject with passkey</button></p>"#);
        }
    }
    body.push_str("</form>");
    if p.operator_without_passkey && pending {
        let _ = write!(
            body,
            r#"<form method="post" action="/requests/{id}/operator-vote"><input type="hidden" name="csrf" value="{csrf}"><input type="hidden" name="digest" value="{digest}"><input type="hidden" name="decision" value="approve"><button type="submit" id="operator-approve">Approve as operator without a passkey</button></form>"#,
            id = esc(id),
            csrf = esc(v.csrf),
            digest = esc(digest),
        );
    }
    body.push_str("</section>");
    // The agent's recent records.
    let mut rows = String::new();
    for rec in p.recent {
        let _ = write!(
            rows,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            text(&rec["time"]),
            text(&rec["kind"]),
            text(&rec["profile"]),
            text(&rec["decision"]),
            text(rec.get("message").unwrap_or(&rec["reason"])),
        );
    }
    let _ = write!(
        body,
        r#"<section aria-labelledby="recent"><h2 id="recent">The agent's recent audit records</h2><table><caption>Newest first</caption><thead><tr><th scope="col">Time</th><th scope="col">Kind</th><th scope="col">Profile</th><th scope="col">Decision</th><th scope="col">Detail</th></tr></thead><tbody>{rows}</tbody></table></section>"#
    );
    layout(&format!("Request {id}"), Some(v), &body)
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
        .unwrap_or_default()
}

fn pretty(json: &str) -> String {
    serde_json::from_str::<Value>(json)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| json.to_owned())
}

pub struct SessionRow {
    pub request_id: String,
    pub agent: String,
    pub profile: String,
    pub expiration: String,
    pub access_key_id: String,
}

pub fn sessions(v: &Viewer<'_>, list: &[SessionRow]) -> String {
    let mut rows = String::new();
    for (i, s) in list.iter().enumerate() {
        let _ = write!(
            rows,
            r#"<tr><td class="mono">{rid}</td><td>{agent}</td><td>{profile}</td><td class="mono">{key}</td><td>{exp}</td><td><form method="post" action="/sessions/revoke"><input type="hidden" name="csrf" value="{csrf}"><input type="hidden" name="session" value="{rid}"><input type="checkbox" id="aws-{i}" name="aws" value="on"><label for="aws-{i}">also deny at AWS</label> <button type="submit" aria-label="Revoke session {rid}">Revoke</button></form></td></tr>"#,
            rid = esc(&s.request_id),
            agent = esc(&s.agent),
            profile = esc(&s.profile),
            key = esc(&s.access_key_id),
            exp = esc(&s.expiration),
            csrf = esc(v.csrf),
        );
    }
    let body = if list.is_empty() {
        "<p>No live session.</p>".to_owned()
    } else {
        format!(
            r#"<table id="sessions"><caption>Sessions that have not expired</caption><thead><tr><th scope="col">Session</th><th scope="col">Agent</th><th scope="col">Profile</th><th scope="col">Access key id</th><th scope="col">Expires</th><th scope="col">Revoke</th></tr></thead><tbody>{rows}</tbody></table>"#
        )
    };
    layout("Live sessions", Some(v), &body)
}

pub fn controls(v: &Viewer<'_>, paused: Option<&str>, tripped: &[(String, String)]) -> String {
    let mut body = String::new();
    match paused {
        Some(why) => {
            let _ = write!(
                body,
                r#"<section aria-labelledby="pause"><h2 id="pause">Issuing is paused</h2><p>{}</p><p><button type="button" id="resume" data-confirm="resume">Resume with passkey</button></p></section>"#,
                esc(why)
            );
        }
        None => {
            let _ = write!(
                body,
                r#"<section aria-labelledby="pause"><h2 id="pause">Pause every agent</h2><form method="post" action="/controls/pause"><input type="hidden" name="csrf" value="{}"><label for="pause-reason">Reason</label> <input type="text" id="pause-reason" name="reason" maxlength="200" required> <button type="submit" id="pause-button">Pause</button></form></section>"#,
                esc(v.csrf)
            );
        }
    }
    let mut rows = String::new();
    for (agent, why) in tripped {
        let _ = write!(
            rows,
            r#"<li>{a}: {w} <button type="button" data-confirm="reset" data-agent="{a}" aria-label="Reset the breaker of agent {a}">Reset with passkey</button></li>"#,
            a = esc(agent),
            w = esc(why),
        );
    }
    let _ = write!(
        body,
        r#"<section aria-labelledby="breakers"><h2 id="breakers">Tripped breakers</h2>{}</section>"#,
        if rows.is_empty() {
            "<p>No breaker is tripped.</p>".to_owned()
        } else {
            format!("<ul>{rows}</ul>")
        }
    );
    layout("Pause and breakers", Some(v), &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_shown_is_escaped() {
        assert_eq!(
            esc("<script>alert('x')</script>&\"\u{7}\u{202e}"),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;\\u{7}\\u{202e}"
        );
        let v = Viewer {
            approver: "<b>",
            subject: "\"x",
            csrf: "t",
        };
        let page = home(
            &v,
            &[serde_json::json!({"id": "<i>", "agent": "<img src=x>", "approvals": []})],
            true,
        );
        assert!(!page.contains("<img src=x>"), "{page}");
        assert!(!page.contains("<i>"), "{page}");
        assert!(page.contains("&lt;img src=x&gt;"));
    }
}
