//! Tokens that stay alive: checked with Graph's `/me`, refreshed before
//! they expire, kept in the store across restarts, and marked when Graph
//! refuses them.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use wiremock::matchers::{header, method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

use messenger_gateway::accounts::AccountSpec;
use messenger_gateway::accounts::tokens::TokenPolicy;
use messenger_gateway::edge::grpc::pb;
use messenger_gateway::graph::{AccessToken, Account};

use crate::support::*;

const DAY_MS: i64 = 24 * 60 * 60 * 1000;
const SIXTY_DAYS_S: i64 = 60 * 24 * 60 * 60;

fn me(user_id: &str, username: &str) -> ResponseTemplate {
    ResponseTemplate::new(200)
        .set_body_json(json!({"user_id": user_id, "username": username, "id": "9"}))
}

fn refreshed(token: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(
        json!({"access_token": token, "token_type": "bearer", "expires_in": SIXTY_DAYS_S}),
    )
}

/// Graph's token endpoints for `account`, whose token is `token`.
async fn mount_token_endpoints(
    graph: &MockServer,
    account: &str,
    token: &str,
    next: ResponseTemplate,
) {
    Mock::given(method("GET"))
        .and(path("/v25.0/me"))
        .and(header("authorization", format!("Bearer {token}").as_str()))
        .respond_with(me(account, "shop"))
        .mount(graph)
        .await;
    Mock::given(method("GET"))
        .and(path("/refresh_access_token"))
        .and(query_param("grant_type", "ig_refresh_token"))
        .and(query_param("access_token", token))
        .respond_with(next)
        .mount(graph)
        .await;
}

async fn sends_accepted_with(graph: &MockServer, account: &str, token: &str) {
    Mock::given(method("POST"))
        .and(path(format!("/v25.0/{account}/messages")))
        .and(header("authorization", format!("Bearer {token}").as_str()))
        .respond_with(ok_reply())
        .mount(graph)
        .await;
}

fn tokens_on(builder: Builder, store_key: Option<&str>) -> Builder {
    let key = store_key.map(str::to_owned);
    builder.configure(move |s| {
        s.tokens = Some(TokenPolicy {
            first_retry: Duration::from_millis(50),
            ..TokenPolicy::default()
        });
        s.store_key = key;
    })
}

async fn accounts(gw: &TestGateway) -> Vec<pb::AccountStatus> {
    gw.client()
        .await
        .list_accounts(pb::ListAccountsRequest {})
        .await
        .unwrap()
        .into_inner()
        .accounts
}

/// Waits for the keeper's first round to settle `account`.
async fn settled(
    gw: &TestGateway,
    id: &str,
    done: impl Fn(&pb::AccountStatus) -> bool,
) -> pb::AccountStatus {
    eventually(Duration::from_secs(30), "the account settled", || async {
        let all = accounts(gw).await;
        match all.iter().find(|a| a.id == id) {
            Some(a) if done(a) => Ok(a.clone()),
            _ => Err(all),
        }
    })
    .await
}

/// The default account and `support` (id `17841400000000002`, token
/// `other-token`), both on `graph`, with tokens looked after.
async fn with_support(graph: MockServer, base: &str) -> TestGateway {
    let other = Account::new(base, "17841400000000002", &AccessToken::new("other-token")).unwrap();
    tokens_on(
        TestGateway::builder()
            .graph(graph, base)
            .account(AccountSpec::new(other).named("support")),
        None,
    )
    .start()
    .await
}

fn refresh_calls(requests: &[wiremock::Request]) -> usize {
    requests
        .iter()
        .filter(|r| r.url.path() == "/refresh_access_token")
        .count()
}

