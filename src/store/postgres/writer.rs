//! Group commit: every ingest of this replica goes through one writer
//! task, which folds whatever has queued up into a single transaction and
//! hands all its events to the database in one call (`ingest_events`, in
//! the schema). Ingests are serialized by the counter row anyway (see the
//! module above); one transaction for many deliveries pays one commit
//! (one fsync, one counter lock) and a few round trips for all of them.

use std::collections::HashSet;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::Shared;
use super::ledger::{self, Slot};
use super::windows::WindowRow;
use crate::clock::UnixMs;
use crate::model::event::InboundEvent;
use crate::store::{Ingested, StoreError, opened_at};

/// The most deliveries folded into one transaction.
const MAX_BATCH: usize = 256;

/// Deliveries that may wait for the writer (each up to a webhook body's
/// size).
pub(super) const QUEUE: usize = 1024;

/// The most one batch may take to commit: past it the batch is answered
/// as failed (503: Meta delivers again; dedup keys make a late commit
/// harmless) and the writer moves on.
const COMMIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

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
        match commit_in_time(&shared, &batch).await {
            Ok(committed) => {
                if let Some(observe) = shared.commits.get() {
                    observe(started.elapsed().as_secs_f64());
                }
                answer(&shared, batch, committed);
            }
            // Alone, a delivery that fails (or a batch's failure, say a
            // deadlock victim) takes no other with it. Not while the
            // database is away (each would wait in vain), nor for a
            // delivery whose sender has already been told 503.
            Err(e) if batch.len() > 1 => {
                for job in batch {
                    if job.done.is_closed() || !*shared.reachable.borrow() {
                        let _ = job.done.send(Err(StoreError::Backend(e.to_string())));
                        continue;
                    }
                    let result = commit_in_time(&shared, std::slice::from_ref(&job)).await;
                    match result {
                        Ok(committed) => answer(&shared, vec![job], committed),
                        Err(e) => {
                            let _ = job.done.send(Err(e));
                        }
                    }
                }
            }
            Err(e) => {
                for job in batch {
                    let _ = job.done.send(Err(StoreError::Backend(e.to_string())));
                }
            }
        }
    }
}

async fn commit_in_time(shared: &Shared, batch: &[Job]) -> Result<Committed, StoreError> {
    match tokio::time::timeout(COMMIT_TIMEOUT, commit(shared, batch)).await {
        Ok(result) => result,
        Err(_) => {
            // Its connection is stuck (a silent network drop, say): the
            // next batch opens a new one rather than queueing behind it.
            shared.writer_pool.retain(|_, _| false);
            Err(StoreError::Backend(
                "the database did not commit in time".into(),
            ))
        }
    }
}

/// Tells each job how its delivery went, and this replica's mirror and
/// subscribers what the batch stored.
fn answer(shared: &Shared, batch: Vec<Job>, (outcomes, windows, head): Committed) {
    let any_new = outcomes
        .iter()
        .any(|o| o.as_ref().is_ok_and(|done| done.new_events > 0));
    if any_new {
        shared.put_windows(windows);
        shared.publish.notify_one();
    }
    for (job, outcome) in batch.into_iter().zip(outcomes) {
        let _ = job.done.send(outcome.map(|done| Ingested { head, ..done }));
    }
}

/// Each delivery's counts (its head set by `answer`), the window rows
/// changed, and the head after the commit.
type Committed = (Vec<Result<Ingested, StoreError>>, Vec<WindowRow>, u64);

/// The batch's events as the columns `ingest_events` takes.
#[derive(Default)]
struct Columns {
    keys: Vec<String>,
    bodies: Vec<String>,
    received: Vec<i64>,
    accounts: Vec<String>,
    users: Vec<String>,
    opened: Vec<Option<i64>>,
}

