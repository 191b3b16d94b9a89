//! The database file: its tables, how it is opened, and who may read it.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension};

use crate::store::StoreError;

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    dedup_key TEXT NOT NULL UNIQUE,
    received_ms INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_received ON events(received_ms);
CREATE TABLE IF NOT EXISTS windows (
    account TEXT NOT NULL,
    user TEXT NOT NULL,
    last_inbound_ms INTEGER,
    standard_refused_ms INTEGER,
    human_agent_refused_ms INTEGER,
    PRIMARY KEY (account, user)
);
CREATE INDEX IF NOT EXISTS windows_user ON windows(user);
CREATE TABLE IF NOT EXISTS request_ids (
    id TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    claimed_ms INTEGER NOT NULL,
    outcome TEXT
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS dedup (
    key TEXT PRIMARY KEY,
    seen_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dedup_seen ON dedup(seen_ms);
CREATE TABLE IF NOT EXISTS tokens (
    account TEXT PRIMARY KEY,
    configured_sha256 TEXT NOT NULL,
    sealed_token TEXT NOT NULL,
    expires_ms INTEGER,
    refreshed_ms INTEGER NOT NULL
);
-- The thread record beside the events: each message's echo and
-- reactions, each thread's read mark, and sends whose fate is tracked.
CREATE TABLE IF NOT EXISTS message_state (
    account TEXT NOT NULL,
    mid TEXT NOT NULL,
    echoed_ms INTEGER,
    reactions TEXT,
    updated_ms INTEGER NOT NULL,
    PRIMARY KEY (account, mid)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS threads (
    account TEXT NOT NULL,
    user TEXT NOT NULL,
    read_through_ms INTEGER,
    read_at_ms INTEGER,
    PRIMARY KEY (account, user)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sends (
    send_id TEXT PRIMARY KEY,
    scope TEXT NOT NULL,
    account TEXT NOT NULL,
    user TEXT NOT NULL,
    content_key TEXT,
    state TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS sends_scope ON sends(scope, created_ms);
CREATE INDEX IF NOT EXISTS sends_pending ON sends(account, user, state, content_key);
CREATE INDEX IF NOT EXISTS sends_expiring ON sends(state, expires_ms);
-- Stores from before the dedup table kept keys only beside their events.
INSERT OR IGNORE INTO dedup (key, seen_ms) SELECT dedup_key, received_ms FROM events;
";

pub(super) fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(conn)
}

/// The data directory holds every direct message of the last days: only
/// this user may read it.
pub(super) fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(dir)
}

/// The database and its WAL files: owner only.
pub(super) fn restrict_files(dir: &Path, db: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mut files = vec![db.to_owned()];
        for suffix in ["-wal", "-shm"] {
            files.push(dir.join(format!("gateway.sqlite3{suffix}")));
        }
        for f in files.into_iter().filter(|f| f.exists()) {
            std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o600))?;
        }
    }
    let _ = (dir, db);
    Ok(())
}

pub(super) fn head(conn: &Connection) -> Result<u64, StoreError> {
    // AUTOINCREMENT keeps the highest seq ever used here, even once pruned.
    // Cached: it is read after every write, and preparing it each time
    // cost more than the insert it follows.
    let seq: Option<i64> = conn
        .prepare_cached("SELECT seq FROM sqlite_sequence WHERE name = 'events'")?
        .query_row([], |row| row.get(0))
        .optional()?;
    Ok(seq.unwrap_or(0) as u64)
}

pub(super) fn pruned_through(conn: &Connection) -> Result<u64, StoreError> {
    let value: Option<i64> = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'pruned_through'",
            [],
            |row| row.get(0),
        )
        .optional()?;
    Ok(value.unwrap_or(0) as u64)
}
