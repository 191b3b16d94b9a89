//! Real webhook payloads (captured deliveries, Meta's pages and dashboard
//! test button, other projects' fixtures: `tests/fixtures/webhooks`, each
//! file's source in its README) posted signed to a gateway. Every one is
//! acknowledged, every item it carries can be read back (typed where the
//! gateway models it, whole as Meta sent it in any case) or was counted as
//! refused, no event is dated before 2010, and a redelivery adds nothing.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use messenger_gateway::edge::grpc::pb;
use messenger_gateway::edge::grpc::pb::inbound_event::Event;

use crate::support::*;

/// 2010-01-01T00:00:00Z.
const EARLIEST_S: i64 = 1_262_304_000;

fn fixtures() -> BTreeMap<String, Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/webhooks");
    std::fs::read_dir(&dir)
        .unwrap()
        .map(|f| f.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            let name = p.file_stem().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect()
}

/// Every event the gateway holds: a marker message is delivered after
/// them, and the replay is read up to it (the marker left out).
async fn all_events(gw: &TestGateway) -> Vec<pb::InboundEvent> {
    static MARKERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = MARKERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let marker = format!("mid.end-of-reading.{n}");
    assert_eq!(
        gw.deliver(&messages_from_user(&[(&marker, "end", T0)]))
            .await,
        200
    );
    let mut stream = gw.events_after(0).await;
    let mut events = Vec::new();
    loop {
        let next = tokio::time::timeout(Duration::from_secs(30), stream.message())
            .await
            .expect("the replay reaches the marker")
            .unwrap()
            .expect("the stream stays open");
        if mid_of(&next).is_some_and(|m| m.starts_with("mid.end-of-reading.")) {
            if mid_of(&next) == Some(marker.as_str()) {
                return events;
            }
            continue;
        }
        events.push(next);
    }
}

async fn items_rejected(gw: &TestGateway) -> usize {
    gw.metric("messenger_gateway_webhook_items_rejected_total")
        .await as usize
}

/// What Meta sent for this event: the item beside the typed fields, or
/// the raw event's own JSON.
fn as_sent(e: &pb::InboundEvent) -> Value {
    match &e.event {
        Some(Event::Raw(raw)) => serde_json::from_str(&raw.json).unwrap(),
        _ => serde_json::from_str(&e.raw_json).unwrap(),
    }
}

fn mid_of(e: &pb::InboundEvent) -> Option<&str> {
    match &e.event {
        Some(Event::Message(m)) | Some(Event::Echo(m)) => Some(&m.mid),
        _ => None,
    }
}

/// Checks what every real payload must satisfy; answers its events.
async fn post_and_check(name: &str, body: &[u8]) -> Vec<pb::InboundEvent> {
    let gw = TestGateway::start().await;
    assert_eq!(gw.deliver(body).await, 200, "{name}: not acknowledged");
    let events = all_events(&gw).await;
    let rejected = items_rejected(&gw).await;
    let delivery: Value = serde_json::from_slice(body).unwrap();
    let object = delivery["object"].as_str().unwrap_or("instagram");

    for e in &events {
        let t = e.timestamp.as_ref().unwrap().seconds;
        assert!(t >= EARLIEST_S, "{name}: dated {t}: {e:?}");
        assert!(t <= T0 / 1000 + 86_400, "{name}: dated ahead {t}");
    }
    // Every item is an event (or a duplicate of one by its mid), or was
    // counted as refused.
    let mut accounted = 0;
    let mut items = 0;
    for entry in delivery["entry"].as_array().unwrap() {
        let found = |item: &Value| {
            events.iter().any(|e| {
                &as_sent(e) == item
                    || (object != "instagram" && &as_sent(e) == entry)
                    || item["message"]["mid"]
                        .as_str()
                        .is_some_and(|m| mid_of(e) == Some(m))
            })
        };
        if object != "instagram" {
            items += 1;
            accounted += usize::from(found(entry));
            continue;
        }
        for key in ["messaging", "standby", "changes"] {
            for item in entry[key].as_array().into_iter().flatten() {
                items += 1;
                accounted += usize::from(found(item));
            }
        }
    }
    assert_eq!(
        accounted + rejected,
        items,
        "{name}: {items} items, {accounted} found, {rejected} refused; events {events:?}"
    );

    // Meta redelivers: the same body again adds nothing.
    assert_eq!(gw.deliver(body).await, 200);
    assert_eq!(
        all_events(&gw).await.len(),
        events.len(),
        "{name}: redelivery"
    );
    events
}

#[tokio::test(flavor = "multi_thread")]
async fn every_real_payload_is_acknowledged_and_nothing_it_carries_is_lost() {
    let all = fixtures();
    assert!(all.len() >= 40, "{} fixtures", all.len());
    for (name, body) in &all {
        post_and_check(name, body).await;
    }
}

fn message(e: &pb::InboundEvent) -> &pb::InboundMessage {
    match &e.event {
        Some(Event::Message(m)) | Some(Event::Echo(m)) => m,
        other => panic!("not a message: {other:?}"),
    }
}

async fn events_of(name: &str) -> Vec<pb::InboundEvent> {
    post_and_check(name, &fixtures()[name]).await
}

