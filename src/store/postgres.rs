//! The shared backend (team mode, design §8): one PostgreSQL database several daemons use.
//!
//! The [`Store`] trait is synchronous (the broker calls it from `spawn_blocking`, and at start
//! from async code), so `PgStore` owns a small private runtime: each call spawns its future
//! there and waits on a channel, which works from any thread, inside a runtime or not. Every
//! call is bounded (connect timeout, a server-side statement timeout, a client-side limit on
//! the whole call), so a database that is down gives a [`StoreError`] quickly.
//!
//! The semantics are SQLite's (`sqlite.rs`), made safe across daemons: a swap is one
//! conditional `UPDATE`, opening a pending request holds a per-agent advisory lock for its
//! transaction, and every change `NOTIFY`s the other daemons in the same statement or
//! transaction (delivered on commit).

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use tokio_postgres::{AsyncMessage, Client, Socket};

use super::{DaemonInfo, Notice, Opened, RemoteCounts, SessionInfo, Store, StoreError, StoreInfo};
use crate::approval::{ApprovalId, ApprovalRequest, Stage};
use crate::revoke::{Pause, Revocation, Trip};
use crate::secret::Secret;

/// The schema versions this build knows (`MIGRATIONS[i]` makes version `i + 1`).
const MIGRATIONS: &[&str] = &["
CREATE TABLE approvals (
    id TEXT PRIMARY KEY,
    agent TEXT NOT NULL,
    digest TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    pending_until BIGINT NOT NULL,
    stage TEXT NOT NULL,
    version BIGINT NOT NULL,
    data TEXT NOT NULL,
    seq BIGSERIAL NOT NULL
);
CREATE INDEX approvals_by_digest ON approvals (agent, digest);
CREATE INDEX approvals_by_time ON approvals (created_at);
CREATE TABLE revocations (id TEXT PRIMARY KEY, data TEXT NOT NULL, seq BIGSERIAL NOT NULL);
CREATE TABLE trips (agent TEXT PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE flags (name TEXT PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE sessions (
    request_id TEXT PRIMARY KEY,
    agent TEXT NOT NULL,
    daemon TEXT NOT NULL,
    issued_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX sessions_by_expiry ON sessions (expires_at);
CREATE TABLE daemons (
    id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    version TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    seen_at BIGINT NOT NULL
);
CREATE TABLE checkpoints (
    daemon TEXT NOT NULL,
    seq BIGINT NOT NULL,
    line TEXT NOT NULL,
    PRIMARY KEY (daemon, seq)
);
"];

/// The newest schema version this build knows.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// The advisory lock migrations hold (one bigint key: "mandate" in ASCII).
const MIGRATION_LOCK: i64 = 0x006d_616e_6461_7465;
/// The first key of the two-key advisory locks `open_pending` takes per agent.
const PENDING_LOCK: i32 = 0x6d61_6e64;

/// The NOTIFY channel.
const CHANNEL: &str = "mandate";

/// Expired sessions are kept this long after they were issued, so that other daemons still
/// count them in an issuance window (`[limits] window` is at most 7 days).
const SESSION_RETENTION: i64 = 7 * 24 * 3600;

/// Notices queued for the subscriber at most; see [`listen`] for what happens when it is full.
const NOTICE_QUEUE: usize = 256;

/// How `PgStore` reaches the database: the validated `[store]` table, converted by the caller
/// (`store` sits below `config` in the layers).
#[derive(Clone, Debug)]
pub struct PgOptions {
    pub host: String,
    pub port: u16,
    pub dbname: String,
    pub user: String,
    pub tls: PgTls,
    pub password: PgPassword,
    pub connect_timeout: Duration,
    /// Longest one statement may run (set on the server too).
    pub statement_timeout: Duration,
    /// Connections held at most (1 to 32).
    pub pool: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PgTls {
    /// No TLS (the config allows it only on loopback).
    Disable,
    /// TLS, the server's certificate chained to this CA (PEM) and naming the host.
    VerifyFull { ca_file: PathBuf },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PgPassword {
    None,
    /// A file only the daemon's user may read (trailing newline ignored).
    File(PathBuf),
    /// An environment variable of the daemon.
    Env(String),
}

impl PgOptions {
    /// `host:port/dbname` (never a password).
    pub fn location(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}/{}", self.host, self.port, self.dbname)
        } else {
            format!("{}:{}/{}", self.host, self.port, self.dbname)
        }
    }
}

/// The shared store.
pub struct PgStore {
    inner: Arc<Inner>,
    /// `Some` until drop (a runtime is shut down in the background, so dropping a `PgStore`
    /// inside another runtime is fine).
    rt: Option<tokio::runtime::Runtime>,
}

struct Inner {
    opts: PgOptions,
    location: String,
    daemon: String,
    password: Option<Secret>,
    tls: RustlsConnect,
    idle: Mutex<Vec<Client>>,
    slots: Arc<Semaphore>,
}

/// A failure inside one call, before it is given the store's location.
enum Fail {
    Pg(tokio_postgres::Error),
    Corrupt(String),
    Other(String),
}

impl From<tokio_postgres::Error> for Fail {
    fn from(e: tokio_postgres::Error) -> Self {
        Fail::Pg(e)
    }
}

/// The driver's error as one line: the server's message (never a password: the server does
/// not echo it, and the driver never prints its config), or the cause chain.
fn describe_pg(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{}: {} ({})", db.severity(), db.message(), db.code().code());
    }
    let mut s = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

type Result<T> = std::result::Result<T, Fail>;

impl Inner {
    fn err(&self, f: Fail) -> StoreError {
        match f {
            Fail::Corrupt(m) => StoreError::Corrupt(m),
            Fail::Pg(e) => self.db(describe_pg(&e)),
            Fail::Other(m) => self.db(m),
        }
    }

    fn db(&self, msg: String) -> StoreError {
        StoreError::Db {
            path: PathBuf::from(&self.location),
            source: msg.into(),
        }
    }

    /// A new connection, its driver spawned on the current (the store's) runtime.
    async fn connect(&self) -> Result<(Client, PgConnection)> {
        let o = &self.opts;
        let mut c = tokio_postgres::Config::new();
        c.host(&o.host)
            .port(o.port)
            .dbname(&o.dbname)
            .user(&o.user)
            .application_name("mandate")
            .connect_timeout(o.connect_timeout)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10))
            .keepalives_interval(Duration::from_secs(2))
            .keepalives_retries(3)
            .options(format!(
                "-c statement_timeout={} -c idle_in_transaction_session_timeout={}",
                o.statement_timeout.as_millis(),
                o.statement_timeout.as_millis() * 2
            ))
            .ssl_mode(match o.tls {
                PgTls::Disable => tokio_postgres::config::SslMode::Disable,
                PgTls::VerifyFull { .. } => tokio_postgres::config::SslMode::Require,
            });
        if let Some(p) = &self.password {
            c.password(p.expose());
        }
        let limit = o.connect_timeout + Duration::from_secs(1);
        match tokio::time::timeout(limit, c.connect(self.tls.clone())).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(Fail::Other(format!(
                "no connection within {} s",
                limit.as_secs()
            ))),
        }
    }

    /// A pooled connection (at most `pool` at once; a closed idle one is replaced).
    async fn conn(self: &Arc<Self>) -> Result<Pooled> {
        let permit = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Fail::Other("the pool is closed".into()))?;
        let reuse = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            idle.retain(|c| !c.is_closed());
            idle.pop()
        };
        let client = match reuse {
            Some(c) => c,
            None => {
                let (client, conn) = self.connect().await?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                client
            }
        };
        Ok(Pooled {
            client: Some(client),
            inner: self.clone(),
            _permit: permit,
        })
    }
}

