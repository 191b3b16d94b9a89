//! The webhook port under abuse: unsigned or oversized requests refused
//! before their bodies are read, stalled connections dropped, a connection
//! limit, and valid deliveries flowing throughout.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use messenger_gateway::edge::net::Limits;
use messenger_gateway::edge::server::ServeOptions;
use messenger_gateway::edge::webhook;

use crate::support::*;

fn host_port(gw: &TestGateway) -> String {
    gw.webhook_url
        .trim_start_matches("http://")
        .trim_end_matches(webhook::PATH)
        .to_owned()
}

/// Sends `head` (no body) and reads the status line, within `limit`.
async fn status_for_headers_only(gw: &TestGateway, head: &str, limit: Duration) -> String {
    let mut conn = TcpStream::connect(host_port(gw)).await.unwrap();
    conn.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 256];
    let n = tokio::time::timeout(limit, conn.read(&mut buf))
        .await
        .expect("answered before any body was sent")
        .unwrap();
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

fn quick(limits: Limits) -> ServeOptions {
    ServeOptions {
        limits,
        ..ServeOptions::default()
    }
}

#[tokio::test]
async fn unsigned_or_oversized_deliveries_are_refused_before_the_body_is_read() {
    let gw = TestGateway::start().await;
    let unsigned = "POST /webhook HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 104857600\r\n\r\n";
    let line = status_for_headers_only(&gw, unsigned, Duration::from_secs(2)).await;
    assert!(line.contains(" 401 "), "{line}");
    let malformed = "POST /webhook HTTP/1.1\r\nhost: x\r\nx-hub-signature-256: sha256=zz\r\ncontent-length: 10\r\n\r\n";
    let line = status_for_headers_only(&gw, malformed, Duration::from_secs(2)).await;
    assert!(line.contains(" 401 "), "{line}");
    let huge = format!(
        "POST /webhook HTTP/1.1\r\nhost: x\r\nx-hub-signature-256: sha256={}\r\ncontent-length: {}\r\n\r\n",
        "a".repeat(64),
        2 * 1024 * 1024
    );
    let line = status_for_headers_only(&gw, &huge, Duration::from_secs(2)).await;
    assert!(line.contains(" 413 "), "{line}");
}

