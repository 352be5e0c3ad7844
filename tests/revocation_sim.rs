//! Checks the role revocation policy (`mandate::revoke::role_policy`, the inline policy
//! `mandate-revocations` the broker puts on a role) with an independent IAM evaluator,
//! `@cloud-copilot/iam-simulate` (see `tests/iam-sim/revocation.mjs`; install it with
//! `npm ci --prefix tests/iam-sim`, without it this test fails).
//!
//! The role has a permissive policy (Allow `*` on `*`) plus the revocation policy; each case is a
//! request by a session of that role, described by the context keys AWS sets for mandate's
//! sessions: `aws:SourceIdentity` (`mandate-<agent>`), the session tags `mandate-profile` and
//! `mandate-request-id` (`aws:PrincipalTag/...`), and `aws:TokenIssueTime`.

mod common;

use std::collections::BTreeMap;

use common::*;
use mandate::clock::rfc3339;
use mandate::revoke::{Revocation, Scope, role_policy};
use serde_json::{Value, json};

/// 2026-11-18T11:06:30Z.
const T0: i64 = 1_794_999_990;
const OTHER_ROLE: &str = "arn:aws:iam::123456789012:role/other-role";

const S3: (&str, &str) = ("s3:GetObject", "arn:aws:s3:::team-data/x");
const EC2: (&str, &str) = (
    "ec2:TerminateInstances",
    "arn:aws:ec2:us-east-1:123456789012:instance/i-0123456789abcdef0",
);
const IAM: (&str, &str) = ("iam:CreateUser", "arn:aws:iam::123456789012:user/x");

const DENIED: &str = "ExplicitlyDenied";
const ALLOWED: &str = "Allowed";

fn revocation(id: &str, scope: Scope, at: i64, role: &str) -> Revocation {
    Revocation {
        id: id.to_owned(),
        scope,
        at,
        by: "test".to_owned(),
        active: true,
        aws_roles: vec![role.to_owned()],
    }
}

/// The request context of a mandate session: who, which profile, which request, issued when.
fn session(agent: &str, profile: &str, request_id: &str, issued: i64) -> Value {
    json!({
        "aws:SourceIdentity": format!("mandate-{agent}"),
        "aws:PrincipalTag/mandate-profile": profile,
        "aws:PrincipalTag/mandate-request-id": request_id,
        "aws:TokenIssueTime": rfc3339(issued),
    })
}

/// Evaluates `table` (name, request, context, expected) against the policy for `revs` and
/// asserts the exact result of every case.
fn check(revs: &[Revocation], statements: usize, table: &[(&str, (&str, &str), Value, &str)]) {
    let policy = role_policy(revs, ROLE_ARN, T0 + 60).expect("a revocation policy");
    let policy: Value = serde_json::from_str(&policy).expect("the policy is JSON");
    assert_eq!(
        policy["Statement"].as_array().map(Vec::len),
        Some(statements),
        "{policy:#}"
    );
    let cases: Vec<Value> = table
        .iter()
        .map(|(name, (action, resource), context, _)| {
            json!({ "name": name, "action": action, "resource": resource, "context": context })
        })
        .collect();
    let expected: BTreeMap<String, String> = table
        .iter()
        .map(|(name, _, _, result)| (name.to_string(), result.to_string()))
        .collect();
    assert_eq!(expected.len(), table.len(), "case names are unique");
    assert_eq!(
        iam_sim_revocation(std::slice::from_ref(&policy), &cases),
        expected,
        "{policy:#}"
    );
}

