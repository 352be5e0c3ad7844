use super::*;
use crate::profile;

fn compile_src(src: &str) -> Result<CompiledProfile, PolicyError> {
    let p = profile::parse("t.toml", "t", src.as_bytes()).unwrap_or_else(|d| panic!("{d:?}"));
    compile(&p)
}

const S3_DATA: &str = r#"
description = "data"
role = "sandbox"
approval = "none"
[[allow]]
actions = ["s3:PutObject", "s3:GetObject", "s3:ListBucket"]
resources = ["arn:aws:s3:::team-data/*", "arn:aws:s3:::team-data"]
"#;

#[test]
fn compiles_minified_sorted_and_deterministic() {
    let a = compile_src(S3_DATA).unwrap();
    let b = compile_src(S3_DATA).unwrap();
    assert_eq!(a.policy, b.policy);
    let json = a.policy.as_json();
    // No allow reaches a classified action, so there is nothing to deny explicitly.
    assert_eq!(
        json,
        r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["s3:GetObject","s3:ListBucket","s3:PutObject"],"Resource":["arn:aws:s3:::team-data","arn:aws:s3:::team-data/*"]}]}"#
    );
    assert!(!json.contains(' '), "minified: {json}");
    assert_eq!(a.policy.sha256(), hex(&Sha256::digest(json.as_bytes())));
    assert_eq!(a.size.total, json.chars().count());
}

