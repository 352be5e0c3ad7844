use super::*;

pub(crate) const NOW: i64 = 1_795_000_000;
pub(crate) const TTL: i64 = 900;
pub(crate) const USE: i64 = 600;

pub(crate) fn binding() -> Binding {
    Binding {
        agent: "claude".into(),
        profile: "deploy-staging".into(),
        profile_sha256: "p".repeat(64),
        policy_sha256: "q".repeat(64),
        role_arn: "arn:aws:iam::123456789012:role/deployer".into(),
        duration_seconds: 1800,
        reason: Some("ship the fix".into()),
    }
}

pub(crate) fn operator_req() -> ApprovalRequest {
    ApprovalRequest::new(
        ApprovalId::parse("0123456789abcdef").unwrap(),
        binding(),
        Requirement::Operator {
            operator: "alice".into(),
        },
        Some(1000),
        NOW,
        TTL,
    )
}

pub(crate) fn peers_req(n: u8) -> ApprovalRequest {
    ApprovalRequest::new(
        ApprovalId::parse("fedcba9876543210").unwrap(),
        binding(),
        Requirement::Peers {
            n,
            operator: Some("alice".into()),
        },
        Some(1000),
        NOW,
        TTL,
    )
}

pub(crate) const AGENT_UIDS: &Parties<'static> = &Parties {
    agent_uids: &[1000],
    operator_uids: &[1000],
};

pub(crate) fn voter<'a>(name: &'a str, uids: &'a [u32]) -> Voter<'a> {
    Voter {
        name,
        uids,
        subject: None,
    }
}

#[test]
fn every_bound_field_changes_the_digest() {
    let base = binding();
    let d = base.digest();
    assert_eq!(d.len(), 64);
    assert_eq!(d, binding().digest(), "deterministic");
    type Change = Box<dyn Fn(&mut Binding)>;
    let changes: Vec<(&str, Change)> = vec![
        ("agent", Box::new(|b| b.agent.push('x'))),
        ("profile", Box::new(|b| b.profile.push('x'))),
        ("profile hash", Box::new(|b| b.profile_sha256.push('x'))),
        ("policy hash", Box::new(|b| b.policy_sha256.push('x'))),
        ("role", Box::new(|b| b.role_arn.push('x'))),
        ("duration", Box::new(|b| b.duration_seconds += 1)),
        ("reason", Box::new(|b| b.reason = Some("other".into()))),
        ("no reason", Box::new(|b| b.reason = None)),
        ("empty reason", Box::new(|b| b.reason = Some(String::new()))),
    ];
    let mut seen = std::collections::HashSet::from([d.clone()]);
    for (what, change) in changes {
        let mut b = binding();
        change(&mut b);
        assert!(seen.insert(b.digest()), "{what} must change the digest");
    }
    // Fields cannot bleed into each other.
    let mut a = binding();
    a.agent = "ab".into();
    a.profile = "c".into();
    let mut b = binding();
    b.agent = "a".into();
    b.profile = "bc".into();
    assert_ne!(a.digest(), b.digest());
}

#[test]
fn operator_approval_and_its_refusals() {
    let r = operator_req();
    assert_eq!(r.status(NOW), Status::Pending);
    // Another approver cannot approve an ask-first request...
    assert_eq!(
        r.vote(&voter("bob", &[1001]), AGENT_UIDS, true, None, NOW, USE)
            .unwrap_err()
            .to_string(),
        "only alice, agent claude's operator, can approve request 0123456789abcdef"
    );
    // ...but the operator can, even sharing the agent's uid (advisory; the daemon warns).
    let (approved, outcome) = r
        .vote(
            &voter("alice", &[1000]),
            AGENT_UIDS,
            true,
            Some("ok".into()),
            NOW + 5,
            USE,
        )
        .unwrap();
    assert_eq!(
        outcome,
        VoteOutcome::Approved {
            use_by: NOW + 5 + USE
        }
    );
    assert_eq!(approved.status(NOW + 6), Status::Approved);
    assert_eq!(approved.version, 1);
    // Once approved nobody votes again.
    assert!(matches!(
        approved.vote(
            &voter("alice", &[1000]),
            AGENT_UIDS,
            true,
            None,
            NOW + 7,
            USE
        ),
        Err(VoteError::Closed {
            status: "approved",
            ..
        })
    ));
}

