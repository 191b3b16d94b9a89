//! The embedded store: one SQLite file in WAL mode with `synchronous=FULL`,
//! so a write acknowledged here survives `kill -9` (and power loss).
//!
//! All writes go through one thread that commits whatever has queued up in a
//! single transaction (group commit): one fsync serves many webhook
//! deliveries, which is what makes thousands of durable events a second
//! possible. Reads use their own connection, which WAL lets run alongside.
//!
//! Windows are read on every send, so the store also keeps the (small,
//! pruned at 7 days) windows table mirrored in memory: this process is its
//! only writer, and the mirror changes only after a commit succeeds.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, mpsc};

use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{broadcast, oneshot};

use super::{
    Claim, DEDUP_TTL, EventLog, Ingested, Pruned, QUEUED, REQUEST_ID_TTL, RecordedOutcome,
    ReplicaSet, RequestLog, Store, StoreError, StoredEvent, TokenRecord, TokenStore, WindowStore,
    opened_at,
};
use crate::clock::UnixMs;
use crate::model::event::InboundEvent;
use crate::model::window::{HUMAN_AGENT_MS, WindowFacts};

mod ledger;
mod requests;
mod schema;
mod tokens;
mod windows;
mod writer;

use schema::{SCHEMA, create_private_dir, head, open_connection, pruned_through, restrict_files};
use windows::{WindowChange, Windows, apply, latest, load_windows};
use writer::{CommitObserver, Job, in_savepoint, write_loop};

/// Events committed, in seq order, for live subscribers.
type Feed = broadcast::Sender<Arc<StoredEvent>>;

pub struct SqliteStore {
    writer: mpsc::Sender<Job>,
    /// Reads run on one thread of their own, never on tokio's blocking pool:
    /// a thousand subscribers catching up cost one thread, not a thousand.
    reader: mpsc::Sender<ReadJob>,
    windows: Arc<RwLock<Windows>>,
    feed: Feed,
    bounds: Arc<Bounds>,
    /// Told each commit's duration.
    commits: CommitObserver,
}

type ReadJob = Box<dyn FnOnce(&Connection) + Send>;

/// The newest seq and the highest pruned, kept in memory: every new
/// subscriber asks, and the answer changes only on commit.
#[derive(Default)]
struct Bounds {
    head: AtomicU64,
    pruned_through: AtomicU64,
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Backend(e.to_string())
    }
}

/// Events a live subscriber may fall behind by before it reads from the
/// store instead: several full group commits of single-event deliveries
/// (512 each), so a burst does not send every subscriber to the store.
const FEED_CAPACITY: usize = 16 * 1024;

