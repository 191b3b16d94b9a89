//! The one place core errors become a gRPC `Status`, with AIP-193 details:
//! exactly one ErrorInfo, BadRequest for invalid fields, RetryInfo where a
//! retry can help. Every status is bounded in size, whatever the request.

use std::collections::HashMap;
use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::accounts::AccountError;
use crate::clock::rfc3339;
use crate::conversation::inbox::SubscribeError;
use crate::edge::auth::AuthError;
use crate::model::error::{Failure, FieldViolation, Reason, SendError, truncate};
use crate::store::StoreError;

/// ErrorInfo `domain` for every error the gateway reports.
pub const DOMAIN: &str = "messenger-gateway";

/// Status messages travel in headers (16 KiB for all of them in tonic; some
/// clients warn past 8 KiB): keep Graph's words, but never a whole upstream
/// body. With the limits below a status stays under 8 KiB on the wire too,
/// where the message is percent-encoded (up to 3 bytes a byte) and the
/// details, which repeat it, are base64.
pub const MAX_MESSAGE_BYTES: usize = 512;
const MAX_METADATA_BYTES: usize = 256;
/// A BadRequest names at most this many fields: enough to fix a request,
/// too few to amplify a hostile one.
pub const MAX_VIOLATIONS: usize = 20;
const MAX_FIELD_BYTES: usize = 64;
const MAX_DESCRIPTION_BYTES: usize = 100;
/// RetryInfo when the gateway's own store failed, or it is shutting down.
const STORE_RETRY: Duration = Duration::from_secs(1);
/// RetryInfo when too many subscriptions are open.
const SUBSCRIBERS_RETRY: Duration = Duration::from_secs(5);

/// The gRPC code for each reason; a failed send may refine it.
fn code_of(reason: Reason) -> Code {
    match reason {
        Reason::InvalidRequest | Reason::RejectedByGraph => Code::InvalidArgument,
        Reason::OutsideMessagingWindow
        | Reason::RecipientUnavailable
        | Reason::AccessTokenInvalid
        | Reason::PermissionMissing => Code::FailedPrecondition,
        Reason::RecipientNotFound
        | Reason::AccountNotFound
        | Reason::SendNotFound
        | Reason::MessageNotFound => Code::NotFound,
        Reason::RateLimited
        | Reason::Overloaded
        | Reason::MessageTooLarge
        | Reason::SubscriberTooSlow => Code::ResourceExhausted,
        Reason::UpstreamUnavailable | Reason::StoreUnavailable | Reason::ShuttingDown => {
            Code::Unavailable
        }
        Reason::DeliveryUnknown | Reason::GraphError => Code::Unknown,
        Reason::ApiKeyInvalid => Code::Unauthenticated,
        Reason::OperationNotAllowed | Reason::AccountNotAllowed => Code::PermissionDenied,
        Reason::EventsPruned | Reason::AfterBeyondHead => Code::OutOfRange,
        Reason::DeadlineExceeded => Code::DeadlineExceeded,
    }
}

pub fn code_for(error: &SendError) -> Code {
    match (error.reason(), error.failure()) {
        (Reason::DeliveryUnknown, Some(Failure::NoAnswerBeforeDeadline { .. })) => {
            Code::DeadlineExceeded
        }
        (reason, _) => code_of(reason),
    }
}

/// Builds a status with one ErrorInfo, cut to size.
pub fn failure(
    reason: Reason,
    message: &str,
    metadata: HashMap<String, String>,
    retry: Option<Duration>,
    violations: &[FieldViolation],
) -> Status {
    failure_with_code(
        code_of(reason),
        reason,
        message,
        metadata,
        retry,
        violations,
    )
}

/// As [`failure`], with a code other than the reason's own.
pub fn failure_with_code(
    code: Code,
    reason: Reason,
    message: &str,
    metadata: HashMap<String, String>,
    retry: Option<Duration>,
    violations: &[FieldViolation],
) -> Status {
    let metadata: HashMap<String, String> = metadata
        .into_iter()
        .map(|(k, v)| (k, clean(&v, MAX_METADATA_BYTES)))
        .collect();
    let mut details = ErrorDetails::with_error_info(reason.as_str(), DOMAIN, metadata);
    for v in violations.iter().take(MAX_VIOLATIONS) {
        details.add_bad_request_violation(
            clean(&v.field, MAX_FIELD_BYTES),
            clean(&v.description, MAX_DESCRIPTION_BYTES),
        );
    }
    if retry.is_some() {
        details.set_retry_info(retry);
    }
    Status::with_error_details(code, clean(message, MAX_MESSAGE_BYTES), details)
}

