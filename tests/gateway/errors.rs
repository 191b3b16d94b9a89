use std::time::Duration;

use tonic::Code;
use wiremock::ResponseTemplate;

use messenger_gateway::send::delivery::DeliveryPolicy;

use crate::support::*;

struct Row {
    graph: ResponseTemplate,
    code: Code,
    reason: &'static str,
    graph_calls: usize,
    retry_info: bool,
}

fn row(graph: ResponseTemplate, code: Code, reason: &'static str) -> Row {
    Row {
        graph,
        code,
        reason,
        graph_calls: 1,
        retry_info: false,
    }
}

#[tokio::test]
async fn every_graph_error_maps_to_its_code_and_reason() {
    let rows = vec![
        row(
            graph_error(400, 10, Some(2534022), "(#10) outside window"),
            Code::FailedPrecondition,
            "OUTSIDE_MESSAGING_WINDOW",
        ),
        row(
            graph_error(403, 10, Some(2534022), "(#10) outside window"),
            Code::FailedPrecondition,
            "OUTSIDE_MESSAGING_WINDOW",
        ),
        row(
            graph_error(400, 10, Some(2018278), "(#10) outside window"),
            Code::FailedPrecondition,
            "OUTSIDE_MESSAGING_WINDOW",
        ),
        row(
            graph_error(400, 551, None, "(#551) not available"),
            Code::FailedPrecondition,
            "RECIPIENT_UNAVAILABLE",
        ),
        row(
            graph_error(400, 100, Some(1545041), "not available"),
            Code::FailedPrecondition,
            "RECIPIENT_UNAVAILABLE",
        ),
        row(
            graph_error(400, 10, Some(2018108), "cannot receive"),
            Code::FailedPrecondition,
            "RECIPIENT_UNAVAILABLE",
        ),
        row(
            graph_error(400, 100, Some(2534014), "No matching user found"),
            Code::NotFound,
            "RECIPIENT_NOT_FOUND",
        ),
        row(
            graph_error(400, 100, Some(2018001), "No matching user found"),
            Code::NotFound,
            "RECIPIENT_NOT_FOUND",
        ),
        Row {
            retry_info: true,
            ..row(
                graph_error(400, 4, None, "(#4) app limit"),
                Code::ResourceExhausted,
                "RATE_LIMITED",
            )
        },
        Row {
            retry_info: true,
            ..row(
                graph_error(400, 613, None, "(#613) rate"),
                Code::ResourceExhausted,
                "RATE_LIMITED",
            )
        },
        Row {
            retry_info: true,
            ..row(
                graph_error(400, 80006, None, "BUC limit"),
                Code::ResourceExhausted,
                "RATE_LIMITED",
            )
        },
        row(
            graph_error(400, 190, Some(463), "Session has expired"),
            Code::FailedPrecondition,
            "ACCESS_TOKEN_INVALID",
        ),
        row(
            graph_error(400, 3, None, "no capability"),
            Code::FailedPrecondition,
            "PERMISSION_MISSING",
        ),
        row(
            graph_error(403, 10, None, "(#10) no permission"),
            Code::FailedPrecondition,
            "PERMISSION_MISSING",
        ),
        row(
            graph_error(400, 200, None, "(#200) permissions error"),
            Code::FailedPrecondition,
            "PERMISSION_MISSING",
        ),
        row(
            graph_error(400, 100, Some(2018047), "(#100) Upload attachment failure."),
            Code::InvalidArgument,
            "REJECTED_BY_GRAPH",
        ),
        Row {
            graph_calls: 3,
            retry_info: true,
            ..row(
                graph_error(500, 2, None, "Service temporarily unavailable"),
                Code::Unavailable,
                "UPSTREAM_UNAVAILABLE",
            )
        },
        Row {
            graph_calls: 3,
            retry_info: true,
            ..row(
                graph_error(400, 1, None, "An unknown error occurred"),
                Code::Unavailable,
                "UPSTREAM_UNAVAILABLE",
            )
        },
        Row {
            graph_calls: 3,
            retry_info: true,
            ..row(
                ResponseTemplate::new(502).set_body_string("<html>Bad Gateway</html>"),
                Code::Unavailable,
                "UPSTREAM_UNAVAILABLE",
            )
        },
        row(
            graph_error(400, 1609005, None, "(#1609005) Error posting message."),
            Code::Unknown,
            "GRAPH_ERROR",
        ),
    ];
    for r in rows {
        let gw = TestGateway::start().await;
        gw.graph_answers(r.graph.clone()).await;
        let status = gw.send_text().await.unwrap_err();
        let (reason, metadata) = error_info(&status);
        assert_eq!(
            (status.code(), reason.as_str()),
            (r.code, r.reason),
            "{status:?}"
        );
        assert_eq!(gw.graph_calls().await, r.graph_calls, "{}", r.reason);
        assert_eq!(metadata["attempts"], r.graph_calls.to_string());
        assert_eq!(retry_delay(&status).is_some(), r.retry_info, "{}", r.reason);
        assert!(metadata.contains_key("httpStatus"));
        if r.reason != "UPSTREAM_UNAVAILABLE" || metadata.contains_key("graphCode") {
            assert_eq!(metadata["fbtraceId"], "AZtrace123");
            assert_eq!(metadata["graphType"], "OAuthException");
        }
        assert_no_token(&status);
    }
}

