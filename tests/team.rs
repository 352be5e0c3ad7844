//! Team mode through the real binary: three daemons (their own sockets, state directories and
//! audit chains) sharing one real PostgreSQL (Debian's package, started by the harness on a
//! free loopback port as a non-root user), against moto.

mod common;

use std::process::Output;
use std::time::Duration;

use common::postgres::Postgres;
use common::*;
use serde_json::Value;

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok_json(o: &Output) -> Value {
    assert!(o.status.success(), "{}", stderr(o));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn access_key(o: &Output) -> String {
    ok_json(o)["AccessKeyId"].as_str().unwrap().to_owned()
}

/// The request id in a pending message.
fn pending_id(o: &Output) -> String {
    assert_eq!(o.status.code(), Some(5), "{}", stderr(o));
    let e = stderr(o);
    let id = e
        .split("request ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .unwrap_or_else(|| panic!("no request id in {e:?}"));
    assert_eq!(id.len(), 16, "{e}");
    id.to_owned()
}

struct Team {
    daemons: Vec<Daemon>,
    moto: Moto,
    // Dropped last: the daemons stop before the database does.
    pg: Postgres,
}

/// The `[store]` table for daemons on `pg`, trusting the vote signatures of `signers` (lines of
/// `[store.vote_signers]`).
fn store_table(pg: &Postgres, signers: &str) -> String {
    format!(
        "[store]\nurl = \"{}\"\npassword_file = \"{}\"\nstale_after = \"3s\"\nresync = \"1s\"\n\n[store.vote_signers]\n{signers}",
        pg.url(),
        pg.password_file().display()
    )
}

/// `n` daemons on one database; every daemon trusts the others' vote signatures. `extra` goes
/// into each config (after the `[store]` table's keys: `[limits]`, `[audit]`, ...).
fn team(n: usize, extra: &str) -> Team {
    let pg = Postgres::start();
    let moto = Moto::start();
    let daemons = daemons_sharing(&moto.endpoint(), n, |signers| {
        // Every daemon: claude may also ask for breakglass-admin (two peers, never the
        // operator).
        config_text(&moto.endpoint(), &store_table(&pg, signers)).replace(
            r#"profiles = ["readonly", "s3-data", "deploy-staging"]"#,
            r#"profiles = ["readonly", "s3-data", "deploy-staging", "breakglass-admin"]"#,
        ) + "\n[approvers.bob]\nuids = [4101]\n[approvers.carol]\nuids = [4102]\n"
            + extra
    });
    let t = Team { daemons, moto, pg };
    for d in &t.daemons {
        common::wait_until(
            "the daemon to see the store",
            Duration::from_secs(10),
            || status(d)["store"]["fresh"] == true,
        );
    }
    t
}

fn status(d: &Daemon) -> Value {
    ok_json(&d.mandate(&["status", "--json"]))
}

fn creds(d: &Daemon, profile: &str) -> Output {
    d.mandate(&["credential-process", profile])
}

#[test]
fn approve_on_one_daemon_redeem_on_another_exactly_once() {
    let t = team(3, "");
    let (a, b) = (&t.daemons[0], &t.daemons[1]);
    // The agent asks on B; the request is in the shared store, so A's approver sees it.
    let id = pending_id(&creds(b, "deploy-staging"));
    let list = ok_json(&a.mandate(&["approvals", "list", "--json"]));
    assert_eq!(list[0]["id"], id.as_str(), "{list}");
    let out = a.mandate(&["approve", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    // 100 parallel redemptions spread over the three daemons: exactly one AssumeRole.
    let outs: Vec<Output> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..100)
            .map(|i| {
                let d = &t.daemons[i % 3];
                s.spawn(move || creds(d, "deploy-staging"))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(t.moto.assumed_roles().len(), 1, "exactly one AssumeRole");
    let keys: std::collections::BTreeSet<String> = outs
        .iter()
        .filter(|o| o.status.success())
        .map(access_key)
        .collect();
    assert_eq!(keys.len(), 1, "every success is the one session: {keys:?}");
    // The redemption is recorded once, by one daemon.
    let redeemed: usize = t
        .daemons
        .iter()
        .map(|d| {
            d.audit()
                .iter()
                .filter(|r| r["kind"] == "issued" && r["approval_id"] == id.as_str())
                .count()
        })
        .sum();
    assert_eq!(redeemed, 1);
}

#[test]
fn revoke_and_pause_reach_every_daemon_within_a_second_and_limits_hold_across_them() {
    let t = team(3, "\n[limits]\nmax_live_sessions = 5\n");
    let [a, b, c] = [&t.daemons[0], &t.daemons[1], &t.daemons[2]];
    for d in [a, b, c] {
        access_key(&creds(d, "readonly"));
    }
    // Revoke on A: B and C refuse within a second, cached sessions included.
    let out = a.mandate(&["revoke", "--agent", "claude"]);
    assert!(out.status.success(), "{}", stderr(&out));
    std::thread::sleep(Duration::from_secs(1));
    for d in [b, c] {
        let o = creds(d, "readonly");
        assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
        assert!(
            stderr(&o).contains("agent claude is revoked"),
            "{}",
            stderr(&o)
        );
    }
    let out = c.mandate(&["unrevoke", "--agent", "claude"]);
    assert!(out.status.success(), "{}", stderr(&out));
    std::thread::sleep(Duration::from_secs(1));
    access_key(&creds(a, "readonly"));
    // Pause on B stops all three.
    let out = b.mandate(&["pause", "--reason", "incident"]);
    assert!(out.status.success(), "{}", stderr(&out));
    std::thread::sleep(Duration::from_secs(1));
    for d in [a, b, c] {
        let o = creds(d, "s3-data");
        assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
        assert!(
            stderr(&o).contains("the broker is paused"),
            "{}",
            stderr(&o)
        );
    }
    let out = a.mandate(&["resume"]);
    assert!(out.status.success(), "{}", stderr(&out));
    std::thread::sleep(Duration::from_secs(1));
    // Limits hold across daemons: 5 live sessions in all, wherever they were issued (3
    // readonly, the one A minted after the revoke dropped its cached one, and this one).
    access_key(&creds(a, "s3-data"));
    common::wait_until(
        "C to count the others' sessions",
        Duration::from_secs(3),
        || {
            let o = c.mandate(&["request", "s3-data", "--duration", "20m"]);
            o.status.code() == Some(5) && stderr(&o).contains("unexpired sessions (the limit is 5)")
        },
    );
}

#[test]
fn a_vote_forged_in_the_database_releases_nothing() {
    let t = team(2, "");
    let (a, b) = (&t.daemons[0], &t.daemons[1]);
    let id = pending_id(&creds(a, "deploy-staging"));
    // Someone with write access to the database marks the request approved, with a vote of the
    // operator that no daemon signed.
    t.pg.psql("mandate", &format!(
        "UPDATE approvals SET stage = 'approved', version = version + 1, data = jsonb_set(jsonb_set(data::jsonb, '{{stage}}', jsonb_build_object('state', 'approved', 'at', extract(epoch from now())::bigint, 'use_by', extract(epoch from now())::bigint + 600)), '{{votes}}', jsonb_build_array(jsonb_build_object('approver', 'human', 'uids', jsonb_build_array(0), 'approve', true, 'note', null, 'at', extract(epoch from now())::bigint)))::text WHERE id = '{id}'"
    ));
    let list = ok_json(&b.mandate(&["approvals", "list", "--json"]));
    assert_eq!(
        list[0]["status"], "approved",
        "the forged row is in: {list}"
    );
    for d in [a, b] {
        let o = creds(d, "deploy-staging");
        assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
        assert!(
            stderr(&o).contains(&format!(
                "approval request {id} cannot be used: approval request {id} has 0 valid signed approvals of the 1 needed (the vote of human is not signed)"
            )),
            "{}",
            stderr(&o)
        );
    }
    assert!(t.moto.assumed_roles().is_empty(), "nothing reached STS");
    assert!(
        a.audit()
            .iter()
            .any(|r| r["kind"] == "denied" && r["code"] == "approval_closed"),
        "the refusal is audited"
    );
}

#[test]
fn the_database_down_fails_closed_and_everything_recovers_without_a_restart() {
    let mut t = team(2, "");
    let (a, b) = (&t.daemons[0], &t.daemons[1]);
    let key = access_key(&creds(a, "readonly"));
    let pending = pending_id(&creds(b, "deploy-staging"));
    t.pg.stop();
    // What needs the database is refused at once.
    let o = creds(b, "deploy-staging");
    assert_eq!(o.status.code(), Some(6), "{}", stderr(&o));
    // Approval-free issuance goes on from memory within the bound (3 s)...
    assert_eq!(access_key(&creds(a, "readonly")), key);
    // ...and stops once it passes, saying why.
    std::thread::sleep(Duration::from_secs(4));
    let o = creds(a, "readonly");
    assert_eq!(o.status.code(), Some(6), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("the broker cannot confirm its view of the shared store"),
        "{}",
        stderr(&o)
    );
    let s = status(a);
    assert_eq!(s["store"]["fresh"], false, "{s}");
    assert!(s["store"]["problem"].is_string(), "{s}");
    assert!(
        a.log().contains("the shared store is stale: issuing stops"),
        "{}",
        a.log()
    );
    // The database is back: both daemons resume by themselves.
    t.pg.start_again();
    for d in [a, b] {
        common::wait_until("issuing to resume", Duration::from_secs(15), || {
            creds(d, "readonly").status.success()
        });
    }
    let s = status(b);
    assert_eq!(s["store"]["fresh"], true, "{s}");
    assert_eq!(s["store"]["daemons"].as_array().unwrap().len(), 2, "{s}");
    // Nothing was lost: the pending request is still there to approve.
    let out = a.mandate(&["approve", &pending]);
    assert!(out.status.success(), "{}", stderr(&out));
    access_key(&creds(b, "deploy-staging"));
    assert!(
        a.log().contains("the shared store answers again"),
        "{}",
        a.log()
    );
}

#[test]
fn revoke_session_works_from_another_daemon_and_after_a_restart() {
    let mut t = team(2, "");
    let issued = creds(&t.daemons[0], "readonly");
    let key = access_key(&issued);
    let sessions = status(&t.daemons[0])["sessions"].clone();
    let request_id = sessions[0]["request_id"].as_str().unwrap().to_owned();
    // The session reaches the shared index just after it is handed out (never waited on).
    let indexed = |id: &str| {
        t.pg.psql(
            "mandate",
            &format!("SELECT 'rows=' || count(*) FROM sessions WHERE request_id = '{id}'"),
        )
        .contains("rows=1")
    };
    common::wait_until("the session in the store", Duration::from_secs(5), || {
        indexed(&request_id)
    });
    // B did not issue it, and revokes it.
    let out = t.daemons[1].mandate(&["revoke", "--session", &request_id]);
    assert!(out.status.success(), "{}", stderr(&out));
    std::thread::sleep(Duration::from_secs(1));
    // A no longer delivers that session: the next call gets a new one.
    let again = access_key(&creds(&t.daemons[0], "readonly"));
    assert_ne!(again, key);
    // After a restart of B, a session A issued is still found.
    let s3 = access_key(&creds(&t.daemons[0], "s3-data"));
    t.daemons[1].stop();
    t.daemons[1].restart();
    let sessions = status(&t.daemons[0])["sessions"].clone();
    let s3_request = sessions
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["profile"] == "s3-data")
        .unwrap()["request_id"]
        .as_str()
        .unwrap()
        .to_owned();
    common::wait_until("the session in the store", Duration::from_secs(5), || {
        indexed(&s3_request)
    });
    let out = t.daemons[1].mandate(&["revoke", "--session", &s3_request]);
    assert!(out.status.success(), "{}", stderr(&out));
    std::thread::sleep(Duration::from_secs(1));
    assert_ne!(access_key(&creds(&t.daemons[0], "s3-data")), s3);
}

#[test]
fn audit_verify_store_detects_a_truncated_local_log() {
    let mut t = team(1, "\n[audit]\ncheckpoint_every = 4\n");
    let d = &mut t.daemons[0];
    for p in ["readonly", "s3-data"] {
        access_key(&d.mandate(&["credential-process", p]));
    }
    d.stop();
    let dir = d.dir.path().join("state/audit");
    let cps = std::fs::read_to_string(dir.join("checkpoints.jsonl")).unwrap();
    let lines: Vec<&str> = cps.lines().collect();
    assert!(lines.len() >= 2, "{cps}");
    // Wait until the store has every checkpoint (the daemon anchors them as it runs and on
    // its way out), then check the intact log against it.
    let ok = d.mandate(&["audit", "verify", "--store"]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    assert!(
        String::from_utf8_lossy(&ok.stdout)
            .contains(&format!("{} of them anchored in the store", lines.len())),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
    // Cut the log back to the first checkpoint, checkpoints included: the local check cannot
    // tell.
    let first: Value = serde_json::from_str(lines[0]).unwrap();
    let seg = dir.join(first["segment"].as_str().unwrap());
    let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    f.set_len(first["offset"].as_u64().unwrap()).unwrap();
    std::fs::write(dir.join("checkpoints.jsonl"), format!("{}\n", lines[0])).unwrap();
    let local = d.mandate(&["audit", "verify"]);
    assert!(local.status.success(), "{}", stderr(&local));
    let anchored = d.mandate(&["audit", "verify", "--store"]);
    assert_eq!(anchored.status.code(), Some(3), "{}", stderr(&anchored));
    assert!(
        stderr(&anchored).contains("audit log DAMAGED"),
        "{}",
        stderr(&anchored)
    );
    // A store that holds none of this daemon's checkpoints vouches for nothing.
    t.pg.psql("mandate", "DELETE FROM checkpoints");
    let empty = t.daemons[0].mandate(&["audit", "verify", "--store"]);
    assert_eq!(empty.status.code(), Some(3), "{}", stderr(&empty));
    assert!(
        stderr(&empty).contains("the store holds no checkpoint of key"),
        "{}",
        stderr(&empty)
    );
}

/// The canary for team mode: the database password never shows in anything the daemons or
/// the CLI print, return or record, through start, outages, a wrong password and recovery.
#[test]
fn the_database_password_never_shows() {
    let mut t = team(2, "");
    let secret = t.pg.password().to_owned();
    assert!(secret.len() >= 16, "a real password: {secret:?}");
    let (a, b) = (&t.daemons[0], &t.daemons[1]);
    let mut seen: Vec<(String, String)> = Vec::new();
    let mut look = |what: &str, o: &Output| {
        seen.push((
            format!("{what} stdout"),
            String::from_utf8_lossy(&o.stdout).into(),
        ));
        seen.push((format!("{what} stderr"), stderr(o)));
    };
    look("credential-process", &creds(a, "readonly"));
    look("pending", &creds(b, "deploy-staging"));
    look("status", &a.mandate(&["status"]));
    look("status --json", &a.mandate(&["status", "--json"]));
    look("config check", &a.mandate(&["config", "check"]));
    look(
        "audit verify --store",
        &a.mandate(&["audit", "verify", "--store"]),
    );
    t.pg.stop();
    std::thread::sleep(Duration::from_secs(4));
    look("stale credential-process", &creds(a, "readonly"));
    look("stale status", &a.mandate(&["status"]));
    look("store down: approvals", &a.mandate(&["approvals", "list"]));
    look(
        "store down: audit verify --store",
        &a.mandate(&["audit", "verify", "--store"]),
    );
    t.pg.start_again();
    common::wait_until("issuing to resume", Duration::from_secs(15), || {
        creds(a, "readonly").status.success()
    });
    // A daemon started with a wrong password says so without either password.
    let wrong = "wrong-Db-Passw0rd-canary";
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, wrong).unwrap();
    std::fs::set_permissions(&pw, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let config = dir.path().join("broker.toml");
    std::fs::write(
        &config,
        config_text(
            &t.moto.endpoint(),
            &format!(
                "[store]\nurl = \"{}\"\npassword_file = \"{}\"\n",
                t.pg.url(),
                pw.display()
            ),
        ),
    )
    .unwrap();
    assert!(
        mandate_at(&config)
            .arg("init")
            .output()
            .unwrap()
            .status
            .success()
    );
    let (code, out) = serve_once(&config);
    assert_eq!(code, Some(6), "{out}");
    assert!(out.contains("password authentication failed"), "{out}");
    seen.push(("serve with a wrong password".into(), out));
    for d in [a, b] {
        seen.push(("daemon log".into(), d.log()));
        seen.push((
            "audit log".into(),
            d.audit().iter().map(|r| r.to_string()).collect(),
        ));
    }
    for (what, text) in &seen {
        assert!(
            !text.contains(&secret),
            "the database password in {what}: {text}"
        );
        assert!(
            !text.contains(wrong),
            "the wrong password in {what}: {text}"
        );
    }
}

#[test]
fn the_password_can_come_from_the_environment() {
    let pg = Postgres::start();
    let moto = Moto::start();
    let store = format!(
        "[store]\nurl = \"{}\"\npassword_env = \"MANDATE_DB_PASSWORD\"\n",
        pg.url()
    );
    let d = Daemon::start_with_env(
        &config_text(&moto.endpoint(), &store),
        &[
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("MANDATE_DB_PASSWORD", pg.password()),
        ],
    );
    access_key(&creds(&d, "readonly"));
    assert_eq!(status(&d)["store"]["kind"], "postgres");
    // The session reaches the shared index (written just after delivery, never waited on).
    common::wait_until(
        "the session in the shared index",
        Duration::from_secs(5),
        || {
            pg.psql("mandate", "SELECT 'sessions=' || count(*) FROM sessions")
                .contains("sessions=1")
        },
    );
}

/// A database writer rewrites what a request needs or what it looks like; the daemons neither
/// sign a vote on it nor redeem it, and none of them falls over.
#[test]
fn a_request_row_rewritten_in_the_database_is_neither_voted_on_nor_redeemed() {
    let t = team(2, "");
    let (a, b) = (&t.daemons[0], &t.daemons[1]);
    let id = pending_id(&creds(a, "breakglass-admin"));
    let two = "2 peer approvers other than the operator";
    // The two-person request becomes an operator one: the operator's vote is refused.
    t.pg.psql("mandate", &format!(
        "UPDATE approvals SET version = version + 1, data = jsonb_set(data::jsonb, '{{requirement}}', '{{\"operator\":{{\"operator\":\"human\"}}}}'::jsonb)::text WHERE id = '{id}'"
    ));
    let o = b.mandate(&["approve", &id]);
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert_eq!(
        stderr(&o),
        format!(
            "mandate: cannot vote on request {id}: it asks for operator human, but its profile needs {two} here; nothing was recorded\n"
        )
    );
    // Marked approved, needing nobody (n = 0): not redeemed, and the daemon keeps serving.
    t.pg.psql("mandate", &format!(
        "UPDATE approvals SET stage = 'approved', version = version + 1, data = jsonb_set(jsonb_set(data::jsonb, '{{requirement}}', '{{\"peers\":{{\"n\":0,\"operator\":\"human\"}}}}'::jsonb), '{{stage}}', jsonb_build_object('state', 'approved', 'at', extract(epoch from now())::bigint, 'use_by', extract(epoch from now())::bigint + 600))::text WHERE id = '{id}'"
    ));
    let o = creds(a, "breakglass-admin");
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!(
            "approval request {id} cannot be used: approval request {id} asks for 0 peer approvers other than the operator, but its profile needs {two} here"
        )),
        "{}",
        stderr(&o)
    );
    access_key(&creds(a, "readonly"));
    // Another request is shown to the approver as something harmless (a read-only profile,
    // operator approval) while its digest stays the real one: the vote is refused.
    let o = a.mandate(&["request", "breakglass-admin", "--reason", "second"]);
    let id2 = pending_id(&o);
    t.pg.psql("mandate", &format!(
        "UPDATE approvals SET version = version + 1, data = jsonb_set(jsonb_set(jsonb_set(data::jsonb, '{{requirement}}', '{{\"operator\":{{\"operator\":\"human\"}}}}'::jsonb), '{{binding,profile}}', '\"readonly\"'), '{{binding,reason}}', '\"routine read\"')::text WHERE id = '{id2}'"
    ));
    let o = b.mandate(&["approve", &id2]);
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert_eq!(
        stderr(&o),
        format!(
            "mandate: cannot vote on request {id2}: it does not match its own binding (the store was edited); nothing was recorded\n"
        )
    );
    assert!(
        t.moto
            .assumed_roles()
            .iter()
            .all(|r| !r.to_string().contains("breakglass"))
    );
    assert_eq!(
        t.moto.assumed_roles().len(),
        1,
        "only the readonly session reached STS"
    );
}
