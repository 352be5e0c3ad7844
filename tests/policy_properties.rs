//! Property tests of the compiler, checked against the emitted JSON with an evaluator written
//! here (independent of the library's own matcher):
//!
//! * every action the compiled policy allows is inside the declared allow set;
//! * a destructive action is allowed only if the profile opts into it;
//! * every declared non-destructive (or opted-in) action stays allowed;
//! * every destructive action within reach of an allow (with managed policies: of a touched
//!   service) that is not opted in is explicitly denied;
//! * no action of the destructive-in-effect corpus (`tests/data/destructive-effect.txt`, written
//!   independently of the classification table) is usable unless `destructive` lists it;
//! * the output is deterministic and independent of list order.

use mandate::catalog::{Action, catalog};
use mandate::{policy, profile};
use proptest::prelude::*;
use serde_json::Value;

const SERVICES: [&str; 18] = [
    "s3",
    "ec2",
    "lambda",
    "dynamodb",
    "sqs",
    "logs",
    "iam",
    "cloudformation",
    "kms",
    "sns",
    "sts",
    "rds",
    "ssm",
    "ecs",
    "cloudtrail",
    "guardduty",
    "backup",
    "organizations",
];

/// The destructive-in-effect corpus: the first word of each non-comment line.
fn corpus() -> &'static [String] {
    static CORPUS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    CORPUS.get_or_init(|| {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/destructive-effect.txt"
        );
        std::fs::read_to_string(path)
            .expect("corpus")
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .collect()
    })
}

/// IAM glob, case-insensitive; deliberately a different algorithm from the library's.
fn glob(p: &[u8], t: &[u8]) -> bool {
    match (p.first(), t.first()) {
        (None, None) => true,
        (Some(b'*'), _) => glob(&p[1..], t) || (!t.is_empty() && glob(p, &t[1..])),
        (Some(b'?'), Some(_)) => glob(&p[1..], &t[1..]),
        (Some(a), Some(b)) if a.eq_ignore_ascii_case(b) => glob(&p[1..], &t[1..]),
        _ => false,
    }
}

fn matches(pattern: &str, action: &str) -> bool {
    glob(pattern.as_bytes(), action.as_bytes())
}

fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a.iter().map(|x| x.as_str().unwrap().to_owned()).collect(),
        _ => panic!("unexpected {v}"),
    }
}

#[derive(Debug, Clone)]
struct Generated {
    /// (actions, resource) per allow block, as written in the TOML.
    blocks: Vec<(Vec<String>, String)>,
    destructive: Vec<String>,
    approval: &'static str,
    managed: bool,
}

impl Generated {
    fn toml(&self, reverse: bool) -> String {
        let q = |v: &[String]| {
            let mut v: Vec<String> = v.iter().map(|s| format!("\"{s}\"")).collect();
            if reverse {
                v.reverse();
            }
            v.join(", ")
        };
        let mut s = format!(
            "description = \"generated\"\nrole = \"sandbox\"\napproval = \"{}\"\ndestructive = [{}]\n",
            self.approval,
            q(&self.destructive)
        );
        if self.managed {
            s.push_str("managed_policies = [\"arn:aws:iam::aws:policy/ReadOnlyAccess\"]\n");
        }
        for (actions, resource) in &self.blocks {
            s.push_str(&format!(
                "[[allow]]\nactions = [{}]\nresources = [\"{resource}\"]\n",
                q(actions)
            ));
        }
        s
    }
}

/// One action pattern of a service: an exact action, a prefix wildcard cut from a real action
/// name (so it always matches something), or the whole service.
fn pattern(service: &'static str) -> impl Strategy<Value = String> {
    let n = catalog().service(service).unwrap().len();
    (0..n, 0usize..12, 0u8..10).prop_map(move |(i, cut, kind)| {
        let a = &catalog().service(service).unwrap()[i];
        match kind {
            0 => format!("{service}:*"),
            1..=4 => format!("{service}:{}*", &a.name[..cut.min(a.name.len())]),
            _ => format!("{service}:{}", a.name),
        }
    })
}

fn block() -> impl Strategy<Value = (Vec<String>, String)> {
    (
        proptest::sample::select(&SERVICES[..]),
        proptest::sample::select(&SERVICES[..]),
        any::<bool>(),
    )
        .prop_flat_map(|(s1, s2, star)| {
            let resource = if star {
                "*".to_owned()
            } else {
                "arn:aws:s3:::bucket/*".to_owned()
            };
            (
                proptest::collection::vec(prop_oneof![pattern(s1), pattern(s2)], 1..6),
                Just(resource),
            )
        })
}

