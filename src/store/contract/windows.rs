//! `WindowStore`: remembered refusals, and what clears them.

use super::*;

#[tokio::test]
async fn window_refusals_are_kept_per_kind_and_a_new_message_clears_them() {
    for b in backends().await {
        let store = &*b.store;
        store.window_refused("A", "U", 50, false).await.unwrap();
        store.window_refused("A", "U", 60, true).await.unwrap();
        let expected = WindowFacts {
            last_inbound_ms: None,
            standard_refused_ms: Some(50),
            human_agent_refused_ms: Some(60),
        };
        assert_eq!(facts(store, "A", "U").await, Some(expected), "{}", b.name);
        store.ingest(vec![message("m1", 70)], 100).await.unwrap();
        let reopened = WindowFacts {
            last_inbound_ms: Some(70),
            standard_refused_ms: None,
            human_agent_refused_ms: None,
        };
        assert_eq!(facts(store, "A", "U").await, Some(reopened), "{}", b.name);
    }
}
