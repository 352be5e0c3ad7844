//! The store's contract (`contract.rs`), on the SQLite backend, and what only SQLite does.

use super::{SqliteStore, Store};
use crate::approval::tests::{NOW, operator_req};

#[test]
fn the_sqlite_store_keeps_the_contract() {
    super::contract::all(&mut || Box::new(SqliteStore::in_memory()));
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
