//! Profile benchmarks; prints a table. Run with `cargo bench --bench profiles`.
//!
//! * parse + compile of every example profile, in process;
//! * the first use of the embedded IAM action catalog (it is parsed lazily, once per process);
//! * `mandate profiles check DIR` (the real binary, a fresh process each run) on 1,000 generated
//!   profiles, end to end: process start, catalog load, reading, parsing, compiling, printing.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use mandate::{catalog, policy, profile};

fn stats(mut v: Vec<Duration>) -> (Duration, Duration, Duration) {
    v.sort();
    let p = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    (p(0.5), p(0.99), v[v.len() - 1])
}

fn fmt(d: Duration) -> String {
    if d < Duration::from_millis(1) {
        format!("{:.1} µs", d.as_secs_f64() * 1e6)
    } else {
        format!("{:.2} ms", d.as_secs_f64() * 1e3)
    }
}

/// 1,000 profiles: the four examples, each varied 250 times (bucket, prefix, function and stack
/// names, tags), so no two files are alike.
fn generate(dir: &Path, root: &Path) {
    let examples = ["readonly", "s3-data", "deploy-staging", "breakglass-admin"];
    for i in 0..250 {
        for name in examples {
            let src = std::fs::read_to_string(root.join("profiles").join(format!("{name}.toml")))
                .unwrap();
            let varied = src
                .replace("team-data", &format!("team-data-{i}"))
                .replace("staging-*", &format!("staging-{i}-*"))
                .replace("access = \"", &format!("variant = \"{i}\"\naccess = \""))
                .replace("team = \"data\"", &format!("team = \"data-{i}\""));
            std::fs::write(dir.join(format!("{name}-{i:03}.toml")), varied).unwrap();
        }
    }
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));

    let t = Instant::now();
    let n = catalog::catalog().actions().len();
    let catalog_load = t.elapsed();

    let sources: Vec<(String, Vec<u8>)> = std::fs::read_dir(root.join("profiles"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .map(|p| {
            (
                p.file_stem().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    let mut per_profile = Vec::new();
    let mut all = Vec::new();
    for round in 0..200 {
        let start = Instant::now();
        for (name, bytes) in &sources {
            let t = Instant::now();
            let p = profile::parse(name, name, bytes).unwrap();
            let c = policy::compile(&p).unwrap();
            std::hint::black_box(c.policy.sha256());
            if round > 0 {
                per_profile.push(t.elapsed());
            }
        }
        if round > 0 {
            all.push(start.elapsed());
        }
    }

    let dir = tempfile::tempdir().unwrap();
    generate(dir.path(), root);
    let bin = env!("CARGO_BIN_EXE_mandate");
    let mut check = Vec::new();
    for _ in 0..7 {
        let t = Instant::now();
        let out = Command::new(bin)
            .args(["profiles", "check", "-q"])
            .arg(dir.path())
            .output()
            .unwrap();
        check.push(t.elapsed());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    println!("| measurement | median | p99 | max |");
    println!("|---|---|---|---|");
    println!(
        "| first use of the catalog ({n} actions), once per process | {} | | |",
        fmt(catalog_load)
    );
    let (m, p, x) = stats(per_profile);
    println!(
        "| parse + compile one example profile (warm) | {} | {} | {} |",
        fmt(m),
        fmt(p),
        fmt(x)
    );
    let (m, p, x) = stats(all);
    println!(
        "| parse + compile all {} example profiles (warm) | {} | {} | {} |",
        sources.len(),
        fmt(m),
        fmt(p),
        fmt(x)
    );
    let (m, p, x) = stats(check);
    println!(
        "| `mandate profiles check` on 1,000 generated profiles (7 runs, new process each) | {} | {} | {} |",
        fmt(m),
        fmt(p),
        fmt(x)
    );
}
