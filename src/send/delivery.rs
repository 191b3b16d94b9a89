//! Delivering one message: the Graph call, retried only when that is safe,
//! bounded by the caller's deadline and by how many Graph calls the account
//! may have under way, and logged once with its outcome.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use rand::Rng;
use tokio::sync::Semaphore;

use crate::graph::{self, Account, GraphClient};
use crate::metrics::{AccountSeries, Metrics};
use crate::model::error::{Failure, Reason, SendError};
use crate::model::message::{OutgoingAction, OutgoingMessage, Sent};
use crate::send::budget::Budget;
use crate::send::log::{log_outcome, log_refusal, log_send, outcome_of};
use crate::send::pacing::{PaceLimits, PaceRefusal, Pacer, Tier};

/// Rate-limit answers one send may wait out before it fails as rate
/// limited (each pause is within its deadline anyway).
const MAX_RATE_LIMITED_RETRIES: u32 = 2;

#[derive(Debug, Clone)]
pub struct DeliveryPolicy {
    /// The most Graph calls under way at once for the account; further sends
    /// wait their turn. Graph accepts 100-300 sends a second per account, so
    /// the default only bounds sockets and memory when Graph slows down.
    pub max_concurrent_calls: usize,
    /// Graph calls per send, the first included.
    pub max_attempts: u32,
    /// The first backoff; each next one doubles, with jitter.
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// The most one Graph call may take.
    pub upstream_timeout: Duration,
    /// RetryInfo for rate limits when Graph gives no estimate.
    pub rate_limit_delay: Duration,
    /// The most sends waiting for a free call slot; beyond it a send is
    /// refused at once as overloaded.
    pub max_queued_sends: usize,
    /// A send with less time than this left is not started: it could not
    /// get an answer, only an unknown outcome.
    pub min_send_budget: Duration,
    /// The account's pace; `None`: as fast as callers ask.
    pub pace: Option<PaceLimits>,
}

impl Default for DeliveryPolicy {
    fn default() -> Self {
        Self {
            max_concurrent_calls: Self::DEFAULT_MAX_CONCURRENT_CALLS,
            max_attempts: Self::DEFAULT_MAX_ATTEMPTS,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(5),
            upstream_timeout: Self::DEFAULT_UPSTREAM_TIMEOUT,
            rate_limit_delay: Duration::from_secs(60),
            max_queued_sends: Self::DEFAULT_MAX_QUEUED_SENDS,
            min_send_budget: Self::DEFAULT_MIN_SEND_BUDGET,
            pace: None,
        }
    }
}

impl DeliveryPolicy {
    /// About 23 KiB per open Graph connection: 256 keeps 10,000 waiting
    /// sends under 100 MB.
    pub const DEFAULT_MAX_CONCURRENT_CALLS: usize = 256;
    pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
    pub const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(10);
    pub const DEFAULT_MAX_QUEUED_SENDS: usize = 10_000;
    pub const DEFAULT_MIN_SEND_BUDGET: Duration = Duration::from_millis(100);
    /// RetryInfo for a send refused because the queue is full.
    const OVERLOADED_RETRY: Duration = Duration::from_secs(1);

    /// Exponential backoff with "equal jitter": half fixed, half random, so
    /// callers that failed together do not retry together.
    pub fn backoff(&self, failed_attempts: u32) -> Duration {
        let exp = self
            .base_delay
            .saturating_mul(1 << failed_attempts.saturating_sub(1).min(16))
            .min(self.max_delay);
        let half = exp / 2;
        half + rand::rng().random_range(Duration::ZERO..=half)
    }
}

/// Sends as one account through one Graph client: the account's own call
/// limit and queue. Cheap to share behind an `Arc`. The account's settings
/// (its token) can be replaced while sends are under way: the next Graph
/// call uses the new ones.
#[derive(Debug)]
pub struct Deliverer {
    graph: GraphClient,
    account: ArcSwap<Account>,
    pacer: Option<Pacer>,
    metrics: Arc<Metrics>,
    /// The account's busiest series in `metrics`.
    series: AccountSeries,
    policy: DeliveryPolicy,
    calls: Semaphore,
    draining: AtomicBool,
    in_flight: AtomicUsize,
}

