//! Requests a hostile or careless client sends: each is answered briefly,
//! at bounded cost, and never sends anything it should not.

use std::time::{Duration, Instant};

use tonic::Code;
use tonic_types::StatusExt;

use messenger_gateway::edge::grpc::pb;
use messenger_gateway::edge::server::ServeOptions;
use messenger_gateway::send::delivery::DeliveryPolicy;

use crate::support::*;

fn status_bytes(status: &tonic::Status) -> usize {
    status.message().len() + status.details().len()
}

#[tokio::test]
async fn a_huge_list_is_refused_whole_with_a_small_answer() {
    let gw = TestGateway::start().await;
    let request = pb::SendRequest {
        // 2 bytes each: 60,000 fit under the request limit.
        quick_replies: vec![pb::QuickReply::default(); 60_000],
        ..text_to(USER, "pick one")
    };
    let status = gw.client().await.send(request).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let violations = status
        .get_error_details()
        .bad_request()
        .unwrap()
        .field_violations
        .clone();
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert_eq!(violations[0].field, "quick_replies");
    assert!(status_bytes(&status) < 8 * 1024);

    // Many bad elements within the limits: at most 20 named.
    let element = pb::TemplateElement {
        buttons: vec![pb::Button::default(); 3],
        ..Default::default()
    };
    let request = pb::SendRequest {
        recipient_id: "not-an-igsid".repeat(1000),
        generic_template: Some(pb::GenericTemplate {
            elements: vec![element; 10],
        }),
        ..Default::default()
    };
    let status = gw.client().await.send(request).await.unwrap_err();
    let details = status.get_error_details();
    assert_eq!(details.bad_request().unwrap().field_violations.len(), 20);
    assert!(
        status_bytes(&status) < 8 * 1024,
        "{}",
        status_bytes(&status)
    );
    assert_eq!(gw.graph_calls().await, 0);
}

