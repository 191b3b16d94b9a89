//! The real binary, as an operator runs it.

use std::process::Command;
use std::time::Duration;

use messenger_gateway::edge::grpc::pb::messenger_client::MessengerClient;

use crate::support::*;

#[test]
fn the_binary_refuses_bad_settings_naming_each_variable() {
    let out = gateway(
        &["serve", "--listen", "127.0.0.1:0"],
        &[
            ("INSTAGRAM_API_URL", "not a url"),
            ("INSTAGRAM_ACCOUNT_ID", "jane.doe"),
        ],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for name in [
        "INSTAGRAM_API_URL",
        "INSTAGRAM_ACCOUNT_ID",
        "INSTAGRAM_ACCESS_TOKEN",
    ] {
        assert!(stderr.contains(name), "{stderr}");
    }
}

#[test]
fn no_sandbox_without_credentials_refuses_to_start() {
    let out = gateway(&["serve", "--listen", "127.0.0.1:0", "--no-sandbox"], &[])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("INSTAGRAM_ACCESS_TOKEN"));
}

#[tokio::test(flavor = "multi_thread")]
async fn with_no_credentials_the_binary_serves_the_sandbox_and_exits_0_on_sigterm() {
    let child = gateway(&["serve", "--listen", "127.0.0.1:0"], &[])
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    let (addr, banner) = listening_addr(&mut child);
    assert!(
        banner
            .iter()
            .any(|l| l.starts_with("sandbox Graph API at http://127.0.0.1:"))
    );
    let mut client = MessengerClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    // It plays two accounts, so a send names one.
    assert!(
        banner
            .iter()
            .any(|l| l.contains("\"account_id\":\"support\""))
    );
    for account in ["shop", "support"] {
        let reply = client
            .send(from_account(
                account,
                text_to("17841400000000000", "Hello from my app"),
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(!reply.message_id.is_empty());
    }
    let status = client
        .send(text_to("17841400000000000", "which account?"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let status = client
        .send(from_account(
            "shop",
            text_to("10000000000000001", "too late"),
        ))
        .await
        .unwrap_err();
    assert_eq!(error_info(&status).0, "OUTSIDE_MESSAGING_WINDOW");
    drop(client);
    sigterm(&child);
    assert!(wait_with_timeout(&mut child, Duration::from_secs(10)).success());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_token_never_reaches_the_logs_and_json_logs_carry_each_send() {
    let gw = TestGateway::start().await; // only for its Graph fake
    gw.graph_answers(ok_reply()).await;
    // The token keeper checks and refreshes the token at start: neither the
    // configured token nor the refreshed one may be logged (the refresh
    // carries the token in its URL).
    const REFRESHED: &str = "IGAA-refreshed-never-logged";
    wiremock::Mock::given(wiremock::matchers::method("GET"))
        .and(wiremock::matchers::path("/v25.0/me"))
        .respond_with(
            wiremock::ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({"user_id": ACCOUNT, "username": "shop"})),
        )
        .mount(&gw.graph)
        .await;
    wiremock::Mock::given(wiremock::matchers::method("GET"))
        .and(wiremock::matchers::path("/refresh_access_token"))
        .respond_with(
            wiremock::ResponseTemplate::new(200).set_body_json(
                serde_json::json!({"access_token": REFRESHED, "expires_in": 5184000}),
            ),
        )
        .mount(&gw.graph)
        .await;
    let base = format!("{}/v25.0", gw.graph.uri());
    let child = gateway(
        &["serve", "--listen", "127.0.0.1:0", "--log-format", "json"],
        &[
            ("INSTAGRAM_GRAPH_API_URL", &base),
            ("INSTAGRAM_USER_ID", ACCOUNT),
            ("INSTAGRAM_ACCESS_TOKEN", TOKEN),
            ("INSTAGRAM_APP_SECRET", APP_SECRET),
            ("INSTAGRAM_VERIFY_TOKEN", VERIFY_TOKEN),
            ("RUST_LOG", "trace"),
        ],
    )
    .spawn()
    .unwrap();
    let mut child = KillOnDrop(child);
    // Trace logging is loud: drained as it comes.
    let logs = drain_log(&mut child);
    let (addr, _) = listening_addr(&mut child);
    let mut client = MessengerClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    client.send(text_to(USER, "hi")).await.unwrap();
    client.send(text_to("bad", "hi")).await.unwrap_err();
    drop(client);
    sigterm(&child);
    assert!(wait_with_timeout(&mut child, Duration::from_secs(10)).success());
    let logs = logs.join().unwrap();
    assert!(!logs.contains(TOKEN), "the token leaked into the logs");
    assert!(
        logs.contains("refreshed the account's token"),
        "the keeper refreshed at start: {logs}"
    );
    assert!(
        !logs.contains(REFRESHED),
        "the refreshed token leaked into the logs"
    );
    assert!(
        !logs.contains(APP_SECRET),
        "the app secret leaked into the logs"
    );
    let sends: Vec<serde_json::Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["kind"] == "message")
        .collect();
    assert_eq!(sends.len(), 2, "{logs}");
    assert_eq!(sends[0]["outcome"], "OK");
    assert_eq!(sends[0]["recipient"], USER);
    assert_eq!(sends[0]["attempts"], 1);
    assert!(sends[0]["latency_ms"].is_number());
    assert_eq!(sends[1]["outcome"], "INVALID_REQUEST");
    let posts: Vec<_> = gw
        .graph
        .received_requests()
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.method.as_str() == "POST")
        .collect();
    assert_eq!(posts.len(), 1);
    assert_eq!(posts[0].url.path(), MESSAGES_PATH);
}

#[test]
fn an_accounts_file_fault_stops_the_start_naming_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("accounts.toml");
    std::fs::write(
        &file,
        "[[account]]\nid = \"17841400000000001\"\ntoken_env = \"SHOP_TOKEN\"\n\n[[account]]\nid = \"17841400000000001\"\ntoken_env = \"SHOP_TOKEN\"\n",
    )
    .unwrap();
    let path = file.to_str().unwrap();
    let out = gateway(
        &["serve", "--listen", "127.0.0.1:0", "--accounts", path],
        &[("SHOP_TOKEN", "shop-secret-token")],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{path}:6: account 17841400000000001 is configured twice"
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("shop-secret-token"));

    // The file and the INSTAGRAM_* account variables at once: which wins
    // would be a guess.
    std::fs::write(
        &file,
        "[[account]]\nid = \"17841400000000001\"\ntoken_env = \"SHOP_TOKEN\"\n",
    )
    .unwrap();
    let out = gateway(
        &["serve", "--listen", "127.0.0.1:0", "--accounts", path],
        &[
            ("SHOP_TOKEN", "shop-secret-token"),
            ("INSTAGRAM_ACCESS_TOKEN", "env-token"),
        ],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("INSTAGRAM_ACCESS_TOKEN"), "{stderr}");
    assert!(!stderr.contains("env-token") && !stderr.contains("shop-secret-token"));
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_the_accounts_file_of_the_running_binary() {
    let gw = TestGateway::start().await; // only for its Graph fake
    gw.graph_answers(ok_reply()).await;
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .and(wiremock::matchers::path(
            "/v25.0/17841400000000002/messages",
        ))
        .respond_with(ok_reply())
        .mount(&gw.graph)
        .await;
    let base = format!("{}/v25.0", gw.graph.uri());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("accounts.toml");
    let entry = |id: &str, name: &str| {
        format!(
            "[[account]]\nid = \"{id}\"\nname = \"{name}\"\ntoken_env = \"SHOP_TOKEN\"\napi_url = \"{base}\"\n\n"
        )
    };
    std::fs::write(&file, entry(ACCOUNT, "shop")).unwrap();
    let child = gateway(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--accounts",
            file.to_str().unwrap(),
        ],
        &[("SHOP_TOKEN", TOKEN)],
    )
    .spawn()
    .unwrap();
    let mut child = KillOnDrop(child);
    let (addr, _) = listening_addr(&mut child);
    let mut client = MessengerClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let support = |text: &str| from_account("support", text_to(USER, text));
    let status = client.send(support("not yet")).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);

    std::fs::write(
        &file,
        entry(ACCOUNT, "shop") + &entry("17841400000000002", "support"),
    )
    .unwrap();
    let hup = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let mut reloaded = false;
    for _ in 0..100 {
        if client.send(support("after SIGHUP")).await.is_ok() {
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(reloaded, "the added account never started");
    client
        .send(from_account("shop", text_to(USER, "still here")))
        .await
        .unwrap();
    drop(client);
    sigterm(&child);
    assert!(wait_with_timeout(&mut child, Duration::from_secs(10)).success());
}

/// A key refused on every call, with values as large as a request may
/// carry: the log stays small. Each refusal line carries at most about
/// 256 bytes of any caller value, and one key's refusals are logged at
/// most a few a second, the rest counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_refused_calls_with_huge_values_grows_the_log_very_little() {
    use messenger_gateway::edge::grpc::pb;
    const KEY: &str = "mgw_one_shop_0123456789abcdefghijklmnopqrstuvw";
    const CALLS: usize = 2_500;
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.toml");
    std::fs::write(
        &keys,
        key_entry("one-shop", KEY, &[ACCOUNT], &["get_window", "send"]),
    )
    .unwrap();
    let child = gateway(
        &["serve", "--listen", "127.0.0.1:0"],
        &[
            ("INSTAGRAM_GRAPH_API_URL", "http://127.0.0.1:9/v25.0"),
            ("INSTAGRAM_USER_ID", ACCOUNT),
            ("INSTAGRAM_ACCESS_TOKEN", TOKEN),
            ("MESSENGER_GATEWAY_API_KEYS", keys.to_str().unwrap()),
        ],
    )
    .spawn()
    .unwrap();
    let mut child = KillOnDrop(child);
    let logs = drain_log(&mut child);
    let (addr, _) = listening_addr(&mut child);
    let client = MessengerClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    // The probe (250 KB) is over the request limit; 120 KB is
    // under it, so it reaches the shape check and the log lines.
    let (huge, over) = ("7".repeat(120_000), "7".repeat(250_000));
    let started = std::time::Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    for worker in 0..8 {
        let (mut client, huge, over) = (client.clone(), huge.clone(), over.clone());
        calls.spawn(async move {
            let window = |account_id: &str| {
                with_key(
                    pb::GetWindowRequest {
                        account_id: account_id.into(),
                        recipient_id: USER.into(),
                    },
                    KEY,
                )
            };
            for i in (worker..CALLS).step_by(8) {
                let (code, expected) = match i % 4 {
                    // Larger than any valid request: refused before decoding.
                    0 => (
                        client.get_window(window(&over)).await.unwrap_err().code(),
                        tonic::Code::ResourceExhausted,
                    ),
                    // An account id far over any real one's length: refused
                    // for its shape, before any lookup.
                    1 => (
                        client.get_window(window(&huge)).await.unwrap_err().code(),
                        tonic::Code::InvalidArgument,
                    ),
                    // An account of the right shape, not the key's.
                    2 => (
                        client
                            .get_window(window(&format!("9{}", &huge[..30])))
                            .await
                            .unwrap_err()
                            .code(),
                        tonic::Code::PermissionDenied,
                    ),
                    // A send to a recipient that is no IGSID.
                    _ => (
                        client
                            .send(with_key(text_to(&huge, "hi"), KEY))
                            .await
                            .unwrap_err()
                            .code(),
                        tonic::Code::InvalidArgument,
                    ),
                };
                assert_eq!(code, expected, "call {i}");
            }
        });
    }
    while let Some(done) = calls.join_next().await {
        done.unwrap();
    }
    let seconds = started.elapsed().as_secs();
    drop(client);
    sigterm(&child);
    assert!(wait_with_timeout(&mut child, Duration::from_secs(10)).success());
    let logs = logs.join().unwrap();
    let text = &logs;
    let refusals = text
        .lines()
        .filter(|l| l.contains("call refused") || l.contains("send failed"))
        .count() as u64;
    // Without the per-key share, every one of the 2,500 refusals is a line
    // (the count below fails); without the bounds, a line is 250 KB.
    assert!(logs.len() < 1_000_000, "{} bytes of log", logs.len());
    assert!(
        refusals <= messenger_gateway::refusals::PER_CALLER_PER_SECOND * (seconds + 2),
        "{refusals} refusal lines in {seconds} s"
    );
    assert!(
        text.contains("more refusals of this caller's calls than are logged"),
        "the left-out lines are counted"
    );
    assert!(text.lines().all(|l| l.len() < 2_048), "a long line");
}

/// The peak resident memory of a process, in bytes (Linux).
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

/// 64 Sends at once, each one element of 60,000 empty buttons (120 KB,
/// under the request limit): refused on the wire count, before decoding
/// would allocate some 5 MB for each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_sends_of_huge_lists_at_once_cost_the_gateway_little_memory() {
    use messenger_gateway::edge::grpc::pb;
    let child = gateway(&["serve", "--listen", "127.0.0.1:0"], &[])
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    let (addr, _) = listening_addr(&mut child);
    // Warm: the first call's one-time allocations are not the subject.
    let mut warm = MessengerClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    warm.send(text_to(USER, "hi")).await.ok();
    let before = peak_rss(child.id());
    let request = pb::SendRequest {
        generic_template: Some(pb::GenericTemplate {
            elements: vec![pb::TemplateElement {
                title: "sale".into(),
                buttons: vec![pb::Button::default(); 60_000],
                ..Default::default()
            }],
        }),
        ..text_to(USER, "")
    };
    assert!(
        prost::Message::encoded_len(&request) <= messenger_gateway::edge::grpc::MAX_REQUEST_BYTES
    );
    // Each on its own connection, all connected first: at once, as 64
    // callers would.
    let mut clients = Vec::new();
    for _ in 0..64 {
        let client = MessengerClient::connect(format!("http://{addr}"))
            .await
            .unwrap()
            .max_encoding_message_size(usize::MAX);
        clients.push(client);
    }
    let mut calls = tokio::task::JoinSet::new();
    for mut client in clients {
        let request = request.clone();
        calls.spawn(async move { client.send(request).await.unwrap_err() });
    }
    while let Some(status) = calls.join_next().await {
        let status = status.unwrap();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    }
    let grew = peak_rss(child.id()).saturating_sub(before);
    // Measured: about 5 MB (64 connections' buffers); some 31 MB when the
    // lists were decoded before being counted.
    assert!(grew < 16 << 20, "the peak grew {} MB", grew >> 20);
}

