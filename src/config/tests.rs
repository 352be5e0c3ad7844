//! The config parser's tests: every problem reported, with file:line:col.

use super::*;
use std::time::Duration;

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

const STORE_BASE: &str = "[broker]\nstate_dir = \"s\"\nsocket = \"s\"\nprofiles_dir = \"p\"\n[roles.r]\narn = \"arn:aws:iam::123456789012:role/r\"\n[store]\n";
const SIGNER: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";

#[test]
fn the_store_table() {
    let c = parse_str(&format!(
        "{STORE_BASE}url = \"postgres://mandate@db.internal:6432/team?sslmode=verify-full\"\nca_file = \"ca.pem\"\npassword_file = \"pg.pass\"\npool = 8\nstale_after = \"1m\"\nresync = \"10s\"\n[store.vote_signers]\nconsole = \"{SIGNER}\"\n"
    ))
    .unwrap();
    let s = c.store.unwrap();
    assert_eq!(
        s.url,
        StoreUrl {
            host: "db.internal".into(),
            port: 6432,
            dbname: "team".into(),
            user: "mandate".into(),
            sslmode: SslMode::VerifyFull,
        }
    );
    assert_eq!(s.url.location(), "db.internal:6432/team");
    assert_eq!(s.ca_file.as_deref(), Some(Path::new("/etc/m/ca.pem")));
    assert_eq!(
        s.password,
        Some(PasswordSource::File("/etc/m/pg.pass".into()))
    );
    assert_eq!(s.pool, 8);
    assert_eq!(s.connect_timeout, Duration::from_secs(5));
    assert_eq!(s.statement_timeout, Duration::from_secs(10));
    assert_eq!(s.stale_after, Duration::from_secs(60));
    assert_eq!(s.resync, Duration::from_secs(10));
    assert_eq!(
        s.vote_signers["console"],
        crate::audit::checkpoint::parse_public(SIGNER).unwrap()
    );

    // Defaults; loopback without TLS; the password from the environment.
    let c = parse_str(&format!(
        "{STORE_BASE}url = \"postgresql://m@[::1]/db?sslmode=disable\"\npassword_env = \"PGPASS_MANDATE\"\n"
    ))
    .unwrap();
    let s = c.store.unwrap();
    assert_eq!((s.url.host.as_str(), s.url.port), ("::1", 5432));
    assert_eq!(s.url.location(), "[::1]:5432/db");
    assert_eq!(
        s.password,
        Some(PasswordSource::Env("PGPASS_MANDATE".into()))
    );
    assert_eq!(
        (s.pool, s.stale_after, s.resync),
        (4, Duration::from_secs(30), Duration::from_secs(5))
    );
    assert!(parse_str(GOOD).unwrap().store.is_none());
}

