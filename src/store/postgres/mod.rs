//! The shared store: PostgreSQL, for replicas that behave as one gateway.
//!
//! Sequence numbers come from one counter row, bumped inside each ingest
//! transaction: its row lock is held to commit, so transactions take their
//! numbers in the order they commit and a subscriber can never read seq
//! N+1 before N exists; and a rolled-back ingest gives its numbers back, so
//! there are no gaps. Every commit notifies the `events` channel; each
//! replica's publisher reads what is new in seq order and feeds its local
//! subscribers, whichever replica took the events in.

mod connect;
mod ledger;
mod listen;
mod requests;
mod schema;
mod tokens;
mod windows;
mod writer;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio::sync::{Notify, broadcast, watch};

use super::{
    Claim, DEDUP_TTL, EventLog, Ingested, Pruned, QUEUED, REQUEST_ID_TTL, RecordedOutcome,
    ReplicaSet, RequestLog, Store, StoreError, StoredEvent, TokenRecord, TokenStore, WindowStore,
};
use crate::clock::UnixMs;
use crate::model::event::InboundEvent;
use crate::model::window::{HUMAN_AGENT_MS, WindowFacts};
use windows::{Mirror, WindowRow};

/// The channels commits are announced on: events, changed window rows
/// (the row as it now is), and refreshed tokens.
const EVENTS_CHANNEL: &str = "messenger_gateway_events";
const WINDOWS_CHANNEL: &str = "messenger_gateway_windows";
const TOKENS_CHANNEL: &str = "messenger_gateway_tokens";

/// Events a live subscriber may fall behind by before it reads from the
/// store instead.
const FEED_CAPACITY: usize = 16 * 1024;

/// The advisory lock a replica prunes under (any fixed number, distinct
/// from the migrations' lock).
pub(super) const PRUNE_LOCK: i64 = 0x6d73_6778;

/// Events the publisher reads per query while catching up.
const PUBLISH_PAGE: usize = 1024;

/// Columns of a windows row, as [`window_row`] reads them.
const WINDOW_COLUMNS: &str =
    "account, \"user\", version, last_inbound_ms, standard_refused_ms, human_agent_refused_ms";

pub struct PgStore {
    shared: Arc<Shared>,
    /// Ingests, to the writer task.
    writes: tokio::sync::mpsc::Sender<writer::Job>,
    /// This replica, as it holds token-refresh leases.
    me: String,
}

/// What the store's own tasks (publisher, listener) share with it.
struct Shared {
    pool: Pool,
    /// The writer's own connection: readers never keep it waiting.
    writer_pool: Pool,
    feed: broadcast::Sender<Arc<StoredEvent>>,
    /// The highest seq fed to local subscribers.
    fed: AtomicU64,
    /// Wakes the publisher: after this replica's own commits, and on
    /// every announcement of others'.
    publish: Notify,
    windows: RwLock<Mirror>,
    reachable: watch::Sender<bool>,
    /// Counts announcements of refreshed tokens.
    tokens: watch::Sender<u64>,
    /// Told how long each ingest commit took.
    commits: std::sync::OnceLock<Box<dyn Fn(f64) + Send + Sync>>,
}

impl Shared {
    fn put_windows(&self, rows: Vec<WindowRow>) {
        let mut mirror = self.windows.write().unwrap_or_else(|p| p.into_inner());
        for row in rows {
            mirror.put(row);
        }
    }
}

fn window_row(row: &tokio_postgres::Row) -> WindowRow {
    WindowRow {
        account: row.get(0),
        user: row.get(1),
        version: row.get(2),
        last_inbound_ms: row.get(3),
        standard_refused_ms: row.get(4),
        human_agent_refused_ms: row.get(5),
    }
}

/// The whole windows table, as a mirror.
async fn load_windows(client: &tokio_postgres::Client) -> Result<Mirror, tokio_postgres::Error> {
    let rows = client
        .query(&format!("SELECT {WINDOW_COLUMNS} FROM windows"), &[])
        .await?;
    Ok(Mirror::from_rows(rows.iter().map(window_row)))
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        StoreError::Backend(with_causes(&e))
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        StoreError::Backend(with_causes(&e))
    }
}

