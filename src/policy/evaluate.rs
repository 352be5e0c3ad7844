//! Would a session of this profile allow one action (on one resource)? Evaluated from the
//! compiled document, the bytes that go to STS, with IAM's rule: an explicit Deny wins, then an
//! Allow, else the implicit deny. The role's own policies also limit the session; they are not
//! known here, and neither are managed policies the profile passes (both said in the answer).

use crate::catalog::{self, Action};
use crate::policy::{CompiledProfile, Effect, Statement};

/// Longest resource ARN [`parse_resource`] accepts (IAM's own limit on an ARN is 2048).
pub const MAX_RESOURCE_CHARS: usize = 2048;

/// What a session of one profile does with the action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// An Allow matches (on the resource, or with no resource named: on `resources`) and no
    /// Deny that always applies does.
    Allowed {
        /// Every matching Allow has a condition (or a Deny with one may apply).
        conditional: bool,
        /// The resources the matching Allows name (when no resource was asked about).
        resources: Vec<String>,
    },
    /// Denied by the automatic Deny of destructive actions.
    AutoDenied,
    /// Denied by the profile's own deny rules.
    Denied,
    /// No Allow names the action.
    NotGranted,
    /// Allows name the action, but not on this resource.
    OtherResources(Vec<String>),
}

/// `service:Action`, one catalog action (no wildcard), case-insensitive as in IAM.
pub fn parse_action(s: &str) -> Result<&'static Action, String> {
    let shown = crate::diag::quoted(&s.chars().take(80).collect::<String>());
    let Some((service, name)) = s.split_once(':') else {
        return Err(format!(
            "action {shown} is not of the form service:Action (for example s3:GetObject)"
        ));
    };
    if service.is_empty() || name.is_empty() || s.contains(['*', '?']) {
        return Err(format!(
            "action {shown} must name one action as service:Action, without wildcards (for example s3:GetObject)"
        ));
    }
    catalog::catalog().lookup(service, name).ok_or_else(|| {
        let near = catalog::catalog()
            .service(service)
            .and_then(|acts| crate::suggest::closest(name, acts.iter().map(|a| a.name)))
            .map(|n| format!(" (did you mean {}:{n}?)", service.to_ascii_lowercase()))
            .unwrap_or_default();
        format!("action {shown} is not an IAM action{near}")
    })
}

/// An ARN (`arn:partition:service:region:account:resource`), or `*`; no control characters,
/// at most [`MAX_RESOURCE_CHARS`].
pub fn parse_resource(s: &str) -> Result<String, String> {
    if s.len() > MAX_RESOURCE_CHARS {
        return Err(format!(
            "resource is longer than {MAX_RESOURCE_CHARS} characters"
        ));
    }
    if s.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("resource contains whitespace or control characters".into());
    }
    if s == "*" {
        return Ok(s.to_owned());
    }
    // A pattern is not one resource: matched as text, it could miss a Deny it overlaps.
    if s.contains(['*', '?']) {
        return Err(format!(
            "resource {} contains a wildcard; name one resource (an ARN without * or ?), or * for every resource",
            crate::diag::quoted(&s.chars().take(80).collect::<String>())
        ));
    }
    let parts: Vec<&str> = s.splitn(6, ':').collect();
    if parts.len() < 6 || parts[0] != "arn" || parts[1].is_empty() || parts[2].is_empty() {
        return Err(format!(
            "resource {} is not an ARN (arn:partition:service:region:account:resource, for example arn:aws:s3:::my-bucket/key)",
            crate::diag::quoted(&s.chars().take(80).collect::<String>())
        ));
    }
    Ok(s.to_owned())
}

/// IAM's resource matching: `*` any run, `?` one character, case-sensitive; a policy variable
/// (`${aws:username}`) may stand for anything, so it matches like `*` (the answer is then
/// conditional on what the variable is at AWS).
fn resource_match(pattern: &str, arn: &str) -> bool {
    let mut p = String::with_capacity(pattern.len());
    let mut rest = pattern;
    while let Some(i) = rest.find("${") {
        p.push_str(&rest[..i]);
        match rest[i..].find('}') {
            Some(j) => {
                p.push('*');
                rest = &rest[i + j + 1..];
            }
            None => {
                rest = &rest[i..];
                break;
            }
        }
    }
    p.push_str(rest);
    catalog::wildcard_match_case_sensitive(&p, arn)
}

fn on(s: &Statement, resource: Option<&str>) -> bool {
    match resource {
        None => true,
        // Asking about every resource: only a statement on every resource covers it.
        Some("*") => s.resource.iter().any(|r| r == "*"),
        Some(arn) => s.resource.iter().any(|r| resource_match(r, arn)),
    }
}

