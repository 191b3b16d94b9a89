use std::time::{Duration, Instant};

use tonic::Code;
use wiremock::Mock;
use wiremock::matchers::{method, path};

use messenger_gateway::send::delivery::DeliveryPolicy;

use crate::support::*;

#[tokio::test]
async fn transient_failures_are_retried_until_graph_accepts() {
    let gw = TestGateway::start().await;
    Mock::given(method("POST"))
        .and(path(MESSAGES_PATH))
        .respond_with(graph_error(500, 2, None, "temporarily unavailable"))
        .up_to_n_times(2)
        .with_priority(1)
        .mount(&gw.graph)
        .await;
    gw.graph_answers(ok_reply()).await;
    let reply = gw
        .client()
        .await
        .send(text_to(USER, "hi"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.graph_calls, 3);
    assert_eq!(reply.message_id, "aWdfbWlkLTE");
    let bodies = gw.graph_bodies().await;
    assert!(
        bodies.windows(2).all(|w| w[0] == w[1]),
        "every attempt posts the same body"
    );
}

#[tokio::test]
async fn retries_stop_at_the_configured_attempt_limit() {
    let policy = DeliveryPolicy {
        max_attempts: 5,
        ..quick_policy()
    };
    let gw = TestGateway::builder().delivery(policy).start().await;
    gw.graph_answers(graph_error(503, 1, None, "unknown error"))
        .await;
    let status = gw.send_text().await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(error_info(&status).1["attempts"], "5");
    assert_eq!(gw.graph_calls().await, 5);
}

#[tokio::test]
async fn retries_never_run_past_the_callers_deadline() {
    // With jitter the first backoff is 500-1000 ms: always past the deadline.
    let policy = DeliveryPolicy {
        base_delay: Duration::from_secs(1),
        max_delay: Duration::from_secs(1),
        ..quick_policy()
    };
    let gw = TestGateway::builder().delivery(policy).start().await;
    gw.graph_answers(graph_error(500, 2, None, "temporarily unavailable"))
        .await;
    let mut request = tonic::Request::new(text_to(USER, "hi"));
    request.set_timeout(Duration::from_millis(250));
    let mut client = gw.client().await;
    let started = Instant::now();
    let status = client.send(request).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_millis(250));
    // Our own answer, with details, not tonic's bare timeout.
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(error_info(&status).0, "UPSTREAM_UNAVAILABLE");
    assert_eq!(gw.graph_calls().await, 1);
}

#[tokio::test]
async fn non_transient_failures_are_never_retried() {
    for (code, subcode) in [
        (10, Some(2534022)),
        (613, None),
        (190, None),
        (100, None),
        (200, None),
    ] {
        let gw = TestGateway::start().await;
        gw.graph_answers(graph_error(500, code, subcode, "no"))
            .await;
        gw.send_text().await.unwrap_err();
        assert_eq!(gw.graph_calls().await, 1, "code {code}");
    }
}
