//! The admin port, for operators and orchestrators, never for callers:
//! `/metrics` (Prometheus text, with the gauges gathered at each scrape),
//! `/livez` (the process answers) and `/readyz` (ready to take calls).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::accounts::{Registry, TokenState};
use crate::conversation::inbox::Inbox;
use crate::metrics::{AccountGauges, Gauges, Metrics};
use crate::model::message::Priority;

/// The admin port's connections: a scraper or a probe needs few.
pub const MAX_CONNECTIONS: usize = 64;

/// What the admin port reads.
pub struct Admin {
    pub metrics: Arc<Metrics>,
    pub accounts: Arc<Registry>,
    pub inbox: Arc<Inbox>,
    pub ready: Arc<AtomicBool>,
}

pub fn router(admin: Admin) -> axum::Router {
    axum::Router::new()
        .route(
            "/metrics",
            get(|State(a): State<Arc<Admin>>| async move {
                let now = gauges(&a.accounts, &a.inbox).await;
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    a.metrics.render(&now),
                )
            }),
        )
        .route("/livez", get(|| async { "live" }))
        .route(
            "/readyz",
            get(|State(a): State<Arc<Admin>>| async move {
                if a.ready.load(Ordering::SeqCst)
                    && a.inbox.store_reachable()
                    && a.inbox.store_writable()
                {
                    (StatusCode::OK, "ready").into_response()
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response()
                }
            }),
        )
        .with_state(Arc::new(admin))
}

/// The gauges as they are now: subscribers, and each account's sends,
/// queues and token.
async fn gauges(accounts: &Registry, inbox: &Inbox) -> Gauges {
    const STATES: [TokenState; 4] = [
        TokenState::Unchecked,
        TokenState::Valid,
        TokenState::Expiring,
        TokenState::Invalid,
    ];
    let accounts = accounts
        .entries()
        .iter()
        .map(|entry| {
            let status = entry.status();
            AccountGauges {
                account: entry.id.clone(),
                in_flight: entry.in_flight(),
                waiting: [Priority::Interactive, Priority::Bulk]
                    .into_iter()
                    .filter_map(|p| entry.waiting(p).map(|n| (p, n)))
                    .collect(),
                token_states: STATES
                    .iter()
                    .map(|s| (format!("{s:?}").to_ascii_uppercase(), status.state == *s))
                    .collect(),
                token_expires_at_ms: status.expires_at_ms,
            }
        })
        .collect();
    Gauges {
        subscribers: inbox.subscribers(),
        largest_subscriber_lag: inbox.largest_subscriber_lag().await,
        accounts,
    }
}