/// `s` cut at `max` bytes, its control characters (ESC, NUL, CR, LF…)
/// escaped: Graph's words and a caller's values reach other callers'
/// terminals and logs, where such bytes would rewrite or split lines.
fn clean(s: &str, max: usize) -> String {
    if !s.chars().any(char::is_control) {
        return truncate(s, max);
    }
    let escaped: String = s
        .chars()
        .map(|c| match c.is_control() {
            true => c.escape_default().to_string(),
            false => c.to_string(),
        })
        .collect();
    truncate(&escaped, max)
}

impl From<SendError> for Status {
    fn from(error: SendError) -> Self {
        let mut metadata = HashMap::new();
        if error.attempts() > 0 {
            metadata.insert("attempts".to_owned(), error.attempts().to_string());
        }
        if let Some(failure) = error.failure() {
            if let Some(status) = failure.http_status() {
                metadata.insert("httpStatus".to_owned(), status.to_string());
            }
            if let Some(graph) = failure.graph_error() {
                let mut put = |key: &str, value: Option<String>| {
                    if let Some(v) = value {
                        metadata.insert(key.to_owned(), v);
                    }
                };
                put("graphCode", graph.code.map(|c| c.to_string()));
                put("graphSubcode", graph.subcode.map(|c| c.to_string()));
                put("graphType", graph.kind.clone());
                put("fbtraceId", graph.fbtrace_id.clone());
            }
        }
        if let SendError::OutsideWindow {
            closed_at_ms: Some(at),
            ..
        } = &error
        {
            metadata.insert("windowClosedAt".to_owned(), rfc3339(*at));
        }
        if let SendError::Unsettled { send_id, .. } = &error {
            metadata.insert("sendId".to_owned(), send_id.clone());
        }
        let (retry, violations): (_, &[FieldViolation]) = match &error {
            SendError::InvalidRequest(violations) => (None, violations),
            SendError::Failed { retry_after, .. } => (*retry_after, &[]),
            SendError::OutsideWindow { .. }
            | SendError::MaybeDeliveredBefore(_)
            | SendError::Unsettled { .. } => (None, &[]),
            SendError::Store(_) => (Some(STORE_RETRY), &[]),
            SendError::Overloaded { retry_after, .. } => (Some(*retry_after), &[]),
        };
        failure_with_code(
            code_for(&error),
            error.reason(),
            &error.to_string(),
            metadata,
            retry,
            violations,
        )
    }
}

/// The inbound side's failures.
impl From<SubscribeError> for Status {
    fn from(error: SubscribeError) -> Self {
        let (reason, metadata, retry) = match &error {
            SubscribeError::Pruned { pruned_through } => (
                Reason::EventsPruned,
                HashMap::from([("prunedThrough".to_owned(), pruned_through.to_string())]),
                None,
            ),
            SubscribeError::BeyondHead { head, .. } => (
                Reason::AfterBeyondHead,
                HashMap::from([("headSeq".to_owned(), head.to_string())]),
                None,
            ),
            SubscribeError::TooMany { .. } => {
                (Reason::Overloaded, HashMap::new(), Some(SUBSCRIBERS_RETRY))
            }
            SubscribeError::ShuttingDown => {
                (Reason::ShuttingDown, HashMap::new(), Some(STORE_RETRY))
            }
            SubscribeError::Revoked => (Reason::ApiKeyInvalid, HashMap::new(), None),
            SubscribeError::TooSlow { last_seq, .. } => (
                Reason::SubscriberTooSlow,
                HashMap::from([("lastSeq".to_owned(), last_seq.to_string())]),
                None,
            ),
            SubscribeError::Store(_) => {
                (Reason::StoreUnavailable, HashMap::new(), Some(STORE_RETRY))
            }
        };
        failure(reason, &error.to_string(), metadata, retry, &[])
    }
}

