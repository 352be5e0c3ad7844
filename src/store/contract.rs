//! The store's contract: what every backend must do, as functions over `&dyn Store` so that
//! the SQLite unit tests and the PostgreSQL integration tests (`tests/store_postgres.rs`) run
//! the same checks. Not part of the API (hidden from the docs); panics on any breach.

use super::{Opened, SessionInfo, Store};
use crate::approval::{ApprovalId, ApprovalRequest, Binding, Parties, Requirement, Status, Voter};
use crate::revoke::{Pause, Revocation, Scope, Trip};

pub const NOW: i64 = 1_795_000_000;
pub const TTL: i64 = 900;
pub const USE: i64 = 600;
const PARTIES: &Parties<'static> = &Parties {
    agent_uids: &[1000],
    operator_uids: &[1000],
};

/// A pending request of `agent` (operator alice), its id from `n`, its digest from `reason`.
pub fn request(n: u64, agent: &str, reason: &str) -> ApprovalRequest {
    ApprovalRequest::new(
        ApprovalId::parse(&format!("{n:016x}")).expect("16 hex digits"),
        Binding {
            agent: agent.into(),
            profile: "deploy-staging".into(),
            profile_sha256: "p".repeat(64),
            policy_sha256: "q".repeat(64),
            role_arn: "arn:aws:iam::123456789012:role/deployer".into(),
            duration_seconds: 1800,
            reason: Some(reason.into()),
        },
        Requirement::Operator {
            operator: "alice".into(),
        },
        Some(1000),
        NOW,
        TTL,
    )
}

/// `r` approved (or rejected) by alice.
pub fn voted(r: &ApprovalRequest, approve: bool) -> ApprovalRequest {
    let alice = Voter {
        name: "alice",
        uids: &[1000],
        subject: None,
    };
    r.vote(&alice, PARTIES, approve, None, NOW, USE)
        .expect("alice may vote")
        .0
}

/// A session of `agent` expiring at `expires_at`.
pub fn session(agent: &str, request_id: &str, expires_at: i64) -> SessionInfo {
    SessionInfo {
        agent: agent.into(),
        profile: "readonly".into(),
        role: "sandbox".into(),
        session_name: format!("mandate-{agent}-{request_id}"),
        access_key_id: "ASIAEXAMPLE".into(),
        expiration: "2026-11-18T10:00:00Z".into(),
        request_id: request_id.into(),
        daemon: String::new(),
        expires_at,
    }
}

/// Every check, each on a fresh store from `fresh`.
pub fn all(fresh: &mut dyn FnMut() -> Box<dyn Store>) {
    swaps_only_the_version_it_read(&*fresh());
    opens_pending_requests_atomically(&*fresh());
    keeps_the_controls(&*fresh());
    indexes_sessions(&*fresh());
}

pub fn swaps_only_the_version_it_read(s: &dyn Store) {
    let r = request(0x0123_4567_89ab_cdef, "claude", "ship the fix");
    s.insert(&r).unwrap();
    assert!(s.insert(&r).is_err(), "ids are unique");
    assert_eq!(s.get(&r.id).unwrap().unwrap(), r);
    assert_eq!(s.count_pending("claude", NOW).unwrap(), 1);
    assert_eq!(s.count_pending("claude", NOW + TTL).unwrap(), 0);
    assert_eq!(s.by_digest("claude", &r.digest).unwrap(), vec![r.clone()]);
    let a = voted(&r, true);
    assert!(s.replace(r.version, &a).unwrap());
    // A second writer that read the old version loses.
    let b = voted(&r, false);
    assert!(!s.replace(r.version, &b).unwrap());
    assert_eq!(s.get(&r.id).unwrap().unwrap().status(NOW), Status::Approved);
    assert_eq!(s.list(0, 10).unwrap().len(), 1);
    // Newest first, at most `limit`, ties broken by insertion.
    let r2 = request(2, "claude", "second");
    s.insert(&r2).unwrap();
    let ids: Vec<_> = s.list(0, 10).unwrap().into_iter().map(|r| r.id).collect();
    assert_eq!(ids, vec![r2.id.clone(), r.id.clone()]);
    assert_eq!(s.list(0, 1).unwrap().len(), 1);
    assert_eq!(s.list(NOW + 1, 10).unwrap().len(), 0);
    // Old requests are forgotten (the audit log keeps them); newer ones are kept.
    assert_eq!(s.prune(NOW).unwrap(), 0);
    assert_eq!(s.prune(NOW + 1).unwrap(), 2);
    assert_eq!(s.get(&r.id).unwrap(), None);
}

