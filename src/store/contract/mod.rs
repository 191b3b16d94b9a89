//! The `Store` contract, one suite per role run against every backend:
//! SQLite always, and PostgreSQL when the test command has started one
//! (`MESSENGER_GATEWAY_TEST_PG`; required when `CI` is set, so CI cannot
//! skip it silently). What spans the roles (pruning) is here.

mod events;
mod ledger;
mod replicas;
mod requests;
mod tokens;
mod windows;

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

/// Two replicas on one fresh PostgreSQL database, when the test command
/// started one.
async fn pg_pair() -> Option<(PgStore, PgStore)> {
    let url = fresh_database(&test_pg()?).await;
    Some((
        PgStore::connect(&url).await.unwrap(),
        PgStore::connect(&url).await.unwrap(),
    ))
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