fn generated() -> impl Strategy<Value = Generated> {
    (
        proptest::collection::vec(block(), 1..4),
        any::<u64>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(blocks, seed, operator, managed)| {
            // Opt into a pseudo-random subset of the destructive actions the allows grant; exact
            // destructive actions must be opted into (else the profile is invalid by design).
            let declared: Vec<&String> = blocks.iter().flat_map(|b| &b.0).collect();
            let mut destructive = Vec::new();
            for (i, a) in catalog().actions().iter().enumerate() {
                if !a.is_destructive() {
                    continue;
                }
                let full = a.full_name();
                let exact = declared.iter().any(|d| d.eq_ignore_ascii_case(&full));
                let granted = declared.iter().any(|d| matches(d, &full));
                if exact || (granted && (seed.rotate_left(i as u32 % 64) & 7) == 0) {
                    destructive.push(full);
                }
            }
            // Managed policies are opaque to the compiler: they always need a human.
            let approval = if !destructive.is_empty() || operator || managed {
                "operator"
            } else {
                "none"
            };
            Generated {
                blocks,
                destructive,
                approval,
                managed,
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn compiled_policy_stays_inside_the_declared_allow_set(g in generated()) {
        let src = g.toml(false);
        let p = profile::parse("gen.toml", "gen", src.as_bytes())
            .unwrap_or_else(|d| panic!("generator produced an invalid profile: {d:?}\n{src}"));
        let compiled = match policy::compile(&p) {
            Ok(c) => c,
            Err(policy::PolicyError::TooLarge { .. }) => return Err(TestCaseError::reject("over the AWS size limit")),
        };
        // Deterministic, and list order does not matter.
        let again = policy::compile(&profile::parse("gen.toml", "gen", g.toml(true).as_bytes()).unwrap()).unwrap();
        prop_assert_eq!(compiled.policy.as_json(), again.policy.as_json());

        let doc: Value = serde_json::from_str(compiled.policy.as_json()).unwrap();
        let stmts = doc["Statement"].as_array().unwrap();
        let declared: Vec<&String> = g.blocks.iter().flat_map(|b| &b.0).collect();
        let services: std::collections::BTreeSet<&str> =
            declared.iter().map(|d| d.split(':').next().unwrap()).collect();
        let mut allowed_count = 0;
        for service in services {
            for a in catalog().service(service).unwrap() {
                let full = a.full_name();
                let hit = |effect: &str, blanket_only: bool| {
                    stmts.iter().any(|s| {
                        s["Effect"] == effect
                            && (!blanket_only || (s.get("Condition").is_none() && strings(&s["Resource"]).contains(&"*".to_owned())))
                            && strings(&s["Action"]).iter().any(|p| matches(p, &full))
                    })
                };
                let allowed = hit("Allow", false) && !hit("Deny", true);
                let is_declared = declared.iter().any(|d| matches(d, &full));
                let opted = g.destructive.iter().any(|d| matches(d, &full));
                let destructive = is_destructive(a);
                if allowed {
                    allowed_count += 1;
                    prop_assert!(is_declared, "{} allowed but not declared\n{}", full, compiled.policy.as_json());
                    prop_assert!(!destructive || opted, "{} is destructive, allowed without opt-in", full);
                }
                if is_declared && (!destructive || opted) {
                    prop_assert!(allowed, "{} declared but not allowed\n{}", full, compiled.policy.as_json());
                }
                // Within reach of an allow (or of a managed policy, which may grant anything in a
                // touched service), a classified action is explicitly denied unless opted into;
                // out of reach, no allow grants it, which the first assertion covers.
                if destructive && !opted && (is_declared || g.managed) {
                    prop_assert!(hit("Deny", true), "{} destructive but not explicitly denied", full);
                }
                if corpus().iter().any(|c| c.eq_ignore_ascii_case(&full)) {
                    prop_assert!(!allowed || opted, "{} (destructive in effect) usable without opt-in\n{}", full, compiled.policy.as_json());
                }
            }
        }
        let only_destructive_declared = declared.iter().all(|d| {
            catalog().actions().iter().filter(|a| matches(d, &a.full_name())).all(is_destructive)
        });
        prop_assert!(allowed_count > 0 || only_destructive_declared, "nothing usable");
    }
}

fn is_destructive(a: &Action) -> bool {
    a.is_destructive()
}
