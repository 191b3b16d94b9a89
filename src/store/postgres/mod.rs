//! The shared store: PostgreSQL, for replicas that behave as one gateway.
//!
//! Sequence numbers come from one counter row, bumped inside each ingest
//! transaction: its row lock is held to commit, so transactions take their
//! numbers in the order they commit and a subscriber can never read seq
//! N+1 before N exists; and a rolled-back ingest gives its numbers back, so
//! there are no gaps. Every commit notifies the `events` channel; each
//! replica's publisher reads what is new in seq order and feeds its local
//! subscribers, whichever replica took the events in.

mod schema;

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio::sync::{Notify, broadcast};
use tokio_postgres::{AsyncMessage, NoTls};

use super::{
    Claim, DEDUP_TTL, Ingested, Pruned, REQUEST_ID_TTL, RecordedOutcome, Store, StoreError,
    StoredEvent, TokenRecord, opened_at,
};
use crate::events::{InboundEvent, UnixMs};
use crate::window::{HUMAN_AGENT_MS, WindowFacts};

/// The channel every commit of events is announced on.
const EVENTS_CHANNEL: &str = "messenger_gateway_events";

/// Events a live subscriber may fall behind by before it reads from the
/// store instead.
const FEED_CAPACITY: usize = 16 * 1024;

/// The advisory lock a replica prunes under (any fixed number, distinct
/// from the migrations' lock).
pub(super) const PRUNE_LOCK: i64 = 0x6d73_6778;

/// Events the publisher reads per query while catching up.
const PUBLISH_PAGE: usize = 1024;

pub struct PgStore {
    pool: Pool,
    feed: broadcast::Sender<Arc<StoredEvent>>,
    /// The highest seq fed to local subscribers.
    fed: Arc<AtomicU64>,
    /// Wakes the publisher at once after this replica's own commits.
    publish: Arc<Notify>,
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        StoreError::Backend(e.to_string())
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        StoreError::Backend(e.to_string())
    }
}

impl PgStore {
    /// Connects to `url` (`postgres://…`), brings the schema up to date
    /// (under an advisory lock, so replicas starting together never race),
    /// and starts feeding subscribers.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let config = tokio_postgres::Config::from_str(url)
            .map_err(|e| StoreError::Backend(format!("the store URL: {e}")))?;
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(16)
            .build()
            .map_err(|e| StoreError::Backend(e.to_string()))?;
        {
            let mut client = pool.get().await?;
            schema::migrate(&mut client).await?;
        }
        let head = head(&pool).await?;
        let store = Self {
            pool,
            feed: broadcast::Sender::new(FEED_CAPACITY),
            fed: Arc::new(AtomicU64::new(head)),
            publish: Arc::new(Notify::new()),
        };
        store.start_publisher(config).await?;
        Ok(store)
    }

    /// Listens on the events channel, and on each announcement (or a local
    /// commit) feeds what is new, in seq order. A lost connection is made
    /// again, and what was committed meanwhile is fed on return.
    async fn start_publisher(&self, config: tokio_postgres::Config) -> Result<(), StoreError> {
        let publish = self.publish.clone();
        tokio::spawn(async move {
            loop {
                if let Err(e) = listen(&config, &publish).await {
                    tracing::warn!(error = %e, "the store's event listener lost its connection; connecting again");
                }
                tokio::time::sleep(RECONNECT_AFTER).await;
            }
        });
        let (pool, feed, fed, publish) = (
            self.pool.clone(),
            self.feed.clone(),
            self.fed.clone(),
            self.publish.clone(),
        );
        tokio::spawn(async move {
            loop {
                publish.notified().await;
                if let Err(e) = feed_new(&pool, &feed, &fed).await {
                    tracing::warn!(error = %e, "could not read new events to feed subscribers");
                    // Tried again once the store answers.
                    tokio::time::sleep(RECONNECT_AFTER).await;
                    publish.notify_one();
                }
            }
        });
        Ok(())
    }
}

