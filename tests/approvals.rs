//! Approvals, revocation, breakers and the pause through the real binary: the daemon against
//! moto, clients as the AWS CLI would run them, humans and agents as different uids.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok_json(o: &Output) -> Value {
    assert!(o.status.success(), "{}", stderr(o));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// The request id in a pending message (`... request 0123456789abcdef is pending ...`).
fn pending_id(o: &Output) -> String {
    assert_eq!(o.status.code(), Some(5), "{}", stderr(o));
    assert!(o.stdout.is_empty(), "nothing on stdout while pending");
    let e = stderr(o);
    let id = e
        .split("request ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .unwrap_or_else(|| panic!("no request id in {e:?}"));
    assert_eq!(id.len(), 16, "{e}");
    assert!(e.contains(&format!("`mandate approve {id}`")), "{e}");
    assert_eq!(e.lines().count(), 1, "one line: {e}");
    id.to_owned()
}

/// Opens the daemon's socket and config to other uids (only the peer-uid check stands).
fn open_up(d: &Daemon) -> std::path::PathBuf {
    for p in [d.dir.path(), &d.dir.path().join("run")] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(d.socket(), std::fs::Permissions::from_mode(0o666)).unwrap();
    std::fs::set_permissions(&d.config, std::fs::Permissions::from_mode(0o644)).unwrap();
    install_binaries(d.dir.path())
}

/// `mandate ARGS` as another uid.
fn as_uid(d: &Daemon, bin: &std::path::Path, uid: u32, args: &[&str]) -> Output {
    Command::new("setpriv")
        .args([
            &format!("--reuid={uid}"),
            &format!("--regid={uid}"),
            "--clear-groups",
        ])
        .arg(bin)
        .arg("--config")
        .arg(&d.config)
        .args(args)
        .env_clear()
        .output()
        .expect("setpriv (util-linux)")
}

fn kinds(d: &Daemon, kind: &str) -> Vec<Value> {
    d.audit()
        .into_iter()
        .filter(|r| r["kind"] == kind)
        .collect()
}

fn verify(d: &Daemon) {
    let out = d.mandate(&["audit", "verify"]);
    assert!(out.status.success(), "audit verify: {}", stderr(&out));
}

/// The Kiro scenario on a single-user laptop: the agent asks for a destructive capability, gets
/// a pending id, a human approves, the agent proceeds; a revoke stops it.
#[test]
fn ask_first_approval_then_revoke_on_a_laptop() {
    let moto = Moto::start();
    let mut d = Daemon::start(&config_text(&moto.endpoint(), ""));
    // claude and its operator share this uid: the daemon says approval is advisory.
    assert!(
        d.log().contains(
            "agent claude and its operator human share uid 0: operator approval for this agent is advisory, not a boundary"
        ),
        "{}",
        d.log()
    );
    let id = pending_id(&d.mandate(&["credential-process", "deploy-staging"]));
    assert!(moto.assumed_roles().is_empty(), "nothing reached STS");

    let list = ok_json(&d.mandate(&["approvals", "list", "--json"]));
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["id"], id.as_str());
    assert_eq!(list[0]["status"], "pending");
    assert_eq!(list[0]["agent"], "claude");
    assert_eq!(list[0]["profile"], "deploy-staging");
    assert_eq!(list[0]["needs"], "operator human");
    let text = d.mandate(&["approvals", "list"]);
    assert!(String::from_utf8_lossy(&text.stdout).contains(&id));

    let out = d.mandate(&["approve", &id, "--note", "staging only"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("approved request {id}: the agent may now use it once\n")
    );
    // The agent proceeds, through the AWS CLI's credential_process.
    let aws = aws_cli()
        .args(["--endpoint-url", &moto.endpoint()])
        .args(["sts", "get-caller-identity", "--profile", "agent"])
        .env("AWS_CONFIG_FILE", d.aws_config("deploy-staging"))
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .output()
        .unwrap();
    assert!(aws.status.success(), "{}", stderr(&aws));
    let who: Value = serde_json::from_slice(&aws.stdout).unwrap();
    assert!(
        who["Arn"].as_str().unwrap().contains("/mandate-claude-"),
        "{who}"
    );
    assert_eq!(moto.assumed_roles().len(), 1);
    // The approval is used: it cannot be voted on again.
    let again = d.mandate(&["approve", &id]);
    assert_eq!(again.status.code(), Some(5));
    assert_eq!(
        stderr(&again),
        format!("mandate: request {id} is redeemed and can no longer be voted on\n")
    );

    // A human revokes the agent: the next call fails at once, cache or not.
    let out = d.mandate(&["revoke", "--agent", "claude"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with(
            "revoked agent claude: no new credentials from now on; 1 cached sessions dropped"
        ),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    for profile in ["deploy-staging", "readonly"] {
        let out = d.mandate(&["credential-process", profile]);
        assert_eq!(out.status.code(), Some(5));
        assert!(out.stdout.is_empty());
        assert!(
            stderr(&out).starts_with("mandate: agent claude is revoked (by human at "),
            "{}",
            stderr(&out)
        );
    }
    // It survives a restart.
    d.stop();
    d.restart();
    let out = d.mandate(&["credential-process", "readonly"]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    let out = d.mandate(&["unrevoke", "--agent", "claude"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = d.mandate(&["credential-process", "readonly"]);
    assert!(out.status.success(), "{}", stderr(&out));

    assert_eq!(kinds(&d, "pending")[0]["approval_id"], id.as_str());
    let approved = kinds(&d, "approved");
    assert_eq!(approved.len(), 1);
    assert_eq!(approved[0]["approver"], "human");
    assert_eq!(approved[0]["note"], "staging only");
    let issued = kinds(&d, "issued");
    assert_eq!(issued[0]["approval_id"], id.as_str());
    let revoked: Vec<Value> = kinds(&d, "revoked")
        .iter()
        .map(|r| r["decision"].clone())
        .collect();
    assert_eq!(revoked, [json!("revoked"), json!("unrevoked")]);
    verify(&d);
}

/// Agents running as their own uids: they can never approve; the operator approves ask-first
/// requests; the two-person rule needs two approvers other than the operator.
#[test]
fn agents_cannot_approve_and_peers_never_include_the_operator() {
    let moto = Moto::start();
    let extra = r#"
[agents.bot]
profiles = ["deploy-staging", "breakglass-admin"]
uids = [65534]
operator = "human"

[approvers.bob]
uids = [1]
[approvers.carol]
uids = [2]
"#;
    let d = Daemon::start(&config_text(&moto.endpoint(), extra));
    assert!(
        !d.log().contains("agent bot and its operator"),
        "{}",
        d.log()
    );
    let bin = open_up(&d);
    const BOT: u32 = 65534;

    let id = pending_id(&as_uid(
        &d,
        &bin,
        BOT,
        &["credential-process", "deploy-staging"],
    ));
    // Self-approval: the agent's own uid is no approver.
    let out = as_uid(&d, &bin, BOT, &["approve", &id]);
    assert_eq!(out.status.code(), Some(5));
    assert_eq!(
        stderr(&out),
        "mandate: uid 65534 belongs to agent bot and to no approver: agents cannot approve, revoke or pause\n"
    );
    // Agents cannot reject, revoke, pause or reset breakers either.
    for args in [
        &["reject", &id][..],
        &["revoke", "--all"],
        &["pause"],
        &["breaker", "reset", "bot"],
    ] {
        let out = as_uid(&d, &bin, BOT, args);
        assert_eq!(out.status.code(), Some(5), "{args:?}: {}", stderr(&out));
    }
    // Another approver is not the operator.
    let out = as_uid(&d, &bin, 1, &["approve", &id]);
    assert_eq!(out.status.code(), Some(5));
    assert_eq!(
        stderr(&out),
        format!("mandate: only human, agent bot's operator, can approve request {id}\n")
    );
    let out = d.mandate(&["approve", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    let creds = ok_json(&as_uid(
        &d,
        &bin,
        BOT,
        &["credential-process", "deploy-staging"],
    ));
    assert!(creds["AccessKeyId"].as_str().is_some());

    // Two-person rule.
    let id = pending_id(&as_uid(
        &d,
        &bin,
        BOT,
        &["credential-process", "breakglass-admin"],
    ));
    let out = d.mandate(&["approve", &id]);
    assert_eq!(out.status.code(), Some(5));
    assert!(
        stderr(&out).contains(
            "human is agent bot's operator and does not count toward the two-person rule"
        ),
        "{}",
        stderr(&out)
    );
    let out = as_uid(&d, &bin, 1, &["approve", &id]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("counted bob's approval of request {id}: 1/2 approvals\n")
    );
    let out = as_uid(&d, &bin, 1, &["approve", &id]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("bob already approved request {id} (counted once): 1/2 approvals\n")
    );
    assert_eq!(
        pending_id(&as_uid(
            &d,
            &bin,
            BOT,
            &["credential-process", "breakglass-admin"]
        )),
        id
    );
    let out = as_uid(&d, &bin, 2, &["approve", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    let creds = ok_json(&as_uid(
        &d,
        &bin,
        BOT,
        &["credential-process", "breakglass-admin"],
    ));
    assert!(creds["SessionToken"].as_str().is_some());
    assert_eq!(moto.assumed_roles().len(), 2);

    // An agent's status shows the revocations that stop it, not other agents'.
    assert!(d.mandate(&["revoke", "--agent", "claude"]).status.success());
    let mine = ok_json(&as_uid(&d, &bin, BOT, &["status", "--json"]));
    assert_eq!(mine["revocations"], json!([]), "{mine}");
    let all = ok_json(&d.mandate(&["status", "--json"]));
    assert_eq!(
        all["revocations"][0]["scope"],
        json!({"kind": "agent", "name": "claude"})
    );
    assert!(d.mandate(&["revoke", "--agent", "bot"]).status.success());
    let mine = ok_json(&as_uid(&d, &bin, BOT, &["status", "--json"]));
    assert_eq!(mine["revocations"].as_array().unwrap().len(), 1, "{mine}");
    assert_eq!(mine["revocations"][0]["scope"]["name"], "bot");

    let votes: Vec<(Value, Value)> = kinds(&d, "approved")
        .iter()
        .map(|r| (r["approver"].clone(), r["decision"].clone()))
        .collect();
    assert_eq!(
        votes,
        [
            (json!("human"), json!("approved")),
            (json!("bob"), json!("counted")),
            (json!("bob"), json!("duplicate")),
            (json!("carol"), json!("approved")),
        ]
    );
    let refused = kinds(&d, "denied")
        .iter()
        .filter(|r| r["code"] == "not_approver" || r["code"] == "vote_refused")
        .count();
    assert_eq!(refused, 7);
    verify(&d);
}

/// `mandate request --wait` blocks until a human decides; a rejection is final and shown.
#[test]
fn request_wait_until_approved_or_rejected() {
    let moto = Moto::start();
    let d = Daemon::start(&config_text(&moto.endpoint(), ""));
    let wait = |reason: &str, duration: &str| {
        mandate_at(&d.config)
            .args([
                "request",
                "deploy-staging",
                "--reason",
                reason,
                "--duration",
                duration,
            ])
            .args(["--wait", "--timeout", "60s"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let pending = || -> Option<String> {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            let list = ok_json(&d.mandate(&["approvals", "list", "--json"]));
            if let Some(r) = list
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["status"] == "pending")
            {
                return r["id"].as_str().map(str::to_owned);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    };

    let child = wait("roll out the fix", "30m");
    let id = pending().expect("a pending request");
    assert!(d.mandate(&["approve", &id]).status.success());
    let out = child.wait_with_output().unwrap();
    let v = ok_json(&out);
    assert_eq!(v["approval"]["id"], id.as_str());
    assert!(v["AccessKeyId"].as_str().is_some());
    assert!(stderr(&out).contains(&format!("request {id} is pending")));

    // (A shorter session than the approved one: the cached, approved session does not apply.)
    let child = wait("drop the prod table", "20m");
    let id = pending().expect("a pending request");
    let out = d.mandate(&["reject", &id, "--note", "no"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(5));
    assert!(out.stdout.is_empty());
    assert!(
        stderr(&out).ends_with(&format!(
            "mandate: approval request {id} is rejected by human: no; nothing was issued\n"
        )),
        "{}",
        stderr(&out)
    );
    assert_eq!(moto.assumed_roles().len(), 1);
    verify(&d);
}

/// Breaker, rate limit, pause and resume through the CLI, each audited.
#[test]
fn breaker_rate_limit_pause_and_resume() {
    let moto = Moto::start();
    let extra = "\n[limits]\nbreaker_denials = 3\nmax_issuances = 2\nwindow = \"1h\"\n";
    let mut d = Daemon::start(&config_text(&moto.endpoint(), extra));
    let code = |d: &Daemon, args: &[&str]| d.mandate(args).status.code();

    // Rate limit: two new sessions per hour; a third (new duration, so not cached) is refused.
    for dur in ["15m", "16m"] {
        assert_eq!(
            code(&d, &["request", "readonly", "--duration", dur]),
            Some(0)
        );
    }
    let out = d.mandate(&["request", "readonly", "--duration", "17m"]);
    assert_eq!(out.status.code(), Some(5));
    assert!(
        stderr(&out)
            .starts_with("mandate: agent claude reached its limit of 2 new sessions per 3600 s"),
        "{}",
        stderr(&out)
    );
    // Cached deliveries are not issuances.
    assert_eq!(
        code(&d, &["request", "readonly", "--duration", "15m"]),
        Some(5),
        "custom durations are never cached"
    );
    // That was the second denial; one more trips the breaker. (An unknown profile is exit 4,
    // "not found", and still a denial.)
    assert_eq!(
        code(&d, &["credential-process", "no-such-profile"]),
        Some(4)
    );
    let out = d.mandate(&["credential-process", "s3-data"]);
    assert_eq!(out.status.code(), Some(5));
    assert!(
        stderr(&out).contains("is locked by its circuit breaker")
            && stderr(&out).contains("mandate breaker reset claude"),
        "{}",
        stderr(&out)
    );
    // Survives a restart.
    d.stop();
    d.restart();
    assert_eq!(code(&d, &["credential-process", "s3-data"]), Some(5));
    let out = d.mandate(&["breaker", "reset", "claude"]);
    assert!(out.status.success(), "{}", stderr(&out));

    let out = d.mandate(&["pause", "--reason", "incident 7"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = d.mandate(&["credential-process", "readonly"]);
    assert_eq!(out.status.code(), Some(5));
    assert!(
        stderr(&out).contains("the broker is paused (by human at "),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("incident 7"));
    let status = ok_json(&d.mandate(&["status", "--json"]));
    assert_eq!(status["paused"]["reason"], "incident 7");
    assert!(d.mandate(&["resume"]).status.success());
    // Resumed; the rate-limit window still holds claude's two sessions, so ask for a cached one.
    let out = d.mandate(&["credential-process", "readonly"]);
    assert!(out.status.success(), "{}", stderr(&out));

    let breaker: Vec<Value> = kinds(&d, "breaker")
        .iter()
        .map(|r| r["decision"].clone())
        .collect();
    assert_eq!(breaker, [json!("tripped"), json!("reset")]);
    // Pause and resume have kinds of their own (issue 17: they were recorded as `breaker`).
    let pause: Vec<Value> = d
        .audit()
        .iter()
        .filter(|r| r["kind"] == "paused" || r["kind"] == "resumed")
        .map(|r| json!([r["kind"], r["decision"]]))
        .collect();
    assert_eq!(
        pause,
        [json!(["paused", "paused"]), json!(["resumed", "resumed"])]
    );
    let codes: Vec<Value> = kinds(&d, "denied")
        .iter()
        .map(|r| r["code"].clone())
        .collect();
    assert!(codes.contains(&json!("rate_limited")), "{codes:?}");
    assert!(codes.contains(&json!("breaker_open")));
    assert!(codes.contains(&json!("paused")));
    verify(&d);
}

/// `revoke --aws` puts exactly the broker's policy on the role; the independent IAM evaluator
/// says that policy denies the revoked agent's older sessions and allows others and newer ones;
/// `revoke --gc` removes it once no session it covers can be alive.
#[test]
fn revoke_aws_writes_the_role_policy_and_gc_removes_it() {
    let moto = Moto::start();
    let mut d = Daemon::start(&config_text(&moto.endpoint(), ""));
    let out = d.mandate(&["credential-process", "readonly"]);
    assert!(out.status.success(), "{}", stderr(&out));

    let v = ok_json(&d.mandate(&["revoke", "--agent", "claude", "--aws", "--json"]));
    let policies = v["policies"].as_array().unwrap();
    // Every example role points at the one seeded role, so one policy.
    assert_eq!(policies.len(), 1, "{v}");
    assert_eq!(
        policies[0]["role_arn"],
        "arn:aws:iam::123456789012:role/agent-role"
    );
    let written: Value = serde_json::from_str(policies[0]["document"].as_str().unwrap()).unwrap();
    let get_policy = || {
        aws_cli()
            .args(["--endpoint-url", &moto.endpoint(), "iam", "get-role-policy"])
            .args([
                "--role-name",
                "agent-role",
                "--policy-name",
                "mandate-revocations",
            ])
            .args(["--query", "PolicyDocument", "--output", "json"])
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .output()
            .unwrap()
    };
    let at_moto = get_policy();
    assert!(at_moto.status.success(), "{}", stderr(&at_moto));
    let at_moto: Value = serde_json::from_slice(&at_moto.stdout).unwrap();
    assert_eq!(
        at_moto, written,
        "moto holds exactly the policy the broker wrote"
    );

    let t = written["Statement"][0]["Condition"]["DateLessThan"]["aws:TokenIssueTime"]
        .as_str()
        .unwrap()
        .to_owned();
    let case = |name: &str, who: &str, issued: &str| {
        json!({
            "name": name,
            "action": "cloudformation:DeleteStack",
            "resource": "arn:aws:cloudformation:us-east-1:123456789012:stack/prod/1",
            "context": {"aws:SourceIdentity": who, "aws:TokenIssueTime": issued},
        })
    };
    let got = iam_sim_revocation(
        &[at_moto],
        &[
            case("claude-older", "mandate-claude", "2026-01-01T00:00:00Z"),
            case("claude-newer", "mandate-claude", "2099-01-01T00:00:00Z"),
            case("other-older", "mandate-other", "2026-01-01T00:00:00Z"),
        ],
    );
    let want: std::collections::BTreeMap<String, String> = [
        ("claude-older", "ExplicitlyDenied"),
        ("claude-newer", "Allowed"),
        ("other-older", "Allowed"),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_owned(), b.to_owned()))
    .collect();
    assert_eq!(got, want, "revoked at {t}");

    // Too early to collect: --gc rewrites the same document (idempotent).
    let v = ok_json(&d.mandate(&["revoke", "--gc", "--json"]));
    assert_eq!(v["removed"], json!([]));
    let again: Value = serde_json::from_slice(&get_policy().stdout).unwrap();
    assert_eq!(again, written);

    // Thirteen hours later (moved in the store while the daemon is down), --gc deletes it.
    d.stop();
    let db = d.dir.path().join("state/approvals.db");
    let out = python()
        .args([
            "-c",
            "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); \
             c.execute(\"UPDATE revocations SET data = json_set(data, '$.at', json_extract(data, '$.at') - 46800)\"); \
             c.commit()",
        ])
        .arg(&db)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    d.restart();
    let v = ok_json(&d.mandate(&["revoke", "--gc", "--json"]));
    assert_eq!(
        v["removed"],
        json!(["arn:aws:iam::123456789012:role/agent-role"])
    );
    let gone = get_policy();
    assert!(!gone.status.success());
    assert!(stderr(&gone).contains("NoSuchEntity"), "{}", stderr(&gone));
    // The agent is still revoked for new credentials until someone lifts it.
    assert_eq!(
        d.mandate(&["credential-process", "readonly"]).status.code(),
        Some(5)
    );
    let decisions: Vec<Value> = kinds(&d, "revoked")
        .iter()
        .map(|r| r["decision"].clone())
        .collect();
    assert_eq!(decisions, [json!("revoked+aws"), json!("gc"), json!("gc")]);
    verify(&d);
}

const WEBHOOK: &str = r#"
import http.server, sys
port, path = int(sys.argv[1]), sys.argv[2]
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        with open(path, "ab") as f:
            f.write(self.headers.get("content-type", "").encode() + b" " + body + b"\n")
        self.send_response(204)
        self.end_headers()
    def log_message(self, *a):
        pass
http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
"#;

fn lines_eventually(path: &std::path::Path, n: usize) -> Vec<String> {
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        if lines.len() >= n || start.elapsed() > Duration::from_secs(30) {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A pending approval and a tripped breaker run the notification command (event JSON on stdin)
/// and POST the event to the webhook; a command that hangs is killed at the timeout and delays
/// nobody's issuance.
#[test]
fn notifications_reach_the_command_and_the_webhook_without_delaying_issuance() {
    let moto = Moto::start();
    let scratch = tempfile::tempdir().unwrap();
    let events = scratch.path().join("events.jsonl");
    let hooks = scratch.path().join("hooks.txt");
    let port = free_port();
    let _hook = Guard(
        python()
            .args(["-c", WEBHOOK, &port.to_string()])
            .arg(&hooks)
            .spawn()
            .unwrap(),
    );
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < Duration::from_secs(10), "webhook server");
        std::thread::sleep(Duration::from_millis(50));
    }
    let extra = format!(
        "\n[limits]\nbreaker_denials = 2\n\n[notify]\ncommand = [\"sh\", \"-c\", \"cat >> {}; echo >> {}; sleep 30\"]\nwebhook = \"http://127.0.0.1:{port}/hook\"\ntimeout = \"2s\"\n",
        events.display(),
        events.display()
    );
    let d = Daemon::start(&config_text(&moto.endpoint(), &extra));
    let id = pending_id(&d.mandate(&["credential-process", "deploy-staging"]));
    // The notification command is still running (it sleeps); issuance goes on regardless.
    let out = d.mandate(&["credential-process", "readonly"]);
    assert!(out.status.success(), "{}", stderr(&out));
    for _ in 0..2 {
        assert_eq!(
            d.mandate(&["credential-process", "nope"]).status.code(),
            Some(4)
        );
    }
    assert_eq!(
        d.mandate(&["credential-process", "readonly"]).status.code(),
        Some(5),
        "tripped"
    );

    let got = lines_eventually(&events, 2);
    assert_eq!(got.len(), 2, "{got:?}\n{}", d.log());
    let pending: Value = serde_json::from_str(&got[0]).unwrap();
    assert_eq!(pending["event"], "approval_pending");
    assert_eq!(pending["id"], id.as_str());
    assert_eq!(pending["agent"], "claude");
    assert_eq!(pending["profile"], "deploy-staging");
    assert_eq!(pending["approve"], format!("mandate approve {id}"));
    let tripped: Value = serde_json::from_str(&got[1]).unwrap();
    assert_eq!(tripped["event"], "breaker_tripped");
    assert_eq!(tripped["reset"], "mandate breaker reset claude");

    let posted = lines_eventually(&hooks, 2);
    assert_eq!(posted.len(), 2, "{posted:?}\n{}", d.log());
    for (line, event) in posted.iter().zip(["approval_pending", "breaker_tripped"]) {
        let (ctype, body) = line.split_once(' ').unwrap();
        assert_eq!(ctype, "application/json");
        let v: Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["event"], event);
    }
    assert!(
        d.log().contains("notification command failed") && d.log().contains("killed after 2 s"),
        "{}",
        d.log()
    );
}

/// An agent bound to profiles whose approvals nobody could give is a config error, reported
/// before anything is bound.
#[test]
fn agents_must_have_someone_who_can_approve_their_profiles() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("broker.toml");
    let extra =
        "\n[agents.solo]\nprofiles = [\"deploy-staging\", \"breakglass-admin\"]\nuids = [4242]\n";
    std::fs::write(&cfg, config_text("http://127.0.0.1:9", extra)).unwrap();
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (code, err) = serve_once(&cfg);
    assert_eq!(code, Some(3), "{err}");
    let label = cfg.display();
    assert_eq!(
        err,
        format!(
            "{label}: agents.solo: profile breakglass-admin needs 2 peer approvers, but only 1 qualify (the operator and approvers sharing a uid with the agent never count)\n\
             {label}: agents.solo: profile deploy-staging needs its operator's approval, but the agent has no operator (set operator = \"NAME\" to one of [approvers])\n\
             error: 2 problem(s) in the broker config or its profiles\n"
        )
    );
}

/// One raw request on the socket, as an agent's own client would send it.
fn raw_request(d: &Daemon, request: &Value) -> Value {
    use std::io::{BufRead, BufReader, Write};
    let mut s = std::os::unix::net::UnixStream::connect(d.socket()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(format!("{request}\n").as_bytes()).unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    serde_json::from_str(line.trim()).unwrap_or(Value::Null)
}

/// Review point 5: counting and inserting pending requests is one atomic step. 40 concurrent
/// raw clients with distinct reasons open exactly `max_pending` requests; 20 concurrent ones
/// with the same binding share one.
#[test]
fn max_pending_holds_under_concurrency_and_a_same_digest_request_returns_the_pending_one() {
    let moto = Moto::start();
    let d = std::sync::Arc::new(Daemon::start(&config_text(
        &moto.endpoint(),
        "[approvals]\nmax_pending = 5\n[limits]\nbreaker_denials = 1000\n",
    )));
    let threads: Vec<_> = (0..40)
        .map(|i| {
            let d = d.clone();
            std::thread::spawn(move || {
                raw_request(
                    &d,
                    &json!({"op": "credentials", "profile": "deploy-staging", "reason": format!("reason {i}")}),
                )
            })
        })
        .collect();
    let answers: Vec<Value> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let list = ok_json(&d.mandate(&["approvals", "list", "--json"]));
    let pending: Vec<&Value> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["status"] == "pending")
        .collect();
    assert_eq!(pending.len(), 5, "{list}");
    let too_many = answers
        .iter()
        .filter(|a| a.to_string().contains("too_many_pending"))
        .count();
    assert_eq!(too_many, 35, "{answers:?}");

    // The same binding from 20 clients at once: one request, the same id for everyone.
    let d2 = Daemon::start(&config_text(&moto.endpoint(), ""));
    let d2 = std::sync::Arc::new(d2);
    let threads: Vec<_> = (0..20)
        .map(|_| {
            let d = d2.clone();
            std::thread::spawn(move || {
                raw_request(
                    &d,
                    &json!({"op": "credentials", "profile": "deploy-staging", "reason": "the same"}),
                )
            })
        })
        .collect();
    let answers: Vec<String> = threads
        .into_iter()
        .map(|t| t.join().unwrap().to_string())
        .collect();
    let list = ok_json(&d2.mandate(&["approvals", "list", "--json"]));
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    let id = list[0]["id"].as_str().unwrap();
    assert!(answers.iter().all(|a| a.contains(id)), "{answers:?}");
    let pending_records = d2.audit().iter().filter(|r| r["kind"] == "pending").count();
    assert_eq!(pending_records, 1);
}

/// Review point 6: bidi and zero-width characters in a reason never reach an approver's
/// terminal raw (`approvals list`, `approve`, `audit tail`, `audit show`), and `approve` shows
/// what it approves and asks on a terminal.
#[test]
fn hostile_reasons_are_escaped_and_approve_shows_the_request_and_asks() {
    let moto = Moto::start();
    let d = Daemon::start(&config_text(&moto.endpoint(), ""));
    let reason = "fix prod\u{202e}gnirts\u{200b}\u{2066}hidden\u{2069}\u{feff}\u{1b}[2J";
    let out = d.mandate(&["request", "deploy-staging", "--reason", reason]);
    let id = pending_id(&out);
    let hostile = [
        '\u{202e}', '\u{200b}', '\u{2066}', '\u{2069}', '\u{feff}', '\u{1b}',
    ];
    let seq = {
        let audit = d.audit();
        audit.iter().find(|r| r["kind"] == "pending").unwrap()["seq"].to_string()
    };
    for args in [
        vec!["approvals", "list"],
        vec!["approvals", "list", "--json"],
        vec!["audit", "tail"],
        vec!["audit", "tail", "--json"],
        vec!["audit", "show", seq.as_str()],
    ] {
        let out = d.mandate(&args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        let text = String::from_utf8_lossy(&out.stdout);
        for c in hostile {
            assert!(
                !text.contains(c),
                "{args:?} printed a raw U+{:04X}: {text}",
                c as u32
            );
        }
    }

    // On a terminal, `approve` shows the request and asks; "n" approves nothing.
    let script = |answer: &str, extra: &str| {
        let cmd = format!(
            "{} --config {} approve {id} {extra}",
            MANDATE,
            d.config.display()
        );
        let mut child = Command::new("script")
            .args(["-qec", &cmd, "/dev/null"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("script (util-linux)");
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(answer.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let out = script("n\n", "");
    let screen = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(5), "{screen}");
    for want in [
        format!("request {id} (pending"),
        "  agent     claude".to_owned(),
        "  profile   deploy-staging".to_owned(),
        "  role      arn:aws:iam::123456789012:role/agent-role".to_owned(),
        "  duration  1800 s".to_owned(),
        "(the agent's own claim)".to_owned(),
        "  unlocks   destroy (".to_owned(),
        "cloudformation:DeleteStack".to_owned(),
        "  unlocks   escalate (".to_owned(),
        "lambda:UpdateFunctionCode".to_owned(),
        "Approve this request? [y/N]".to_owned(),
        "not approved".to_owned(),
    ] {
        assert!(screen.contains(&want), "missing {want:?} in:\n{screen}");
    }
    for c in hostile {
        assert!(
            !screen.contains(c),
            "a raw U+{:04X} on the terminal",
            c as u32
        );
    }
    let list = ok_json(&d.mandate(&["approvals", "list", "--json"]));
    assert_eq!(list[0]["status"], "pending", "declining approved nothing");
    // Destroy is listed before escalate.
    assert!(screen.find("unlocks   destroy").unwrap() < screen.find("unlocks   escalate").unwrap());

    let out = script("y\n", "");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let list = ok_json(&d.mandate(&["approvals", "list", "--json", "--all"]));
    assert_eq!(list[0]["status"], "approved");

    // --yes skips the question on a terminal (for scripts that run under one).
    let id2 = pending_id(&d.mandate(&["request", "deploy-staging", "--reason", "second"]));
    let cmd = format!(
        "{} --config {} approve {id2} --yes",
        MANDATE,
        d.config.display()
    );
    let out = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let screen = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{screen}");
    assert!(!screen.contains("[y/N]"), "{screen}");
}

/// Issue 17 point 5: messages that say the right thing (table of command → exit code and the
/// exact words).
#[test]
fn messages_say_the_right_thing() {
    let moto = Moto::start();
    let d = Daemon::start(&config_text(&moto.endpoint(), ""));
    // A rejection reaches an agent using credential_process, and the same request does not
    // silently open a new one.
    let id = pending_id(&d.mandate(&["credential-process", "deploy-staging"]));
    let out = d.mandate(&["reject", &id, "--note", "not during the freeze"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = d.mandate(&["credential-process", "deploy-staging"]);
    assert_eq!(out.status.code(), Some(5));
    assert_eq!(
        stderr(&out),
        format!(
            "mandate: approval request {id} is rejected by human: not during the freeze; nothing was issued\n"
        )
    );
    let list = ok_json(&d.mandate(&["approvals", "list", "--json"]));
    assert!(
        list.as_array().unwrap().is_empty(),
        "no new request: {list}"
    );

    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (
            vec!["breaker", "reset", "claud"],
            5,
            "mandate: there is no agent \"claud\" in the broker config; did you mean \"claude\"?\n",
        ),
        (
            vec!["env", "nope"],
            4,
            "mandate: no profile named \"nope\"\n",
        ),
        (
            vec!["credential-process", "nope"],
            4,
            "mandate: no profile named \"nope\"\n",
        ),
        (
            vec!["request", "s3-data", "--duration", "2h"],
            5,
            "mandate: duration 7200 s is outside 900 to 3600 s, the range allowed for s3-data\n",
        ),
    ];
    for (args, code, want) in cases {
        let out = d.mandate(&args);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {}", stderr(&out));
        assert_eq!(stderr(&out), want, "{args:?}");
    }
    // revoke --session says only that session is revoked.
    let out = d.mandate(&["credential-process", "readonly"]);
    assert!(out.status.success());
    let session = d.audit().iter().find(|r| r["kind"] == "issued").unwrap()["request_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = d.mandate(&["revoke", "--session", &session]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("that session is no longer served"), "{text}");
    assert!(!text.contains("no new credentials from now on"), "{text}");
    // gc with nothing to collect says so.
    let out = d.mandate(&["revoke", "--gc"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "nothing to collect\n");
    // profiles show suggests the near name.
    let out = d.mandate(&["profiles", "show", "s3-dat"]);
    assert_eq!(out.status.code(), Some(4));
    assert!(
        stderr(&out).ends_with("; did you mean \"s3-data\"?\n"),
        "{}",
        stderr(&out)
    );
}

/// Issue 17 point 4: `status` tells the truth during an incident (pause, revocations, tripped
/// breakers, revoked sessions marked; RFC 3339 times in --json too), and issued sessions survive
/// a restart: `status` lists them and `revoke --session` still finds them.
#[test]
fn status_tells_the_truth_and_sessions_survive_a_restart() {
    let moto = Moto::start();
    let mut d = Daemon::start(&config_text(&moto.endpoint(), ""));
    assert!(
        d.mandate(&["credential-process", "readonly"])
            .status
            .success()
    );
    assert!(
        d.mandate(&["credential-process", "s3-data"])
            .status
            .success()
    );
    let issued: Vec<(String, String)> = d
        .audit()
        .iter()
        .filter(|r| r["kind"] == "issued")
        .map(|r| {
            (
                r["profile"].as_str().unwrap().to_owned(),
                r["request_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let id_of = |p: &str| issued.iter().find(|(q, _)| q == p).unwrap().1.clone();

    // Restart: the sessions are still listed, and a session revoke still finds its session.
    d.stop();
    d.restart();
    let status = ok_json(&d.mandate(&["status", "--json"]));
    let listed: Vec<&str> = status["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["request_id"].as_str().unwrap())
        .collect();
    assert!(listed.contains(&id_of("readonly").as_str()), "{status}");
    assert!(listed.contains(&id_of("s3-data").as_str()), "{status}");
    let out = d.mandate(&["revoke", "--session", &id_of("s3-data")]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        d.mandate(&["pause", "--reason", "incident 9"])
            .status
            .success()
    );

    let status = ok_json(&d.mandate(&["status", "--json"]));
    let rfc3339 = |v: &Value| {
        let t = v.as_str().unwrap_or_default();
        t.len() == 20 && t.ends_with('Z') && t.as_bytes()[10] == b'T'
    };
    assert!(rfc3339(&status["paused"]["at"]), "{status}");
    assert!(rfc3339(&status["revocations"][0]["at"]), "{status}");
    let revoked: Vec<(String, bool)> = status["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["request_id"].as_str().unwrap().to_owned(),
                s["revoked"].as_bool().unwrap(),
            )
        })
        .collect();
    assert!(revoked.contains(&(id_of("s3-data"), true)), "{revoked:?}");
    assert!(revoked.contains(&(id_of("readonly"), false)), "{revoked:?}");

    let text = String::from_utf8_lossy(&d.mandate(&["status"]).stdout).into_owned();
    assert!(text.contains("PAUSED since "), "{text}");
    assert!(
        text.contains("(incident 9): nothing is issued until `mandate resume`"),
        "{text}"
    );
    assert!(
        text.contains(&format!("REVOKED session {} at ", id_of("s3-data"))),
        "{text}"
    );
    let s3_line = text
        .lines()
        .find(|l| l.trim_start().starts_with("s3-data"))
        .unwrap();
    assert!(s3_line.ends_with("[REVOKED]"), "{text}");
    let ro_line = text
        .lines()
        .find(|l| l.trim_start().starts_with("readonly"))
        .unwrap();
    assert!(!ro_line.contains("[REVOKED]"), "{text}");
}
