//! Recipients that fail on purpose, each answering as Graph does for its
//! case (typed by the gateway's own `Reason`), and Graph's error shape.

use super::*;

/// A recipient id that makes the sandbox fail the way Graph does.
pub struct Scenario {
    pub recipient_id: &'static str,
    /// What the gateway makes of Graph's answer: a test runs every
    /// scenario through the classifier.
    pub outcome: Reason,
    pub(super) http_status: u16,
    pub(super) code: i64,
    pub(super) subcode: Option<i64>,
    pub(super) kind: &'static str,
    pub(super) message: &'static str,
    pub(super) is_transient: bool,
}

/// Recipients that fail on purpose: each answers like Graph for that case.
pub const SCENARIOS: [Scenario; 9] = [
    Scenario {
        recipient_id: "10000000000000001",
        outcome: Reason::OutsideMessagingWindow,
        http_status: 400,
        code: 10,
        subcode: Some(2534022),
        kind: "OAuthException",
        message: "(#10) This message is sent outside of allowed window.",
        is_transient: false,
    },
    Scenario {
        recipient_id: "10000000000000002",
        outcome: Reason::RecipientUnavailable,
        http_status: 400,
        code: 551,
        subcode: Some(1545041),
        kind: "OAuthException",
        message: "(#551) This person isn't available right now.",
        is_transient: false,
    },
    Scenario {
        recipient_id: "10000000000000003",
        outcome: Reason::RecipientNotFound,
        http_status: 400,
        code: 100,
        subcode: Some(2534014),
        kind: "IGApiException",
        message: "No matching user found",
        is_transient: false,
    },
    Scenario {
        recipient_id: "10000000000000004",
        outcome: Reason::RateLimited,
        http_status: 400,
        code: 613,
        subcode: None,
        kind: "OAuthException",
        message: "(#613) Calls to this api have exceeded the rate limit.",
        is_transient: false,
    },
    Scenario {
        recipient_id: "10000000000000005",
        outcome: Reason::AccessTokenInvalid,
        http_status: 400,
        code: 190,
        subcode: Some(463),
        kind: "OAuthException",
        message: "Error validating access token: Session has expired.",
        is_transient: false,
    },
    Scenario {
        recipient_id: "10000000000000006",
        outcome: Reason::PermissionMissing,
        http_status: 403,
        code: 10,
        subcode: None,
        kind: "OAuthException",
        message: "(#10) Application does not have permission for this action",
        is_transient: false,
    },
    Scenario {
        recipient_id: "10000000000000007",
        outcome: Reason::RejectedByGraph,
        http_status: 400,
        code: 100,
        subcode: Some(2018047),
        kind: "OAuthException",
        message: "(#100) Upload attachment failure.",
        is_transient: false,
    },
    Scenario {
        recipient_id: "10000000000000008",
        outcome: Reason::UpstreamUnavailable,
        http_status: 500,
        code: 2,
        subcode: None,
        kind: "OAuthException",
        message: "An unexpected error has occurred. Please retry your request later.",
        is_transient: true,
    },
    Scenario {
        recipient_id: "10000000000000011",
        outcome: Reason::GraphError,
        http_status: 400,
        code: 1609005,
        subcode: None,
        kind: "OAuthException",
        message: "(#1609005) Error posting message.",
        is_transient: false,
    },
];

/// What the rate-limited recipient's answers ask to wait.
pub(super) const RATE_LIMIT_PAUSE_SECONDS: &str = "1";

/// Fails every other call with a transient error, so a send succeeds on its
/// second Graph call (`graph_calls: 2`).
pub const FLAKY_RECIPIENT: &str = "10000000000000009";
/// Answers only after this long: a caller's deadline, or the upstream
/// timeout, runs out first (`DELIVERY_UNKNOWN`).
pub const SLOW_RECIPIENT: &str = "10000000000000010";
pub(super) const SLOW_DELAY: Duration = Duration::from_secs(30);

pub(super) fn graph_error(
    status: u16,
    code: i64,
    subcode: Option<i64>,
    kind: &str,
    message: &str,
) -> Response {
    graph_error_with(status, code, subcode, kind, message, false)
}

pub(super) fn graph_error_with(
    status: u16,
    code: i64,
    subcode: Option<i64>,
    kind: &str,
    message: &str,
    is_transient: bool,
) -> Response {
    let mut error = json!({
        "message": message,
        "type": kind,
        "code": code,
        "is_transient": is_transient,
        "fbtrace_id": format!("Sbx{:x}", rand::random::<u64>()),
    });
    if let Some(subcode) = subcode {
        error["error_subcode"] = json!(subcode);
    }
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    (status, Json(json!({ "error": error }))).into_response()
}

pub(super) fn invalid_parameter(message: &str) -> Response {
    graph_error(400, 100, None, "OAuthException", message)
}

/// `GET /sandbox/recipients`: what each recipient id does.
pub(super) async fn recipients() -> Json<Value> {
    let mut list: Vec<Value> = vec![
        json!({"recipient_id": DEMO_RECIPIENT, "outcome": "OK (wrote when the sandbox started)"}),
        json!({"recipient_id": "any other", "outcome": "OUTSIDE_MESSAGING_WINDOW until they write: POST /sandbox/inbound"}),
    ];
    list.extend(SCENARIOS.iter().map(|s| {
        json!({"recipient_id": s.recipient_id, "outcome": s.outcome.as_str(), "graph_code": s.code, "graph_subcode": s.subcode})
    }));
    list.push(
        json!({"recipient_id": FLAKY_RECIPIENT, "outcome": "OK after one retry (graph_calls: 2)"}),
    );
    list.push(
        json!({"recipient_id": SLOW_RECIPIENT, "outcome": "DELIVERY_UNKNOWN (answers after 30 s)"}),
    );
    Json(json!({ "recipients": list }))
}
