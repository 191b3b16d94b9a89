use std::time::Duration;

use tonic::Code;

use messenger_gateway::send::delivery::DeliveryPolicy;

use crate::support::*;

fn one_call_at_a_time() -> DeliveryPolicy {
    DeliveryPolicy {
        max_concurrent_calls: 1,
        ..quick_policy()
    }
}

#[tokio::test]
async fn a_send_waits_for_a_free_graph_call_slot_and_then_goes_through() {
    let graph = HeldGraph::start().await;
    let gw = TestGateway::builder()
        .delivery(one_call_at_a_time())
        .held_graph(&graph)
        .start()
        .await;
    let first = tokio::spawn({
        let mut client = gw.client().await;
        async move { client.send(text_to(USER, "first")).await }
    });
    graph.until_waiting(1).await;
    let second = tokio::spawn({
        let mut client = gw.client().await;
        async move { client.send(text_to(USER, "second")).await }
    });
    // While the first call is under way, the second is held back.
    gw.until_queued(1).await;
    assert_eq!(graph.calls().len(), 1);
    graph.release();
    assert!(first.await.unwrap().is_ok());
    assert!(second.await.unwrap().is_ok());
    let texts = graph.texts();
    assert_eq!(texts, ["first", "second"]);
}

#[tokio::test]
async fn a_send_whose_deadline_passes_while_waiting_is_unavailable_and_never_sent() {
    let graph = HeldGraph::start().await;
    let gw = TestGateway::builder()
        .delivery(one_call_at_a_time())
        .held_graph(&graph)
        .start()
        .await;
    let first = tokio::spawn({
        let mut client = gw.client().await;
        async move { client.send(text_to(USER, "first")).await }
    });
    graph.until_waiting(1).await;
    let mut request = tonic::Request::new(text_to(USER, "too late"));
    request.set_timeout(Duration::from_millis(200));
    let status = gw.client().await.send(request).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let (reason, metadata) = error_info(&status);
    assert_eq!(reason, "UPSTREAM_UNAVAILABLE");
    assert_eq!(metadata["attempts"], "1");
    assert!(
        status.message().contains("not sent"),
        "{}",
        status.message()
    );
    assert!(
        retry_delay(&status).is_some(),
        "safe to retry, so RetryInfo"
    );
    graph.release();
    assert!(first.await.unwrap().is_ok());
    // One slot, first come first served: a later send goes next, so had
    // the late one stayed queued it would have gone before this.
    gw.client()
        .await
        .send(text_to(USER, "after"))
        .await
        .unwrap();
    let texts = graph.texts();
    assert_eq!(
        texts,
        ["first", "after"],
        "the late send never reached Graph"
    );
}
