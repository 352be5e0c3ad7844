//! The library's rooms and who may import whom (docs/architecture.md), checked from the source.
//!
//! Every top-level module has a layer; a module may use only modules of a lower layer, so
//! there is no import cycle and lower layers (validation, types, OS helpers) never reach a
//! transport or the broker. A new module must be given a layer here, and in the document.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Layer of each top-level module of `src/lib.rs`: lower layers know nothing of higher ones.
const LAYERS: &[(&str, u8)] = &[
    // 0: leaves: secrets, messages, time, the OS, the embedded IAM catalog.
    ("secret", 0),
    ("diag", 0),
    ("suggest", 0),
    ("clock", 0),
    ("os", 0),
    ("exit", 0),
    ("catalog", 0),
    ("toml_walk", 1),
    // 2: the pure core: profiles, the policy compiler, approval rules, revocations, the audit
    // log's format and verifier.
    ("profile", 2),
    ("policy", 3),
    ("approval", 4),
    ("revoke", 4),
    ("audit", 4),
    // 5: the edges the broker sits on: durable state, AWS, the wire format, config, notify.
    ("store", 5),
    ("aws", 5),
    ("protocol", 5),
    ("config", 5),
    ("notify", 6),
    // 7: the broker: one request's lifecycle.
    ("broker", 7),
    // 8: the transports and the client.
    ("transport", 8),
    ("client", 8),
    // 9: the MCP server, an agent-side transport built on the client.
    ("mcp", 9),
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The `crate::NAME` references of one file's non-test code (comments and doc links skipped:
/// they do not make an import).
fn references(text: &str) -> BTreeSet<String> {
    let code = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    let mut out = BTreeSet::new();
    for line in code.lines() {
        let line = line.trim_start();
        if line.starts_with("//") {
            continue;
        }
        let mut rest = line;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

#[test]
fn every_module_imports_only_lower_layers() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let layer: BTreeMap<&str, u8> = LAYERS.iter().copied().collect();
    let lib = std::fs::read_to_string(root.join("lib.rs")).unwrap();
    let declared: BTreeSet<String> = lib
        .lines()
        .filter_map(|l| l.strip_prefix("pub mod "))
        .map(|l| l.trim_end_matches(';').to_owned())
        .collect();
    for m in &declared {
        assert!(
            layer.contains_key(m.as_str()),
            "module {m} has no layer: add it to LAYERS and to docs/architecture.md"
        );
    }
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let mut bad = Vec::new();
    let mut edges = 0;
    for f in files {
        let rel = f.strip_prefix(&root).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let top = top.trim_end_matches(".rs");
        // The binary's files (main.rs, cli/) use the library from outside; test modules may
        // reach anything.
        if !declared.contains(top)
            || rel
                .components()
                .any(|c| c.as_os_str() == "tests" || c.as_os_str() == "tests.rs")
        {
            continue;
        }
        let own = layer[top];
        for r in references(&std::fs::read_to_string(&f).unwrap()) {
            if r == top {
                continue;
            }
            edges += 1;
            match layer.get(r.as_str()) {
                Some(&l) if l < own => {}
                Some(&l) => bad.push(format!(
                    "{} (layer {own}) uses crate::{r} (layer {l})",
                    rel.display()
                )),
                None => bad.push(format!("{} uses unknown crate::{r}", rel.display())),
            }
        }
    }
    assert!(edges > 30, "the scan found only {edges} references");
    assert!(
        bad.is_empty(),
        "imports against the layers:\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_scan_sees_imports_and_skips_comments() {
    let text = "use crate::broker::Broker;\n/// see [`crate::http::serve`]\nlet x = crate::os::effective_uid();\n#[cfg(test)]\nmod tests {\n    use crate::store::X;\n}\n";
    let got: Vec<String> = references(text).into_iter().collect();
    assert_eq!(got, ["broker", "os"]);
}
