//! Test harness: real peers on free loopback ports (moto as STS/IAM, a recording proxy, the
//! real `mandate` daemon) that clean up after themselves.
#![allow(dead_code)]

pub mod console;
pub mod postgres;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const MANDATE: &str = env!("CARGO_BIN_EXE_mandate");
/// The full program, which `mandate` runs (from its own directory) for all but credential-process.
pub const MANDATE_BROKER: &str = env!("CARGO_BIN_EXE_mandate-broker");
pub const ROLE_ARN: &str = "arn:aws:iam::123456789012:role/agent-role";

/// Copies both binaries into `dir/bin` (mode 0755, so that other uids can run them) and
/// returns the path of `mandate` there.
pub fn install_binaries(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    for (from, name) in [(MANDATE, "mandate"), (MANDATE_BROKER, "mandate-broker")] {
        std::fs::copy(from, bin.join(name)).unwrap();
        std::fs::set_permissions(bin.join(name), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    bin.join("mandate")
}

pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A tool from the project's pinned Python environment (.venv, made by scripts/test).
pub fn venv(tool: &str) -> PathBuf {
    let p = root().join(".venv/bin").join(tool);
    assert!(
        p.exists(),
        "{} is missing: run ./scripts/test (or python3 -m venv .venv && .venv/bin/pip install -r tests/requirements.txt)",
        p.display()
    );
    p
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A minimal HTTP/1.0 exchange (no client library needed for moto's JSON API).
pub fn http(port: u16, method: &str, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.").then(|| body.to_owned())
}

/// Polls `f` every 50 ms until it holds; panics after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Kills (and reaps) a child on drop.
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub struct Moto {
    pub port: u16,
    child: Guard,
}

impl Moto {
    pub fn start() -> Moto {
        let port = free_port();
        let child = Command::new(venv("moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server");
        let m = Moto {
            port,
            child: Guard(child),
        };
        wait_until("moto", Duration::from_secs(30), || {
            http(port, "GET", "/moto-api/").is_some()
        });
        m.seed_role();
        m
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn seed_role(&self) {
        let trust = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::123456789012:root"},"Action":["sts:AssumeRole","sts:TagSession","sts:SetSourceIdentity"]}]}"#;
        let out = aws_cli()
            .args([
                "--endpoint-url",
                &self.endpoint(),
                "iam",
                "create-role",
                "--role-name",
                "agent-role",
            ])
            .args(["--assume-role-policy-document", trust])
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The sessions moto recorded (`sts.AssumedRole` of /moto-api/data.json).
    pub fn assumed_roles(&self) -> Vec<serde_json::Value> {
        let body = http(self.port, "GET", "/moto-api/data.json").expect("moto data");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["sts"]["AssumedRole"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    pub fn stop(self) {
        drop(self.child);
    }
}

/// `mandate --config CONFIG` with a clean environment, ready for more arguments.
pub fn mandate_at(config: &Path) -> Command {
    let mut c = Command::new(MANDATE);
    clean_env(&mut c);
    c.arg("--config").arg(config);
    c
}

/// Runs `mandate serve` with test base credentials until it gives up; (exit code, stderr).
pub fn serve_once(config: &Path) -> (Option<i32>, String) {
    let out = mandate_at(config)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .arg("serve")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The AWS CLI from .venv with a clean environment (no credentials of the test runner's).
pub fn aws_cli() -> Command {
    let mut c = Command::new(venv("aws"));
    clean_env(&mut c);
    c
}

pub fn python() -> Command {
    let mut c = Command::new(venv("python"));
    clean_env(&mut c);
    c
}

pub fn clean_env(c: &mut Command) {
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", "/nonexistent")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null");
}

/// The recording, fault-injecting proxy (tests/harness/recording_proxy.py).
pub struct Proxy {
    pub port: u16,
    pub log: PathBuf,
    pub faults: PathBuf,
    child: Guard,
}

impl Proxy {
    pub fn start(dir: &Path, upstream: u16) -> Proxy {
        Self::start_with(dir, upstream, None)
    }

    /// With `canaries`, every secret STS returns is swapped for a unique canary written there.
    pub fn start_with(dir: &Path, upstream: u16, canaries: Option<&Path>) -> Proxy {
        let port = free_port();
        let log = dir.join("assume-role.jsonl");
        let faults = dir.join("faults.json");
        let child = Command::new(venv("python"))
            .arg(root().join("tests/harness/recording_proxy.py"))
            .args([port.to_string(), upstream.to_string()])
            .args([&log, &faults])
            .args(canaries)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let p = Proxy {
            port,
            log,
            faults,
            child: Guard(child),
        };
        wait_until("proxy", Duration::from_secs(10), || {
            http(port, "GET", "/moto-api/").is_some()
        });
        p
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Decoded form parameters of every AssumeRole that reached the proxy.
    pub fn assume_roles(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    pub fn inject(&self, fault: serde_json::Value) {
        std::fs::write(&self.faults, fault.to_string()).unwrap();
    }
}

pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    child: Option<Guard>,
    pub stderr: PathBuf,
}

/// A broker config for tests: the example profiles, every role at the seeded role, agent
/// `claude` for this uid bound to readonly and s3-data.
pub fn config_text(endpoint: &str, extra: &str) -> String {
    config_with_profiles(endpoint, &root().join("profiles"), extra)
}

pub fn config_with_profiles(endpoint: &str, profiles: &Path, extra: &str) -> String {
    let uid = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .unwrap();
    format!(
        r#"[broker]
state_dir = "state"
socket = "run/mandate.sock"
profiles_dir = "{}"
endpoint_url = "{endpoint}"
sts_timeout = "2s"

[roles.sandbox]
arn = "{ROLE_ARN}"
max_session = "1h"
[roles.deployer]
arn = "{ROLE_ARN}"
[roles.admin]
arn = "{ROLE_ARN}"

[agents.claude]
profiles = ["readonly", "s3-data", "deploy-staging"]
uids = [{uid}]
operator = "human"

[approvers.human]
uids = [{uid}]
{extra}"#,
        profiles.display()
    )
}

impl Daemon {
    pub fn start(config: &str) -> Daemon {
        Self::start_with_env(
            config,
            &[
                ("AWS_ACCESS_KEY_ID", "testing"),
                ("AWS_SECRET_ACCESS_KEY", "testing"),
            ],
        )
    }

    pub fn start_with_env(config: &str, env: &[(&str, &str)]) -> Daemon {
        Self::start_wrapped(config, env, None)
    }

    /// Starts the daemon, optionally through a wrapper shell snippet run by `bash -c` that ends
    /// in `exec "$@"` (to set resource limits, say).
    pub fn start_wrapped(config: &str, env: &[(&str, &str)], wrapper: Option<&str>) -> Daemon {
        Self::start_in(tempfile::tempdir().unwrap(), config, env, wrapper)
    }

    /// Starts the daemon in `dir` (which may already hold a state directory from `mandate init`).
    pub fn start_in(
        dir: tempfile::TempDir,
        config: &str,
        env: &[(&str, &str)],
        wrapper: Option<&str>,
    ) -> Daemon {
        let path = dir.path().join("broker.toml");
        std::fs::write(&path, config).unwrap();
        let stderr = dir.path().join("daemon.log");
        // `mandate init` prepares the state directory, audit directory and signing key.
        let mut init = Command::new(MANDATE);
        clean_env(&mut init);
        let out = init
            .arg("--config")
            .arg(&path)
            .arg("init")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mandate init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut cmd = match wrapper {
            Some(w) => {
                let mut c = Command::new("bash");
                c.args(["-c", w, "wrapper", MANDATE]);
                c
            }
            None => Command::new(MANDATE),
        };
        clean_env(&mut cmd);
        cmd.envs(env.iter().copied());
        let child = cmd
            .arg("--config")
            .arg(&path)
            .arg("serve")
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let mut d = Daemon {
            dir,
            config: path,
            child: Some(Guard(child)),
            stderr,
        };
        let socket = d.dir.path().join("run/mandate.sock");
        let start = Instant::now();
        while !socket.exists() {
            if let Some(Ok(Some(status))) = d.child.as_mut().map(|c| c.0.try_wait()) {
                panic!("mandate serve exited with {status}:\n{}", d.log());
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "daemon did not start:\n{}",
                d.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|g| g.0.id())
    }

    /// SIGKILL, no shutdown.
    pub fn kill9(&mut self) {
        if let Some(mut g) = self.child.take() {
            let _ = g.0.kill();
            let _ = g.0.wait();
        }
    }

    /// Starts a new daemon process on the same directory and config (after a crash, say).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the daemon first");
        let _ = std::fs::remove_file(self.socket());
        let mut cmd = Command::new(MANDATE);
        clean_env(&mut cmd);
        cmd.envs([
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
        ]);
        let child = cmd
            .arg("--config")
            .arg(&self.config)
            .arg("serve")
            .stderr(
                std::fs::OpenOptions::new()
                    .append(true)
                    .open(&self.stderr)
                    .unwrap(),
            )
            .spawn()
            .unwrap();
        self.child = Some(Guard(child));
        let start = Instant::now();
        while !self.socket().exists() {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.0.try_wait()) {
                panic!("mandate serve exited with {status}:\n{}", self.log());
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "daemon did not restart:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Bytes in the audit log's segments.
    pub fn audit_bytes(&self) -> u64 {
        std::fs::read_dir(self.dir.path().join("state/audit"))
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("audit-"))
            .map(|e| e.metadata().unwrap().len())
            .sum()
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("run/mandate.sock")
    }

    /// `mandate --config … ARGS` as a client.
    pub fn mandate(&self, args: &[&str]) -> Output {
        mandate_at(&self.config).args(args).output().unwrap()
    }

    pub fn audit(&self) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        for n in 1.. {
            let p = self
                .dir
                .path()
                .join(format!("state/audit/audit-{n:06}.jsonl"));
            let Ok(text) = std::fs::read_to_string(p) else {
                break;
            };
            out.extend(
                text.lines()
                    .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()),
            );
        }
        out
    }

    /// An AWS config file whose profile `agent` uses credential_process for `profile`.
    pub fn aws_config(&self, profile: &str) -> PathBuf {
        let p = self.dir.path().join(format!("aws-config-{profile}"));
        std::fs::write(
            &p,
            format!(
                "[profile agent]\ncredential_process = {MANDATE} --config {} credential-process {profile}\nregion = us-east-1\n",
                self.config.display()
            ),
        )
        .unwrap();
        p
    }

    /// SIGTERM and wait (graceful shutdown).
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut g = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &g.0.id().to_string()])
            .status();
        g.0.wait().ok()
    }
}

/// `n` daemons that will share one store (team mode). Each state directory and signing key is
/// prepared first (`mandate init`), so that every config can name every daemon's public key:
/// `config` gets the `daemonI = "KEY"` lines for `[store.vote_signers]` and returns the
/// broker.toml they all run.
pub fn daemons_sharing(endpoint: &str, n: usize, config: impl Fn(&str) -> String) -> Vec<Daemon> {
    let mut dirs = Vec::new();
    let mut signers = String::new();
    for i in 0..n {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broker.toml");
        std::fs::write(&path, config_text(endpoint, "")).unwrap();
        let out = mandate_at(&path).arg("init").output().unwrap();
        assert!(
            out.status.success(),
            "init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let key = std::fs::read_to_string(dir.path().join("state/signing.pub")).unwrap();
        signers.push_str(&format!("daemon{i} = \"{}\"\n", key.trim()));
        dirs.push(dir);
    }
    let config = config(&signers);
    dirs.into_iter()
        .map(|dir| {
            Daemon::start_in(
                dir,
                &config,
                &[
                    ("AWS_ACCESS_KEY_ID", "testing"),
                    ("AWS_SECRET_ACCESS_KEY", "testing"),
                ],
                None,
            )
        })
        .collect()
}

/// Evaluates requests of an assumed-role session of `ROLE_ARN` whose role has a permissive policy
/// (Allow `*` on `*`) plus `role_policies` (e.g. the `mandate-revocations` inline policy) with the
/// independent IAM evaluator `@cloud-copilot/iam-simulate` (`tests/iam-sim/revocation.mjs`).
///
/// Each case is `{"name", "action", "resource" (a concrete ARN), "context": {KEY: VALUE}}`; the
/// context keys (`aws:SourceIdentity`, `aws:TokenIssueTime`, `aws:PrincipalTag/...`) are passed to
/// the simulator verbatim. Returns name → `Allowed` | `ExplicitlyDenied` | `ImplicitlyDenied`.
/// Panics when a case cannot be evaluated, including when the simulator drops a context key.
pub fn iam_sim_revocation(
    role_policies: &[serde_json::Value],
    cases: &[serde_json::Value],
) -> std::collections::BTreeMap<String, String> {
    let modules = root().join("tests/iam-sim/node_modules/@cloud-copilot/iam-simulate");
    assert!(
        modules.exists(),
        "{} is missing: run `npm ci --prefix tests/iam-sim` (the test-only IAM evaluator)",
        modules.display()
    );
    let input = serde_json::json!({ "role_policies": role_policies, "cases": cases });
    let mut child = Command::new("node")
        .arg("tests/iam-sim/revocation.mjs")
        .current_dir(root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run node (needed for tests/iam-sim): {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .expect("write the cases to revocation.mjs");
    let out = child.wait_with_output().expect("wait for revocation.mjs");
    assert!(
        out.status.success(),
        "node tests/iam-sim/revocation.mjs failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let results: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "revocation.mjs printed no JSON array: {e}\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    assert_eq!(
        results.len(),
        cases.len(),
        "one result per case: {results:?}"
    );
    let errors: Vec<String> = results
        .iter()
        .filter(|r| r["result"] == "Error")
        .map(|r| format!("{}: {}", r["name"], r["errors"]))
        .collect();
    assert!(
        errors.is_empty(),
        "the IAM simulator could not evaluate some cases:\n{}",
        errors.join("\n")
    );
    let mut map = std::collections::BTreeMap::new();
    for r in results {
        let name = r["name"].as_str().expect("case name").to_owned();
        let result = r["result"].as_str().expect("result").to_owned();
        assert!(
            map.insert(name.clone(), result).is_none(),
            "duplicate case name {name}"
        );
    }
    map
}

/// Runs `command` (a `mandate mcp`) under the official Python MCP SDK's stdio client
/// (tests/mcp_client.py) with `steps`; the driver's JSON report and the server's stderr.
pub fn mcp_session(
    dir: &Path,
    name: &str,
    steps: &serde_json::Value,
    command: &[String],
) -> (serde_json::Value, String) {
    let steps_file = dir.join(format!("{name}-steps.json"));
    std::fs::write(&steps_file, serde_json::to_vec(steps).unwrap()).unwrap();
    let errlog = dir.join(format!("{name}-stderr.txt"));
    let out = python()
        .arg(root().join("tests/mcp_client.py"))
        .arg(&steps_file)
        .arg(&errlog)
        .arg("--")
        .args(command)
        .output()
        .unwrap();
    let stderr = std::fs::read_to_string(&errlog).unwrap_or_default();
    assert!(
        out.status.success(),
        "mcp_client.py failed: {}\nserver stderr: {stderr}",
        String::from_utf8_lossy(&out.stderr)
    );
    (serde_json::from_slice(&out.stdout).unwrap(), stderr)
}
