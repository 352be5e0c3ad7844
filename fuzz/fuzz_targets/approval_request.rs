//! The approval request parser (votes, revocations, breaker and pause requests on the socket)
//! and the pure approval rules driven by a script of votes and redemptions.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mandate::approval::{
    ApprovalId, ApprovalRequest, Binding, Parties, Requirement, Stage, Status, Voter,
};
use mandate::protocol::Request;

const NOW: i64 = 1_795_000_000;
const NAMES: [&str; 4] = ["alice", "bob", "carol", "dave"];
/// dave shares the agent's uid; alice is the agent's operator.
const UIDS: [&[u32]; 4] = [&[1000], &[1001], &[1002], &[1000]];
/// The agent runs as 1000, like its operator alice (a laptop); bob and carol are other people.
const PARTIES: Parties<'static> = Parties {
    agent_uids: &[1000],
    operator_uids: &[1000],
};

fuzz_target!(|data: &[u8]| {
    // 1. The decoder: what parses re-serialises and parses to the same request.
    if let Ok(req) = Request::parse(data) {
        let bytes = serde_json::to_vec(&req).unwrap();
        assert_eq!(Request::parse(&bytes).unwrap(), req);
    }
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(id) = ApprovalId::parse(s) {
            assert_eq!(id.as_str(), s);
        }
    }

    // 2. The rules.
    let Some((&mode, script)) = data.split_first() else {
        return;
    };
    let requirement = match mode % 4 {
        0 => Requirement::Operator {
            operator: "alice".into(),
        },
        n => Requirement::Peers {
            n,
            operator: Some("alice".into()),
        },
    };
    let binding = Binding {
        agent: "claude".into(),
        profile: "deploy-staging".into(),
        profile_sha256: "a".repeat(64),
        policy_sha256: "b".repeat(64),
        role_arn: "arn:aws:iam::123456789012:role/deployer".into(),
        duration_seconds: 1800,
        reason: None,
    };
    let digest = binding.digest();
    let mut r = ApprovalRequest::new(
        ApprovalId::parse("0123456789abcdef").unwrap(),
        binding,
        requirement.clone(),
        Some(1000),
        NOW,
        900,
    );
    let mut now = NOW;
    let mut redemptions = 0;
    for step in script.chunks(2) {
        let op = step[0];
        now += i64::from(*step.get(1).unwrap_or(&0)) * 4;
        let who = usize::from(op >> 2) % 4;
        let before = r.status(now);
        match op % 4 {
            0 | 1 => {
                let voter = Voter {
                    name: NAMES[who],
                    uids: UIDS[who],
                    subject: None,
                };
                match r.vote(&voter, &PARTIES, op % 4 == 0, None, now, 600) {
                    Ok((next, _)) => {
                        assert_eq!(before, Status::Pending, "only pending requests take votes");
                        assert_eq!(next.version, r.version + 1);
                        r = next;
                    }
                    Err(_) => assert_eq!(r.status(now), before),
                }
            }
            2 => {
                if let Ok(next) = r.redeem(&digest, "rid", now) {
                    assert_eq!(before, Status::Approved);
                    redemptions += 1;
                    r = next;
                }
            }
            _ => assert!(r.redeem(&"0".repeat(64), "rid", now).is_err()),
        }
        assert!(redemptions <= 1, "an approval is used once");
        if matches!(r.stage, Stage::Approved { .. } | Stage::Redeemed { .. }) {
            let mut approvers: Vec<&str> = r
                .votes
                .iter()
                .filter(|v| v.approve)
                .map(|v| v.approver.as_str())
                .collect();
            approvers.sort_unstable();
            approvers.dedup();
            match &requirement {
                Requirement::Operator { .. } => assert_eq!(approvers, ["alice"]),
                Requirement::Peers { n, .. } => {
                    assert!(!approvers.contains(&"alice"), "the operator never counts");
                    assert!(!approvers.contains(&"dave"), "the agent's uid never counts");
                    assert!(approvers.len() >= usize::from(*n));
                }
            }
            assert!(!r.votes.iter().any(|v| !v.approve), "a rejection is final");
        }
    }
});
