//! `SendLedger` and what ingesting does to the thread record: echoes
//! joined to sends, pending sends settled by their echo or their horizon,
//! reads and reactions.

use super::*;
use crate::model::event::SentMessage;
use crate::model::message::Priority;

fn sent(mid: &str, ts: i64) -> InboundEvent {
    InboundEvent::new(
        "A",
        "A",
        "U",
        ts,
        EventKind::Sent(SentMessage {
            mid: mid.into(),
            body_json: r#"{"recipient":{"id":"U"},"message":{"text":"hello"}}"#.into(),
            ..SentMessage::default()
        }),
    )
}

fn echo(mid: &str, to: &str, text: &str, ts: i64) -> InboundEvent {
    InboundEvent::new(
        "A",
        "A",
        to,
        ts,
        EventKind::Echo(MessageEvent {
            mid: mid.into(),
            text: text.into(),
            ..MessageEvent::default()
        }),
    )
}

fn pending(send_id: &str, to: &str, text: &str, created_ms: i64) -> SendRecord {
    SendRecord {
        send_id: send_id.into(),
        account: "A".into(),
        user: to.into(),
        scope: format!("key\u{1f}A\u{1f}req-{send_id}"),
        request_id: format!("req-{send_id}"),
        key_id: "key".into(),
        priority: Priority::Interactive,
        content_key: Some(format!("text:{text}")),
        body_json: format!(r#"{{"recipient":{{"id":"{to}"}},"message":{{"text":"{text}"}}}}"#),
        created_ms,
        expires_ms: created_ms + 1_000,
        state: SendState::Pending,
    }
}

async fn kinds(store: &dyn Store) -> Vec<&'static str> {
    let events = store.events_after(0, 100).await.unwrap();
    events.iter().map(|e| e.event.kind.name()).collect()
}

#[tokio::test]
async fn an_echo_of_a_message_the_gateway_sent_is_joined_to_it_not_stored_again() {
    for b in backends().await {
        let store = &*b.store;
        store.ingest(vec![sent("m.s", 10)], 100).await.unwrap();
        let joined = store
            .ingest(vec![echo("m.s", "U", "hello", 11)], 200)
            .await
            .unwrap();
        assert_eq!((joined.new_events, joined.joined), (0, 1), "{}", b.name);
        let again = store
            .ingest(vec![echo("m.s", "U", "hello", 11)], 300)
            .await
            .unwrap();
        assert_eq!((again.duplicates, again.joined), (1, 0), "{}", b.name);
        assert_eq!(kinds(store).await, ["sent"], "{}", b.name);
        let record = store.message("A", "m.s").await.unwrap().unwrap();
        assert_eq!(record.echoed_ms, Some(200), "{}", b.name);
        assert!(
            matches!(record.event.event.kind, EventKind::Sent(_)),
            "{}",
            b.name
        );
    }
}

#[tokio::test]
async fn an_echo_in_the_same_delivery_as_its_send_is_joined_too() {
    for b in backends().await {
        let store = &*b.store;
        let done = store
            .ingest(vec![sent("m.s", 10), echo("m.s", "U", "hello", 11)], 100)
            .await
            .unwrap();
        assert_eq!((done.new_events, done.joined), (1, 1), "{}", b.name);
        assert_eq!(kinds(store).await, ["sent"], "{}", b.name);
    }
}

#[tokio::test]
async fn an_echo_that_beats_graphs_answer_is_kept_and_the_send_is_marked_echoed() {
    for b in backends().await {
        let store = &*b.store;
        store
            .ingest(vec![echo("m.s", "U", "hello", 9)], 100)
            .await
            .unwrap();
        store.ingest(vec![sent("m.s", 10)], 200).await.unwrap();
        assert_eq!(kinds(store).await, ["echo", "sent"], "{}", b.name);
        let record = store.message("A", "m.s").await.unwrap().unwrap();
        assert!(
            matches!(record.event.event.kind, EventKind::Sent(_)),
            "{}",
            b.name
        );
        assert_eq!(record.echoed_ms, Some(200), "{}", b.name);
    }
}

