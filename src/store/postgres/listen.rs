//! The one connection each replica keeps listening on: it learns of other
//! replicas' commits (events, window changes, refreshed tokens) as they
//! happen, and its health is the store's: when it is lost, the store is
//! taken as unreachable until a new one is listening again.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;

use super::windows::WindowRow;
use super::{EVENTS_CHANNEL, Shared, TOKENS_CHANNEL, WINDOWS_CHANNEL};
use crate::store::StoreError;

/// How long a lost listener waits before connecting again.
pub(super) const RECONNECT_AFTER: Duration = Duration::from_secs(1);

/// How often the listener asks the database whether it is there, and how
/// long it waits for an answer: a database behind a silent network drop
/// sends no error, only nothing.
const PROBE_EVERY: Duration = Duration::from_secs(1);
const ANSWER_TIMEOUT: Duration = Duration::from_secs(3);
const RELOAD_TIMEOUT: Duration = Duration::from_secs(60);

/// Listens, and listens again after every loss, for as long as the
/// process runs.
pub(super) async fn run(shared: std::sync::Arc<Shared>, target: super::connect::Target) {
    loop {
        let result = listen(&shared, &target).await;
        if shared.reachable.send_replace(false) {
            let error = result.err().map(|e| e.to_string()).unwrap_or_default();
            tracing::warn!(%error, "the store cannot be reached; trying again each second");
        }
        tokio::time::sleep(RECONNECT_AFTER).await;
    }
}

/// One listening connection, until it fails.
async fn listen(shared: &Shared, target: &super::connect::Target) -> Result<(), StoreError> {
    let (client, mut connection) = within(
        super::CONNECT_TIMEOUT,
        target.config.connect(target.tls.clone()),
    )
    .await?;
    let (tx, mut messages) = mpsc::unbounded_channel();
    // The connection must be driven for the client's queries to finish;
    // it ends when the client is dropped.
    tokio::spawn(async move {
        let mut stream = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = stream.next().await {
            // An error ends the connection (it would repeat forever).
            let failed = message.is_err();
            if tx.send(message).is_err() || failed {
                break;
            }
        }
    });
    in_time(client.batch_execute(&format!(
        "LISTEN {EVENTS_CHANNEL}; LISTEN {WINDOWS_CHANNEL}; LISTEN {TOKENS_CHANNEL}"
    )))
    .await?;
    // Whatever changed while no one listened: read after LISTEN, so
    // nothing falls between (announcements of rows the reload already
    // has are older versions, and change nothing).
    // The whole table: given longer than a probe.
    let mirror = within(RELOAD_TIMEOUT, super::load_windows(&client)).await?;
    *shared.windows.write().unwrap_or_else(|p| p.into_inner()) = mirror;
    shared.publish.notify_one();
    shared.tokens.send_modify(|n| *n += 1);
    if !shared.reachable.send_replace(true) {
        tracing::info!("the store is reachable");
    }
    let mut probe = tokio::time::interval(PROBE_EVERY);
    loop {
        tokio::select! {
            message = messages.recv() => match message {
                Some(Ok(AsyncMessage::Notification(n))) => match n.channel() {
                    WINDOWS_CHANNEL => match serde_json::from_str::<WindowRow>(n.payload()) {
                        Ok(row) => shared.put_windows(vec![row]),
                        Err(e) => tracing::warn!(error = %e, "an unreadable window announcement"),
                    },
                    TOKENS_CHANNEL => shared.tokens.send_modify(|n| *n += 1),
                    _ => shared.publish.notify_one(),
                },
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => return Err(StoreError::Backend("the connection closed".into())),
            },
            _ = probe.tick() => {
                in_time(client.simple_query("SELECT 1")).await?;
            }
        }
    }
}

/// `call`'s result, unless the database takes longer than
/// [`ANSWER_TIMEOUT`] to give it.
async fn in_time<T>(
    call: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, StoreError> {
    within(ANSWER_TIMEOUT, call).await
}

async fn within<T>(
    limit: Duration,
    call: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(limit, call).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(StoreError::Backend(
            "the database did not answer in time".into(),
        )),
    }
}