/// How long the publisher waits before trying the store again.
const RECONNECT_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// One LISTEN connection, until it fails: wakes the publisher on every
/// announcement, and once at the start for what came meanwhile.
async fn listen(config: &tokio_postgres::Config, publish: &Notify) -> Result<(), StoreError> {
    let (listener, mut connection) = config.connect(NoTls).await?;
    let mut messages = std::pin::pin!(futures_util::stream::poll_fn(move |cx| {
        connection.poll_message(cx)
    }));
    let statement = format!("LISTEN {EVENTS_CHANNEL}");
    let subscribe = listener.batch_execute(&statement);
    // The connection must be driven for the LISTEN to complete.
    let mut subscribe = std::pin::pin!(subscribe);
    loop {
        tokio::select! {
            done = &mut subscribe => {
                done?;
                break;
            }
            message = futures_util::StreamExt::next(&mut messages) => match message {
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => return Ok(()),
            },
        }
    }
    publish.notify_one();
    while let Some(message) = futures_util::StreamExt::next(&mut messages).await {
        match message {
            Ok(AsyncMessage::Notification(_)) => publish.notify_one(),
            Ok(_) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Feeds every event above `fed` to local subscribers, in order.
async fn feed_new(
    pool: &Pool,
    feed: &broadcast::Sender<Arc<StoredEvent>>,
    fed: &AtomicU64,
) -> Result<(), StoreError> {
    loop {
        let after = fed.load(Ordering::SeqCst);
        let events = events_after(pool, after, PUBLISH_PAGE).await?;
        let Some(last) = events.last().map(|e| e.seq) else {
            return Ok(());
        };
        for e in events {
            let _ = feed.send(Arc::new(e));
        }
        fed.store(last, Ordering::SeqCst);
    }
}

async fn head(pool: &Pool) -> Result<u64, StoreError> {
    let client = pool.get().await?;
    let row = client
        .query_one("SELECT value FROM meta WHERE key = 'head'", &[])
        .await?;
    Ok(row.get::<_, i64>(0) as u64)
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
impl Store for PgStore {
    async fn ingest(
        &self,
        events: Vec<InboundEvent>,
        received_ms: UnixMs,
    ) -> Result<Ingested, StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let mut done = Ingested {
            new_events: 0,
            duplicates: 0,
            head: 0,
        };
        for event in &events {
            let body =
                serde_json::to_string(event).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let key = event.dedup_key();
            // The same delivery taken in by two replicas at once: one
            // insert wins, the other waits for it and finds a duplicate.
            let fresh = tx
                .execute(
                    "INSERT INTO dedup (key, seen_ms) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                    &[&key, &received_ms],
                )
                .await?;
            if fresh == 0 {
                done.duplicates += 1;
                continue;
            }
            // The counter row's lock orders commits by seq (see above).
            let seq: i64 = tx
                .query_one(
                    "UPDATE meta SET value = value + 1 WHERE key = 'head' RETURNING value",
                    &[],
                )
                .await?
                .get(0);
            tx.execute(
                "INSERT INTO events (seq, dedup_key, received_ms, body) VALUES ($1, $2, $3, $4)",
                &[&seq, &key, &received_ms, &body],
            )
            .await?;
            done.new_events += 1;
            if event.opens_window() {
                tx.execute(
                    "INSERT INTO windows (account, \"user\", last_inbound_ms) VALUES ($1, $2, $3)
                     ON CONFLICT (account, \"user\") DO UPDATE SET last_inbound_ms =
                       GREATEST(COALESCE(windows.last_inbound_ms, 0), excluded.last_inbound_ms),
                       standard_refused_ms = NULL, human_agent_refused_ms = NULL",
                    &[
                        &event.account_id,
                        &event.user_id(),
                        &opened_at(event, received_ms),
                    ],
                )
                .await?;
            }
        }
        if done.new_events > 0 {
            tx.execute("SELECT pg_notify($1, '')", &[&EVENTS_CHANNEL])
                .await?;
        }
        done.head = tx
            .query_one("SELECT value FROM meta WHERE key = 'head'", &[])
            .await?
            .get::<_, i64>(0) as u64;
        tx.commit().await?;
        if done.new_events > 0 {
            self.publish.notify_one();
        }
        Ok(done)
    }

    fn committed(&self) -> broadcast::Receiver<Arc<StoredEvent>> {
        self.feed.subscribe()
    }

    async fn events_after(&self, after: u64, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
        events_after(&self.pool, after, limit).await
    }

    async fn bounds(&self) -> Result<(u64, u64), StoreError> {
        let client = self.pool.get().await?;
        let row = client
            .query_one(
                "SELECT (SELECT value FROM meta WHERE key = 'head'),
                        (SELECT value FROM meta WHERE key = 'pruned_through')",
                &[],
            )
            .await?;
        Ok((row.get::<_, i64>(0) as u64, row.get::<_, i64>(1) as u64))
    }

    async fn windows(&self, user: &str) -> Result<Vec<(String, WindowFacts)>, StoreError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT account, last_inbound_ms, standard_refused_ms, human_agent_refused_ms
                 FROM windows WHERE \"user\" = $1 ORDER BY account",
                &[&user],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| {
                (
                    row.get(0),
                    WindowFacts {
                        last_inbound_ms: row.get(1),
                        standard_refused_ms: row.get(2),
                        human_agent_refused_ms: row.get(3),
                    },
                )
            })
            .collect())
    }

    async fn window_refused(
        &self,
        account: &str,
        user: &str,
        at: UnixMs,
        human_agent: bool,
    ) -> Result<(), StoreError> {
        let column = super::refusal_column(human_agent);
        let client = self.pool.get().await?;
        client
            .execute(
                &format!(
                    "INSERT INTO windows (account, \"user\", {column}) VALUES ($1, $2, $3)
                     ON CONFLICT (account, \"user\") DO UPDATE SET {column} = excluded.{column}"
                ),
                &[&account, &user, &at],
            )
            .await?;
        Ok(())
    }

    async fn claim_request(
        &self,
        id: &str,
        fingerprint: &str,
        now: UnixMs,
    ) -> Result<Claim, StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let inserted = tx
            .execute(
                "INSERT INTO request_ids (id, fingerprint, claimed_ms, outcome)
                 VALUES ($1, $2, $3, NULL) ON CONFLICT (id) DO NOTHING",
                &[&id, &fingerprint, &now],
            )
            .await?;
        if inserted == 1 {
            tx.commit().await?;
            return Ok(Claim::Claimed);
        }
        // Held by another claim: read it under a lock, so two replicas
        // reclaiming an expired id cannot both win.
        let row = tx
            .query_one(
                "SELECT fingerprint, claimed_ms, outcome FROM request_ids WHERE id = $1 FOR UPDATE",
                &[&id],
            )
            .await?;
        let (fp, claimed, outcome): (String, i64, Option<String>) =
            (row.get(0), row.get(1), row.get(2));
        let live_since = now - REQUEST_ID_TTL.as_millis() as i64;
        let claim = if claimed < live_since {
            tx.execute(
                "UPDATE request_ids SET fingerprint = $2, claimed_ms = $3, outcome = NULL
                 WHERE id = $1",
                &[&id, &fingerprint, &now],
            )
            .await?;
            Claim::Claimed
        } else if fp != fingerprint {
            Claim::Conflict
        } else {
            match outcome {
                None => Claim::Unsettled {
                    claimed_ms: claimed,
                },
                Some(outcome) => Claim::Recorded(
                    serde_json::from_str(&outcome)
                        .map_err(|e| StoreError::Corrupt(format!("request id {id}: {e}")))?,
                ),
            }
        };
        tx.commit().await?;
        Ok(claim)
    }

    async fn settle_request(
        &self,
        id: &str,
        outcome: Option<RecordedOutcome>,
    ) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        match outcome {
            Some(outcome) => {
                let json = serde_json::to_string(&outcome)
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                client
                    .execute(
                        "UPDATE request_ids SET outcome = $2 WHERE id = $1",
                        &[&id, &json],
                    )
                    .await?;
            }
            None => {
                client
                    .execute("DELETE FROM request_ids WHERE id = $1", &[&id])
                    .await?;
            }
        }
        Ok(())
    }

    async fn prune(&self, now: UnixMs, events_before: UnixMs) -> Result<Pruned, StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let mut pruned = Pruned::default();
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

    async fn save_token(&self, record: TokenRecord) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        client
            .execute(
                "INSERT INTO tokens (account, configured_sha256, sealed_token, expires_ms, refreshed_ms)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (account) DO UPDATE SET configured_sha256 = $2, sealed_token = $3,
                     expires_ms = $4, refreshed_ms = $5",
                &[
                    &record.account,
                    &record.configured_sha256,
                    &record.sealed_token,
                    &record.expires_ms,
                    &record.refreshed_ms,
                ],
            )
            .await?;
        Ok(())
    }

    fn is_shared(&self) -> bool {
        true
    }

    async fn replicas_alive(&self, me: &str, now: UnixMs) -> Result<u32, StoreError> {
        let client = self.pool.get().await?;
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

    async fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT account, configured_sha256, sealed_token, expires_ms, refreshed_ms FROM tokens",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| TokenRecord {
                account: row.get(0),
                configured_sha256: row.get(1),
                sealed_token: row.get(2),
                expires_ms: row.get(3),
                refreshed_ms: row.get(4),
            })
            .collect())
    }
}