/// 200 Subscribe streams that never open their HTTP/2 window, one that
/// reads nothing for a while, then 6,000 events of 3 KB: the gateway holds
/// a bounded queue for each, ends each stalled one with SUBSCRIBER_TOO_SLOW
/// and the last seq it gave out, and its memory stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_subscribers_hold_little_and_are_ended_as_too_slow_with_their_last_seq() {
    use messenger_gateway::edge::grpc::pb;
    use tokio_stream::StreamExt;
    const STALLED: usize = 200;
    const EVENTS: usize = 6_000;
    let child = gateway(
        &["serve", "--listen", "127.0.0.1:0"],
        &[
            ("INSTAGRAM_GRAPH_API_URL", "http://127.0.0.1:9/v25.0"),
            ("INSTAGRAM_USER_ID", ACCOUNT),
            ("INSTAGRAM_ACCESS_TOKEN", TOKEN),
            ("INSTAGRAM_APP_SECRET", APP_SECRET),
            ("INSTAGRAM_VERIFY_TOKEN", VERIFY_TOKEN),
            ("MESSENGER_GATEWAY_SUBSCRIBER_STALL_TIMEOUT", "3s"),
        ],
    )
    .spawn()
    .unwrap();
    let mut child = KillOnDrop(child);
    let _logs = drain_log(&mut child);
    let (addr, banner) = listening_addr(&mut child);
    let webhook_url = banner_value(&banner, "webhooks at ");
    let admin = banner_value(&banner, "admin at ");
    let subscribers =
        || async { metric_at(&admin, "messenger_gateway_subscribers").await as usize };
    let before = peak_rss(child.id());

    // Raw HTTP/2: streams whose window is 0 from the start and never grows.
    let request = prost::Message::encode_to_vec(&pb::SubscribeRequest::default());
    let mut framed = vec![0u8];
    framed.extend((request.len() as u32).to_be_bytes());
    framed.extend(request);
    let mut stalled = Vec::new();
    for _ in 0..4 {
        let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let (client, connection) = h2::client::Builder::new()
            .initial_window_size(0)
            .handshake::<_, bytes::Bytes>(tcp)
            .await
            .unwrap();
        tokio::spawn(connection);
        for _ in 0..STALLED / 4 {
            let mut client = client.clone().ready().await.unwrap();
            let request =
                http::Request::post(format!("http://{addr}/messenger.v1.Messenger/Subscribe"))
                    .header("content-type", "application/grpc")
                    .header("te", "trailers")
                    .body(())
                    .unwrap();
            let (response, mut body) = client.send_request(request, false).unwrap();
            body.send_data(framed.clone().into(), true).unwrap();
            stalled.push(response);
        }
    }
    // And one tonic client that reads nothing until its stream has ended.
    let mut watcher = MessengerClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
        .subscribe(pb::SubscribeRequest::default())
        .await
        .unwrap()
        .into_inner();
    eventually(Duration::from_secs(30), "every subscriber in", || async {
        subscribers().await == STALLED + 1
    })
    .await;

    let text = "x".repeat(3 * 1024);
    let http = reqwest::Client::new();
    for batch in 0..EVENTS / 50 {
        let items: Vec<(String, &str, i64)> = (0..50)
            .map(|i| (format!("m{batch}.{i}"), text.as_str(), T0))
            .collect();
        let items: Vec<(&str, &str, i64)> =
            items.iter().map(|(m, t, s)| (m.as_str(), *t, *s)).collect();
        let body = messages_from_user(&items);
        let status = http
            .post(&webhook_url)
            .header("content-type", "application/json")
            .header(
                messenger_gateway::edge::webhook::SIGNATURE_HEADER,
                messenger_gateway::edge::webhook::sign(APP_SECRET, &body),
            )
            .body(body)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 200);
    }
    // Every stalled stream is ended, its place given back.
    eventually(
        Duration::from_secs(60),
        "stalled subscribers ended",
        || async {
            match subscribers().await {
                0 => Ok(()),
                n => Err(format!("{n} still open")),
            }
        },
    )
    .await;
    let grew = peak_rss(child.id()).saturating_sub(before);
    // Measured: about 30 MB, most of it the commit feed's shared ring of
    // recent events; each stalled stream holds its queue of 64 at most.
    assert!(grew < 100 << 20, "the peak grew {} MB", grew >> 20);

    // The reader that woke up gets what was on its way, then the reason
    // and the seq to resume after: the last one it got.
    let mut last = 0;
    let ended = loop {
        match within("the next item of watcher", watcher.next())
            .await
            .expect("the stream ends with a status")
        {
            Ok(event) => {
                assert_eq!(event.seq, last + 1, "in order, no gap");
                last = event.seq;
            }
            Err(status) => break status,
        }
    };
    assert_eq!(ended.code(), tonic::Code::ResourceExhausted, "{ended:?}");
    let (reason, metadata) = error_info(&ended);
    assert_eq!(reason, "SUBSCRIBER_TOO_SLOW");
    assert_eq!(metadata["lastSeq"], last.to_string());
    assert!(last > 0 && (last as usize) < EVENTS, "{last}");
    drop(stalled);
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| match e.file_type().unwrap().is_dir() {
            true => dir_bytes(&e.path()),
            false => e.metadata().unwrap().len(),
        })
        .sum()
}