#[tokio::test]
async fn an_echo_of_a_message_sent_elsewhere_is_stored_as_an_echo() {
    for b in backends().await {
        let store = &*b.store;
        let done = store
            .ingest(vec![echo("m.app", "U", "typed in the app", 10)], 100)
            .await
            .unwrap();
        assert_eq!((done.new_events, done.joined, done.resolved), (1, 0, 0));
        let record = store.message("A", "m.app").await.unwrap().unwrap();
        assert!(
            matches!(record.event.event.kind, EventKind::Echo(_)),
            "{}",
            b.name
        );
        assert_eq!(record.echoed_ms, None, "{}", b.name);
    }
}

#[tokio::test]
async fn a_pending_send_is_settled_by_the_echo_of_its_content_and_stored_as_its_sent_event() {
    for b in backends().await {
        let store = &*b.store;
        store
            .keep_send(pending("s1", "U", "hello", 100))
            .await
            .unwrap();
        store
            .keep_send(pending("s2", "U", "hello", 150))
            .await
            .unwrap();
        // Another person, other words: neither settles anything.
        let other = store
            .ingest(
                vec![echo("m.v", "V", "hello", 1), echo("m.w", "U", "bye", 1)],
                200,
            )
            .await
            .unwrap();
        assert_eq!((other.new_events, other.resolved), (2, 0), "{}", b.name);
        let done = store
            .ingest(vec![echo("m.1", "U", "hello", 205)], 210)
            .await
            .unwrap();
        assert_eq!((done.new_events, done.resolved), (1, 1), "{}", b.name);
        // The oldest pending send with that content.
        let first = store.send_by_id("s1").await.unwrap().unwrap();
        assert_eq!(
            first.state,
            SendState::Sent {
                mid: "m.1".into(),
                at_ms: 210
            },
            "{}",
            b.name
        );
        assert_eq!(
            store.send_by_id("s2").await.unwrap().unwrap().state,
            SendState::Pending,
            "{}",
            b.name
        );
        let events = store.events_after(0, 10).await.unwrap();
        let EventKind::Sent(m) = &events.last().unwrap().event.kind else {
            panic!("{}: the echo became the send's sent event", b.name);
        };
        assert_eq!(
            (m.mid.as_str(), m.send_id.as_str(), m.request_id.as_str()),
            ("m.1", "s1", "req-s1"),
            "{}",
            b.name
        );
        assert!(m.confirmed_by_echo, "{}", b.name);
        assert_eq!(events.last().unwrap().event.timestamp_ms, 205, "{}", b.name);
        // A redelivery of that echo settles nothing more.
        let again = store
            .ingest(vec![echo("m.1", "U", "hello", 205)], 220)
            .await
            .unwrap();
        assert_eq!((again.duplicates, again.resolved), (1, 0), "{}", b.name);
        assert_eq!(
            store.message("A", "m.1").await.unwrap().unwrap().echoed_ms,
            Some(210),
            "{}",
            b.name
        );
    }
}

#[tokio::test]
async fn a_pending_send_past_its_horizon_is_not_settled_and_is_resolved_as_not_seen() {
    for b in backends().await {
        let store = &*b.store;
        store
            .keep_send(pending("s1", "U", "hello", 100))
            .await
            .unwrap();
        // Its horizon is 1100.
        let late = store
            .ingest(vec![echo("m.1", "U", "hello", 1200)], 1200)
            .await
            .unwrap();
        assert_eq!(late.resolved, 0, "{}", b.name);
        assert_eq!(store.expire_sends(1000).await.unwrap(), 0, "{}", b.name);
        assert_eq!(store.expire_sends(1200).await.unwrap(), 1, "{}", b.name);
        assert_eq!(
            store.send_by_id("s1").await.unwrap().unwrap().state,
            SendState::NotSeen { at_ms: 1200 },
            "{}",
            b.name
        );
        assert_eq!(store.expire_sends(1300).await.unwrap(), 0, "{}", b.name);
    }
}

