//! What can go wrong with a send, and how each failure is classified.
//!
//! This is the core's one error boundary: the gRPC adapter turns a
//! [`SendError`] into a `tonic::Status` in exactly one place
//! (`grpc::status`), and the send log uses the same [`Reason`].

use std::time::Duration;

/// One bad field of a request, named by its path in the request message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

impl FieldViolation {
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}

/// Graph's error object: `{"error":{"message","type","code","error_subcode",...}}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
pub struct GraphError {
    #[serde(default)]
    pub message: String,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub code: Option<i64>,
    #[serde(rename = "error_subcode")]
    pub subcode: Option<i64>,
    #[serde(default)]
    pub is_transient: bool,
    pub fbtrace_id: Option<String>,
}

/// What one attempt at a Graph call ended with, when it did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Graph answered with its error object.
    Graph { http_status: u16, error: GraphError },
    /// Something answered, but not with a Graph error object (a proxy's HTML
    /// page, an empty 502, a 200 without a message id).
    UnexpectedResponse { http_status: u16, detail: String },
    /// No connection could be made, so nothing was sent.
    Connect { detail: String },
    /// The deadline came while the send waited for a free Graph call slot;
    /// nothing was sent.
    NotSent { detail: String },
    /// The request was (or may have been) written, and no answer came before
    /// the deadline. The message may have been delivered.
    NoAnswerBeforeDeadline { detail: String },
    /// The connection broke after the request may have been written.
    ConnectionLost { detail: String },
}

/// The one catalogue of machine-readable reasons a call fails
/// (google.rpc.ErrorInfo `reason`). Clients branch on these; never rename one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    InvalidRequest,
    OutsideMessagingWindow,
    RecipientUnavailable,
    RecipientNotFound,
    RateLimited,
    AccessTokenInvalid,
    PermissionMissing,
    RejectedByGraph,
    UpstreamUnavailable,
    DeliveryUnknown,
    GraphError,
    StoreUnavailable,
    /// No API key, or one the gateway does not know.
    ApiKeyInvalid,
    /// The key lacks the operation.
    OperationNotAllowed,
    /// The key may not act for the account.
    AccountNotAllowed,
    /// No account by that id or alias is configured.
    AccountNotFound,
    /// Too much waiting already (queued sends, subscriptions); retry later.
    Overloaded,
    /// The request is bigger than the gateway accepts.
    MessageTooLarge,
    /// `Subscribe.after` points at events already pruned.
    EventsPruned,
    /// `Subscribe.after` is beyond the newest event.
    AfterBeyondHead,
    /// The gateway is stopping; call again (another replica, or soon).
    ShuttingDown,
    /// The caller's deadline passed before the gateway could answer.
    DeadlineExceeded,
    /// A `Subscribe` stream took no event for too long while its queue was
    /// full: it was ended; resume with `after` = its last seq.
    SubscriberTooSlow,
    /// `GetSend`: no send is remembered under that id.
    SendNotFound,
    /// `GetMessage`: the record holds no such message.
    MessageNotFound,
}

impl Reason {
    pub const ALL: [Reason; 25] = [
        Reason::InvalidRequest,
        Reason::OutsideMessagingWindow,
        Reason::RecipientUnavailable,
        Reason::RecipientNotFound,
        Reason::RateLimited,
        Reason::AccessTokenInvalid,
        Reason::PermissionMissing,
        Reason::RejectedByGraph,
        Reason::UpstreamUnavailable,
        Reason::DeliveryUnknown,
        Reason::GraphError,
        Reason::StoreUnavailable,
        Reason::ApiKeyInvalid,
        Reason::OperationNotAllowed,
        Reason::AccountNotAllowed,
        Reason::AccountNotFound,
        Reason::Overloaded,
        Reason::MessageTooLarge,
        Reason::EventsPruned,
        Reason::AfterBeyondHead,
        Reason::ShuttingDown,
        Reason::DeadlineExceeded,
        Reason::SubscriberTooSlow,
        Reason::SendNotFound,
        Reason::MessageNotFound,
    ];

