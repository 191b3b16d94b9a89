//! `ReplicaSet` and sharing: several replicas on one PostgreSQL database.

use super::*;

/// Two replicas on one database: a delivery taken in by both at once is
/// stored once, and a subscriber of either sees every event, in order,
/// with no gap, whichever replica took it in.
#[tokio::test(flavor = "multi_thread")]
async fn replicas_share_one_gapless_order_and_store_a_delivery_once() {
    let Some((a, b)) = pg_pair().await else {
        eprintln!("PostgreSQL not started by the test command: replica contract skipped");
        return;
    };
    let (a, b) = (Arc::new(a), Arc::new(b));
    let mut feed_of_b = b.committed();
    let mut takers = Vec::new();
    for i in 0..200 {
        let (a, b) = (a.clone(), b.clone());
        takers.push(tokio::spawn(async move {
            // The same delivery to both replicas at once.
            let event = message(&format!("m{i}"), i);
            let (x, y) = tokio::join!(
                a.ingest(vec![event.clone()], 1000),
                b.ingest(vec![event], 1000)
            );
            x.unwrap().new_events + y.unwrap().new_events
        }));
    }
    for t in takers {
        assert_eq!(t.await.unwrap(), 1, "stored once, not twice");
    }
    assert_eq!(a.bounds().await.unwrap().0, 200);
    for expected in 1..=200 {
        let e = tokio::time::timeout(Duration::from_secs(10), feed_of_b.recv())
            .await
            .expect("every event reaches the other replica's subscribers")
            .unwrap();
        assert_eq!(e.seq, expected);
    }
}

/// Pruning runs on one replica at a time: while another holds the prune
/// lock, a prune does nothing; once it is free, the next one prunes.
#[tokio::test]
async fn one_replica_prunes_at_a_time() {
    let Some(admin) = test_pg() else {
        return;
    };
    let url = fresh_database(&admin).await;
    let store = PgStore::connect(&url).await.unwrap();
    store.ingest(vec![message("m1", 10)], 100).await.unwrap();
    let (other, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    other
        .execute("SELECT pg_advisory_lock($1)", &[&postgres::PRUNE_LOCK])
        .await
        .unwrap();
    assert_eq!(store.prune(300, 150).await.unwrap().events, 0);
    other
        .execute("SELECT pg_advisory_unlock($1)", &[&postgres::PRUNE_LOCK])
        .await
        .unwrap();
    assert_eq!(store.prune(300, 150).await.unwrap().events, 1);
}

/// Deliveries of several events that overlap, taken in by two replicas at
/// once in opposite orders, never deadlock: each is stored once, at once.
#[tokio::test(flavor = "multi_thread")]
async fn overlapping_deliveries_to_two_replicas_never_deadlock() {
    let Some((a, b)) = pg_pair().await else {
        return;
    };
    let (a, b) = (Arc::new(a), Arc::new(b));
    let started = std::time::Instant::now();
    let mut takers = Vec::new();
    for i in 0..100 {
        let (a, b) = (a.clone(), b.clone());
        takers.push(tokio::spawn(async move {
            let (x, y) = (message(&format!("x{i}"), i), message(&format!("y{i}"), i));
            let (one, other) = tokio::join!(
                a.ingest(vec![x.clone(), y.clone()], 1000),
                b.ingest(vec![y, x], 1000)
            );
            one.unwrap().new_events + other.unwrap().new_events
        }));
    }
    for t in takers {
        assert_eq!(t.await.unwrap(), 2, "each event stored once");
    }
    assert_eq!(a.bounds().await.unwrap().0, 200);
    // A deadlock is broken only after deadlock_timeout (1 s) each time.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

/// Each replica says it is alive; the count is those heard from within
/// `REPLICA_TTL`. The embedded store is always alone.
#[tokio::test]
async fn the_replicas_alive_are_counted_and_a_silent_one_drops_out() {
    let ttl = REPLICA_TTL.as_millis() as i64;
    for b in backends().await {
        let store = &*b.store;
        assert_eq!(
            store.replicas_alive("r1", 10_000).await.unwrap(),
            1,
            "{}",
            b.name
        );
        let (two, one) = if store.is_shared() { (2, 1) } else { (1, 1) };
        assert_eq!(
            store.replicas_alive("r2", 10_000).await.unwrap(),
            two,
            "{}",
            b.name
        );
        // r2 says nothing for longer than the TTL.
        let later = 10_000 + ttl + 1;
        assert_eq!(
            store.replicas_alive("r1", later).await.unwrap(),
            one,
            "{}",
            b.name
        );
    }
}
