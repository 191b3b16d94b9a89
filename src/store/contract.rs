//! The `Store` contract, one suite run against every backend: SQLite
//! always, and PostgreSQL when the test command has started one
//! (`MESSENGER_GATEWAY_TEST_PG`; required when `CI` is set, so CI cannot
//! skip it silently).

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::model::event::{EventKind, MessageEvent};

/// A store under test and what keeps it alive.
struct Backend {
    name: &'static str,
    store: Arc<dyn Store>,
    _dir: Option<tempfile::TempDir>,
}

/// A fresh, empty database on the test server, as a URL.
async fn fresh_database(admin_url: &str) -> String {
    let (client, connection) = tokio_postgres::connect(admin_url, tokio_postgres::NoTls)
        .await
        .expect("the test PostgreSQL answers");
    tokio::spawn(connection);
    let name = format!("contract_{}", rand::random::<u64>());
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let base = admin_url.rsplit_once('/').expect("a URL with a database").0;
    format!("{base}/{name}")
}

fn test_pg() -> Option<String> {
    match std::env::var("MESSENGER_GATEWAY_TEST_PG") {
        Ok(url) => Some(url),
        Err(_) if std::env::var_os("CI").is_some() => {
            panic!("CI must run the store contract on PostgreSQL: scripts/test starts one")
        }
        Err(_) => None,
    }
}

async fn backends() -> Vec<Backend> {
    let dir = tempfile::tempdir().unwrap();
    let mut all = vec![Backend {
        name: "sqlite",
        store: Arc::new(SqliteStore::open(dir.path()).unwrap()),
        _dir: Some(dir),
    }];
    if let Some(admin) = test_pg() {
        let url = fresh_database(&admin).await;
        all.push(Backend {
            name: "postgres",
            store: Arc::new(PgStore::connect(&url).await.unwrap()),
            _dir: None,
        });
    }
    all
}

/// A message from user U to account A. (The store takes ids as given:
/// their shape is the webhook parser's to check.)
pub(crate) fn message(mid: &str, ts: i64) -> InboundEvent {
    let text = MessageEvent {
        mid: mid.to_owned(),
        text: "hi".to_owned(),
        ..MessageEvent::default()
    };
    InboundEvent::new("A", "U", "A", ts, EventKind::Message(text))
}

async fn facts(store: &dyn Store, account: &str, user: &str) -> Option<WindowFacts> {
    let rows = store.windows(user).await.unwrap();
    rows.into_iter().find(|(a, _)| a == account).map(|(_, f)| f)
}

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

#[tokio::test]
async fn a_request_id_is_claimed_once_started_recorded_released_and_expires() {
    let day = REQUEST_ID_TTL.as_millis() as i64;
    for b in backends().await {
        let store = &*b.store;
        assert_eq!(
            store.claim_request("r1", "f", 1000, 1000).await.unwrap(),
            Claim::Claimed { token: 1000 },
            "{}",
            b.name
        );
        assert!(store.start_request("r1", 1000).await.unwrap(), "{}", b.name);
        assert_eq!(
            store.claim_request("r1", "f", 1001, 1001).await.unwrap(),
            Claim::Unsettled { claimed_ms: 1000 },
            "{}",
            b.name
        );
        assert_eq!(
            store
                .claim_request("r1", "other", 1002, 1002)
                .await
                .unwrap(),
            Claim::Conflict,
            "{}",
            b.name
        );
        let sent = Sent {
            message_id: Some("mid.1".into()),
            recipient_id: "U".into(),
            graph_calls: 1,
            queued_ms: 0,
        };
        store
            .settle_request("r1", 1000, Some(RecordedOutcome::Sent(sent.clone())))
            .await
            .unwrap();
        assert_eq!(
            store.claim_request("r1", "f", 1003, 1003).await.unwrap(),
            Claim::Recorded(RecordedOutcome::Sent(sent)),
            "{}",
            b.name
        );
        // Released (nothing was delivered): the id may be used again.
        store.claim_request("r2", "f", 1000, 1000).await.unwrap();
        store.settle_request("r2", 1000, None).await.unwrap();
        assert_eq!(
            store.claim_request("r2", "f", 1004, 1004).await.unwrap(),
            Claim::Claimed { token: 1004 }
        );
        // A day later the id is free, whatever it was used for.
        assert_eq!(
            store
                .claim_request("r1", "new", 1000 + day + 1, 1000 + day + 1)
                .await
                .unwrap(),
            Claim::Claimed {
                token: 1000 + day + 1
            },
            "{}",
            b.name
        );
    }
}

