//! Profile parser and compiler: any bytes either fail with diagnostics or compile to a policy
//! that is valid JSON and within the limits it claims.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(profile) = mandate::profile::parse("fuzz.toml", "fuzz", data) else { return };
    if let Ok(c) = mandate::policy::compile(&profile) {
        let v: serde_json::Value = serde_json::from_str(c.policy.as_json()).expect("the policy is JSON");
        assert!(v["Statement"].is_array());
        assert!(c.size.total <= mandate::policy::MAX_POLICY_CHARS);
        let again = mandate::policy::compile(&profile).unwrap();
        assert_eq!(again.policy.as_json(), c.policy.as_json(), "deterministic");
    }
});
