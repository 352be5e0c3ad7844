//! The store's contract, on the SQLite backend.

use super::{SqliteStore, Store};
use crate::approval::Status;
use crate::approval::tests::{AGENT_UIDS, NOW, TTL, USE, operator_req, voter};

#[test]
fn the_store_swaps_only_the_version_it_read() {
    let s = SqliteStore::in_memory();
    let r = operator_req();
    s.insert(&r).unwrap();
    assert!(s.insert(&r).is_err(), "ids are unique");
    assert_eq!(s.get(&r.id).unwrap().unwrap(), r);
    assert_eq!(s.count_pending("claude", NOW).unwrap(), 1);
    assert_eq!(s.count_pending("claude", NOW + TTL).unwrap(), 0);
    assert_eq!(s.by_digest("claude", &r.digest).unwrap(), vec![r.clone()]);
    let (a, _) = r
        .vote(&voter("alice", &[1000]), AGENT_UIDS, true, None, NOW, USE)
        .unwrap();
    assert!(s.replace(r.version, &a).unwrap());
    // A second writer that read the old version loses.
    let (b, _) = r
        .vote(&voter("alice", &[1000]), AGENT_UIDS, false, None, NOW, USE)
        .unwrap();
    assert!(!s.replace(r.version, &b).unwrap());
    assert_eq!(s.get(&r.id).unwrap().unwrap().status(NOW), Status::Approved);
    assert_eq!(s.list(0, 10).unwrap().len(), 1);
    // Old requests are forgotten (the audit log keeps them); newer ones are kept.
    assert_eq!(s.prune(NOW).unwrap(), 0);
    assert_eq!(s.prune(NOW + 1).unwrap(), 1);
    assert_eq!(s.get(&r.id).unwrap(), None);
}

#[test]
fn the_store_file_survives_reopening_and_is_private() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let r = operator_req();
    {
        let s = SqliteStore::open(&path).unwrap();
        s.insert(&r).unwrap();
        s.put_trip(&crate::revoke::Trip {
            agent: "claude".into(),
            at: NOW,
            reason: "10 denials".into(),
        })
        .unwrap();
        s.set_pause(Some(&crate::revoke::Pause {
            at: NOW,
            by: "alice".into(),
            reason: None,
        }))
        .unwrap();
    }
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let s = SqliteStore::open(&path).unwrap();
    assert_eq!(s.get(&r.id).unwrap().unwrap(), r);
    assert_eq!(s.trips().unwrap().len(), 1);
    assert!(s.delete_trip("claude").unwrap());
    assert!(!s.delete_trip("claude").unwrap());
    assert_eq!(s.pause().unwrap().unwrap().by, "alice");
    s.set_pause(None).unwrap();
    assert_eq!(s.pause().unwrap(), None);
}