impl Deliverer {
    pub fn new(graph: GraphClient, account: Account, policy: DeliveryPolicy) -> Arc<Self> {
        Self::observed(graph, account, policy, Arc::default())
    }

    /// As `new`, counting into `metrics`.
    pub fn observed(
        graph: GraphClient,
        account: Account,
        policy: DeliveryPolicy,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new(Self {
            series: metrics.series(&account.account_id, policy.pace.is_some()),
            metrics,
            graph,
            account: ArcSwap::from_pointee(account),
            pacer: policy.pace.map(Pacer::new),
            calls: Semaphore::new(policy.max_concurrent_calls.max(1)),
            policy,
            draining: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
        })
    }

    pub fn account(&self) -> Arc<Account> {
        self.account.load_full()
    }

    /// Uses `account`'s settings (a new token, say) from the next Graph call.
    /// The account id stays: its metric series are looked up once.
    pub fn replace_account(&self, account: Account) {
        debug_assert_eq!(account.account_id, self.account.load().account_id);
        self.account.store(Arc::new(account));
    }

    /// From now on, sends already under way make no further attempts, so a
    /// shutdown waits at most for one Graph call.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// `Some` when the queue is full already: a cheap early answer, before
    /// a send spends a store write on its `request_id`. (`deliver` checks
    /// again, exactly.)
    pub fn refuse_if_full(&self) -> Option<SendError> {
        let policy = &self.policy;
        (self.in_flight() >= policy.max_concurrent_calls + policy.max_queued_sends)
            .then(|| self.overloaded())
    }

    fn overloaded(&self) -> SendError {
        SendError::Overloaded {
            detail: format!(
                "{} sends are already waiting for the account's {} Graph call slots",
                self.policy.max_queued_sends, self.policy.max_concurrent_calls
            ),
            retry_after: DeliveryPolicy::OVERLOADED_RETRY,
        }
    }

    /// Sends under way or waiting for a call slot.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Graph calls under way now.
    pub fn calls_under_way(&self) -> usize {
        self.policy
            .max_concurrent_calls
            .max(1)
            .saturating_sub(self.calls.available_permits())
    }

    pub async fn send_message(
        &self,
        message: &OutgoingMessage,
        body: Bytes,
        budget: impl Into<Budget>,
    ) -> Result<Sent, SendError> {
        let tier = Tier::of(message);
        self.send_logged(
            "message",
            message.recipient.as_str(),
            body,
            tier,
            budget.into(),
        )
        .await
    }

    pub async fn send_action(
        &self,
        action: &OutgoingAction,
        budget: impl Into<Budget>,
    ) -> Result<Sent, SendError> {
        let body = graph::encode_action(action);
        self.send_logged(
            "action",
            action.recipient.as_str(),
            body,
            Tier::Standard,
            budget.into(),
        )
        .await
    }

    async fn send_logged(
        &self,
        kind: &str,
        recipient: &str,
        body: Bytes,
        tier: Tier,
        budget: Budget,
    ) -> Result<Sent, SendError> {
        let started = Instant::now();
        let result = self.deliver(body, tier, recipient, &budget).await;
        let counted = result.is_ok() && self.series.sent(kind);
        if !counted {
            let outcome = outcome_of(result.as_ref());
            let account = self.account.load();
            self.metrics
                .send_answered(&account.account_id, kind, outcome);
        }
        log_send(kind, recipient, started, result.as_ref());
        result
    }

