use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;
use crate::approval::Requirement;
use crate::audit::{Kind, Record};
use crate::aws::{AssumeRoleInput, Credentials, StsError};
use crate::clock;
use crate::config;
use crate::config::CachePolicy;
use crate::secret::Secret;

struct FakeIssuer {
    calls: AtomicUsize,
    inputs: Mutex<Vec<AssumeRoleInput>>,
    fail: Option<StsError>,
    /// When set, each AssumeRole waits for a permit (the test decides when STS answers).
    gate: Option<Arc<tokio::sync::Semaphore>>,
}

impl FakeIssuer {
    fn new() -> Self {
        FakeIssuer {
            calls: AtomicUsize::new(0),
            inputs: Mutex::new(Vec::new()),
            fail: None,
            gate: None,
        }
    }
}

impl Issuer for FakeIssuer {
    async fn assume_role(&self, input: AssumeRoleInput) -> Result<Credentials, StsError> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        if let Some(g) = &self.gate {
            g.acquire().await.unwrap().forget();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        if let Some(e) = &self.fail {
            return Err(e.clone());
        }
        let exp = clock::unix_now() + i64::from(input.duration_seconds);
        self.inputs.lock().unwrap().push(input);
        Ok(Credentials {
            access_key_id: format!("ASIAFAKE{n:08}"),
            secret_access_key: Secret::new(format!("secret-{n}")),
            session_token: Secret::new(format!("token-{n}")),
            expiration: exp,
            assumed_role_arn: "arn:aws:sts::123456789012:assumed-role/agent-role/x".into(),
        })
    }
}

const CONFIG: &str = r#"
[broker]
state_dir = "state"
socket = "mandate.sock"
profiles_dir = "PROFILES"

[roles.sandbox]
arn = "arn:aws:iam::123456789012:role/agent-role"
max_session = "1h"
[roles.deployer]
arn = "arn:aws:iam::123456789012:role/deployer"
[roles.admin]
arn = "arn:aws:iam::123456789012:role/admin"

[agents.claude]
profiles = ["readonly", "s3-data", "deploy-staging", "breakglass-admin"]
uids = [1000]
operator = "alice"

[agents.other]
profiles = ["readonly"]
uids = [2000]

[approvers.alice]
uids = [1000]
[approvers.bob]
uids = [1001]
[approvers.carol]
uids = [1002]
"#;

fn state(base_is_temporary: bool) -> State {
    let dir = tempfile::tempdir().unwrap();
    let profiles = Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles");
    let cfg = CONFIG.replace("PROFILES", profiles.to_str().unwrap());
    let path = dir.path().join("broker.toml");
    std::fs::write(&path, cfg).unwrap();
    State::new(config::load(&path).unwrap(), base_is_temporary)
}

fn req(profile: &str) -> CredRequest {
    CredRequest {
        profile: profile.into(),
        ..CredRequest::default()
    }
}

const CLAUDE: Caller = Caller::Peer {
    uid: 1000,
    pid: Some(42),
};

