//! The embedded backend: one SQLite file in the state directory.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};

use super::{Opened, SessionInfo, Store, StoreError};
use crate::approval::{ApprovalId, ApprovalRequest, Stage};
use crate::revoke::{Pause, Revocation, Trip};

/// The default store: one SQLite file in the state directory (0600, rollback journal,
/// synchronous=FULL: a change is on disk before the call returns).
pub struct SqliteStore {
    path: PathBuf,
    conn: Mutex<Connection>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS approvals (
    id TEXT PRIMARY KEY,
    agent TEXT NOT NULL,
    digest TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    pending_until INTEGER NOT NULL,
    stage TEXT NOT NULL,
    version INTEGER NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS approvals_by_digest ON approvals (agent, digest);
CREATE INDEX IF NOT EXISTS approvals_by_time ON approvals (created_at);
CREATE TABLE IF NOT EXISTS revocations (id TEXT PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS trips (agent TEXT PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS flags (name TEXT PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (request_id TEXT PRIMARY KEY, expires_at INTEGER NOT NULL, data TEXT NOT NULL);
";

impl SqliteStore {
    /// Opens (creating with mode 0600 if absent) the store file.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let db = |source: rusqlite::Error| StoreError::Db {
            path: path.to_owned(),
            source: source.into(),
        };
        // Whoever can write the store can forge approvals: trust it like the signing key.
        if path.exists() {
            crate::os::trusted_file(path, "approval store").map_err(StoreError::Untrusted)?;
        } else {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|source| StoreError::Io {
                    path: path.to_owned(),
                    source,
                })?;
        }
        let conn = Connection::open(path).map_err(db)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(db)?;
        conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")
            .map_err(db)?;
        conn.execute_batch(SCHEMA).map_err(db)?;
        Ok(SqliteStore {
            path: path.to_owned(),
            conn: Mutex::new(conn),
        })
    }

    /// An in-memory store (tests).
    pub fn in_memory() -> SqliteStore {
        let conn = Connection::open_in_memory().expect("sqlite in memory");
        conn.execute_batch(SCHEMA).expect("schema");
        SqliteStore {
            path: PathBuf::from(":memory:"),
            conn: Mutex::new(conn),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        f(&conn).map_err(|source| StoreError::Db {
            path: self.path.clone(),
            source: source.into(),
        })
    }
}

impl SqliteStore {
    /// Every `data` column the query returns, decoded.
    fn rows<T: serde::de::DeserializeOwned>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
    ) -> Result<Vec<T>, StoreError> {
        let rows: Vec<String> = self.with(|c| {
            let mut s = c.prepare_cached(sql)?;
            s.query_map(params, |row| row.get(0))?.collect()
        })?;
        rows.iter().map(|d| decode(d)).collect()
    }

    /// The one `data` column the query returns, if any, decoded.
    fn row<T: serde::de::DeserializeOwned>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
    ) -> Result<Option<T>, StoreError> {
        let data: Option<String> =
            self.with(|c| c.query_row(sql, params, |row| row.get(0)).optional())?;
        data.map(|d| decode(&d)).transpose()
    }
}

fn decode<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, StoreError> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(e.to_string()))
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

fn insert_request(c: &Connection, r: &ApprovalRequest) -> rusqlite::Result<()> {
    c.execute(
        "INSERT INTO approvals (id, agent, digest, created_at, pending_until, stage, version, data)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            r.id.as_str(),
            r.binding.agent,
            r.digest,
            r.created_at,
            r.pending_until,
            stage_name(r),
            r.version as i64,
            encode(r)
        ],
    )
    .map(drop)
}

impl Store for SqliteStore {
    fn describe(&self) -> super::StoreInfo {
        super::StoreInfo {
            kind: "sqlite",
            location: self.path.display().to_string(),
            shared: false,
        }
    }

    fn insert(&self, r: &ApprovalRequest) -> Result<(), StoreError> {
        self.with(|c| insert_request(c, r))
    }

    fn get(&self, id: &ApprovalId) -> Result<Option<ApprovalRequest>, StoreError> {
        self.row(
            "SELECT data FROM approvals WHERE id = ?1",
            params![id.as_str()],
        )
    }

    fn by_digest(&self, agent: &str, digest: &str) -> Result<Vec<ApprovalRequest>, StoreError> {
        self.rows(
            "SELECT data FROM approvals WHERE agent = ?1 AND digest = ?2
             ORDER BY created_at DESC, rowid DESC LIMIT 16",
            params![agent, digest],
        )
    }

    fn list(&self, since: i64, limit: usize) -> Result<Vec<ApprovalRequest>, StoreError> {
        self.rows(
            "SELECT data FROM approvals WHERE created_at >= ?1
             ORDER BY created_at DESC, rowid DESC LIMIT ?2",
            params![since, limit as i64],
        )
    }

