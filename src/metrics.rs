//! What the gateway is doing, as Prometheus metrics: counters and
//! histograms the core updates as it works, and gauges read from it at
//! each scrape. Served on the admin port (`edge::admin`), which gathers the gauges.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry as PromRegistry;

use crate::clock::UnixMs;
use crate::model::message::Priority;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SendLabels {
    pub account: String,
    pub kind: String,
    /// `OK`, or the failure's reason.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AccountLabels {
    pub account: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GraphCallLabels {
    pub account: String,
    /// `ok`, or the failure's reason.
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    pub account: String,
    pub priority: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    pub account: String,
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    pub account: String,
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
}

/// The gauges read at a scrape, gathered by the admin port from the
/// accounts and the inbox (the sink does not reach into what it counts).
#[derive(Debug, Default)]
pub struct Gauges {
    pub subscribers: usize,
    pub largest_subscriber_lag: u64,
    pub accounts: Vec<AccountGauges>,
}

#[derive(Debug)]
pub struct AccountGauges {
    pub account: String,
    pub in_flight: usize,
    /// Sends waiting for the pace, per priority (none when unpaced).
    pub waiting: Vec<(Priority, usize)>,
    /// Every token state's name, and whether the account's token is in it.
    pub token_states: Vec<(String, bool)>,
    pub token_expires_at_ms: Option<UnixMs>,
}

/// One account's busiest series, looked up once: a successful send then
/// counts with atomic adds, not by building labels, hashing them and
/// taking each family's lock (which both worker threads contend for).
/// The families are never cleared, so these stay the exported series.
#[derive(Clone, Debug)]
pub struct AccountSeries {
    message_sent: Counter,
    action_sent: Counter,
    graph_ok: Counter,
    graph_duration: Histogram,
    /// Interactive, bulk; paced accounts only.
    queue_waits: Option<[Histogram; 2]>,
}

impl AccountSeries {
    /// Counts one send (`kind` "message" or "action") answered OK; `false`
    /// for any other kind, which the caller counts through [`Metrics`].
    pub fn sent(&self, kind: &str) -> bool {
        match kind {
            "message" => self.message_sent.inc(),
            "action" => self.action_sent.inc(),
            _ => return false,
        };
        true
    }

    /// One Graph call that succeeded.
    pub fn graph_ok(&self, seconds: f64) {
        self.graph_duration.observe(seconds);
        self.graph_ok.inc();
    }

    /// One Graph call that failed.
    pub fn graph_duration(&self, seconds: f64) {
        self.graph_duration.observe(seconds);
    }

    pub fn queue_waited(&self, priority: Priority, seconds: f64) {
        if let Some(waits) = &self.queue_waits {
            waits[priority as usize].observe(seconds);
        }
    }
}

/// Histograms of durations, 1 ms to about 65 s.
#[derive(Clone)]
struct Seconds;

impl MetricConstructor<Histogram> for Seconds {
    fn new_metric(&self) -> Histogram {
        Histogram::new(exponential_buckets(0.001, 2.0, 17))
    }
}

type Ratio = Gauge<f64, AtomicU64>;

/// Every metric the gateway exports.
pub struct Metrics {
    registry: PromRegistry,
    pub sends: Family<SendLabels, Counter>,
    pub graph_calls: Family<GraphCallLabels, Counter>,
    graph_duration: Family<AccountLabels, Histogram, Seconds>,
    queue_wait: Family<QueueLabels, Histogram, Seconds>,
    queue_depth: Family<QueueLabels, Gauge>,
    sends_in_flight: Family<AccountLabels, Gauge>,
    pub pauses: Family<AccountLabels, Counter>,
    graph_usage: Family<AccountLabels, Ratio>,
    pub webhook_deliveries: Family<ResultLabels, Counter>,
    pub webhook_items_rejected: Family<ReasonLabels, Counter>,
    pub events_stored: Family<EventLabels, Counter>,
    unknown_sends: Family<OutcomeLabels, Counter>,
    subscribers: Gauge,
    subscriber_lag: Gauge,
    store_commit: Histogram,
    token_state: Family<TokenLabels, Gauge>,
    token_expiry: Family<AccountLabels, Gauge>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = PromRegistry::with_prefix("messenger_gateway");
        let metrics = Self {
            sends: Family::default(),
            graph_calls: Family::default(),
            graph_duration: Family::new_with_constructor(Seconds),
            queue_wait: Family::new_with_constructor(Seconds),
            queue_depth: Family::default(),
            sends_in_flight: Family::default(),
            pauses: Family::default(),
            graph_usage: Family::default(),
            webhook_deliveries: Family::default(),
            webhook_items_rejected: Family::default(),
            events_stored: Family::default(),
            unknown_sends: Family::default(),
            subscribers: Gauge::default(),
            subscriber_lag: Gauge::default(),
            store_commit: Seconds.new_metric(),
            token_state: Family::default(),
            token_expiry: Family::default(),
            registry: PromRegistry::default(),
        };
        registry.register(
            "sends",
            "Sends and sender actions answered, by account, kind and outcome (OK or the reason)",
            metrics.sends.clone(),
        );
        registry.register(
            "graph_requests",
            "Graph calls made, by account and result (ok or the reason)",
            metrics.graph_calls.clone(),
        );
        registry.register(
            "graph_request_duration_seconds",
            "How long each Graph call took, by account",
            metrics.graph_duration.clone(),
        );
        registry.register(
            "queue_wait_seconds",
            "How long sends waited for their account's pace, by account and priority",
            metrics.queue_wait.clone(),
        );
        registry.register(
            "queue_depth",
            "Sends waiting for their account's pace now, by account and priority",
            metrics.queue_depth.clone(),
        );
        registry.register(
            "sends_in_flight",
            "Sends under way or waiting, by account",
            metrics.sends_in_flight.clone(),
        );
        registry.register(
            "pauses",
            "Times Graph's rate limit paused an account",
            metrics.pauses.clone(),
        );
        registry.register(
            "graph_usage_ratio",
            "The highest quota use Graph's usage headers last reported (1 = 100 %), by account",
            metrics.graph_usage.clone(),
        );
        registry.register(
            "webhook_deliveries",
            "Webhook deliveries, by result (stored, or why refused)",
            metrics.webhook_deliveries.clone(),
        );
        registry.register(
            "webhook_items_rejected",
            "Webhook items refused for their shape (an id or mid that is not one), by reason; the rest of their delivery is stored",
            metrics.webhook_items_rejected.clone(),
        );
        registry.register(
            "events_stored",
            "Inbound events newly stored, by account and kind",
            metrics.events_stored.clone(),
        );
        registry.register(
            "unknown_sends",
            "Sends whose Graph answer was lost, as they went: kept pending, then settled as sent by their echo or not seen within the horizon",
            metrics.unknown_sends.clone(),
        );
        registry.register(
            "subscribers",
            "Subscribe streams open",
            metrics.subscribers.clone(),
        );
        registry.register(
            "subscriber_lag_events",
            "Events the furthest-behind Subscribe stream has still to take",
            metrics.subscriber_lag.clone(),
        );
        registry.register(
            "store_commit_duration_seconds",
            "How long each store commit (one fsync for a batch of writes) took",
            metrics.store_commit.clone(),
        );
        registry.register(
            "token_state",
            "1 for each account's current token state",
            metrics.token_state.clone(),
        );
        registry.register(
            "token_expiry_timestamp_seconds",
            "When each account's token expires, where known (Unix time)",
            metrics.token_expiry.clone(),
        );
        let build: Family<BuildLabels, Gauge> = Family::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").to_owned(),
            })
            .set(1);
        registry.register("build_info", "The running build", build);
        Self {
            registry,
            ..metrics
        }
    }

    /// `account`'s busiest series, looked up once (its queue waits only
    /// when it is `paced`: otherwise it has none to report).
    pub fn series(&self, account: &str, paced: bool) -> AccountSeries {
        let sent = |kind: &str| {
            self.sends
                .get_or_create(&SendLabels {
                    account: account.to_owned(),
                    kind: kind.to_owned(),
                    outcome: "OK".to_owned(),
                })
                .clone()
        };
        let waited = |priority: Priority| {
            self.queue_wait
                .get_or_create(&QueueLabels {
                    account: account.to_owned(),
                    priority: priority.as_str().to_owned(),
                })
                .clone()
        };
        AccountSeries {
            message_sent: sent("message"),
            action_sent: sent("action"),
            graph_ok: self
                .graph_calls
                .get_or_create(&GraphCallLabels {
                    account: account.to_owned(),
                    result: "ok".to_owned(),
                })
                .clone(),
            graph_duration: self
                .graph_duration
                .get_or_create(&AccountLabels {
                    account: account.to_owned(),
                })
                .clone(),
            queue_waits: paced.then(|| [waited(Priority::Interactive), waited(Priority::Bulk)]),
        }
    }

    /// Counts one answered send.
    pub fn send_answered(&self, account: &str, kind: &str, outcome: &str) {
        self.sends
            .get_or_create(&SendLabels {
                account: account.to_owned(),
                kind: kind.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// One Graph call that failed with `result` (its duration goes to the
    /// account's [`AccountSeries`]).
    pub fn graph_failed(&self, account: &str, result: &str) {
        self.graph_calls
            .get_or_create(&GraphCallLabels {
                account: account.to_owned(),
                result: result.to_owned(),
            })
            .inc();
    }

    pub fn paused(&self, account: &str) {
        self.pauses
            .get_or_create(&AccountLabels {
                account: account.to_owned(),
            })
            .inc();
    }

    pub fn usage(&self, account: &str, ratio: f64) {
        self.graph_usage
            .get_or_create(&AccountLabels {
                account: account.to_owned(),
            })
            .set(ratio);
    }

    /// `reason` is one of the parser's few fixed labels.
    pub fn webhook_item_rejected(&self, reason: &str) {
        self.webhook_items_rejected
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    pub fn webhook_delivery(&self, result: &str) {
        self.webhook_deliveries
            .get_or_create(&ResultLabels {
                result: result.to_owned(),
            })
            .inc();
    }

    pub fn event_stored(&self, account: &str, kind: &str) {
        self.events_stored
            .get_or_create(&EventLabels {
                account: account.to_owned(),
                kind: kind.to_owned(),
            })
            .inc();
    }

    /// A send whose answer was lost: `pending`, `sent` or `not_seen`.
    pub fn unknown_sends(&self, outcome: &'static str, n: usize) {
        self.unknown_sends
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc_by(n as u64);
    }

    pub fn store_committed(&self, seconds: f64) {
        self.store_commit.observe(seconds);
    }

    /// The Prometheus text exposition, with the gauges as gathered now.
    pub fn render(&self, now: &Gauges) -> String {
        self.subscriber_lag.set(now.largest_subscriber_lag as i64);
        self.queue_depth.clear();
        self.token_state.clear();
        self.token_expiry.clear();
        self.sends_in_flight.clear();
        for a in &now.accounts {
            let account = || AccountLabels {
                account: a.account.clone(),
            };
            self.sends_in_flight
                .get_or_create(&account())
                .set(a.in_flight as i64);
            for (priority, waiting) in &a.waiting {
                self.queue_depth
                    .get_or_create(&QueueLabels {
                        account: a.account.clone(),
                        priority: priority.as_str().to_owned(),
                    })
                    .set(*waiting as i64);
            }
            for (state, current) in &a.token_states {
                self.token_state
                    .get_or_create(&TokenLabels {
                        account: a.account.clone(),
                        state: state.clone(),
                    })
                    .set(i64::from(*current));
            }
            if let Some(expires) = a.token_expires_at_ms {
                self.token_expiry
                    .get_or_create(&account())
                    .set(expires / 1000);
            }
        }
        self.subscribers.set(now.subscribers as i64);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