#[tokio::test]
async fn a_token_is_checked_refreshed_kept_encrypted_and_used_across_a_restart() {
    let graph = MockServer::start().await;
    let base = format!("{}/v25.0", graph.uri());
    mount_token_endpoints(&graph, ACCOUNT, TOKEN, refreshed("IGAA-refreshed-1")).await;
    mount_token_endpoints(
        &graph,
        ACCOUNT,
        "IGAA-refreshed-1",
        refreshed("IGAA-refreshed-2"),
    )
    .await;
    sends_accepted_with(&graph, ACCOUNT, "IGAA-refreshed-1").await;
    let data = Arc::new(tempfile::tempdir().unwrap());
    let key = Some("store-key-for-tests");

    let mut gw = tokens_on(
        TestGateway::builder()
            .graph(graph, &base)
            .data(data.clone()),
        key,
    )
    .start()
    .await;
    // Its age unknown at start, the token is refreshed at once.
    let status = settled(&gw, ACCOUNT, |a| a.last_refresh_at.is_some()).await;
    assert_eq!(status.token_state, pb::TokenState::Valid as i32);
    assert_eq!(status.username, "shop");
    assert_eq!(
        status.token_expires_at.unwrap().seconds * 1000,
        T0 + 60 * DAY_MS
    );
    gw.send_text().await.unwrap();

    // Kept sealed: the database never holds the token in clear.
    let mut on_disk = Vec::new();
    for entry in std::fs::read_dir(data.path()).unwrap() {
        on_disk.extend(std::fs::read(entry.unwrap().path()).unwrap_or_default());
    }
    assert!(!on_disk.windows(16).any(|w| w == b"IGAA-refreshed-1"));

    gw.begin_shutdown();
    gw.served.take().unwrap().await.unwrap().unwrap();
    let graph = gw.graph;

    // After a restart the kept token is in use at once, and too young to
    // refresh again.
    let after = tokens_on(
        TestGateway::builder()
            .graph(graph, &base)
            .data(data.clone()),
        key,
    )
    .start()
    .await;
    after.send_text().await.unwrap();
    let status = settled(&after, ACCOUNT, |a| a.username == "shop").await;
    assert_eq!(status.token_state, pb::TokenState::Valid as i32);
    let requests = after.graph.received_requests().await.unwrap();
    assert_eq!(refresh_calls(&requests), 1);

    // Nine days before expiry (and a day old), the keeper refreshes it.
    after.clock.set(T0 + 51 * DAY_MS);
    after.keeper.as_ref().unwrap().check_all().await;
    let requests = after.graph.received_requests().await.unwrap();
    assert_eq!(refresh_calls(&requests), 2);
    let status = settled(&after, ACCOUNT, |a| a.last_refresh_at.is_some()).await;
    assert_eq!(
        status.last_refresh_at.unwrap().seconds * 1000,
        T0 + 51 * DAY_MS
    );
}

#[tokio::test]
async fn a_store_key_that_changed_falls_back_to_the_configured_token() {
    let graph = MockServer::start().await;
    let base = format!("{}/v25.0", graph.uri());
    mount_token_endpoints(&graph, ACCOUNT, TOKEN, refreshed("IGAA-refreshed-1")).await;
    sends_accepted_with(&graph, ACCOUNT, "IGAA-refreshed-1").await;
    let data = Arc::new(tempfile::tempdir().unwrap());
    let mut gw = tokens_on(
        TestGateway::builder()
            .graph(graph, &base)
            .data(data.clone()),
        Some("one"),
    )
    .start()
    .await;
    settled(&gw, ACCOUNT, |a| a.last_refresh_at.is_some()).await;
    gw.begin_shutdown();
    gw.served.take().unwrap().await.unwrap().unwrap();

    // The kept token cannot be opened: the configured one is used (and
    // refreshed again, its age unknown).
    let after = tokens_on(
        TestGateway::builder().graph(gw.graph, &base).data(data),
        Some("two"),
    )
    .start()
    .await;
    settled(&after, ACCOUNT, |a| a.last_refresh_at.is_some()).await;
    let requests = after.graph.received_requests().await.unwrap();
    assert_eq!(refresh_calls(&requests), 2);
}