#[tokio::test]
async fn a_claim_whose_call_never_started_is_taken_over_and_its_holder_cannot_start() {
    for b in backends().await {
        let store = &*b.store;
        // Claimed, then the process stopped (or it still waits) before
        // its Graph call: a retry takes the id over, at once.
        assert_eq!(
            store.claim_request("q", "f", 1000, 1000).await.unwrap(),
            Claim::Claimed { token: 1000 }
        );
        let taken = store.claim_request("q", "f", 1000, 1000).await.unwrap();
        assert_eq!(taken, Claim::Claimed { token: 1001 }, "{}", b.name);
        // The first holder may not start, nor settle the new claim away.
        assert!(!store.start_request("q", 1000).await.unwrap(), "{}", b.name);
        store.settle_request("q", 1000, None).await.unwrap();
        assert!(store.start_request("q", 1001).await.unwrap(), "{}", b.name);
        // A claim not started, but made after `take_over_before`, may be
        // waiting on another replica: unsettled, not taken.
        store.claim_request("w", "f", 2000, 2000).await.unwrap();
        assert_eq!(
            store.claim_request("w", "f", 2001, 1999).await.unwrap(),
            Claim::Unsettled { claimed_ms: 2000 },
            "{}",
            b.name
        );
        // Started: no longer taken over, whatever its age within the day.
        assert_eq!(
            store.claim_request("q", "f", 5000, 5000).await.unwrap(),
            Claim::Unsettled { claimed_ms: 1001 },
            "{}",
            b.name
        );
        // Different content under a claim never started is still a conflict.
        store.claim_request("q2", "f", 1000, 1000).await.unwrap();
        assert_eq!(
            store.claim_request("q2", "g", 1001, 1001).await.unwrap(),
            Claim::Conflict,
            "{}",
            b.name
        );
    }
}

#[tokio::test]
async fn pruning_drops_old_events_but_keeps_the_head_and_the_dedup_keys() {
    for b in backends().await {
        let store = &*b.store;
        store.ingest(vec![message("m1", 10)], 100).await.unwrap();
        store.ingest(vec![message("m2", 20)], 200).await.unwrap();
        let pruned = store.prune(300, 150).await.unwrap();
        assert_eq!(pruned.events, 1, "{}", b.name);
        assert_eq!(store.bounds().await.unwrap(), (2, 1), "{}", b.name);
        let left: Vec<u64> = store
            .events_after(0, 10)
            .await
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(left, [2], "{}", b.name);
        // A late redelivery of the pruned event is still a duplicate.
        let again = store.ingest(vec![message("m1", 10)], 400).await.unwrap();
        assert_eq!((again.new_events, again.duplicates), (0, 1), "{}", b.name);
    }
}

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

/// Two replicas on one database: a delivery taken in by both at once is
/// stored once, and a subscriber of either sees every event, in order,
/// with no gap, whichever replica took it in.
#[tokio::test(flavor = "multi_thread")]
async fn replicas_share_one_gapless_order_and_store_a_delivery_once() {
    let Some(admin) = test_pg() else {
        eprintln!("PostgreSQL not started by the test command: replica contract skipped");
        return;
    };
    let url = fresh_database(&admin).await;
    let a = Arc::new(PgStore::connect(&url).await.unwrap());
    let b = Arc::new(PgStore::connect(&url).await.unwrap());
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
    let Some(admin) = test_pg() else {
        return;
    };
    let url = fresh_database(&admin).await;
    let a = Arc::new(PgStore::connect(&url).await.unwrap());
    let b = Arc::new(PgStore::connect(&url).await.unwrap());
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