#[test]
fn authorization_table() {
    let s = state(false);
    type Case = (Caller, CredRequest, Result<u32, (DenyCode, &'static str)>);
    let cases: Vec<Case> = vec![
        (CLAUDE, req("s3-data"), Ok(3600)),
        (CLAUDE, req("readonly"), Ok(3600)),
        (
            Caller::Peer {
                uid: 3000,
                pid: None,
            },
            req("readonly"),
            Err((
                DenyCode::UnknownCaller,
                "uid 3000 is not bound to any agent in the broker config",
            )),
        ),
        (
            Caller::Peer {
                uid: 2000,
                pid: None,
            },
            req("s3-data"),
            Err((
                DenyCode::NotBound,
                "agent other is not bound to profile s3-data",
            )),
        ),
        (
            CLAUDE,
            CredRequest {
                agent: Some("other".into()),
                ..req("readonly")
            },
            Err((
                DenyCode::UnknownCaller,
                "uid 1000 may not act as agent \"other\"",
            )),
        ),
        (
            CLAUDE,
            req("nope"),
            Err((DenyCode::UnknownProfile, "no profile named \"nope\"")),
        ),
        // Needs a human: shown as the duration plus a marker (see below).
        (CLAUDE, req("deploy-staging"), Ok(1_800_000)),
        (
            CLAUDE,
            CredRequest {
                duration_seconds: Some(1200),
                ..req("s3-data")
            },
            Ok(1200),
        ),
        (
            CLAUDE,
            CredRequest {
                duration_seconds: Some(7200),
                ..req("s3-data")
            },
            Err((
                DenyCode::BadRequest,
                "duration 7200 s is outside 900 to 3600 s, the range allowed for s3-data",
            )),
        ),
    ];
    for (caller, r, want) in cases {
        let got = match authorize(&s, &Controls::default(), &caller, &r) {
            Decision::Granted(g) => Ok(g.duration_seconds()),
            Decision::NeedsApproval(c) => {
                assert_eq!(
                    c.requirement(),
                    &Requirement::Operator {
                        operator: "alice".into()
                    }
                );
                assert_eq!(c.binding().duration_seconds, 1800);
                Ok(c.binding().duration_seconds * 1000)
            }
            Decision::Denied(d) => Err((d.code, d.message)),
        };
        let want = want.map_err(|(c, m)| (c, m.to_owned()));
        assert_eq!(got, want, "{r:?}");
    }
}

#[test]
fn temporary_base_credentials_cap_sessions_at_one_hour() {
    let mut s = state(true);
    // Pretend the role allows 12 h and the profile asks for 12 h.
    let role = s.config.roles.get_mut("sandbox").unwrap();
    role.max_session = crate::profile::SessionDuration::parse("12h").unwrap();
    let Decision::Granted(g) = authorize(&s, &Controls::default(), &CLAUDE, &req("s3-data")) else {
        panic!()
    };
    assert_eq!(g.duration_seconds(), 3600);
}

#[test]
fn cache_freshness() {
    let p = CachePolicy::default(); // refresh 20 min ahead, never below 5 min
    let now = 1_000_000;
    assert!(servable(&p, now + 3600, 3600, now));
    assert!(servable(&p, now + 20 * 60 + 1, 3600, now));
    assert!(
        !servable(&p, now + 20 * 60, 3600, now),
        "inside the refresh window"
    );
    // A 15-minute session is reused until half of it is gone, but never under 5 minutes.
    assert!(servable(&p, now + 8 * 60, 900, now));
    assert!(!servable(&p, now + 7 * 60, 900, now));
    let strict = CachePolicy {
        refresh_ahead: Duration::from_secs(600),
        min_remaining: Duration::from_secs(500),
    };
    assert!(!servable(&strict, now + 450, 900, now));
}

fn audit_dir() -> (tempfile::TempDir, AuditLog) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let key = ed25519_dalek::SigningKey::from_bytes(&[1; 32]);
    let (log, _) = AuditLog::open(dir.path(), key, crate::audit::Options::default()).unwrap();
    (dir, log)
}

fn records(dir: &tempfile::TempDir) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.path().join(crate::audit::segment_name(1)))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_cold_requests_mint_once_and_everything_is_audited() {
    let (dir, log) = audit_dir();
    let broker = Arc::new(Broker::new(state(false), FakeIssuer::new(), log));
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let b = broker.clone();
        tasks.push(tokio::spawn(async move {
            b.credentials(CLAUDE, req("s3-data")).await
        }));
    }
    let mut keys = std::collections::HashSet::new();
    for t in tasks {
        keys.insert(t.await.unwrap().unwrap().credentials.access_key_id.clone());
    }
    assert_eq!(broker.issuer.calls.load(Ordering::SeqCst), 1);
    assert_eq!(keys.len(), 1);
    let input = broker.issuer.inputs.lock().unwrap()[0].clone();
    let s3 = &broker.state().profiles["s3-data"];
    assert_eq!(input.policy, s3.policy.as_json());
    assert_eq!(input.source_identity, "mandate-claude");
    assert_eq!(input.duration_seconds, 3600);
    assert!(input.session_name.starts_with("mandate-claude-"));
    let tag_keys: Vec<&str> = input.tags.iter().map(|t| t.0.as_str()).collect();
    assert_eq!(
        tag_keys,
        [
            "mandate-agent",
            "mandate-profile",
            "mandate-request-id",
            "mandate-access",
            "team"
        ]
    );
    assert_eq!(input.tags[3].1, "write");

    // Deliveries of one session to one uid share a window: the first is one record, the
    // rest are counted when the window closes (at the latest at shutdown).
    let recs = records(&dir);
    let count = |k: &str| recs.iter().filter(|r| r["kind"] == k).count();
    assert_eq!(
        (count("request"), count("issued"), count("delivered")),
        (1, 1, 1)
    );
    broker.flush_deliveries(true).await.unwrap();
    broker
        .audit()
        .append_durable(Record::new(Kind::Stopped))
        .await
        .unwrap();
    let recs = records(&dir);
    let delivered: Vec<&serde_json::Value> =
        recs.iter().filter(|r| r["kind"] == "delivered").collect();
    assert_eq!(delivered.len(), 2);
    assert_eq!(delivered[1]["count"], 198);
    let total: u64 = delivered
        .iter()
        .map(|r| r["count"].as_u64().unwrap_or(1))
        .sum();
    assert_eq!(total, 199, "every delivery is counted");
    let text = std::fs::read_to_string(dir.path().join(crate::audit::segment_name(1))).unwrap();
    assert!(
        !text.contains("secret-0") && !text.contains("token-0"),
        "no secret in the audit log"
    );
}