/// A connection borrowed from the pool; back to the idle list on drop unless it broke.
struct Pooled {
    client: Option<Client>,
    inner: Arc<Inner>,
    _permit: OwnedSemaphorePermit,
}

impl std::ops::Deref for Pooled {
    type Target = Client;
    fn deref(&self) -> &Client {
        self.client.as_ref().expect("client until drop")
    }
}

impl std::ops::DerefMut for Pooled {
    fn deref_mut(&mut self) -> &mut Client {
        self.client.as_mut().expect("client until drop")
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Some(c) = self.client.take().filter(|c| !c.is_closed()) {
            self.inner
                .idle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(c);
        }
    }
}

fn read_password(p: &PgPassword) -> std::result::Result<Option<Secret>, StoreError> {
    match p {
        PgPassword::None => Ok(None),
        PgPassword::Env(name) => match std::env::var(name) {
            Ok(v) if !v.is_empty() => Ok(Some(Secret::new(v))),
            _ => Err(StoreError::Untrusted(format!(
                "the store password: the environment variable {name} is not set"
            ))),
        },
        PgPassword::File(path) => {
            use std::os::unix::fs::PermissionsExt;
            crate::os::trusted_file(path, "store password file").map_err(StoreError::Untrusted)?;
            let meta = std::fs::metadata(path).map_err(|source| StoreError::Io {
                path: path.clone(),
                source,
            })?;
            if meta.permissions().mode() & 0o077 != 0 {
                return Err(StoreError::Untrusted(format!(
                    "store password file {} is readable by group or others; run chmod 600 on it",
                    path.display()
                )));
            }
            let text = std::fs::read_to_string(path).map_err(|source| StoreError::Io {
                path: path.clone(),
                source,
            })?;
            let text = Secret::new(text);
            let pass = text.expose().trim_end_matches(['\n', '\r']);
            if pass.is_empty() {
                return Err(StoreError::Untrusted(format!(
                    "store password file {} is empty",
                    path.display()
                )));
            }
            Ok(Some(Secret::new(pass.to_owned())))
        }
    }
}

