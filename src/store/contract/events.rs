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