#[tokio::test]
async fn a_refresh_failure_on_one_account_leaves_the_other_untouched() {
    const OTHER: &str = "17841400000000002";
    let graph = MockServer::start().await;
    let base = format!("{}/v25.0", graph.uri());
    mount_token_endpoints(
        &graph,
        ACCOUNT,
        TOKEN,
        ResponseTemplate::new(500).set_body_json(json!({"error": {"message": "An unexpected error has occurred", "type": "OAuthException", "code": 2, "is_transient": true}})),
    )
    .await;
    Mock::given(method("GET"))
        .and(path("/v25.0/me"))
        .and(header("authorization", "Bearer other-token"))
        .respond_with(me(OTHER, "support"))
        .mount(&graph)
        .await;
    Mock::given(method("GET"))
        .and(path("/refresh_access_token"))
        .and(query_param("access_token", "other-token"))
        .respond_with(refreshed("IGAA-other-2"))
        .mount(&graph)
        .await;
    sends_accepted_with(&graph, ACCOUNT, TOKEN).await;
    sends_accepted_with(&graph, OTHER, "IGAA-other-2").await;
    let gw = with_support(graph, &base).await;

    let support = settled(&gw, OTHER, |a| a.last_refresh_at.is_some()).await;
    assert_eq!(support.token_state, pb::TokenState::Valid as i32);
    let shop = settled(&gw, ACCOUNT, |a| !a.last_graph_error.is_empty()).await;
    assert!(
        shop.last_graph_error.contains("unexpected error"),
        "{shop:?}"
    );
    assert!(shop.last_refresh_at.is_none());
    // Both still send: the shop with its configured token, support with its
    // refreshed one.
    let mut client = gw.client().await;
    for account in [ACCOUNT, "support"] {
        client
            .send(pb::SendRequest {
                account_id: account.into(),
                ..text_to(USER, "hi")
            })
            .await
            .unwrap();
    }
    // The failed refresh is tried again, with backoff.
    eventually(
        Duration::from_secs(30),
        "the failed refresh tried again",
        || async {
            let requests = gw.graph.received_requests().await.unwrap();
            let shop_refreshes = requests
                .iter()
                .filter(|r| {
                    r.url.path() == "/refresh_access_token"
                        && r.url.query().unwrap_or("").contains(TOKEN)
                })
                .count();
            match shop_refreshes {
                n if n >= 2 => Ok(()),
                n => Err(format!("{n} refreshes")),
            }
        },
    )
    .await;
}

#[tokio::test]
async fn a_token_of_another_account_marks_the_account_invalid() {
    let graph = MockServer::start().await;
    let base = format!("{}/v25.0", graph.uri());
    Mock::given(method("GET"))
        .and(path("/v25.0/me"))
        .respond_with(me("17841499999999999", "someone-else"))
        .mount(&graph)
        .await;
    let gw = tokens_on(TestGateway::builder().graph(graph, &base), None)
        .start()
        .await;
    let status = settled(&gw, ACCOUNT, |a| {
        a.token_state == pb::TokenState::Invalid as i32
    })
    .await;
    assert!(
        status.last_graph_error.contains("17841499999999999"),
        "{status:?}"
    );
    // Never refreshed: it is not this account's.
    assert_eq!(
        refresh_calls(&gw.graph.received_requests().await.unwrap()),
        0
    );
}

