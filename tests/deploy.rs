//! The deploy kit, checked by whatever can check it here: systemd's own verifier and security
//! scorer for the unit, hadolint for the Dockerfile, a YAML parser (and assertions on what
//! matters) for the compose file and the Kubernetes pod, and mandate's config parser for the
//! sidecar's broker.toml. A Docker engine is not available here (deploy/README.md).

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn deploy(p: &str) -> std::path::PathBuf {
    root().join("deploy").join(p)
}

#[test]
fn the_systemd_unit_verifies_and_is_hardened() {
    let dir = tempfile::tempdir().unwrap();
    // The unit names the installed binary; point it at the one just built so verify can run.
    let unit = std::fs::read_to_string(deploy("systemd/mandate.service"))
        .unwrap()
        .replace("/usr/local/bin/mandate", MANDATE);
    let path = dir.path().join("mandate.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new("systemd-analyze")
        // Exposure is scored 0..100 internally (shown as 0.0..10.0): fail above 2.0.
        .args(["security", "--offline=true", "--threshold=20"])
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "exposure above 2.0:\n{text}");
    assert!(
        text.contains("Overall exposure level for mandate.service: 1."),
        "{text}"
    );
}

#[test]
fn the_dockerfile_passes_hadolint() {
    let out = Command::new(venv("hadolint"))
        .arg(deploy("container/Dockerfile"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let text = std::fs::read_to_string(deploy("container/Dockerfile")).unwrap();
    assert!(
        text.contains("USER 10001:10001"),
        "the image runs as non-root"
    );
    assert_eq!(
        text.matches("\nFROM ").count() + usize::from(text.starts_with("FROM ")),
        2,
        "multi-stage"
    );
}

/// Loads YAML with PyYAML from the pinned .venv and returns it as JSON.
fn yaml(p: &Path) -> serde_json::Value {
    let out = python()
        .args(["-c", "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))"])
        .arg(p)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}: {}",
        p.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn the_compose_sidecar_shares_the_agents_network_and_holds_the_only_base_credentials() {
    let docs = yaml(&deploy("devcontainer/compose.yaml"));
    let c = &docs[0]["services"];
    assert_eq!(c["mandate"]["network_mode"], "service:agent");
    let vols = |svc: &str| {
        c[svc]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert!(
        vols("mandate").iter().any(|v| v.contains(".aws")),
        "base credentials reach the sidecar"
    );
    assert!(
        !vols("agent").iter().any(|v| v.contains(".aws")),
        "and never the agent"
    );
    let env = &c["agent"]["environment"];
    assert_eq!(
        env["AWS_CONTAINER_CREDENTIALS_FULL_URI"],
        "http://127.0.0.1:9911/"
    );
    assert!(env["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"].is_string());
    assert!(env.get("AWS_ACCESS_KEY_ID").is_none() && env.get("AWS_PROFILE").is_none());
    assert_eq!(c["mandate"]["read_only"], true);
    assert_eq!(c["mandate"]["cap_drop"], serde_json::json!(["ALL"]));

    let dc: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(deploy("devcontainer/devcontainer.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(dc["dockerComposeFile"], serde_json::json!(["compose.yaml"]));
    assert_eq!(dc["service"], "agent");

    // The sidecar's broker config is valid for mandate, names every path relative to itself
    // (so the kit means the same files wherever it is mounted) and declares no agent yet
    // (`agent add` does, deploy/README.md).
    let text = std::fs::read(deploy("devcontainer/broker.toml")).unwrap();
    let cfg = mandate::config::parse(
        "broker.toml",
        &text,
        Path::new("/kit"),
        Path::new("/kit/broker.toml"),
    )
    .unwrap_or_else(|d| panic!("{d:?}"));
    assert_eq!(cfg.http.unwrap().to_string(), "127.0.0.1:9911");
    assert_eq!(cfg.state_dir, Path::new("/kit/state"));
    assert_eq!(cfg.socket, Path::new("/kit/run/mandate.sock"));
    assert!(cfg.agents.is_empty());
}

#[test]
fn the_kubernetes_pod_runs_the_sidecar_with_credentials_the_agent_cannot_see() {
    let docs = yaml(&deploy("kubernetes/pod.yaml"));
    let pod = &docs[0];
    assert_eq!(pod["kind"], "Pod");
    assert_eq!(pod["spec"]["automountServiceAccountToken"], false);
    let sidecar = &pod["spec"]["initContainers"][0];
    assert_eq!(sidecar["restartPolicy"], "Always", "a native sidecar");
    assert_eq!(sidecar["securityContext"]["readOnlyRootFilesystem"], true);
    let agent = &pod["spec"]["containers"][0];
    let mounts: Vec<&str> = agent["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(mounts, ["agent-token"], "the agent mounts only its token");
    let env: Vec<&str> = agent["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert!(
        env.contains(&"AWS_CONTAINER_CREDENTIALS_FULL_URI")
            && !env.contains(&"AWS_WEB_IDENTITY_TOKEN_FILE")
    );
}

/// The first ```sh block after `marker` in deploy/README.md: what the user is told to run.
fn readme_block(marker: &str) -> String {
    let text = std::fs::read_to_string(deploy("README.md")).unwrap();
    let at = text
        .find(marker)
        .unwrap_or_else(|| panic!("{marker:?} not in deploy/README.md"));
    let rest = &text[at..];
    let start = rest.find("```sh\n").unwrap() + "```sh\n".len();
    let end = rest[start..].find("```").unwrap();
    rest[start..start + end].to_owned()
}

/// Compose's interpolation of `${NAME}`, `${NAME:-default}` and `${NAME:?message}`.
fn interpolate(s: &str, vars: &[(&str, &str)]) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let end = rest[i..].find('}').unwrap() + i;
        let expr = &rest[i + 2..end];
        let name = expr.split([':', '-', '?']).next().unwrap();
        let value = vars.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
        let default = expr.split_once(":-").map(|(_, d)| d);
        out.push_str(
            value
                .or(default)
                .unwrap_or_else(|| panic!("compose would refuse: {name} unset")),
        );
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// Issue 17 point 1: the dev-container kit as a user runs it. The host-side commands are taken
/// from deploy/README.md and run as written from a clean copy of the kit; then the sidecar's
/// entrypoint and environment from compose.yaml run on the host (the kit has the same paths in
/// the containers by design; there is no Docker engine here), with moto standing in for AWS;
/// then boto3 as the agent, with the agent container's environment; then rotate and remove.
#[test]
fn the_devcontainer_kit_works_as_the_readme_shows() {
    let moto = Moto::start();
    let home = tempfile::tempdir().unwrap();
    let kit = home.path().join(".config/mandate/devcontainer");
    let bin = Path::new(MANDATE).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let host = |script: &str| {
        let mut c = Command::new("bash");
        clean_env(&mut c);
        c.env("HOME", home.path())
            .env("PATH", &path)
            .current_dir(root())
            .args(["-euo", "pipefail", "-c", script])
            .output()
            .unwrap()
    };

    // The host-side commands, exactly as deploy/README.md shows them.
    let setup = readme_block("on the host, from the repository's root:");
    assert!(setup.contains("agent add agent"), "{setup}");
    let out = host(&setup);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = kit.join("secrets/agent-token");
    assert!(
        text.contains(&format!(
            "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE={}\n",
            token.display()
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("ok: {}", kit.join("broker.toml").display())),
        "{text}"
    );

    // compose.yaml, interpolated as compose would with MANDATE_KIT=$kit.
    let uid = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .unwrap()
        .to_string();
    let kit_s = kit.display().to_string();
    let home_s = home.path().display().to_string();
    let workspace = root().display().to_string();
    let vars = [
        ("MANDATE_WORKSPACE", workspace.as_str()),
        ("MANDATE_KIT", kit_s.as_str()),
        ("MANDATE_UID", uid.as_str()),
        ("MANDATE_GID", uid.as_str()),
        ("HOME", home_s.as_str()),
    ];
    // The copy in the kit is what runs (the workspace's copy is the agent's to write).
    let docs = yaml(&kit.join("compose.yaml"));
    assert_eq!(
        std::fs::read(kit.join("compose.yaml")).unwrap(),
        std::fs::read(deploy("devcontainer/compose.yaml")).unwrap()
    );
    let svc = |name: &str| docs[0]["services"][name].clone();
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| interpolate(s.as_str().unwrap(), &vars))
            .collect()
    };
    let env_of = |name: &str| -> Vec<(String, String)> {
        svc(name)["environment"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), interpolate(v.as_str().unwrap(), &vars)))
            .collect()
    };
    // The agent container sees the kit's secrets directory (the token) at the printed path,
    // read-only, and nothing else of the kit; the sidecar mounts the kit at the same path,
    // read-only but for its state, and nothing of the workspace, and is not built from it.
    let secrets = kit.join("secrets").display().to_string();
    let agent_vols = strings(&svc("agent")["volumes"]);
    assert!(
        agent_vols.contains(&format!("{secrets}:{secrets}:ro")),
        "{agent_vols:?}"
    );
    assert!(
        agent_vols.contains(&format!("{workspace}:/workspace:cached")),
        "{agent_vols:?}"
    );
    assert!(
        !agent_vols
            .iter()
            .any(|v| v.starts_with(&kit_s) && !v.starts_with(&secrets)),
        "{agent_vols:?}"
    );
    let side_vols = strings(&svc("mandate")["volumes"]);
    assert!(
        side_vols.contains(&format!("{kit_s}:{kit_s}:ro")),
        "{side_vols:?}"
    );
    assert!(
        side_vols.contains(&format!("{0}/state:{0}/state", kit_s)),
        "{side_vols:?}"
    );
    assert!(
        !side_vols.iter().any(|v| v.starts_with(&workspace)),
        "{side_vols:?}"
    );
    assert!(
        svc("mandate").get("build").is_none(),
        "built from the workspace"
    );
    assert!(svc("mandate")["image"].is_string());
    // The kit is outside the workspace the agent can write.
    assert!(!kit.starts_with(root()));

    // The sidecar: its entrypoint and MANDATE_CONFIG from compose.yaml; moto instead of ~/.aws.
    let entry = strings(&svc("mandate")["entrypoint"]);
    assert_eq!(entry[..2], ["/bin/sh", "-c"]);
    let side_env = env_of("mandate");
    let config = &side_env
        .iter()
        .find(|(k, _)| k == "MANDATE_CONFIG")
        .unwrap()
        .1;
    assert_eq!(config, &kit.join("broker.toml").display().to_string());
    let mut sidecar = Command::new(&entry[0]);
    clean_env(&mut sidecar);
    let log = std::fs::File::create(home.path().join("sidecar.log")).unwrap();
    let sidecar = sidecar
        .env("HOME", home.path())
        .env("PATH", &path)
        .env("MANDATE_CONFIG", config)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_ENDPOINT_URL", moto.endpoint())
        .args(&entry[1..])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let _sidecar = Guard(sidecar);
    let sidecar_log = || std::fs::read_to_string(home.path().join("sidecar.log")).unwrap();
    let started = std::time::Instant::now();
    while std::net::TcpStream::connect("127.0.0.1:9911").is_err() {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "the sidecar did not listen on 127.0.0.1:9911 (is the port taken?):\n{}",
            sidecar_log()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    // The agent: boto3 with the agent container's environment from compose.yaml.
    let agent = || {
        let mut c = python();
        clean_env(&mut c);
        for (k, v) in env_of("agent") {
            c.env(k, v);
        }
        c.env("AWS_ENDPOINT_URL", moto.endpoint()).args([
            "-c",
            "import boto3; print(boto3.client('sts').get_caller_identity()['Arn'])",
        ]);
        c.output().unwrap()
    };
    let out = agent();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        sidecar_log()
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(":assumed-role/agent-role/"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Rotate and remove, as deploy/README.md says, on the host: they act on the kit.
    let old = std::fs::read(&token).unwrap();
    let out = host(
        "mandate --config \"$HOME/.config/mandate/devcontainer/broker.toml\" agent rotate agent",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_ne!(
        std::fs::read(&token).unwrap(),
        old,
        "the kit's token was replaced"
    );
    let started = std::time::Instant::now();
    loop {
        let out = agent();
        if out.status.success() {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "the new token was not accepted: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // Remove the agent as deploy/README.md says (its table and its token), then add it again.
    let cfg = std::fs::read_to_string(kit.join("broker.toml")).unwrap();
    let at = cfg.find("\n[agents.agent]").expect("the agent's table");
    std::fs::write(kit.join("broker.toml"), &cfg[..at + 1]).unwrap();
    std::fs::remove_file(&token).unwrap();
    let add = &setup[setup.find("mandate --config").unwrap()..];
    let add = &add[..add
        .find("\nmandate --config \"$kit/broker.toml\" config check")
        .unwrap()];
    let out = host(&format!("kit=$HOME/.config/mandate/devcontainer\n{add}"));
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(token.exists());
}