impl SqliteStore {
    /// Opens (creating if needed) `dir/gateway.sqlite3`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        create_private_dir(dir)
            .map_err(|e| StoreError::Backend(format!("cannot create {}: {e}", dir.display())))?;
        let path = dir.join("gateway.sqlite3");
        let writer_conn = open_connection(&path)?;
        restrict_files(dir, &path)
            .map_err(|e| StoreError::Backend(format!("cannot restrict {}: {e}", path.display())))?;
        writer_conn.execute_batch(SCHEMA)?;
        // Every statement the writer runs stays prepared (rusqlite keeps 16).
        writer_conn.set_prepared_statement_cache_capacity(64);
        let reader = open_connection(&path)?;
        let windows = Arc::new(RwLock::new(load_windows(&reader)?));
        let bounds = Arc::new(Bounds {
            head: AtomicU64::new(head(&reader)?),
            pruned_through: AtomicU64::new(pruned_through(&reader)?),
        });
        let (read_jobs, reads) = mpsc::channel::<ReadJob>();
        std::thread::Builder::new()
            .name("store-reader".into())
            .spawn(move || {
                while let Ok(job) = reads.recv() {
                    job(&reader);
                }
            })
            .map_err(|e| StoreError::Backend(format!("cannot start the reader: {e}")))?;
        let (writer, jobs) = mpsc::channel::<Job>();
        let observer = CommitObserver::default();
        let commits = observer.clone();
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || write_loop(writer_conn, jobs, observer))
            .map_err(|e| StoreError::Backend(format!("cannot start the writer: {e}")))?;
        Ok(Self {
            writer,
            reader: read_jobs,
            windows,
            feed: broadcast::Sender::new(FEED_CAPACITY),
            bounds,
            commits,
        })
    }

    /// Has `observe` told each commit's duration in seconds (once; a second
    /// observer is ignored).
    pub fn observe_commits(&self, observe: impl Fn(f64) + Send + Sync + 'static) {
        let _ = self.commits.set(Box::new(observe));
    }

    async fn write<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        self.write_then(f, |_| {}).await
    }

    /// Like `write`, and once the write is committed, `then` runs on the
    /// writer thread, in commit order, whether or not anyone still awaits
    /// the answer (a webhook whose client hung up still updates the windows
    /// mirror and wakes subscribers).
    async fn write_then<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static,
        then: impl FnOnce(&R) + Send + 'static,
    ) -> Result<R, StoreError> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let result = in_savepoint(conn, f);
            Box::new(move |committed| {
                let result = committed.and(result);
                if let Ok(r) = &result {
                    then(r);
                }
                let _ = tx.send(result);
            })
        });
        self.writer.send(job).map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    async fn read<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let (tx, rx) = oneshot::channel();
        let job: ReadJob = Box::new(move |conn| {
            let _ = tx.send(f(conn));
        });
        self.reader.send(job).map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }
}

fn decode_event(seq: i64, received_ms: i64, body: &str) -> Result<StoredEvent, StoreError> {
    let event: InboundEvent =
        serde_json::from_str(body).map_err(|e| StoreError::Corrupt(format!("event {seq}: {e}")))?;
    Ok(StoredEvent {
        seq: seq as u64,
        received_ms,
        event,
    })
}

#[async_trait::async_trait]
impl EventLog for SqliteStore {
    async fn ingest(
        &self,
        events: Vec<InboundEvent>,
        received_ms: UnixMs,
    ) -> Result<Ingested, StoreError> {
        let windows = self.windows.clone();
        let feed = self.feed.clone();
        let bounds = self.bounds.clone();
        self.write_then(
            move |conn| {
                // The key first, in a table of its own: a conflicting insert
                // into events would still use up a sequence number, and
                // subscribers would see a gap. One statement both checks
                // and remembers it.
                let mut remember = conn.prepare_cached(
                    "INSERT INTO dedup (key, seen_ms) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
                )?;
                // The seq comes back from the insert itself: read back
                // later (last_insert_rowid), it was the windows row's id
                // whenever the event also opened a window.
                let mut insert = conn.prepare_cached(
                    "INSERT INTO events (dedup_key, received_ms, body) VALUES (?1, ?2, ?3)
                     RETURNING seq",
                )?;
                let mut open = conn.prepare_cached(
                    "INSERT INTO windows (account, user, last_inbound_ms) VALUES (?1, ?2, ?3)
                     ON CONFLICT (account, user) DO UPDATE SET last_inbound_ms =
                       MAX(COALESCE(last_inbound_ms, 0), excluded.last_inbound_ms),
                       standard_refused_ms = NULL, human_agent_refused_ms = NULL",
                )?;
                let mut done = Ingested::default();
                let mut stored = Vec::new();
                for mut event in events {
                    match ledger::before_storing(conn, &mut event, received_ms)? {
                        ledger::Before::Duplicate => {
                            done.duplicates += 1;
                            continue;
                        }
                        ledger::Before::Joined => {
                            done.joined += 1;
                            continue;
                        }
                        ledger::Before::Store { resolved } => done.resolved += resolved as usize,
                    }
                    let body = serde_json::to_string(&event)
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                    let key = event.dedup_key();
                    if remember.execute(params![key, received_ms])? == 0 {
                        done.duplicates += 1;
                        continue;
                    }
                    let seq: i64 =
                        insert.query_row(params![key, received_ms, body], |row| row.get(0))?;
                    done.new_events += 1;
                    ledger::after_storing(conn, &event, received_ms)?;
                    if event.opens_window() {
                        open.execute(params![
                            event.account_id,
                            event.user_id(),
                            opened_at(&event, received_ms)
                        ])?;
                    }
                    stored.push(Arc::new(StoredEvent {
                        seq: seq as u64,
                        received_ms,
                        event,
                    }));
                }
                // The last seq inserted is the head (AUTOINCREMENT only
                // grows); read only when nothing was new.
                done.head = match stored.last() {
                    Some(e) => e.seq,
                    None => head(conn)?,
                };
                Ok((done, stored))
            },
            move |(done, stored)| {
                bounds.head.fetch_max(done.head, Ordering::SeqCst);
                let mut mirror = windows.write().unwrap_or_else(|p| p.into_inner());
                for e in stored.iter().filter(|e| e.event.opens_window()) {
                    let change = WindowChange::Inbound(opened_at(&e.event, e.received_ms));
                    apply(&mut mirror, &e.event.account_id, e.event.user_id(), &change);
                }
                drop(mirror);
                for e in stored {
                    // No receivers is not an error: nobody is listening.
                    let _ = feed.send(e.clone());
                }
            },
        )
        .await
        .map(|(done, _)| done)
    }

