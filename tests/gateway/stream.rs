//! SendStream: a broadcast over one stream, each message sent as Send would
//! send it, in constant memory, and nothing unsent after the caller goes.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio_stream::StreamExt;
use tonic::Code;
use wiremock::Mock;
use wiremock::matchers::{method, path};

use messenger_gateway::edge::grpc::pb;
use messenger_gateway::send::delivery::DeliveryPolicy;
use messenger_gateway::send::pacing::{PaceLimits, Rate};

use crate::support::*;

const OUTSIDE: &str = "17841400000000066";

/// `OK`, or the reason of the ErrorInfo a failed message's status carries
/// (the same details a unary Send would carry).
fn outcome(result: &pb::SendResult) -> String {
    match result.result.as_ref().unwrap() {
        pb::send_result::Result::Response(_) => "OK".to_owned(),
        pb::send_result::Result::Error(status) => {
            let status = tonic::Status::with_details(
                Code::from_i32(status.code),
                status.message.clone(),
                prost::Message::encode_to_vec(status).into(),
            );
            error_info(&status).0
        }
    }
}

fn numbered(i: usize) -> pb::SendRequest {
    pb::SendRequest {
        request_id: format!("sale-{i}"),
        ..text_to(USER, &format!("spring sale {i}"))
    }
}

#[tokio::test]
async fn every_message_of_a_stream_gets_its_result_as_send_would_answer_it() {
    let gw = TestGateway::start().await;
    Mock::given(method("POST"))
        .and(path(MESSAGES_PATH))
        .and(wiremock::matchers::body_partial_json(
            serde_json::json!({"recipient": {"id": OUTSIDE}}),
        ))
        .respond_with(graph_error(
            400,
            10,
            Some(2534022),
            "(#10) outside of allowed window",
        ))
        .mount(&gw.graph)
        .await;
    gw.graph_answers(ok_reply()).await;
    let requests = vec![
        numbered(0),
        pb::SendRequest {
            recipient_id: "not-an-igsid".into(),
            ..numbered(1)
        },
        pb::SendRequest {
            recipient_id: OUTSIDE.into(),
            ..numbered(2)
        },
        numbered(3),
        pb::SendRequest {
            account_id: "17841400000000777".into(),
            ..numbered(4)
        },
    ];
    let mut results: Vec<pb::SendResult> = gw
        .client()
        .await
        .send_stream(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner()
        .map(Result::unwrap)
        .collect()
        .await;
    results.sort_by_key(|r| r.index);
    let summary: Vec<(u64, &str, String)> = results
        .iter()
        .map(|r| {
            if let Some(pb::send_result::Result::Response(ok)) = &r.result {
                assert!(!ok.message_id.is_empty());
            }
            (r.index, r.request_id.as_str(), outcome(r))
        })
        .collect();
    assert_eq!(
        summary,
        [
            (0, "sale-0", "OK".to_owned()),
            (1, "sale-1", "INVALID_REQUEST".to_owned()),
            (2, "sale-2", "OUTSIDE_MESSAGING_WINDOW".to_owned()),
            (3, "sale-3", "OK".to_owned()),
            (4, "sale-4", "ACCOUNT_NOT_FOUND".to_owned()),
        ]
    );
    // Stream messages are bulk, and request_ids hold as for Send.
    let again = gw
        .client()
        .await
        .send_stream(tokio_stream::iter(vec![numbered(0)]))
        .await
        .unwrap()
        .into_inner()
        .next()
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(
        again.result,
        Some(pb::send_result::Result::Response(_))
    ));
    assert_eq!(gw.graph_calls().await, 3, "sale-0 was not sent twice");
}

#[tokio::test]
async fn a_stalled_graph_stops_the_gateway_reading_ahead() {
    let gw = TestGateway::start().await;
    gw.graph_answers(ok_reply().set_delay(Duration::from_secs(30)))
        .await;
    let pulled = Arc::new(AtomicUsize::new(0));
    let counter = pulled.clone();
    let broadcast = tokio_stream::iter(0..100_000).map(move |i| {
        counter.fetch_add(1, Ordering::Relaxed);
        numbered(i)
    });
    let mut client = gw.client().await;
    let _results = tokio::spawn(async move { client.send_stream(broadcast).await });
    // Flow control holds the rest in the caller: it stops producing.
    let mut taken_by_the_caller = 0;
    let mut settled = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = pulled.load(Ordering::Relaxed);
        if now > 0 && now == taken_by_the_caller {
            settled = true;
            break;
        }
        taken_by_the_caller = now;
    }
    assert!(settled, "the caller never stopped: {taken_by_the_caller}");
    assert!(taken_by_the_caller < 10_000, "{taken_by_the_caller}");
    // And the gateway has at most its read-ahead under way.
    let in_flight = gw.graph_calls().await;
    assert!(in_flight <= 64, "{in_flight}");
}