    async fn deliver(
        &self,
        body: Bytes,
        tier: Tier,
        recipient: &str,
        budget: &Budget,
    ) -> Result<Sent, SendError> {
        let deadline = budget.deadline;
        // Counted before the check, so the bound holds under a race.
        let before = self.in_flight.fetch_add(1, Ordering::SeqCst);
        let _guard = InFlight(&self.in_flight);
        let policy = &self.policy;
        if before >= policy.max_concurrent_calls + policy.max_queued_sends {
            return Err(self.overloaded());
        }
        let mut attempts = 0;
        // Graph calls refused by a rate limit: Graph did not process them,
        // so they do not count against `max_attempts`.
        let mut rate_limited = 0;
        let mut queued = Duration::ZERO;
        loop {
            if let Some(pacer) = &self.pacer {
                let waited = self.wait_for_pace(pacer, tier, recipient, budget).await?;
                self.series
                    .queue_waited(budget.priority, waited.as_secs_f64());
                queued += waited;
            }
            attempts += 1;
            let called = Instant::now();
            let outcome = self
                .call_graph(body.clone(), policy.upstream_timeout, budget)
                .await;
            let took = called.elapsed().as_secs_f64();
            match &outcome {
                Ok(_) => self.series.graph_ok(took),
                Err(e) => {
                    self.series.graph_duration(took);
                    self.metrics
                        .graph_failed(&self.account.load().account_id, e.failure.reason().as_str());
                }
            }
            if let Some(usage) = match &outcome {
                Ok(reply) => reply.usage,
                Err(e) => e.usage,
            } {
                self.metrics.usage(&self.account.load().account_id, usage);
                if let Some(pacer) = &self.pacer {
                    pacer.observe_usage(usage);
                }
            }
            let error = match outcome {
                Ok(reply) => {
                    return Ok(Sent {
                        message_id: reply.message_id,
                        recipient_id: reply.recipient_id,
                        graph_calls: attempts,
                        queued_ms: queued.as_millis() as u64,
                    });
                }
                Err(error) => error,
            };
            if let Some(pacer) = &self.pacer
                && error.failure.reason() == Reason::RateLimited
            {
                let pause = error
                    .retry_after
                    .unwrap_or(policy.rate_limit_delay)
                    .min(graph::MAX_RETRY_HINT);
                pacer.pause(pause);
                self.metrics.paused(&self.account.load().account_id);
                tracing::warn!(
                    pause_ms = pause.as_millis() as u64,
                    "Graph rate-limited the account: it is paused"
                );
                rate_limited += 1;
                let in_time = deadline.is_none_or(|d| Instant::now() + pause < d);
                if in_time
                    && rate_limited <= MAX_RATE_LIMITED_RETRIES
                    && !budget.cancelled.is_cancelled()
                    && !self.draining.load(Ordering::SeqCst)
                {
                    continue;
                }
            }
            let delay = policy.backoff(attempts);
            let fits_deadline = deadline.is_none_or(|d| Instant::now() + delay < d);
            let retry = error.failure.is_retryable()
                && attempts - rate_limited < policy.max_attempts
                && fits_deadline
                && !budget.cancelled.is_cancelled()
                && !self.draining.load(Ordering::SeqCst);
            if !retry {
                let retry_after = match error.failure.reason() {
                    // With a pace, the pause still left; else Graph's hint.
                    Reason::RateLimited => Some(
                        self.pacer
                            .as_ref()
                            .map(Pacer::pause_left)
                            .filter(|left| !left.is_zero())
                            .or(error.retry_after)
                            .unwrap_or(policy.rate_limit_delay),
                    ),
                    Reason::UpstreamUnavailable => Some(error.retry_after.unwrap_or(delay)),
                    _ => None,
                };
                return Err(SendError::Failed {
                    failure: error.failure,
                    attempts,
                    retry_after,
                });
            }
            tracing::debug!(attempt = attempts, delay_ms = delay.as_millis() as u64, failure = %error.failure.message(), "retrying a transient Graph failure");
            tokio::time::sleep(delay).await;
        }
    }
}