#[tokio::test]
async fn denials_are_audited_and_nothing_is_minted() {
    let (dir, log) = audit_dir();
    let broker = Broker::new(state(false), FakeIssuer::new(), log);
    let err = broker
        .credentials(
            Caller::Peer {
                uid: 2000,
                pid: Some(7),
            },
            req("s3-data"),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), "not_bound");
    assert_eq!(broker.issuer.calls.load(Ordering::SeqCst), 0);
    let recs = records(&dir);
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0]["kind"], "denied");
    assert_eq!(recs[0]["agent"], "other");
    assert_eq!(recs[0]["code"], "not_bound");
    assert_eq!(recs[0]["uid"], 2000);
}

#[tokio::test]
async fn sts_errors_surface_and_are_audited() {
    let (dir, log) = audit_dir();
    let mut issuer = FakeIssuer::new();
    issuer.fail = Some(StsError::Throttled);
    let broker = Broker::new(state(false), issuer, log);
    let err = broker
        .credentials(CLAUDE, req("s3-data"))
        .await
        .unwrap_err();
    assert!(matches!(err, BrokerError::Sts(StsError::Throttled)));
    let kinds: Vec<String> = records(&dir)
        .iter()
        .map(|r| r["kind"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kinds, ["request", "denied"]);
}

#[tokio::test]
async fn a_failed_audit_log_stops_issuance_before_sts() {
    let (dir, log) = audit_dir();
    let broker = Broker::new(state(false), FakeIssuer::new(), log);
    // Make the log unwritable under the writer: replace the file with a directory is not
    // possible while open, so mark it failed through a write to a full device instead.
    broker.audit().failed_for_test();
    let err = broker
        .credentials(CLAUDE, req("s3-data"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "audit_unavailable");
    assert_eq!(broker.issuer.calls.load(Ordering::SeqCst), 0);
    drop(dir);
}

/// Two profiles with identical content are two cache entries: each session is minted, tagged
/// and audited for the profile it was asked for (review point 7).
#[tokio::test]
async fn profiles_with_identical_content_never_share_a_session() {
    let dir = tempfile::tempdir().unwrap();
    let profiles = dir.path().join("profiles");
    std::fs::create_dir(&profiles).unwrap();
    let body = "description = \"same\"\nrole = \"sandbox\"\napproval = \"none\"\n[[allow]]\nactions = [\"s3:GetObject\"]\nresources = [\"*\"]\n";
    for name in [
        "twin-a",
        "twin-b",
        "readonly",
        "s3-data",
        "deploy-staging",
        "breakglass-admin",
    ] {
        std::fs::write(profiles.join(format!("{name}.toml")), body).unwrap();
    }
    let cfg = CONFIG
        .replace("PROFILES", profiles.to_str().unwrap())
        .replace(
            "\"breakglass-admin\"]",
            "\"breakglass-admin\", \"twin-a\", \"twin-b\"]",
        );
    let path = dir.path().join("broker.toml");
    std::fs::write(&path, cfg).unwrap();
    let (adir, log) = audit_dir();
    let broker = Broker::new(
        State::new(config::load(&path).unwrap(), false),
        FakeIssuer::new(),
        log,
    );
    let a = broker.credentials(CLAUDE, req("twin-a")).await.unwrap();
    let b = broker.credentials(CLAUDE, req("twin-b")).await.unwrap();
    let a2 = broker.credentials(CLAUDE, req("twin-a")).await.unwrap();
    assert_eq!(broker.issuer.calls.load(Ordering::SeqCst), 2);
    assert_ne!(a.credentials.access_key_id, b.credentials.access_key_id);
    assert_eq!(a.credentials.access_key_id, a2.credentials.access_key_id);
    assert_eq!(
        (a.profile.as_str(), b.profile.as_str()),
        ("twin-a", "twin-b")
    );
    let inputs = broker.issuer.inputs.lock().unwrap().clone();
    let tag = |i: &AssumeRoleInput| {
        i.tags
            .iter()
            .find(|t| t.0 == "mandate-profile")
            .map(|t| t.1.clone())
    };
    assert_eq!(tag(&inputs[0]).as_deref(), Some("twin-a"));
    assert_eq!(tag(&inputs[1]).as_deref(), Some("twin-b"));
    broker
        .audit()
        .append_durable(Record::new(Kind::Stopped))
        .await
        .unwrap();
    let delivered: Vec<_> = records(&adir)
        .into_iter()
        .filter(|r| r["kind"] == "delivered")
        .collect();
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0]["profile"], "twin-a");
    assert_eq!(
        delivered[0]["access_key_id"],
        a.credentials.access_key_id.as_str()
    );
}

mod agent_view;
mod approvals;
