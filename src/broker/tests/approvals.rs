//! The approval gate, revocation, breakers and the pause, through the broker with a fake STS,
//! a fake IAM, a real SQLite store and a clock the test moves.

use std::sync::atomic::AtomicI64;

use super::*;
use crate::approval::{ApprovalId, ApprovalRequest, Binding};
use crate::aws::{BoxFuture, IamError, Revoker};
use crate::notify::Notifier;
use crate::revoke::Scope;
use crate::store::{SqliteStore, Store};

const T0: i64 = 1_795_000_000;

#[derive(Default)]
struct FakeRevoker {
    calls: Mutex<Vec<(String, String, Option<String>)>>,
}

impl Revoker for FakeRevoker {
    fn put_role_policy<'a>(
        &'a self,
        role: &'a str,
        name: &'a str,
        doc: &'a str,
    ) -> BoxFuture<'a, Result<(), IamError>> {
        self.calls
            .lock()
            .unwrap()
            .push((role.into(), name.into(), Some(doc.into())));
        Box::pin(async { Ok(()) })
    }
    fn delete_role_policy<'a>(
        &'a self,
        role: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<(), IamError>> {
        self.calls
            .lock()
            .unwrap()
            .push((role.into(), name.into(), None));
        Box::pin(async { Ok(()) })
    }
}

struct World {
    dir: tempfile::TempDir,
    /// Each broker ("restart") writes its own audit directory.
    logs: std::sync::atomic::AtomicUsize,
    clock: Arc<AtomicI64>,
    revoker: Arc<FakeRevoker>,
}

impl World {
    fn new() -> World {
        World {
            dir: tempfile::tempdir().unwrap(),
            logs: Default::default(),
            clock: Arc::new(AtomicI64::new(T0)),
            revoker: Arc::default(),
        }
    }
    /// A broker over the world's store file (a "restart" is just another call).
    fn broker(&self, st: State) -> Broker<FakeIssuer> {
        self.broker_with(st, FakeIssuer::new())
    }
    fn broker_with(&self, st: State, issuer: FakeIssuer) -> Broker<FakeIssuer> {
        use std::os::unix::fs::DirBuilderExt;
        let n = self.logs.fetch_add(1, Ordering::SeqCst);
        let dir = self.dir.path().join(format!("audit{n}"));
        std::fs::DirBuilder::new().mode(0o700).create(&dir).unwrap();
        let key = ed25519_dalek::SigningKey::from_bytes(&[1; 32]);
        let (log, _) = AuditLog::open(&dir, key, crate::audit::Options::default()).unwrap();
        let clock = self.clock.clone();
        Broker::with_parts(
            st,
            issuer,
            log,
            Parts {
                store: Arc::new(SqliteStore::open(&self.dir.path().join("approvals.db")).unwrap()),
                revoker: self.revoker.clone(),
                notifier: Notifier::none(),
                clock: Arc::new(move || clock.load(Ordering::SeqCst)),
                // The same key as the audit log's: a restarted daemon trusts its own votes.
                vote_key: Arc::new(ed25519_dalek::SigningKey::from_bytes(&[1; 32])),
            },
        )
        .unwrap()
    }
    fn advance(&self, secs: i64) {
        self.clock.fetch_add(secs, Ordering::SeqCst);
    }
    fn records(&self) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        for n in 0..self.logs.load(Ordering::SeqCst) {
            out.extend(Self::read_log(&self.dir.path().join(format!("audit{n}"))));
        }
        out
    }
    fn read_log(dir: &Path) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with("audit-"))
            .collect();
        names.sort();
        for n in names {
            for l in std::fs::read_to_string(dir.join(n)).unwrap().lines() {
                out.push(serde_json::from_str(l).unwrap());
            }
        }
        out
    }
}

fn uid(u: u32) -> Caller {
    Caller::Peer {
        uid: u,
        pid: Some(1),
    }
}
const ALICE: u32 = 1000; // also claude's uid: the single-user laptop
const BOB: u32 = 1001;
const CAROL: u32 = 1002;
const OTHER_AGENT: u32 = 2000;

fn pending_id(r: Result<Issued, BrokerError>) -> ApprovalId {
    match r {
        Err(BrokerError::Pending(p)) => p.id,
        other => panic!("expected a pending approval, got {other:?}"),
    }
}

