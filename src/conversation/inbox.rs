//! The inbound side's core: storing webhook events, telling subscribers,
//! and answering what the window with a person is. Free of HTTP and protobuf.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::clock::Clock;
use crate::clock::UnixMs;
use crate::conversation::record::Recorder;
use crate::model::event::InboundEvent;
use crate::model::window::{Window, WindowFacts};
use crate::store::{Ingested, Store, StoreError, StoredEvent};

/// Events read from the store per page, and buffered per subscriber. A slow
/// subscriber fills only its own buffer; intake never waits for it.
/// Events one subscriber may have waiting for it, and the most a replay
/// reads from the store at once. Live events are shared by every
/// subscriber; replayed ones are each subscriber's own.
pub const SUBSCRIBER_QUEUE: usize = 64;
/// How long a failed write keeps the gateway "not ready".
const WRITE_FAILURE_HOLD: Duration = Duration::from_secs(30);
/// Event times more than this ahead of arrival are taken as arrival time.
const MAX_AHEAD_MS: i64 = 24 * 60 * 60 * 1000;
/// The times an event may carry: from 2010 (see `EARLIEST_MS`) to the end
/// of what a protobuf Timestamp holds (9999-12-31).
const TIMESTAMP_RANGE_MS: std::ops::RangeInclusive<i64> =
    crate::model::event::EARLIEST_MS..=253_402_300_799_999;

#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    #[error("events up to {pruned_through} have been pruned; resume from 0 or a later seq")]
    Pruned { pruned_through: u64 },
    #[error(
        "after = {after} is beyond the newest event ({head}); resume from a seq this gateway gave"
    )]
    BeyondHead { after: u64, head: u64 },
    #[error("{max} subscriptions are open already; try again later")]
    TooMany { max: usize },
    #[error("the gateway is shutting down; subscribe again with after = the last seq handled")]
    ShuttingDown,
    #[error("the API key of this subscription was revoked")]
    Revoked,
    #[error(
        "the subscriber took no event for {} s while {SUBSCRIBER_QUEUE} waited; subscribe again with after = {last_seq}",
        .stalled.as_secs()
    )]
    TooSlow { last_seq: u64, stalled: Duration },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Which events a subscriber may see.
pub type EventFilter = Box<dyn Fn(&InboundEvent) -> bool + Send + Sync>;
/// Resolves when a subscription must end because its caller lost the right.
pub type Revocation = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;
/// The events of one subscription, then (maybe) why it ended. The ending
/// overtakes buffered events: a revoked key gets no more of them, and a
/// client at shutdown learns to reconnect rather than reading "done".
pub struct Subscription {
    events: mpsc::Receiver<Arc<StoredEvent>>,
    ended: Option<oneshot::Receiver<SubscribeError>>,
    /// The seq of the last event this stream gave out: where a subscriber
    /// ended as too slow resumes (what was queued behind it is dropped).
    delivered: u64,
}

impl Subscription {
    /// The next event, or the error that ended the stream, or `None`.
    pub async fn recv(&mut self) -> Option<Result<Arc<StoredEvent>, SubscribeError>> {
        std::future::poll_fn(|cx| self.poll_next(cx)).await
    }

    fn poll_next(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Arc<StoredEvent>, SubscribeError>>> {
        use std::task::Poll;
        if let Some(ended) = &mut self.ended {
            match std::pin::Pin::new(ended).poll(cx) {
                Poll::Ready(Ok(e)) => {
                    self.ended = None;
                    self.events.close();
                    let e = match e {
                        SubscribeError::TooSlow { stalled, .. } => SubscribeError::TooSlow {
                            last_seq: self.delivered,
                            stalled,
                        },
                        e => e,
                    };
                    return Poll::Ready(Some(Err(e)));
                }
                // The feed stopped without a reason: what is buffered still counts.
                Poll::Ready(Err(_)) => self.ended = None,
                Poll::Pending => {}
            }
        }
        let next = self.events.poll_recv(cx);
        if let Poll::Ready(Some(e)) = &next {
            self.delivered = e.seq;
        }
        next.map(|e| e.map(Ok))
    }
}

impl tokio_stream::Stream for Subscription {
    type Item = Result<Arc<StoredEvent>, SubscribeError>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.get_mut().poll_next(cx)
    }
}