#[tokio::test]
async fn errors_keep_graphs_own_message_and_codes() {
    let gw = TestGateway::start().await;
    gw.graph_answers(graph_error(
        400,
        10,
        Some(2534022),
        "(#10) This message is sent outside of allowed window.",
    ))
    .await;
    let status = gw.send_text().await.unwrap_err();
    assert_eq!(
        status.message(),
        "(#10) This message is sent outside of allowed window."
    );
    let (_, m) = error_info(&status);
    assert_eq!(m["httpStatus"], "400");
    assert_eq!(m["graphCode"], "10");
    assert_eq!(m["graphSubcode"], "2534022");
}

#[tokio::test]
async fn rate_limits_carry_graphs_estimate_as_retry_info() {
    let gw = TestGateway::start().await;
    gw.graph_answers(graph_error(400, 80002, None, "Instagram rate limit").insert_header(
        "x-business-use-case-usage",
        r#"{"17841400000000001":[{"type":"instagram","call_count":100,"estimated_time_to_regain_access":3}]}"#,
    ))
    .await;
    let status = gw.send_text().await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(retry_delay(&status), Some(Duration::from_secs(180)));
    assert_eq!(gw.graph_calls().await, 1, "rate limits are never retried");
}

#[tokio::test]
async fn an_unreachable_graph_is_retried_then_reported_unavailable() {
    // A port with nothing listening: every connection is refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}/v25.0", closed.local_addr().unwrap());
    drop(closed);
    let graph = wiremock::MockServer::start().await;
    let gw = TestGateway::builder().graph(graph, &base).start().await;
    let status = gw.send_text().await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    let (reason, m) = error_info(&status);
    assert_eq!(reason, "UPSTREAM_UNAVAILABLE");
    assert_eq!(m["attempts"], "3");
    assert!(retry_delay(&status).is_some());
}

#[tokio::test]
async fn a_success_status_without_a_message_id_is_not_retried() {
    let gw = TestGateway::start().await;
    gw.graph_answers(ResponseTemplate::new(200).set_body_string("OK"))
        .await;
    let status = gw.send_text().await.unwrap_err();
    assert_eq!(status.code(), Code::Unknown);
    assert_eq!(gw.graph_calls().await, 1);
}

#[tokio::test]
async fn a_slow_graph_past_the_callers_deadline_is_delivery_unknown() {
    let gw = TestGateway::start().await;
    gw.graph_answers(ok_reply().set_delay(Duration::from_secs(3)))
        .await;
    let mut request = tonic::Request::new(text_to(USER, "hi"));
    // 1 s leaves our answer a 50 ms head start on tonic's own timeout.
    request.set_timeout(Duration::from_secs(1));
    let mut client = gw.client().await;
    let started = std::time::Instant::now();
    let status = client.send(request).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_millis(2000));
    assert_eq!(status.code(), Code::DeadlineExceeded);
    let (reason, m) = error_info(&status);
    assert_eq!(reason, "DELIVERY_UNKNOWN");
    assert_eq!(m["attempts"], "1");
    assert_eq!(
        gw.graph_calls().await,
        1,
        "a request that may have landed is never repeated"
    );
}

#[tokio::test]
async fn the_upstream_timeout_bounds_a_send_without_a_caller_deadline() {
    let policy = DeliveryPolicy {
        upstream_timeout: Duration::from_millis(300),
        ..quick_policy()
    };
    let gw = TestGateway::builder().delivery(policy).start().await;
    gw.graph_answers(ok_reply().set_delay(Duration::from_secs(3)))
        .await;
    let started = std::time::Instant::now();
    let status = gw.send_text().await.unwrap_err();
    assert!(started.elapsed() < Duration::from_millis(1500));
    assert_eq!(status.code(), Code::DeadlineExceeded);
    assert_eq!(error_info(&status).0, "DELIVERY_UNKNOWN");
    assert_eq!(gw.graph_calls().await, 1);
}
