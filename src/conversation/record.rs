//! The record of what the gateway sent. Each send hands its event over and
//! waits for the commit; one task stores whatever has been handed over
//! meanwhile as one write, so many sends share one store job and one
//! commit, and a send is answered only once it is in the record.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::clock::Clock;
use crate::model::event::InboundEvent;
use crate::store::Store;

/// Sends waiting to be recorded; beyond this a send waits for room.
const QUEUE: usize = 4096;
/// The most events stored in one write.
const GROUP: usize = 512;

type Item = (Box<InboundEvent>, oneshot::Sender<()>);

/// The handle the send path records through.
pub struct Recorder {
    items: mpsc::Sender<Item>,
}

impl Recorder {
    /// Starts the task that stores what is recorded into `store`.
    pub fn start(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Self {
        let (items, rx) = mpsc::channel(QUEUE);
        tokio::spawn(store_in_groups(store, clock, rx));
        Self { items }
    }

    /// Resolves once `event` is committed (or its write failed and was
    /// logged: Graph has the message either way).
    pub async fn record(&self, event: InboundEvent) {
        let (done, committed) = oneshot::channel();
        if self.items.send((Box::new(event), done)).await.is_ok() {
            let _ = committed.await;
        }
    }
}

async fn store_in_groups(
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    mut rx: mpsc::Receiver<Item>,
) {
    let mut items = Vec::with_capacity(GROUP);
    while rx.recv_many(&mut items, GROUP).await > 0 {
        let (events, waiting): (Vec<InboundEvent>, Vec<_>) =
            items.drain(..).map(|(e, done)| (*e, done)).unzip();
        let n = events.len();
        if let Err(e) = store.ingest(events, clock.now_ms()).await {
            tracing::error!(error = %e, lost = n, "could not record sent messages");
        }
        for done in waiting {
            let _ = done.send(());
        }
    }
}
