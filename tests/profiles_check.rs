//! `mandate profiles check` against a table of broken profiles: each must fail with exactly the
//! expected messages (file:line:col and text), and the example profiles must pass.

use std::path::Path;
use std::process::{Command, Output};

const MANDATE: &str = env!("CARGO_BIN_EXE_mandate");

fn run(dir: &Path, args: &[&str]) -> Output {
    Command::new(MANDATE)
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run mandate")
}

const BASE: &str = "description = \"d\"\nrole = \"sandbox\"\napproval = \"none\"\n";
const ALLOW: &str = "[[allow]]\nactions = [\"s3:GetObject\"]\nresources = [\"*\"]\n";

fn ok_profile() -> String {
    format!("{BASE}{ALLOW}")
}

/// (file name, contents, expected stderr lines before the summary line)
fn cases() -> Vec<(&'static str, Vec<u8>, Vec<String>)> {
    let s = |x: &str| x.as_bytes().to_vec();
    let many_arns: Vec<String> = (0..11)
        .map(|i| format!("\"arn:aws:iam::123456789012:policy/p{i}\""))
        .collect();
    let many_tags: String = (0..47).map(|i| format!("t{i} = \"v\"\n")).collect();
    let big_resources: Vec<String> = (0..60)
        .map(|i| format!("\"arn:aws:s3:::bucket-number-{i:03}/*\""))
        .collect();
    let mut non_utf8 = s("description = \"caf");
    non_utf8.extend_from_slice(&[0xe9, b'"', b'\n']);
    vec![
        (
            "unknown-key.toml",
            s(&format!("description = \"d\"\nrol = \"sandbox\"\napproval = \"none\"\n{ALLOW}")),
            vec![
                "unknown-key.toml: missing required key \"role\"".into(),
                "unknown-key.toml:2:1: unknown key \"rol\"; did you mean \"role\"?".into(),
            ],
        ),
        (
            "typo-action.toml",
            s(&format!("{BASE}[[allow]]\nactions = [\"s3:GetObjects\"]\nresources = [\"*\"]\n")),
            vec!["typo-action.toml:5:12: allow[0].actions[0]: unknown action \"s3:GetObjects\"; did you mean \"s3:GetObject\"?".into()],
        ),
        (
            "unknown-service.toml",
            s(&format!("{BASE}[[allow]]\nactions = [\"s4:GetObject\"]\nresources = [\"*\"]\n")),
            vec!["unknown-service.toml:5:12: allow[0].actions[0]: unknown service \"s4\" in action \"s4:GetObject\"; did you mean \"s3\"?".into()],
        ),
        (
            "no-colon.toml",
            s(&format!("{BASE}[[allow]]\nactions = [\"GetObject\"]\nresources = [\"*\"]\n")),
            vec!["no-colon.toml:5:12: allow[0].actions[0]: invalid action \"GetObject\": expected \"service:Action\", like \"s3:GetObject\"".into()],
        ),
        (
            "bad-arn.toml",
            s(&format!("{BASE}[[allow]]\nactions = [\"s3:GetObject\"]\nresources = [\"arn:aws:s3::team-data\"]\n")),
            vec!["bad-arn.toml:6:14: allow[0].resources[0]: invalid resource ARN \"arn:aws:s3::team-data\": expected arn:PARTITION:SERVICE:REGION:ACCOUNT:RESOURCE (6 parts separated by ':'), found 5".into()],
        ),
        (
            "bad-account.toml",
            s(&format!("{BASE}[[allow]]\nactions = [\"s3:GetObject\"]\nresources = [\"arn:aws:s3:us-east-1:1234:x\"]\n")),
            vec!["bad-account.toml:6:14: allow[0].resources[0]: invalid resource ARN \"arn:aws:s3:us-east-1:1234:x\": account \"1234\" must be 12 digits (or empty, or a wildcard)".into()],
        ),
        (
            "wildcard-nothing.toml",
            s(&format!("{BASE}[[allow]]\nactions = [\"s3:Frob*\"]\nresources = [\"*\"]\n")),
            vec!["wildcard-nothing.toml:5:12: allow[0].actions[0]: wildcard \"s3:Frob*\" matches no known s3 action".into()],
        ),
        (
            "service-wildcard.toml",
            s(&format!("{BASE}[[allow]]\nactions = [\"s*:GetObject\"]\nresources = [\"*\"]\n")),
            vec!["service-wildcard.toml:5:12: allow[0].actions[0]: invalid action \"s*:GetObject\": wildcards in the service prefix are not supported; list each service".into()],
        ),
        (
            "oversize.toml",
            s(&format!("{BASE}[[allow]]\nactions = [\"s3:Put*\"]\nresources = [{}]\n", big_resources.join(", "))),
            vec![
                "oversize.toml: the session policy needs 2555 characters but AWS allows 2048 for the inline policy plus managed policy ARNs:".into(),
                "  policy envelope                                   40".into(),
                "  allow[0] (1 actions, 60 resources)              2150".into(),
                "  automatic deny of 26 destructive actions (s3)    365".into(),
                "  total                                           2555 / 2048".into(),
                "  hint: narrow wildcards, drop services from [[allow]], or opt into fewer destructive actions".into(),
            ],
        ),
        (
            "too-many-arns.toml",
            s(&format!("{BASE}managed_policies = [{}]\n{ALLOW}", many_arns.join(", "))),
            vec!["too-many-arns.toml:4:20: managed_policies: 11 managed policy ARNs; AWS allows at most 10".into()],
        ),
        (
            "dup-arn.toml",
            s(&format!("{BASE}managed_policies = [\"arn:aws:iam::aws:policy/ReadOnlyAccess\", \"arn:aws:iam::aws:policy/ReadOnlyAccess\"]\n{ALLOW}")),
            vec!["dup-arn.toml:4:20: managed_policies: lists the same ARN twice".into()],
        ),
        (
            "bad-managed-arn.toml",
            s(&format!("{BASE}managed_policies = [\"arn:aws:iam::aws:role/Admin\"]\n{ALLOW}")),
            vec!["bad-managed-arn.toml:4:21: managed_policies[0]: invalid managed policy ARN \"arn:aws:iam::aws:role/Admin\": expected arn:aws:iam::ACCOUNT:policy/NAME (ACCOUNT is 12 digits or \"aws\")".into()],
        ),
        (
            "short-duration.toml",
            s(&format!("{BASE}duration = \"10m\"\n{ALLOW}")),
            vec!["short-duration.toml:4:12: duration: duration \"10m\" is 600 s, below the AWS minimum of 15m (900 s)".into()],
        ),
        (
            "long-duration.toml",
            s(&format!("{BASE}duration = \"13h\"\n{ALLOW}")),
            vec!["long-duration.toml:4:12: duration: duration \"13h\" is 46800 s, above the AWS maximum of 12h (43200 s)".into()],
        ),
        (
            "bad-duration.toml",
            s(&format!("{BASE}duration = \"1 day\"\n{ALLOW}")),
            vec!["bad-duration.toml:4:12: duration: invalid duration \"1 day\": use hours, minutes and seconds like \"1h\", \"15m\" or \"1h30m\"".into()],
        ),
        (
            "duration-type.toml",
            s(&format!("{BASE}duration = 3600\n{ALLOW}")),
            vec!["duration-type.toml:4:12: duration: expected a string like \"1h\", found integer".into()],
        ),
        (
            "destructive-no-approval.toml",
            s(&format!("{BASE}destructive = [\"s3:DeleteObject\"]\n[[allow]]\nactions = [\"s3:DeleteObject\"]\nresources = [\"*\"]\n")),
            vec!["destructive-no-approval.toml:4:15: destructive: destructive actions need a human: set approval = \"operator\" or approval = { peers = N }, or empty this list".into()],
        ),
        (
            "destructive-undeclared.toml",
            s(&format!("{BASE}[[allow]]\nactions = [\"s3:GetObject\", \"s3:DeleteBucket\"]\nresources = [\"*\"]\n")),
            vec!["destructive-undeclared.toml:5:28: allow[0].actions[1]: \"s3:DeleteBucket\" is destructive (destroy: a Write action that says \"Delete\"); add it to `destructive` (which requires approval) or remove it".into()],
        ),
        (
            "destructive-not-destructive.toml",
            s(&format!("description = \"d\"\nrole = \"sandbox\"\napproval = \"operator\"\ndestructive = [\"s3:GetObject\"]\n{ALLOW}")),
            vec!["destructive-not-destructive.toml:4:16: destructive[0]: \"s3:GetObject\" is not classified as destructive (Read); list it in an [[allow]] block only".into()],
        ),
        (
            "destructive-by-effect.toml",
            s(&format!("{BASE}[[allow]]\nactions = [\"kms:Decrypt\", \"kms:ScheduleKeyDeletion\", \"iam:PassRole\"]\nresources = [\"*\"]\n")),
            vec![
                "destructive-by-effect.toml:5:27: allow[0].actions[1]: \"kms:ScheduleKeyDeletion\" is destructive (destroy: key deletion makes all data encrypted under it unrecoverable); add it to `destructive` (which requires approval) or remove it".into(),
                "destructive-by-effect.toml:5:54: allow[0].actions[2]: \"iam:PassRole\" is destructive (escalate: hands a role to a service so code runs with that role's permissions (outside the session policy)); add it to `destructive` (which requires approval) or remove it".into(),
            ],
        ),
        (
            "managed-no-approval.toml",
            s(&format!("{BASE}managed_policies = [\"arn:aws:iam::aws:policy/PowerUserAccess\"]\n{ALLOW}")),
            vec!["managed-no-approval.toml:4:20: managed_policies: managed policies are opaque to mandate: what they grant is not analysed and the automatic deny does not cover it, so every session needs a human: set approval = \"operator\" or approval = { peers = N }, or move their statements into [[allow]] blocks".into()],
        ),
        (
            "destructive-not-allowed.toml",
            s(&format!("description = \"d\"\nrole = \"sandbox\"\napproval = \"operator\"\ndestructive = [\"s3:DeleteObject\"]\n{ALLOW}")),
            vec!["destructive-not-allowed.toml:4:16: destructive[0]: \"s3:DeleteObject\" is listed as destructive but no [[allow]] block grants it".into()],
        ),
        (
            "bad-tag-key.toml",
            s(&format!("{BASE}{ALLOW}[tags]\n\"aws:team\" = \"x\"\n")),
            vec!["bad-tag-key.toml:8:1: tags: tag key \"aws:team\" is reserved (\"aws:\" is AWS's, \"mandate-\" is the broker's)".into()],
        ),
        (
            "long-tag-value.toml",
            s(&format!("{BASE}{ALLOW}[tags]\nteam = \"{}\"\n", "x".repeat(257))),
            vec!["long-tag-value.toml:8:8: tags.team: tag \"team\" has a value of 257 characters; AWS allows 256".into()],
        ),
        (
            "bad-tag-char.toml",
            s(&format!("{BASE}{ALLOW}[tags]\nteam = \"a;b\"\n")),
            vec!["bad-tag-char.toml:8:8: tags.team: tag \"team\" value \"a;b\" may only contain letters, digits, spaces and _ . : / = + - @".into()],
        ),
        (
            "too-many-tags.toml",
            s(&format!("{BASE}{ALLOW}[tags]\n{many_tags}")),
            vec!["too-many-tags.toml:7:1: tags: 47 tags; at most 46 are allowed (AWS allows 50 session tags and mandate sets 4 of its own)".into()],
        ),
        (
            "non-utf8.toml",
            non_utf8,
            vec!["non-utf8.toml:1:19: the file is not valid UTF-8; profiles must be UTF-8 text".into()],
        ),
        (
            "empty.toml",
            s(""),
            vec!["empty.toml: the profile is empty; it needs at least description, role and one [[allow]] block".into()],
        ),
        (
            "bad-toml.toml",
            s("description = \"d\nrole = \"sandbox\"\n"),
            vec!["bad-toml.toml:1:17: invalid TOML: invalid basic string, expected `\"`".into()],
        ),
        (
            "missing-allow.toml",
            s(BASE),
            vec!["missing-allow.toml: missing required key \"allow\": a profile needs at least one [[allow]] block".into()],
        ),
        (
            "rule-unknown-key.toml",
            s(&format!("{BASE}[[allow]]\naction = [\"s3:GetObject\"]\nresources = [\"*\"]\n")),
            vec![
                "rule-unknown-key.toml:4:1: allow[0]: missing required key \"actions\"".into(),
                "rule-unknown-key.toml:5:1: allow[0]: unknown key \"action\"; did you mean \"actions\"?".into(),
            ],
        ),
        (
            "misplaced-key.toml",
            s(&format!("{BASE}{ALLOW}managed_policies = []\n")),
            vec!["misplaced-key.toml:7:1: allow[0]: unknown key \"managed_policies\"; \"managed_policies\" is a top-level key: move it above the first [[allow]], [[deny]] or [tags] table".into()],
        ),
        (
            // Issue 17 point 2: after [tags], top-level keys are tags in TOML; refused.
            "keys-after-tags.toml",
            s(&format!("{BASE}{ALLOW}[tags]\nteam = \"data\"\napproval = \"none\"\nduration = \"2h\"\n")),
            vec![
                "keys-after-tags.toml:9:1: tags: \"approval\" is a top-level key: move it above the first [[allow]], [[deny]] or [tags] table (a tag cannot be named like a profile key)".into(),
                "keys-after-tags.toml:10:1: tags: \"duration\" is a top-level key: move it above the first [[allow]], [[deny]] or [tags] table (a tag cannot be named like a profile key)".into(),
            ],
        ),
        (
            "empty-resources.toml",
            s(&format!("{BASE}[[allow]]\nactions = [\"s3:GetObject\"]\nresources = []\n")),
            vec!["empty-resources.toml:6:13: allow[0].resources: must not be empty".into()],
        ),
        (
            "actions-string.toml",
            s(&format!("{BASE}[[allow]]\nactions = \"s3:GetObject\"\nresources = [\"*\"]\n")),
            vec!["actions-string.toml:5:11: allow[0].actions: expected an array of strings, found string".into()],
        ),
        (
            "bad-approval.toml",
            s(&format!("description = \"d\"\nrole = \"sandbox\"\napproval = \"sometimes\"\n{ALLOW}")),
            vec!["bad-approval.toml:3:12: approval: unknown approval \"sometimes\": expected \"none\", \"operator\" or { peers = N }".into()],
        ),
        (
            "zero-peers.toml",
            s(&format!("description = \"d\"\nrole = \"sandbox\"\napproval = {{ peers = 0 }}\n{ALLOW}")),
            vec!["zero-peers.toml:3:22: approval.peers: must be between 1 and 10, found 0".into()],
        ),
        (
            "role-arn.toml",
            s(&format!("description = \"d\"\nrole = \"arn:aws:iam::123456789012:role/admin\"\napproval = \"none\"\n{ALLOW}")),
            vec!["role-arn.toml:2:8: role: role \"arn:aws:iam::123456789012:role/admin\" is an ARN; name a role declared in broker.toml's [roles] instead".into()],
        ),
        (
            "bad-condition.toml",
            s(&format!("{BASE}[[allow]]\nactions = [\"s3:GetObject\"]\nresources = [\"*\"]\ncondition = {{ StringEqual = {{ \"aws:RequestedRegion\" = \"eu-west-1\" }} }}\n")),
            vec!["bad-condition.toml:7:15: allow[0].condition: unknown condition operator \"StringEqual\"; did you mean \"StringEquals\"?".into()],
        ),
        (
            "Bad_Name.toml",
            s(&ok_profile()),
            vec!["Bad_Name.toml: profile name \"Bad_Name\" must be 1 to 64 lowercase letters, digits or '-', not starting or ending with '-' (the profile name is the file name without .toml)".into()],
        ),
        (
            "many-errors.toml",
            s("descripton = \"d\"\nrole = \"Sandbox\"\nduration = \"5m\"\n[[allow]]\nactions = [\"s3:GetObjects\", \"ec2:DescribeInstance\"]\nresources = [\"s3://bucket\"]\n"),
            vec![
                "many-errors.toml: missing required key \"description\"".into(),
                "many-errors.toml:1:1: unknown key \"descripton\"; did you mean \"description\"?".into(),
                "many-errors.toml:2:8: role: role \"Sandbox\" must be 1 to 64 lowercase letters, digits or '-', not starting or ending with '-'".into(),
                "many-errors.toml:3:12: duration: duration \"5m\" is 300 s, below the AWS minimum of 15m (900 s)".into(),
                "many-errors.toml:5:12: allow[0].actions[0]: unknown action \"s3:GetObjects\"; did you mean \"s3:GetObject\"?".into(),
                "many-errors.toml:5:29: allow[0].actions[1]: unknown action \"ec2:DescribeInstance\"; did you mean \"ec2:DescribeInstances\"?".into(),
                "many-errors.toml:6:14: allow[0].resources[0]: invalid resource ARN \"s3://bucket\": expected arn:PARTITION:SERVICE:REGION:ACCOUNT:RESOURCE (6 parts separated by ':'), found 2".into(),
            ],
        ),
    ]
}