#[tokio::test]
async fn a_reloaded_token_clears_an_invalid_mark() {
    let graph = MockServer::start().await;
    let base = format!("{}/v25.0", graph.uri());
    Mock::given(method("POST"))
        .and(path(MESSAGES_PATH))
        .and(header("authorization", "Bearer old-token"))
        .respond_with(graph_error(401, 190, Some(463), "Session has expired"))
        .mount(&graph)
        .await;
    sends_accepted_with(&graph, ACCOUNT, "new-token").await;
    let secrets = tempfile::tempdir().unwrap();
    let token_file = secrets.path().join("token");
    write_secret(&token_file, "old-token");
    let file = |_: ()| {
        format!("[[account]]\nid = {ACCOUNT:?}\ntoken_file = {token_file:?}\napi_url = {base:?}\n")
    };
    let gw = TestGateway::builder()
        .graph(graph, &base)
        .accounts_file(&file(()))
        .start()
        .await;
    let status = gw.send_text().await.unwrap_err();
    assert_eq!(error_info(&status).0, "ACCESS_TOKEN_INVALID");
    assert_eq!(
        accounts(&gw).await[0].token_state,
        pb::TokenState::Invalid as i32
    );

    std::fs::write(&token_file, "new-token").unwrap();
    gw.reloader.reload();
    assert_ne!(
        accounts(&gw).await[0].token_state,
        pb::TokenState::Invalid as i32
    );
    gw.send_text().await.unwrap();
    assert_eq!(
        accounts(&gw).await[0].token_state,
        pb::TokenState::Valid as i32
    );
}

#[tokio::test]
async fn an_account_whose_graph_hangs_does_not_hold_up_another() {
    const OTHER: &str = "17841400000000002";
    let graph = MockServer::start().await;
    let base = format!("{}/v25.0", graph.uri());
    // The shop's check never answers (within the keeper's 10 s).
    Mock::given(method("GET"))
        .and(path("/v25.0/me"))
        .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
        .respond_with(me(ACCOUNT, "shop").set_delay(Duration::from_secs(30)))
        .mount(&graph)
        .await;
    mount_token_endpoints(&graph, OTHER, "other-token", refreshed("IGAA-other-2")).await;
    let gw = with_support(graph, &base).await;
    let started = std::time::Instant::now();
    settled(&gw, OTHER, |a| a.last_refresh_at.is_some()).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let shop = accounts(&gw)
        .await
        .into_iter()
        .find(|a| a.id == ACCOUNT)
        .unwrap();
    assert_eq!(shop.token_state, pb::TokenState::Unchecked as i32);
}

#[tokio::test]
async fn a_refresh_that_a_reload_overtakes_is_dropped() {
    let graph = MockServer::start().await;
    let base = format!("{}/v25.0", graph.uri());
    // The old token's refresh is slow; meanwhile the file gets a new token.
    Mock::given(method("GET"))
        .and(path("/v25.0/me"))
        .respond_with(me(ACCOUNT, "shop"))
        .mount(&graph)
        .await;
    Mock::given(method("GET"))
        .and(path("/refresh_access_token"))
        .and(query_param("access_token", "old-token"))
        .respond_with(refreshed("IGAA-from-old").set_delay(Duration::from_secs(3)))
        .mount(&graph)
        .await;
    sends_accepted_with(&graph, ACCOUNT, "new-token").await;
    let secrets = tempfile::tempdir().unwrap();
    let token_file = secrets.path().join("token");
    write_secret(&token_file, "old-token");
    let file =
        format!("[[account]]\nid = {ACCOUNT:?}\ntoken_file = {token_file:?}\napi_url = {base:?}\n");
    let data = Arc::new(tempfile::tempdir().unwrap());
    let gw = tokens_on(
        TestGateway::builder()
            .graph(graph, &base)
            .data(data.clone())
            .accounts_file(&file),
        None,
    )
    .start()
    .await;
    // The refresh of the old token is under way.
    eventually(Duration::from_secs(30), "the refresh under way", || async {
        refresh_calls(&gw.graph.received_requests().await.unwrap()) == 1
    })
    .await;
    std::fs::write(&token_file, "new-token").unwrap();
    gw.reloader.reload();
    // One round at a time: this one starts once the round with the old
    // token's refresh has ended, its answer dealt with.
    gw.keeper.as_ref().unwrap().run_once().await;

    // The new token is in use, and the old one's refresh was not kept.
    gw.send_text().await.unwrap();
    let status = accounts(&gw).await.remove(0);
    assert!(status.last_refresh_at.is_none(), "{status:?}");
}