/// A broadcast of 20 on a gateway with 3 Graph call slots, its calls held
/// at Graph: once it answers, 3 calls are held and 17 sends wait for a
/// slot, and none has finished.
async fn broadcast_under_way(
    held: &HeldGraph,
    builder: Builder,
    key: Option<&str>,
) -> (TestGateway, tonic::Streaming<pb::SendResult>) {
    let gw = builder
        .held_graph(held)
        .delivery(DeliveryPolicy {
            max_concurrent_calls: 3,
            ..quick_policy()
        })
        .start()
        .await;
    let messages = tokio_stream::iter((0..20).map(numbered));
    let mut request = match key {
        Some(key) => with_key(messages, key),
        None => tonic::Request::new(messages),
    };
    // Far beyond the test: no send ends by its deadline.
    request.set_timeout(Duration::from_secs(600));
    let results = gw
        .client()
        .await
        .send_stream(request)
        .await
        .unwrap()
        .into_inner();
    held.until_waiting(3).await;
    gw.until_sends(20).await;
    (gw, results)
}

/// Once the broadcast has ended: the 17 waiting sends are dropped, and the
/// 3 calls under way finish when Graph answers them; nothing more goes out.
async fn the_rest_is_dropped(gw: &TestGateway, held: &HeldGraph) {
    gw.until_sends(3).await;
    held.release();
    gw.until_sends(0).await;
    assert_eq!(held.calls().len(), 3, "{:?}", held.texts());
}

#[tokio::test]
async fn a_caller_that_goes_mid_stream_leaves_nothing_unsent_going_out() {
    let held = HeldGraph::start().await;
    let (gw, results) = broadcast_under_way(&held, TestGateway::builder(), None).await;
    drop(results);
    the_rest_is_dropped(&gw, &held).await;
}

#[tokio::test]
async fn a_key_revoked_mid_stream_ends_the_broadcast_and_sends_nothing_more() {
    const KEY: &str = "mgw_broadcaster_0123456789abcdefghijklmnopqrstu";
    const OTHER: &str = "mgw_someone_else_0123456789abcdefghijklmnopqr";
    let held = HeldGraph::start().await;
    let builder = TestGateway::builder().keys(&key_entry("marketing", KEY, &["*"], &["send"]));
    let (gw, mut results) = broadcast_under_way(&held, builder, Some(KEY)).await;
    std::fs::write(
        &gw.keys_file,
        key_entry("someone-else", OTHER, &["*"], &["send"]),
    )
    .unwrap();
    gw.keys.reload().unwrap();
    // Ended at once, the sends held at Graph included: none had finished.
    let ended = tokio::time::timeout(Duration::from_secs(30), results.next())
        .await
        .expect("the stream ends")
        .expect("with a status");
    assert_eq!(ended.unwrap_err().code(), Code::Unauthenticated);
    the_rest_is_dropped(&gw, &held).await;
}

#[tokio::test]
async fn a_stream_deadline_and_key_scopes_hold_for_each_message() {
    use messenger_gateway::accounts::AccountSpec;
    use messenger_gateway::graph::{AccessToken, Account};
    const KEY: &str = "mgw_shop_broadcaster_0123456789abcdefghijklmno";
    const OTHER: &str = "17841400000000002";
    let other = Account::new("http://127.0.0.1:9/v25.0", OTHER, &AccessToken::new("t")).unwrap();
    let gw = TestGateway::builder()
        .keys(&key_entry("shop-only", KEY, &[ACCOUNT], &["send"]))
        .account(AccountSpec::new(other))
        .delivery(DeliveryPolicy {
            pace: Some(PaceLimits {
                standard: Rate::per_second(2),
                ..PaceLimits::default()
            }),
            ..quick_policy()
        })
        .start()
        .await;
    gw.graph_answers(ok_reply()).await;
    let messages = (0..10).map(|i| {
        let account = if i == 1 { OTHER } else { ACCOUNT };
        pb::SendRequest {
            account_id: account.into(),
            ..numbered(i)
        }
    });
    let mut request = with_key(tokio_stream::iter(messages), KEY);
    request.set_timeout(Duration::from_millis(1500));
    let mut results: Vec<pb::SendResult> = gw
        .client()
        .await
        .send_stream(request)
        .await
        .unwrap()
        .into_inner()
        .filter_map(Result::ok)
        .collect()
        .await;
    results.sort_by_key(|r| r.index);
    // The other account is outside the key: refused, nothing sent for it.
    assert_eq!(outcome(&results[1]), "ACCOUNT_NOT_ALLOWED");
    // At 2/s within a 1.5 s deadline, the rest that cannot fit are refused
    // as OVERLOADED, never sent.
    let sent = results.iter().filter(|r| outcome(r) == "OK").count();
    let overloaded = results
        .iter()
        .filter(|r| outcome(r) == "OVERLOADED")
        .count();
    assert!((2..=6).contains(&sent), "{sent} sent");
    assert_eq!(sent + overloaded + 1, results.len(), "{results:?}");
    // The stream ended once every send had: none is left to go later.
    assert_eq!(gw.graph_calls().await, sent, "nothing after the deadline");
}