/// Inbound events: stored durably, streamed to subscribers, and read back as
/// windows.
pub struct Inbox {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    closing: watch::Sender<bool>,
    max_subscribers: usize,
    /// How long a subscriber may take no event while its queue is full.
    stall_timeout: Duration,
    subscribers: Arc<AtomicUsize>,
    /// When the last write failed, if the last write failed.
    write_failed_at: std::sync::Mutex<Option<std::time::Instant>>,
    /// Each live subscription's position, for the lag metric.
    positions: std::sync::Mutex<Vec<std::sync::Weak<AtomicU64>>>,
    /// Stores what the gateway sent, many sends to a write.
    recorder: Recorder,
}

impl Inbox {
    pub const DEFAULT_MAX_SUBSCRIBERS: usize = 10_000;
    pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(30);

    pub async fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        max_subscribers: usize,
        stall_timeout: Duration,
    ) -> Result<Arc<Self>, StoreError> {
        store.bounds().await?;
        let recorder = Recorder::start(store.clone(), clock.clone());
        Ok(Arc::new(Self {
            store,
            clock,
            closing: watch::Sender::new(false),
            max_subscribers,
            stall_timeout,
            subscribers: Arc::new(AtomicUsize::new(0)),
            write_failed_at: std::sync::Mutex::default(),
            positions: std::sync::Mutex::default(),
            recorder,
        }))
    }

    /// How many events the furthest-behind subscriber has still to take.
    pub async fn largest_subscriber_lag(&self) -> u64 {
        let Ok((head, _)) = self.store.bounds().await else {
            return 0;
        };
        let positions = self.positions.lock().unwrap_or_else(|p| p.into_inner());
        positions
            .iter()
            .filter_map(std::sync::Weak::upgrade)
            .map(|p| head.saturating_sub(p.load(Ordering::Relaxed)))
            .max()
            .unwrap_or(0)
    }

    /// `Subscribe` streams open now.
    pub fn subscribers(&self) -> usize {
        self.subscribers.load(Ordering::Relaxed)
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn now_ms(&self) -> UnixMs {
        self.clock.now_ms()
    }

    /// Durably stores one delivery's events. Subscribers are woken and
    /// windows updated by the commit itself, not by this future, so they
    /// happen even if the caller stops waiting.
    pub async fn ingest(&self, mut events: Vec<InboundEvent>) -> Result<Ingested, StoreError> {
        let now = self.clock.now_ms();
        for e in &mut events {
            let ahead = e.timestamp_ms.saturating_sub(now);
            // 0: the delivery gave no usable time at all.
            if ahead > MAX_AHEAD_MS || !TIMESTAMP_RANGE_MS.contains(&e.timestamp_ms) {
                if e.original_timestamp_ms.is_none() && e.timestamp_ms != 0 {
                    e.original_timestamp_ms = Some(e.timestamp_ms);
                }
                e.timestamp_ms = now;
            }
        }
        let stored = self.store.ingest(events, now).await;
        // Remembered for /readyz: a store that answers but cannot write
        // (a full disk) makes every webhook a 503.
        let mut failed = self
            .write_failed_at
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *failed = match &stored {
            Ok(_) => None,
            Err(_) => Some(std::time::Instant::now()),
        };
        stored
    }

    /// Records an event of the gateway's own (a message or reaction Graph
    /// accepted) in the stream, committed with the others recorded
    /// meanwhile (see [`Recorder`]), before the send is answered: a send
    /// acknowledged is in the record, ahead of any later event. A
    /// failed write is logged, not the send's failure (Graph has it), and
    /// not a reason to refuse webhooks (`/readyz` follows those writes).
    pub async fn record(&self, event: InboundEvent) {
        self.recorder.record(event).await
    }

    /// Whether the last write went through, or failed long enough ago to
    /// be worth trying again (a probe that stayed "not ready" would keep
    /// away the traffic that shows the store mended).
    pub fn store_writable(&self) -> bool {
        self.write_failed_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none_or(|at| at.elapsed() >= WRITE_FAILURE_HOLD)
    }

    pub async fn window(&self, account: &str, user: &str) -> Result<Window, StoreError> {
        let rows = self.store.windows(user).await?;
        let facts = WindowFacts::of_account(account, &rows);
        Ok(Window::evaluate(facts.as_ref(), self.clock.now_ms()))
    }

    /// Events after `after` that pass `filter`, then new ones as they are
    /// committed, until the receiver is dropped, the gateway shuts down or
    /// `revoked` resolves. Live events come from the commit feed, shared by
    /// every subscriber; the store is read only to catch up.
    pub async fn subscribe(
        self: &Arc<Self>,
        after: u64,
        filter: EventFilter,
        revoked: Revocation,
    ) -> Result<Subscription, SubscribeError> {
        let slot = SubscriberSlot::take(&self.subscribers, self.max_subscribers).ok_or(
            SubscribeError::TooMany {
                max: self.max_subscribers,
            },
        )?;
        // Joined before reading, so no event falls between the two.
        let live = self.store.committed();
        let (head, pruned_through) = self.store.bounds().await?;
        if after > head {
            return Err(SubscribeError::BeyondHead { after, head });
        }
        if after > 0 && after < pruned_through {
            return Err(SubscribeError::Pruned { pruned_through });
        }
        let (tx, rx) = mpsc::channel(SUBSCRIBER_QUEUE);
        let (end, ended) = oneshot::channel();
        let inbox = self.clone();
        let position = Arc::new(AtomicU64::new(after));
        {
            let mut positions = self.positions.lock().unwrap_or_else(|p| p.into_inner());
            positions.retain(|p| p.strong_count() > 0);
            positions.push(Arc::downgrade(&position));
        }
        tokio::spawn(async move {
            let _slot = slot;
            let mut closing = inbox.closing.subscribe();
            let mut reachable = inbox.store.reachable();
            let feed = Feed {
                store: &inbox.store,
                filter,
                tx: &tx,
                position: &position,
                stall: inbox.stall_timeout,
            };
            let ended = tokio::select! {
                ended = feed.run(after, after < head, live) => ended,
                () = revoked => Some(SubscribeError::Revoked),
                // At shutdown the stream ends with UNAVAILABLE, which clients
                // treat as "reconnect", rather than OK, which reads as "done".
                _ = closing.wait_for(|c| *c) => Some(SubscribeError::ShuttingDown),
                // Events taken in by other replicas meanwhile would not
                // reach this stream: it ends, and the client resumes.
                Ok(_) = reachable.wait_for(|r| !*r) => Some(SubscribeError::Store(StoreError::Unreachable)),
            };
            if let Some(e) = ended {
                let _ = end.send(e);
            }
        });
        Ok(Subscription {
            events: rx,
            ended: Some(ended),
            delivered: after,
        })
    }

    /// Whether the store answers now.
    pub fn store_reachable(&self) -> bool {
        *self.store.reachable().borrow()
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

/// One subscriber's delivery loop.
struct Feed<'a> {
    store: &'a Arc<dyn Store>,
    filter: EventFilter,
    tx: &'a mpsc::Sender<Arc<StoredEvent>>,
    /// The last seq handed to the subscriber (or filtered out).
    position: &'a AtomicU64,
    stall: Duration,
}

/// How feeding a subscriber stopped: `Err(None)`, it went; `Err(Some)`, the
/// stream ends with that error.
type Fed = Result<(), Option<SubscribeError>>;

impl Feed<'_> {
    /// Runs until the subscriber goes (`None`) or the stream must end.
    /// `behind`: stored events are due before live ones. A subscriber at
    /// the head costs no store read at all.
    async fn run(
        &self,
        cursor: u64,
        behind: bool,
        live: broadcast::Receiver<Arc<StoredEvent>>,
    ) -> Option<SubscribeError> {
        self.feed(cursor, behind, live).await.err().flatten()
    }

    async fn feed(
        &self,
        mut cursor: u64,
        behind: bool,
        mut live: broadcast::Receiver<Arc<StoredEvent>>,
    ) -> Fed {
        if behind {
            self.catch_up(&mut cursor).await?;
        }
        loop {
            let event = tokio::select! {
                e = live.recv() => e,
                () = self.tx.closed() => return Err(None),
            };
            match event {
                Ok(e) if e.seq <= cursor => {}
                // A gap in the live feed (events a replica's publisher
                // never saw, say, pruned first): the store says what they
                // were, or that they are gone.
                Ok(e) if e.seq > cursor + 1 => {
                    self.catch_up(&mut cursor).await?;
                    // Everything up to it was pruned meanwhile.
                    if cursor < e.seq {
                        return Err(Some(SubscribeError::Pruned {
                            pruned_through: e.seq - 1,
                        }));
                    }
                }
                Ok(e) => {
                    cursor = e.seq;
                    self.send(e).await?;
                }
                Err(broadcast::error::RecvError::Lagged(_)) => self.catch_up(&mut cursor).await?,
                Err(broadcast::error::RecvError::Closed) => return Err(None),
            }
        }
    }

    /// Reads stored events after `cursor` until none are left, a page at a
    /// time, and each page only once the subscriber has room for all of it:
    /// a stalled subscriber holds its queue and no more.
    async fn catch_up(&self, cursor: &mut u64) -> Fed {
        loop {
            // Pruning may have overtaken a slow subscriber: say so rather
            // than skip what it never saw.
            match self.store.bounds().await {
                Ok((_, pruned_through)) if *cursor > 0 && pruned_through > *cursor => {
                    return Err(Some(SubscribeError::Pruned { pruned_through }));
                }
                Ok(_) => {}
                Err(e) => return Err(Some(e.into())),
            }
            let mut room = match tokio::time::timeout(
                self.stall,
                self.tx.reserve_many(SUBSCRIBER_QUEUE),
            )
            .await
            {
                Ok(Ok(room)) => room,
                Ok(Err(_)) => return Err(None),
                Err(_) => return Err(Some(self.too_slow())),
            };
            let page = match self.store.events_after(*cursor, SUBSCRIBER_QUEUE).await {
                Ok(page) => page,
                Err(e) => return Err(Some(e.into())),
            };
            // Pruned between the check above and this read.
            if *cursor > 0
                && let Some(first) = page.first()
                && first.seq > *cursor + 1
            {
                return Err(Some(SubscribeError::Pruned {
                    pruned_through: first.seq - 1,
                }));
            }
            let full = page.len() == SUBSCRIBER_QUEUE;
            for event in page {
                *cursor = event.seq;
                if (self.filter)(&event.event) {
                    // One place was reserved for each event of the page.
                    if let Some(place) = room.next() {
                        place.send(Arc::new(event));
                    }
                }
                self.position.store(*cursor, Ordering::Relaxed);
            }
            if !full {
                return Ok(());
            }
        }
    }

    /// Hands one live event over, waiting at most `stall` for room.
    async fn send(&self, event: Arc<StoredEvent>) -> Fed {
        let seq = event.seq;
        if (self.filter)(&event.event) {
            match tokio::time::timeout(self.stall, self.tx.send(event)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(None),
                Err(_) => return Err(Some(self.too_slow())),
            }
        }
        self.position.store(seq, Ordering::Relaxed);
        Ok(())
    }

    /// The stream knows the last seq it gave out; it fills that in.
    fn too_slow(&self) -> SubscribeError {
        crate::refusals::log(|| {
            tracing::warn!(
                stalled_s = self.stall.as_secs(),
                "a subscriber took no event while its queue was full: its stream is ended"
            )
        });
        SubscribeError::TooSlow {
            last_seq: 0,
            stalled: self.stall,
        }
    }
}