    /// The reason named `name` (as [`Reason::as_str`] spells it).
    pub fn named(name: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidRequest => "INVALID_REQUEST",
            Reason::OutsideMessagingWindow => "OUTSIDE_MESSAGING_WINDOW",
            Reason::RecipientUnavailable => "RECIPIENT_UNAVAILABLE",
            Reason::RecipientNotFound => "RECIPIENT_NOT_FOUND",
            Reason::RateLimited => "RATE_LIMITED",
            Reason::AccessTokenInvalid => "ACCESS_TOKEN_INVALID",
            Reason::PermissionMissing => "PERMISSION_MISSING",
            Reason::RejectedByGraph => "REJECTED_BY_GRAPH",
            Reason::UpstreamUnavailable => "UPSTREAM_UNAVAILABLE",
            Reason::DeliveryUnknown => "DELIVERY_UNKNOWN",
            Reason::GraphError => "GRAPH_ERROR",
            Reason::StoreUnavailable => "STORE_UNAVAILABLE",
            Reason::ApiKeyInvalid => "API_KEY_INVALID",
            Reason::OperationNotAllowed => "OPERATION_NOT_ALLOWED",
            Reason::AccountNotAllowed => "ACCOUNT_NOT_ALLOWED",
            Reason::AccountNotFound => "ACCOUNT_NOT_FOUND",
            Reason::Overloaded => "OVERLOADED",
            Reason::MessageTooLarge => "MESSAGE_TOO_LARGE",
            Reason::EventsPruned => "EVENTS_PRUNED",
            Reason::AfterBeyondHead => "AFTER_BEYOND_HEAD",
            Reason::ShuttingDown => "SHUTTING_DOWN",
            Reason::DeadlineExceeded => "DEADLINE_EXCEEDED",
            Reason::SubscriberTooSlow => "SUBSCRIBER_TOO_SLOW",
            Reason::SendNotFound => "SEND_NOT_FOUND",
            Reason::MessageNotFound => "MESSAGE_NOT_FOUND",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Graph's rate-limit codes: application, user, page, custom and Instagram
/// business-use-case limits.
const RATE_LIMIT_CODES: [i64; 6] = [4, 17, 32, 613, 80002, 80006];

impl Failure {
    /// Classifies by Graph's code and subcode first; the HTTP status only
    /// decides when Graph gave no code (2534022 arrives as 400 or 403).
    pub fn reason(&self) -> Reason {
        match self {
            Failure::Graph { http_status, error } => classify_graph(*http_status, error),
            Failure::UnexpectedResponse { http_status, .. } if (200..300).contains(http_status) => {
                Reason::GraphError
            }
            Failure::UnexpectedResponse { .. }
            | Failure::Connect { .. }
            | Failure::NotSent { .. } => Reason::UpstreamUnavailable,
            Failure::NoAnswerBeforeDeadline { .. } | Failure::ConnectionLost { .. } => {
                Reason::DeliveryUnknown
            }
        }
    }

    /// Whether trying again is safe and may help: only failures Graph calls
    /// transient, 5xx answers, and connections that never carried the request.
    pub fn is_retryable(&self) -> bool {
        match self {
            // Codes 1 and 2, `is_transient`, or a 5xx with no better code.
            Failure::Graph { .. } => self.reason() == Reason::UpstreamUnavailable,
            Failure::UnexpectedResponse { http_status, .. } => *http_status >= 500,
            Failure::Connect { .. } => true,
            // Its deadline is spent.
            Failure::NotSent { .. } => false,
            Failure::NoAnswerBeforeDeadline { .. } | Failure::ConnectionLost { .. } => false,
        }
    }

    pub fn http_status(&self) -> Option<u16> {
        match self {
            Failure::Graph { http_status, .. }
            | Failure::UnexpectedResponse { http_status, .. } => Some(*http_status),
            _ => None,
        }
    }

    pub fn graph_error(&self) -> Option<&GraphError> {
        match self {
            Failure::Graph { error, .. } => Some(error),
            _ => None,
        }
    }

    /// A short human message: Graph's own words where it gave some.
    pub fn message(&self) -> String {
        match self {
            Failure::Graph { error, .. } if !error.message.is_empty() => error.message.clone(),
            Failure::Graph { http_status, .. } => {
                format!("Graph answered HTTP {http_status} with an error and no message")
            }
            Failure::UnexpectedResponse {
                http_status,
                detail,
            } => format!("Graph answered HTTP {http_status} with {detail}"),
            Failure::Connect { detail } => format!("could not connect to Graph: {detail}"),
            Failure::NotSent { detail } => format!("not sent: {detail}"),
            Failure::NoAnswerBeforeDeadline { detail } => format!(
                "no answer from Graph before the deadline; the message may have been delivered ({detail})"
            ),
            Failure::ConnectionLost { detail } => format!(
                "the connection to Graph broke after the request was sent; the message may have been delivered ({detail})"
            ),
        }
    }
}

fn classify_graph(http_status: u16, error: &GraphError) -> Reason {
    let code = error.code.unwrap_or_default();
    let subcode = error.subcode.unwrap_or_default();
    match (code, subcode) {
        (10, 2534022 | 2018278) => Reason::OutsideMessagingWindow,
        (551, _) | (_, 1545041) | (10, 2018108) => Reason::RecipientUnavailable,
        (100, 2534014 | 2018001) => Reason::RecipientNotFound,
        (c, _) if RATE_LIMIT_CODES.contains(&c) => Reason::RateLimited,
        (190, _) => Reason::AccessTokenInvalid,
        (1 | 2, _) => Reason::UpstreamUnavailable,
        _ if error.is_transient => Reason::UpstreamUnavailable,
        (3 | 10 | 200..=299, _) => Reason::PermissionMissing,
        (100, _) => Reason::RejectedByGraph,
        _ if http_status >= 500 => Reason::UpstreamUnavailable,
        _ => Reason::GraphError,
    }
}

/// Why a send did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The request was rejected before any Graph call.
    #[error("invalid request: {}", describe_violations(.0))]
    InvalidRequest(Vec<FieldViolation>),
    /// Graph was called `attempts` times; the last attempt failed like this.
    #[error("{}", .failure.message())]
    Failed {
        failure: Failure,
        attempts: u32,
        /// When a retry may succeed (rate limits, transient failures).
        retry_after: Option<Duration>,
    },
    /// Refused without a Graph call: what the gateway knows of the
    /// conversation says Instagram would refuse it.
    #[error("{detail}")]
    OutsideWindow {
        /// When the window closed; unknown for a person never heard from.
        closed_at_ms: Option<i64>,
        detail: String,
    },
    /// An earlier send under the same `request_id` may have been delivered,
    /// so this one is not sent.
    #[error("{0}")]
    MaybeDeliveredBefore(String),
    /// Graph may have the message and did not say (or an earlier send
    /// under this `request_id` did not): the gateway keeps it as pending
    /// send `send_id` until Instagram's echo of it, or its horizon, tells.
    #[error("{cause}; kept as pending send {send_id}: GetSend tells what became of it")]
    Unsettled {
        send_id: String,
        cause: Box<SendError>,
    },
    /// The gateway's own store failed; nothing was sent.
    #[error("the gateway's store is unavailable: {0}")]
    Store(String),
    /// Too many sends are waiting already; nothing was sent.
    #[error("not sent: {detail}")]
    Overloaded {
        detail: String,
        retry_after: Duration,
    },
}

impl SendError {
    /// Refused before any Graph call: nothing was sent.
    pub fn not_sent(detail: String) -> Self {
        SendError::Failed {
            failure: Failure::NotSent { detail },
            attempts: 0,
            retry_after: None,
        }
    }

