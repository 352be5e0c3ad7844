//! The config parser's tests: every problem reported, with file:line:col.

use super::*;

const GOOD: &str = r#"
[broker]
state_dir = "state"
socket = "run/mandate.sock"
profiles_dir = "profiles"
endpoint_url = "http://127.0.0.1:5055"

[roles.sandbox]
arn = "arn:aws:iam::123456789012:role/agent-role"
max_session = "1h"

[agents.claude]
profiles = ["readonly", "s3-data"]
uids = [1000]
operator = "alice"

[approvers.alice]
uids = [1000]
"#;

fn parse_str(s: &str) -> Result<Config, Vec<String>> {
    parse(
        "broker.toml",
        s.as_bytes(),
        Path::new("/etc/m"),
        Path::new("/etc/m/broker.toml"),
    )
    .map_err(|d| d.iter().map(|d| d.to_string()).collect())
}

#[test]
fn parses_and_resolves_relative_paths() {
    let c = parse_str(GOOD).unwrap();
    assert_eq!(c.socket, Path::new("/etc/m/run/mandate.sock"));
    assert_eq!(c.region, "us-east-1");
    assert_eq!(c.endpoint_url.as_deref(), Some("http://127.0.0.1:5055"));
    assert_eq!(c.roles["sandbox"].max_session.seconds(), 3600);
    assert_eq!(c.agents["claude"].uids, vec![1000]);
    assert_eq!(c.agent_for_uid(1000, None).unwrap().name, "claude");
    assert!(c.agent_for_uid(1001, None).is_err());
    assert!(c.agent_for_uid(1000, Some("other")).is_err());
}

#[test]
fn bad_configs_report_every_problem() {
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "unknown broker key",
            "[broker]\nstate_dri = \"x\"\n",
            &[
                "broker.toml: no roles: declare at least one [roles.NAME] with an arn",
                "broker.toml:1:2: broker: missing required key \"state_dir\"",
                "broker.toml:1:2: broker: missing required key \"socket\"",
                "broker.toml:1:2: broker: missing required key \"profiles_dir\"",
                "broker.toml:2:1: broker: unknown key \"state_dri\"; did you mean \"state_dir\"?",
            ],
        ),
        (
            "bad role arn",
            "[broker]\nstate_dir = \"s\"\nsocket = \"s\"\nprofiles_dir = \"p\"\n[roles.sandbox]\narn = \"arn:aws:iam::123:user/x\"\n",
            &[
                "broker.toml:6:7: roles.sandbox.arn: \"arn:aws:iam::123:user/x\" is not a role ARN like arn:aws:iam::123456789012:role/NAME",
            ],
        ),
        (
            "unknown operator",
            "[broker]\nstate_dir = \"s\"\nsocket = \"s\"\nprofiles_dir = \"p\"\n[roles.r]\narn = \"arn:aws:iam::123456789012:role/r\"\n[agents.a]\nprofiles = [\"x\"]\noperator = \"bob\"\n",
            &["broker.toml:7:9: agents.a: operator \"bob\" is not declared in [approvers]"],
        ),
        (
            "http not loopback",
            "[broker]\nstate_dir = \"s\"\nsocket = \"s\"\nprofiles_dir = \"p\"\n[roles.r]\narn = \"arn:aws:iam::123456789012:role/r\"\n[http]\nlisten = \"0.0.0.0:9911\"\n",
            &[
                "broker.toml:8:10: http.listen: 0.0.0.0:9911 is not 127.0.0.1 or [::1]: the credentials endpoint listens on loopback only (share the agent's network namespace instead)",
            ],
        ),
        (
            "default profile not bound",
            "[broker]\nstate_dir = \"s\"\nsocket = \"s\"\nprofiles_dir = \"p\"\n[roles.r]\narn = \"arn:aws:iam::123456789012:role/r\"\n[agents.a]\nprofiles = [\"x\"]\ndefault_profile = \"y\"\n",
            &[
                "broker.toml:9:19: agents.a.default_profile: \"y\" is not one of this agent's profiles",
            ],
        ),
        (
            "audit",
            "[broker]\nstate_dir = \"s\"\nsocket = \"s\"\nprofiles_dir = \"p\"\n[roles.r]\narn = \"arn:aws:iam::123456789012:role/r\"\n[audit]\nrotate_bytes = 10\ncheckpoint_evry = 5\n",
            &[
                "broker.toml:8:16: audit.rotate_bytes: expected an integer from 4096 to 1099511627776",
                "broker.toml:9:1: audit: unknown key \"checkpoint_evry\"; did you mean \"checkpoint_every\"?",
            ],
        ),
        (
            "limits, approvals and notify",
            "[broker]\nstate_dir = \"s\"\nsocket = \"s\"\nprofiles_dir = \"p\"\n[roles.r]\narn = \"arn:aws:iam::123456789012:role/r\"\n[limits]\nmax_issuance = 3\nwindow = \"0s\"\n[approvals]\nuse_within = \"30s\"\nmax_pending = 0\n[notify]\nwebhook = \"ftp://x\"\ncommand = []\ntimeout = \"2m\"\n",
            &[
                "broker.toml:8:1: limits: unknown key \"max_issuance\"; did you mean \"max_issuances\"?",
                "broker.toml:9:10: limits.window: 0 s is outside the allowed range, 1 to 604800 s",
                "broker.toml:11:14: approvals.use_within: 30 s is outside the allowed range, 60 to 86400 s",
                "broker.toml:12:15: approvals.max_pending: expected an integer from 1 to 1000",
                "broker.toml:14:11: notify.webhook: must be an http:// or https:// URL with a host",
                "broker.toml:15:11: notify.command: must not be empty",
                "broker.toml:16:11: notify.timeout: 120 s is outside the allowed range, 1 to 60 s",
            ],
        ),
    ];
    for (what, src, want) in cases {
        let got = parse_str(src).unwrap_err();
        assert_eq!(&got, want, "{what}");
    }
}

#[test]
fn webhook_urls() {
    assert!(check_url("https://hooks.example.com/x").is_ok());
    assert!(check_url("http://127.0.0.1:8080/hook").is_ok());
    assert_eq!(
        check_url("ftp://secret-token@x").unwrap_err(),
        "must be an http:// or https:// URL with a host"
    );
    assert!(check_url("not a url").is_err());
}

#[test]
fn only_loopback_listeners() {
    assert!(check_listen("127.0.0.1:9911").is_ok());
    assert!(check_listen("[::1]:9911").is_ok());
    assert!(check_listen("0.0.0.0:9911").is_err());
    assert!(check_listen("10.0.0.5:9911").is_err());
    assert!(
        check_listen("localhost:9911").is_err(),
        "names are not resolved"
    );
    assert!(
        check_listen("127.0.0.2:9911").is_err(),
        "exactly the addresses Host may name"
    );
}