#[test]
fn reordering_condition_values_does_not_change_the_policy() {
    let with = |values: &str| {
        format!(
            "description = \"x\"\nrole = \"r\"\napproval = \"none\"\n[[allow]]\nactions = [\"s3:ListBucket\"]\nresources = [\"arn:aws:s3:::b\"]\ncondition = {{ StringLike = {{ \"s3:prefix\" = [{values}] }} }}\n"
        )
    };
    let a = compile_src(&with("\"b/*\", \"a/*\"")).unwrap();
    let b = compile_src(&with("\"a/*\", \"b/*\", \"a/*\"")).unwrap();
    assert_eq!(a.policy, b.policy);
    assert_eq!(a.profile_sha256, b.profile_sha256);
    assert!(
        a.policy.as_json().contains(r#""s3:prefix":["a/*","b/*"]"#),
        "{}",
        a.policy.as_json()
    );
}

#[test]
fn reordering_lists_does_not_change_the_policy() {
    let reordered = S3_DATA.replace(
        r#"["s3:PutObject", "s3:GetObject", "s3:ListBucket"]"#,
        r#"["s3:ListBucket", "s3:getobject", "s3:PutObject", "s3:GetObject"]"#,
    );
    assert_eq!(
        compile_src(S3_DATA).unwrap().policy,
        compile_src(&reordered).unwrap().policy
    );
}

const S3_WILD: &str = r#"
description = "data"
role = "sandbox"
approval = "none"
[[allow]]
actions = ["s3:Put*", "s3:GetObject", "s3:ListBucket"]
resources = ["arn:aws:s3:::team-data/*", "arn:aws:s3:::team-data"]
"#;

#[test]
fn auto_deny_covers_every_classified_action_within_reach_and_nothing_kept() {
    let c = compile_src(S3_WILD).unwrap();
    let cat = catalog::catalog();
    let s3 = cat.service("s3").unwrap();
    let deny = c.document.statement.last().unwrap();
    assert_eq!(deny.effect, Effect::Deny);
    let reach = |a: &Action| catalog::wildcard_match("Put*", a.name);
    for a in s3 {
        let denied = deny.matches_action(a);
        if a.is_destructive() && reach(a) {
            assert!(denied, "{a} must be denied");
            assert!(c.auto_denied.contains(&a));
        }
        if !a.is_destructive() && reach(a) || ["GetObject", "ListBucket"].contains(&a.name) {
            assert!(!denied, "{a} must stay usable");
        }
    }
    for a in [
        "PutLifecycleConfiguration",
        "PutBucketVersioning",
        "PutBucketPolicy",
    ] {
        assert!(deny.matches_action(cat.lookup("s3", a).unwrap()), "{a}");
    }
    assert!(!deny.matches_action(cat.lookup("s3", "PutObject").unwrap()));
    assert_eq!(
        c.auto_denied.len(),
        s3.iter().filter(|a| a.is_destructive() && reach(a)).count()
    );
}

#[test]
fn opt_ins_are_not_denied() {
    let src = S3_DATA
        .replace(
            "approval = \"none\"",
            "approval = \"operator\"\ndestructive = [\"s3:DeleteObject\"]",
        )
        .replace(
            "\"s3:ListBucket\"]",
            "\"s3:ListBucket\", \"s3:DeleteObject\"]",
        );
    let c = compile_src(&src).unwrap();
    let del = catalog::catalog().lookup("s3", "DeleteObject").unwrap();
    assert!(!c.auto_denied.contains(&del));
    assert!(
        !c.document
            .statement
            .iter()
            .any(|s| s.effect == Effect::Deny && s.matches_action(del))
    );
    let e = explain::explain(&c);
    assert_eq!(e.needs_approval, vec![del]);
}

#[test]
fn managed_policies_keep_every_non_destructive_action() {
    let src = S3_DATA.replace(
        "approval = \"none\"",
        "approval = \"operator\"\nmanaged_policies = [\"arn:aws:iam::aws:policy/ReadOnlyAccess\"]",
    );
    let c = compile_src(&src).unwrap();
    let deny = c.document.statement.last().unwrap();
    for a in catalog::catalog().service("s3").unwrap() {
        assert_eq!(deny.matches_action(a), a.is_destructive(), "{a}");
    }
    assert!(
        c.size
            .parts
            .iter()
            .any(|(l, n)| l == "managed policy ARNs (1)" && *n == 38)
    );
    assert_eq!(
        c.policy_arns(),
        vec!["arn:aws:iam::aws:policy/ReadOnlyAccess"]
    );
}

#[test]
fn oversize_policy_shows_what_takes_the_space() {
    let resources: Vec<String> = (0..60)
        .map(|i| format!("\"arn:aws:s3:::bucket-number-{i:03}/*\""))
        .collect();
    let src = format!(
        "description = \"x\"\nrole = \"r\"\napproval = \"none\"\n[[allow]]\nactions = [\"s3:Put*\"]\nresources = [{}]\n",
        resources.join(", ")
    );
    let err = compile_src(&src).unwrap_err();
    let msg = err.to_string();
    assert!(msg.starts_with("the session policy needs 2"), "{msg}");
    assert!(msg.contains("allow[0] (1 actions, 60 resources)"), "{msg}");
    assert!(msg.contains("automatic deny of"), "{msg}");
    assert!(msg.contains("automatic deny of"), "{msg}");
    assert!(msg.contains("/ 2048"), "{msg}");
}

#[test]
fn explain_groups_by_level() {
    let c = compile_src(S3_DATA).unwrap();
    let e = explain::explain(&c);
    let names = |l| {
        e.usable
            .get(&l)
            .map(|v| v.iter().map(|u| u.action.name).collect::<Vec<_>>())
            .unwrap_or_default()
    };
    assert_eq!(names(catalog::AccessLevel::List), vec!["ListBucket"]);
    assert_eq!(names(catalog::AccessLevel::Read), vec!["GetObject"]);
    assert_eq!(names(catalog::AccessLevel::Write), vec!["PutObject"]);
    assert_eq!(e.usable_count(), 3);
    assert!(e.needs_approval.is_empty());
}

#[test]
fn wildcard_allow_keeps_safe_actions_and_denies_destructive_ones() {
    let src = "description = \"x\"\nrole = \"r\"\napproval = \"none\"\n[[allow]]\nactions = [\"dynamodb:*\"]\nresources = [\"*\"]\n";
    let c = compile_src(src).unwrap();
    let e = explain::explain(&c);
    for list in e.usable.values() {
        for u in list {
            assert!(!u.action.is_destructive(), "{}", u.action);
        }
    }
    assert!(e.usable_count() > 20);
    assert!(!c.auto_denied.is_empty());
}

fn service_wildcard(service: &str, extra: &str) -> String {
    format!(
        "description = \"x\"\nrole = \"r\"\napproval = \"none\"\n{extra}[[allow]]\nactions = [\"{service}:*\"]\nresources = [\"*\"]\n"
    )
}

/// The automatic deny fits AWS's budget for a whole-service allow of every service in the
/// catalog, and denies exactly that service's classified actions while keeping the rest.
#[test]
fn every_service_wildcard_compiles_within_the_budget() {
    let cat = catalog::catalog();
    let mut over = Vec::new();
    let mut largest = (0, "");
    for service in cat.services() {
        match compile_src(&service_wildcard(service, "")) {
            Ok(c) => {
                if c.size.total > largest.0 {
                    largest = (c.size.total, service);
                }
                let deny = c.document.statement.last().unwrap();
                for a in cat.service(service).unwrap() {
                    if a.is_destructive() {
                        assert!(deny.matches_action(a), "{a} not denied under {service}:*");
                    } else if deny.effect == Effect::Deny {
                        assert!(!deny.matches_action(a), "{a} denied under {service}:*");
                    }
                }
            }
            Err(PolicyError::TooLarge { breakdown }) => {
                over.push(format!("{service}: {}", breakdown.total))
            }
        }
    }
    assert!(over.is_empty(), "over the budget: {over:?}");
    eprintln!(
        "largest: {service} with {n} characters",
        service = largest.1,
        n = largest.0
    );
}

#[test]
fn explain_shows_each_class_within_reach_with_its_fate() {
    let c = compile_src(&service_wildcard("kms", "")).unwrap();
    let e = explain::explain(&c);
    let kms = |n| catalog::catalog().lookup("kms", n).unwrap();
    let destroy = &e.classes[&catalog::RiskClass::Destroy];
    assert!(destroy.contains(&(kms("ScheduleKeyDeletion"), explain::Fate::Denied)));
    assert!(
        e.classes
            .values()
            .flatten()
            .all(|(_, f)| *f == explain::Fate::Denied)
    );
    assert!(
        e.classes
            .values()
            .flatten()
            .all(|(a, _)| a.is_destructive())
    );
    assert!(
        !e.classes
            .values()
            .flatten()
            .any(|(a, _)| a.name == "Decrypt")
    );
    let json = e.to_json(&c);
    assert_eq!(
        json["classes"]["destroy"]["description"],
        catalog::RiskClass::Destroy.describe()
    );
    assert!(json["managed_policies"].as_array().unwrap().is_empty());

    // Opted in (with a human): the same action now needs approval.
    let src = service_wildcard("kms", "destructive = [\"kms:ScheduleKeyDeletion\"]\n")
        .replace("approval = \"none\"", "approval = \"operator\"");
    let c = compile_src(&src).unwrap();
    let e = explain::explain(&c);
    assert!(
        e.classes[&catalog::RiskClass::Destroy]
            .contains(&(kms("ScheduleKeyDeletion"), explain::Fate::NeedsApproval))
    );
    assert_eq!(e.needs_approval, vec![kms("ScheduleKeyDeletion")]);
}
