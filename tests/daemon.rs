//! The real `mandate` daemon against moto (STS/IAM) on free loopback ports, driven by real
//! clients: the AWS CLI, boto3 and the Rust aws-config crate, all through credential_process.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A profiles directory for the test: the example s3-data, plus one that exercises managed
/// policy ARNs, extra tags and duration clamping (it asks for 2h; the role allows 1h). Managed
/// policies are opaque to the compiler, so that profile needs a human (approval = "operator").
fn test_profiles(dir: &Path) -> std::path::PathBuf {
    let p = dir.join("profiles");
    std::fs::create_dir(&p).unwrap();
    std::fs::copy(root().join("profiles/s3-data.toml"), p.join("s3-data.toml")).unwrap();
    std::fs::copy(
        root().join("profiles/readonly.toml"),
        p.join("readonly.toml"),
    )
    .unwrap();
    std::fs::copy(
        root().join("profiles/deploy-staging.toml"),
        p.join("deploy-staging.toml"),
    )
    .unwrap();
    std::fs::write(
        p.join("clamped.toml"),
        r#"description = "two hours asked, one allowed"
role = "sandbox"
duration = "2h"
approval = "operator"
managed_policies = ["arn:aws:iam::aws:policy/ReadOnlyAccess"]
[[allow]]
actions = ["s3:GetObject"]
resources = ["arn:aws:s3:::team-data/*"]
[tags]
team = "data"
"#,
    )
    .unwrap();
    p
}

