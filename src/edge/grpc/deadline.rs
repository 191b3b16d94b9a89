//! Deadlines answered by the gateway, with an ErrorInfo, rather than by
//! tonic: its own timeout sits outside every layer and answers a bare
//! `CANCELLED` ("Timeout expired"). Sends whose `grpc-timeout` is too short
//! to be started are answered at once, before the body is read; any other
//! call still unanswered just before its deadline gets `DEADLINE_EXCEEDED`.

use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tonic::{Request, Status};
use tower::Service;

use super::status::failure_with_code;
use crate::model::error::{Reason, SendError};
use crate::send::budget::too_little_left;

/// The methods that send: only for these is "too little time" a refusal.
const SENDING_PATHS: [&str; 2] = [
    "/messenger.v1.Messenger/Send",
    "/messenger.v1.Messenger/SendAction",
];

#[derive(Clone)]
pub struct RefuseHopelessLayer {
    pub min_send_budget: Duration,
}

impl<S> tower::Layer<S> for RefuseHopelessLayer {
    type Service = RefuseHopeless<S>;

    fn layer(&self, inner: S) -> RefuseHopeless<S> {
        RefuseHopeless {
            inner,
            min_send_budget: self.min_send_budget,
        }
    }
}

#[derive(Clone)]
pub struct RefuseHopeless<S> {
    inner: S,
    min_send_budget: Duration,
}

type Answer<E> =
    std::pin::Pin<Box<dyn Future<Output = Result<http::Response<tonic::body::Body>, E>> + Send>>;

impl<S, B> Service<http::Request<B>> for RefuseHopeless<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Answer<S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let timeout = request
            .headers()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout);
        let sending = SENDING_PATHS.contains(&request.uri().path());
        match timeout {
            Some(t) if sending && let Some(why) = too_little_left(t, self.min_send_budget) => {
                let status = Status::from(SendError::not_sent(why));
                crate::refusals::log(|| {
                    tracing::warn!(
                        grpc_timeout_us = t.as_micros() as u64,
                        "send refused: too little time to start it"
                    )
                });
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
            // After the handler's own answer would have come (it keeps a
            // margin), before tonic's.
            Some(t) => {
                let answer_by = t.saturating_sub(answer_margin(t) / 2);
                let call = self.inner.call(request);
                Box::pin(async move {
                    match tokio::time::timeout(answer_by, call).await {
                        Ok(answered) => answered,
                        Err(_) => Ok(late(sending).into_http()),
                    }
                })
            }
            None => Box::pin(self.inner.call(request)),
        }
    }
}

/// The answer to a call its handler could not answer in time. A send may
/// have gone out meanwhile.
fn late(sending: bool) -> Status {
    // DELIVERY_UNKNOWN by a deadline is DEADLINE_EXCEEDED, as for sends
    // whose Graph call had no answer in time.
    let (reason, message) = if sending {
        (
            Reason::DeliveryUnknown,
            "the deadline passed before the gateway could answer; a send under way may still be delivered",
        )
    } else {
        (
            Reason::DeadlineExceeded,
            "the deadline passed before the gateway could answer",
        )
    };
    failure_with_code(
        tonic::Code::DeadlineExceeded,
        reason,
        message,
        Default::default(),
        None,
        &[],
    )
}

/// The caller's deadline, from `grpc-timeout`, a little early so that our
/// own answer (with its details) beats tonic's bare timeout.
pub(super) fn deadline_of<T>(request: &Request<T>) -> Option<Instant> {
    let timeout = parse_grpc_timeout(request.metadata().get("grpc-timeout")?.to_str().ok()?)?;
    Some(Instant::now() + timeout.saturating_sub(answer_margin(timeout)))
}

/// How much earlier than the caller's deadline the gateway answers, so its
/// answer (with details) arrives first.
pub(super) fn answer_margin(timeout: Duration) -> Duration {
    (timeout / 10).clamp(Duration::from_millis(1), Duration::from_millis(50))
}

/// `grpc-timeout` is at most 8 digits and a unit (gRPC over HTTP/2 spec).
pub(super) fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_in_every_unit() {
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse_grpc_timeout("10S"), Some(Duration::from_secs(10)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(
            parse_grpc_timeout("99999999u"),
            Some(Duration::from_micros(99999999))
        );
        assert_eq!(parse_grpc_timeout("5n"), Some(Duration::from_nanos(5)));
        for bad in ["", "S", "10", "10x", "123456789S", "-1S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad}");
        }
    }
}