    pub fn reason(&self) -> Reason {
        match self {
            SendError::InvalidRequest(_) => Reason::InvalidRequest,
            SendError::Failed { failure, .. } => failure.reason(),
            SendError::OutsideWindow { .. } => Reason::OutsideMessagingWindow,
            SendError::MaybeDeliveredBefore(_) | SendError::Unsettled { .. } => {
                Reason::DeliveryUnknown
            }
            SendError::Store(_) => Reason::StoreUnavailable,
            SendError::Overloaded { .. } => Reason::Overloaded,
        }
    }

    pub fn attempts(&self) -> u32 {
        match self {
            SendError::Failed { attempts, .. } => *attempts,
            SendError::Unsettled { cause, .. } => cause.attempts(),
            _ => 0,
        }
    }

    pub fn failure(&self) -> Option<&Failure> {
        match self {
            SendError::Failed { failure, .. } => Some(failure),
            SendError::Unsettled { cause, .. } => cause.failure(),
            _ => None,
        }
    }
}

/// Cuts `s` to at most `max` bytes (plus an ellipsis), on a char boundary:
/// what a caller sent is echoed in errors and logs only this far.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

fn describe_violations(violations: &[FieldViolation]) -> String {
    violations
        .iter()
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(http_status: u16, code: i64, subcode: Option<i64>) -> Failure {
        Failure::Graph {
            http_status,
            error: GraphError {
                message: "m".into(),
                code: Some(code),
                subcode,
                ..GraphError::default()
            },
        }
    }

    #[test]
    fn graph_codes_map_to_the_documented_reasons() {
        let cases = [
            (400, 10, Some(2534022), Reason::OutsideMessagingWindow),
            (403, 10, Some(2534022), Reason::OutsideMessagingWindow),
            (400, 10, Some(2018278), Reason::OutsideMessagingWindow),
            (400, 551, None, Reason::RecipientUnavailable),
            (400, 100, Some(1545041), Reason::RecipientUnavailable),
            (400, 10, Some(2018108), Reason::RecipientUnavailable),
            (400, 100, Some(2534014), Reason::RecipientNotFound),
            (400, 100, Some(2018001), Reason::RecipientNotFound),
            (400, 4, None, Reason::RateLimited),
            (400, 17, None, Reason::RateLimited),
            (400, 32, None, Reason::RateLimited),
            (400, 613, None, Reason::RateLimited),
            (400, 80002, None, Reason::RateLimited),
            (400, 80006, None, Reason::RateLimited),
            (400, 190, Some(463), Reason::AccessTokenInvalid),
            (401, 190, None, Reason::AccessTokenInvalid),
            (400, 3, None, Reason::PermissionMissing),
            (400, 10, None, Reason::PermissionMissing),
            (400, 10, Some(2018065), Reason::PermissionMissing),
            (400, 200, None, Reason::PermissionMissing),
            (400, 299, None, Reason::PermissionMissing),
            (400, 100, Some(2018047), Reason::RejectedByGraph),
            (400, 100, None, Reason::RejectedByGraph),
            (500, 1, None, Reason::UpstreamUnavailable),
            (400, 2, None, Reason::UpstreamUnavailable),
            (500, 12345, None, Reason::UpstreamUnavailable),
            (400, 12345, None, Reason::GraphError),
        ];
        for (status, code, subcode, want) in cases {
            assert_eq!(
                graph(status, code, subcode).reason(),
                want,
                "HTTP {status} code {code}/{subcode:?}"
            );
        }
    }

    #[test]
    fn the_code_decides_even_when_the_http_status_is_500() {
        assert_eq!(graph(500, 190, None).reason(), Reason::AccessTokenInvalid);
        assert!(!graph(500, 190, None).is_retryable());
        assert_eq!(graph(503, 613, None).reason(), Reason::RateLimited);
        assert!(!graph(503, 613, None).is_retryable());
    }

    #[test]
    fn only_transient_failures_are_retryable() {
        assert!(graph(500, 1, None).is_retryable());
        assert!(graph(400, 2, None).is_retryable());
        assert!(graph(500, 12345, None).is_retryable());
        let flagged = Failure::Graph {
            http_status: 400,
            error: GraphError {
                code: Some(12345),
                is_transient: true,
                ..GraphError::default()
            },
        };
        assert!(flagged.is_retryable());
        assert_eq!(flagged.reason(), Reason::UpstreamUnavailable);
        for code in [4, 17, 613, 10, 100, 190, 551, 3, 200] {
            assert!(!graph(400, code, None).is_retryable(), "code {code}");
        }
        assert!(
            Failure::Connect {
                detail: String::new()
            }
            .is_retryable()
        );
        assert!(
            Failure::UnexpectedResponse {
                http_status: 502,
                detail: String::new()
            }
            .is_retryable()
        );
        assert!(
            !Failure::UnexpectedResponse {
                http_status: 404,
                detail: String::new()
            }
            .is_retryable()
        );
        assert!(
            !Failure::NoAnswerBeforeDeadline {
                detail: String::new()
            }
            .is_retryable()
        );
        assert!(
            !Failure::ConnectionLost {
                detail: String::new()
            }
            .is_retryable()
        );
    }

    #[test]
    fn a_success_status_with_a_strange_body_is_never_called_unavailable() {
        let f = Failure::UnexpectedResponse {
            http_status: 200,
            detail: "no message_id".into(),
        };
        assert_eq!(f.reason(), Reason::GraphError);
        assert!(!f.is_retryable());
    }
}
