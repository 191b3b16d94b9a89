//! The admin port: Prometheus metrics that move with the traffic, and the
//! probes an orchestrator asks.

use std::time::Duration;

use crate::support::*;

async fn get(gw: &TestGateway, path: &str) -> (u16, String) {
    let response = reqwest::get(format!("http://{}{path}", gw.admin))
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// The value of the sample named with these labels, if present.
fn sample(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name_and_labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn metrics_move_with_the_traffic_and_probes_follow_the_lifecycle() {
    let graph = HeldGraph::start().await;
    graph.release();
    let mut gw = TestGateway::builder().held_graph(&graph).start().await;
    assert_eq!(get(&gw, "/livez").await.0, 200);
    // Ready once the gRPC port serves, a moment after the start.
    eventually(Duration::from_secs(2), "ready", || async {
        get(&gw, "/readyz").await.0 == 200
    })
    .await;

    gw.send_text().await.unwrap();
    gw.send_text().await.unwrap();
    gw.client()
        .await
        .send(text_to("not-an-igsid", "hi"))
        .await
        .unwrap_err();
    assert_eq!(
        gw.deliver(&messages_from_user(&[("m1", "hi", T0)])).await,
        200
    );
    assert_eq!(gw.deliver_signed(b"{}", Some("sha256=00")).await, 401);
    let _events = gw.events_after(0).await;

    let (status, text) = get(&gw, "/metrics").await;
    assert_eq!(status, 200);
    let ok = format!(
        "messenger_gateway_sends_total{{account=\"{ACCOUNT}\",kind=\"message\",outcome=\"OK\"}}"
    );
    assert_eq!(sample(&text, &ok), Some(2.0), "{text}");
    let invalid = format!(
        "messenger_gateway_sends_total{{account=\"{ACCOUNT}\",kind=\"message\",outcome=\"INVALID_REQUEST\"}}"
    );
    assert_eq!(sample(&text, &invalid), Some(1.0), "{text}");
    let calls =
        format!("messenger_gateway_graph_requests_total{{account=\"{ACCOUNT}\",result=\"ok\"}}");
    assert_eq!(sample(&text, &calls), Some(2.0), "{text}");
    let duration =
        format!("messenger_gateway_graph_request_duration_seconds_count{{account=\"{ACCOUNT}\"}}");
    assert_eq!(sample(&text, &duration), Some(2.0), "{text}");
    assert_eq!(
        sample(
            &text,
            "messenger_gateway_webhook_deliveries_total{result=\"stored\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "messenger_gateway_webhook_deliveries_total{result=\"bad_signature\"}"
        ),
        Some(1.0)
    );
    let stored =
        format!("messenger_gateway_events_stored_total{{account=\"{ACCOUNT}\",kind=\"message\"}}");
    assert_eq!(sample(&text, &stored), Some(1.0), "{text}");
    assert_eq!(sample(&text, "messenger_gateway_subscribers "), Some(1.0));
    assert_eq!(
        sample(&text, "messenger_gateway_subscriber_lag_events "),
        Some(0.0)
    );
    let commits = sample(
        &text,
        "messenger_gateway_store_commit_duration_seconds_count",
    );
    assert!(commits.unwrap_or(0.0) >= 1.0, "{text}");
    assert!(text.contains("messenger_gateway_build_info{version=\""));
    assert!(text.contains(&format!(
        "messenger_gateway_token_state{{account=\"{ACCOUNT}\",state=\"VALID\"}} 1"
    )));
    assert!(!text.contains(TOKEN));

    // Draining: not ready any more, while the process still answers.
    drop(_events);
    graph.hold();
    let mut client = gw.client().await;
    let in_flight = tokio::spawn(async move { client.send(text_to(USER, "slow")).await });
    graph.until_waiting(1).await;
    gw.begin_shutdown();
    eventually(Duration::from_secs(10), "not ready", || async {
        get(&gw, "/readyz").await.0 == 503
    })
    .await;
    assert_eq!(get(&gw, "/livez").await.0, 200);
    graph.release();
    in_flight.await.unwrap().unwrap();
}