fn caller_identity_aws_cli(d: &Daemon, moto: &Moto, profile: &str) -> Value {
    let out = aws_cli()
        .env("AWS_CONFIG_FILE", d.aws_config(profile))
        .args([
            "--endpoint-url",
            &moto.endpoint(),
            "sts",
            "get-caller-identity",
            "--profile",
            "agent",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "aws cli: {}\n{}",
        stderr(&out),
        d.log()
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn caller_identity_boto3(d: &Daemon, moto: &Moto, profile: &str) -> Value {
    let script = "import boto3, json, sys\n\
        s = boto3.Session(profile_name='agent')\n\
        print(json.dumps(s.client('sts', endpoint_url=sys.argv[1]).get_caller_identity()))";
    let out = python()
        .env("AWS_CONFIG_FILE", d.aws_config(profile))
        .args(["-c", script, &moto.endpoint()])
        .output()
        .unwrap();
    assert!(out.status.success(), "boto3: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn caller_identity_rust(d: &Daemon, moto: &Moto, profile: &str) -> String {
    use aws_runtime::env_config::file::{
        EnvConfigFileKind as ProfileFileKind, EnvConfigFiles as ProfileFiles,
    };
    let files = ProfileFiles::builder()
        .with_file(ProfileFileKind::Config, d.aws_config(profile))
        .build();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let provider = aws_config::profile::ProfileFileCredentialsProvider::builder()
            .profile_files(files)
            .profile_name("agent")
            .build();
        let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .credentials_provider(provider)
            .region(aws_config::Region::new("us-east-1"))
            .endpoint_url(moto.endpoint())
            .load()
            .await;
        let out = aws_sdk_sts::Client::new(&conf)
            .get_caller_identity()
            .send()
            .await
            .expect("rust sdk call");
        out.arn().unwrap().to_owned()
    })
}

#[test]
fn three_clients_get_the_profiles_scoped_session_and_sts_receives_exactly_the_compiled_request() {
    let moto = Moto::start();
    let tmp = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(tmp.path(), moto.port);
    let profiles = test_profiles(tmp.path());
    let d = Daemon::start(
        &config_with_profiles(&proxy.endpoint(), &profiles, "").replace(
            "profiles = [\"readonly\", \"s3-data\", \"deploy-staging\"]",
            "profiles = [\"readonly\", \"s3-data\", \"deploy-staging\", \"clamped\"]",
        ),
    );

    let cli = caller_identity_aws_cli(&d, &moto, "s3-data");
    let arn = cli["Arn"].as_str().unwrap().to_owned();
    assert!(
        arn.starts_with("arn:aws:sts::123456789012:assumed-role/agent-role/mandate-claude-"),
        "{arn}"
    );
    // The other clients are served the same cached session.
    assert_eq!(
        caller_identity_boto3(&d, &moto, "s3-data")["Arn"],
        arn.as_str()
    );
    assert_eq!(caller_identity_rust(&d, &moto, "s3-data"), arn);

    let recorded = proxy.assume_roles();
    assert_eq!(
        recorded.len(),
        1,
        "one AssumeRole for three clients: {recorded:?}"
    );
    let r = &recorded[0];
    let shown = d.mandate(&[
        "profiles",
        "show",
        "s3-data",
        "--profiles",
        profiles.to_str().unwrap(),
        "--json",
    ]);
    let shown: Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(
        r["Policy"], shown["policy_json"],
        "the exact compiled policy bytes"
    );
    assert_eq!(r["RoleArn"], ROLE_ARN);
    assert_eq!(r["DurationSeconds"], "3600");
    assert_eq!(r["SourceIdentity"], "mandate-claude");
    let session = arn.rsplit('/').next().unwrap();
    assert_eq!(r["RoleSessionName"], session);
    assert_eq!(r["Tags.member.1.Key"], "mandate-agent");
    assert_eq!(r["Tags.member.1.Value"], "claude");
    assert_eq!(r["Tags.member.2.Key"], "mandate-profile");
    assert_eq!(r["Tags.member.2.Value"], "s3-data");
    assert_eq!(r["Tags.member.3.Key"], "mandate-request-id");
    assert_eq!(r["Tags.member.4.Key"], "mandate-access");
    assert_eq!(r["Tags.member.4.Value"], "write");
    assert_eq!(r["Tags.member.5.Key"], "team");
    assert_eq!(r["TransitiveTagKeys.member.1"], "mandate-agent");
    assert!(r.get("PolicyArns.member.1.arn").is_none());
    // moto recorded the same session with the same policy.
    let sessions = moto.assumed_roles();
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0]["session_name"], session);
    assert_eq!(sessions[0]["policy"], shown["policy_json"]);

    // Managed policy ARNs, extra tags, and the duration clamped to the role's 1h maximum; a
    // profile with managed policies always needs a human first.
    let pending = d.mandate(&["credential-process", "clamped"]);
    assert_eq!(pending.status.code(), Some(5), "{}", stderr(&pending));
    assert_eq!(
        proxy.assume_roles().len(),
        1,
        "nothing reached STS before approval"
    );
    let id = stderr(&pending)
        .split("request ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .unwrap()
        .to_owned();
    let approved = d.mandate(&["approve", &id]);
    assert!(approved.status.success(), "{}", stderr(&approved));
    caller_identity_aws_cli(&d, &moto, "clamped");
    let r = proxy.assume_roles().pop().unwrap();
    assert_eq!(
        r["PolicyArns.member.1.arn"],
        "arn:aws:iam::aws:policy/ReadOnlyAccess"
    );
    assert_eq!(r["DurationSeconds"], "3600");
    assert_eq!(r["Tags.member.5.Key"], "team");
    assert_eq!(r["Tags.member.5.Value"], "data");

    // Audit: request and issued records carry the access key the clients used, and no secret.
    let audit = d.audit();
    let issued: Vec<&Value> = audit.iter().filter(|r| r["kind"] == "issued").collect();
    assert_eq!(issued.len(), 2);
    assert_eq!(issued[0]["session_name"], session);
    let text =
        std::fs::read_to_string(d.dir.path().join("state/audit/audit-000001.jsonl")).unwrap();
    let cp = d.mandate(&["credential-process", "s3-data"]);
    let cp: Value = serde_json::from_slice(&cp.stdout).unwrap();
    assert!(!text.contains(cp["SecretAccessKey"].as_str().unwrap()));
    assert!(!text.contains(cp["SessionToken"].as_str().unwrap()));
    assert!(!d.log().contains(cp["SecretAccessKey"].as_str().unwrap()));
}

#[test]
fn credential_process_output_has_the_documented_shape() {
    let moto = Moto::start();
    let d = Daemon::start(&config_text(&moto.endpoint(), ""));
    let out = d.mandate(&["credential-process", "readonly"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(out.stderr.is_empty());
    let text = stdout(&out);
    assert_eq!(text.lines().count(), 1);
    let v: Value = serde_json::from_str(&text).unwrap();
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "AccessKeyId",
            "Expiration",
            "SecretAccessKey",
            "SessionToken",
            "Version"
        ]
    );
    assert_eq!(v["Version"], 1);
    let exp = v["Expiration"].as_str().unwrap();
    assert!(
        exp.len() == 20 && exp.ends_with('Z') && exp.as_bytes()[10] == b'T',
        "{exp}"
    );
}

#[test]
fn the_small_front_answers_credential_process_alone_and_says_when_the_full_program_is_missing() {
    let moto = Moto::start();
    let d = Daemon::start(&config_text(&moto.endpoint(), ""));
    let dir = tempfile::tempdir().unwrap();
    let front = dir.path().join("mandate");
    std::fs::copy(MANDATE, &front).unwrap();
    let run = |args: &[&str]| {
        let mut c = Command::new(&front);
        clean_env(&mut c);
        c.arg("--config")
            .arg(&d.config)
            .args(args)
            .output()
            .unwrap()
    };
    // No mandate-broker beside it: credential-process still works (the front answers it).
    let out = run(&["credential-process", "readonly"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["Version"], 1);
    // Anything else needs the full program, and says where it should be.
    for args in [&["status"][..], &["credential-process", "--help"]] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(4), "{args:?}");
        assert_eq!(
            stderr(&out),
            format!(
                "mandate: cannot run {}: No such file or directory (os error 2); mandate-broker must be installed in the same directory as mandate (`cargo install --path .` installs both)\n",
                dir.path().join("mandate-broker").display()
            )
        );
    }
}