#[tokio::test]
async fn stalled_connections_are_dropped_and_valid_deliveries_keep_flowing() {
    let limits = Limits {
        first_byte_timeout: Duration::from_millis(300),
        header_read_timeout: Duration::from_millis(300),
        body_read_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let gw = TestGateway::builder().serve(quick(limits)).start().await;
    // Silent, half a header, half a body.
    let mut silent = TcpStream::connect(host_port(&gw)).await.unwrap();
    let mut half_head = TcpStream::connect(host_port(&gw)).await.unwrap();
    half_head
        .write_all(b"POST /webhook HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let body = messages_from_user(&[("m1", "hi", T0)]);
    let mut half_body = TcpStream::connect(host_port(&gw)).await.unwrap();
    half_body
        .write_all(
            format!(
                "POST /webhook HTTP/1.1\r\nhost: x\r\nx-hub-signature-256: {}\r\ncontent-length: {}\r\n\r\n",
                webhook::sign(APP_SECRET, &body),
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    half_body.write_all(&body[..10]).await.unwrap();

    assert_eq!(
        gw.deliver(&messages_from_user(&[("m2", "hi", T0)])).await,
        200
    );

    let started = Instant::now();
    for conn in [&mut silent, &mut half_head, &mut half_body] {
        let mut buf = vec![0u8; 512];
        // Closed (0 bytes, or an error answer then close) well within 2 s.
        loop {
            let n = tokio::time::timeout(Duration::from_secs(2), conn.read(&mut buf))
                .await
                .expect("the stalled connection was dropped")
                .unwrap_or(0);
            if n == 0 {
                break;
            }
        }
    }
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn beyond_the_connection_limit_new_connections_wait_for_a_free_slot() {
    let limits = Limits {
        max_connections: 2,
        first_byte_timeout: Duration::from_millis(700),
        ..Limits::default()
    };
    let gw = TestGateway::builder().serve(quick(limits)).start().await;
    // Taken before the two silent ones connect: they are dropped no sooner
    // than 700 ms after it. The kernel hands connections over in the order
    // they came, so the two hold both slots before the delivery's turn.
    let started = Instant::now();
    let _a = TcpStream::connect(host_port(&gw)).await.unwrap();
    let _b = TcpStream::connect(host_port(&gw)).await.unwrap();
    assert_eq!(
        gw.deliver(&messages_from_user(&[("m1", "hi", T0)])).await,
        200
    );
    // Served only once the silent ones were dropped.
    assert!(
        started.elapsed() >= Duration::from_millis(700),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_stalled_webhook_connection_does_not_hold_up_shutdown() {
    let mut gw = TestGateway::start().await;
    let body = messages_from_user(&[("m1", "hi", T0)]);
    let mut stalled = TcpStream::connect(host_port(&gw)).await.unwrap();
    stalled
        .write_all(
            format!(
                "POST /webhook HTTP/1.1\r\nhost: x\r\nx-hub-signature-256: {}\r\ncontent-length: {}\r\n\r\n{{",
                webhook::sign(APP_SECRET, &body),
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    // Accepted in order: once a later delivery is served, the stalled one
    // is open in the gateway.
    assert_eq!(
        gw.deliver(&messages_from_user(&[("m2", "hi", T0)])).await,
        200
    );
    let started = Instant::now();
    gw.begin_shutdown();
    let served = gw.served.take().unwrap();
    tokio::time::timeout(Duration::from_secs(5), served)
        .await
        .expect("shutdown was not held up")
        .unwrap()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(4));
}

#[tokio::test]
async fn one_address_cannot_take_every_connection() {
    let limits = Limits {
        max_connections_per_ip: 2,
        ..Limits::default()
    };
    let gw = TestGateway::builder().serve(quick(limits)).start().await;
    let a = TcpStream::connect(host_port(&gw)).await.unwrap();
    let _b = TcpStream::connect(host_port(&gw)).await.unwrap();
    // The third from the same address (accepted after the two, in order of
    // arrival) is closed at once.
    let mut third = TcpStream::connect(host_port(&gw)).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(2), third.read(&mut buf))
        .await
        .expect("closed at once");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    // A slot given back is free again.
    drop(a);
    let body = messages_from_user(&[("m1", "hi", T0)]);
    let signature = webhook::sign(APP_SECRET, &body);
    let http = reqwest::Client::new();
    eventually(Duration::from_secs(30), "a delivery served", || async {
        http.post(&gw.webhook_url)
            .header(webhook::SIGNATURE_HEADER, &signature)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .map(|r| r.status().as_u16())
            .map_err(|e| e.to_string())
            .and_then(|s| if s == 200 { Ok(()) } else { Err(s.to_string()) })
    })
    .await;
}

#[tokio::test]
async fn the_admin_port_drops_a_connection_that_trickles_its_headers() {
    let limits = Limits {
        first_byte_timeout: Duration::from_millis(300),
        header_read_timeout: Duration::from_millis(600),
        ..Limits::default()
    };
    let gw = TestGateway::builder().serve(quick(limits)).start().await;
    let mut trickle = TcpStream::connect(gw.admin).await.unwrap();
    trickle
        .write_all(b"GET /metrics HTTP/1.1\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    // A header byte every 100 ms: each arrives in time, the whole never.
    let closed = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if trickle.write_all(b"x").await.is_err() {
            break true;
        }
        let mut buf = [0u8; 256];
        if let Ok(read) =
            tokio::time::timeout(Duration::from_millis(1), trickle.read(&mut buf)).await
        {
            // An answer (408) or the close.
            let _ = read;
            break true;
        }
        if started.elapsed() > Duration::from_secs(10) {
            break false;
        }
    };
    assert!(closed, "the trickling connection stayed open");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // The port still serves.
    assert_eq!(gw.admin_status("/livez").await, 200);
}