#[test]
fn bad_store_tables() {
    let url = |u: &str| format!("{STORE_BASE}url = \"{u}\"\n");
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "password in the URL",
            url("postgres://m:hunter2@127.0.0.1/db?sslmode=disable"),
            vec![
                "broker.toml:8:7: store.url: holds a password: put the password in password_file or password_env",
            ],
        ),
        (
            "not a postgres URL",
            url("mysql://m@127.0.0.1/db"),
            vec![
                "broker.toml:8:7: store.url: must be a URL like postgres://USER@HOST:PORT/DBNAME?sslmode=verify-full",
            ],
        ),
        (
            "no user",
            url("postgres://127.0.0.1/db?sslmode=disable"),
            vec![
                "broker.toml:8:7: store.url: names no user: expected postgres://USER@HOST:PORT/DBNAME?sslmode=verify-full",
            ],
        ),
        (
            "no database",
            url("postgres://m@127.0.0.1"),
            vec![
                "broker.toml:8:7: store.url: names no database: expected postgres://USER@HOST:PORT/DBNAME?sslmode=verify-full",
            ],
        ),
        (
            "bad port",
            url("postgres://m@127.0.0.1:99999/db?sslmode=disable"),
            vec!["broker.toml:8:7: store.url: has a port that is not a number from 1 to 65535"],
        ),
        (
            "sslmode=require",
            url("postgres://m@db/db?sslmode=require"),
            vec![
                "broker.toml:8:7: store.url: sslmode=require does not check the server's certificate, so anyone on the path can pose as the database: use sslmode=verify-full with ca_file",
            ],
        ),
        (
            "sslmode=prefer",
            url("postgres://m@db/db?sslmode=prefer"),
            vec![
                "broker.toml:8:7: store.url: sslmode=prefer does not check the server's certificate, so anyone on the path can pose as the database: use sslmode=verify-full with ca_file",
            ],
        ),
        (
            "sslmode=verify-ca",
            url("postgres://m@db/db?sslmode=verify-ca"),
            vec![
                "broker.toml:8:7: store.url: sslmode=verify-ca does not check the host name, so any server with a certificate from that CA can pose as the database: use sslmode=verify-full with ca_file",
            ],
        ),
        (
            "sslmode=disable off loopback",
            url("postgres://m@db.internal/db?sslmode=disable"),
            vec![
                "broker.toml:8:7: store.url: sslmode=disable sends everything in clear text; it is allowed only for a loopback host (127.0.0.1, ::1, localhost), not db.internal: use sslmode=verify-full with ca_file",
            ],
        ),
        (
            "other parameters",
            url("postgres://m@127.0.0.1/db?sslmode=disable&connect_timeout=3"),
            vec![
                "broker.toml:8:7: store.url: takes only the parameter sslmode (verify-full or disable); the other settings are keys of [store]",
            ],
        ),
        (
            "verify-full without ca_file",
            url("postgres://m@db/db?sslmode=verify-full"),
            vec![
                "broker.toml:7:2: store: sslmode=verify-full needs ca_file: the CA certificate (PEM) the database's certificate must chain to",
            ],
        ),
        (
            "verify-full by default",
            url("postgres://m@db/db"),
            vec![
                "broker.toml:7:2: store: sslmode=verify-full needs ca_file: the CA certificate (PEM) the database's certificate must chain to",
            ],
        ),
        (
            "ca_file without TLS",
            format!(
                "{}ca_file = \"ca.pem\"\n",
                url("postgres://m@localhost/db?sslmode=disable")
            ),
            vec!["broker.toml:7:2: store: ca_file is used only with sslmode=verify-full"],
        ),
        (
            "missing url, both passwords",
            format!("{STORE_BASE}password_file = \"p\"\npassword_env = \"P\"\n"),
            vec![
                "broker.toml:7:2: store: missing required key \"url\"",
                "broker.toml:7:2: store: give password_file or password_env, not both",
            ],
        ),
        (
            "bounds and names",
            format!(
                "{}pool = 0\nconnect_timeout = \"5m\"\nstale_after = \"1s\"\npassword_env = \"1X\"\nurll = 3\n",
                url("postgres://m@127.0.0.1/db?sslmode=disable")
            ),
            vec![
                "broker.toml:9:8: store.pool: expected an integer from 1 to 32",
                "broker.toml:10:19: store.connect_timeout: 300 s is outside the allowed range, 1 to 60 s",
                "broker.toml:11:15: store.stale_after: 1 s is outside the allowed range, 2 to 600 s",
                "broker.toml:12:16: store.password_env: must be an environment variable name (letters, digits and '_')",
                "broker.toml:13:1: store: unknown key \"urll\"; did you mean \"url\"?",
            ],
        ),
        (
            "resync not below stale_after",
            format!(
                "{}stale_after = \"10s\"\nresync = \"10s\"\n",
                url("postgres://m@127.0.0.1/db?sslmode=disable")
            ),
            vec![
                "broker.toml:7:2: store: resync (10 s) must be less than stale_after (10 s): a quiet database would look stale between two re-reads",
            ],
        ),
        (
            "bad vote signers",
            format!(
                "{}[store.vote_signers]\nconsole = \"abc\"\n\"bad name\" = \"{SIGNER}\"\nother = 5\n",
                url("postgres://m@127.0.0.1/db?sslmode=disable")
            ),
            vec![
                "broker.toml:10:11: store.vote_signers.console: a public key is 64 hex digits",
                "broker.toml:11:1: store.vote_signers.bad name: a signer's name must be letters, digits, '_', '-' or '.'",
                "broker.toml:12:9: store.vote_signers.other: expected a public key (the 64 hex digits of signing.pub), found integer",
            ],
        ),
    ];
    for (what, src, want) in cases {
        let got = parse_str(&src).unwrap_err();
        assert_eq!(got, want, "{what}");
    }
    let got = parse_str(&url("postgres://m:hunter2@127.0.0.1/db")).unwrap_err();
    assert!(!got.concat().contains("hunter2"), "{got:?}");
}

const CONSOLE_BASE: &str = "[broker]\nstate_dir = \"s\"\nsocket = \"s\"\nprofiles_dir = \"p\"\n[roles.r]\narn = \"arn:aws:iam::123456789012:role/r\"\n[approvers.alice]\noidc_subject = \"00u1\"\n[approvers.bob]\nemail = \"Bob@Example.COM\"\n";