#[test]
fn the_front_and_the_full_program_answer_credential_process_alike() {
    let moto = Moto::start();
    let d = Daemon::start(&config_text(&moto.endpoint(), ""));
    let stopped = tempfile::tempdir().unwrap();
    let cfg = stopped.path().join("broker.toml");
    std::fs::write(&cfg, "socket = \"nowhere.sock\"\n").unwrap();
    let config = d.config.display().to_string();
    let down = cfg.display().to_string();
    let cases: &[&[&str]] = &[
        &["--config", &config, "credential-process", "readonly"],
        &["credential-process", "--config", &config, "no-such-profile"],
        &[
            "--config",
            &config,
            "credential-process",
            "--agent",
            "nobody",
            "readonly",
        ],
        &["--config", &config, "credential-process", "admin"],
        &["--config", &down, "credential-process", "readonly"],
        &[
            "--config=/nonexistent/broker.toml",
            "credential-process",
            "readonly",
        ],
        &["credential-process", "readonly"],
    ];
    for args in cases {
        let run = |program: &str| {
            let mut c = Command::new(program);
            clean_env(&mut c);
            c.args(*args).output().unwrap()
        };
        let (front, full) = (run(MANDATE), run(MANDATE_BROKER));
        assert_eq!(front.status.code(), full.status.code(), "{args:?}");
        assert_eq!(stderr(&front), stderr(&full), "{args:?}");
        if front.status.success() {
            // Two cached deliveries of the same session: the same bytes.
            assert_eq!(stdout(&front), stdout(&full), "{args:?}");
        } else {
            assert!(
                front.stdout.is_empty() && full.stdout.is_empty(),
                "{args:?}"
            );
        }
    }
}

#[test]
fn two_hundred_concurrent_cold_requests_cause_exactly_one_assume_role() {
    let moto = Moto::start();
    let d = Daemon::start(&config_text(&moto.endpoint(), ""));
    let handles: Vec<_> = (0..200)
        .map(|_| {
            let config = d.config.clone();
            std::thread::spawn(move || {
                mandate_at(&config)
                    .args(["credential-process", "s3-data"])
                    .output()
                    .unwrap()
            })
        })
        .collect();
    let mut keys = std::collections::BTreeSet::new();
    for h in handles {
        let out = h.join().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        keys.insert(v["AccessKeyId"].as_str().unwrap().to_owned());
    }
    assert_eq!(keys.len(), 1, "every caller got the same session");
    assert_eq!(
        moto.assumed_roles().len(),
        1,
        "exactly one AssumeRole reached moto"
    );
    let audit = d.audit();
    assert_eq!(audit.iter().filter(|r| r["kind"] == "issued").count(), 1);
}

#[test]
fn a_uid_not_bound_to_the_agent_is_refused_even_on_a_world_writable_socket() {
    let moto = Moto::start();
    let d = Daemon::start(&config_text(&moto.endpoint(), ""));
    // Open everything up: only the peer-uid check can stop the other user now.
    for p in [d.dir.path(), &d.dir.path().join("run")] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(d.socket(), std::fs::Permissions::from_mode(0o666)).unwrap();
    std::fs::set_permissions(&d.config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let bin = install_binaries(d.dir.path());
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&bin)
        .arg("--config")
        .arg(&d.config)
        .args(["credential-process", "readonly"])
        .env_clear()
        .output()
        .expect("setpriv (util-linux)");
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(out.stdout.is_empty());
    assert_eq!(
        stderr(&out),
        "mandate: uid 65534 is not bound to any agent in the broker config\n"
    );
    assert!(moto.assumed_roles().is_empty());
    let denied: Vec<Value> = d
        .audit()
        .into_iter()
        .filter(|r| r["kind"] == "denied")
        .collect();
    assert_eq!(denied.len(), 1);
    assert_eq!(denied[0]["uid"], 65534);
    assert_eq!(denied[0]["code"], "unknown_caller");
}

