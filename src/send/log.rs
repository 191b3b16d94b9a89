//! The one log line per send, with its count: what it says, and how little
//! of a caller's input it repeats.

use std::time::Instant;

use crate::metrics::Metrics;
use crate::model::error::SendError;
use crate::model::message::Sent;
use crate::refusals::shown_within;

/// What of a caller's input a log line repeats, at most: a line stays
/// under 2 KiB whatever was sent.
const LOGGED_RECIPIENT_BYTES: usize = 64;
const LOGGED_ERROR_BYTES: usize = 1024;

/// `OK`, or the failure's reason: the `outcome` of logs and metrics.
pub(super) fn outcome_of(result: Result<&Sent, &SendError>) -> &'static str {
    match result {
        Ok(_) => "OK",
        Err(e) => e.reason().as_str(),
    }
}

/// Counts a send `account` answered, and logs its one line.
pub(super) fn log_outcome(
    metrics: &Metrics,
    account: &str,
    kind: &str,
    recipient: &str,
    started: Instant,
    result: Result<&Sent, &SendError>,
) {
    metrics.send_answered(account, kind, outcome_of(result));
    log_send(kind, recipient, started, result);
}

/// Counts a send `account` refused before it started, and logs its line
/// within `caller`'s share of refusal lines (a caller's flood of bad
/// requests cannot flood the log).
pub(super) fn log_refusal(
    metrics: &Metrics,
    account: &str,
    caller: &str,
    kind: &str,
    recipient: &str,
    error: &SendError,
) {
    metrics.send_answered(account, kind, outcome_of(Err(error)));
    crate::refusals::log_for(caller, || {
        log_send(kind, recipient, Instant::now(), Err(error))
    });
}

/// The one log line per send.
pub(super) fn log_send(
    kind: &str,
    recipient: &str,
    started: Instant,
    result: Result<&Sent, &SendError>,
) {
    let latency_ms = started.elapsed().as_micros() as f64 / 1000.0;
    let recipient = shown_within(recipient, LOGGED_RECIPIENT_BYTES);
    let recipient = recipient.as_str();
    match result {
        Ok(sent) => tracing::info!(
            kind,
            recipient,
            outcome = "OK",
            attempts = sent.graph_calls,
            latency_ms,
            message_id = sent.message_id.as_deref().unwrap_or(""),
            "sent"
        ),
        Err(error) => {
            let graph = error.failure().and_then(|f| f.graph_error());
            tracing::warn!(
                kind,
                recipient,
                outcome = error.reason().as_str(),
                graph_code = graph.and_then(|g| g.code),
                graph_subcode = graph.and_then(|g| g.subcode),
                fbtrace_id = graph.and_then(|g| g.fbtrace_id.as_deref()),
                attempts = error.attempts(),
                latency_ms,
                error = %shown_within(&error.to_string(), LOGGED_ERROR_BYTES),
                "send failed"
            )
        }
    }
}
