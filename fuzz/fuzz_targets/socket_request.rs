//! The socket request decoder.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = mandate::protocol::Request::parse(data) {
        // What parses re-serialises and parses to the same request.
        let bytes = serde_json::to_vec(&req).unwrap();
        assert_eq!(mandate::protocol::Request::parse(&bytes).unwrap(), req);
    }
});
