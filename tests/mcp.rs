//! `mandate mcp` under a real MCP client nobody here wrote: the official Python SDK (`mcp`,
//! pinned in tests/requirements.txt), driven by tests/mcp_client.py, against a real daemon and
//! moto. Initialize, list the tools and validate their schemas, then every tool on the issued,
//! pending, approved (an approver's CLI in between), rejected and refused paths, and hostile
//! arguments, each of which must be a tool error with its exact message and an audit record.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::*;
use serde_json::{Value, json};

/// The uid of a second agent, `other`, bound to readonly only.
const OTHER: u32 = 4242;

fn step(report: &Value, i: usize) -> &Value {
    &report["steps"][i]
}

/// The denied records whose message contains `needle`.
fn denied_with(d: &Daemon, needle: &str) -> Vec<Value> {
    d.audit()
        .into_iter()
        .filter(|r| {
            r["kind"] == "denied" && r["message"].as_str().is_some_and(|m| m.contains(needle))
        })
        .collect()
}

#[test]
fn every_tool_through_the_official_python_sdk() {
    let moto = Moto::start();
    let extra = format!("\n[agents.other]\nprofiles = [\"readonly\"]\nuids = [{OTHER}]\n");
    let d = Daemon::start(&config_text(&moto.endpoint(), &extra));
    // The second agent runs as another uid: open the socket and config to it (only the
    // daemon's peer-uid check stands between them).
    for p in [d.dir.path(), &d.dir.path().join("run")] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(d.socket(), std::fs::Permissions::from_mode(0o666)).unwrap();
    std::fs::set_permissions(&d.config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let bin = install_binaries(d.dir.path());
    let config = d.config.display().to_string();
    let mandate = bin.display().to_string();
    let approver = |verb: &str| json!({"run": [mandate, "--config", config, verb, "$pending", "--note", "from the test"]});
    let huge = "r".repeat(100_000);
    let purge = json!({"run": ["bash", "-c", format!("{mandate} --config {config} revoke --profile deploy-staging >/dev/null && {mandate} --config {config} unrevoke --profile deploy-staging >/dev/null")]});
    let steps = json!([
        {"call": "list_capabilities"},
        {"call": "which_profile", "args": {"action": "s3:GetObject", "resource": "arn:aws:s3:::team-data/projects/agent/report.csv"}},
        {"call": "which_profile", "args": {"action": "s3:GetObject", "resource": "arn:aws:s3:::team-data/projects/agent/.secrets/key"}},
        {"call": "which_profile", "args": {"action": "s3:DeleteBucket"}},
        {"call": "which_profile", "args": {"action": "s3:GetObjekt"}},
        // 5: issued
        {"call": "request_capability", "args": {"profile": "readonly", "reason": "find why the alarm fires"}},
        // 6: pending, then its status, an approval, and the approved session
        {"call": "request_capability", "args": {"profile": "deploy-staging", "reason": "ship the fix for #12"}},
        {"call": "request_status", "args": {"id": "$pending"}},
        approver("approve"),
        {"call": "request_status", "args": {"id": "$pending"}},
        // 10: the approved session dropped from the cache (revoke, then lift it), so that the
        // next request needs an approval again; 11: pending, approved while the tool waits
        // (progress notifications).
        purge.clone(),
        {"call": "request_capability", "args": {"profile": "deploy-staging", "reason": "ship the second fix"}},
        {"run": ["bash", "-c", format!("(sleep 3; {mandate} --config {config} approve $pending) >/dev/null 2>&1 &")]},
        {"call": "request_status", "args": {"id": "$pending", "wait_seconds": 60}, "progress": true},
        // 14: dropped again; 15: pending, rejected
        purge,
        {"call": "request_capability", "args": {"profile": "deploy-staging", "reason": "drop the staging stack"}},
        approver("reject"),
        {"call": "request_status", "args": {"id": "$pending"}},
        // 18: hostile arguments
        {"call": "request_capability", "args": {"profile": "readonly", "reason": huge}},
        {"call": "request_capability", "args": {"profile": "readonly", "reason": "a\u{1b}[2Jb\u{7}"}},
        {"call": "request_capability", "args": {"profile": "no-such-profile", "reason": "try it"}},
        {"call": "request_capability", "args": {"profile": "../../etc/passwd", "reason": "try it"}},
        {"call": "request_status", "args": {"id": "not-an-id"}},
        {"call": "request_capability", "args": {"profile": "readonly", "reason": "longer", "duration": 99999}},
        // 24: still waiting on nothing: an unknown (well-formed) id
        {"call": "request_status", "args": {"id": "0123456789abcdef"}},
        // 25: the first request again, once used: issued, with how to use it
        {"call": "request_status", "args": {"id": "$first_pending"}},
        // 26: a shorter session than the profile's: credential_process could never fetch it
        {"call": "request_capability", "args": {"profile": "readonly", "reason": "shorter", "duration": 900}},
    ]);
    let cmd = vec![
        mandate.clone(),
        "--config".into(),
        config.clone(),
        "mcp".into(),
    ];
    let (r, stderr) = mcp_session(d.dir.path(), "claude", &steps, &cmd);

    // Initialize and the tools, with schemas that validate.
    assert_eq!(r["server"], "mandate", "{r}");
    let names: Vec<&str> = r["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    for t in [
        "list_capabilities",
        "request_capability",
        "request_status",
        "which_profile",
    ] {
        assert!(names.contains(&t), "{t} in {names:?}");
    }
    for t in r["tools"].as_array().unwrap() {
        assert_eq!(t["schema_valid"], true, "{t}");
        assert_eq!(t["input_schema"]["type"], "object", "{t}");
        if t["name"] != "list_capabilities" {
            assert_eq!(t["rejects_missing_required"], true, "{t}");
        }
    }
    let rc = r["tools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "request_capability")
        .unwrap();
    let required: Vec<&str> = rc["input_schema"]["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(required, ["profile", "reason"], "{rc}");
    for s in r["steps"].as_array().unwrap() {
        if s.get("call").is_some() {
            assert_eq!(
                s["args_valid"], true,
                "the driver's arguments fit the schema: {s}"
            );
        }
    }

    // list_capabilities: the agent's own three profiles, in words, with their approval.
    let caps = &step(&r, 0)["structured"];
    assert_eq!(step(&r, 0)["is_error"], false, "{}", step(&r, 0));
    assert_eq!(caps["agent"], "claude");
    let profiles: Vec<&Value> = caps["profiles"].as_array().unwrap().iter().collect();
    let by_name = |n: &str| *profiles.iter().find(|p| p["profile"] == n).unwrap();
    assert_eq!(profiles.len(), 3, "{caps}");
    assert_eq!(by_name("readonly")["needs_approval"], false);
    assert_eq!(by_name("deploy-staging")["needs_approval"], true);
    assert!(
        by_name("deploy-staging")["approval"]
            .as_str()
            .unwrap()
            .contains("operator (human)"),
        "{caps}"
    );
    let summary = by_name("s3-data")["summary"].as_str().unwrap();
    assert!(
        summary.starts_with("Read and write objects under team-data/projects/agent/; never delete. It can use 7 actions (2 list, 2 read, 2 write, 1 tagging) of s3."),
        "{summary}"
    );
    assert!(summary.contains("approval: none"), "{summary}");

    // which_profile: s3-data for its prefix, none under .secrets (its own deny), none for a
    // destructive action (the automatic Deny), and a typo gets a suggestion and an audit record.
    let w = &step(&r, 1)["structured"];
    assert_eq!(w["allowed_by"][0]["profile"], "s3-data", "{w}");
    assert_eq!(w["allowed_by"].as_array().unwrap().len(), 1, "{w}");
    let w = &step(&r, 2)["structured"];
    assert_eq!(w["allowed_by"], json!([]), "{w}");
    let s3 = w["not_allowed_by"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["profile"] == "s3-data")
        .unwrap();
    assert_eq!(s3["why"], "the profile's own deny rules refuse it", "{w}");
    assert!(
        w["answer"]
            .as_str()
            .unwrap()
            .starts_with("none of agent claude's profiles allows s3:GetObject on "),
        "{w}"
    );
    let w = &step(&r, 3)["structured"];
    assert_eq!(w["allowed_by"], json!([]), "{w}");
    let typo = step(&r, 4);
    assert_eq!(typo["is_error"], true, "{typo}");
    assert_eq!(
        typo["text"],
        "action \"s3:GetObjekt\" is not an IAM action (did you mean s3:GetObject?)"
    );

    // Issued: which profile and credential_process line to use; no key anywhere.
    let issued = step(&r, 5);
    assert_eq!(issued["is_error"], false, "{issued}");
    let s = &issued["structured"];
    assert_eq!(s["status"], "issued");
    assert_eq!(s["profile"], "readonly");
    assert_eq!(
        s["use"]["credential_process"],
        format!("mandate --config {config} credential-process readonly")
    );
    assert_eq!(s["request_id"].as_str().unwrap().len(), 32, "{s}");
    // The session the tool asked for is the one credential_process gets (from the cache).
    let cp = d.mandate(&["request", "readonly"]);
    assert!(
        cp.status.success(),
        "{}",
        String::from_utf8_lossy(&cp.stderr)
    );
    let cp: Value = serde_json::from_slice(&cp.stdout).unwrap();
    assert_eq!(cp["request_id"], s["request_id"], "{cp}");
    assert_eq!(cp["cached"], true, "{cp}");

    // Pending, its status, then approved by the operator with the CLI, then issued.
    let p = &step(&r, 6)["structured"];
    assert_eq!(step(&r, 6)["is_error"], false, "{}", step(&r, 6));
    assert_eq!(p["status"], "pending", "{p}");
    let first_id = p["request_id"].as_str().unwrap().to_owned();
    assert_eq!(first_id.len(), 16);
    assert_eq!(p["needs"], "operator human", "{p}");
    assert_eq!(p["console_url"], Value::Null);
    let st = &step(&r, 7)["structured"];
    assert_eq!(st["status"], "pending", "{st}");
    assert_eq!(st["request_id"], first_id.as_str());
    assert_eq!(st["reason"], "ship the fix for #12");
    assert_eq!(step(&r, 8)["code"], 0, "{}", step(&r, 8));
    let approved = &step(&r, 9)["structured"];
    assert_eq!(approved["status"], "issued", "{}", step(&r, 9));
    assert_eq!(approved["profile"], "deploy-staging");
    assert_eq!(approved["approval"]["id"], first_id.as_str());

    let again = &step(&r, 25)["structured"];
    assert_eq!(again["status"], "issued", "{again}");
    assert_eq!(again["approval"]["id"], first_id.as_str(), "{again}");
    assert!(again["used_at"].is_string(), "{again}");
    assert_eq!(
        again["use"]["credential_process"],
        format!("mandate --config {config} credential-process deploy-staging")
    );

    // Waiting with progress notifications until the approval lands.
    let waited = step(&r, 13);
    assert_eq!(waited["structured"]["status"], "issued", "{waited}");
    let progress = waited["progress"].as_array().unwrap();
    assert!(progress.len() >= 2, "{waited}");
    assert!(
        progress[0]["message"]
            .as_str()
            .unwrap()
            .starts_with("waiting for the approval of operator human on request "),
        "{waited}"
    );
    assert_eq!(progress[0]["total"], 60.0);

    // Rejected: a tool error saying by whom and why.
    let rejected = step(&r, 17);
    assert_eq!(rejected["is_error"], true, "{rejected}");
    let rid = step(&r, 15)["structured"]["request_id"].as_str().unwrap();
    assert_eq!(
        rejected["text"],
        format!("approval request {rid} is rejected by human: from the test; nothing was issued")
    );

    // Hostile arguments: exact tool errors, and each one in the audit log.
    let cases: [(usize, &str, &str); 8] = [
        (
            18,
            "reason is longer than 1024 bytes (UTF-8): 100000 bytes",
            "mcp request_capability: reason is longer than 1024 bytes",
        ),
        (
            19,
            "reason contains a control character (U+001B); send one line of plain text",
            "mcp request_capability: reason contains a control character (U+001B)",
        ),
        (
            20,
            "no profile named \"no-such-profile\"",
            "no profile named \"no-such-profile\"",
        ),
        (
            21,
            "profile \"../../etc/passwd\": ",
            "mcp request_capability: profile \"../../etc/passwd\": ",
        ),
        (
            22,
            "\"not-an-id\" is not an approval id",
            "mcp request_status: \"not-an-id\" is not an approval id",
        ),
        (
            23,
            "duration 99999 s is outside 900 to 43200 s",
            "mcp request_capability: duration 99999 s is outside 900 to 43200 s",
        ),
        (
            24,
            "agent claude has no approval request 0123456789abcdef",
            "request_status: agent claude has no approval request 0123456789abcdef",
        ),
        (
            26,
            "a 900 s session of readonly cannot be handed over: credential_process fetches sessions of the profile's own duration (3600 s); leave duration out",
            "mcp request_capability: a 900 s session of readonly cannot be handed over",
        ),
    ];
    for (i, message, audited) in cases {
        let s = step(&r, i);
        assert_eq!(s["is_error"], true, "{s}");
        assert!(
            s["text"].as_str().unwrap().starts_with(message),
            "step {i}: {:?} should start with {message:?}",
            s["text"]
        );
        assert_eq!(s["structured"]["status"], "refused", "{s}");
        let records = denied_with(&d, audited);
        assert_eq!(
            records.len(),
            1,
            "step {i}: one audit record for {audited:?}"
        );
        assert_eq!(records[0]["agent"], "claude", "{}", records[0]);
        assert!(records[0]["uid"].is_number(), "{}", records[0]);
    }
    let unknown = step(&r, 20);
    assert_eq!(
        unknown["structured"]["instead"],
        "this agent's profiles are deploy-staging, readonly, s3-data; which_profile names the least privileged one for an action"
    );
    let typo_records = denied_with(
        &d,
        "which_profile: action \"s3:GetObjekt\" is not an IAM action",
    );
    assert_eq!(typo_records.len(), 1);

    // Another agent (another uid, as the kernel says) cannot see claude's request, and is
    // refused exactly as for an id that does not exist; it sees only its own profile.
    let other_steps = json!([
        {"call": "request_status", "args": {"id": first_id}},
        {"call": "list_capabilities"},
        {"call": "request_capability", "args": {"profile": "deploy-staging", "reason": "not mine"}},
    ]);
    let other_cmd: Vec<String> = [
        "setpriv",
        &format!("--reuid={OTHER}"),
        &format!("--regid={OTHER}"),
        "--clear-groups",
        &mandate,
        "--config",
        &config,
        "mcp",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (o, other_stderr) = mcp_session(d.dir.path(), "other", &other_steps, &other_cmd);
    let theirs = &o["steps"][0];
    assert_eq!(theirs["is_error"], true, "{theirs}");
    assert_eq!(
        theirs["text"],
        format!("agent other has no approval request {first_id}")
    );
    assert!(
        !theirs.to_string().contains("ship the fix"),
        "nothing of claude's request shows: {theirs}"
    );
    let records = denied_with(
        &d,
        &format!("agent other has no approval request {first_id}"),
    );
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["agent"], "other");
    assert_eq!(records[0]["uid"], OTHER);
    let theirs = &o["steps"][1]["structured"];
    assert_eq!(theirs["agent"], "other");
    assert_eq!(theirs["profiles"].as_array().unwrap().len(), 1, "{theirs}");
    let not_bound = &o["steps"][2];
    assert_eq!(not_bound["is_error"], true);
    assert_eq!(
        not_bound["text"],
        "agent other is not bound to profile deploy-staging"
    );

    // No result or stderr carries a secret or anything that looks like one.
    for text in [r.to_string(), o.to_string(), stderr, other_stderr] {
        for word in [
            "SecretAccessKey",
            "SessionToken",
            "secret_access_key",
            "\"Token\"",
        ] {
            assert!(!text.contains(word), "{word} in MCP output");
        }
    }
    // Every issued session has its record; the audit chain verifies.
    let issued_records = d
        .audit()
        .into_iter()
        .filter(|r| r["kind"] == "issued")
        .count();
    assert_eq!(
        issued_records, 3,
        "readonly and two approved deploy-staging sessions"
    );
    let verify = d.mandate(&["audit", "verify"]);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
}