#[test]
fn revocation_policy_denies_only_older_sessions_of_the_revoked_scope() {
    // The formatting the contexts rely on (and the policy uses) is anchored here.
    assert_eq!(rfc3339(T0), "2026-11-18T11:06:30Z");

    // Per-scope revocations. claude is revoked twice (the later one counts); `other` is revoked
    // only on another role, so this role's policy does not mention it.
    let revs = [
        revocation("r1", Scope::Agent("claude".into()), T0 - 600, ROLE_ARN),
        revocation("r2", Scope::Agent("claude".into()), T0, ROLE_ARN),
        revocation("r3", Scope::Session("abc".into()), T0 + 5, ROLE_ARN),
        revocation("r4", Scope::Profile("s3-data".into()), T0 + 10, ROLE_ARN),
        revocation("r5", Scope::Agent("other".into()), T0, OTHER_ROLE),
    ];
    check(
        &revs,
        3,
        &[
            // Agent claude, revoked at T0.
            (
                "claude issued before its revocation",
                S3,
                session("claude", "readonly", "req-1", T0 - 60),
                DENIED,
            ),
            (
                "claude issued between its two revocations",
                IAM,
                session("claude", "readonly", "req-2", T0 - 300),
                DENIED,
            ),
            (
                "claude issued one second before its revocation",
                EC2,
                session("claude", "readonly", "req-3", T0 - 1),
                DENIED,
            ),
            (
                "claude issued after its revocation",
                EC2,
                session("claude", "readonly", "req-4", T0 + 1),
                ALLOWED,
            ),
            (
                "another agent issued before claude's revocation",
                S3,
                session("other", "readonly", "req-5", T0 - 60),
                ALLOWED,
            ),
            // Session abc, revoked at T0 + 5.
            (
                "session abc issued before its revocation",
                EC2,
                session("codex", "readonly", "abc", T0 + 4),
                DENIED,
            ),
            (
                "session abc issued after its revocation",
                EC2,
                session("codex", "readonly", "abc", T0 + 6),
                ALLOWED,
            ),
            (
                "another session issued before session abc's revocation",
                IAM,
                session("codex", "readonly", "abd", T0 + 4),
                ALLOWED,
            ),
            // Profile s3-data, revoked at T0 + 10.
            (
                "profile s3-data issued before its revocation",
                S3,
                session("codex", "s3-data", "req-6", T0 + 9),
                DENIED,
            ),
            (
                "profile s3-data issued after its revocation",
                IAM,
                session("codex", "s3-data", "req-7", T0 + 11),
                ALLOWED,
            ),
            (
                "another profile issued before s3-data's revocation",
                S3,
                session("codex", "readonly", "req-8", T0 + 9),
                ALLOWED,
            ),
            (
                "claude after its own revocation but on s3-data before that one",
                IAM,
                session("claude", "s3-data", "req-9", T0 + 9),
                DENIED,
            ),
            // Not a mandate session at all.
            (
                "a session without source identity or tags",
                S3,
                json!({ "aws:TokenIssueTime": rfc3339(T0 - 60) }),
                ALLOWED,
            ),
        ],
    );

    // revoke --all: every mandate session issued before T0, and nothing else.
    let all = [revocation("r6", Scope::All, T0, ROLE_ARN)];
    check(
        &all,
        1,
        &[
            (
                "claude issued before",
                S3,
                session("claude", "readonly", "req-1", T0 - 1),
                DENIED,
            ),
            (
                "codex issued before",
                IAM,
                session("codex", "s3-data", "req-2", T0 - 3600),
                DENIED,
            ),
            (
                "other issued before",
                EC2,
                session("other", "deploy-staging", "req-3", T0 - 60),
                DENIED,
            ),
            (
                "claude issued after",
                EC2,
                session("claude", "readonly", "req-4", T0 + 1),
                ALLOWED,
            ),
            (
                "codex issued after",
                S3,
                session("codex", "s3-data", "req-5", T0 + 60),
                ALLOWED,
            ),
            (
                "a non-mandate source identity issued before",
                IAM,
                json!({
                    "aws:SourceIdentity": "alice",
                    "aws:TokenIssueTime": rfc3339(T0 - 60),
                }),
                ALLOWED,
            ),
            (
                "a session without source identity issued before",
                S3,
                json!({ "aws:TokenIssueTime": rfc3339(T0 - 60) }),
                ALLOWED,
            ),
        ],
    );
}