    fn committed(&self) -> broadcast::Receiver<Arc<StoredEvent>> {
        self.feed.subscribe()
    }

    async fn events_after(&self, after: u64, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT seq, received_ms, body FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![after as i64, limit as i64], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, String>(2)?,
                ))
            })?;
            let mut events = Vec::new();
            for row in rows {
                let (seq, received_ms, body) = row?;
                events.push(decode_event(seq, received_ms, &body)?);
            }
            Ok(events)
        })
        .await
    }

    async fn bounds(&self) -> Result<(u64, u64), StoreError> {
        Ok((
            self.bounds.head.load(Ordering::SeqCst),
            self.bounds.pruned_through.load(Ordering::SeqCst),
        ))
    }
}

#[async_trait::async_trait]
impl WindowStore for SqliteStore {
    async fn windows(&self, user: &str) -> Result<Vec<(String, WindowFacts)>, StoreError> {
        let windows = self.windows.read().unwrap_or_else(|p| p.into_inner());
        Ok(windows.get(user).cloned().unwrap_or_default())
    }

    async fn window_refused(
        &self,
        account: &str,
        user: &str,
        at: UnixMs,
        human_agent: bool,
    ) -> Result<(), StoreError> {
        let (account, user) = (account.to_owned(), user.to_owned());
        let column = super::refusal_column(human_agent);
        let windows = self.windows.clone();
        self.write_then(
            move |conn| {
                conn.execute(
                    &format!(
                        "INSERT INTO windows (account, user, {column}) VALUES (?1, ?2, ?3)
                         ON CONFLICT (account, user) DO UPDATE SET {column} = excluded.{column}"
                    ),
                    params![account, user, at],
                )?;
                Ok((account, user))
            },
            move |(account, user)| {
                let change = WindowChange::Refused { at, human_agent };
                let mut windows = windows.write().unwrap_or_else(|p| p.into_inner());
                apply(&mut windows, account, user, &change);
            },
        )
        .await
        .map(|_| ())
    }
}