fn code<T: std::fmt::Debug>(r: Result<T, BrokerError>) -> (String, String) {
    let e = r.unwrap_err();
    (e.code().to_owned(), e.to_string())
}

fn with_reason(profile: &str, reason: &str) -> CredRequest {
    CredRequest {
        reason: Some(reason.into()),
        ..req(profile)
    }
}

#[tokio::test]
async fn ask_first_agents_cannot_approve_and_the_operator_can() {
    let w = World::new();
    let b = w.broker(state(false));
    let r = with_reason("deploy-staging", "ship the fix");
    let id = pending_id(b.credentials(CLAUDE, r.clone()).await);
    // Asking again reports the same request instead of opening another.
    assert_eq!(pending_id(b.credentials(CLAUDE, r.clone()).await), id);
    assert_eq!(b.issuer.calls.load(Ordering::SeqCst), 0);

    // The agent's token can never approve.
    let (c, m) = code(
        b.vote(
            Caller::Token {
                agent: "claude".into(),
            },
            id.clone(),
            true,
            None,
            None,
        )
        .await,
    );
    assert_eq!(c, "not_approver");
    assert_eq!(
        m,
        "agent claude's token cannot approve, revoke or pause: only approvers can, on the broker's socket"
    );
    // Nor a uid that belongs to an agent and to no approver.
    let (c, m) = code(b.vote(uid(OTHER_AGENT), id.clone(), true, None, None).await);
    assert_eq!(c, "not_approver");
    assert_eq!(
        m,
        "uid 2000 belongs to agent other and to no approver: agents cannot approve, revoke or pause"
    );
    // Another approver is not the operator.
    let (c, m) = code(b.vote(uid(BOB), id.clone(), true, None, None).await);
    assert_eq!(c, "vote_refused");
    assert_eq!(
        m,
        format!("only alice, agent claude's operator, can approve request {id}")
    );
    assert_eq!(pending_id(b.credentials(CLAUDE, r.clone()).await), id);

    // The operator shares claude's uid here (advisory, and the daemon says so), and approves.
    let v = b
        .vote(uid(ALICE), id.clone(), true, Some("go".into()), None)
        .await
        .unwrap();
    assert_eq!((v.status, v.have, v.need), ("approved", 1, 1));
    let issued = b.credentials(CLAUDE, r.clone()).await.unwrap();
    assert_eq!(issued.approval_id.as_ref(), Some(&id));
    assert!(!issued.cached);
    // The session is reused from the cache; no second approval is consumed or needed.
    let again = b.credentials(CLAUDE, r).await.unwrap();
    assert!(again.cached);
    assert_eq!(b.issuer.calls.load(Ordering::SeqCst), 1);

    b.audit()
        .append_durable(Record::new(Kind::Stopped))
        .await
        .unwrap();
    let recs = w.records();
    let of =
        |k: &str| -> Vec<&serde_json::Value> { recs.iter().filter(|r| r["kind"] == k).collect() };
    assert_eq!(of("pending").len(), 1);
    assert_eq!(of("pending")[0]["approval_id"], id.as_str());
    assert_eq!(of("pending")[0]["reason"], "ship the fix");
    let refused: Vec<&str> = of("denied")
        .iter()
        .map(|r| r["code"].as_str().unwrap())
        .collect();
    assert_eq!(refused, ["not_approver", "not_approver", "vote_refused"]);
    assert_eq!(of("approved").len(), 1);
    assert_eq!(of("approved")[0]["approver"], "alice");
    assert_eq!(of("approved")[0]["note"], "go");
    assert_eq!(of("approved")[0]["decision"], "approved");
    // The redemption: the request and issued records carry the approval id.
    assert_eq!(of("request")[0]["approval_id"], id.as_str());
    assert_eq!(of("issued")[0]["approval_id"], id.as_str());
    assert_eq!(of("pending")[0]["digest"], of("approved")[0]["digest"]);
}

