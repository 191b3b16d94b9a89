//! Every send's fate known: a send whose Graph answer was lost is kept as
//! pending and settled by Instagram's echo of it (or not seen past the
//! horizon); echoes of the gateway's own sends are joined to them; reads
//! and reactions are attached to the messages they name.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use messenger_gateway::edge::grpc::pb;
use messenger_gateway::edge::grpc::pb::inbound_event::Event;
use messenger_gateway::send::delivery::DeliveryPolicy;
use messenger_gateway::send::guard::GuardPolicy;
use serde_json::json;
use tonic::Code;
use wiremock::MockServer;

use crate::support::*;

/// A webhook delivery carrying one messaging item from the account's side
/// (an echo) or the person's.
fn delivery(item: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "object": "instagram",
        "entry": [{"id": ACCOUNT, "time": T0, "messaging": [item]}]
    }))
    .unwrap()
}

fn echo_of(mid: &str, text: &str) -> Vec<u8> {
    delivery(json!({
        "sender": {"id": ACCOUNT}, "recipient": {"id": USER}, "timestamp": T0 + 5,
        "message": {"mid": mid, "text": text, "is_echo": true}
    }))
}

fn with_id(request_id: &str, text: &str) -> pb::SendRequest {
    pb::SendRequest {
        request_id: request_id.into(),
        ..text_to(USER, text)
    }
}

/// A Graph that reads each request and hangs up without answering: the
/// call reached Graph, and its outcome is unknown.
async fn graph_that_cuts_the_connection() -> (String, Arc<AtomicUsize>) {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                // The whole request, then the connection dropped.
                let _ = tokio::time::timeout(Duration::from_millis(200), async {
                    while socket.read(&mut buf).await.is_ok_and(|n| n > 0) {}
                })
                .await;
            });
        }
    });
    (format!("http://{addr}/v25.0"), calls)
}

async fn gateway_whose_graph_cuts(horizon: Duration) -> (TestGateway, Arc<AtomicUsize>) {
    let (base, calls) = graph_that_cuts_the_connection().await;
    let gw = TestGateway::builder()
        .graph(MockServer::start().await, &base)
        .delivery(DeliveryPolicy {
            max_attempts: 1,
            ..quick_policy()
        })
        .guard(GuardPolicy {
            echo_horizon: horizon,
            ..GuardPolicy::default()
        })
        .start()
        .await;
    (gw, calls)
}

async fn get_send(
    gw: &TestGateway,
    request: pb::GetSendRequest,
) -> Result<pb::GetSendResponse, tonic::Status> {
    gw.client()
        .await
        .get_send(request)
        .await
        .map(|r| r.into_inner())
}

fn by_send_id(send_id: &str) -> pb::GetSendRequest {
    pb::GetSendRequest {
        send_id: send_id.into(),
        ..Default::default()
    }
}

