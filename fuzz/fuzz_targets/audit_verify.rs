//! The audit-log reader and verifier: arbitrary segments and checkpoint files never panic, and a
//! log reported intact really chains.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mandate::audit::{checkpoint, verify};

fuzz_target!(|data: &[u8]| {
    // Split the input: segment bytes, 0xFF, checkpoint bytes.
    let (seg, cps) = match data.iter().position(|&b| b == 0xff) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let key = ed25519_dalek::SigningKey::from_bytes(&[5; 32]).verifying_key();
    let (checkpoints, bad) = checkpoint::read(cps, &key);
    let report = verify::verify(&[("audit-000001.jsonl".to_owned(), seg.to_vec())], &checkpoints, bad);
    if report.intact() {
        let mut link = verify::Link::genesis();
        for line in seg.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            link = verify::check_line(line, &link).expect("intact logs chain").0;
        }
        assert_eq!(link.seq, report.last_seq);
    }
});