#[test]
fn broken_profiles_fail_with_exact_messages() {
    let cases = cases();
    assert!(
        cases.len() >= 25,
        "the acceptance table needs at least 25 broken profiles"
    );
    let mut failures = Vec::new();
    for (file, contents, expected) in &cases {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(file), contents).unwrap();
        let out = run(dir.path(), &["profiles", "check", file]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let mut lines: Vec<String> = stderr.lines().map(str::to_owned).collect();
        let summary = lines.pop().unwrap_or_default();
        if out.status.code() != Some(3)
            || &lines != expected
            || !summary.starts_with("error: ")
            || !out.stdout.is_empty()
        {
            failures.push(format!(
                "{file}: exit {:?}\n--- expected\n{}\n--- got\n{}\n--- stdout\n{}",
                out.status.code(),
                expected.join("\n"),
                stderr,
                String::from_utf8_lossy(&out.stdout)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

#[test]
fn all_errors_of_all_files_are_reported_in_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let cases = cases();
    for (file, contents, _) in &cases {
        std::fs::write(dir.path().join(file), contents).unwrap();
    }
    std::fs::write(dir.path().join("good.toml"), ok_profile()).unwrap();
    let out = run(dir.path(), &["profiles", "check", "."]);
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let expected_lines: usize = cases.iter().map(|c| c.2.len()).sum();
    assert_eq!(stderr.lines().count(), expected_lines + 1, "{stderr}");
    let problems = expected_lines - 5; // the oversize message spans 6 lines for one problem
    assert!(
        stderr.ends_with(&format!(
            "error: {problems} problem(s) in {} of {} profile(s)\n",
            cases.len(),
            cases.len() + 1
        )),
        "{stderr}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok    ./good.toml"));
}

#[test]
fn example_profiles_pass() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = run(root, &["profiles", "check", "profiles"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for name in ["readonly", "s3-data", "deploy-staging", "breakglass-admin"] {
        assert!(
            stdout.contains(&format!("ok    profiles/{name}.toml")),
            "{stdout}"
        );
    }
}

#[test]
fn show_json_has_the_contract_keys_and_the_exact_policy() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = run(root, &["profiles", "show", "s3-data", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let exact = v["policy_json"].as_str().unwrap();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(exact).unwrap(),
        v["policy"]
    );
    assert_eq!(
        v["policy_chars"].as_u64().unwrap() as usize,
        exact.chars().count()
    );
    let sha = v["policy_sha256"].as_str().unwrap();
    assert_eq!(sha.len(), 64);
    assert_eq!(v["policy_arns"], serde_json::json!([]));
    assert_eq!(v["duration_seconds"], 3600);
    assert_eq!(v["approval"], "none");
    assert_eq!(v["profile_sha256"].as_str().unwrap().len(), 64);
    // The human form prints the same bytes and hash.
    let text = run(root, &["profiles", "show", "s3-data"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains(sha) && text.contains(exact), "{text}");
}

#[test]
fn show_and_explain_report_missing_profiles_and_bad_names() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = run(root, &["profiles", "show", "nope"]);
    assert_eq!(out.status.code(), Some(4));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: no profile named \"nope\" in profiles: expected the file profiles/nope.toml\n"
    );
    let out = run(root, &["profiles", "explain", "../etc/passwd"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .starts_with("error: profile name \"../etc/passwd\" must be")
    );
    let out = run(root, &["profiles", "check", "no/such/dir"]);
    assert_eq!(out.status.code(), Some(4));
}

#[test]
fn explain_json_lists_usable_and_denied_actions() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = run(root, &["profiles", "explain", "deploy-staging", "--json"]);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["needs_approval"],
        serde_json::json!([
            "cloudformation:DeleteChangeSet",
            "cloudformation:DeleteStack",
            "cloudformation:ExecuteChangeSet",
            "cloudformation:UpdateStack",
            "lambda:UpdateFunctionCode"
        ])
    );
    assert_eq!(v["approval"], "operator");
    // Every classified action within reach is opted into: nothing to deny automatically.
    assert_eq!(v["auto_denied"], serde_json::json!([]));
    assert_eq!(v["classes"]["escalate"]["needs_approval"], 3);
    assert_eq!(v["classes"]["destroy"]["needs_approval"], 2);

    // A whole-service wildcard: classified actions are denied, by class, and the rest usable.
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("lambda-all.toml"),
        format!("{BASE}[[allow]]\nactions = [\"lambda:*\"]\nresources = [\"*\"]\n"),
    )
    .unwrap();
    let dir = tmp.path().to_str().unwrap();
    let out = run(
        root,
        &[
            "profiles",
            "explain",
            "lambda-all",
            "--profiles",
            dir,
            "--json",
        ],
    );
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let denied: Vec<&str> = v["auto_denied"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect();
    for a in [
        "lambda:DeleteFunction",
        "lambda:PutFunctionConcurrency",
        "lambda:UpdateFunctionCode",
        "lambda:AddPermission",
    ] {
        assert!(denied.contains(&a), "{a} not denied: {denied:?}");
    }
    assert!(!denied.contains(&"lambda:InvokeFunction"));
    let escalate = &v["classes"]["escalate"];
    assert!(escalate["denied"].as_u64().unwrap() > 0, "{escalate}");
    assert_eq!(escalate["needs_approval"], 0);
    let code = escalate["actions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["action"] == "lambda:UpdateFunctionCode")
        .expect("UpdateFunctionCode is escalate");
    assert_eq!(code["status"], "denied");
    assert!(!code["why"].as_str().unwrap().is_empty());
    let usable = v["usable"]["Write"].as_array().unwrap();
    assert!(
        usable
            .iter()
            .any(|u| u["action"] == "lambda:InvokeFunction" && u["class"].is_null())
    );

    let text = run(
        root,
        &["profiles", "explain", "lambda-all", "--profiles", dir],
    );
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("Classified actions within reach, by class:"),
        "{text}"
    );
    assert!(
        text.contains("  escalate (escalate or escape the profile"),
        "{text}"
    );
}

/// `check` warns (without failing) when a wildcard reaches classified actions; exact names of
/// everyday actions give no warning.
#[test]
fn check_warns_when_a_wildcard_reaches_classified_actions() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("wild.toml"),
        format!("{BASE}[[allow]]\nactions = [\"s3:GetObject\", \"kms:*\"]\nresources = [\"*\"]\n"),
    )
    .unwrap();
    let out = run(tmp.path(), &["profiles", "check", "wild.toml"]);
    assert_eq!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("wild.toml:5:28: warning: allow[0].actions[1]: \"kms:*\" reaches "),
        "{err}"
    );
    assert!(err.contains("classified action(s) (destroy "), "{err}");
    assert!(err.contains("see `mandate profiles explain wild`"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    let ok = run(root_dir(), &["profiles", "check", "profiles/s3-data.toml"]);
    assert!(
        ok.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
}

fn root_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `show` and `explain` read the config's profiles_dir when a config is found.
#[test]
fn show_and_explain_use_the_configs_profiles_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let profiles = tmp.path().join("elsewhere");
    std::fs::create_dir(&profiles).unwrap();
    std::fs::write(profiles.join("only-here.toml"), ok_profile()).unwrap();
    let cfg = tmp.path().join("broker.toml");
    std::fs::write(
        &cfg,
        "[broker]\nstate_dir = \"state\"\nsocket = \"run/s.sock\"\nprofiles_dir = \"elsewhere\"\n[roles.sandbox]\narn = \"arn:aws:iam::123456789012:role/r\"\n",
    )
    .unwrap();
    let cfg = cfg.to_str().unwrap();
    for cmd in ["show", "explain"] {
        let out = run(root_dir(), &["--config", cfg, "profiles", cmd, "only-here"]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = Command::new(MANDATE)
            .args(["profiles", cmd, "only-here"])
            .env("MANDATE_CONFIG", cfg)
            .current_dir(root_dir())
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Without a config, ./profiles; with --profiles, that directory.
    let out = Command::new(MANDATE)
        .args(["profiles", "show", "only-here"])
        .env_remove("MANDATE_CONFIG")
        .env("HOME", tmp.path())
        .current_dir(root_dir())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    let out = run(
        root_dir(),
        &[
            "--config",
            cfg,
            "profiles",
            "show",
            "s3-data",
            "--profiles",
            "profiles",
        ],
    );
    assert_eq!(out.status.code(), Some(0));
    // A config that does not exist is an error, not a silent fallback.
    let out = run(
        root_dir(),
        &[
            "--config",
            "/nonexistent/broker.toml",
            "profiles",
            "show",
            "s3-data",
        ],
    );
    assert_eq!(out.status.code(), Some(4));
}

#[test]
fn usage_errors_exit_2_and_help_exits_0() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    assert_eq!(
        run(root, &["profiles", "frobnicate"]).status.code(),
        Some(2)
    );
    let help = run(root, &["profiles", "--help"]);
    assert_eq!(help.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&help.stdout).contains("explain"));
    let man = run(root, &["man"]);
    let page = String::from_utf8_lossy(&man.stdout).into_owned();
    assert!(page.contains(".TH mandate"));
    // Every page mandate(1) refers to exists once `man --dir` wrote them.
    let dir = tempfile::tempdir().unwrap();
    let out = run(root, &["man", "--dir", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    let refs: Vec<String> = page
        .split("mandate\\-")
        .skip(1)
        .filter_map(|r| r.split_once("(1)").map(|(n, _)| n.replace("\\-", "-")))
        .collect();
    assert!(refs.len() > 10, "{refs:?}");
    for r in refs {
        assert!(
            dir.path().join(format!("mandate-{r}.1")).is_file(),
            "mandate-{r}(1) is referred to but not written"
        );
    }
    // --config means nothing to man and completions: refused, not ignored.
    for args in [
        &["--config", "x.toml", "man"][..],
        &["--config", "x.toml", "completions", "bash"],
    ] {
        let out = run(root, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("--config has no effect"));
    }
    let comp = run(root, &["completions", "bash"]);
    assert!(String::from_utf8_lossy(&comp.stdout).contains("_mandate()"));
}

/// Services nobody has reviewed fail closed: a wildcard never grants their Write or Tagging
/// actions; naming one exactly is allowed, with a warning.
#[test]
fn unreviewed_services_fail_closed_under_wildcards() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("transfer-all.toml"),
        format!("{BASE}[[allow]]\nactions = [\"transfer:*\"]\nresources = [\"*\"]\n"),
    )
    .unwrap();
    std::fs::write(
        tmp.path().join("transfer-one.toml"),
        format!("{BASE}[[allow]]\nactions = [\"transfer:StartFileTransfer\", \"transfer:ListServers\"]\nresources = [\"*\"]\n"),
    )
    .unwrap();
    let dir = tmp.path().to_str().unwrap();
    let out = run(tmp.path(), &["profiles", "check", "transfer-all.toml"]);
    assert_eq!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unreviewed "), "{err}");

    let out = run(
        root_dir(),
        &[
            "profiles",
            "explain",
            "transfer-all",
            "--profiles",
            dir,
            "--json",
        ],
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let denied: Vec<&str> = v["auto_denied"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect();
    assert!(denied.contains(&"transfer:CreateUser"), "{denied:?}");
    assert!(denied.contains(&"transfer:StartFileTransfer"));
    assert!(v["classes"]["unreviewed"]["denied"].as_u64().unwrap() > 10);
    let usable: Vec<&str> = v["usable"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|l| l.as_array().unwrap())
        .map(|u| u["action"].as_str().unwrap())
        .collect();
    assert!(
        usable.contains(&"transfer:ListServers"),
        "reads stay usable"
    );
    assert!(!usable.iter().any(|a| a.starts_with("transfer:Create")));

    // Named exactly: the author's decision. Usable without approval, with a warning.
    let out = run(tmp.path(), &["profiles", "check", "transfer-one.toml"]);
    assert_eq!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("transfer-one.toml:5:12: warning: allow[0].actions[0]: \"transfer:StartFileTransfer\" belongs to a service the classification has not reviewed; it is allowed because it is named exactly"),
        "{err}"
    );
    let out = run(
        root_dir(),
        &[
            "profiles",
            "explain",
            "transfer-one",
            "--profiles",
            dir,
            "--json",
        ],
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["auto_denied"], serde_json::json!([]));
    assert_eq!(v["needs_approval"], serde_json::json!([]));
    assert_eq!(
        v["classes"]["unreviewed"]["actions"][0]["status"],
        "usable (named exactly, unreviewed)"
    );
}

/// Issue 17 point 9: completions offer profile names (from the config's profiles_dir) where a
/// command takes a profile, and only there. bash is run for real; the zsh and fish scripts are
/// checked for their hook (neither shell is installed here).
#[test]
fn completions_offer_profile_names_where_a_command_takes_one() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tmp = tempfile::tempdir().unwrap();
    let script = tmp.path().join("mandate.bash");
    std::fs::write(&script, run(root, &["completions", "bash"]).stdout).unwrap();
    let cfg = tmp.path().join("broker.toml");
    std::fs::write(
        &cfg,
        format!(
            "[broker]\nstate_dir = \"state\"\nsocket = \"run/m.sock\"\nprofiles_dir = {:?}\nregion = \"us-east-1\"\n[roles.sandbox]\narn = \"arn:aws:iam::123456789012:role/a\"\n[roles.deployer]\narn = \"arn:aws:iam::123456789012:role/a\"\n[roles.admin]\narn = \"arn:aws:iam::123456789012:role/a\"\n",
            root.join("profiles").display().to_string()
        ),
    )
    .unwrap();
    let bin = Path::new(env!("CARGO_BIN_EXE_mandate")).parent().unwrap();
    let complete = |line: &str| -> String {
        let words: Vec<&str> = line.split(' ').collect();
        let body = format!(
            "source {}\nCOMP_WORDS=({})\nCOMP_CWORD={}\nCOMP_LINE={line:?}\nCOMP_POINT=${{#COMP_LINE}}\n_mandate_profiles mandate\nprintf '%s\\n' \"${{COMPREPLY[@]}}\" | sort\n",
            script.display(),
            words
                .iter()
                .map(|w| format!("{w:?}"))
                .collect::<Vec<_>>()
                .join(" "),
            words.len() - 1
        );
        let out = std::process::Command::new("bash")
            .current_dir(tmp.path())
            .args(["--norc", "--noprofile", "-c", &body])
            .env(
                "PATH",
                format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()),
            )
            .env("MANDATE_CONFIG", &cfg)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let all = "breakglass-admin\ndeploy-staging\nreadonly\ns3-data";
    for (line, want) in [
        ("mandate credential-process ", all),
        ("mandate request re", "readonly"),
        ("mandate exec s", "s3-data"),
        ("mandate env --agent bot d", "deploy-staging"),
        ("mandate profiles show ", all),
        ("mandate profiles explain b", "breakglass-admin"),
    ] {
        assert_eq!(complete(line), want, "{line:?}");
    }
    // Elsewhere, clap's own completion: subcommands and flags, never profile names.
    for line in [
        "mandate ",
        "mandate status ",
        "mandate credential-process readonly ",
    ] {
        let got = complete(line);
        assert!(!got.contains("s3-data"), "{line:?}: {got}");
    }
    assert!(complete("mandate pro").contains("profiles"));
    // --config on the line is the config the names come from.
    // The same config with another profiles_dir.
    let config_for = |name: &str, dir: &Path| {
        let file = tmp.path().join(name);
        std::fs::write(
            &file,
            std::fs::read_to_string(&cfg).unwrap().replace(
                &format!("{:?}", root.join("profiles").display().to_string()),
                &format!("{:?}", dir.display().to_string()),
            ),
        )
        .unwrap();
        file
    };
    let empty = tempfile::tempdir().unwrap();
    let other = config_for("other.toml", empty.path());
    assert_eq!(
        complete(&format!(
            "mandate --config {} credential-process ",
            other.display()
        )),
        ""
    );

    // A file name is untrusted text: hostile names are neither run nor offered (review: bash's
    // `compgen -W` would have expanded them), and `--config=FILE` is honoured too.
    let hostile = tempfile::tempdir().unwrap();
    for name in [
        "readonly.toml",
        "$(touch pwned-1).toml",
        "`touch pwned-2`.toml",
        "a b.toml",
    ] {
        std::fs::copy(
            root.join("profiles/readonly.toml"),
            hostile.path().join(name),
        )
        .unwrap();
    }
    let evil = config_for("evil.toml", hostile.path());
    for line in [
        format!("mandate --config {} credential-process ", evil.display()),
        format!("mandate --config={} request ", evil.display()),
    ] {
        assert_eq!(complete(&line), "readonly", "{line}");
    }
    for marker in ["pwned-1", "pwned-2"] {
        assert!(
            !tmp.path().join(marker).exists(),
            "a profile file name was run as a command"
        );
    }

    let zsh = String::from_utf8_lossy(&run(root, &["completions", "zsh"]).stdout).into_owned();
    assert!(
        zsh.starts_with("#compdef mandate\n\n_mandate_profiles() {"),
        "{}",
        &zsh[..200]
    );
    assert_eq!(
        zsh.matches(":_mandate_profiles'").count(),
        6,
        "credential-process, request, env, exec, show, explain"
    );
    assert!(!zsh.contains("Profile name:_default'"));
    let fish = String::from_utf8_lossy(&run(root, &["completions", "fish"]).stdout).into_owned();
    assert_eq!(
        fish.matches("-a \"(mandate __profiles 2>/dev/null)\"")
            .count(),
        2
    );
}

/// Issue 17 point 8: resources are checked against the resource types of the actions (the
/// Service Authorization Reference's ARN patterns): `check` warns where a block grants an action
/// nothing, and `explain` marks it. Exact messages, table-driven.
#[test]
fn resources_an_action_cannot_take_are_warned_about_and_explained() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "object-with-region",
            "actions = [\"s3:GetObject\"]\nresources = [\"arn:aws:s3:us-east-1::team-data/*\"]\n",
            &[
                "object-with-region.toml:6:12: warning: allow[0].actions[0]: \"s3:GetObject\" can act on none of this block's resources (it takes arn:${Partition}:s3:${Region}:${Account}:accesspoint/${AccessPointName}/object/${ObjectName}, arn:${Partition}:s3:::${BucketName}/${ObjectName}), so the block grants it nothing",
                "object-with-region.toml:7:14: warning: allow[0].resources[0]: \"arn:aws:s3:us-east-1::team-data/*\" names nothing the block's actions can act on (check its service, region, account and resource type against `mandate profiles explain`)",
            ],
        ),
        (
            "bucket-for-object",
            "actions = [\"s3:GetObject\", \"s3:ListBucket\"]\nresources = [\"arn:aws:s3:::team-data\"]\n",
            &[
                "bucket-for-object.toml:6:12: warning: allow[0].actions[0]: \"s3:GetObject\" can act on none of this block's resources (it takes arn:${Partition}:s3:${Region}:${Account}:accesspoint/${AccessPointName}/object/${ObjectName}, arn:${Partition}:s3:::${BucketName}/${ObjectName}), so the block grants it nothing",
            ],
        ),
        (
            "star-only",
            "actions = [\"sts:GetCallerIdentity\"]\nresources = [\"arn:aws:iam::123456789012:role/x\"]\n",
            &[
                "star-only.toml:6:12: warning: allow[0].actions[0]: \"sts:GetCallerIdentity\" can act on none of this block's resources (it takes only \"*\" (no resource-level permissions)), so the block grants it nothing",
                "star-only.toml:7:14: warning: allow[0].resources[0]: \"arn:aws:iam::123456789012:role/x\" names nothing the block's actions can act on (check its service, region, account and resource type against `mandate profiles explain`)",
            ],
        ),
        (
            "other-service",
            "actions = [\"dynamodb:Get*\"]\nresources = [\"arn:aws:s3:::team-data/*\"]\n",
            &[
                "other-service.toml:7:14: warning: allow[0].resources[0]: \"arn:aws:s3:::team-data/*\" names nothing the block's actions can act on (check its service, region, account and resource type against `mandate profiles explain`)",
            ],
        ),
        // Fine: each action has some resource of the block that fits it.
        (
            "fits",
            "actions = [\"s3:GetObject\", \"s3:ListBucket\"]\nresources = [\"arn:aws:s3:::team-data\", \"arn:aws:s3:::team-data/*\"]\n",
            &[],
        ),
        (
            "wildcards",
            "actions = [\"dynamodb:Get*\", \"dynamodb:Query\"]\nresources = [\"arn:aws:dynamodb:*:*:table/orders\", \"arn:aws:dynamodb:*:*:table/orders/index/*\"]\n",
            &[],
        ),
    ];
    for (name, block, want) in cases {
        let file = tmp.path().join(format!("{name}.toml"));
        std::fs::write(&file, format!("{BASE}\n[[allow]]\n{block}")).unwrap();
        let out = run(tmp.path(), &["profiles", "check", &format!("{name}.toml")]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{name}: warnings never fail the check"
        );
        let err = String::from_utf8_lossy(&out.stderr);
        let got: Vec<&str> = err.lines().filter(|l| l.contains("warning:")).collect();
        assert_eq!(&got, want, "{name}");
    }
    // explain marks what the block grants nothing.
    let out = run(
        tmp.path(),
        &[
            "profiles",
            "explain",
            "--profiles",
            ".",
            "bucket-for-object",
            "--json",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let get = v["usable"]["Read"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["action"] == "s3:GetObject")
        .unwrap();
    assert_eq!(
        get["unfit_resources"],
        serde_json::json!(["arn:aws:s3:::team-data"])
    );
    let list = &v["usable"]["List"][0];
    assert_eq!(list["action"], "s3:ListBucket");
    assert_eq!(list["unfit_resources"], serde_json::json!([]));
    let text = run(
        tmp.path(),
        &[
            "profiles",
            "explain",
            "--profiles",
            ".",
            "bucket-for-object",
        ],
    );
    assert!(
        String::from_utf8_lossy(&text.stdout)
            .contains("on arn:aws:s3:::team-data  [fits none of these resources: grants nothing]"),
        "{}",
        String::from_utf8_lossy(&text.stdout)
    );
    // The shipped profiles draw no such warning.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = run(root, &["profiles", "check", "profiles"]);
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("warning:"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