/// tonic refuses some requests before a handler sees them: a body that is
/// not a valid message (a string that is not UTF-8, say) as INTERNAL, and an
/// oversized one as OUT_OF_RANGE, both without details. This gives them the
/// codes and the one ErrorInfo every other failure has.
pub fn explain_codec_errors<B>(mut response: http::Response<B>) -> http::Response<B> {
    let Some(status) = Status::from_header_map(response.headers()) else {
        return response;
    };
    if !status.details().is_empty() {
        return response;
    }
    let fixed = match status.code() {
        Code::Internal if status.message().contains("failed to decode") => failure(
            Reason::InvalidRequest,
            &format!(
                "the request is not a valid message (every string must be UTF-8): {}",
                status.message()
            ),
            HashMap::new(),
            None,
            &[],
        ),
        Code::OutOfRange if status.message().contains("message length too large") => failure(
            Reason::MessageTooLarge,
            &format!(
                "the request is too large: at most {} bytes are accepted",
                super::MAX_REQUEST_BYTES
            ),
            HashMap::from([(
                "limitBytes".to_owned(),
                super::MAX_REQUEST_BYTES.to_string(),
            )]),
            None,
            &[],
        ),
        _ => return response,
    };
    let headers = response.headers_mut();
    for name in ["grpc-status", "grpc-message", "grpc-status-details-bin"] {
        headers.remove(name);
    }
    if fixed.add_header(headers).is_err() {
        tracing::error!("could not rewrite a codec error");
    }
    response
}

impl From<StoreError> for Status {
    fn from(error: StoreError) -> Self {
        SubscribeError::Store(error).into()
    }
}

impl From<AccountError> for Status {
    fn from(error: AccountError) -> Self {
        match &error {
            AccountError::Required { .. } => SendError::InvalidRequest(vec![FieldViolation::new(
                "account_id",
                "is required: several accounts are configured (give an id or alias)",
            )])
            .into(),
            AccountError::NotFound(given) => failure(
                Reason::AccountNotFound,
                &error.to_string(),
                HashMap::from([("account".to_owned(), given.clone())]),
                None,
                &[],
            ),
        }
    }
}