/// An error and what caused it: the client's own words ("db error") name
/// no cause; the server's (say, which pg_hba.conf rule refused us) do.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    // Bounded: some errors name themselves as their own cause.
    for _ in 0..8 {
        let Some(c) = cause else { break };
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

/// How long a connection may take to open: a database that is away must
/// fail a call, not hold it.
pub(super) const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

impl PgStore {
    /// Connects to `url` (`postgres://…`), brings the schema up to date
    /// (under an advisory lock, so replicas starting together never race),
    /// and starts following other replicas' commits.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let mut target = connect::target(url)?;
        if target.config.get_connect_timeout().is_none() {
            target.config.connect_timeout(CONNECT_TIMEOUT);
        }
        let pool = pool_of(&target, 16)?;
        let writer_pool = pool_of(&target, 1)?;
        let (head, windows) = {
            let mut client = pool.get().await?;
            schema::migrate(&mut client).await?;
            let head = client
                .query_one("SELECT value FROM meta WHERE key = 'head'", &[])
                .await?
                .get::<_, i64>(0) as u64;
            (head, load_windows(&client).await?)
        };
        let shared = Arc::new(Shared {
            pool,
            writer_pool,
            feed: broadcast::Sender::new(FEED_CAPACITY),
            fed: AtomicU64::new(head),
            publish: Notify::new(),
            windows: RwLock::new(windows),
            reachable: watch::Sender::new(true),
            tokens: watch::Sender::new(0),
            commits: std::sync::OnceLock::new(),
        });
        let (writes, jobs) = tokio::sync::mpsc::channel(writer::QUEUE);
        tokio::spawn(writer::write_loop(shared.clone(), jobs));
        tokio::spawn(listen::run(shared.clone(), target));
        tokio::spawn(publish(shared.clone()));
        let mut me = [0u8; 8];
        rand::fill(&mut me);
        Ok(Self {
            shared,
            writes,
            me: hex::encode(me),
        })
    }

    /// Has `observe` told how long each ingest commit takes.
    pub fn observe_commits(&self, observe: impl Fn(f64) + Send + Sync + 'static) {
        let _ = self.shared.commits.set(Box::new(observe));
    }
}

/// A pool of up to `size` connections to the target; none is opened yet.
fn pool_of(target: &connect::Target, size: usize) -> Result<Pool, StoreError> {
    let manager = Manager::from_config(
        target.config.clone(),
        target.tls.clone(),
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        .wait_timeout(Some(CONNECT_TIMEOUT))
        .create_timeout(Some(CONNECT_TIMEOUT))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .map_err(|e| StoreError::Backend(e.to_string()))
}

/// On each wake, feeds local subscribers every event not fed yet, in seq
/// order, whichever replica took it in.
async fn publish(shared: Arc<Shared>) {
    loop {
        shared.publish.notified().await;
        if let Err(e) = feed_new(&shared).await {
            tracing::warn!(error = %e, "could not read new events to feed subscribers");
            // Tried again once the store answers.
            tokio::time::sleep(listen::RECONNECT_AFTER).await;
            shared.publish.notify_one();
        }
    }
}

/// Feeds every event above `fed` to local subscribers, in order.
async fn feed_new(shared: &Shared) -> Result<(), StoreError> {
    loop {
        let after = shared.fed.load(Ordering::SeqCst);
        let events = events_after(&shared.pool, after, PUBLISH_PAGE).await?;
        let Some(last) = events.last().map(|e| e.seq) else {
            return Ok(());
        };
        for e in events {
            let _ = shared.feed.send(Arc::new(e));
        }
        shared.fed.store(last, Ordering::SeqCst);
    }
}

async fn events_after(
    pool: &Pool,
    after: u64,
    limit: usize,
) -> Result<Vec<StoredEvent>, StoreError> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT seq, received_ms, body FROM events WHERE seq > $1 ORDER BY seq LIMIT $2",
            &[&(after as i64), &(limit as i64)],
        )
        .await?;
    rows.iter()
        .map(|row| {
            let seq: i64 = row.get(0);
            let event: InboundEvent = serde_json::from_str(row.get::<_, &str>(2))
                .map_err(|e| StoreError::Corrupt(format!("event {seq}: {e}")))?;
            Ok(StoredEvent {
                seq: seq as u64,
                received_ms: row.get(1),
                event,
            })
        })
        .collect()
}

#[async_trait::async_trait]
impl EventLog for PgStore {
    async fn ingest(
        &self,
        events: Vec<InboundEvent>,
        received_ms: UnixMs,
    ) -> Result<Ingested, StoreError> {
        let (done, answer) = tokio::sync::oneshot::channel();
        self.writes
            .send(writer::Job {
                events,
                received_ms,
                done,
            })
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    fn committed(&self) -> broadcast::Receiver<Arc<StoredEvent>> {
        self.shared.feed.subscribe()
    }

    async fn events_after(&self, after: u64, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
        events_after(&self.shared.pool, after, limit).await
    }

    async fn bounds(&self) -> Result<(u64, u64), StoreError> {
        let client = self.shared.pool.get().await?;
        let row = client
            .query_one(
                "SELECT (SELECT value FROM meta WHERE key = 'head'),
                        (SELECT value FROM meta WHERE key = 'pruned_through')",
                &[],
            )
            .await?;
        Ok((row.get::<_, i64>(0) as u64, row.get::<_, i64>(1) as u64))
    }
}

#[async_trait::async_trait]
impl WindowStore for PgStore {
    async fn windows(&self, user: &str) -> Result<Vec<(String, WindowFacts)>, StoreError> {
        // From this replica's mirror: sends go on while the database is
        // away, on what was last known.
        let mirror = self
            .shared
            .windows
            .read()
            .unwrap_or_else(|p| p.into_inner());
        Ok(mirror.get(user))
    }