#[tokio::test]
async fn a_send_is_found_by_its_request_scope_newest_first() {
    for b in backends().await {
        let store = &*b.store;
        let mut failed = pending("s1", "U", "hello", 100);
        failed.state = SendState::Failed {
            reason: "OUTSIDE_MESSAGING_WINDOW".into(),
            message: "closed".into(),
        };
        let mut again = failed.clone();
        again.send_id = "s2".into();
        again.created_ms = 200;
        store.keep_send(failed.clone()).await.unwrap();
        store.keep_send(again.clone()).await.unwrap();
        let found = store.send_by_request(&failed.scope).await.unwrap();
        assert_eq!(found, Some(again), "{}", b.name);
        assert_eq!(store.send_by_request("other").await.unwrap(), None);
        assert_eq!(store.send_by_id("nope").await.unwrap(), None);
    }
}

#[tokio::test]
async fn a_read_marks_the_outbound_messages_up_to_its_message_as_read() {
    for b in backends().await {
        let store = &*b.store;
        store
            .ingest(vec![sent("m1", 10), sent("m2", 20), sent("m3", 30)], 100)
            .await
            .unwrap();
        let read = InboundEvent::new("A", "U", "A", 40, EventKind::Read { mid: "m2".into() });
        store.ingest(vec![read], 200).await.unwrap();
        let read_at = |mid: &'static str| async move {
            store.message("A", mid).await.unwrap().unwrap().read_ms
        };
        assert_eq!(read_at("m1").await, Some(40), "{}", b.name);
        assert_eq!(read_at("m2").await, Some(40), "{}", b.name);
        assert_eq!(read_at("m3").await, None, "{}", b.name);
        // A read of an earlier message moves nothing back.
        let older = InboundEvent::new("A", "U", "A", 50, EventKind::Read { mid: "m1".into() });
        store.ingest(vec![older], 300).await.unwrap();
        assert_eq!(read_at("m2").await, Some(40), "{}", b.name);
    }
}

#[tokio::test]
async fn reactions_of_either_side_are_attached_to_their_message() {
    for b in backends().await {
        let store = &*b.store;
        store.ingest(vec![message("m1", 10)], 100).await.unwrap();
        let theirs = |action: &str| {
            InboundEvent::new(
                "A",
                "U",
                "A",
                20,
                EventKind::Reaction {
                    mid: "m1".into(),
                    action: action.into(),
                    reaction: "love".into(),
                    emoji: "❤".into(),
                },
            )
        };
        let ours = InboundEvent::new(
            "A",
            "A",
            "U",
            30,
            EventKind::SentReaction {
                mid: "m1".into(),
                action: "react".into(),
                reaction: "like".into(),
                key_id: String::new(),
            },
        );
        store
            .ingest(vec![theirs("react"), ours], 200)
            .await
            .unwrap();
        let marks = store.message("A", "m1").await.unwrap().unwrap().reactions;
        let by: Vec<_> = marks
            .iter()
            .map(|m| (m.by.as_str(), m.reaction.as_str()))
            .collect();
        assert_eq!(by, [("U", "love"), ("A", "like")], "{}", b.name);
        let mut unreact = theirs("unreact");
        unreact.timestamp_ms = 40;
        store.ingest(vec![unreact], 300).await.unwrap();
        let marks = store.message("A", "m1").await.unwrap().unwrap().reactions;
        assert_eq!(marks.len(), 1, "{}", b.name);
        assert_eq!(
            store.message("A", "none").await.unwrap(),
            None,
            "{}",
            b.name
        );
        assert_eq!(store.message("B", "m1").await.unwrap(), None, "{}", b.name);
    }
}

#[tokio::test]
async fn an_echo_taken_in_by_one_replica_settles_a_send_another_kept() {
    let Some((one, two)) = pg_pair().await else {
        return;
    };
    one.keep_send(pending("s1", "U", "hello", 100))
        .await
        .unwrap();
    let done = two
        .ingest(vec![echo("m.1", "U", "hello", 150)], 150)
        .await
        .unwrap();
    assert_eq!(done.resolved, 1);
    assert!(matches!(
        one.send_by_id("s1").await.unwrap().unwrap().state,
        SendState::Sent { .. }
    ));
    // Joined on the other replica too.
    let sent_elsewhere = one.ingest(vec![sent("m.2", 160)], 160).await.unwrap();
    assert_eq!(sent_elsewhere.new_events, 1);
    let joined = two
        .ingest(vec![echo("m.2", "U", "hello", 161)], 170)
        .await
        .unwrap();
    assert_eq!(joined.joined, 1);
}