#[test]
fn unbound_and_approval_profiles_are_refused_and_audited() {
    let moto = Moto::start();
    let d = Daemon::start(&config_text(&moto.endpoint(), ""));
    let out = d.mandate(&["credential-process", "breakglass-admin"]);
    assert_eq!(out.status.code(), Some(5));
    assert!(out.stdout.is_empty());
    assert_eq!(
        stderr(&out),
        "mandate: agent claude is not bound to profile breakglass-admin\n"
    );
    let out = d.mandate(&["credential-process", "deploy-staging"]);
    assert_eq!(out.status.code(), Some(5));
    assert!(out.stdout.is_empty());
    assert!(
        stderr(&out).starts_with("mandate: profile deploy-staging needs approval: request "),
        "{}",
        stderr(&out)
    );
    assert!(moto.assumed_roles().is_empty(), "nothing reached STS");
    let codes: Vec<Value> = d
        .audit()
        .iter()
        .filter(|r| r["kind"] == "denied")
        .map(|r| r["code"].clone())
        .collect();
    assert_eq!(codes, [json!("not_bound")]);
    let pending = d.audit().iter().filter(|r| r["kind"] == "pending").count();
    assert_eq!(pending, 1);
}

/// Runs credential-process and returns (exit code, stderr, seconds taken); stdout must be empty.
fn failing(d: &Daemon, profile: &str) -> (Option<i32>, String, f64) {
    let t = Instant::now();
    let out = d.mandate(&["credential-process", profile]);
    let secs = t.elapsed().as_secs_f64();
    assert!(out.stdout.is_empty(), "no credential on failure");
    assert_eq!(
        stderr(&out).lines().count(),
        1,
        "one line on stderr: {}",
        stderr(&out)
    );
    (out.status.code(), stderr(&out), secs)
}

