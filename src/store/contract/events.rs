//! `EventLog`: numbering, order, deduplication, the windows events open.

use super::*;

#[tokio::test]
async fn events_are_numbered_in_order_deduplicated_and_open_windows() {
    for b in backends().await {
        let store = &*b.store;
        let mut feed = store.committed();
        let first = store
            .ingest(vec![message("m1", 10), message("m2", 20)], 100)
            .await
            .unwrap();
        assert_eq!(
            (first.new_events, first.duplicates, first.head),
            (2, 0, 2),
            "{}",
            b.name
        );
        let again = store
            .ingest(vec![message("m2", 20), message("m3", 30)], 100)
            .await
            .unwrap();
        assert_eq!(
            (again.new_events, again.duplicates, again.head),
            (1, 1, 3),
            "{}",
            b.name
        );
        let seqs: Vec<u64> = store
            .events_after(1, 10)
            .await
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(seqs, [2, 3], "{}", b.name);
        for expected in 1..=3 {
            let e = tokio::time::timeout(Duration::from_secs(5), feed.recv())
                .await
                .expect("the feed carries every commit")
                .unwrap();
            assert_eq!(e.seq, expected, "{}", b.name);
        }
        assert_eq!(store.bounds().await.unwrap(), (3, 0), "{}", b.name);
        let opened = facts(store, "A", "U").await.unwrap();
        assert_eq!(opened.last_inbound_ms, Some(30), "{}", b.name);
        assert!(store.windows("V").await.unwrap().is_empty(), "{}", b.name);
    }
}

#[tokio::test]
async fn a_sent_message_is_kept_whole_in_the_stream_and_opens_no_window() {
    use crate::model::event::SentMessage;
    for b in backends().await {
        let store = &*b.store;
        let sent = InboundEvent::new(
            "A",
            "A",
            "U",
            10,
            EventKind::Sent(SentMessage {
                mid: "m.sent".into(),
                request_id: "r-1".into(),
                key_id: "crm".into(),
                priority: crate::model::message::Priority::Bulk,
                body_json: r#"{"recipient":{"id":"U"},"message":{"text":"hé \"quoted\""}}"#.into(),
                ..SentMessage::default()
            }),
        );
        let stored = store
            .ingest(vec![sent.clone(), message("m1", 20), sent.clone()], 100)
            .await
            .unwrap();
        // The same mid sent twice is one event.
        assert_eq!((stored.new_events, stored.duplicates), (2, 1), "{}", b.name);
        let all = store.events_after(0, 10).await.unwrap();
        assert_eq!(all[0].event, sent, "{}", b.name);
        assert_eq!(all[0].event.user_id(), "U", "{}", b.name);
        // Only the person's message opened the window.
        let opened = facts(store, "A", "U").await.unwrap();
        assert_eq!(opened.last_inbound_ms, Some(20), "{}", b.name);
    }
}