/// 60 signed deliveries whose entry.id is a megabyte of digits: each is
/// acknowledged, its items refused and counted, and the gateway's log,
/// data directory and memory barely move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_with_megabyte_ids_are_refused_item_by_item_at_little_cost() {
    let data = tempfile::tempdir().unwrap();
    let child = gateway(
        &["serve", "--listen", "127.0.0.1:0"],
        &[
            ("INSTAGRAM_GRAPH_API_URL", "http://127.0.0.1:9/v25.0"),
            ("INSTAGRAM_USER_ID", ACCOUNT),
            ("INSTAGRAM_ACCESS_TOKEN", TOKEN),
            ("INSTAGRAM_APP_SECRET", APP_SECRET),
            ("INSTAGRAM_VERIFY_TOKEN", VERIFY_TOKEN),
            ("MESSENGER_GATEWAY_DATA_DIR", data.path().to_str().unwrap()),
        ],
    )
    .spawn()
    .unwrap();
    let mut child = KillOnDrop(child);
    let logs = drain_log(&mut child);
    let (_, banner) = listening_addr(&mut child);
    let webhook_url = banner_value(&banner, "webhooks at ");
    let admin = banner_value(&banner, "admin at ");
    let http = reqwest::Client::new();
    // Warm: one ordinary delivery.
    let ok = messages_from_user(&[("m0", "hi", T0)]);
    let post = |body: Vec<u8>| {
        http.post(&webhook_url)
            .header("content-type", "application/json")
            .header(
                messenger_gateway::edge::webhook::SIGNATURE_HEADER,
                messenger_gateway::edge::webhook::sign(APP_SECRET, &body),
            )
            .body(body)
            .send()
    };
    assert_eq!(post(ok).await.unwrap().status(), 200);
    let (rss_before, data_before) = (peak_rss(child.id()), dir_bytes(data.path()));
    let huge = "7".repeat(1_000_000);
    for i in 0..60 {
        let body = serde_json::to_vec(&serde_json::json!({
            "object": "instagram",
            "entry": [{"id": huge, "time": T0, "messaging": [
                {"sender": {"id": USER}, "recipient": {"id": ACCOUNT}, "timestamp": T0,
                 "message": {"mid": format!("m.huge.{i}"), "text": "hi"}}
            ]}]
        }))
        .unwrap();
        assert!(body.len() < 1024 * 1024);
        assert_eq!(post(body).await.unwrap().status(), 200, "{i}");
    }
    let rejected = metric_at(&admin, "messenger_gateway_webhook_items_rejected_total").await;
    assert_eq!(rejected, 60.0, "every item refused and counted");
    let rss = peak_rss(child.id()).saturating_sub(rss_before);
    let stored = dir_bytes(data.path()).saturating_sub(data_before);
    sigterm(&child);
    assert!(wait_with_timeout(&mut child, Duration::from_secs(10)).success());
    let logs = logs.join().unwrap();
    // Measured: peak memory +8 MB (one body at a time), nothing stored,
    // 27 KB of log.
    assert!(rss < 32 << 20, "peak memory grew {} MB", rss >> 20);
    assert!(stored < 1 << 20, "the data directory grew {stored} bytes");
    assert!(logs.len() < 100_000, "{} bytes of log", logs.len());
}
