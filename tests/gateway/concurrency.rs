use std::time::Duration;

use tonic::Code;

use messenger_gateway::delivery::DeliveryPolicy;

use crate::support::*;

fn one_call_at_a_time() -> DeliveryPolicy {
    DeliveryPolicy {
        max_concurrent_calls: 1,
        ..quick_policy()
    }
}

/// Waits until Graph has received `n` calls.
async fn until_graph_received(gw: &TestGateway, n: usize) {
    for _ in 0..200 {
        if gw.graph_calls().await >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("Graph never received {n} calls");
}

#[tokio::test]
async fn a_send_waits_for_a_free_graph_call_slot_and_then_goes_through() {
    let gw = TestGateway::builder()
        .delivery(one_call_at_a_time())
        .start()
        .await;
    gw.graph_answers(ok_reply().set_delay(Duration::from_millis(300)))
        .await;
    let first = tokio::spawn({
        let mut client = gw.client().await;
        async move { client.send(text_to(USER, "first")).await }
    });
    until_graph_received(&gw, 1).await;
    let second = tokio::spawn({
        let mut client = gw.client().await;
        async move { client.send(text_to(USER, "second")).await }
    });
    // While the first call is under way, the second is held back.
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(gw.graph_calls().await, 1);
    assert!(first.await.unwrap().is_ok());
    assert!(second.await.unwrap().is_ok());
    let texts: Vec<_> = gw
        .graph_bodies()
        .await
        .iter()
        .map(|b| b["message"]["text"].clone())
        .collect();
    assert_eq!(texts, ["first", "second"]);
}

#[tokio::test]
async fn a_send_whose_deadline_passes_while_waiting_is_unavailable_and_never_sent() {
    let gw = TestGateway::builder()
        .delivery(one_call_at_a_time())
        .start()
        .await;
    gw.graph_answers(ok_reply().set_delay(Duration::from_millis(800)))
        .await;
    let first = tokio::spawn({
        let mut client = gw.client().await;
        async move { client.send(text_to(USER, "first")).await }
    });
    until_graph_received(&gw, 1).await;
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
    assert!(first.await.unwrap().is_ok());
    assert_eq!(
        gw.graph_calls().await,
        1,
        "the late send never reached Graph"
    );
}
