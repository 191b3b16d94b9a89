//! `TokenStore`: refreshed tokens kept, and the refresh lease.

use super::*;

#[tokio::test]
async fn a_refreshed_token_replaces_the_one_kept_before() {
    for b in backends().await {
        let store = &*b.store;
        let record = |sealed: &str, at| TokenRecord {
            account: "A".into(),
            configured_sha256: "c".into(),
            sealed_token: sealed.into(),
            expires_ms: Some(at + 1),
            refreshed_ms: at,
        };
        store.save_token(record("one", 1)).await.unwrap();
        store.save_token(record("two", 2)).await.unwrap();
        assert_eq!(
            store.tokens().await.unwrap(),
            vec![record("two", 2)],
            "{}",
            b.name
        );
    }
}

/// One replica at a time refreshes an account's token: a lease one holds
/// (and may renew) is refused to another until released or lapsed. The
/// embedded store, alone, always grants it.
#[tokio::test]
async fn a_refresh_lease_is_held_by_one_replica_until_released_or_lapsed() {
    for b in backends().await {
        let store = &*b.store;
        assert!(
            store.lease_refresh("A", 0, 60_000).await.unwrap(),
            "{}",
            b.name
        );
        assert!(
            store.lease_refresh("A", 0, 60_000).await.unwrap(),
            "{}: its holder renews it",
            b.name
        );
        store.release_refresh("A").await.unwrap();
    }
    let Some((one, other)) = pg_pair().await else {
        return;
    };
    assert!(one.lease_refresh("A", 0, 60_000).await.unwrap());
    assert!(!other.lease_refresh("A", 0, 60_000).await.unwrap(), "held");
    assert!(
        other.lease_refresh("B", 0, 60_000).await.unwrap(),
        "per account"
    );
    other.release_refresh("A").await.unwrap();
    assert!(
        !other.lease_refresh("A", 0, 60_000).await.unwrap(),
        "only its holder releases it"
    );
    one.release_refresh("A").await.unwrap();
    assert!(
        other.lease_refresh("A", 0, 60_000).await.unwrap(),
        "released"
    );
    assert!(one.lease_refresh("C", 0, 1).await.unwrap());
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(other.lease_refresh("C", 0, 60_000).await.unwrap(), "lapsed");
}
