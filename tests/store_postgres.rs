//! The PostgreSQL store against a real server (tests/common/postgres.rs): the contract both
//! backends keep, what must hold across daemons (single use, atomic opening, counts, notices),
//! migrations, passwords and TLS.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::postgres::Postgres;
use mandate::store::contract::{self, NOW, request, session, voted};
use mandate::store::{
    DaemonInfo, Notice, Opened, PgOptions, PgPassword, PgStore, PgTls, RemoteCounts, Store,
    StoreError,
};

fn open(o: &PgOptions, daemon: &str) -> PgStore {
    PgStore::open(o, daemon).unwrap_or_else(|e| panic!("open the store: {e}"))
}

/// The error's message and Debug output, checked never to hold the password.
fn no_password(pg: &Postgres, e: &StoreError) -> String {
    let (text, debug) = (e.to_string(), format!("{e:?}"));
    assert!(
        !text.contains(pg.password()) && !debug.contains(pg.password()),
        "the password leaked: {text} / {debug}"
    );
    text
}

#[test]
fn keeps_the_contract_and_holds_across_daemons() {
    let pg = Postgres::start();
    let mut n = 0;
    contract::all(&mut || {
        n += 1;
        Box::new(open(&pg.create_database(&format!("contract{n}")), "d1"))
    });

    let o = pg.options();
    let a = open(&o, "daemon-a");
    let b = open(&o, "daemon-b");
    let info = a.describe();
    assert_eq!(
        (info.kind, info.location.as_str(), info.shared),
        (
            "postgres",
            format!("127.0.0.1:{}/mandate", pg.port()).as_str(),
            true
        )
    );
    assert!(!format!("{o:?}").contains(pg.password()));

    // A swap another daemon already made loses.
    let r = request(0x10, "claude", "cas");
    a.insert(&r).unwrap();
    assert!(b.replace(r.version, &voted(&r, true)).unwrap());
    assert!(!a.replace(r.version, &voted(&r, false)).unwrap());
    assert_eq!(a.get(&r.id).unwrap(), Some(voted(&r, true)));

    // 100 writers on 4 daemons, all holding the same version: exactly one wins.
    let stores: Vec<Arc<PgStore>> = (0..4)
        .map(|i| Arc::new(open(&o, &format!("racer-{i}"))))
        .collect();
    let r = request(0x11, "claude", "race");
    a.insert(&r).unwrap();
    let wins: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..100)
            .map(|i| {
                let st = stores[i % 4].clone();
                let r = r.clone();
                s.spawn(move || st.replace(r.version, &voted(&r, i % 2 == 0)).unwrap() as usize)
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(wins, 1, "exactly one replace wins");

    // Opening across daemons is atomic: 100 requests with different bindings, at most 5 open.
    let opened: Vec<Opened> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..100u64)
            .map(|i| {
                let st = if i % 2 == 0 { &a } else { &b };
                s.spawn(move || {
                    st.open_pending(&request(0x1000 + i, "gemini", &format!("r{i}")), 5, NOW)
                        .unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let inserted = opened.iter().filter(|o| **o == Opened::Inserted).count();
    assert_eq!(inserted, 5, "{opened:?}");
    assert!(
        opened
            .iter()
            .all(|o| matches!(o, Opened::Inserted | Opened::Full(5)))
    );
    assert_eq!(a.count_pending("gemini", NOW).unwrap(), 5);
    // ... and the same binding from 100 callers is opened once.
    let opened: Vec<Opened> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..100u64)
            .map(|i| {
                let st = if i % 2 == 0 { &a } else { &b };
                s.spawn(move || {
                    st.open_pending(&request(0x2000 + i, "kiro", "same"), 5, NOW)
                        .unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(opened.iter().filter(|o| **o == Opened::Inserted).count(), 1);
    assert_eq!(a.count_pending("kiro", NOW).unwrap(), 1);

    // Sessions: one index for all daemons; each counts only the others'.
    a.put_session(&session("claude", "s1", NOW + 900), NOW)
        .unwrap();
    b.put_session(&session("claude", "s2", NOW + 900), NOW)
        .unwrap();
    b.put_session(&session("codex", "s3", NOW + 5), NOW)
        .unwrap();
    assert_eq!(a.sessions(NOW).unwrap().len(), 3);
    let from_a = a.remote_counts(NOW - 60, NOW + 10).unwrap();
    assert_eq!(from_a.len(), 2, "{from_a:?}");
    assert_eq!(from_a["claude"], RemoteCounts { issued: 1, live: 1 });
    assert_eq!(from_a["codex"], RemoteCounts { issued: 1, live: 0 });
    let from_b = b.remote_counts(NOW - 60, NOW + 10).unwrap();
    assert_eq!(from_b.len(), 1);
    assert_eq!(from_b["claude"], RemoteCounts { issued: 1, live: 1 });
    assert_eq!(
        b.remote_counts(NOW, NOW + 10).unwrap()["claude"],
        RemoteCounts { issued: 0, live: 1 },
        "issued at or before `since` is not counted"
    );

    // Heartbeats.
    let me = |id: &str, seen_at: i64| DaemonInfo {
        id: id.into(),
        host: "host-1".into(),
        version: "0.1.0".into(),
        started_at: NOW - 1000,
        seen_at,
    };
    a.heartbeat(&me("daemon-a", NOW - 100)).unwrap();
    b.heartbeat(&me("daemon-b", NOW - 100)).unwrap();
    a.heartbeat(&me("daemon-a", NOW)).unwrap();
    assert_eq!(b.daemons(NOW - 10).unwrap(), vec![me("daemon-a", NOW)]);
    assert_eq!(
        b.daemons(0).unwrap(),
        vec![me("daemon-a", NOW), me("daemon-b", NOW - 100)]
    );

    // Checkpoints: the first line for a seq stays.
    a.put_checkpoint("daemon-a", 2, "two").unwrap();
    a.put_checkpoint("daemon-a", 1, "one").unwrap();
    b.put_checkpoint("daemon-a", 1, "forged").unwrap();
    b.put_checkpoint("daemon-b", 1, "theirs").unwrap();
    assert_eq!(b.checkpoints("daemon-a").unwrap(), ["one", "two"]);
    assert_eq!(a.checkpoints("daemon-b").unwrap(), ["theirs"]);
    assert!(a.checkpoints("nobody").unwrap().is_empty());
}

/// The next notice, within `within`.
fn next(
    rt: &tokio::runtime::Runtime,
    rx: &mut tokio::sync::mpsc::Receiver<Notice>,
    within: Duration,
) -> Notice {
    rt.block_on(async { tokio::time::timeout(within, rx.recv()).await })
        .unwrap_or_else(|_| panic!("no notice within {within:?}"))
        .expect("the subscription ended")
}

#[test]
fn notices_arrive_and_the_subscription_survives_a_restart() {
    let mut pg = Postgres::start();
    let o = pg.options();
    let me = open(&o, "me");
    let other = open(&o, "other");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut rx = rt
        .block_on(async { me.subscribe() })
        .expect("postgres subscribes");
    let second = Duration::from_secs(1);
    assert_eq!(
        next(&rt, &mut rx, Duration::from_secs(5)),
        Notice::Connected
    );

    other
        .set_pause(Some(&mandate::revoke::Pause {
            at: NOW,
            by: "alice".into(),
            reason: None,
        }))
        .unwrap();
    assert_eq!(next(&rt, &mut rx, second), Notice::Controls);
    let r = request(0x42, "claude", "hear me");
    other.open_pending(&r, 5, NOW).unwrap();
    assert_eq!(
        next(&rt, &mut rx, second),
        Notice::Approval(r.id.as_str().to_owned())
    );
    assert!(other.replace(r.version, &voted(&r, true)).unwrap());
    assert_eq!(
        next(&rt, &mut rx, second),
        Notice::Approval(r.id.as_str().to_owned())
    );
    assert!(!other.replace(r.version, &voted(&r, true)).unwrap());
    other
        .put_session(&session("claude", "s1", NOW + 900), NOW)
        .unwrap();
    assert_eq!(next(&rt, &mut rx, second), Notice::Sessions);
    other
        .put_revocation(&mandate::revoke::Revocation {
            id: "r1".into(),
            scope: mandate::revoke::Scope::All,
            at: NOW,
            by: "alice".into(),
            active: true,
            aws_roles: vec![],
        })
        .unwrap();
    assert_eq!(next(&rt, &mut rx, second), Notice::Controls);
    assert!(other.delete_trip("nobody").is_ok());
    other
        .put_trip(&mandate::revoke::Trip {
            agent: "claude".into(),
            at: NOW,
            reason: "x".into(),
        })
        .unwrap();
    assert_eq!(
        next(&rt, &mut rx, second),
        Notice::Controls,
        "deleting nothing notified nothing"
    );

    // The database goes away: the subscriber hears it, calls fail fast, both come back.
    pg.stop();
    assert!(matches!(
        next(&rt, &mut rx, Duration::from_secs(5)),
        Notice::Lost(_)
    ));
    let t = Instant::now();
    let e = me.pause().unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
    let text = no_password(&pg, &e);
    assert!(
        text.starts_with(&format!(
            "the approval store 127.0.0.1:{}/mandate: ",
            pg.port()
        )),
        "{text}"
    );
    // A few reconnect attempts fail meanwhile: `Lost` was said once, and is not repeated.
    std::thread::sleep(Duration::from_millis(1500));
    pg.start_again();
    assert_eq!(
        next(&rt, &mut rx, Duration::from_secs(10)),
        Notice::Connected
    );
    assert!(me.pause().unwrap().is_some(), "the pool reconnects");
    other.set_pause(None).unwrap();
    assert_eq!(next(&rt, &mut rx, second), Notice::Controls);

    // A subscriber that does not keep up loses notices, never the news that it did: once
    // there is room again, `Connected` (re-read everything) comes first.
    for i in 0..300 {
        other
            .put_trip(&mandate::revoke::Trip {
                agent: format!("a{i}"),
                at: NOW,
                reason: "x".into(),
            })
            .unwrap();
    }
    std::thread::sleep(Duration::from_millis(500));
    let mut queued = 0;
    while rx.try_recv().is_ok() {
        queued += 1;
    }
    assert!((250..=256).contains(&queued), "{queued}");
    other.delete_trip("a0").unwrap();
    assert_eq!(next(&rt, &mut rx, second), Notice::Connected);
    assert_eq!(next(&rt, &mut rx, second), Notice::Controls);

    // Dropping the receiver ends the listener; dropping the store inside a runtime is fine.
    drop(rx);
    rt.block_on(async { drop(me) });
}

#[test]
fn migrations_serialise_and_a_newer_schema_is_refused() {
    let pg = Postgres::start();
    let o = pg.create_database("fresh");
    let opened: Vec<Result<PgStore, StoreError>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4)
            .map(|i| {
                let o = o.clone();
                s.spawn(move || PgStore::open(&o, &format!("d{i}")))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for r in &opened {
        if let Err(e) = r {
            panic!("a concurrent open failed: {e}");
        }
    }
    drop(opened);
    assert_eq!(
        pg.psql("fresh", "SELECT version FROM mandate_schema")
            .trim(),
        mandate::store::postgres::SCHEMA_VERSION.to_string()
    );
    // Reopening changes nothing.
    drop(open(&o, "again"));
    assert_eq!(
        pg.psql("fresh", "SELECT count(*) FROM mandate_schema")
            .trim(),
        "1"
    );

    let newer = mandate::store::postgres::SCHEMA_VERSION + 1;
    pg.psql(
        "fresh",
        &format!("UPDATE mandate_schema SET version = {newer}"),
    );
    let e = PgStore::open(&o, "d")
        .err()
        .expect("a newer schema is refused");
    assert_eq!(
        no_password(&pg, &e),
        format!(
            "the approval store 127.0.0.1:{}/fresh: the database schema is version {newer}, this mandate knows up to {}: upgrade mandate before pointing it at this database",
            pg.port(),
            mandate::store::postgres::SCHEMA_VERSION
        )
    );
}

#[test]
fn passwords_are_private_and_never_shown() {
    use std::os::unix::fs::PermissionsExt;
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pass");

    // Readable by others: refused before any connection.
    std::fs::write(&file, pg.password()).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut o = pg.options();
    o.password = PgPassword::File(file.clone());
    let e = PgStore::open(&o, "d").err().unwrap();
    assert_eq!(
        no_password(&pg, &e),
        format!(
            "refusing the approval store: store password file {} is readable by group or others; run chmod 600 on it",
            file.display()
        )
    );
    // Private, without a trailing newline: fine.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    drop(open(&o, "d"));

    // The wrong password: the server's message, not the password.
    std::fs::write(&file, format!("{}-wrong\n", pg.password())).unwrap();
    let e = PgStore::open(&o, "d").err().unwrap();
    let text = no_password(&pg, &e);
    assert!(
        text.contains("password authentication failed for user \"mandate\""),
        "{text}"
    );

    // From the environment.
    o.password = PgPassword::Env("MANDATE_TEST_PG_PASSWORD_UNSET".into());
    let e = PgStore::open(&o, "d").err().unwrap();
    assert_eq!(
        e.to_string(),
        "refusing the approval store: the store password: the environment variable MANDATE_TEST_PG_PASSWORD_UNSET is not set"
    );

    // No password at all.
    o.password = PgPassword::None;
    let e = PgStore::open(&o, "d").err().unwrap();
    no_password(&pg, &e);

    // Nothing listening: a quick, clear error.
    let mut o = pg.options();
    o.port = common::free_port();
    let t = Instant::now();
    let e = PgStore::open(&o, "d").err().unwrap();
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(e.to_string().contains("Connection refused"), "{e}");
}

#[test]
fn verify_full_trusts_only_the_given_ca() {
    let pg = Postgres::start_tls();
    let o = pg.options();
    assert!(matches!(o.tls, PgTls::VerifyFull { .. }));
    let s = open(&o, "d");
    s.set_pause(None).unwrap();
    let tls_connections: u32 = pg
        .psql(
            "mandate",
            "SELECT count(*) FROM pg_stat_ssl WHERE ssl AND pid <> pg_backend_pid()",
        )
        .trim()
        .parse()
        .unwrap();
    assert!(tls_connections >= 1, "the store's connection uses TLS");

    let mut wrong = pg.options();
    wrong.tls = PgTls::VerifyFull {
        ca_file: pg.other_ca_file(),
    };
    let e = PgStore::open(&wrong, "d")
        .err()
        .expect("another CA is refused");
    let text = no_password(&pg, &e);
    assert!(text.contains("certificate"), "{text}");

    // The certificate names 127.0.0.1 only: the right CA for the wrong name is refused.
    let mut name = pg.options();
    name.host = "localhost".into();
    let e = PgStore::open(&name, "d")
        .err()
        .expect("the host name is checked");
    let text = no_password(&pg, &e);
    assert!(text.contains("certificate"), "{text}");
}

#[test]
fn the_daemon_serves_from_the_shared_store_and_refuses_to_start_without_it() {
    let moto = common::Moto::start();
    let pg = Postgres::start();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("broker.toml");

    // `config check` takes [store] and says what is wrong with it.
    let bad = common::config_text(
        &moto.endpoint(),
        &pg.store_toml()
            .replace("sslmode=disable", "sslmode=require"),
    );
    std::fs::write(&cfg, &bad).unwrap();
    let out = common::mandate_at(&cfg)
        .args(["config", "check"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("store.url: sslmode=require does not check the server's certificate"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let good = common::config_text(&moto.endpoint(), &pg.store_toml());
    std::fs::write(&cfg, &good).unwrap();
    let out = common::mandate_at(&cfg)
        .args(["config", "check"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The daemon keeps its sessions in the database, marked with its key's fingerprint.
    let d = common::Daemon::start(&good);
    let out = d.mandate(&["credential-process", "readonly"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = d.log();
    assert!(log.contains("opened the store"), "{log}");
    assert!(log.contains("postgres"), "{log}");
    let public = std::fs::read_to_string(d.dir.path().join("state/signing.pub")).unwrap();
    let key = mandate::audit::checkpoint::parse_public(&public).unwrap();
    let id = mandate::audit::checkpoint::fingerprint(&key);
    // The index line is written just after delivery, never waited on.
    let mut rows = String::new();
    common::wait_until("the session index", Duration::from_secs(10), || {
        rows = pg.psql("mandate", "SELECT agent, daemon FROM sessions");
        !rows.trim().is_empty()
    });
    assert_eq!(rows.trim(), format!("claude|{id}"));
    drop(d);

    // Nothing listening at start: the daemon does not start.
    let dead = good.replace(
        &format!(":{}/", pg.port()),
        &format!(":{}/", common::free_port()),
    );
    std::fs::write(&cfg, &dead).unwrap();
    let init = common::mandate_at(&cfg).arg("init").output().unwrap();
    assert_eq!(
        init.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let (code, err) = common::serve_once(&cfg);
    assert_eq!(code, Some(6), "{err}");
    assert!(
        err.contains("refusing to start without the approval store"),
        "{err}"
    );
    assert!(!err.contains(pg.password()), "{err}");
}
