//! `request_id`: a send happens at most once, across repeats, concurrent
//! repeats and restarts.

use std::time::Duration;

use tonic::Code;
use tonic_types::StatusExt;
use wiremock::MockServer;

use messenger_gateway::edge::grpc::pb;

use crate::support::*;

const ID: &str = "7c9e6679-7425-40de-944b-e07fc1f90ae7";

fn with_id(text: &str) -> pb::SendRequest {
    pb::SendRequest {
        request_id: ID.into(),
        ..text_to(USER, text)
    }
}

#[tokio::test]
async fn a_repeat_returns_the_first_response_without_a_second_graph_call() {
    let gw = TestGateway::start().await;
    gw.graph_answers(ok_reply()).await;
    let mut client = gw.client().await;
    let first = client.send(with_id("once")).await.unwrap().into_inner();
    let again = client.send(with_id("once")).await.unwrap().into_inner();
    assert_eq!(first, again);
    assert_eq!(gw.graph_calls().await, 1);
    // Another id is another send.
    let other = pb::SendRequest {
        request_id: "second-id".into(),
        ..with_id("once")
    };
    client.send(other).await.unwrap();
    assert_eq!(gw.graph_calls().await, 2);
}

#[tokio::test]
async fn concurrent_repeats_wait_for_the_first_and_share_its_answer() {
    let gw = TestGateway::start().await;
    gw.graph_answers(ok_reply().set_delay(Duration::from_millis(300)))
        .await;
    let mut calls = Vec::new();
    for _ in 0..8 {
        let mut client = gw.client().await;
        calls.push(tokio::spawn(async move {
            client.send(with_id("together")).await
        }));
    }
    let mut answers = Vec::new();
    for call in calls {
        answers.push(call.await.unwrap().unwrap().into_inner());
    }
    assert!(answers.iter().all(|a| *a == answers[0]));
    assert_eq!(gw.graph_calls().await, 1);
}

#[tokio::test]
async fn a_repeat_with_different_content_is_invalid() {
    let gw = TestGateway::start().await;
    gw.graph_answers(ok_reply()).await;
    let mut client = gw.client().await;
    client.send(with_id("first text")).await.unwrap();
    let conflict = client.send(with_id("other text")).await.unwrap_err();
    assert_eq!(conflict.code(), Code::InvalidArgument);
    assert_eq!(error_info(&conflict).0, "INVALID_REQUEST");
    let fields: Vec<String> = conflict
        .get_error_details()
        .bad_request()
        .unwrap()
        .field_violations
        .iter()
        .map(|v| v.field.clone())
        .collect();
    assert_eq!(fields, ["request_id"]);
    assert_eq!(gw.graph_calls().await, 1);
}

#[tokio::test]
async fn a_send_that_never_reached_the_person_may_be_retried_under_the_same_id() {
    let gw = TestGateway::start().await;
    gw.graph_answers(graph_error(
        400,
        613,
        None,
        "Calls to this api have exceeded the rate limit.",
    ))
    .await;
    let mut client = gw.client().await;
    let limited = client.send(with_id("retry me")).await.unwrap_err();
    assert_eq!(error_info(&limited).0, "RATE_LIMITED");
    gw.graph.reset().await;
    gw.graph_answers(ok_reply()).await;
    let sent = client.send(with_id("retry me")).await.unwrap().into_inner();
    assert_eq!(sent.message_id, "aWdfbWlkLTE");
    assert_eq!(gw.graph_calls().await, 1);
}

#[tokio::test]
async fn a_send_that_may_have_been_delivered_is_never_repeated() {
    let gw = TestGateway::builder()
        .delivery(messenger_gateway::send::delivery::DeliveryPolicy {
            upstream_timeout: Duration::from_millis(200),
            ..quick_policy()
        })
        .start()
        .await;
    gw.graph_answers(ok_reply().set_delay(Duration::from_secs(2)))
        .await;
    let mut client = gw.client().await;
    let unknown = client.send(with_id("slow")).await.unwrap_err();
    assert_eq!(error_info(&unknown).0, "DELIVERY_UNKNOWN");
    // It waits for an echo of the first within its deadline, then answers.
    let mut again = tonic::Request::new(with_id("slow"));
    again.set_timeout(Duration::from_secs(1));
    let repeat = client.send(again).await.unwrap_err();
    assert_eq!(repeat.code(), Code::Unknown);
    assert_eq!(error_info(&repeat).0, "DELIVERY_UNKNOWN");
    assert_eq!(gw.graph_calls().await, 1);
}

#[tokio::test]
async fn a_restart_remembers_request_ids_and_events() {
    let graph = MockServer::start().await;
    let base = format!("{}/v25.0", graph.uri());
    let data = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let mut before = TestGateway::builder()
        .graph(graph, &base)
        .data(data.clone())
        .start()
        .await;
    before.graph_answers(ok_reply()).await;
    let first = before
        .client()
        .await
        .send(with_id("before restart"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        before
            .deliver(&messages_from_user(&[("m1", "kept", T0)]))
            .await,
        200
    );
    before.begin_shutdown();
    before.served.take().unwrap().await.unwrap().unwrap();
    let graph = before.graph;

    let after = TestGateway::builder()
        .graph(graph, &base)
        .data(data)
        .start()
        .await;
    let again = after
        .client()
        .await
        .send(with_id("before restart"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, first);
    assert_eq!(after.graph_calls().await, 1);
    // The send was recorded first (seq 1), then the message arrived.
    let mut events = after.events_after(0).await;
    let kept = crate::support::next_events(&mut events, 1).await;
    assert_eq!(kept[0].seq, 2);
}