#[tokio::test]
async fn a_passing_check_clears_an_invalid_mark() {
    let graph = MockServer::start().await;
    let base = format!("{}/v25.0", graph.uri());
    Mock::given(method("POST"))
        .and(path(MESSAGES_PATH))
        .respond_with(graph_error(
            401,
            190,
            Some(460),
            "The session has been invalidated",
        ))
        .mount(&graph)
        .await;
    Mock::given(method("GET"))
        .and(path("/v25.0/me"))
        .respond_with(me(ACCOUNT, "shop"))
        .mount(&graph)
        .await;
    Mock::given(method("GET"))
        .and(path("/refresh_access_token"))
        .respond_with(refreshed("IGAA-refreshed"))
        .mount(&graph)
        .await;
    let gw = tokens_on(TestGateway::builder().graph(graph, &base), None)
        .start()
        .await;
    settled(&gw, ACCOUNT, |a| {
        a.token_state == pb::TokenState::Valid as i32
    })
    .await;
    let status = gw.send_text().await.unwrap_err();
    assert_eq!(error_info(&status).0, "ACCESS_TOKEN_INVALID");
    assert_eq!(
        accounts(&gw).await[0].token_state,
        pb::TokenState::Invalid as i32
    );
    gw.keeper.as_ref().unwrap().check_all().await;
    assert_eq!(
        accounts(&gw).await[0].token_state,
        pb::TokenState::Valid as i32
    );
}

#[tokio::test]
async fn a_token_near_expiry_that_cannot_be_refreshed_shows_expiring_even_while_sends_work() {
    let graph = MockServer::start().await;
    let base = format!("{}/v25.0", graph.uri());
    mount_token_endpoints(&graph, ACCOUNT, TOKEN, refreshed("IGAA-refreshed-1")).await;
    mount_token_endpoints(
        &graph,
        ACCOUNT,
        "IGAA-refreshed-1",
        ResponseTemplate::new(500).set_body_json(json!({"error": {"message": "An unknown error occurred", "type": "OAuthException", "code": 1, "is_transient": true}})),
    )
    .await;
    sends_accepted_with(&graph, ACCOUNT, "IGAA-refreshed-1").await;
    let gw = tokens_on(TestGateway::builder().graph(graph, &base), None)
        .start()
        .await;
    settled(&gw, ACCOUNT, |a| a.last_refresh_at.is_some()).await;

    gw.clock.set(T0 + 51 * DAY_MS);
    gw.keeper.as_ref().unwrap().check_all().await;
    let expiring = pb::TokenState::Expiring as i32;
    assert_eq!(accounts(&gw).await[0].token_state, expiring);
    gw.send_text().await.unwrap();
    assert_eq!(accounts(&gw).await[0].token_state, expiring);
}