#[tokio::test]
async fn an_oversized_request_is_resource_exhausted_with_its_error_info() {
    let gw = TestGateway::start().await;
    let status = gw
        .client()
        .await
        .send(text_to(USER, &"x".repeat(300 * 1024)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let (reason, metadata) = error_info(&status);
    assert_eq!(reason, "MESSAGE_TOO_LARGE");
    assert_eq!(
        metadata["limitBytes"],
        messenger_gateway::edge::grpc::MAX_REQUEST_BYTES.to_string()
    );
}

#[tokio::test]
async fn control_characters_and_undocumented_reactions_are_refused() {
    let gw = TestGateway::start().await;
    gw.graph_answers(ok_reply()).await;
    let mut client = gw.client().await;
    let status = client
        .send(text_to(USER, "hello\u{0}\u{1b}[2Jworld"))
        .await
        .unwrap_err();
    let fields = status
        .get_error_details()
        .bad_request()
        .unwrap()
        .field_violations
        .clone();
    assert_eq!(fields[0].field, "text");
    assert!(fields[0].description.contains("U+0000"), "{fields:?}");
    client
        .send(text_to(USER, "line one\r\n\tline two"))
        .await
        .unwrap();
    let status = client
        .send_action(pb::SendActionRequest {
            recipient_id: USER.into(),
            action: pb::SenderAction::React as i32,
            message_id: "aWdfbWlkLTE".into(),
            reaction: "angry".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(gw.graph_calls().await, 1);
}

fn one_slot(queue: usize) -> DeliveryPolicy {
    DeliveryPolicy {
        max_concurrent_calls: 1,
        max_queued_sends: queue,
        ..quick_policy()
    }
}

#[tokio::test]
async fn a_full_queue_answers_overloaded_at_once() {
    let graph = HeldGraph::start().await;
    let gw = TestGateway::builder()
        .delivery(one_slot(1))
        .held_graph(&graph)
        .start()
        .await;
    // One call under way (held by Graph), one queued behind it.
    let mut waiting = Vec::new();
    for text in ["under way", "queued"] {
        let mut client = gw.client().await;
        waiting.push(tokio::spawn(async move {
            client.send(text_to(USER, text)).await
        }));
    }
    graph.until_waiting(1).await;
    gw.until_queued(1).await;
    let started = Instant::now();
    let status = gw.send_text().await.unwrap_err();
    assert!(started.elapsed() < Duration::from_millis(300));
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(error_info(&status).0, "OVERLOADED");
    assert!(retry_delay(&status).is_some());
    // A send with a request_id is refused too, and its id stays free.
    let with_id = pb::SendRequest {
        request_id: "while-full-1".into(),
        ..text_to(USER, "later")
    };
    let status = gw.client().await.send(with_id.clone()).await.unwrap_err();
    assert_eq!(error_info(&status).0, "OVERLOADED");
    graph.release();
    for w in waiting {
        w.await.unwrap().unwrap();
    }
    gw.client().await.send(with_id).await.unwrap();
    assert_eq!(graph.calls().len(), 3);
}

#[tokio::test]
async fn a_queued_send_whose_caller_hangs_up_is_never_sent() {
    let graph = HeldGraph::start().await;
    let gw = TestGateway::builder()
        .delivery(one_slot(10))
        .held_graph(&graph)
        .start()
        .await;
    let mut client = gw.client().await;
    let first = tokio::spawn(async move { client.send(text_to(USER, "first")).await });
    graph.until_waiting(1).await;
    let mut client = gw.client().await;
    let abandoned = tokio::spawn(async move { client.send(text_to(USER, "abandoned")).await });
    gw.until_queued(1).await;
    abandoned.abort();
    gw.until_queued(0).await;
    graph.release();
    first.await.unwrap().unwrap();
    // One slot, first come first served: had the abandoned send stayed
    // queued, it would have gone before this one.
    gw.client()
        .await
        .send(text_to(USER, "after"))
        .await
        .unwrap();
    let texts = graph.texts();
    assert_eq!(texts, ["first", "after"], "the abandoned send went out");
}

#[tokio::test]
async fn a_send_without_a_deadline_gets_the_default_one() {
    let options = ServeOptions {
        default_timeout: Duration::from_millis(400),
        ..ServeOptions::default()
    };
    let graph = HeldGraph::start().await;
    let gw = TestGateway::builder()
        .delivery(one_slot(10))
        .serve(options)
        .held_graph(&graph)
        .start()
        .await;
    let mut client = gw.client().await;
    let mut patient = tonic::Request::new(text_to(USER, "first"));
    patient.set_timeout(Duration::from_secs(60));
    let first = tokio::spawn(async move { client.send(patient).await });
    graph.until_waiting(1).await;
    let started = Instant::now();
    let status = gw.send_text().await.unwrap_err();
    assert!(started.elapsed() < Duration::from_millis(1000));
    assert_eq!(status.code(), Code::Unavailable);
    assert!(status.message().starts_with("not sent"), "{status:?}");
    graph.release();
    first.await.unwrap().unwrap();
    assert_eq!(graph.calls().len(), 1);
}

/// A request body that arrives only after `delay`, as from a slow client.
struct LateBody {
    frame: Option<bytes::Bytes>,
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl http_body::Body for LateBody {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        std::task::ready!(self.sleep.as_mut().poll(cx));
        std::task::Poll::Ready(self.frame.take().map(|f| Ok(http_body::Frame::data(f))))
    }
}

/// A raw gRPC call over HTTP/2 with `grpc-timeout` set by hand (clients
/// such as tonic's, grpcio and grpcurl give up on their own before such a
/// deadline), its body sent `body_delay` after its headers.
async fn raw_send(gw: &TestGateway, grpc_timeout: &str, body_delay: Duration) -> tonic::Status {
    use prost::Message;
    let message = text_to(USER, "too late").encode_to_vec();
    raw_call(gw, "Send", message, grpc_timeout, body_delay).await
}

async fn raw_call(
    gw: &TestGateway,
    method: &str,
    message: Vec<u8>,
    grpc_timeout: &str,
    body_delay: Duration,
) -> tonic::Status {
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(&message);
    let body = LateBody {
        frame: Some(frame.into()),
        sleep: Box::pin(tokio::time::sleep(body_delay)),
    };
    let http = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let response = http
        .post(format!(
            "http://{}/messenger.v1.Messenger/{method}",
            gw.addr
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", grpc_timeout)
        .body(reqwest::Body::wrap(body))
        .send()
        .await
        .unwrap();
    tonic::Status::from_header_map(response.headers()).expect("a trailers-only answer")
}

#[tokio::test]
async fn any_call_the_deadline_overtakes_gets_the_gateways_answer_not_tonics() {
    use prost::Message;
    let gw = TestGateway::start().await;
    let message = pb::GetWindowRequest {
        recipient_id: USER.into(),
        ..Default::default()
    }
    .encode_to_vec();
    let status = raw_call(&gw, "GetWindow", message, "20m", Duration::from_millis(300)).await;
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(error_info(&status).0, "DEADLINE_EXCEEDED");
}

#[tokio::test]
async fn a_send_with_almost_no_time_left_is_not_started() {
    let gw = TestGateway::start().await;
    gw.graph_answers(ok_reply()).await;
    // The body comes late, so only an answer that needs no body beats
    // tonic's own timer.
    for timeout in ["1n", "80m"] {
        let status = raw_send(&gw, timeout, Duration::from_millis(150)).await;
        // Our answer with its ErrorInfo, not tonic's bare CANCELLED.
        assert_eq!(status.code(), Code::Unavailable, "{timeout}: {status:?}");
        assert_eq!(error_info(&status).0, "UPSTREAM_UNAVAILABLE");
        assert!(status.message().starts_with("not sent"), "{status:?}");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(gw.graph_calls().await, 0);
    let mut request = tonic::Request::new(text_to(USER, "in time"));
    request.set_timeout(Duration::from_secs(2));
    gw.client().await.send(request).await.unwrap();
}

#[tokio::test]
async fn a_redirect_from_graph_is_not_followed() {
    let gw = TestGateway::start().await;
    gw.graph_answers(wiremock::ResponseTemplate::new(307).insert_header("location", "/elsewhere"))
        .await;
    let status = gw.send_text().await.unwrap_err();
    assert_ne!(status.code(), Code::Ok);
    let paths: Vec<String> = gw
        .graph
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(|r| r.url.path().to_owned())
        .collect();
    assert_eq!(
        paths,
        [MESSAGES_PATH],
        "the token never followed the redirect"
    );
}

#[tokio::test]
async fn subscribe_refuses_impossible_and_future_resume_points() {
    let gw = TestGateway::builder()
        .configure(|s| s.max_subscribers = 1)
        .start()
        .await;
    assert_eq!(
        gw.deliver(&messages_from_user(&[("m1", "hi", T0)])).await,
        200
    );
    let mut client = gw.client().await;
    let status = client
        .subscribe(pb::SubscribeRequest {
            after: u64::MAX,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(error_info(&status).0, "INVALID_REQUEST");
    let status = client
        .subscribe(pb::SubscribeRequest {
            after: 5,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange);
    let (reason, metadata) = error_info(&status);
    assert_eq!(
        (reason.as_str(), metadata["headSeq"].as_str()),
        ("AFTER_BEYOND_HEAD", "1")
    );

    let _open = client
        .subscribe(pb::SubscribeRequest {
            after: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    let status = client
        .subscribe(pb::SubscribeRequest {
            after: 0,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(error_info(&status).0, "OVERLOADED");
}

#[tokio::test]
async fn a_grpc_connection_that_stalls_before_its_preface_is_dropped() {
    use messenger_gateway::edge::net::Limits;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let options = ServeOptions {
        limits: Limits {
            first_byte_timeout: Duration::from_millis(300),
            ..Limits::default()
        },
        ..ServeOptions::default()
    };
    let gw = TestGateway::builder().serve(options).start().await;
    let mut silent = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let mut half = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    half.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    for conn in [&mut silent, &mut half] {
        // The server's own SETTINGS come first; then the connection closes.
        let closed = tokio::time::timeout(Duration::from_secs(3), async {
            let mut buf = [0u8; 256];
            while let Ok(n) = conn.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        });
        closed.await.expect("the stalled connection was dropped");
    }
    // A real client, which sends its preface at once, is served.
    gw.graph_answers(ok_reply()).await;
    gw.send_text().await.unwrap();
}

#[tokio::test]
async fn an_account_id_of_no_accounts_shape_is_refused_before_any_lookup_and_not_echoed() {
    let gw = TestGateway::start().await;
    let mut client = gw.client().await;
    let odd = format!("shop{}", "x".repeat(20_000));
    let window = client
        .get_window(pb::GetWindowRequest {
            account_id: odd.clone(),
            recipient_id: USER.into(),
        })
        .await
        .unwrap_err();
    let send = client
        .send(from_account(&odd, text_to(USER, "hi")))
        .await
        .unwrap_err();
    let subscribe = client
        .subscribe(pb::SubscribeRequest {
            after: 0,
            account_ids: vec![ACCOUNT.into(), "a\nline".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    for (status, field) in [
        (window, "account_id"),
        (send, "account_id"),
        (subscribe, "account_ids"),
    ] {
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        let violations = status
            .get_error_details()
            .bad_request()
            .unwrap()
            .field_violations
            .clone();
        assert_eq!(violations[0].field, field);
        assert!(
            status_bytes(&status) < 2 * 1024,
            "{}",
            status_bytes(&status)
        );
    }
}
