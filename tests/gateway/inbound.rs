//! Webhooks in, events out: signatures, parsing, deduplication and the
//! Subscribe stream.

use std::time::Duration;

use serde_json::json;

use messenger_gateway::edge::grpc::pb;
use messenger_gateway::edge::grpc::pb::inbound_event::Event;
use messenger_gateway::edge::webhook;

use crate::support::*;

fn texts(events: &[pb::InboundEvent]) -> Vec<String> {
    events
        .iter()
        .map(|e| match &e.event {
            Some(Event::Message(m)) => m.text.clone(),
            other => format!("{other:?}"),
        })
        .collect()
}

#[tokio::test]
async fn the_handshake_echoes_the_challenge_only_for_the_verify_token() {
    let gw = TestGateway::start().await;
    let http = reqwest::Client::new();
    let get = |mode: &str, token: &str| {
        http.get(format!(
            "{}?hub.mode={mode}&hub.verify_token={token}&hub.challenge=1158201444",
            gw.webhook_url
        ))
        .send()
    };
    let ok = get("subscribe", VERIFY_TOKEN).await.unwrap();
    assert_eq!(ok.status().as_u16(), 200);
    assert_eq!(ok.text().await.unwrap(), "1158201444");
    assert_eq!(
        get("subscribe", "wrong").await.unwrap().status().as_u16(),
        403
    );
    assert_eq!(
        get("unsubscribe", VERIFY_TOKEN)
            .await
            .unwrap()
            .status()
            .as_u16(),
        403
    );
    let bare = http.get(&gw.webhook_url).send().await.unwrap();
    assert_eq!(bare.status().as_u16(), 403);
}

#[tokio::test]
async fn deliveries_with_forged_or_missing_signatures_are_refused_and_not_recorded() {
    let gw = TestGateway::start().await;
    let body = messages_from_user(&[("m1", "forged", T0)]);
    assert_eq!(gw.deliver_signed(&body, None).await, 401);
    let wrong_key = webhook::sign("not-the-app-secret", &body);
    assert_eq!(gw.deliver_signed(&body, Some(&wrong_key)).await, 401);
    let other_body = webhook::sign(APP_SECRET, &messages_from_user(&[("m1", "other", T0)]));
    assert_eq!(gw.deliver_signed(&body, Some(&other_body)).await, 401);
    assert_eq!(gw.deliver_signed(&body, Some("sha256=00")).await, 401);

    // Nothing was kept: the first event anyone sees is the genuine one.
    let genuine = messages_from_user(&[("m2", "genuine", T0)]);
    assert_eq!(gw.deliver(&genuine).await, 200);
    let mut events = gw.events_after(0).await;
    let got = next_events(&mut events, 1).await;
    assert_eq!((got[0].seq, texts(&got)), (1, vec!["genuine".to_owned()]));
    assert_quiet(&mut events).await;
    let window = gw.window_with(USER).await;
    assert_eq!(window.state, pb::WindowState::Open as i32);
}

