//! Group commit: every ingest of this replica goes through one writer
//! task, which folds whatever has queued up into a single transaction.
//! Ingests are serialized by the counter row anyway (see the module
//! above); one transaction for many deliveries pays one commit (one
//! fsync, one counter lock) for all of them.

use std::sync::Arc;

use deadpool_postgres::Transaction;
use tokio::sync::{mpsc, oneshot};

use super::windows::WindowRow;
use super::{Shared, WINDOW_COLUMNS, announce, window_row};
use crate::events::{InboundEvent, UnixMs};
use crate::store::{Ingested, StoreError, opened_at};

/// The most deliveries folded into one transaction.
const MAX_BATCH: usize = 256;

/// Deliveries that may wait for the writer.
pub(super) const QUEUE: usize = 4096;

pub(super) struct Job {
    pub events: Vec<InboundEvent>,
    pub received_ms: UnixMs,
    pub done: oneshot::Sender<Result<Ingested, StoreError>>,
}

pub(super) async fn write_loop(shared: Arc<Shared>, mut jobs: mpsc::Receiver<Job>) {
    while let Some(first) = jobs.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let started = std::time::Instant::now();
        match commit(&shared, &batch).await {
            Ok((outcomes, windows, head)) => {
                if let Some(observe) = shared.commits.get() {
                    observe(started.elapsed().as_secs_f64());
                }
                let any_new = outcomes
                    .iter()
                    .any(|o| o.as_ref().is_ok_and(|(new, _)| *new > 0));
                if any_new {
                    shared.put_windows(windows);
                    shared.publish.notify_one();
                }
                for (job, outcome) in batch.into_iter().zip(outcomes) {
                    let _ = job
                        .done
                        .send(outcome.map(|(new_events, duplicates)| Ingested {
                            new_events,
                            duplicates,
                            head,
                        }));
                }
            }
            Err(e) => {
                let message = e.to_string();
                for job in batch {
                    let _ = job.done.send(Err(StoreError::Backend(message.clone())));
                }
            }
        }
    }
}

/// Each delivery's (new, duplicate) counts, the window rows changed, and
/// the head after the commit.
type Committed = (Vec<Result<(usize, usize), StoreError>>, Vec<WindowRow>, u64);

async fn commit(shared: &Shared, batch: &[Job]) -> Result<Committed, StoreError> {
    let mut client = shared.pool.get().await?;
    let tx = client.transaction().await?;
    let mut outcomes = Vec::with_capacity(batch.len());
    let mut windows = Vec::new();
    // Alone, a delivery's failure is the transaction's; in company, it is
    // rolled back alone (a savepoint each) and the others still commit.
    let alone = batch.len() == 1;
    for job in batch {
        if !alone {
            tx.batch_execute("SAVEPOINT job").await?;
        }
        let mut changed = Vec::new();
        let outcome = ingest_one(&tx, &job.events, job.received_ms, &mut changed).await;
        match &outcome {
            Ok(_) => windows.extend(changed),
            Err(_) if alone => return Err(outcome.unwrap_err()),
            Err(_) => tx.batch_execute("ROLLBACK TO job").await?,
        }
        if !alone {
            tx.batch_execute("RELEASE job").await?;
        }
        outcomes.push(outcome);
    }
    if outcomes
        .iter()
        .any(|o| o.as_ref().is_ok_and(|(new, _)| *new > 0))
    {
        announce(&tx, &windows).await?;
    }
    let head = tx
        .query_one("SELECT value FROM meta WHERE key = 'head'", &[])
        .await?
        .get::<_, i64>(0) as u64;
    tx.commit().await?;
    Ok((outcomes, windows, head))
}

/// One delivery's events, in the batch's transaction.
async fn ingest_one(
    tx: &Transaction<'_>,
    events: &[InboundEvent],
    received_ms: UnixMs,
    windows: &mut Vec<WindowRow>,
) -> Result<(usize, usize), StoreError> {
    let (mut new_events, mut duplicates) = (0, 0);
    for event in events {
        let body = serde_json::to_string(event).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let key = event.dedup_key();
        // The same delivery taken in by two replicas at once: one insert
        // wins, the other waits for it and finds a duplicate.
        let fresh = tx
            .execute(
                "INSERT INTO dedup (key, seen_ms) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&key, &received_ms],
            )
            .await?;
        if fresh == 0 {
            duplicates += 1;
            continue;
        }
        // The counter row's lock orders commits by seq (see the module
        // above).
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
        new_events += 1;
        if event.opens_window() {
            let row = tx
                .query_one(
                    &format!(
                        "INSERT INTO windows (account, \"user\", last_inbound_ms, version)
                         VALUES ($1, $2, $3, nextval('window_versions'))
                         ON CONFLICT (account, \"user\") DO UPDATE SET last_inbound_ms =
                           GREATEST(COALESCE(windows.last_inbound_ms, 0), excluded.last_inbound_ms),
                           standard_refused_ms = NULL, human_agent_refused_ms = NULL,
                           version = nextval('window_versions')
                         RETURNING {WINDOW_COLUMNS}"
                    ),
                    &[
                        &event.account_id,
                        &event.user_id(),
                        &opened_at(event, received_ms),
                    ],
                )
                .await?;
            windows.push(window_row(&row));
        }
    }
    Ok((new_events, duplicates))
}