    fn replace(&self, expected: u64, r: &ApprovalRequest) -> Result<bool, StoreError> {
        let n = self.with(|c| {
            c.execute(
                "UPDATE approvals SET stage = ?1, version = ?2, data = ?3
                 WHERE id = ?4 AND version = ?5",
                params![
                    stage_name(r),
                    r.version as i64,
                    encode(r),
                    r.id.as_str(),
                    expected as i64
                ],
            )
        })?;
        Ok(n == 1)
    }

    fn count_pending(&self, agent: &str, now: i64) -> Result<usize, StoreError> {
        self.with(|c| {
            c.query_row(
                "SELECT COUNT(*) FROM approvals WHERE agent = ?1 AND stage = 'pending' AND pending_until > ?2",
                params![agent, now],
                |row| row.get::<_, i64>(0),
            )
        })
        .map(|n| n as usize)
    }

    fn open_pending(
        &self,
        r: &ApprovalRequest,
        max_pending: usize,
        now: i64,
    ) -> Result<Opened, StoreError> {
        self.with(|c| {
            // The connection mutex serialises this daemon; the immediate transaction takes the
            // database's write lock first, so another process cannot interleave either.
            let tx = rusqlite::Transaction::new_unchecked(c, rusqlite::TransactionBehavior::Immediate)?;
            let same: Option<String> = tx
                .query_row(
                    "SELECT data FROM approvals WHERE agent = ?1 AND digest = ?2 AND stage = 'pending' AND pending_until > ?3
                     ORDER BY created_at DESC LIMIT 1",
                    params![r.binding.agent, r.digest, now],
                    |row| row.get(0),
                )
                .optional()?;
            if let Some(data) = same {
                let existing: ApprovalRequest = serde_json::from_str(&data).map_err(|e| {
                    rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
                })?;
                return Ok(Opened::Existing(Box::new(existing)));
            }
            let open: i64 = tx.query_row(
                "SELECT COUNT(*) FROM approvals WHERE agent = ?1 AND stage = 'pending' AND pending_until > ?2",
                params![r.binding.agent, now],
                |row| row.get(0),
            )?;
            if open as usize >= max_pending {
                return Ok(Opened::Full(open as usize));
            }
            insert_request(&tx, r)?;
            tx.commit()?;
            Ok(Opened::Inserted)
        })
    }

    fn prune(&self, before: i64) -> Result<usize, StoreError> {
        self.with(|c| {
            c.execute(
                "DELETE FROM approvals WHERE created_at < ?1",
                params![before],
            )
        })
    }

    fn put_revocation(&self, r: &Revocation) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO revocations (id, data) VALUES (?1, ?2)
                 ON CONFLICT(id) DO UPDATE SET data = excluded.data",
                params![r.id, encode(r)],
            )
            .map(drop)
        })
    }

    fn delete_revocation(&self, id: &str) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute("DELETE FROM revocations WHERE id = ?1", params![id])
                .map(drop)
        })
    }

    fn revocations(&self) -> Result<Vec<Revocation>, StoreError> {
        self.rows("SELECT data FROM revocations ORDER BY rowid", [])
    }

    fn put_trip(&self, t: &Trip) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO trips (agent, data) VALUES (?1, ?2)
                 ON CONFLICT(agent) DO UPDATE SET data = excluded.data",
                params![t.agent, encode(t)],
            )
            .map(drop)
        })
    }

    fn delete_trip(&self, agent: &str) -> Result<bool, StoreError> {
        self.with(|c| c.execute("DELETE FROM trips WHERE agent = ?1", params![agent]))
            .map(|n| n == 1)
    }

    fn trips(&self) -> Result<Vec<Trip>, StoreError> {
        self.rows("SELECT data FROM trips ORDER BY agent", [])
    }

    fn set_pause(&self, p: Option<&Pause>) -> Result<(), StoreError> {
        self.with(|c| match p {
            Some(p) => c
                .execute(
                    "INSERT INTO flags (name, data) VALUES ('pause', ?1)
                     ON CONFLICT(name) DO UPDATE SET data = excluded.data",
                    params![encode(p)],
                )
                .map(drop),
            None => c
                .execute("DELETE FROM flags WHERE name = 'pause'", [])
                .map(drop),
        })
    }

    fn put_session(&self, s: &SessionInfo, now: i64) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute("DELETE FROM sessions WHERE expires_at <= ?1", params![now])?;
            c.execute(
                "INSERT INTO sessions (request_id, expires_at, data) VALUES (?1, ?2, ?3)
                 ON CONFLICT(request_id) DO UPDATE SET expires_at = excluded.expires_at, data = excluded.data",
                params![s.request_id, s.expires_at(), encode(s)],
            )
            .map(drop)
        })
    }

    fn sessions(&self, now: i64) -> Result<Vec<SessionInfo>, StoreError> {
        self.rows(
            "SELECT data FROM sessions WHERE expires_at > ?1 ORDER BY expires_at",
            params![now],
        )
    }

    fn pause(&self) -> Result<Option<Pause>, StoreError> {
        self.row("SELECT data FROM flags WHERE name = 'pause'", [])
    }
}