fn tls_config(tls: &PgTls) -> std::result::Result<RustlsConnect, StoreError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    if let PgTls::VerifyFull { ca_file } = tls {
        let bad = |why: String| {
            StoreError::Untrusted(format!("store ca_file {}: {why}", ca_file.display()))
        };
        let certs = CertificateDer::pem_file_iter(ca_file)
            .map_err(|e| bad(e.to_string()))?
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| bad(e.to_string()))?;
        if certs.is_empty() {
            return Err(bad("holds no PEM certificate".into()));
        }
        for c in certs {
            roots.add(c).map_err(|e| bad(e.to_string()))?;
        }
    }
    // With `Disable` the connector is never used (the driver does not start TLS); it exists
    // so that both modes have one connection type.
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| StoreError::Untrusted(format!("TLS: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(RustlsConnect(Arc::new(config)))
}

impl PgStore {
    /// Connects, checks the schema (refusing one newer than this build knows) and applies
    /// missing migrations. `daemon_id` (the audit key's fingerprint) marks this daemon's
    /// sessions.
    pub fn open(opts: &PgOptions, daemon_id: &str) -> std::result::Result<PgStore, StoreError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("mandate-pg")
            .enable_all()
            .build()
            .map_err(|source| StoreError::Io {
                path: PathBuf::from(opts.location()),
                source,
            })?;
        let inner = Arc::new(Inner {
            location: opts.location(),
            daemon: daemon_id.to_owned(),
            password: read_password(&opts.password)?,
            tls: tls_config(&opts.tls)?,
            idle: Mutex::new(Vec::new()),
            slots: Arc::new(Semaphore::new(opts.pool.clamp(1, 32))),
            opts: opts.clone(),
        });
        let store = PgStore {
            inner,
            rt: Some(rt),
        };
        store.call(|i| async move { migrate(&i).await })?;
        Ok(store)
    }

    fn rt(&self) -> &tokio::runtime::Runtime {
        self.rt.as_ref().expect("runtime until drop")
    }

    /// Runs `f` on the store's runtime and waits for it, bounded.
    fn call<T, F, Fut>(&self, f: F) -> std::result::Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Inner>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T>> + Send + 'static,
    {
        let inner = self.inner.clone();
        let limit = self.inner.opts.connect_timeout
            + self.inner.opts.statement_timeout * 2
            + Duration::from_secs(1);
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.rt().spawn(async move {
            let r = match tokio::time::timeout(limit, f(inner.clone())).await {
                Ok(r) => r.map_err(|e| inner.err(e)),
                Err(_) => Err(inner.db(format!("no answer within {} s", limit.as_secs()))),
            };
            let _ = tx.send(r);
        });
        rx.recv()
            .unwrap_or_else(|_| Err(self.inner.db("the store's runtime stopped".into())))
    }

    /// This daemon's id, as given to `open`.
    pub fn daemon_id(&self) -> &str {
        &self.inner.daemon
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

async fn migrate(i: &Arc<Inner>) -> Result<()> {
    let mut c = i.conn().await?;
    let tx = c.transaction().await?;
    // Daemons starting together take turns; the loser sees the winner's work.
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS mandate_schema (version BIGINT NOT NULL)")
        .await?;
    let have: i64 = tx
        .query_one("SELECT COALESCE(MAX(version), 0) FROM mandate_schema", &[])
        .await?
        .get(0);
    if have < 0 {
        return Err(Fail::Other(format!(
            "the database schema says version {have}, which no mandate writes: the mandate_schema table was edited; restore it or use a fresh database"
        )));
    }
    if have > SCHEMA_VERSION {
        return Err(Fail::Other(format!(
            "the database schema is version {have}, this mandate knows up to {SCHEMA_VERSION}: upgrade mandate before pointing it at this database"
        )));
    }
    for step in &MIGRATIONS[have as usize..] {
        tx.batch_execute(step).await?;
    }
    if have < SCHEMA_VERSION {
        tx.execute("DELETE FROM mandate_schema", &[]).await?;
        tx.execute(
            "INSERT INTO mandate_schema (version) VALUES ($1)",
            &[&SCHEMA_VERSION],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

fn decode<T: serde::de::DeserializeOwned>(s: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| Fail::Corrupt(e.to_string()))
}

fn encode<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("store records serialize")
}

fn stage_name(r: &ApprovalRequest) -> &'static str {
    match r.stage {
        Stage::Pending => "pending",
        Stage::Approved { .. } => "approved",
        Stage::Rejected { .. } => "rejected",
        Stage::Redeemed { .. } => "redeemed",
    }
}

/// The columns of one approval row, owned (they travel to the store's runtime).
struct ApprovalRow {
    id: String,
    agent: String,
    digest: String,
    created_at: i64,
    pending_until: i64,
    stage: &'static str,
    version: i64,
    data: String,
}

impl ApprovalRow {
    fn of(r: &ApprovalRequest) -> Self {
        ApprovalRow {
            id: r.id.as_str().to_owned(),
            agent: r.binding.agent.clone(),
            digest: r.digest.clone(),
            created_at: r.created_at,
            pending_until: r.pending_until,
            stage: stage_name(r),
            version: r.version as i64,
            data: encode(r),
        }
    }
}

/// Inserts the row and notifies `approval:<id>` (on commit).
const INSERT_APPROVAL: &str = "
WITH i AS (
    INSERT INTO approvals (id, agent, digest, created_at, pending_until, stage, version, data)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id
)
SELECT pg_notify('mandate', 'approval:' || id) FROM i";

async fn insert_row(c: &impl tokio_postgres::GenericClient, r: &ApprovalRow) -> Result<()> {
    c.query(
        INSERT_APPROVAL,
        &[
            &r.id,
            &r.agent,
            &r.digest,
            &r.created_at,
            &r.pending_until,
            &r.stage,
            &r.version,
            &r.data,
        ],
    )
    .await?;
    Ok(())
}

/// Every `data` column the query returns, decoded.
async fn rows<T: serde::de::DeserializeOwned>(
    i: &Arc<Inner>,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Vec<T>> {
    let c = i.conn().await?;
    let rows = c.query(sql, params).await?;
    rows.iter().map(|r| decode(r.get::<_, &str>(0))).collect()
}

/// Approval requests from `sql`, which selects `data, version`: the version is the column's,
/// the one compare-and-swap tests, whatever the JSON says (a row edited by hand could make
/// the two disagree, and every swap would then fail).
async fn approvals(
    i: &Arc<Inner>,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Vec<ApprovalRequest>> {
    let c = i.conn().await?;
    let rows = c.query(sql, params).await?;
    rows.iter().map(approval_of).collect()
}

fn approval_of(r: &tokio_postgres::Row) -> Result<ApprovalRequest> {
    let mut a: ApprovalRequest = decode(r.get::<_, &str>(0))?;
    a.version = u64::try_from(r.get::<_, i64>(1))
        .map_err(|_| Fail::Corrupt(format!("approval request {} has a negative version", a.id)))?;
    Ok(a)
}

/// Runs `sql` (which selects `pg_notify` for every row it changed); how many it changed.
async fn changed(
    i: &Arc<Inner>,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<usize> {
    let c = i.conn().await?;
    Ok(c.query(sql, params).await?.len())
}

impl Store for PgStore {
    fn describe(&self) -> StoreInfo {
        StoreInfo {
            kind: "postgres",
            location: self.inner.location.clone(),
            shared: true,
        }
    }

    fn insert(&self, r: &ApprovalRequest) -> std::result::Result<(), StoreError> {
        let row = ApprovalRow::of(r);
        self.call(move |i| async move {
            let c = i.conn().await?;
            insert_row(&*c, &row).await
        })
    }

    fn get(&self, id: &ApprovalId) -> std::result::Result<Option<ApprovalRequest>, StoreError> {
        let id = id.as_str().to_owned();
        self.call(move |i| async move {
            let mut v = approvals(
                &i,
                "SELECT data, version FROM approvals WHERE id = $1",
                &[&id],
            )
            .await?;
            Ok(v.pop())
        })
    }

    fn by_digest(
        &self,
        agent: &str,
        digest: &str,
    ) -> std::result::Result<Vec<ApprovalRequest>, StoreError> {
        let (agent, digest) = (agent.to_owned(), digest.to_owned());
        self.call(move |i| async move {
            approvals(
                &i,
                "SELECT data, version FROM approvals WHERE agent = $1 AND digest = $2
                 ORDER BY created_at DESC, seq DESC LIMIT 16",
                &[&agent, &digest],
            )
            .await
        })
    }

    fn list(
        &self,
        since: i64,
        limit: usize,
    ) -> std::result::Result<Vec<ApprovalRequest>, StoreError> {
        let limit = limit.min(i64::MAX as usize) as i64;
        self.call(move |i| async move {
            approvals(
                &i,
                "SELECT data, version FROM approvals WHERE created_at >= $1
                 ORDER BY created_at DESC, seq DESC LIMIT $2",
                &[&since, &limit],
            )
            .await
        })
    }

    fn replace(&self, expected: u64, r: &ApprovalRequest) -> std::result::Result<bool, StoreError> {
        let row = ApprovalRow::of(r);
        let expected = expected as i64;
        self.call(move |i| async move {
            // One conditional statement: of any number of daemons that read `expected`,
            // exactly one changes the row.
            let n = changed(
                &i,
                "WITH u AS (
                    UPDATE approvals SET stage = $1, version = $2, data = $3
                    WHERE id = $4 AND version = $5 RETURNING id
                 )
                 SELECT pg_notify('mandate', 'approval:' || id) FROM u",
                &[&row.stage, &row.version, &row.data, &row.id, &expected],
            )
            .await?;
            Ok(n == 1)
        })
    }

    fn count_pending(&self, agent: &str, now: i64) -> std::result::Result<usize, StoreError> {
        let agent = agent.to_owned();
        self.call(move |i| async move {
            let c = i.conn().await?;
            let n: i64 = c
                .query_one(
                    "SELECT COUNT(*) FROM approvals WHERE agent = $1 AND stage = 'pending' AND pending_until > $2",
                    &[&agent, &now],
                )
                .await?
                .get(0);
            Ok(n as usize)
        })
    }

    fn open_pending(
        &self,
        r: &ApprovalRequest,
        max_pending: usize,
        now: i64,
    ) -> std::result::Result<Opened, StoreError> {
        let row = ApprovalRow::of(r);
        self.call(move |i| async move {
            let mut c = i.conn().await?;
            let tx = c.transaction().await?;
            // Every daemon opening a request for this agent takes the same lock, held to
            // commit; each statement after it sees what the previous holder committed.
            tx.execute(
                "SELECT pg_advisory_xact_lock($1, hashtext($2))",
                &[&PENDING_LOCK, &row.agent],
            )
            .await?;
            let same = tx
                .query_opt(
                    "SELECT data, version FROM approvals WHERE agent = $1 AND digest = $2 AND stage = 'pending' AND pending_until > $3
                     ORDER BY created_at DESC, seq DESC LIMIT 1",
                    &[&row.agent, &row.digest, &now],
                )
                .await?;
            if let Some(same) = same {
                let existing = approval_of(&same)?;
                return Ok(Opened::Existing(Box::new(existing)));
            }
            let open: i64 = tx
                .query_one(
                    "SELECT COUNT(*) FROM approvals WHERE agent = $1 AND stage = 'pending' AND pending_until > $2",
                    &[&row.agent, &now],
                )
                .await?
                .get(0);
            if open as usize >= max_pending {
                return Ok(Opened::Full(open as usize));
            }
            insert_row(&tx, &row).await?;
            tx.commit().await?;
            Ok(Opened::Inserted)
        })
    }

    fn prune(&self, before: i64) -> std::result::Result<usize, StoreError> {
        self.call(move |i| async move {
            let c = i.conn().await?;
            let n = c
                .execute("DELETE FROM approvals WHERE created_at < $1", &[&before])
                .await?;
            Ok(n as usize)
        })
    }

    fn put_revocation(&self, r: &Revocation) -> std::result::Result<(), StoreError> {
        let (id, data) = (r.id.clone(), encode(r));
        self.call(move |i| async move {
            changed(
                &i,
                "WITH u AS (
                    INSERT INTO revocations (id, data) VALUES ($1, $2)
                    ON CONFLICT (id) DO UPDATE SET data = excluded.data RETURNING 1
                 )
                 SELECT pg_notify('mandate', 'controls') FROM u",
                &[&id, &data],
            )
            .await
            .map(drop)
        })
    }

    fn delete_revocation(&self, id: &str) -> std::result::Result<(), StoreError> {
        let id = id.to_owned();
        self.call(move |i| async move {
            changed(
                &i,
                "WITH d AS (DELETE FROM revocations WHERE id = $1 RETURNING 1)
                 SELECT pg_notify('mandate', 'controls') FROM d",
                &[&id],
            )
            .await
            .map(drop)
        })
    }

    fn revocations(&self) -> std::result::Result<Vec<Revocation>, StoreError> {
        self.call(
            |i| async move { rows(&i, "SELECT data FROM revocations ORDER BY seq", &[]).await },
        )
    }

    fn put_trip(&self, t: &Trip) -> std::result::Result<(), StoreError> {
        let (agent, data) = (t.agent.clone(), encode(t));
        self.call(move |i| async move {
            changed(
                &i,
                "WITH u AS (
                    INSERT INTO trips (agent, data) VALUES ($1, $2)
                    ON CONFLICT (agent) DO UPDATE SET data = excluded.data RETURNING 1
                 )
                 SELECT pg_notify('mandate', 'controls') FROM u",
                &[&agent, &data],
            )
            .await
            .map(drop)
        })
    }

    fn delete_trip(&self, agent: &str) -> std::result::Result<bool, StoreError> {
        let agent = agent.to_owned();
        self.call(move |i| async move {
            let n = changed(
                &i,
                "WITH d AS (DELETE FROM trips WHERE agent = $1 RETURNING 1)
                 SELECT pg_notify('mandate', 'controls') FROM d",
                &[&agent],
            )
            .await?;
            Ok(n == 1)
        })
    }

    fn trips(&self) -> std::result::Result<Vec<Trip>, StoreError> {
        // Byte order, as SQLite sorts.
        self.call(|i| async move {
            rows(
                &i,
                "SELECT data FROM trips ORDER BY agent COLLATE \"C\"",
                &[],
            )
            .await
        })
    }

    fn set_pause(&self, p: Option<&Pause>) -> std::result::Result<(), StoreError> {
        let data = p.map(encode);
        self.call(move |i| async move {
            match data {
                Some(data) => changed(
                    &i,
                    "WITH u AS (
                        INSERT INTO flags (name, data) VALUES ('pause', $1)
                        ON CONFLICT (name) DO UPDATE SET data = excluded.data RETURNING 1
                     )
                     SELECT pg_notify('mandate', 'controls') FROM u",
                    &[&data],
                )
                .await
                .map(drop),
                None => changed(
                    &i,
                    "WITH d AS (DELETE FROM flags WHERE name = 'pause' RETURNING 1)
                     SELECT pg_notify('mandate', 'controls') FROM d",
                    &[],
                )
                .await
                .map(drop),
            }
        })
    }

    fn pause(&self) -> std::result::Result<Option<Pause>, StoreError> {
        self.call(|i| async move {
            let mut v = rows(&i, "SELECT data FROM flags WHERE name = 'pause'", &[]).await?;
            Ok(v.pop())
        })
    }

    fn put_session(&self, s: &SessionInfo, now: i64) -> std::result::Result<(), StoreError> {
        let (id, agent, expires, data) = (
            s.request_id.clone(),
            s.agent.clone(),
            s.expires_at(),
            encode(s),
        );
        self.call(move |i| async move {
            let mut c = i.conn().await?;
            let tx = c.transaction().await?;
            // Expired sessions go once no issuance window can still count them.
            tx.execute(
                "DELETE FROM sessions WHERE expires_at <= $1 AND issued_at < $2",
                &[&now, &(now - SESSION_RETENTION)],
            )
            .await?;
            tx.execute(
                "INSERT INTO sessions (request_id, agent, daemon, issued_at, expires_at, data)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (request_id) DO UPDATE SET expires_at = excluded.expires_at, data = excluded.data",
                &[&id, &agent, &i.daemon, &now, &expires, &data],
            )
            .await?;
            tx.execute("SELECT pg_notify('mandate', 'sessions')", &[])
                .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    fn sessions(&self, now: i64) -> std::result::Result<Vec<SessionInfo>, StoreError> {
        self.call(move |i| async move {
            let c = i.conn().await?;
            let rows = c
                .query(
                    "SELECT data, expires_at, daemon FROM sessions WHERE expires_at > $1 ORDER BY expires_at, request_id",
                    &[&now],
                )
                .await?;
            rows.iter()
                .map(|r| {
                    let mut s: SessionInfo = decode(r.get::<_, &str>(0))?;
                    // `expires_at` is not in the JSON (it is skipped when serialized).
                    s.expires_at = r.get(1);
                    // Which daemon issued it (the JSON a daemon writes leaves it empty).
                    s.daemon = r.get(2);
                    Ok(s)
                })
                .collect()
        })
    }

    fn subscribe(&self) -> Option<mpsc::Receiver<Notice>> {
        let (tx, rx) = mpsc::channel(NOTICE_QUEUE);
        self.rt().spawn(listen(self.inner.clone(), tx));
        Some(rx)
    }

    fn remote_counts(
        &self,
        since: i64,
        now: i64,
    ) -> std::result::Result<HashMap<String, RemoteCounts>, StoreError> {
        self.call(move |i| async move {
            let c = i.conn().await?;
            let rows = c
                .query(
                    "SELECT agent,
                            COUNT(*) FILTER (WHERE issued_at > $2),
                            COUNT(*) FILTER (WHERE expires_at > $3)
                     FROM sessions
                     WHERE daemon <> $1 AND (issued_at > $2 OR expires_at > $3)
                     GROUP BY agent",
                    &[&i.daemon, &since, &now],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|r| {
                    let n = |k: usize| u32::try_from(r.get::<_, i64>(k)).unwrap_or(u32::MAX);
                    (
                        r.get::<_, String>(0),
                        RemoteCounts {
                            issued: n(1),
                            live: n(2),
                        },
                    )
                })
                .collect())
        })
    }

    fn heartbeat(&self, me: &DaemonInfo) -> std::result::Result<(), StoreError> {
        let me = me.clone();
        self.call(move |i| async move {
            let c = i.conn().await?;
            c.execute(
                "INSERT INTO daemons (id, host, version, started_at, seen_at) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (id) DO UPDATE SET host = excluded.host, version = excluded.version,
                     started_at = excluded.started_at, seen_at = excluded.seen_at",
                &[&me.id, &me.host, &me.version, &me.started_at, &me.seen_at],
            )
            .await?;
            Ok(())
        })
    }

    fn daemons(&self, since: i64) -> std::result::Result<Vec<DaemonInfo>, StoreError> {
        self.call(move |i| async move {
            let c = i.conn().await?;
            let rows = c
                .query(
                    "SELECT id, host, version, started_at, seen_at FROM daemons
                     WHERE seen_at >= $1 ORDER BY id COLLATE \"C\"",
                    &[&since],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|r| DaemonInfo {
                    id: r.get(0),
                    host: r.get(1),
                    version: r.get(2),
                    started_at: r.get(3),
                    seen_at: r.get(4),
                })
                .collect())
        })
    }

    fn put_checkpoint(
        &self,
        daemon: &str,
        seq: u64,
        line: &str,
    ) -> std::result::Result<(), StoreError> {
        let (daemon, line) = (daemon.to_owned(), line.to_owned());
        let seq =
            i64::try_from(seq).map_err(|_| self.inner.db("checkpoint seq too large".into()))?;
        self.call(move |i| async move {
            let c = i.conn().await?;
            c.execute(
                "INSERT INTO checkpoints (daemon, seq, line) VALUES ($1, $2, $3)
                 ON CONFLICT (daemon, seq) DO NOTHING",
                &[&daemon, &seq, &line],
            )
            .await?;
            Ok(())
        })
    }

    fn checkpoints(&self, daemon: &str) -> std::result::Result<Vec<String>, StoreError> {
        let daemon = daemon.to_owned();
        self.call(move |i| async move {
            let c = i.conn().await?;
            let rows = c
                .query(
                    "SELECT line FROM checkpoints WHERE daemon = $1 ORDER BY seq",
                    &[&daemon],
                )
                .await?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
    }
}

/// What one NOTIFY payload means.
fn notice(payload: &str) -> Option<Notice> {
    match payload {
        "controls" => Some(Notice::Controls),
        "sessions" => Some(Notice::Sessions),
        p => p
            .strip_prefix("approval:")
            .map(|id| Notice::Approval(id.to_owned())),
    }
}

/// The subscriber: one dedicated connection (not from the pool) that `LISTEN`s, reconnecting
/// with a capped backoff until the receiver is dropped.
///
/// The queue is bounded. When it is full a notification is dropped, and a `Connected` is
/// queued as soon as there is room again: the broker re-reads everything on `Connected`
/// (as it does on `Controls`, and every `resync` anyway), so what was dropped is not lost.
async fn listen(i: Arc<Inner>, tx: mpsc::Sender<Notice>) {
    let mut backoff = Duration::from_millis(100);
    // `Lost` once per outage (and once if the first connection fails), not per retry.
    let mut told = false;
    loop {
        let mut was_up = false;
        let why = tokio::select! {
            why = listen_once(&i, &tx, &mut was_up) => why,
            _ = tx.closed() => return,
        };
        if (was_up || !told) && tx.send(Notice::Lost(why)).await.is_err() {
            return;
        }
        told = true;
        backoff = if was_up {
            Duration::from_millis(100)
        } else {
            (backoff * 2).min(Duration::from_secs(2))
        };
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = tx.closed() => return,
        }
    }
}

/// One connection's life: connects, listens, forwards; why it ended. `was_up` is set once
/// `Connected` is sent.
async fn listen_once(i: &Arc<Inner>, tx: &mpsc::Sender<Notice>, was_up: &mut bool) -> String {
    let (client, mut conn) = match i.connect().await {
        Ok(c) => c,
        Err(Fail::Pg(e)) => return describe_pg(&e),
        Err(Fail::Other(m) | Fail::Corrupt(m)) => return m,
    };
    let listen = format!("LISTEN {CHANNEL}");
    {
        let listening = client.batch_execute(&listen);
        tokio::pin!(listening);
        loop {
            tokio::select! {
                r = &mut listening => match r {
                    Ok(()) => break,
                    Err(e) => return describe_pg(&e),
                },
                m = next(&mut conn) => match m {
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return describe_pg(&e),
                    None => return "the connection closed".into(),
                },
            }
        }
    }
    *was_up = true;
    if tx.send(Notice::Connected).await.is_err() {
        return "unsubscribed".into();
    }
    let mut overflowed = false;
    loop {
        match next(&mut conn).await {
            Some(Ok(AsyncMessage::Notification(n))) => {
                let Some(notice) = notice(n.payload()) else {
                    continue;
                };
                if overflowed && tx.try_send(Notice::Connected).is_ok() {
                    overflowed = false;
                }
                if overflowed || tx.try_send(notice).is_err() {
                    overflowed = true;
                }
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return describe_pg(&e),
            None => return "the connection closed".into(),
        }
    }
}

type PgConnection =
    tokio_postgres::Connection<Socket, <RustlsConnect as MakeTlsConnect<Socket>>::Stream>;

/// The next message the connection has for us (driving it meanwhile).
async fn next(
    conn: &mut PgConnection,
) -> Option<std::result::Result<AsyncMessage, tokio_postgres::Error>> {
    std::future::poll_fn(|cx| conn.poll_message(cx)).await
}

/// TLS for the driver over tokio-rustls (the aws-lc-rs provider the rest of the program uses).
#[derive(Clone)]
struct RustlsConnect(Arc<rustls::ClientConfig>);

impl MakeTlsConnect<Socket> for RustlsConnect {
    type Stream = RustlsStream;
    type TlsConnect = RustlsTls;
    type Error = rustls::pki_types::InvalidDnsNameError;

    fn make_tls_connect(&mut self, domain: &str) -> std::result::Result<RustlsTls, Self::Error> {
        Ok(RustlsTls {
            config: self.0.clone(),
            name: rustls::pki_types::ServerName::try_from(domain.to_owned())?,
        })
    }
}

struct RustlsTls {
    config: Arc<rustls::ClientConfig>,
    name: rustls::pki_types::ServerName<'static>,
}

impl TlsConnect<Socket> for RustlsTls {
    type Stream = RustlsStream;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<RustlsStream>> + Send>>;

    fn connect(self, stream: Socket) -> Self::Future {
        Box::pin(async move {
            let s = tokio_rustls::TlsConnector::from(self.config)
                .connect(self.name, stream)
                .await?;
            Ok(RustlsStream(Box::new(s)))
        })
    }
}

struct RustlsStream(Box<tokio_rustls::client::TlsStream<Socket>>);

impl TlsStream for RustlsStream {
    fn channel_binding(&self) -> ChannelBinding {
        // SCRAM without channel binding: the certificate check already binds the server.
        ChannelBinding::none()
    }
}

impl AsyncRead for RustlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for RustlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}