#[tokio::test]
async fn two_person_rule_never_counts_the_operator_and_counts_each_approver_once() {
    let w = World::new();
    let b = w.broker(state(false));
    let r = req("breakglass-admin");
    let id = pending_id(b.credentials(CLAUDE, r.clone()).await);
    let (c, m) = code(b.vote(uid(ALICE), id.clone(), true, None, None).await);
    assert_eq!(c, "vote_refused");
    assert!(
        m.starts_with("alice is agent claude's operator and does not count"),
        "{m}"
    );
    let v = b
        .vote(uid(BOB), id.clone(), true, None, None)
        .await
        .unwrap();
    assert_eq!(
        (v.status, v.outcome.as_str(), v.have, v.need),
        ("pending", "counted", 1, 2)
    );
    let v = b
        .vote(uid(BOB), id.clone(), true, None, None)
        .await
        .unwrap();
    assert_eq!(
        (v.status, v.outcome.as_str(), v.have),
        ("pending", "duplicate", 1)
    );
    assert_eq!(pending_id(b.credentials(CLAUDE, r.clone()).await), id);
    let v = b
        .vote(uid(CAROL), id.clone(), true, None, None)
        .await
        .unwrap();
    assert_eq!((v.status, v.have, v.need), ("approved", 2, 2));
    let issued = b.credentials(CLAUDE, r).await.unwrap();
    assert_eq!(issued.approval_id, Some(id));
    assert_eq!(b.issuer.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_rejection_is_final_and_shown_to_the_agent() {
    let w = World::new();
    let b = w.broker(state(false));
    let id = pending_id(b.credentials(CLAUDE, req("breakglass-admin")).await);
    b.vote(uid(BOB), id.clone(), true, None, None)
        .await
        .unwrap();
    b.vote(
        uid(CAROL),
        id.clone(),
        false,
        Some("not during the freeze".into()),
        None,
    )
    .await
    .unwrap();
    let (c, _) = code(b.vote(uid(ALICE), id.clone(), true, None, None).await);
    assert_eq!(c, "vote_refused");
    let (c, m) = code(
        b.credentials(
            CLAUDE,
            CredRequest {
                approval_id: Some(id.clone()),
                ..req("breakglass-admin")
            },
        )
        .await,
    );
    assert_eq!(c, "approval_closed");
    assert_eq!(
        m,
        format!(
            "approval request {id} is rejected by carol: not during the freeze; nothing was issued"
        )
    );
    assert_eq!(b.issuer.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn changing_any_bound_field_after_approval_voids_it() {
    let w = World::new();
    let b = w.broker(state(false));
    let r = with_reason("deploy-staging", "a");
    let id = pending_id(b.credentials(CLAUDE, r.clone()).await);
    b.vote(uid(ALICE), id.clone(), true, None, None)
        .await
        .unwrap();
    let redeem = |r: CredRequest| CredRequest {
        approval_id: Some(id.clone()),
        ..r
    };
    // Another reason, another duration: the approval does not cover them.
    for changed in [
        with_reason("deploy-staging", "b"),
        CredRequest {
            duration_seconds: Some(900),
            ..r.clone()
        },
    ] {
        let (c, m) = code(b.credentials(CLAUDE, redeem(changed.clone())).await);
        assert_eq!(c, "approval_closed");
        assert!(m.contains("was approved for a different request"), "{m}");
        // Without the id, it is simply a new request.
        assert_ne!(pending_id(b.credentials(CLAUDE, changed).await), id);
    }
    // The profile changes on disk (a reload): its hash no longer matches the approval.
    let mut st = state(false);
    let mut p = (*st.profiles["deploy-staging"]).clone();
    p.profile_sha256 = "0".repeat(64);
    st.profiles.insert("deploy-staging".into(), Arc::new(p));
    b.replace_state(st);
    let (c, _) = code(b.credentials(CLAUDE, redeem(r.clone())).await);
    assert_eq!(c, "approval_closed");
    assert_eq!(b.issuer.calls.load(Ordering::SeqCst), 0);
    // Back to the approved profile, the untouched approval still works exactly once.
    b.replace_state(state(false));
    b.credentials(CLAUDE, redeem(r)).await.unwrap();
    assert_eq!(b.issuer.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_parallel_redemptions_issue_exactly_once() {
    let w = World::new();
    let mut st = state(false);
    // The 99 losers are denials; keep the breaker out of this test.
    st.config.limits.breaker_denials = 1000;
    let b = Arc::new(w.broker(st));
    // A custom duration bypasses the cache, so every caller really tries to redeem.
    let r = CredRequest {
        duration_seconds: Some(900),
        ..req("deploy-staging")
    };
    let id = pending_id(b.credentials(CLAUDE, r.clone()).await);
    b.vote(uid(ALICE), id.clone(), true, None, None)
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let (b, r) = (b.clone(), r.clone());
        let id = id.clone();
        tasks.push(tokio::spawn(async move {
            b.credentials(
                CLAUDE,
                CredRequest {
                    approval_id: Some(id),
                    ..r
                },
            )
            .await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => assert_eq!(e.code(), "approval_closed", "{e}"),
        }
    }
    assert_eq!(ok, 1);
    assert_eq!(b.issuer.calls.load(Ordering::SeqCst), 1);
    b.audit()
        .append_durable(Record::new(Kind::Stopped))
        .await
        .unwrap();
    let issued = w.records().iter().filter(|r| r["kind"] == "issued").count();
    assert_eq!(issued, 1);
}

#[tokio::test]
async fn pending_and_use_by_expiries() {
    let w = World::new();
    let b = w.broker(state(false));
    let ttl = b.state().config.approvals.pending_ttl.as_secs() as i64;
    let use_within = b.state().config.approvals.use_within.as_secs() as i64;
    let r = req("deploy-staging");
    let id = pending_id(b.credentials(CLAUDE, r.clone()).await);
    w.advance(ttl);
    let (c, m) = code(b.vote(uid(ALICE), id.clone(), true, None, None).await);
    assert_eq!(c, "vote_refused");
    assert_eq!(
        m,
        format!("request {id} is expired and can no longer be voted on")
    );
    // The agent asking again opens a fresh request.
    let id2 = pending_id(b.credentials(CLAUDE, r.clone()).await);
    assert_ne!(id2, id);
    b.vote(uid(ALICE), id2.clone(), true, None, None)
        .await
        .unwrap();
    w.advance(use_within);
    let (c, m) = code(
        b.credentials(
            CLAUDE,
            CredRequest {
                approval_id: Some(id2.clone()),
                ..r.clone()
            },
        )
        .await,
    );
    assert_eq!(c, "approval_closed");
    assert_eq!(
        m,
        format!("approval request {id2} is unused; nothing was issued")
    );
    assert_eq!(b.issuer.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_restart_between_approval_and_redemption_loses_nothing_and_allows_no_double_use() {
    let w = World::new();
    let r = req("deploy-staging");
    let id = {
        let b = w.broker(state(false));
        let id = pending_id(b.credentials(CLAUDE, r.clone()).await);
        b.vote(uid(ALICE), id.clone(), true, None, None)
            .await
            .unwrap();
        id
    };
    let redeem = CredRequest {
        approval_id: Some(id.clone()),
        ..r
    };
    {
        let b = w.broker(state(false));
        let issued = b.credentials(CLAUDE, redeem.clone()).await.unwrap();
        assert_eq!(issued.approval_id.as_ref(), Some(&id));
    }
    let b = w.broker(state(false));
    let (c, m) = code(b.credentials(CLAUDE, redeem).await);
    assert_eq!(c, "approval_closed");
    assert_eq!(
        m,
        format!("approval request {id} is redeemed; nothing was issued")
    );
    assert_eq!(b.issuer.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn revocation_is_immediate_persisted_and_written_to_aws() {
    let w = World::new();
    let b = w.broker(state(false));
    b.credentials(CLAUDE, req("s3-data")).await.unwrap();
    // Agents cannot revoke or lift revocations.
    let (c, _) = code(
        b.revoke(uid(OTHER_AGENT), Scope::Agent("claude".into()), false)
            .await,
    );
    assert_eq!(c, "not_approver");
    let report = b
        .revoke(uid(BOB), Scope::Agent("claude".into()), true)
        .await
        .unwrap();
    assert_eq!(report.purged, 1);
    let (c, m) = code(b.credentials(CLAUDE, req("s3-data")).await);
    assert_eq!(c, "revoked");
    assert!(
        m.starts_with("agent claude is revoked (by bob at 2026-11-18T11:06:41Z)"),
        "{m}"
    );
    // Other agents go on.
    b.credentials(uid(OTHER_AGENT), req("readonly"))
        .await
        .unwrap();
    // The AWS side: one policy per role claude can use, denying its sessions issued before now.
    let calls = w.revoker.calls.lock().unwrap().clone();
    let roles: Vec<&str> = calls.iter().map(|c| c.0.as_str()).collect();
    assert_eq!(roles, ["admin", "agent-role", "deployer"]);
    assert!(calls.iter().all(|c| c.1 == "mandate-revocations"));
    let doc: serde_json::Value = serde_json::from_str(calls[1].2.as_deref().unwrap()).unwrap();
    assert_eq!(
        doc["Statement"][0]["Condition"],
        serde_json::json!({
            "StringEquals": {"aws:SourceIdentity": "mandate-claude"},
            "DateLessThan": {"aws:TokenIssueTime": "2026-11-18T11:06:41Z"},
        })
    );
    assert_eq!(report.policies.len(), 3);

    // A restart keeps it.
    drop(b);
    let b = w.broker(state(false));
    assert_eq!(
        code(b.credentials(CLAUDE, req("readonly")).await).0,
        "revoked"
    );
    assert_eq!(
        b.unrevoke(uid(BOB), Scope::Agent("claude".into()))
            .await
            .unwrap(),
        1
    );
    b.credentials(CLAUDE, req("readonly")).await.unwrap();
    // The AWS deny stays until no session it covers can be alive; then --gc removes it.
    w.revoker.calls.lock().unwrap().clear();
    let r = b.revoke_gc(uid(BOB)).await.unwrap();
    assert_eq!(r.removed.len(), 0);
    // Still needed, and nothing expired: nothing is written at AWS (issue 17: gc used to
    // rewrite every policy unchanged and say so).
    assert_eq!(r.policies.len(), 0, "nothing to collect");
    assert!(w.revoker.calls.lock().unwrap().is_empty());
    w.advance(crate::revoke::MAX_SESSION_SECONDS + 1);
    w.revoker.calls.lock().unwrap().clear();
    let r = b.revoke_gc(uid(BOB)).await.unwrap();
    assert_eq!(r.removed.len(), 3);
    assert!(
        w.revoker
            .calls
            .lock()
            .unwrap()
            .iter()
            .all(|c| c.2.is_none())
    );
    assert!(b.controls().revocations.is_empty());
}

#[tokio::test]
async fn pause_breaker_and_rate_limit() {
    let w = World::new();
    let mut st = state(false);
    st.config.limits.breaker_denials = 3;
    st.config.limits.max_issuances = 2;
    let b = w.broker(st);

    // Pause stops everyone, cached sessions included; resume lifts it.
    b.credentials(CLAUDE, req("s3-data")).await.unwrap();
    assert_eq!(
        code(b.set_paused(uid(OTHER_AGENT), true, None).await).0,
        "not_approver"
    );
    b.set_paused(uid(BOB), true, Some("incident 42".into()))
        .await
        .unwrap();
    let (c, m) = code(b.credentials(CLAUDE, req("s3-data")).await);
    assert_eq!(c, "paused");
    assert!(m.contains("incident 42"), "{m}");
    assert_eq!(
        code(b.credentials(uid(OTHER_AGENT), req("readonly")).await).0,
        "paused"
    );
    drop(b);
    let mut st = state(false);
    st.config.limits.breaker_denials = 3;
    st.config.limits.max_issuances = 2;
    let b = w.broker(st);
    assert_eq!(
        code(b.credentials(CLAUDE, req("s3-data")).await).0,
        "paused",
        "survives a restart"
    );
    b.set_paused(uid(BOB), false, None).await.unwrap();

    // Rate limit: two new sessions per window (custom durations skip the cache).
    let custom = |d| CredRequest {
        duration_seconds: Some(d),
        ..req("readonly")
    };
    b.credentials(uid(OTHER_AGENT), custom(900)).await.unwrap();
    b.credentials(uid(OTHER_AGENT), custom(901)).await.unwrap();
    let (c, m) = code(b.credentials(uid(OTHER_AGENT), custom(902)).await);
    assert_eq!(c, "rate_limited");
    assert!(
        m.starts_with("agent other reached its limit of 2 new sessions per 3600 s"),
        "{m}"
    );

    // Breaker: claude pushes at a profile it is not bound to three times.
    for _ in 0..3 {
        b.credentials(CLAUDE, req("nope")).await.unwrap_err();
    }
    let (c, m) = code(b.credentials(CLAUDE, req("readonly")).await);
    assert_eq!(c, "breaker_open");
    assert!(m.contains("mandate breaker reset claude"), "{m}");
    let (c, _) = code(
        b.breaker_reset(
            Caller::Token {
                agent: "claude".into(),
            },
            "claude".into(),
        )
        .await,
    );
    assert_eq!(c, "not_approver");
    b.breaker_reset(uid(BOB), "claude".into()).await.unwrap();
    b.credentials(CLAUDE, req("readonly")).await.unwrap();

    b.audit()
        .append_durable(Record::new(Kind::Stopped))
        .await
        .unwrap();
    // Pause and resume have kinds of their own; the breaker keeps `breaker`.
    let controls: Vec<String> = w
        .records()
        .iter()
        .filter(|r| ["breaker", "paused", "resumed"].contains(&r["kind"].as_str().unwrap()))
        .map(|r| {
            format!(
                "{} {}",
                r["kind"].as_str().unwrap(),
                r["decision"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        controls,
        [
            "paused paused",
            "resumed resumed",
            "breaker tripped",
            "breaker reset"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_that_lands_while_sts_mints_withholds_the_session() {
    let w = World::new();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let mut issuer = FakeIssuer::new();
    issuer.gate = Some(gate.clone());
    let b = Arc::new(w.broker_with(state(false), issuer));
    let call = {
        let b = b.clone();
        tokio::spawn(async move { b.credentials(CLAUDE, req("s3-data")).await })
    };
    // Authorized, and now inside AssumeRole.
    while b.issuer.calls.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    b.revoke(uid(BOB), Scope::Agent("claude".into()), false)
        .await
        .unwrap();
    gate.add_permits(1);
    let (c, _) = code(call.await.unwrap());
    assert_eq!(c, "revoked");
    b.audit()
        .append_durable(Record::new(Kind::Stopped))
        .await
        .unwrap();
    let recs = w.records();
    assert_eq!(recs.iter().filter(|r| r["kind"] == "issued").count(), 0);
    let withheld: Vec<_> = recs
        .iter()
        .filter(|r| r["decision"] == "withheld")
        .collect();
    assert_eq!(withheld.len(), 1);
    assert!(
        withheld[0]["access_key_id"]
            .as_str()
            .unwrap()
            .starts_with("ASIAFAKE")
    );
    // Nor does a cached session survive a pause that lands after authorization: covered by
    // `deliver` re-checking the controls (the same function as above).
}

#[test]
fn peers_never_share_a_uid_with_the_operator_or_with_each_other() {
    use crate::approval::{Parties, Voter};
    let mut r = ApprovalRequest::new(
        ApprovalId::random(),
        Binding {
            agent: "claude".into(),
            profile: "breakglass-admin".into(),
            profile_sha256: String::new(),
            policy_sha256: String::new(),
            role_arn: String::new(),
            duration_seconds: 900,
            reason: None,
        },
        Requirement::Peers {
            n: 2,
            operator: Some("alice".into()),
        },
        None,
        T0,
        900,
    );
    let parties = Parties {
        agent_uids: &[3000],
        operator_uids: &[1000],
    };
    let vote = |r: &ApprovalRequest, name: &str, uids: &[u32]| {
        r.vote(
            &Voter {
                name,
                uids,
                subject: None,
            },
            &parties,
            true,
            None,
            T0,
            600,
        )
        .map(|(n, _)| n)
        .map_err(|e| e.to_string())
    };
    assert_eq!(
        vote(&r, "alice-admin", &[1000]).unwrap_err(),
        "alice-admin shares uid 1000 with alice, who is the operator or has already approved; a peer approval must come from another uid"
    );
    r = vote(&r, "bob", &[1001]).unwrap();
    assert_eq!(
        vote(&r, "bob-again", &[1001]).unwrap_err(),
        "bob-again shares uid 1001 with bob, who is the operator or has already approved; a peer approval must come from another uid"
    );
    r = vote(&r, "carol", &[1002]).unwrap();
    assert_eq!(r.status(T0), crate::approval::Status::Approved);
}

#[tokio::test]
async fn votes_written_into_the_store_by_hand_release_nothing() {
    let w = World::new();
    let b = w.broker(state(false));
    let r = req("breakglass-admin");
    let id = pending_id(b.credentials(CLAUDE, r.clone()).await);
    // Bob votes through the daemon (signed); carol's vote is written straight into the store,
    // as someone with write access to a shared database could.
    b.vote(uid(BOB), id.clone(), true, None, None)
        .await
        .unwrap();
    let store = SqliteStore::open(&w.dir.path().join("approvals.db")).unwrap();
    let mut row = store.get(&id).unwrap().unwrap();
    let mut forged = row.votes[0].clone();
    forged.approver = "carol".into();
    forged.uids = vec![CAROL];
    forged.proof = None;
    row.votes.push(forged);
    row.stage = crate::approval::Stage::Approved {
        at: T0,
        use_by: T0 + 600,
    };
    let version = row.version;
    row.version += 1;
    assert!(store.replace(version, &row).unwrap());
    let (c, m) = code(b.credentials(CLAUDE, r.clone()).await);
    assert_eq!(c, "approval_closed");
    assert_eq!(
        m,
        format!(
            "approval request {id} cannot be used: approval request {id} has 1 valid signed approval of the 2 needed (the vote of carol is not signed)"
        )
    );
    assert_eq!(b.issuer.calls.load(Ordering::SeqCst), 0);
    // The refusal is audited.
    assert!(w.records().iter().any(|rec| {
        rec["kind"] == "denied"
            && rec["code"] == "approval_closed"
            && rec["message"]
                .as_str()
                .is_some_and(|m| m.contains("not signed"))
    }));
    // A vote signed by a key this daemon does not trust counts no more than an unsigned one.
    let mut v = row.votes[1].clone();
    crate::approval::proof::sign(
        &row,
        &mut v,
        &ed25519_dalek::SigningKey::from_bytes(&[9; 32]),
    );
    row.votes[1] = v;
    let version = row.version;
    row.version += 1;
    assert!(store.replace(version, &row).unwrap());
    let (c, m) = code(b.credentials(CLAUDE, r.clone()).await);
    assert_eq!(c, "approval_closed");
    assert!(m.contains("which is not a trusted vote signer"), "{m}");
    assert_eq!(b.issuer.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn at_the_console_what_loosens_needs_a_passkey_and_the_mapping_must_hold() {
    let w = World::new();
    let mut st = state(false);
    st.config.console = Some(crate::config::ConsoleConfig {
        listen: "127.0.0.1:1".parse().unwrap(),
        public_url: url::Url::parse("https://approve.example.com").unwrap(),
        tls: None,
        session_lifetime: std::time::Duration::from_secs(60),
        oidc_only_operator_votes: false,
        oidc: crate::config::OidcConfig {
            issuer: url::Url::parse("https://login.example.com").unwrap(),
            client_id: "m".into(),
            client_secret_file: None,
            ca_file: None,
        },
    });
    st.config.approvers.get_mut("bob").unwrap().oidc_subject = Some("s-bob".into());
    let b = w.broker(st);
    let console = |subject: &str, passkey: Option<&str>| {
        Caller::Console(crate::broker::ConsoleUser {
            approver: "bob".into(),
            subject: subject.into(),
            email: None,
            passkey: passkey.map(Into::into),
        })
    };
    // Pausing (which only stops things) needs the sign-in; resuming needs the passkey too.
    b.set_paused(console("s-bob", None), true, Some("x".into()))
        .await
        .unwrap();
    let (c, m) = code(b.set_paused(console("s-bob", None), false, None).await);
    assert_eq!(c, "not_approver");
    assert_eq!(m, "resume at the console needs your passkey");
    let (c, m) = code(
        b.breaker_reset(console("s-bob", None), "claude".into())
            .await,
    );
    assert_eq!(c, "not_approver");
    assert_eq!(m, "breaker reset claude at the console needs your passkey");
    b.set_paused(console("s-bob", Some("pk")), false, None)
        .await
        .unwrap();
    // A sign-in the config no longer maps to bob acts as nobody.
    let (c, m) = code(
        b.set_paused(console("s-mallory", Some("pk")), true, None)
            .await,
    );
    assert_eq!(c, "not_approver");
    assert_eq!(
        m,
        "the console sign-in \"s-mallory\" is no longer mapped to approver bob"
    );
}
