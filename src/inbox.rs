//! The inbound side's core: storing webhook events, telling subscribers,
//! and answering what the window with a person is. Free of HTTP and protobuf.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::clock::Clock;
use crate::events::{InboundEvent, UnixMs};
use crate::store::{Ingested, Store, StoreError, StoredEvent};
use crate::window::Window;

/// Events read from the store per page, and buffered per subscriber. A slow
/// subscriber fills only its own buffer; intake never waits for it.
const PAGE: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    #[error("events up to {pruned_through} have been pruned; resume from 0 or a later seq")]
    Pruned { pruned_through: u64 },
    #[error("the gateway is shutting down; subscribe again with after = the last seq handled")]
    ShuttingDown,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Inbound events: stored durably, streamed to subscribers, and read back as
/// windows.
pub struct Inbox {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    head: watch::Sender<u64>,
    closing: watch::Sender<bool>,
}

impl Inbox {
    pub async fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Self>, StoreError> {
        let (head, _) = store.bounds().await?;
        Ok(Arc::new(Self {
            store,
            clock,
            head: watch::Sender::new(head),
            closing: watch::Sender::new(false),
        }))
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn now_ms(&self) -> UnixMs {
        self.clock.now_ms()
    }

    /// Durably stores one delivery's events, then wakes subscribers.
    pub async fn ingest(&self, events: Vec<InboundEvent>) -> Result<Ingested, StoreError> {
        let ingested = self.store.ingest(events, self.clock.now_ms()).await?;
        if ingested.new_events > 0 {
            self.head.send_if_modified(|head| {
                let newer = ingested.head > *head;
                *head = (*head).max(ingested.head);
                newer
            });
        }
        Ok(ingested)
    }

    pub async fn window(&self, account: &str, user: &str) -> Result<Window, StoreError> {
        let facts = self.store.window(account, user).await?;
        Ok(Window::evaluate(facts.as_ref(), self.clock.now_ms()))
    }

    /// Events after `after`, then new ones as they are stored, until the
    /// receiver is dropped or the gateway shuts down.
    pub async fn subscribe(
        self: &Arc<Self>,
        after: u64,
    ) -> Result<mpsc::Receiver<Result<StoredEvent, SubscribeError>>, SubscribeError> {
        let (_, pruned_through) = self.store.bounds().await?;
        if after > 0 && after < pruned_through {
            return Err(SubscribeError::Pruned { pruned_through });
        }
        let (tx, rx) = mpsc::channel(PAGE);
        let inbox = self.clone();
        tokio::spawn(async move { inbox.feed(after, tx).await });
        Ok(rx)
    }

    async fn feed(&self, mut cursor: u64, tx: mpsc::Sender<Result<StoredEvent, SubscribeError>>) {
        let mut head = self.head.subscribe();
        let mut closing = self.closing.subscribe();
        loop {
            // Marked seen before reading, so a commit after the read still
            // wakes us.
            head.borrow_and_update();
            let page = match self.store.events_after(cursor, PAGE).await {
                Ok(page) => page,
                Err(e) => {
                    let _ = tx.send(Err(e.into())).await;
                    return;
                }
            };
            // At shutdown the stream ends with UNAVAILABLE, which clients
            // treat as "reconnect", rather than OK, which reads as "done".
            let closed = || {
                let _ = tx.try_send(Err(SubscribeError::ShuttingDown));
            };
            if page.is_empty() {
                tokio::select! {
                    changed = head.changed() => if changed.is_err() { return },
                    _ = closing.wait_for(|c| *c) => return closed(),
                    () = tx.closed() => return,
                }
                continue;
            }
            for event in page {
                cursor = event.seq;
                tokio::select! {
                    sent = tx.send(Ok(event)) => if sent.is_err() { return },
                    _ = closing.wait_for(|c| *c) => return closed(),
                }
            }
        }
    }

    /// Ends every subscription, so shutdown need not wait for them.
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Prunes old rows every `every` until the gateway shuts down.
    pub async fn prune_periodically(self: Arc<Self>, retention: Duration, every: Duration) {
        let mut closing = self.closing.subscribe();
        loop {
            let now = self.clock.now_ms();
            match self
                .store
                .prune(now, now - retention.as_millis() as i64)
                .await
            {
                Ok(p) if p.events + p.request_ids + p.windows > 0 => tracing::info!(
                    events = p.events,
                    request_ids = p.request_ids,
                    windows = p.windows,
                    "pruned old rows"
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "pruning failed"),
            }
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                _ = closing.wait_for(|c| *c) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::events::parse_delivery;
    use crate::store::SqliteStore;

    fn message(mid: &str) -> Vec<InboundEvent> {
        let body = format!(
            r#"{{"entry":[{{"id":"A","time":1,"messaging":[{{"sender":{{"id":"U"}},"recipient":{{"id":"A"}},"timestamp":1,"message":{{"mid":"{mid}","text":"hi"}}}}]}}]}}"#
        );
        parse_delivery(body.as_bytes()).unwrap()
    }

    #[tokio::test]
    async fn resuming_from_a_pruned_seq_is_refused_rather_than_skipping_events() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::at(1_000);
        let store = Arc::new(SqliteStore::open(dir.path()).unwrap());
        let inbox = Inbox::new(store.clone(), Arc::new(clock.clone()))
            .await
            .unwrap();
        inbox.ingest(message("m1")).await.unwrap();
        inbox.ingest(message("m2")).await.unwrap();
        clock.set(2_000);
        inbox.ingest(message("m3")).await.unwrap();
        store.prune(2_000, 1_500).await.unwrap();

        assert!(matches!(
            inbox.subscribe(1).await,
            Err(SubscribeError::Pruned { pruned_through: 2 })
        ));
        for after in [0, 2] {
            let mut events = inbox.subscribe(after).await.unwrap();
            assert_eq!(events.recv().await.unwrap().unwrap().seq, 3);
        }
    }

    #[tokio::test]
    async fn closing_ends_every_subscription() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(dir.path()).unwrap());
        let inbox = Inbox::new(store, Arc::new(ManualClock::at(0)))
            .await
            .unwrap();
        let mut waiting = inbox.subscribe(0).await.unwrap();
        inbox.close();
        let ended = tokio::time::timeout(Duration::from_secs(5), waiting.recv()).await;
        assert!(matches!(ended, Ok(Some(Err(SubscribeError::ShuttingDown)))));
        assert!(waiting.recv().await.is_none());
    }
}