#[async_trait::async_trait]
impl ReplicaSet for SqliteStore {}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn prune(&self, now: UnixMs, events_before: UnixMs) -> Result<Pruned, StoreError> {
        let windows = self.windows.clone();
        let bounds = self.bounds.clone();
        let (pruned, _) = self
            .write_then(
                move |conn| {
                    let last_pruned: Option<i64> = conn.query_row(
                        "SELECT MAX(seq) FROM events WHERE received_ms < ?1",
                        params![events_before],
                        |row| row.get(0),
                    )?;
                    let mut pruned = Pruned::default();
                    if let Some(last) = last_pruned {
                        pruned.events =
                            conn.execute("DELETE FROM events WHERE seq <= ?1", params![last])?;
                        conn.execute(
                            "INSERT INTO meta (key, value) VALUES ('pruned_through', ?1)
                     ON CONFLICT (key) DO UPDATE SET value = MAX(value, excluded.value)",
                            params![last],
                        )?;
                    }
                    // Meta redelivers for up to 36 hours: the keys that catch
                    // redeliveries outlive the events they stand for.
                    conn.execute(
                        "DELETE FROM dedup WHERE seen_ms < ?1",
                        params![events_before.min(now - DEDUP_TTL.as_millis() as i64)],
                    )?;
                    pruned.request_ids = conn.execute(
                        "DELETE FROM request_ids WHERE claimed_ms < ?1",
                        params![now - REQUEST_ID_TTL.as_millis() as i64],
                    )?;
                    ledger::prune(conn, events_before)?;
                    // Past 7 days nothing here can reopen or narrow a window.
                    pruned.windows = conn.execute(
                        "DELETE FROM windows WHERE MAX(COALESCE(last_inbound_ms, 0),
                   COALESCE(standard_refused_ms, 0), COALESCE(human_agent_refused_ms, 0)) < ?1",
                        params![now - HUMAN_AGENT_MS],
                    )?;
                    Ok((pruned, last_pruned))
                },
                move |(_, last_pruned)| {
                    if let Some(last) = last_pruned {
                        bounds
                            .pruned_through
                            .fetch_max(*last as u64, Ordering::SeqCst);
                    }
                    let mut windows = windows.write().unwrap_or_else(|p| p.into_inner());
                    windows.retain(|_, rows| {
                        rows.retain(|(_, facts)| latest(facts) >= now - HUMAN_AGENT_MS);
                        !rows.is_empty()
                    });
                },
            )
            .await?;
        Ok(pruned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::contract::message;

    impl SqliteStore {
        /// One account's facts, as the tests ask for them.
        async fn window(
            &self,
            account: &str,
            user: &str,
        ) -> Result<Option<WindowFacts>, StoreError> {
            let rows = self.windows(user).await?;
            Ok(rows.into_iter().find(|(a, _)| a == account).map(|(_, f)| f))
        }
    }

    #[tokio::test]
    async fn events_are_numbered_deduplicated_and_kept_across_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SqliteStore::open(dir.path()).unwrap();
            let first = store
                .ingest(vec![message("m1", 10), message("m2", 20)], 100)
                .await
                .unwrap();
            assert_eq!((first.new_events, first.duplicates, first.head), (2, 0, 2));
            let again = store
                .ingest(vec![message("m2", 20), message("m3", 30)], 100)
                .await
                .unwrap();
            assert_eq!((again.new_events, again.duplicates, again.head), (1, 1, 3));
        }
        let store = SqliteStore::open(dir.path()).unwrap();
        let events = store.events_after(1, 10).await.unwrap();
        let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [2, 3]);
        assert_eq!(events[1].event, message("m3", 30));
        let rows = store.windows("U").await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].0, "A");
        assert_eq!(rows[0].1.last_inbound_ms, Some(30));
        assert!(store.windows("V").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn window_refusals_are_kept_per_kind_and_pruned_after_7_days() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SqliteStore::open(dir.path()).unwrap();
            store.window_refused("A", "U", 50, false).await.unwrap();
            store.window_refused("A", "U", 60, true).await.unwrap();
            store.window_refused("B", "U", 70, false).await.unwrap();
        }
        let store = SqliteStore::open(dir.path()).unwrap();
        let expected = WindowFacts {
            last_inbound_ms: None,
            standard_refused_ms: Some(50),
            human_agent_refused_ms: Some(60),
        };
        assert_eq!(store.window("A", "U").await.unwrap(), Some(expected));
        let b = store.window("B", "U").await.unwrap().unwrap();
        assert_eq!(b.standard_refused_ms, Some(70));
        let pruned = store.prune(65 + HUMAN_AGENT_MS, 0).await.unwrap();
        assert_eq!(pruned.windows, 1);
        assert_eq!(store.window("A", "U").await.unwrap(), None);
        assert!(store.window("B", "U").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn event_times_ahead_of_our_clock_are_capped() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        store
            .ingest(vec![message("m1", 5_000)], 1_000)
            .await
            .unwrap();
        let facts = store.window("A", "U").await.unwrap().unwrap();
        assert_eq!(facts.last_inbound_ms, Some(1_000));
    }

    #[tokio::test]
    async fn pruning_drops_old_rows_and_remembers_how_far_it_went() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        store.ingest(vec![message("m1", 1)], 100).await.unwrap();
        store.ingest(vec![message("m2", 2)], 200).await.unwrap();
        store.claim_request("r", "f", 0, 0).await.unwrap();
        let now = REQUEST_ID_TTL.as_millis() as i64 + 10;
        let pruned = store.prune(now, 150).await.unwrap();
        assert_eq!((pruned.events, pruned.request_ids), (1, 1));
        assert_eq!(store.bounds().await.unwrap(), (2, 1));
        let kept: Vec<u64> = store
            .events_after(0, 10)
            .await
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(kept, [2]);
        // The dedup key went with the event; the numbering never restarts.
        let re = store.ingest(vec![message("m3", 3)], 300).await.unwrap();
        assert_eq!(re.head, 3);
    }

    #[tokio::test]
    async fn a_committed_delivery_updates_windows_and_subscribers_even_if_nobody_waits() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        let mut feed = store.committed();
        {
            // Polled once (the write is queued), then abandoned, as by a
            // webhook client that hangs up or a store deadline that fires.
            let mut ingest = Box::pin(store.ingest(vec![message("m1", 10)], 100));
            let waker = std::task::Waker::noop();
            let _ = ingest
                .as_mut()
                .poll(&mut std::task::Context::from_waker(waker));
        }
        let published = tokio::time::timeout(std::time::Duration::from_secs(5), feed.recv())
            .await
            .expect("subscribers are told")
            .unwrap();
        assert_eq!(published.seq, 1);
        let facts = store
            .window("A", "U")
            .await
            .unwrap()
            .expect("the mirror knows");
        assert_eq!(facts.last_inbound_ms, Some(10));
    }

    #[tokio::test]
    async fn dedup_keys_outlive_pruned_events() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        store.ingest(vec![message("m1", 10)], 100).await.unwrap();
        let day = 24 * 60 * 60 * 1000;
        // Events older than 7 days go; the key that catches a redelivery stays.
        let pruned = store.prune(100 + 8 * day, 100 + day).await.unwrap();
        assert_eq!(pruned.events, 1);
        let again = store
            .ingest(vec![message("m1", 10)], 100 + 8 * day)
            .await
            .unwrap();
        assert_eq!((again.new_events, again.duplicates), (0, 1));
        // After 30 days the key goes too.
        store.prune(100 + 31 * day, 100 + 24 * day).await.unwrap();
        let late = store
            .ingest(vec![message("m1", 10)], 100 + 31 * day)
            .await
            .unwrap();
        assert_eq!(late.new_events, 1);
    }

    #[tokio::test]
    async fn a_new_message_clears_a_remembered_refusal_whatever_the_clocks_say() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        // Our clock is ahead: the refusal is stamped after the message time.
        store.window_refused("A", "U", 5_000, false).await.unwrap();
        store.window_refused("A", "U", 5_000, true).await.unwrap();
        store
            .ingest(vec![message("m1", 4_000)], 5_100)
            .await
            .unwrap();
        let expected = WindowFacts {
            last_inbound_ms: Some(4_000),
            standard_refused_ms: None,
            human_agent_refused_ms: None,
        };
        assert_eq!(store.window("A", "U").await.unwrap(), Some(expected));
        drop(store);
        let reopened = SqliteStore::open(dir.path()).unwrap();
        assert_eq!(reopened.window("A", "U").await.unwrap(), Some(expected));
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn the_data_directory_and_its_files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("data");
        let store = SqliteStore::open(&dir).unwrap();
        store.ingest(vec![message("m1", 10)], 100).await.unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            assert_eq!(mode(&path), 0o600, "{}", path.display());
        }
    }
}