impl Columns {
    fn push(&mut self, event: &InboundEvent, body: String, received_ms: UnixMs) {
        self.keys.push(event.dedup_key());
        self.bodies.push(body);
        self.received.push(received_ms);
        self.accounts.push(event.account_id.clone());
        self.users.push(event.user_id().to_owned());
        self.opened
            .push(event.opens_window().then(|| opened_at(event, received_ms)));
    }
}

/// One delivery of the batch: its events as they will be stored (an echo
/// that settled a pending send is its `sent` event now), what becomes of
/// each, and how many pending sends it settled.
struct Plan {
    events: Vec<InboundEvent>,
    slots: Vec<Slot>,
    resolved: usize,
    received_ms: UnixMs,
}

async fn commit(shared: &Shared, batch: &[Job]) -> Result<Committed, StoreError> {
    let mut client = shared.writer_pool.get().await?;
    let tx = client.transaction().await?;
    // The counter lock first (`ingest_events` takes it again): what the
    // record looks up below then includes every batch committed before
    // this one, whichever replica took it in.
    tx.execute("SELECT 1 FROM meta WHERE key = 'head' FOR UPDATE", &[])
        .await?;
    let mut columns = Columns::default();
    let mut batch_keys = HashSet::new();
    let mut plans = Vec::with_capacity(batch.len());
    for job in batch {
        let mut events = job.events.clone();
        let (slots, resolved) =
            ledger::before_storing(&tx, &mut events, job.received_ms, &mut batch_keys).await?;
        for (event, slot) in events.iter().zip(&slots) {
            if matches!(slot, Slot::Stored) {
                let body =
                    serde_json::to_string(event).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                columns.push(event, body, job.received_ms);
            }
        }
        plans.push(Plan {
            events,
            slots,
            resolved,
            received_ms: job.received_ms,
        });
    }
    let rows = tx
        .query(
            "SELECT o_seq, o_account, o_user, o_version, o_inbound, o_standard, o_human_agent
             FROM ingest_events($1, $2, $3, $4, $5, $6)",
            &[
                &columns.keys,
                &columns.bodies,
                &columns.received,
                &columns.accounts,
                &columns.users,
                &columns.opened,
            ],
        )
        .await?;
    let mut windows = Vec::new();
    let mut highest: Option<i64> = None;
    let mut rows = rows.iter();
    let mut outcomes = Vec::with_capacity(batch.len());
    let mut new = Vec::new();
    for plan in &plans {
        let mut done = Ingested {
            resolved: plan.resolved,
            ..Ingested::default()
        };
        for (event, slot) in plan.events.iter().zip(&plan.slots) {
            match slot {
                Slot::Duplicate => done.duplicates += 1,
                Slot::Joined => done.joined += 1,
                Slot::Stored => {
                    let Some(row) = rows.next() else {
                        return Err(StoreError::Backend(
                            "ingest_events answered too few rows".into(),
                        ));
                    };
                    let Some(seq) = row.get::<_, Option<i64>>(0) else {
                        done.duplicates += 1;
                        continue;
                    };
                    highest = highest.max(Some(seq));
                    done.new_events += 1;
                    new.push((event, plan.received_ms));
                    if let Some(account) = row.get::<_, Option<String>>(1) {
                        windows.push(WindowRow {
                            account,
                            user: row.get(2),
                            version: row.get(3),
                            last_inbound_ms: row.get(4),
                            standard_refused_ms: row.get(5),
                            human_agent_refused_ms: row.get(6),
                        });
                    }
                }
            }
        }
        outcomes.push(Ok(done));
    }
    ledger::after_storing(&tx, &new).await?;
    // Our counter lock is held to commit: the highest seq we took is the
    // head.
    let head = match highest {
        Some(seq) => seq as u64,
        None => tx
            .query_one("SELECT value FROM meta WHERE key = 'head'", &[])
            .await?
            .get::<_, i64>(0) as u64,
    };
    tx.commit().await?;
    Ok((outcomes, windows, head))
}