#[test]
fn the_console_table() {
    let c = parse_str(&format!(
        "{CONSOLE_BASE}[console]\nlisten = \"127.0.0.1:8443\"\npublic_url = \"https://approve.example.com\"\nsession_lifetime = \"10m\"\n[console.oidc]\nissuer = \"https://login.example.com\"\nclient_id = \"mandate\"\nclient_secret_file = \"oidc.secret\"\n"
    ))
    .unwrap();
    let k = c.console.unwrap();
    assert_eq!(k.listen.to_string(), "127.0.0.1:8443");
    assert_eq!(
        k.request_link("abc"),
        "https://approve.example.com/requests/abc"
    );
    assert_eq!(
        k.redirect_url(),
        "https://approve.example.com/auth/callback"
    );
    assert_eq!(k.rp_id(), "approve.example.com");
    assert_eq!(k.session_lifetime, Duration::from_secs(600));
    assert!(!k.oidc_only_operator_votes);
    assert_eq!(
        k.oidc.client_secret_file.as_deref(),
        Some(Path::new("/etc/m/oidc.secret"))
    );
    assert_eq!(c.approvers["bob"].email.as_deref(), Some("bob@example.com"));
    assert_eq!(c.approvers["alice"].oidc_subject.as_deref(), Some("00u1"));
}

#[test]
fn bad_console_tables() {
    let oidc = "[console.oidc]\nissuer = \"https://login.example.com\"\nclient_id = \"mandate\"\n";
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "required keys",
            format!("{CONSOLE_BASE}[console]\nsession_lifetime = \"5m\"\n"),
            vec![
                "broker.toml:11:2: console: missing required key \"listen\"",
                "broker.toml:11:2: console: missing required key \"public_url\"",
                "broker.toml:11:2: console: missing required key \"oidc\"",
            ],
        ),
        (
            "plain http off loopback, an IP host, not loopback without TLS",
            format!(
                "{CONSOLE_BASE}[console]\nlisten = \"0.0.0.0:8443\"\npublic_url = \"http://approve.example.com\"\n{oidc}"
            ),
            vec![
                "broker.toml:11:2: console: listen = \"0.0.0.0:8443\" is not loopback: serve TLS yourself (tls_cert and tls_key) or listen on 127.0.0.1 behind a TLS proxy",
                "broker.toml:13:14: console.public_url: public_url must be https (plain http only for localhost)",
            ],
        ),
        (
            "an IP address cannot carry passkeys; a path is not an origin",
            format!(
                "{CONSOLE_BASE}[console]\nlisten = \"127.0.0.1:1\"\npublic_url = \"http://127.0.0.1:8443\"\n[console.oidc]\nissuer = \"http://idp.example.com\"\nclient_id = \"\"\n"
            ),
            vec![
                "broker.toml:13:14: console.public_url: public_url must name a host, not an IP address: passkeys are bound to a domain (use http://localhost:PORT for a local console)",
                "broker.toml:15:10: console.oidc.issuer: issuer must be https (plain http only for localhost)",
                "broker.toml:16:13: console.oidc.client_id: must be 1 to 256 printable characters",
            ],
        ),
        (
            "unknown keys and half of TLS",
            format!(
                "{CONSOLE_BASE}[console]\nlisten = \"127.0.0.1:1\"\npublic_url = \"https://a.example.com/x\"\ntls_cert = \"c.pem\"\nlifetime = \"1m\"\n[console.oidc]\nissuer = \"https://login.example.com\"\nclient = \"m\"\n"
            ),
            vec![
                "broker.toml:11:2: console: give both tls_cert and tls_key, or neither (then a TLS proxy in front)",
                "broker.toml:13:14: console.public_url: public_url must be an origin like \"https://approve.example.com\", without a path",
                "broker.toml:15:1: console: unknown key \"lifetime\" (expected one of: listen, public_url, tls_cert, tls_key, session_lifetime, oidc_only_operator_votes, oidc)",
                "broker.toml:16:1: console.oidc: missing required key \"client_id\"",
                "broker.toml:18:1: console.oidc: unknown key \"client\" (expected one of: issuer, client_id, client_secret_file, ca_file)",
            ],
        ),
        (
            "one sign-in, two approvers",
            format!(
                "{CONSOLE_BASE}[approvers.carol]\nemail = \"bob@example.com\"\n[approvers.dave]\noidc_subject = \"00u1\"\n"
            ),
            vec![
                "broker.toml: approvers.carol: email \"bob@example.com\" is also approver bob's: one sign-in must name one approver",
                "broker.toml: approvers.dave: oidc_subject \"00u1\" is also approver alice's: one sign-in must name one approver",
            ],
        ),
        (
            "bad identities",
            "[broker]\nstate_dir = \"s\"\nsocket = \"s\"\nprofiles_dir = \"p\"\n[roles.r]\narn = \"arn:aws:iam::123456789012:role/r\"\n[approvers.x]\nemail = \"not an email\"\noidc_subject = \"\"\nsubject = \"y\"\n".to_owned(),
            vec![
                "broker.toml:8:9: approvers.x.email: expected an email address like \"alice@example.com\"",
                "broker.toml:9:16: approvers.x.oidc_subject: must be 1 to 255 printable characters",
                "broker.toml:10:1: approvers.x: unknown key \"subject\" (expected one of: uids, oidc_subject, email)",
            ],
        ),
    ];
    for (what, text, want) in cases {
        let got = parse_str(&text).unwrap_err();
        let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
        assert_eq!(got, want, "{what}");
    }
}