#[tokio::test]
async fn a_captured_reel_share_keeps_its_title_and_video_id() {
    let events = events_of("captured_ig_reel_share_unicode_title").await;
    let reel = &message(&events[0]).attachments[0];
    assert_eq!(reel.r#type, "ig_reel");
    assert!(
        !reel.title.is_empty() && !reel.reel_video_id.is_empty(),
        "{reel:?}"
    );
    assert!(reel.url.starts_with("https://"), "{reel:?}");
}

#[tokio::test]
async fn a_captured_story_reply_names_the_story() {
    let events = events_of("captured_story_reply_escaped_slashes").await;
    let story = message(&events[0]).reply_to_story.clone().unwrap();
    assert!(!story.id.is_empty(), "{story:?}");
    assert!(
        story.url.starts_with("https://"),
        "no escaped slashes left: {story:?}"
    );
}

#[tokio::test]
async fn an_unsupported_message_says_so_instead_of_arriving_empty() {
    // Its poster redacted the ids to "some_id" (refused as not ids, as the
    // sweep above shows); with ids of Instagram's shape it is a message.
    let name = "captured_is_unsupported_shared_story_video_redacted_ids";
    let body = String::from_utf8(fixtures()[name].clone())
        .unwrap()
        .replace("some_id", "1234567890123456");
    let events = post_and_check(name, body.as_bytes()).await;
    assert!(message(&events[0]).unsupported);
}

#[tokio::test]
async fn one_item_with_three_event_keys_is_three_events_and_standby_is_marked() {
    let events = events_of("swift_fixture_three_event_keys_one_item_plus_standby").await;
    let kinds: Vec<(&str, bool)> = events
        .iter()
        .map(|e| match &e.event {
            Some(Event::Message(_)) => ("message", e.standby),
            Some(Event::Reaction(_)) => ("reaction", e.standby),
            Some(Event::Postback(_)) => ("postback", e.standby),
            Some(Event::Edit(_)) => ("edit", e.standby),
            other => panic!("{other:?}"),
        })
        .collect();
    for kind in [
        ("message", false),
        ("reaction", false),
        ("postback", false),
        ("edit", true),
    ] {
        assert!(kinds.contains(&kind), "{kind:?} in {kinds:?}");
    }
}

#[tokio::test]
async fn a_comment_is_dated_by_its_entry_time_in_seconds() {
    let body: Value =
        serde_json::from_slice(&fixtures()["captured_comment_on_reel_compact_value_before_field"])
            .unwrap();
    let events = events_of("captured_comment_on_reel_compact_value_before_field").await;
    let entry_time = body["entry"][0]["time"].as_i64().unwrap();
    assert_eq!(events[0].timestamp.unwrap().seconds, entry_time);
}

#[tokio::test]
async fn the_dashboard_test_message_is_a_message_dated_by_its_string_timestamp() {
    let events = events_of("captured_dashboard_test_messages_under_changes").await;
    assert_eq!(message(&events[0]).text, "random_text");
    assert_eq!(events[0].timestamp.unwrap().seconds, 1_527_459_824);
}

#[tokio::test]
async fn the_dashboard_tests_absurd_timestamp_falls_back_to_the_entry_time() {
    let events = events_of("dashboard_sample_message_reactions_numeric_odd_timestamp").await;
    let e = &events[0];
    assert_eq!(e.original_timestamp_ms, 233_445_667);
    assert!(e.timestamp.unwrap().seconds > EARLIEST_S);
}

#[tokio::test]
async fn an_edit_count_given_as_a_string_is_read() {
    let events = events_of("doc_message_edit_num_edit_as_string").await;
    let Some(Event::Edit(edit)) = &events[0].event else {
        panic!("{events:?}")
    };
    assert_eq!(edit.num_edit, 1);
}

#[tokio::test]
async fn a_page_delivery_is_kept_whole_and_named() {
    let events = events_of("restfb_page_message_is_unsupported_numeric_ids").await;
    assert_eq!(events[0].object, "page");
    assert!(matches!(&events[0].event, Some(Event::Raw(r)) if r.field == "entry"));
}

/// A NUL anywhere Meta may put one (text, an unknown key, a payload) is
/// stored and streamed, on both stores: never a 5xx Meta would retry for
/// 36 hours.
#[tokio::test]
async fn a_nul_in_a_delivery_is_stored_on_both_stores() {
    let body = serde_json::to_vec(&serde_json::json!({
        "object": "instagram",
        "entry": [{"id": ACCOUNT, "time": T0, "messaging": [
            {"sender": {"id": USER}, "recipient": {"id": ACCOUNT}, "timestamp": T0,
             "message": {"mid": "mid.nul.1", "text": "a\u{0}b", "extra\u{0}key": "x\u{0}"}},
            {"sender": {"id": USER}, "recipient": {"id": ACCOUNT}, "timestamp": T0,
             "postback": {"mid": "mid.nul.2", "title": "t\u{0}", "payload": "p\u{0}"}}
        ]}]
    }))
    .unwrap();
    let mut gateways = vec![("sqlite", TestGateway::start().await)];
    if let Some(url) = fresh_pg_database().await {
        let gw = TestGateway::builder()
            .configure(move |s| s.store = Some(url))
            .start()
            .await;
        gateways.push(("postgres", gw));
    }
    for (store, gw) in gateways {
        assert_eq!(gw.deliver(&body).await, 200, "{store}");
        let events = all_events(&gw).await;
        assert_eq!(events.len(), 2, "{store}: {events:?}");
        assert!(message(&events[0]).text.starts_with('a'), "{store}");
    }
}