/// One of `max` subscription slots, given back on drop.
struct SubscriberSlot(Arc<AtomicUsize>);

impl SubscriberSlot {
    fn take(count: &Arc<AtomicUsize>, max: usize) -> Option<Self> {
        count
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Self(count.clone()))
    }
}

impl Drop for SubscriberSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::conversation::payload::parse_delivery;
    use crate::store::{
        EventLog, ReplicaSet, RequestLog, SendLedger, SendRecord, SqliteStore, TokenStore,
        WindowStore,
    };

    fn message(mid: &str) -> Vec<InboundEvent> {
        vec![crate::store::contract::message(mid, 1)]
    }

    fn everything() -> EventFilter {
        Box::new(|_| true)
    }

    fn never() -> Revocation {
        Box::pin(std::future::pending())
    }

    /// An inbox on `store` with the default stall timeout.
    async fn inbox_on(
        store: Arc<dyn Store>,
        clock: &ManualClock,
        max_subscribers: usize,
    ) -> Arc<Inbox> {
        Inbox::new(
            store,
            Arc::new(clock.clone()),
            max_subscribers,
            Inbox::DEFAULT_STALL_TIMEOUT,
        )
        .await
        .unwrap()
    }

    async fn inbox_at(now: i64, max_subscribers: usize) -> (Arc<Inbox>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(dir.path()).unwrap());
        let inbox = inbox_on(store, &ManualClock::at(now), max_subscribers).await;
        (inbox, dir)
    }

    /// SQLite, with a live feed the test writes itself.
    struct HandFed {
        inner: SqliteStore,
        live: broadcast::Sender<Arc<StoredEvent>>,
        /// Says nothing was pruned, as a read taken just before a prune.
        stale_bounds: bool,
    }

    /// The event log is the one under test; the other roles pass through.
    #[async_trait::async_trait]
    impl EventLog for HandFed {
        async fn ingest(&self, e: Vec<InboundEvent>, at: UnixMs) -> Result<Ingested, StoreError> {
            self.inner.ingest(e, at).await
        }
        fn committed(&self) -> broadcast::Receiver<Arc<StoredEvent>> {
            self.live.subscribe()
        }
        async fn events_after(&self, after: u64, n: usize) -> Result<Vec<StoredEvent>, StoreError> {
            self.inner.events_after(after, n).await
        }
        async fn bounds(&self) -> Result<(u64, u64), StoreError> {
            let (head, pruned) = self.inner.bounds().await?;
            Ok((head, if self.stale_bounds { 0 } else { pruned }))
        }
    }

    #[async_trait::async_trait]
    impl WindowStore for HandFed {
        async fn windows(&self, user: &str) -> Result<Vec<(String, WindowFacts)>, StoreError> {
            self.inner.windows(user).await
        }
        async fn window_refused(
            &self,
            a: &str,
            u: &str,
            at: UnixMs,
            h: bool,
        ) -> Result<(), StoreError> {
            self.inner.window_refused(a, u, at, h).await
        }
    }

    #[async_trait::async_trait]
    impl RequestLog for HandFed {
        async fn claim_request(
            &self,
            id: &str,
            f: &str,
            now: UnixMs,
            before: UnixMs,
        ) -> Result<crate::store::Claim, StoreError> {
            self.inner.claim_request(id, f, now, before).await
        }
        async fn start_request(&self, id: &str, token: UnixMs) -> Result<bool, StoreError> {
            self.inner.start_request(id, token).await
        }
        async fn request_state(
            &self,
            id: &str,
            now: UnixMs,
        ) -> Result<Option<crate::store::Claim>, StoreError> {
            self.inner.request_state(id, now).await
        }
        async fn settle_request(
            &self,
            id: &str,
            token: UnixMs,
            o: Option<crate::store::RecordedOutcome>,
        ) -> Result<(), StoreError> {
            self.inner.settle_request(id, token, o).await
        }
    }

    #[async_trait::async_trait]
    impl SendLedger for HandFed {
        async fn keep_send(&self, r: SendRecord) -> Result<(), StoreError> {
            self.inner.keep_send(r).await
        }
        async fn send_by_id(&self, id: &str) -> Result<Option<SendRecord>, StoreError> {
            self.inner.send_by_id(id).await
        }
        async fn send_by_request(&self, s: &str) -> Result<Option<SendRecord>, StoreError> {
            self.inner.send_by_request(s).await
        }
        async fn expire_sends(&self, now: UnixMs) -> Result<usize, StoreError> {
            self.inner.expire_sends(now).await
        }
        async fn message(
            &self,
            a: &str,
            mid: &str,
        ) -> Result<Option<crate::store::MessageRecord>, StoreError> {
            self.inner.message(a, mid).await
        }
    }

    #[async_trait::async_trait]
    impl TokenStore for HandFed {
        async fn save_token(&self, r: crate::store::TokenRecord) -> Result<(), StoreError> {
            self.inner.save_token(r).await
        }
        async fn tokens(&self) -> Result<Vec<crate::store::TokenRecord>, StoreError> {
            self.inner.tokens().await
        }
    }

    impl ReplicaSet for HandFed {}

    #[async_trait::async_trait]
    impl Store for HandFed {
        async fn prune(
            &self,
            now: UnixMs,
            before: UnixMs,
        ) -> Result<crate::store::Pruned, StoreError> {
            self.inner.prune(now, before).await
        }
    }

    /// An inbox on a hand-fed store in `dir`, on `clock`.
    async fn hand_fed(
        dir: &tempfile::TempDir,
        clock: &ManualClock,
        stale_bounds: bool,
    ) -> (Arc<Inbox>, Arc<HandFed>) {
        let store = Arc::new(HandFed {
            inner: SqliteStore::open(dir.path()).unwrap(),
            live: broadcast::Sender::new(16),
            stale_bounds,
        });
        let inbox = inbox_on(store.clone(), clock, 10).await;
        (inbox, store)
    }

    #[tokio::test]
    async fn a_gap_in_the_live_feed_is_filled_from_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let (inbox, store) = hand_fed(&dir, &ManualClock::at(1_000), false).await;
        let mut sub = inbox.subscribe(0, everything(), never()).await.unwrap();
        for mid in ["m1", "m2", "m3"] {
            inbox.ingest(message(mid)).await.unwrap();
        }
        // The live feed skips seq 2.
        for e in store.inner.events_after(0, 10).await.unwrap() {
            if e.seq != 2 {
                store.live.send(Arc::new(e)).unwrap();
            }
        }
        for seq in 1..=3 {
            let e = tokio::time::timeout(Duration::from_secs(5), sub.recv())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            assert_eq!(e.seq, seq);
        }
    }

    #[tokio::test]
    async fn events_pruned_between_the_check_and_the_read_are_not_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::at(1_000);
        let (inbox, store) = hand_fed(&dir, &clock, true).await;
        inbox.ingest(message("m1")).await.unwrap();
        inbox.ingest(message("m2")).await.unwrap();
        clock.set(2_000);
        inbox.ingest(message("m3")).await.unwrap();
        store.inner.prune(2_000, 1_500).await.unwrap();
        let mut sub = inbox.subscribe(1, everything(), never()).await.unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(5), sub.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(
            matches!(ended, Err(SubscribeError::Pruned { pruned_through: 2 })),
            "{ended:?}"
        );
    }

    #[tokio::test]
    async fn a_live_event_past_a_gap_the_store_no_longer_holds_ends_the_stream_as_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let (inbox, store) = hand_fed(&dir, &ManualClock::at(1_000), true).await;
        inbox.ingest(message("m1")).await.unwrap();
        let mut sub = inbox.subscribe(1, everything(), never()).await.unwrap();
        inbox.ingest(message("m2")).await.unwrap();
        inbox.ingest(message("m3")).await.unwrap();
        let third = store.inner.events_after(2, 1).await.unwrap().remove(0);
        // Everything is pruned before this replica's feed hears of m3.
        store.inner.prune(5_000, 5_000).await.unwrap();
        store.live.send(Arc::new(third)).unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(5), sub.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(
            matches!(ended, Err(SubscribeError::Pruned { pruned_through: 2 })),
            "{ended:?}"
        );
    }

    #[tokio::test]
    async fn resuming_from_a_pruned_seq_is_refused_rather_than_skipping_events() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::at(1_000);
        let store = Arc::new(SqliteStore::open(dir.path()).unwrap());
        let inbox = inbox_on(store.clone(), &clock, 10).await;
        inbox.ingest(message("m1")).await.unwrap();
        inbox.ingest(message("m2")).await.unwrap();
        clock.set(2_000);
        inbox.ingest(message("m3")).await.unwrap();
        store.prune(2_000, 1_500).await.unwrap();

        assert!(matches!(
            inbox.subscribe(1, everything(), never()).await,
            Err(SubscribeError::Pruned { pruned_through: 2 })
        ));
        for after in [0, 2] {
            let mut events = inbox.subscribe(after, everything(), never()).await.unwrap();
            assert_eq!(events.recv().await.unwrap().unwrap().seq, 3);
        }
    }

    #[tokio::test]
    async fn closing_ends_every_subscription() {
        let (inbox, _dir) = inbox_at(0, 10).await;
        let mut waiting = inbox.subscribe(0, everything(), never()).await.unwrap();
        inbox.close();
        let ended = tokio::time::timeout(Duration::from_secs(5), waiting.recv()).await;
        assert!(matches!(ended, Ok(Some(Err(SubscribeError::ShuttingDown)))));
        assert!(waiting.recv().await.is_none());
    }

    #[tokio::test]
    async fn a_resume_point_beyond_the_head_is_refused() {
        let (inbox, _dir) = inbox_at(1_000, 10).await;
        inbox.ingest(message("m1")).await.unwrap();
        assert!(matches!(
            inbox.subscribe(2, everything(), never()).await,
            Err(SubscribeError::BeyondHead { after: 2, head: 1 })
        ));
        assert!(inbox.subscribe(1, everything(), never()).await.is_ok());
    }

    #[tokio::test]
    async fn subscriptions_beyond_the_limit_are_refused_until_one_ends() {
        let (inbox, _dir) = inbox_at(1_000, 2).await;
        let a = inbox.subscribe(0, everything(), never()).await.unwrap();
        let _b = inbox.subscribe(0, everything(), never()).await.unwrap();
        assert!(matches!(
            inbox.subscribe(0, everything(), never()).await,
            Err(SubscribeError::TooMany { max: 2 })
        ));
        drop(a);
        tokio::time::timeout(Duration::from_secs(5), async {
            while inbox.subscribe(0, everything(), never()).await.is_err() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the slot came back");
    }

    #[tokio::test]
    async fn live_events_are_filtered_and_a_revocation_ends_the_stream() {
        let (inbox, _dir) = inbox_at(1_000, 10).await;
        let (revoke, revoked) = tokio::sync::oneshot::channel::<()>();
        let only_m2: EventFilter = Box::new(
            |e| matches!(&e.kind, crate::model::event::EventKind::Message(m) if m.mid == "m2"),
        );
        let mut events = inbox
            .subscribe(
                0,
                only_m2,
                Box::pin(async move {
                    let _ = revoked.await;
                }),
            )
            .await
            .unwrap();
        inbox.ingest(message("m1")).await.unwrap();
        inbox.ingest(message("m2")).await.unwrap();
        assert_eq!(events.recv().await.unwrap().unwrap().seq, 2);
        revoke.send(()).unwrap();
        assert!(matches!(
            events.recv().await,
            Some(Err(SubscribeError::Revoked))
        ));
        assert!(events.recv().await.is_none());
    }

    #[tokio::test]
    async fn event_times_far_ahead_or_out_of_range_are_taken_as_arrival() {
        let now = 1_795_737_600_000;
        let (inbox, _dir) = inbox_at(now, 10).await;
        for ts in [
            i64::MAX,
            now + MAX_AHEAD_MS + 1,
            i64::MIN,
            -62_135_596_800_001,
        ] {
            let mut events = message(&format!("t{ts}"));
            events[0].timestamp_ms = ts;
            inbox.ingest(events).await.unwrap();
        }
        let mut ok = message("fine");
        ok[0].timestamp_ms = now + 1_000;
        inbox.ingest(ok).await.unwrap();
        let stored = inbox.store().events_after(0, 10).await.unwrap();
        let times: Vec<i64> = stored.iter().map(|e| e.event.timestamp_ms).collect();
        assert_eq!(times, [now, now, now, now, now + 1_000]);
        // The stored JSON keeps what was delivered.
        let originals: Vec<_> = stored
            .iter()
            .map(|e| e.event.original_timestamp_ms)
            .collect();
        assert_eq!(
            originals,
            [
                Some(i64::MAX),
                Some(now + MAX_AHEAD_MS + 1),
                Some(i64::MIN),
                Some(-62_135_596_800_001),
                None
            ]
        );
    }

    #[tokio::test]
    async fn a_capped_event_delivered_again_later_is_still_a_duplicate() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::at(1_795_737_600_000);
        let store = Arc::new(SqliteStore::open(dir.path()).unwrap());
        let inbox = inbox_on(store, &clock, 10).await;
        // A comment (no mid: deduplicated by content) from far in the future,
        // and one whose seconds would overflow when made milliseconds.
        let body = br#"{"object":"instagram","entry":[{"id":"1","time":1,"changes":[
            {"field":"comments","value":{"from":{"id":"2"},"timestamp":9000000000000000,"text":"hi"}},
            {"field":"comments","value":{"from":{"id":"2"},"timestamp":-9223372036854775807,"text":"yo"}}]}]}"#;
        let first = inbox
            .ingest(parse_delivery(body).unwrap().events)
            .await
            .unwrap();
        clock.advance_ms(60_000);
        let again = inbox
            .ingest(parse_delivery(body).unwrap().events)
            .await
            .unwrap();
        assert_eq!((first.new_events, again.duplicates), (2, 2));
    }
}