impl Deliverer {
    /// Waits for the send's turn in the account's pace: how long it waited.
    async fn wait_for_pace(
        &self,
        pacer: &Pacer,
        tier: Tier,
        recipient: &str,
        budget: &Budget,
    ) -> Result<Duration, SendError> {
        match pacer.turn(tier, budget.priority, recipient, budget).await {
            Ok(waited) => Ok(waited),
            Err(PaceRefusal::TooLate { retry_after }) => Err(SendError::Overloaded {
                detail: format!(
                    "the account's {} pace ({}) cannot fit this send in before its deadline",
                    tier.as_str(),
                    match tier {
                        Tier::Standard => pacer.limits().standard,
                        Tier::Media => pacer.limits().media,
                        Tier::PrivateReply => pacer.limits().private_replies,
                    }
                ),
                retry_after,
            }),
            Err(PaceRefusal::Cancelled) => Err(SendError::not_sent(
                "the caller cancelled while the send waited for the account's pace".into(),
            )),
        }
    }

    /// Counts a send refused before it started (the window, say), and logs
    /// its line.
    pub fn refused(&self, kind: &str, recipient: &str, error: &SendError) {
        let account = self.account.load();
        log_outcome(
            &self.metrics,
            &account.account_id,
            kind,
            recipient,
            Instant::now(),
            Err(error),
        );
    }

    /// Counts a send refused at the edge for `caller`, logged within that
    /// caller's share of refusal lines.
    pub fn refused_for(&self, caller: &str, kind: &str, recipient: &str, error: &SendError) {
        let account = self.account.load();
        log_refusal(
            &self.metrics,
            &account.account_id,
            caller,
            kind,
            recipient,
            error,
        );
    }

    /// The account's pace, when it has one.
    pub fn pacer(&self) -> Option<&Pacer> {
        self.pacer.as_ref()
    }

    /// One Graph call, once the account has a free call slot, if the caller
    /// still waits and enough of its deadline is left. Until the call starts
    /// nothing has been sent, so giving up before it is "not sent".
    async fn call_graph(
        &self,
        body: Bytes,
        timeout: Duration,
        budget: &Budget,
    ) -> Result<graph::GraphReply, graph::AttemptError> {
        let not_sent = |detail: String| graph::AttemptError::from(Failure::NotSent { detail });
        let until_deadline = async {
            match budget.deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        let _slot = tokio::select! {
            biased;
            () = budget.cancelled.cancelled() => {
                return Err(not_sent("the caller cancelled before the Graph call started".into()));
            }
            slot = self.calls.acquire() => slot.expect("the call semaphore is never closed"),
            () = until_deadline => {
                return Err(not_sent(format!(
                    "{} Graph calls were already under way and none finished before the deadline",
                    self.policy.max_concurrent_calls
                )));
            }
        };
        if let Some(why) = budget.too_short(self.policy.min_send_budget) {
            return Err(not_sent(why));
        }
        if let Some(start) = &budget.start
            && let Err(why) = start.start().await
        {
            return Err(not_sent(why));
        }
        let timeout = budget.deadline.map_or(timeout, |d| {
            timeout.min(d.saturating_duration_since(Instant::now()))
        });
        // Boxed: a send waiting for a slot then holds a pointer, not room for
        // the whole HTTP exchange.
        let account = self.account.load_full();
        Box::pin(self.graph.post_messages(&account, body, timeout)).await
    }
}

struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        let policy = DeliveryPolicy {
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(1000),
            ..DeliveryPolicy::default()
        };
        for _ in 0..100 {
            let first = policy.backoff(1);
            assert!((Duration::from_millis(50)..=Duration::from_millis(100)).contains(&first));
            let third = policy.backoff(3);
            assert!((Duration::from_millis(200)..=Duration::from_millis(400)).contains(&third));
            assert!(policy.backoff(30) <= Duration::from_millis(1000));
        }
    }
}
