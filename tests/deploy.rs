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

    // The sidecar's broker config is valid for mandate.
    let text = std::fs::read(deploy("devcontainer/broker.toml")).unwrap();
    let cfg = mandate::config::parse(
        "broker.toml",
        &text,
        Path::new("/etc/mandate"),
        Path::new("/etc/mandate/broker.toml"),
    )
    .unwrap_or_else(|d| panic!("{d:?}"));
    assert_eq!(cfg.http.unwrap().to_string(), "127.0.0.1:9911");
    assert_eq!(
        cfg.agents["agent"]
            .default_profile
            .as_ref()
            .unwrap()
            .as_str(),
        "readonly"
    );
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