#[tokio::test]
async fn bodies_over_one_mebibyte_or_not_json_are_refused() {
    let gw = TestGateway::start().await;
    let mut huge = messages_from_user(&[("m1", "x", T0)]);
    huge.splice(
        1..1,
        format!("\"pad\":\"{}\",", "a".repeat(webhook::MAX_BODY_BYTES)).bytes(),
    );
    let status = gw.deliver(&huge).await;
    assert_eq!(status, 413);
    assert_eq!(gw.deliver(b"<html>not json</html>").await, 400);
    assert_eq!(gw.deliver(br#"{"object":"instagram"}"#).await, 400);
    let mut events = gw.events_after(0).await;
    assert_quiet(&mut events).await;
}

#[tokio::test]
async fn a_batch_is_stored_once_in_time_order_and_redeliveries_add_nothing() {
    let gw = TestGateway::start().await;
    let batch = messages_from_user(&[
        ("m3", "third", T0 + 3000),
        ("m1", "first", T0 + 1000),
        ("m2", "second", T0 + 2000),
        ("m1", "first", T0 + 1000),
    ]);
    assert_eq!(gw.deliver(&batch).await, 200);
    // Meta redelivers the same signed body (a replay): accepted, not repeated.
    assert_eq!(gw.deliver(&batch).await, 200);
    let overlap = messages_from_user(&[("m2", "second", T0 + 2000), ("m4", "fourth", T0 + 4000)]);
    assert_eq!(gw.deliver(&overlap).await, 200);

    let mut events = gw.events_after(0).await;
    let got = next_events(&mut events, 4).await;
    assert_eq!(texts(&got), ["first", "second", "third", "fourth"]);
    let seqs: Vec<u64> = got.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [1, 2, 3, 4]);
    assert_eq!(got[0].sender_id, USER);
    assert_eq!(got[0].account_id, ACCOUNT);
    assert_eq!(got[0].timestamp.unwrap().seconds, (T0 + 1000) / 1000);
    assert_quiet(&mut events).await;
}

#[tokio::test]
async fn every_event_kind_reaches_subscribers_typed_and_unknown_kinds_raw() {
    let gw = TestGateway::start().await;
    let item = |ts: i64, key: &str, value: serde_json::Value| json!({"sender":{"id":USER},"recipient":{"id":ACCOUNT},"timestamp":ts, key: value});
    let echo = json!({"sender":{"id":ACCOUNT},"recipient":{"id":USER},"timestamp":T0 + 2,
                      "message":{"mid":"e1","text":"our reply","is_echo":true}});
    let body = serde_json::to_vec(&json!({"object":"instagram","entry":[{"id":ACCOUNT,"time":T0,"messaging":[
        item(T0 + 1, "message", json!({"mid":"m1","text":"hi","quick_reply":{"payload":"YES"}})),
        echo,
        item(T0 + 3, "reaction", json!({"mid":"e1","action":"react","reaction":"love","emoji":"❤️"})),
        item(T0 + 4, "postback", json!({"mid":"p1","title":"Buy","payload":"BUY"})),
        item(T0 + 5, "read", json!({"mid":"e1"})),
        item(T0 + 6, "referral", json!({"ref":"spring","source":"ADS","type":"OPEN_THREAD"})),
        item(T0 + 7, "message_edit", json!({"mid":"m1","text":"hello","num_edit":1})),
        item(T0 + 8, "brand_new_kind", json!({"x": 1})),
    ]}, {"id":ACCOUNT,"time":T0 + 9,"changes":[{"field":"comments","value":{"id":"c1","text":"nice"}}]}]}))
    .unwrap();
    assert_eq!(gw.deliver(&body).await, 200);
    let mut events = gw.events_after(0).await;
    let got = next_events(&mut events, 9).await;
    let kinds: Vec<&Event> = got.iter().map(|e| e.event.as_ref().unwrap()).collect();
    assert!(
        matches!(kinds[0], Event::Message(m) if m.text == "hi" && m.quick_reply_payload == "YES")
    );
    assert!(matches!(kinds[1], Event::Echo(m) if m.text == "our reply"));
    assert!(matches!(kinds[2], Event::Reaction(r) if r.action == "react" && r.reaction == "love"));
    assert!(matches!(kinds[3], Event::Postback(p) if p.payload == "BUY"));
    assert!(matches!(kinds[4], Event::Read(r) if r.mid == "e1"));
    assert!(matches!(kinds[5], Event::Referral(r) if r.r#ref == "spring" && r.source == "ADS"));
    assert!(matches!(kinds[6], Event::Edit(e) if e.text == "hello" && e.num_edit == 1));
    assert!(
        matches!(kinds[7], Event::Raw(r) if r.field == "messaging" && r.json.contains("brand_new_kind"))
    );
    assert!(matches!(kinds[8], Event::Raw(r) if r.field == "comments" && r.json.contains("nice")));
}

#[tokio::test]
async fn subscribers_resume_after_a_seq_with_no_gap_and_no_duplicate() {
    let gw = TestGateway::start().await;
    let batch: Vec<(String, String, i64)> = (1..=5)
        .map(|i| (format!("m{i}"), format!("t{i}"), T0 + i))
        .collect();
    let items: Vec<(&str, &str, i64)> = batch
        .iter()
        .map(|(m, t, s)| (m.as_str(), t.as_str(), *s))
        .collect();
    assert_eq!(gw.deliver(&messages_from_user(&items)).await, 200);

    let mut first = gw.events_after(0).await;
    let got = next_events(&mut first, 3).await;
    let last_handled = got[2].seq;
    drop(first); // the caller disconnects after handling three

    let mut resumed = gw.events_after(last_handled).await;
    let mut other = gw.events_after(0).await;
    assert_eq!(texts(&next_events(&mut resumed, 2).await), ["t4", "t5"]);
    assert_eq!(
        gw.deliver(&messages_from_user(&[("m6", "t6", T0 + 6)]))
            .await,
        200
    );
    assert_eq!(texts(&next_events(&mut resumed, 1).await), ["t6"]);
    assert_quiet(&mut resumed).await;
    let everything = next_events(&mut other, 6).await;
    let seqs: Vec<u64> = everything.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5, 6]);
}

#[tokio::test]
async fn a_subscriber_that_never_reads_blocks_neither_intake_nor_others() {
    let gw = TestGateway::start().await;
    let _stalled = gw.events_after(0).await; // never read
    let mut reader = gw.events_after(0).await;
    const N: usize = 2000;
    for chunk in 0..(N / 100) {
        let batch: Vec<(String, String, i64)> = (0..100)
            .map(|i| {
                let n = chunk * 100 + i;
                (format!("m{n}"), "x".repeat(200), T0 + n as i64)
            })
            .collect();
        let items: Vec<(&str, &str, i64)> = batch
            .iter()
            .map(|(m, t, s)| (m.as_str(), t.as_str(), *s))
            .collect();
        let status = tokio::time::timeout(
            Duration::from_secs(5),
            gw.deliver(&messages_from_user(&items)),
        )
        .await
        .expect("intake answers promptly");
        assert_eq!(status, 200);
    }
    let got = next_events(&mut reader, N).await;
    assert_eq!(got.last().unwrap().seq, N as u64);
}
