//! broker.toml parser: any bytes give a config or diagnostics, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    if let Err(diags) = mandate::config::parse("broker.toml", data, Path::new("/etc/mandate"), Path::new("/etc/mandate/broker.toml")) {
        assert!(!diags.is_empty());
        for d in diags {
            assert!(!d.to_string().contains('\n') || d.message.contains('\n'));
        }
    }
});
