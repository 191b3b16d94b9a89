//! The one place a [`SendError`] becomes a gRPC `Status`, with AIP-193
//! details: exactly one ErrorInfo, BadRequest for invalid fields, RetryInfo
//! where a retry can help.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::clock::rfc3339;
use crate::error::{Failure, Reason, SendError};
use crate::inbox::SubscribeError;
use crate::store::StoreError;

/// ErrorInfo `domain` for every error the gateway reports.
pub const DOMAIN: &str = "messenger-gateway";

/// Status messages travel in a header (16 KiB for all of them in tonic):
/// keep Graph's words, but never a whole upstream body.
const MAX_MESSAGE_BYTES: usize = 1024;
const MAX_METADATA_BYTES: usize = 256;
/// RetryInfo when the gateway's own store failed.
const STORE_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

pub fn code_for(error: &SendError) -> Code {
    match error.reason() {
        Reason::InvalidRequest | Reason::RejectedByGraph => Code::InvalidArgument,
        Reason::OutsideMessagingWindow
        | Reason::RecipientUnavailable
        | Reason::AccessTokenInvalid
        | Reason::PermissionMissing => Code::FailedPrecondition,
        Reason::RecipientNotFound => Code::NotFound,
        Reason::RateLimited => Code::ResourceExhausted,
        Reason::UpstreamUnavailable => Code::Unavailable,
        Reason::DeliveryUnknown => match error.failure() {
            Some(Failure::NoAnswerBeforeDeadline { .. }) => Code::DeadlineExceeded,
            _ => Code::Unknown,
        },
        Reason::GraphError => Code::Unknown,
        Reason::StoreUnavailable => Code::Unavailable,
    }
}

impl From<SendError> for Status {
    fn from(error: SendError) -> Self {
        let code = code_for(&error);
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
                        metadata.insert(key.to_owned(), truncate(&v, MAX_METADATA_BYTES));
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
        let mut details = ErrorDetails::with_error_info(error.reason().as_str(), DOMAIN, metadata);
        match &error {
            SendError::InvalidRequest(violations) => {
                for v in violations {
                    details.add_bad_request_violation(v.field.clone(), v.description.clone());
                }
            }
            SendError::Failed {
                retry_after: Some(delay),
                ..
            } => {
                details.set_retry_info(Some(*delay));
            }
            SendError::Failed { .. } => {}
            SendError::OutsideWindow { .. } | SendError::MaybeDeliveredBefore(_) => {}
            SendError::Store(_) => {
                details.set_retry_info(Some(STORE_RETRY));
            }
        }
        Status::with_error_details(
            code,
            truncate(&error.to_string(), MAX_MESSAGE_BYTES),
            details,
        )
    }
}

/// The inbound side's failures: the store, or a resume point already pruned.
impl From<SubscribeError> for Status {
    fn from(error: SubscribeError) -> Self {
        let (code, reason, metadata) = match &error {
            SubscribeError::Pruned { pruned_through } => (
                Code::OutOfRange,
                "EVENTS_PRUNED",
                HashMap::from([("prunedThrough".to_owned(), pruned_through.to_string())]),
            ),
            SubscribeError::ShuttingDown => (Code::Unavailable, "SHUTTING_DOWN", HashMap::new()),
            SubscribeError::Store(_) => (
                Code::Unavailable,
                Reason::StoreUnavailable.as_str(),
                HashMap::new(),
            ),
        };
        let mut info = ErrorDetails::with_error_info(reason, DOMAIN, metadata);
        if code == Code::Unavailable {
            info.set_retry_info(Some(STORE_RETRY));
        }
        Status::with_error_details(code, truncate(&error.to_string(), MAX_MESSAGE_BYTES), info)
    }
}

impl From<StoreError> for Status {
    fn from(error: StoreError) -> Self {
        SubscribeError::Store(error).into()
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{FieldViolation, GraphError};
    use std::time::Duration;

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
}