pub fn opens_pending_requests_atomically(s: &dyn Store) {
    let a = request(1, "claude", "one");
    assert_eq!(s.open_pending(&a, 2, NOW).unwrap(), Opened::Inserted);
    // The same binding again: the open one comes back.
    let again = request(2, "claude", "one");
    assert_eq!(
        s.open_pending(&again, 2, NOW).unwrap(),
        Opened::Existing(Box::new(a.clone()))
    );
    assert_eq!(s.get(&again.id).unwrap(), None);
    let b = request(3, "claude", "two");
    assert_eq!(s.open_pending(&b, 2, NOW).unwrap(), Opened::Inserted);
    let c = request(4, "claude", "three");
    assert_eq!(s.open_pending(&c, 2, NOW).unwrap(), Opened::Full(2));
    // Another agent has its own budget; expired requests do not count.
    assert_eq!(
        s.open_pending(&request(5, "codex", "three"), 2, NOW)
            .unwrap(),
        Opened::Inserted
    );
    assert_eq!(
        s.open_pending(&c, 2, NOW + TTL).unwrap(),
        Opened::Inserted,
        "the others expired"
    );
    // A decided request is no longer pending.
    assert!(s.replace(a.version, &voted(&a, false)).unwrap());
    assert_eq!(s.count_pending("claude", NOW).unwrap(), 2);
}

pub fn keeps_the_controls(s: &dyn Store) {
    let rev = |id: &str, scope: Scope| Revocation {
        id: id.into(),
        scope,
        at: NOW,
        by: "alice".into(),
        active: true,
        aws_roles: vec![],
    };
    s.put_revocation(&rev("r1", Scope::Agent("claude".into())))
        .unwrap();
    s.put_revocation(&rev("r2", Scope::All)).unwrap();
    let mut r1 = rev("r1", Scope::Agent("claude".into()));
    r1.active = false;
    s.put_revocation(&r1).unwrap();
    let got = s.revocations().unwrap();
    assert_eq!(got, vec![r1, rev("r2", Scope::All)], "in insertion order");
    s.delete_revocation("r1").unwrap();
    s.delete_revocation("r1").unwrap();
    assert_eq!(s.revocations().unwrap().len(), 1);

    let trip = |agent: &str| Trip {
        agent: agent.into(),
        at: NOW,
        reason: "10 denials".into(),
    };
    s.put_trip(&trip("zed")).unwrap();
    s.put_trip(&trip("Claude")).unwrap();
    s.put_trip(&trip("claude")).unwrap();
    s.put_trip(&trip("claude")).unwrap();
    let agents: Vec<_> = s.trips().unwrap().into_iter().map(|t| t.agent).collect();
    assert_eq!(agents, ["Claude", "claude", "zed"], "byte order");
    assert!(s.delete_trip("claude").unwrap());
    assert!(!s.delete_trip("claude").unwrap());

    assert_eq!(s.pause().unwrap(), None);
    let p = Pause {
        at: NOW,
        by: "alice".into(),
        reason: Some("incident".into()),
    };
    s.set_pause(Some(&p)).unwrap();
    s.set_pause(Some(&p)).unwrap();
    assert_eq!(s.pause().unwrap(), Some(p));
    s.set_pause(None).unwrap();
    s.set_pause(None).unwrap();
    assert_eq!(s.pause().unwrap(), None);
}

pub fn indexes_sessions(s: &dyn Store) {
    s.put_session(&session("claude", "b", NOW + 200), NOW)
        .unwrap();
    s.put_session(&session("claude", "a", NOW + 100), NOW)
        .unwrap();
    s.put_session(&session("codex", "c", NOW + 10), NOW)
        .unwrap();
    let live = s.sessions(NOW).unwrap();
    let ids: Vec<_> = live.iter().map(|s| s.request_id.as_str()).collect();
    assert_eq!(ids, ["c", "a", "b"], "soonest expiry first");
    assert_eq!(
        (live[1].agent.as_str(), live[1].session_name.as_str()),
        ("claude", "mandate-claude-a")
    );
    assert_eq!(
        s.sessions(NOW + 10).unwrap().len(),
        2,
        "expired are not live"
    );
    // Putting the same session again updates it.
    s.put_session(&session("claude", "a", NOW + 300), NOW + 20)
        .unwrap();
    let ids: Vec<_> = s
        .sessions(NOW + 20)
        .unwrap()
        .into_iter()
        .map(|s| s.request_id)
        .collect();
    assert_eq!(ids, ["b", "a"]);
}