#[test]
fn sts_faults_give_specific_errors_in_bounded_time_and_no_credential() {
    let moto = Moto::start();
    let tmp = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(tmp.path(), moto.port);
    let d = Daemon::start(&config_text(&proxy.endpoint(), ""));
    let bound = 60.0; // a generous ceiling: 3 attempts × 2 s timeout plus backoff

    proxy.inject(json!({"status": 503, "code": "ServiceUnavailable", "count": 100}));
    let before = proxy.assume_roles().len();
    let (code, err, secs) = failing(&d, "readonly");
    assert_eq!(code, Some(6));
    assert_eq!(
        err,
        "mandate: STS is unavailable (ServiceUnavailable); retried and gave up\n"
    );
    assert!(secs < bound);
    assert_eq!(
        proxy.assume_roles().len() - before,
        3,
        "5xx is retried, a bounded number of times"
    );

    proxy.inject(json!({"status": 400, "code": "Throttling", "count": 100}));
    let (code, err, _) = failing(&d, "readonly");
    assert_eq!(code, Some(6));
    assert_eq!(
        err,
        "mandate: STS is throttling requests; retried and gave up, try again shortly\n"
    );

    proxy.inject(json!({"status": 403, "code": "ExpiredToken", "count": 100}));
    let before = proxy.assume_roles().len();
    let (code, err, _) = failing(&d, "readonly");
    assert_eq!(code, Some(6));
    assert_eq!(
        err,
        "mandate: the broker's base AWS credentials have expired; renew them (e.g. `aws sso login`) and restart or retry\n"
    );
    assert_eq!(
        proxy.assume_roles().len() - before,
        1,
        "an expired token is not retried"
    );

    proxy.inject(json!({"status": 403, "code": "AccessDenied", "count": 100}));
    let (code, err, _) = failing(&d, "readonly");
    assert_eq!(code, Some(6));
    assert!(err.starts_with("mandate: STS refused AssumeRole on arn:aws:iam::123456789012:role/agent-role: the role may not exist, or its trust policy does not allow"), "{err}");

    proxy.inject(json!({"delay": 5, "count": 100}));
    let (code, err, secs) = failing(&d, "readonly");
    assert_eq!(code, Some(6));
    assert_eq!(
        err,
        "mandate: STS did not answer in time; retried and gave up\n"
    );
    assert!(secs < bound);

    // A transient fault that clears is absorbed by the retries.
    proxy.inject(json!({"status": 500, "code": "InternalFailure", "count": 1}));
    let out = d.mandate(&["credential-process", "readonly"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    // STS (moto) gone entirely.
    drop(proxy);
    let (code, err, secs) = failing(&d, "s3-data");
    assert_eq!(code, Some(6));
    assert_eq!(
        err,
        "mandate: STS is unavailable (cannot connect to the STS endpoint); retried and gave up\n"
    );
    assert!(secs < bound);
    let audit = d.audit();
    assert!(
        audit
            .iter()
            .all(|r| r["kind"] != "issued" || r["profile"] == "readonly")
    );
}

#[test]
fn the_daemon_not_running_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("broker.toml");
    std::fs::write(&cfg, config_text("http://127.0.0.1:9", "")).unwrap();
    let out = mandate_at(&cfg)
        .args(["credential-process", "readonly"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(6));
    assert!(out.stdout.is_empty());
    assert_eq!(
        stderr(&out),
        format!(
            "mandate: the mandate daemon is not running (no socket at {}); start it with `mandate --config {} serve`\n",
            tmp.path().join("run/mandate.sock").display(),
            cfg.display()
        )
    );
    // Issue 17: a relative --config still gives absolute paths.
    let out = mandate_at(Path::new("broker.toml"))
        .current_dir(tmp.path())
        .args(["credential-process", "readonly"])
        .output()
        .unwrap();
    assert!(
        stderr(&out).contains(&format!(
            "no socket at {}); start it with `mandate --config {} serve`",
            tmp.path().join("run/mandate.sock").display(),
            cfg.display()
        )),
        "{}",
        stderr(&out)
    );
}

#[test]
fn exec_env_and_status() {
    let moto = Moto::start();
    let d = Daemon::start(&config_text(&moto.endpoint(), ""));
    let mut c = std::process::Command::new(MANDATE);
    clean_env(&mut c);
    let out = c
        .env("AWS_PROFILE", "operator-admin")
        .env("AWS_ACCESS_KEY_ID", "AKIAOPERATOR")
        .env(
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            "http://169.254.170.2/creds",
        )
        .env("SECRET_OF_THE_OPERATOR", "x")
        .env("AWS_ENDPOINT_URL", moto.endpoint())
        .arg("--config")
        .arg(&d.config)
        .args(["exec", "s3-data", "--", "env"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let env: std::collections::BTreeMap<String, String> = stdout(&out)
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect();
    assert_eq!(env["AWS_CONFIG_FILE"], "/dev/null");
    assert_eq!(env["AWS_SHARED_CREDENTIALS_FILE"], "/dev/null");
    assert_eq!(env["AWS_EC2_METADATA_DISABLED"], "true");
    assert_eq!(env["AWS_ENDPOINT_URL"], moto.endpoint());
    assert!(
        env["AWS_ACCESS_KEY_ID"].starts_with("ASIA") || env["AWS_ACCESS_KEY_ID"] != "AKIAOPERATOR"
    );
    for gone in [
        "AWS_PROFILE",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "SECRET_OF_THE_OPERATOR",
    ] {
        assert!(!env.contains_key(gone), "{gone} leaked into the child");
    }

    // The child really is the scoped session: the AWS CLI inside exec.
    let mut c = std::process::Command::new(MANDATE);
    clean_env(&mut c);
    let out = c
        .env("AWS_ENDPOINT_URL", moto.endpoint())
        .arg("--config")
        .arg(&d.config)
        .arg("exec")
        .arg("readonly")
        .arg("--")
        .arg(venv("aws"))
        .args([
            "sts",
            "get-caller-identity",
            "--query",
            "Arn",
            "--output",
            "text",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("assumed-role/agent-role/mandate-claude-"));

    let out = d.mandate(&["env", "readonly"]);
    let text = stdout(&out);
    assert!(text.contains("export AWS_ACCESS_KEY_ID='") && text.contains("unset AWS_PROFILE"));

    let out = d.mandate(&["status", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let sessions = v["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 2, "{v}");
    assert!(sessions.iter().all(|s| s["agent"] == "claude"));
    let out = d.mandate(&["status"]);
    assert!(
        stdout(&out).contains("agent claude: 2 live session(s)"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn a_changed_profile_is_reloaded_and_gets_a_fresh_session_and_shutdown_is_graceful() {
    let moto = Moto::start();
    let tmp = tempfile::tempdir().unwrap();
    let profiles = test_profiles(tmp.path());
    let mut d = Daemon::start(&config_with_profiles(&moto.endpoint(), &profiles, ""));
    let first = d.mandate(&["credential-process", "s3-data"]);
    assert_eq!(first.status.code(), Some(0));
    let text = std::fs::read_to_string(profiles.join("s3-data.toml")).unwrap();
    std::fs::write(
        profiles.join("s3-data.toml"),
        text.replace("\"s3:GetObjectTagging\", ", ""),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = d.mandate(&["credential-process", "s3-data"]);
        assert_eq!(out.status.code(), Some(0));
        if moto.assumed_roles().len() == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the profile change was not picked up:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let policies: Vec<String> = moto
        .assumed_roles()
        .iter()
        .map(|r| r["policy"].as_str().unwrap().to_owned())
        .collect();
    assert!(policies[0].contains("GetObjectTagging") && !policies[1].contains("GetObjectTagging"));

    // A broken edit keeps the last good config.
    std::fs::write(profiles.join("s3-data.toml"), "broken = ").unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        d.mandate(&["credential-process", "s3-data"]).status.code(),
        Some(0)
    );
    assert!(
        d.log()
            .contains("reload failed; keeping the previous config"),
        "{}",
        d.log()
    );

    let status = d.stop().unwrap();
    assert!(status.success(), "{status}");
    assert!(!d.socket().exists(), "socket removed on shutdown");
    assert_eq!(d.audit().last().unwrap()["kind"], "stopped");
}

/// Managed policies are opaque to the compiler: a profile that passes them with
/// `approval = "none"` never yields credentials without a human. The daemon refuses it at start
/// and on reload (keeping the previous, approval-free profile without the ARNs), and no
/// AssumeRole ever carries its PolicyArns.
#[test]
fn a_managed_policy_profile_without_approval_never_yields_credentials() {
    let moto = Moto::start();
    let tmp = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(tmp.path(), moto.port);
    let profiles = tmp.path().join("profiles");
    std::fs::create_dir(&profiles).unwrap();
    let good = "description = \"objects\"\nrole = \"sandbox\"\napproval = \"none\"\n[[allow]]\nactions = [\"s3:GetObject\"]\nresources = [\"*\"]\n";
    let bad = good.replace(
        "[[allow]]",
        "managed_policies = [\"arn:aws:iam::aws:policy/PowerUserAccess\"]\n[[allow]]",
    );
    std::fs::write(profiles.join("power.toml"), &bad).unwrap();
    let config = config_with_profiles(&proxy.endpoint(), &profiles, "").replace(
        "[\"readonly\", \"s3-data\", \"deploy-staging\"]",
        "[\"power\"]",
    );
    let cfg = tmp.path().join("broker.toml");
    std::fs::write(&cfg, &config).unwrap();
    let out = mandate_at(&cfg).arg("serve").output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("power.toml:4:20: managed_policies: managed policies are opaque to mandate: what they grant is not analysed"),
        "{}",
        stderr(&out)
    );
    assert!(!tmp.path().join("run").exists(), "nothing was bound");

    // Started with the approval-free profile, then edited to pass a managed policy: the reload
    // is refused and sessions keep the old policy, without the ARN.
    std::fs::write(profiles.join("power.toml"), good).unwrap();
    let d = Daemon::start(&config);
    assert_eq!(
        d.mandate(&["credential-process", "power"]).status.code(),
        Some(0)
    );
    std::fs::write(profiles.join("power.toml"), &bad).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !d
        .log()
        .contains("reload failed; keeping the previous config")
    {
        assert!(Instant::now() < deadline, "no reload attempt:\n{}", d.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        d.log().contains("managed policies are opaque to mandate"),
        "{}",
        d.log()
    );
    for _ in 0..3 {
        let out = d.mandate(&["credential-process", "power"]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    }
    let recorded = proxy.assume_roles();
    assert!(!recorded.is_empty());
    for r in &recorded {
        assert!(r.get("PolicyArns.member.1.arn").is_none(), "{r}");
    }
}

#[test]
fn serve_refuses_bad_config_before_binding_anything() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("broker.toml");
    std::fs::write(
        &cfg,
        config_text("http://127.0.0.1:9", "")
            .replace("[roles.admin]", "[roles.admin]\nmax_sesion = \"1h\""),
    )
    .unwrap();
    let out = mandate_at(&cfg).arg("serve").output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stderr(&out)
            .contains("roles.admin: unknown key \"max_sesion\"; did you mean \"max_session\"?"),
        "{}",
        stderr(&out)
    );
    assert!(
        !tmp.path().join("run").exists(),
        "nothing was bound or created"
    );
}

#[test]
fn request_records_the_reason_and_shortens_the_session() {
    let moto = Moto::start();
    let tmp = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(tmp.path(), moto.port);
    let d = Daemon::start(&config_text(&proxy.endpoint(), ""));
    let out = d.mandate(&[
        "request",
        "s3-data",
        "--reason",
        "nightly export\n\u{1b}[31mred",
        "--duration",
        "15m",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["profile"], "s3-data");
    assert_eq!(v["agent"], "claude");
    assert_eq!(v["cached"], false);
    let request_id = v["request_id"].as_str().unwrap();
    assert_eq!(proxy.assume_roles()[0]["DurationSeconds"], "900");
    assert_eq!(proxy.assume_roles()[0]["Tags.member.3.Value"], request_id);
    let audit = d.audit();
    let issued = audit.iter().find(|r| r["kind"] == "issued").unwrap();
    assert_eq!(issued["reason"], "nightly export\n\u{1b}[31mred");
    assert_eq!(issued["request_id"], request_id);
    assert_eq!(issued["access_key_id"], v["AccessKeyId"]);
    let raw = std::fs::read_to_string(d.dir.path().join("state/audit/audit-000001.jsonl")).unwrap();
    assert!(
        !raw.contains('\u{1b}'),
        "control characters never reach the log raw"
    );

    let out = d.mandate(&["request", "s3-data", "--duration", "2h"]);
    assert_eq!(out.status.code(), Some(5));
    assert_eq!(
        stderr(&out),
        "mandate: duration 7200 s is outside 900 to 3600 s, the range allowed for s3-data\n"
    );
    let out = d.mandate(&["request", "s3-data", "--duration", "soon"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn init_writes_a_config_that_serve_accepts() {
    let moto = Moto::start();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("conf/broker.toml");
    let out = mandate_at(&cfg)
        .args(["init", "--profiles"])
        .arg(root().join("profiles"))
        .args(["--role-arn", ROLE_ARN, "--agent", "dev"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("[profile mandate-s3-data]") && text.contains("credential-process s3-data"),
        "{text}"
    );
    let mode = std::fs::metadata(&cfg).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(tmp.path().join("conf/state/signing.key").exists());
    assert!(
        text.contains("created the checkpoint signing key"),
        "{text}"
    );
    // Run again: keeps the config, reuses the key.
    let before = std::fs::read(&cfg).unwrap();
    let again = mandate_at(&cfg).args(["init"]).output().unwrap();
    assert_eq!(again.status.code(), Some(0));
    assert!(stdout(&again).contains("exists (kept; --force rewrites it)"));
    assert!(stdout(&again).contains("uses the checkpoint signing key"));
    assert_eq!(std::fs::read(&cfg).unwrap(), before);
    // Issue 17 point 9: the ~/.aws/config lines again, on every run, naming the small front
    // binary (`credential-process` costs a process start), not the full program.
    let first_snippet = &text[text.find("\nAdd to ~/.aws/config").unwrap()..];
    let again_text = stdout(&again);
    assert_eq!(
        &again_text[again_text.find("\nAdd to ~/.aws/config").unwrap()..],
        first_snippet,
        "{again_text}"
    );
    assert!(
        first_snippet.contains(&format!("credential_process = {MANDATE} --config")),
        "{first_snippet}"
    );
    // The written config is valid: point it at moto and serve it.
    let written = std::fs::read_to_string(&cfg).unwrap().replace(
        "# endpoint_url = \"http://127.0.0.1:5055\"",
        &format!("endpoint_url = \"{}\"", moto.endpoint()),
    );
    // Issue 17 point 9: the operator is the login name of whoever ran init, not "operator".
    let login = Command::new("id").arg("-un").output().unwrap();
    let login = String::from_utf8_lossy(&login.stdout).trim().to_owned();
    assert!(
        written.contains(&format!("operator = \"{login}\"")),
        "{written}"
    );
    let d = Daemon::start(&written);
    let out = d.mandate(&["credential-process", "readonly"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // Logs to a file carry no colour codes and no Rust debug output.
    let log = d.log();
    assert!(
        !log.contains('\u{1b}'),
        "ANSI escapes in a log file: {log:?}"
    );
    assert!(log.contains("mandate is serving"), "{log}");
    assert!(!log.contains("Some(") && !log.contains("None"), "{log}");
}

/// Issue 17 point 3: one full config check, used everywhere: `config check` reports with
/// file:line:col and "did you mean"; `init` and `agent add` run it before writing anything;
/// a reload that changes what only a restart applies says so.
#[test]
fn one_config_check_everywhere() {
    let moto = Moto::start();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("broker.toml");
    let bad =
        config_text(&moto.endpoint(), "").replace("\"s3-data\", \"deploy", "\"s3-dta\", \"deploy");
    std::fs::write(&cfg, &bad).unwrap();
    let out = mandate_at(&cfg).args(["config", "check"]).output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    let line = bad.lines().position(|l| l.contains("s3-dta")).unwrap() + 1;
    let col = bad
        .lines()
        .nth(line - 1)
        .unwrap()
        .find("\"s3-dta\"")
        .unwrap()
        + 1;
    assert!(
        stderr(&out).contains(&format!(
            "{}:{line}:{col}: agents.claude.profiles: no profile \"s3-dta\" in {}; did you mean \"s3-data\"?",
            cfg.display(),
            root().join("profiles").display()
        )),
        "{}",
        stderr(&out)
    );
    // serve says exactly the same.
    let (code, err) = serve_once(&cfg);
    assert_eq!(code, Some(3));
    assert!(err.contains("did you mean \"s3-data\"?"), "{err}");
    std::fs::write(&cfg, config_text(&moto.endpoint(), "")).unwrap();
    let out = mandate_at(&cfg).args(["config", "check"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).starts_with(&format!("ok: {}", cfg.display())));

    // init with a broken profile in its profiles directory writes nothing.
    let profiles = tmp.path().join("profiles");
    std::fs::create_dir(&profiles).unwrap();
    std::fs::copy(
        root().join("profiles/readonly.toml"),
        profiles.join("readonly.toml"),
    )
    .unwrap();
    std::fs::write(
        profiles.join("broken.toml"),
        "description = \"x\"\nrol = \"sandbox\"\n",
    )
    .unwrap();
    let fresh = tmp.path().join("fresh/broker.toml");
    let out = mandate_at(&fresh)
        .args(["init", "--profiles"])
        .arg(&profiles)
        .args(["--role-arn", ROLE_ARN])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("broken.toml:2:1: unknown key \"rol\""),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("nothing was written"),
        "{}",
        stderr(&out)
    );
    assert!(!fresh.exists());

    // agent add of an agent the daemon would refuse (an operator-approval profile, no
    // --operator) writes neither the token nor the config.
    let with_http = format!(
        "{}\n[http]\nlisten = \"127.0.0.1:{}\"\n",
        config_text(&moto.endpoint(), ""),
        free_port()
    );
    std::fs::write(&cfg, &with_http).unwrap();
    let token = tmp.path().join("box-token");
    let out = mandate_at(&cfg)
        .args(["agent", "add", "box", "--profiles", "deploy-staging"])
        .arg("--token-file")
        .arg(&token)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("agents.box"), "{}", stderr(&out));
    assert!(
        stderr(&out).ends_with("nothing was written\n"),
        "{}",
        stderr(&out)
    );
    assert!(!token.exists(), "no token for an agent that was not added");
    assert_eq!(std::fs::read_to_string(&cfg).unwrap(), with_http);

    // A reload that changes the socket: applied for what can be, and the log says to restart.
    let d = Daemon::start(&config_text(&moto.endpoint(), ""));
    let text = std::fs::read_to_string(&d.config).unwrap();
    std::fs::write(
        &d.config,
        text.replace("run/mandate.sock", "run/other.sock"),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !d.log().contains("restart the daemon") {
        assert!(
            Instant::now() < deadline,
            "no restart warning:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(d.log().contains("but broker.socket changed"), "{}", d.log());
}

/// Review of issue 17 point 9: on an existing config, `init` prints lines that work as printed:
/// with `--agent` when this uid runs as several agents, and with paths botocore splits right.
#[test]
fn init_on_an_existing_config_prints_lines_that_work_as_printed() {
    let moto = Moto::start();
    let uid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap());
    let d = Daemon::start(&config_text(
        &moto.endpoint(),
        &format!(
            "\n[agents.codex]\nprofiles = [\"readonly\"]\nuids = [{uid}]\noperator = \"human\"\n"
        ),
    ));
    let out = d.mandate(&["init"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("credential_process = "))
        .collect();
    assert!(text.contains("[profile mandate-codex-readonly]"), "{text}");
    assert!(text.contains("[profile mandate-claude-s3-data]"), "{text}");
    assert!(lines.iter().all(|l| l.contains(" --agent ")), "{lines:?}");
    // Each line, split as botocore splits it (POSIX shell words), yields credentials.
    for l in &lines {
        let mut c = Command::new("sh");
        clean_env(&mut c);
        let out = c.args(["-c", l]).output().unwrap();
        if l.ends_with(" deploy-staging") {
            // Reached the daemon as the named agent: it asks for a human.
            assert_eq!(out.status.code(), Some(5), "{l}: {}", stderr(&out));
            assert!(stderr(&out).contains("needs approval"), "{}", stderr(&out));
            continue;
        }
        assert_eq!(out.status.code(), Some(0), "{l}: {}", stderr(&out));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["Version"], 1);
    }
}
