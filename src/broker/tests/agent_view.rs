//! What an agent may learn about itself: its own profiles, which one allows an action, and
//! its own approval requests only; every refusal audited.

use super::*;

const OTHER: Caller = Caller::Peer {
    uid: 2000,
    pid: Some(7),
};

#[tokio::test]
async fn an_agent_sees_its_own_profiles_and_requests_only() {
    let (dir, log) = audit_dir();
    let broker = Broker::new(state(false), FakeIssuer::new(), log);
    let caps = broker.capabilities(CLAUDE, None).await.unwrap();
    let names: Vec<&str> = caps["profiles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["profile"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 4, "{names:?}");
    let other = broker.capabilities(OTHER, None).await.unwrap();
    assert_eq!(other["profiles"].as_array().unwrap().len(), 1);
    assert_eq!(other["profiles"][0]["profile"], "readonly");

    // claude opens a request; other asks about it and is refused like an unknown id.
    let mut r = req("deploy-staging");
    r.reason = Some("ship".into());
    let id = match broker.credentials(CLAUDE, r).await.unwrap_err() {
        BrokerError::Pending(p) => p.id,
        e => panic!("{e}"),
    };
    let mine = broker
        .approval_status(CLAUDE, None, id.to_string())
        .await
        .unwrap();
    assert_eq!(mine["status"], "pending");
    assert_eq!(mine["reason"], "ship");
    let theirs = broker
        .approval_status(OTHER, None, id.to_string())
        .await
        .unwrap_err();
    assert_eq!(theirs.code(), "unknown_approval");
    assert_eq!(
        theirs.to_string(),
        format!("agent other has no approval request {id}")
    );
    let unknown = broker
        .approval_status(OTHER, None, "0123456789abcdef".into())
        .await
        .unwrap_err();
    assert_eq!(
        unknown.to_string(),
        "agent other has no approval request 0123456789abcdef"
    );
    let malformed = broker
        .approval_status(OTHER, None, "x".into())
        .await
        .unwrap_err();
    assert_eq!(malformed.code(), "bad_request");
    // A uid that is no agent learns nothing.
    let stranger = Caller::Peer {
        uid: 3000,
        pid: None,
    };
    assert_eq!(
        broker
            .capabilities(stranger.clone(), None)
            .await
            .unwrap_err()
            .code(),
        "unknown_caller"
    );
    let refused = broker
        .client_refusal(stranger, None, "mcp x".into(), "bad".into())
        .await;
    // Only an agent's own client reports refusals.
    assert_eq!(refused.code(), "unknown_caller");
    let reported = broker
        .client_refusal(
            CLAUDE,
            None,
            "not a tool".into(),
            "bad\u{1b}[2J\u{202e}".into(),
        )
        .await;
    assert_eq!(reported.code(), "bad_request");

    let recs = records(&dir);
    let denied: Vec<&serde_json::Value> = recs.iter().filter(|r| r["kind"] == "denied").collect();
    let messages: Vec<&str> = denied
        .iter()
        .map(|r| r["message"].as_str().unwrap())
        .collect();
    assert_eq!(
        messages,
        [
            format!("request_status: agent other has no approval request {id}"),
            "request_status: agent other has no approval request 0123456789abcdef".into(),
            "request_status: \"x\" is not an approval id (16 hexadecimal characters, as `mandate approvals list` shows)".into(),
            "capabilities: uid 3000 is not bound to any agent in the broker config".into(),
            "client_refusal: uid 3000 is not bound to any agent in the broker config".into(),
            // Under a fixed name, in printable text only.
            "client: bad\u{fffd}[2J\u{fffd}".into(),
        ],
        "each refusal is audited, with who asked"
    );
    assert_eq!(denied[0]["agent"], "other");
    assert_eq!(denied[0]["uid"], 2000);
    assert_eq!(denied[3]["uid"], 3000);
    assert!(denied[3]["agent"].is_null());
}

#[tokio::test]
async fn which_profile_names_the_least_privileged_first() {
    let (dir, log) = audit_dir();
    let broker = Broker::new(state(false), FakeIssuer::new(), log);
    let w = broker
        .which_profile(CLAUDE, None, "s3:ListAllMyBuckets".into(), None)
        .await
        .unwrap();
    let allowed: Vec<&str> = w["allowed_by"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["profile"].as_str().unwrap())
        .collect();
    // readonly (no approval) before breakglass-admin (two approvers, everything).
    assert_eq!(allowed.first(), Some(&"readonly"), "{w}");
    assert_eq!(allowed.last(), Some(&"breakglass-admin"), "{w}");
    let bad = broker
        .which_profile(CLAUDE, None, "s3:*".into(), None)
        .await
        .unwrap_err();
    assert_eq!(bad.code(), "bad_request");
    let bad = broker
        .which_profile(CLAUDE, None, "s3:GetObject".into(), Some("bucket".into()))
        .await
        .unwrap_err();
    assert!(
        bad.to_string()
            .starts_with("resource \"bucket\" is not an ARN"),
        "{bad}"
    );
    let recs = records(&dir);
    assert_eq!(
        recs.iter()
            .filter(|r| r["kind"] == "denied" && r["agent"] == "claude")
            .count(),
        2
    );
}
