//! The one writer thread: whatever has queued up commits in a single
//! transaction (group commit), each job in a savepoint of its own.

use std::sync::mpsc;

use rusqlite::Connection;

use crate::store::StoreError;

/// The most writes folded into one transaction.
const MAX_BATCH: usize = 512;

/// Told how the transaction that held its job ended.
pub(super) type Finish = Box<dyn FnOnce(Result<(), StoreError>) + Send>;
/// Runs inside the batch's transaction; its finisher runs after the commit.
pub(super) type Job = Box<dyn FnOnce(&Connection) -> Finish + Send>;

/// Runs a statement with no result, prepared once per connection: parsing
/// `SAVEPOINT` and `RELEASE` again for every job cost more than a small
/// insert.
fn run(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([])?;
    Ok(())
}

/// A failed job is rolled back alone; the others in its batch still commit.
pub(super) fn in_savepoint<R>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> Result<R, StoreError>,
) -> Result<R, StoreError> {
    run(conn, "SAVEPOINT job")?;
    let result = f(conn);
    if result.is_err() {
        run(conn, "ROLLBACK TO job")?;
    }
    run(conn, "RELEASE job")?;
    result
}

/// Told how long each commit took.
pub(super) type CommitObserver =
    std::sync::Arc<std::sync::OnceLock<Box<dyn Fn(f64) + Send + Sync>>>;

pub(super) fn write_loop(conn: Connection, jobs: mpsc::Receiver<Job>, observer: CommitObserver) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let begun = run(&conn, "BEGIN IMMEDIATE");
        let finishers: Vec<Finish> = match begun {
            Ok(()) => batch.into_iter().map(|job| job(&conn)).collect(),
            Err(e) => {
                let message = e.to_string();
                drop(batch);
                tracing::error!(error = %message, "the store cannot begin a transaction");
                continue;
            }
        };
        let started = std::time::Instant::now();
        let committed = run(&conn, "COMMIT").map_err(|e| e.to_string());
        if let Some(observe) = observer.get() {
            observe(started.elapsed().as_secs_f64());
        }
        if committed.is_err() {
            let _ = run(&conn, "ROLLBACK");
        }
        for finish in finishers {
            finish(committed.clone().map_err(StoreError::Backend));
        }
    }
}