fn by_request_id(request_id: &str) -> pb::GetSendRequest {
    pb::GetSendRequest {
        request_id: request_id.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_send_whose_connection_was_cut_is_pending_until_its_echo_settles_it() {
    let (gw, calls) = gateway_whose_graph_cuts(Duration::from_secs(600)).await;
    let mut live = gw.all_events_after(0).await;
    let lost = gw
        .client()
        .await
        .send(with_id("order-1", "Your order has shipped"))
        .await
        .unwrap_err();
    let (reason, meta) = error_info(&lost);
    assert_eq!(reason, "DELIVERY_UNKNOWN", "{lost:?}");
    let send_id = meta
        .get("sendId")
        .expect("the answer names the pending send")
        .clone();
    assert!(lost.message().contains("GetSend"), "{}", lost.message());
    let pending = get_send(&gw, by_send_id(&send_id)).await.unwrap();
    assert_eq!(pending.state, pb::SendState::Pending as i32);
    assert_eq!(pending.request_id, "order-1");
    assert_eq!(pending.recipient_id, USER);
    assert_eq!(
        gw.metric_with(
            "messenger_gateway_unknown_sends_total",
            "outcome=\"pending\""
        )
        .await,
        1.0
    );

    // Another text to the same person settles nothing; the echo of this one does.
    assert_eq!(gw.deliver(&echo_of("m.other", "something else")).await, 200);
    assert_eq!(
        gw.deliver(&echo_of("m.shipped", "Your order has shipped"))
            .await,
        200
    );
    let sent = get_send(&gw, by_send_id(&send_id)).await.unwrap();
    assert_eq!(sent.state, pb::SendState::Sent as i32, "{sent:?}");
    assert_eq!(sent.message_id, "m.shipped");
    assert!(sent.confirmed_by_echo);
    assert!(sent.resolved_at.is_some());
    let by_request = get_send(&gw, by_request_id("order-1")).await.unwrap();
    assert_eq!(
        (by_request.state, by_request.message_id.as_str()),
        (pb::SendState::Sent as i32, "m.shipped")
    );
    assert_eq!(
        gw.metric_with("messenger_gateway_unknown_sends_total", "outcome=\"sent\"")
            .await,
        1.0
    );

    // The stream holds the elsewhere-sent echo, then this send as outbound.
    let events = next_events(&mut live, 2).await;
    assert!(matches!(&events[0].event, Some(Event::Echo(m)) if m.mid == "m.other"));
    let Some(Event::Sent(m)) = &events[1].event else {
        panic!("the echo became the send's sent event: {:?}", events[1]);
    };
    assert_eq!(
        (m.mid.as_str(), m.send_id.as_str(), m.request_id.as_str()),
        ("m.shipped", send_id.as_str(), "order-1")
    );
    assert!(m.confirmed_by_echo);
    assert_eq!(m.text, "Your order has shipped");

    // A retry under the same request_id answers the settled send, with no new call.
    let retried = gw
        .client()
        .await
        .send(with_id("order-1", "Your order has shipped"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retried.message_id, "m.shipped");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_retry_while_the_send_is_pending_waits_for_its_echo() {
    let (gw, _) = gateway_whose_graph_cuts(Duration::from_secs(600)).await;
    let lost = gw
        .client()
        .await
        .send(with_id("order-2", "Ready for pickup"))
        .await
        .unwrap_err();
    assert_eq!(error_info(&lost).0, "DELIVERY_UNKNOWN");
    let mut client = gw.client().await;
    let retry = tokio::spawn(async move {
        let mut request = tonic::Request::new(with_id("order-2", "Ready for pickup"));
        request.set_timeout(Duration::from_secs(20));
        client.send(request).await
    });
    // The retry is waiting, not answered DELIVERY_UNKNOWN at once.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!retry.is_finished());
    assert_eq!(
        gw.deliver(&echo_of("m.ready", "Ready for pickup")).await,
        200
    );
    let answered = within("the retry's answer", retry)
        .await
        .unwrap()
        .unwrap()
        .into_inner();
    assert_eq!(answered.message_id, "m.ready");
}

#[tokio::test]
async fn a_pending_send_with_no_echo_is_not_seen_past_the_horizon_and_never_resent() {
    let (gw, calls) = gateway_whose_graph_cuts(Duration::from_secs(1)).await;
    let lost = gw
        .client()
        .await
        .send(with_id("order-3", "Hello?"))
        .await
        .unwrap_err();
    let send_id = error_info(&lost).1["sendId"].clone();
    gw.clock.advance_ms(1_500);
    let gone = get_send(&gw, by_request_id("order-3")).await.unwrap();
    assert_eq!(gone.state, pb::SendState::NotSeen as i32);
    assert_eq!(gone.send_id, send_id);
    eventually(Duration::from_secs(10), "the sweep counts it", || async {
        gw.metric_with(
            "messenger_gateway_unknown_sends_total",
            "outcome=\"not_seen\"",
        )
        .await
            == 1.0
    })
    .await;
    // An echo after the horizon settles nothing: it is an echo of its own.
    assert_eq!(gw.deliver(&echo_of("m.late", "Hello?")).await, 200);
    assert_eq!(
        get_send(&gw, by_send_id(&send_id)).await.unwrap().state,
        pb::SendState::NotSeen as i32
    );
    let repeat = gw
        .client()
        .await
        .send(with_id("order-3", "Hello?"))
        .await
        .unwrap_err();
    assert_eq!(error_info(&repeat).0, "DELIVERY_UNKNOWN");
    assert_eq!(error_info(&repeat).1["sendId"], send_id);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_send_that_failed_under_a_request_id_is_failed_with_its_reason() {
    let gw = TestGateway::start().await;
    gw.graph_answers(graph_error(
        400,
        100,
        Some(2534014),
        "No matching user found",
    ))
    .await;
    let refused = gw
        .client()
        .await
        .send(with_id("order-4", "Hi"))
        .await
        .unwrap_err();
    assert_eq!(error_info(&refused).0, "RECIPIENT_NOT_FOUND");
    let failed = get_send(&gw, by_request_id("order-4")).await.unwrap();
    assert_eq!(failed.state, pb::SendState::Failed as i32);
    let error = failed.error.expect("the failure");
    assert_eq!(error.code, Code::NotFound as i32);
    assert!(
        error.message.starts_with("RECIPIENT_NOT_FOUND"),
        "{}",
        error.message
    );
    assert!(!error.message.contains(TOKEN));
    // A send that went through is SENT, straight from Graph's answer.
    gw.graph.reset().await;
    gw.graph_answers(ok_reply()).await;
    let ok = gw
        .client()
        .await
        .send(with_id("order-4", "Hi"))
        .await
        .unwrap()
        .into_inner();
    let sent = get_send(&gw, by_request_id("order-4")).await.unwrap();
    assert_eq!(
        (sent.state, sent.message_id),
        (pb::SendState::Sent as i32, ok.message_id)
    );
    assert!(!sent.confirmed_by_echo);
}

#[tokio::test]
async fn get_send_refuses_a_bad_lookup_and_answers_not_found_for_an_unknown_one() {
    let gw = TestGateway::start().await;
    for (request, field) in [
        (pb::GetSendRequest::default(), "request_id"),
        (
            pb::GetSendRequest {
                request_id: "a".into(),
                send_id: "b".into(),
                ..Default::default()
            },
            "send_id",
        ),
        (by_send_id("not hex!"), "send_id"),
        (by_send_id(&"a".repeat(65)), "send_id"),
        (by_request_id(&"r".repeat(37)), "request_id"),
    ] {
        let refused = get_send(&gw, request).await.unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
        assert!(
            format!("{:?}", refused.details()).contains(field) || refused.message().contains(field),
            "{refused:?}"
        );
    }
    let unknown = get_send(&gw, by_request_id("never-sent"))
        .await
        .unwrap_err();
    assert_eq!(
        (unknown.code(), error_info(&unknown).0.as_str()),
        (Code::NotFound, "SEND_NOT_FOUND")
    );
    let unknown = get_send(&gw, by_send_id("abcdef")).await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
}

#[tokio::test]
async fn an_echo_of_a_gateway_send_is_joined_to_it_and_reads_and_reactions_follow() {
    let gw = TestGateway::start().await;
    gw.graph_answers(ok_reply()).await;
    let mut live = gw.all_events_after(0).await;
    let sent = gw
        .client()
        .await
        .send(with_id("order-5", "Thanks!"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(gw.deliver(&echo_of(&sent.message_id, "Thanks!")).await, 200);
    let read = delivery(json!({
        "sender": {"id": USER}, "recipient": {"id": ACCOUNT}, "timestamp": T0 + 10,
        "read": {"mid": sent.message_id}
    }));
    assert_eq!(gw.deliver(&read).await, 200);
    let reaction = delivery(json!({
        "sender": {"id": USER}, "recipient": {"id": ACCOUNT}, "timestamp": T0 + 20,
        "reaction": {"mid": sent.message_id, "action": "react", "reaction": "love", "emoji": "❤"}
    }));
    assert_eq!(gw.deliver(&reaction).await, 200);
    // The stream: the send, the read, the reaction; no second copy from the echo.
    let kinds: Vec<_> = next_events(&mut live, 3)
        .await
        .into_iter()
        .map(|e| match e.event {
            Some(Event::Sent(_)) => "sent",
            Some(Event::Read(_)) => "read",
            Some(Event::Reaction(_)) => "reaction",
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(kinds, ["sent", "read", "reaction"]);
    assert_quiet(&mut live).await;

    let record = gw
        .client()
        .await
        .get_message(pb::GetMessageRequest {
            message_id: sent.message_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(record.direction, pb::Direction::Outbound as i32);
    assert_eq!(record.status, pb::MessageStatus::Read as i32);
    assert!(record.sent_by_gateway);
    assert_eq!(record.request_id, "order-5");
    assert!(record.echoed_at.is_some() && record.read_at.is_some());
    assert_eq!(record.reactions.len(), 1);
    assert_eq!(
        (
            record.reactions[0].by.as_str(),
            record.reactions[0].reaction.as_str()
        ),
        (USER, "love")
    );
    let missing = gw
        .client()
        .await
        .get_message(pb::GetMessageRequest {
            message_id: "m.none".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(error_info(&missing).0, "MESSAGE_NOT_FOUND");
    let bad = gw
        .client()
        .await
        .get_message(pb::GetMessageRequest {
            message_id: "m\nx".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn a_key_sees_only_its_own_request_ids_and_its_accounts_messages() {
    const KEY: &str = "mgw_sender_secret_0123456789abcdefghijklmnopqrstu";
    const OTHER: &str = "mgw_other_secret_0123456789abcdefghijklmnopqrstuv";
    let keys = format!(
        "{}{}",
        key_entry("crm", KEY, &["*"], &["send", "subscribe"]),
        key_entry("elsewhere", OTHER, &["99999"], &["send", "subscribe"])
    );
    let gw = TestGateway::builder().keys(&keys).start().await;
    gw.graph_answers(ok_reply()).await;
    let sent = gw
        .client()
        .await
        .send(with_key(with_id("mine", "Hi"), KEY))
        .await
        .unwrap()
        .into_inner();
    let mut client = gw.client().await;
    assert!(
        client
            .get_send(with_key(by_request_id("mine"), KEY))
            .await
            .is_ok()
    );
    // Another key's request ids are its own: this one is unknown to it.
    let theirs = pb::GetSendRequest {
        account_id: ACCOUNT.into(),
        ..by_request_id("mine")
    };
    let refused = client.get_send(with_key(theirs, OTHER)).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    let message = pb::GetMessageRequest {
        account_id: ACCOUNT.into(),
        message_id: sent.message_id,
    };
    let refused = client
        .get_message(with_key(message, OTHER))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
}