impl From<AuthError> for Status {
    fn from(error: AuthError) -> Self {
        let (reason, metadata) = match &error {
            AuthError::InvalidKey => (Reason::ApiKeyInvalid, HashMap::new()),
            AuthError::OperationNotAllowed { key_id, operation } => (
                Reason::OperationNotAllowed,
                HashMap::from([
                    ("keyId".to_owned(), key_id.clone()),
                    ("operation".to_owned(), operation.as_str().to_owned()),
                ]),
            ),
            AuthError::AccountNotAllowed { key_id, account } => (
                Reason::AccountNotAllowed,
                HashMap::from([
                    ("keyId".to_owned(), key_id.clone()),
                    ("account".to_owned(), account.clone()),
                ]),
            ),
        };
        failure(reason, &error.to_string(), metadata, None, &[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_in_a_status_are_escaped_everywhere() {
        let hostile = "(#100) bad\u{1b}[2J\0\r\nx-injected: 1".to_owned();
        let status = failure(
            Reason::GraphError,
            &hostile,
            HashMap::from([("graphMessage".to_owned(), hostile.clone())]),
            None,
            &[FieldViolation::new("text", hostile.clone())],
        );
        let details = status.get_error_details();
        let info = details.error_info().unwrap();
        let violation = &details.bad_request().unwrap().field_violations[0];
        for text in [
            status.message(),
            info.metadata["graphMessage"].as_str(),
            violation.description.as_str(),
        ] {
            assert!(!text.chars().any(char::is_control), "{text:?}");
            assert!(text.contains("\\u{1b}[2J"), "{text:?}");
        }
    }

    use crate::model::error::GraphError;

    fn graph_failure(code: i64, subcode: Option<i64>) -> SendError {
        SendError::Failed {
            failure: Failure::Graph {
                http_status: 400,
                error: GraphError {
                    message: "(#10) This message is sent outside of allowed window.".into(),
                    kind: Some("OAuthException".into()),
                    code: Some(code),
                    subcode,
                    is_transient: false,
                    fbtrace_id: Some("AbCdEf".into()),
                },
            },
            attempts: 1,
            retry_after: None,
        }
    }

    #[test]
    fn graph_failures_carry_one_error_info_with_graph_metadata() {
        let status = Status::from(graph_failure(10, Some(2534022)));
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert_eq!(
            status.message(),
            "(#10) This message is sent outside of allowed window."
        );
        let details = status.get_error_details();
        let info = details.error_info().expect("ErrorInfo");
        assert_eq!(info.reason, "OUTSIDE_MESSAGING_WINDOW");
        assert_eq!(info.domain, DOMAIN);
        let m = &info.metadata;
        assert_eq!(m["httpStatus"], "400");
        assert_eq!(m["graphCode"], "10");
        assert_eq!(m["graphSubcode"], "2534022");
        assert_eq!(m["graphType"], "OAuthException");
        assert_eq!(m["fbtraceId"], "AbCdEf");
        assert_eq!(m["attempts"], "1");
        assert!(details.retry_info().is_none());
        let infos = status
            .get_error_details_vec()
            .into_iter()
            .filter(|d| matches!(d, tonic_types::ErrorDetail::ErrorInfo(_)))
            .count();
        assert_eq!(infos, 1);
    }

    #[test]
    fn every_reason_maps_to_its_code() {
        let cases = [
            (graph_failure(10, Some(2534022)), Code::FailedPrecondition),
            (graph_failure(551, None), Code::FailedPrecondition),
            (graph_failure(100, Some(2534014)), Code::NotFound),
            (graph_failure(613, None), Code::ResourceExhausted),
            (graph_failure(190, None), Code::FailedPrecondition),
            (graph_failure(200, None), Code::FailedPrecondition),
            (graph_failure(100, None), Code::InvalidArgument),
            (graph_failure(2, None), Code::Unavailable),
            (graph_failure(9999, None), Code::Unknown),
        ];
        for (error, code) in cases {
            assert_eq!(Status::from(error.clone()).code(), code, "{error:?}");
        }
        let unknown = |failure| SendError::Failed {
            failure,
            attempts: 1,
            retry_after: None,
        };
        let deadline = Status::from(unknown(Failure::NoAnswerBeforeDeadline {
            detail: "x".into(),
        }));
        assert_eq!(deadline.code(), Code::DeadlineExceeded);
        assert_eq!(
            deadline.get_error_details().error_info().unwrap().reason,
            "DELIVERY_UNKNOWN"
        );
        let lost = Status::from(unknown(Failure::ConnectionLost { detail: "x".into() }));
        assert_eq!(lost.code(), Code::Unknown);
        assert_eq!(
            lost.get_error_details().error_info().unwrap().reason,
            "DELIVERY_UNKNOWN"
        );
    }

    #[test]
    fn invalid_requests_name_each_field_in_bad_request() {
        let status = Status::from(SendError::InvalidRequest(vec![
            FieldViolation::new("recipient_id", "required"),
            FieldViolation::new("text", "too long"),
        ]));
        assert_eq!(status.code(), Code::InvalidArgument);
        let details = status.get_error_details();
        assert_eq!(details.error_info().unwrap().reason, "INVALID_REQUEST");
        let fields: Vec<_> = details
            .bad_request()
            .unwrap()
            .field_violations
            .iter()
            .map(|v| v.field.as_str())
            .collect();
        assert_eq!(fields, ["recipient_id", "text"]);
    }

    #[test]
    fn retry_info_is_attached_when_given() {
        let status = Status::from(SendError::Failed {
            failure: Failure::Connect {
                detail: "refused".into(),
            },
            attempts: 3,
            retry_after: Some(Duration::from_secs(2)),
        });
        assert_eq!(status.code(), Code::Unavailable);
        let details = status.get_error_details();
        assert_eq!(
            details.retry_info().unwrap().retry_delay,
            Some(Duration::from_secs(2))
        );
        assert_eq!(details.error_info().unwrap().metadata["attempts"], "3");
    }

    #[test]
    fn long_graph_messages_are_cut_to_fit_a_header() {
        let mut error = graph_failure(100, None);
        if let SendError::Failed {
            failure: Failure::Graph { error, .. },
            ..
        } = &mut error
        {
            error.message = "é".repeat(5000);
        }
        let status = Status::from(error);
        assert!(status.message().len() <= MAX_MESSAGE_BYTES + 3);
    }

    #[test]
    fn a_status_stays_small_however_many_and_long_the_violations() {
        let violations: Vec<_> = (0..100_000)
            .map(|i| {
                FieldViolation::new(
                    format!("quick_replies[{i}].title{}", "é".repeat(500)),
                    "é".repeat(1000),
                )
            })
            .collect();
        let status = Status::from(SendError::InvalidRequest(violations));
        let details = status.get_error_details();
        assert_eq!(
            details.bad_request().unwrap().field_violations.len(),
            MAX_VIOLATIONS
        );
        let size = status.message().len() + status.details().len();
        assert!(size < 8 * 1024, "{size} bytes");
        // On the wire: grpc-message percent-encoded, details in base64.
        let mut headers = http::HeaderMap::new();
        status.add_header(&mut headers).unwrap();
        let wire: usize = headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len())
            .sum();
        assert!(wire < 8 * 1024, "{wire} bytes on the wire");
    }

    #[test]
    fn every_reason_has_a_code_and_a_distinct_name() {
        let names: std::collections::HashSet<_> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(names.len(), Reason::ALL.len());
        for r in Reason::ALL {
            assert_ne!(code_of(r), Code::Ok, "{r}");
        }
    }
}
