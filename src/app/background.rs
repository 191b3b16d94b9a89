//! The loops a gateway runs beside serving: sharing each account's pace
//! among replicas, and counting stored events.

use std::sync::Arc;
use std::time::Duration;

use crate::accounts::Registry;
use crate::clock::{Clock, SystemClock};
use crate::metrics::Metrics;
use crate::store::Store;

/// How often a replica on a shared store says it is alive and counts the
/// others.
const REPLICA_HEARTBEAT: Duration = Duration::from_secs(1);

/// On a shared store: every second, says this replica is alive and splits
/// each account's pace among the replicas alive, so that together they
/// keep to the account's one budget. A replica that dies stops saying so,
/// and within a few seconds the others take its share.
pub async fn share_the_pace(store: Arc<dyn Store>, accounts: Arc<Registry>) {
    let me = format!("{:016x}", rand::random::<u64>());
    let mut tick = tokio::time::interval(REPLICA_HEARTBEAT);
    loop {
        tick.tick().await;
        // Wall time, not the settings' clock: other processes read it.
        let now = SystemClock.now_ms();
        match store.replicas_alive(&me, now).await {
            Ok(replicas) => {
                for path in accounts.entries() {
                    if let Some(pacer) = path.pacer() {
                        pacer.set_share(replicas);
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not count the replicas alive"),
        }
    }
}

/// Counts each event as it is committed, by account and kind; events for
/// accounts not configured share one label, so a payload cannot mint
/// series. A burst this task falls behind on is skipped, not counted twice.
pub async fn count_stored_events(
    store: Arc<dyn Store>,
    accounts: Arc<Registry>,
    metrics: Arc<Metrics>,
) {
    let mut feed = store.committed();
    loop {
        match feed.recv().await {
            Ok(e) => {
                let account = match accounts.by_id(&e.event.account_id) {
                    Some(_) => e.event.account_id.as_str(),
                    None => "unconfigured",
                };
                metrics.event_stored(account, e.event.kind.name())
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}
