//! Release builds of the `mandate` binary pack relative relocations (DT_RELR, glibc ≥ 2.36):
//! `credential-process` runs before every AWS CLI command and most of its cost is loading the
//! executable; packing cuts the start-up page faults (docs/performance.md).
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let release = std::env::var("PROFILE").is_ok_and(|p| p == "release");
    let linux = std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|o| o == "linux");
    if release && linux {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