#[test]
fn peers_never_count_the_operator_or_the_agents_uid_and_count_each_approver_once() {
    let r = peers_req(2);
    assert_eq!(
        r.vote(&voter("alice", &[1001]), AGENT_UIDS, true, None, NOW, USE)
            .unwrap_err()
            .to_string(),
        "alice is agent claude's operator and does not count toward the two-person rule for request fedcba9876543210; another approver must approve"
    );
    assert_eq!(
        r.vote(&voter("carol", &[1000]), AGENT_UIDS, true, None, NOW, USE)
            .unwrap_err()
            .to_string(),
        "carol shares uid 1000 with agent claude, so their approval would be the agent's own; a peer approval must come from another uid"
    );
    let (r, o) = r
        .vote(&voter("bob", &[1001]), AGENT_UIDS, true, None, NOW, USE)
        .unwrap();
    assert_eq!(o, VoteOutcome::Counted { have: 1, need: 2 });
    let (r, o) = r
        .vote(&voter("bob", &[1001]), AGENT_UIDS, true, None, NOW + 1, USE)
        .unwrap();
    assert_eq!(o, VoteOutcome::Duplicate { have: 1, need: 2 });
    assert_eq!(r.status(NOW + 1), Status::Pending);
    let (r, o) = r
        .vote(
            &voter("dave", &[1002]),
            AGENT_UIDS,
            true,
            None,
            NOW + 2,
            USE,
        )
        .unwrap();
    assert_eq!(
        o,
        VoteOutcome::Approved {
            use_by: NOW + 2 + USE
        }
    );
    assert_eq!(r.status(NOW + 3), Status::Approved);
}

#[test]
fn any_rejection_is_final() {
    for r in [operator_req(), peers_req(2)] {
        // The operator may always say no, also under the two-person rule.
        let (r, o) = r
            .vote(
                &voter("alice", &[1000]),
                AGENT_UIDS,
                false,
                Some("no".into()),
                NOW,
                USE,
            )
            .unwrap();
        assert_eq!(o, VoteOutcome::Rejected);
        assert_eq!(r.status(NOW), Status::Rejected);
        assert!(matches!(
            r.vote(&voter("bob", &[1001]), AGENT_UIDS, true, None, NOW, USE),
            Err(VoteError::Closed {
                status: "rejected",
                ..
            })
        ));
        assert!(matches!(
            r.redeem(&r.digest.clone(), "rid", NOW),
            Err(RedeemError::NotApproved {
                status: "rejected",
                ..
            })
        ));
    }
}

#[test]
fn both_expiries() {
    let r = operator_req();
    assert_eq!(r.status(NOW + TTL - 1), Status::Pending);
    assert_eq!(r.status(NOW + TTL), Status::Expired);
    assert!(matches!(
        r.vote(
            &voter("alice", &[1000]),
            AGENT_UIDS,
            true,
            None,
            NOW + TTL,
            USE
        ),
        Err(VoteError::Closed {
            status: "expired",
            ..
        })
    ));
    let (a, _) = r
        .vote(
            &voter("alice", &[1000]),
            AGENT_UIDS,
            true,
            None,
            NOW + 10,
            USE,
        )
        .unwrap();
    // Approval does not extend past its own use-by time, even though the pending expiry is later.
    assert!(a.redeem(&a.digest, "rid", NOW + 10 + USE - 1).is_ok());
    assert_eq!(a.status(NOW + 10 + USE), Status::Unused);
    assert_eq!(
        a.redeem(&a.digest, "rid", NOW + 10 + USE)
            .unwrap_err()
            .to_string(),
        "request 0123456789abcdef is unused"
    );
}

#[test]
fn redemption_is_single_use_and_bound() {
    let (a, _) = operator_req()
        .vote(&voter("alice", &[1000]), AGENT_UIDS, true, None, NOW, USE)
        .unwrap();
    let mut other = binding();
    other.duration_seconds = 3600;
    assert_eq!(
        a.redeem(&other.digest(), "rid", NOW + 1).unwrap_err(),
        RedeemError::Changed { id: a.id.clone() }
    );
    let used = a.redeem(&a.digest, "rid", NOW + 1).unwrap();
    assert_eq!(used.status(NOW + 1), Status::Redeemed);
    assert!(used.redeem(&a.digest, "rid2", NOW + 2).is_err());
}

#[test]
fn ids_and_notes_parse_strictly() {
    for bad in [
        "",
        "0123",
        "0123456789ABCDEF",
        "0123456789abcdeg",
        "0123456789abcdef0",
        "../../etc/passw",
    ] {
        assert!(ApprovalId::parse(bad).is_err(), "{bad}");
    }
    assert_eq!(
        ApprovalId::parse("x").unwrap_err(),
        "\"x\" is not an approval id (16 hexadecimal characters, as `mandate approvals list` shows)"
    );
    let id = ApprovalId::random();
    assert_eq!(ApprovalId::parse(id.as_str()).unwrap(), id);
    assert!(check_note(&"n".repeat(MAX_NOTE_CHARS)).is_ok());
    assert!(check_note(&"n".repeat(MAX_NOTE_CHARS + 1)).is_err());
}