/// The verdict of the compiled session policy for `action` on `resource` (any resource when
/// `None`: then a Deny counts only if it covers every resource unconditionally).
pub fn evaluate(c: &CompiledProfile, action: &Action, resource: Option<&str>) -> Verdict {
    let doc = &c.document;
    let matching = |e: Effect| {
        doc.statement
            .iter()
            .filter(move |s| s.effect == e && s.matches_action(action))
    };
    let auto = c
        .auto_denied
        .iter()
        .any(|a| a.service == action.service && a.name == action.name);
    let mut deny_may_apply = false;
    for d in matching(Effect::Deny) {
        let always = d.condition.is_none()
            && match resource {
                None => d.is_blanket(),
                Some(_) => on(d, resource),
            };
        if always {
            return if auto {
                Verdict::AutoDenied
            } else {
                Verdict::Denied
            };
        }
        // Asking about no resource or every resource, a Deny on some of them may apply.
        deny_may_apply |= resource.is_none_or(|r| r == "*") || on(d, resource);
    }
    if auto {
        // The automatic Deny is blanket; an action it names is never usable.
        return Verdict::AutoDenied;
    }
    let allows: Vec<&Statement> = matching(Effect::Allow).collect();
    if allows.is_empty() {
        return Verdict::NotGranted;
    }
    let hits: Vec<&&Statement> = allows.iter().filter(|s| on(s, resource)).collect();
    if hits.is_empty() {
        let mut named: Vec<String> = allows
            .iter()
            .flat_map(|s| s.resource.iter().map(str::to_owned))
            .collect();
        named.sort();
        named.dedup();
        return Verdict::OtherResources(named);
    }
    let mut resources: Vec<String> = hits
        .iter()
        .flat_map(|s| s.resource.iter().map(str::to_owned))
        .collect();
    resources.sort();
    resources.dedup();
    // An Allow that matches the resource only through a policy variable holds only if the
    // variable is what it must be at AWS.
    let through_variable = |s: &Statement| {
        resource.is_some_and(|arn| {
            arn != "*"
                && s.resource
                    .iter()
                    .filter(|r| resource_match(r, arn))
                    .all(|r| r.contains("${"))
        })
    };
    Verdict::Allowed {
        conditional: deny_may_apply
            || hits
                .iter()
                .all(|s| s.condition.is_some() || through_variable(s)),
        resources,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(name: &str) -> CompiledProfile {
        let path = format!("{}/profiles/{name}.toml", env!("CARGO_MANIFEST_DIR"));
        let bytes = std::fs::read(&path).unwrap();
        let p = crate::profile::parse(&path, name, &bytes).unwrap_or_else(|d| panic!("{d:?}"));
        crate::policy::compile(&p).unwrap()
    }

    fn act(s: &str) -> &'static Action {
        parse_action(s).unwrap()
    }

    #[test]
    fn verdicts_follow_the_compiled_document() {
        let s3 = example("s3-data");
        let ok = "arn:aws:s3:::team-data/projects/agent/a.csv";
        assert_eq!(
            evaluate(&s3, act("s3:GetObject"), Some(ok)),
            Verdict::Allowed {
                conditional: false,
                resources: vec!["arn:aws:s3:::team-data/projects/agent/*".into()]
            }
        );
        // Its own deny wins over the allow.
        assert_eq!(
            evaluate(
                &s3,
                act("s3:GetObject"),
                Some("arn:aws:s3:::team-data/projects/agent/.secrets/k")
            ),
            Verdict::Denied
        );
        // Outside the prefix: granted only elsewhere.
        assert_eq!(
            evaluate(&s3, act("s3:PutObject"), Some("arn:aws:s3:::other/x")),
            Verdict::OtherResources(vec!["arn:aws:s3:::team-data/projects/agent/*".into()])
        );
        // A condition on the only allow makes the answer conditional.
        assert!(matches!(
            evaluate(&s3, act("s3:ListBucket"), Some("arn:aws:s3:::team-data")),
            Verdict::Allowed {
                conditional: true,
                ..
            }
        ));
        assert_eq!(
            evaluate(&s3, act("s3:DeleteBucket"), None),
            Verdict::NotGranted
        );
        assert_eq!(
            evaluate(&s3, act("ec2:RunInstances"), None),
            Verdict::NotGranted
        );
        // The automatic Deny: a destructive action the readonly wildcards reach.
        let src = "description = \"all of s3\"\nrole = \"sandbox\"\napproval = \"none\"\n[[allow]]\nactions = [\"s3:*\"]\nresources = [\"*\"]\n";
        let p = crate::profile::parse("t.toml", "t", src.as_bytes()).unwrap();
        let wide = crate::policy::compile(&p).unwrap();
        assert_eq!(
            evaluate(&wide, act("s3:DeleteBucket"), Some("arn:aws:s3:::b")),
            Verdict::AutoDenied
        );
        assert!(matches!(
            evaluate(&wide, act("s3:GetObject"), Some("arn:aws:s3:::b/k")),
            Verdict::Allowed {
                conditional: false,
                ..
            }
        ));
        // The opt-ins of deploy-staging are usable (with approval).
        let deploy = example("deploy-staging");
        assert!(matches!(
            evaluate(&deploy, act("lambda:UpdateFunctionCode"), None),
            Verdict::Allowed { .. }
        ));
    }

    #[test]
    fn globs_are_case_sensitive_and_variables_match_anything() {
        assert!(resource_match(
            "arn:aws:s3:::data/*",
            "arn:aws:s3:::data/a/b"
        ));
        assert!(!resource_match(
            "arn:aws:s3:::data/*",
            "arn:aws:s3:::Data/a"
        ));
        assert!(resource_match("arn:aws:s3:::b?t", "arn:aws:s3:::bat"));
        assert!(resource_match(
            "arn:aws:s3:::home/${aws:username}/*",
            "arn:aws:s3:::home/ann/x"
        ));
        assert!(!resource_match("arn:aws:s3:::data", "arn:aws:s3:::data2"));
    }

    #[test]
    fn actions_and_resources_parse_strictly() {
        assert_eq!(
            parse_action("S3:getobject").unwrap().full_name(),
            "s3:GetObject"
        );
        for bad in [
            "s3",
            "s3:",
            ":GetObject",
            "s3:Get*",
            "s3:NoSuchThing",
            "nosvc:X",
        ] {
            assert!(parse_action(bad).is_err(), "{bad}");
        }
        assert!(
            parse_action("s3:GetObjekt")
                .unwrap_err()
                .contains("did you mean s3:GetObject?")
        );
        assert!(parse_resource("arn:aws:s3:::b/k").is_ok());
        assert!(parse_resource("*").is_ok());
        for bad in ["bucket", "arn:aws", "arn:aws:s3:::b\nk", "arn::s3:::b"] {
            assert!(parse_resource(bad).is_err(), "{bad}");
        }
        assert!(parse_resource(&format!("arn:aws:s3:::{}", "a".repeat(3000))).is_err());
    }

    #[test]
    fn wildcards_every_resource_and_policy_variables_never_give_a_plain_yes() {
        // A pattern is refused: it could step around a Deny it overlaps.
        assert_eq!(
            parse_resource("arn:aws:s3:::team-data/projects/agent/*"),
            Err("resource \"arn:aws:s3:::team-data/projects/agent/*\" contains a wildcard; name one resource (an ARN without * or ?), or * for every resource".into())
        );
        assert!(parse_resource("arn:aws:s3:::pay?oll/x").is_err());
        // Every resource, with a Deny on some of them: only conditionally allowed.
        let text = "description = \"wide\"\nrole = \"sandbox\"\n\n[[allow]]\nactions = [\"s3:GetObject\"]\nresources = [\"*\"]\n\n[[deny]]\nactions = [\"s3:GetObject\"]\nresources = [\"arn:aws:s3:::payroll/*\"]\n";
        let p = crate::profile::parse("wide.toml", "wide", text.as_bytes())
            .unwrap_or_else(|d| panic!("{d:?}"));
        let wide = crate::policy::compile(&p).unwrap();
        match evaluate(&wide, act("s3:GetObject"), Some("*")) {
            Verdict::Allowed { conditional, .. } => assert!(conditional, "payroll/* is denied"),
            v => panic!("{v:?}"),
        }
        assert_eq!(
            evaluate(&wide, act("s3:GetObject"), Some("arn:aws:s3:::payroll/x")),
            Verdict::Denied
        );
        // A statement reached only through ${...} holds only if the variable matches.
        let text = "description = \"home dirs\"\nrole = \"sandbox\"\n\n[[allow]]\nactions = [\"s3:PutObject\"]\nresources = [\"arn:aws:s3:::team-data/home/${aws:PrincipalTag/team}/*\"]\n";
        let p = crate::profile::parse("home.toml", "home", text.as_bytes())
            .unwrap_or_else(|d| panic!("{d:?}"));
        let doc = crate::policy::compile(&p).unwrap();
        match evaluate(
            &doc,
            act("s3:PutObject"),
            Some("arn:aws:s3:::team-data/home/other/x"),
        ) {
            Verdict::Allowed { conditional, .. } => assert!(conditional, "through a variable"),
            v => panic!("{v:?}"),
        }
    }
}