    async fn window_refused(
        &self,
        account: &str,
        user: &str,
        at: UnixMs,
        human_agent: bool,
    ) -> Result<(), StoreError> {
        let column = super::refusal_column(human_agent);
        let mut client = self.shared.pool.get().await?;
        let tx = client.transaction().await?;
        let row = tx
            .query_one(
                &format!(
                    "INSERT INTO windows (account, \"user\", {column}, version)
                     VALUES ($1, $2, $3, nextval('window_versions'))
                     ON CONFLICT (account, \"user\") DO UPDATE SET {column} = excluded.{column},
                       version = nextval('window_versions')
                     RETURNING {WINDOW_COLUMNS}"
                ),
                &[&account, &user, &at],
            )
            .await?;
        let row = window_row(&row);
        tx.execute(
            "SELECT pg_notify($1, $2)",
            &[
                &WINDOWS_CHANNEL,
                &serde_json::to_string(&row).map_err(|e| StoreError::Corrupt(e.to_string()))?,
            ],
        )
        .await?;
        tx.commit().await?;
        self.shared.put_windows(vec![row]);
        Ok(())
    }
}

#[async_trait::async_trait]
impl ReplicaSet for PgStore {
    async fn replicas_alive(&self, me: &str, now: UnixMs) -> Result<u32, StoreError> {
        let client = self.shared.pool.get().await?;
        client
            .execute(
                "INSERT INTO replicas (id, seen_ms) VALUES ($1, $2)
                 ON CONFLICT (id) DO UPDATE SET seen_ms = GREATEST(replicas.seen_ms, $2)",
                &[&me, &now],
            )
            .await?;
        let since = now - super::REPLICA_TTL.as_millis() as i64;
        client
            .execute("DELETE FROM replicas WHERE seen_ms < $1", &[&since])
            .await?;
        let alive: i64 = client
            .query_one("SELECT count(*) FROM replicas", &[])
            .await?
            .get(0);
        Ok(alive.max(1) as u32)
    }
}

#[async_trait::async_trait]
impl Store for PgStore {
    async fn prune(&self, now: UnixMs, events_before: UnixMs) -> Result<Pruned, StoreError> {
        let mut client = self.shared.pool.get().await?;
        let tx = client.transaction().await?;
        let mut pruned = Pruned::default();
        // Every replica forgets, in its mirror, the rows the table loses.
        self.shared
            .windows
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .prune(now - HUMAN_AGENT_MS);
        // One replica prunes at a time; the others find the work taken.
        let ours: bool = tx
            .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&PRUNE_LOCK])
            .await?
            .get(0);
        if !ours {
            return Ok(pruned);
        }
        let last: Option<i64> = tx
            .query_one(
                "SELECT MAX(seq) FROM events WHERE received_ms < $1",
                &[&events_before],
            )
            .await?
            .get(0);
        if let Some(last) = last {
            pruned.events = tx
                .execute("DELETE FROM events WHERE seq <= $1", &[&last])
                .await? as usize;
            tx.execute(
                "UPDATE meta SET value = GREATEST(value, $1) WHERE key = 'pruned_through'",
                &[&last],
            )
            .await?;
        }
        // Meta redelivers for up to 36 hours: the keys that catch
        // redeliveries outlive the events they stand for.
        tx.execute(
            "DELETE FROM dedup WHERE seen_ms < $1",
            &[&events_before.min(now - DEDUP_TTL.as_millis() as i64)],
        )
        .await?;
        pruned.request_ids = tx
            .execute(
                "DELETE FROM request_ids WHERE claimed_ms < $1",
                &[&(now - REQUEST_ID_TTL.as_millis() as i64)],
            )
            .await? as usize;
        ledger::prune(&tx, events_before).await?;
        // Past 7 days nothing here can reopen or narrow a window.
        pruned.windows = tx
            .execute(
                "DELETE FROM windows WHERE GREATEST(COALESCE(last_inbound_ms, 0),
                   COALESCE(standard_refused_ms, 0), COALESCE(human_agent_refused_ms, 0)) < $1",
                &[&(now - HUMAN_AGENT_MS)],
            )
            .await? as usize;
        tx.commit().await?;
        Ok(pruned)
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn reachable(&self) -> watch::Receiver<bool> {
        self.shared.reachable.subscribe()
    }
}