/// Three replicas on one PostgreSQL store, each with its own fake Graph
/// (so each one's calls can be counted), and the same store key.
#[tokio::test(flavor = "multi_thread")]
async fn replicas_refresh_a_token_once_and_every_one_uses_the_refreshed_token() {
    let Some(url) = fresh_pg_database().await else {
        return;
    };
    let starting = (0..3).map(|_| {
        let url = url.clone();
        async move {
            let graph = MockServer::start().await;
            let base = format!("{}/v25.0", graph.uri());
            // Slow, so all three find the token due at once.
            let slow = refreshed("IGAA-shared-1").set_delay(Duration::from_millis(300));
            mount_token_endpoints(&graph, ACCOUNT, TOKEN, slow).await;
            mount_token_endpoints(&graph, ACCOUNT, "IGAA-shared-1", refreshed("IGAA-shared-2"))
                .await;
            mount_token_endpoints(&graph, ACCOUNT, "IGAA-shared-2", refreshed("unused")).await;
            sends_accepted_with(&graph, ACCOUNT, "IGAA-shared-1").await;
            sends_accepted_with(&graph, ACCOUNT, "IGAA-shared-2").await;
            let builder = TestGateway::builder()
                .graph(graph, &base)
                .configure(move |s| s.store = Some(url));
            tokens_on(builder, Some("one key for all replicas"))
                .start()
                .await
        }
    });
    let replicas = futures_util::future::join_all(starting).await;
    let mut refreshes = 0;
    for r in &replicas {
        settled(r, ACCOUNT, |a| a.last_refresh_at.is_some()).await;
        r.send_text().await.expect("sent with the refreshed token");
        refreshes += refresh_calls(&r.graph.received_requests().await.unwrap());
    }
    assert_eq!(refreshes, 1, "one replica refreshed the token");

    // Later, one replica refreshes again: the others, not due themselves,
    // take the new token as it is kept.
    replicas[0].clock.set(T0 + 51 * DAY_MS);
    replicas[0].keeper.as_ref().unwrap().check_all().await;
    let last_bearer = |requests: Vec<wiremock::Request>| {
        requests
            .iter()
            .rev()
            .find(|r| r.url.path().ends_with("/messages"))
            .map(|r| r.headers["authorization"].to_str().unwrap().to_owned())
    };
    for r in &replicas[1..] {
        eventually(
            Duration::from_secs(5),
            "the new token is in use",
            || async {
                r.send_text().await.unwrap();
                last_bearer(r.graph.received_requests().await.unwrap()).as_deref()
                    == Some("Bearer IGAA-shared-2")
            },
        )
        .await;
    }
    let mut refreshes = 0;
    for r in &replicas {
        refreshes += refresh_calls(&r.graph.received_requests().await.unwrap());
    }
    assert_eq!(refreshes, 2, "the others did not refresh it again");
}

/// Every byte of the data directory's files.
fn on_disk(dir: &std::path::Path) -> Vec<u8> {
    let mut bytes = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        bytes.extend(std::fs::read(entry.unwrap().path()).unwrap_or_default());
    }
    bytes
}

fn holds(bytes: &[u8], token: &str) -> bool {
    bytes.windows(token.len()).any(|w| w == token.as_bytes())
}

#[tokio::test]
async fn once_a_store_key_is_set_no_clear_token_is_left_in_the_files() {
    let graph = MockServer::start().await;
    let base = format!("{}/v25.0", graph.uri());
    mount_token_endpoints(&graph, ACCOUNT, TOKEN, refreshed("IGAA-refreshed-1")).await;
    mount_token_endpoints(
        &graph,
        ACCOUNT,
        "IGAA-refreshed-1",
        refreshed("IGAA-refreshed-2"),
    )
    .await;
    let data = Arc::new(tempfile::tempdir().unwrap());
    // No key: the refreshed token is kept in clear (the README says so).
    let mut gw = tokens_on(
        TestGateway::builder()
            .graph(graph, &base)
            .data(data.clone()),
        None,
    )
    .start()
    .await;
    settled(&gw, ACCOUNT, |a| a.last_refresh_at.is_some()).await;
    gw.begin_shutdown();
    gw.served.take().unwrap().await.unwrap().unwrap();
    assert!(
        holds(&on_disk(data.path()), "IGAA-refreshed-1"),
        "the premise"
    );

    // With a key, it is refreshed again and kept sealed; the clear bytes
    // are gone from the database and its journal.
    let mut after = tokens_on(
        TestGateway::builder()
            .graph(gw.graph, &base)
            .data(data.clone()),
        Some("a key at last"),
    )
    .start()
    .await;
    eventually(Duration::from_secs(30), "refreshed again", || async {
        refresh_calls(&after.graph.received_requests().await.unwrap()) == 2
    })
    .await;
    settled(&after, ACCOUNT, |a| a.last_refresh_at.is_some()).await;
    let bytes = on_disk(data.path());
    for token in ["IGAA-refreshed-1", "IGAA-refreshed-2"] {
        assert!(!holds(&bytes, token), "{token} in clear while running");
    }
    after.begin_shutdown();
    after.served.take().unwrap().await.unwrap().unwrap();
    let bytes = on_disk(data.path());
    for token in ["IGAA-refreshed-1", "IGAA-refreshed-2"] {
        assert!(!holds(&bytes, token), "{token} in clear after the stop");
    }
}
