//! The tonic adapter: generated types, the `Messenger` service, and the
//! conversions at its edge. Handlers only convert and delegate.

pub mod convert;
pub mod inbound;
pub mod status;

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_stream::{Stream, StreamExt, wrappers::ReceiverStream};
use tonic::{Request, Response, Status};

use crate::delivery::log_outcome;
use crate::error::{FieldViolation, SendError};
use crate::inbox::Inbox;
use crate::message::{Igsid, Sent};
use crate::outbox::Outbox;

/// Code generated from `proto/messenger/v1/messenger.proto`.
pub mod pb {
    tonic::include_proto!("messenger.v1");

    /// For server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/messenger_descriptor.bin"));
}

pub use pb::messenger_server::MessengerServer;

/// Requests are small (text is at most 1000 bytes); refuse anything huge early.
pub const MAX_REQUEST_BYTES: usize = 256 * 1024;

/// The `Messenger` service: sends go to the outbox; windows and the event
/// stream come from the inbox.
pub struct MessengerService {
    outbox: Arc<Outbox>,
    inbox: Arc<Inbox>,
    /// The account windows are reported for.
    account_id: String,
}

impl MessengerService {
    pub fn new(outbox: Arc<Outbox>, inbox: Arc<Inbox>, account_id: String) -> Self {
        Self {
            outbox,
            inbox,
            account_id,
        }
    }

    pub fn into_server(self) -> MessengerServer<Self> {
        MessengerServer::new(self).max_decoding_message_size(MAX_REQUEST_BYTES)
    }
}

#[tonic::async_trait]
impl pb::messenger_server::Messenger for MessengerService {
    type SubscribeStream = Pin<Box<dyn Stream<Item = Result<pb::InboundEvent, Status>> + Send>>;

    async fn send(
        &self,
        request: Request<pb::SendRequest>,
    ) -> Result<Response<pb::SendResponse>, Status> {
        let deadline = deadline_of(&request);
        let (message, request_id) = convert::message_from_pb(request.get_ref())
            .map_err(|v| rejected("message", &request.get_ref().recipient_id, v))?;
        // Not kept while the send is under way.
        drop(request);
        let outbox = self.outbox.clone();
        let sent =
            finish_detached(
                async move { outbox.send_message(message, request_id, deadline).await },
            )
            .await?;
        Ok(Response::new(pb::SendResponse {
            message_id: sent.message_id.unwrap_or_default(),
            recipient_id: sent.recipient_id,
            graph_calls: sent.graph_calls,
        }))
    }

    async fn send_action(
        &self,
        request: Request<pb::SendActionRequest>,
    ) -> Result<Response<pb::SendActionResponse>, Status> {
        let deadline = deadline_of(&request);
        let action = convert::action_from_pb(request.get_ref())
            .map_err(|v| rejected("action", &request.get_ref().recipient_id, v))?;
        drop(request);
        let outbox = self.outbox.clone();
        let sent =
            finish_detached(async move { outbox.send_action(&action, deadline).await }).await?;
        Ok(Response::new(pb::SendActionResponse {
            recipient_id: sent.recipient_id,
            graph_calls: sent.graph_calls,
        }))
    }

    async fn get_window(
        &self,
        request: Request<pb::GetWindowRequest>,
    ) -> Result<Response<pb::GetWindowResponse>, Status> {
        let recipient_id = request.into_inner().recipient_id;
        let user = Igsid::parse(&recipient_id).map_err(|e| {
            Status::from(SendError::InvalidRequest(vec![FieldViolation::new(
                "recipient_id",
                e,
            )]))
        })?;
        let window = self.inbox.window(&self.account_id, user.as_str()).await?;
        Ok(Response::new(inbound::window_to_pb(recipient_id, &window)))
    }

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let after = request.into_inner().after;
        let events = self.inbox.subscribe(after).await?;
        let stream = ReceiverStream::new(events)
            .map(|item| item.map(inbound::event_to_pb).map_err(Status::from));
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Logs and converts a request that failed validation.
fn rejected(kind: &str, recipient: &str, violations: Vec<crate::error::FieldViolation>) -> Status {
    let error = SendError::InvalidRequest(violations);
    log_outcome(kind, recipient, Instant::now(), Err(&error));
    error.into()
}

/// Runs a send on its own task: if the caller hangs up or its deadline fires
/// first, the Graph call still completes and its outcome is still logged.
/// Spawns at once (not `async fn`), so the handler's future holds only the
/// join handle, not a copy of the whole send: that is memory per call in flight.
fn finish_detached(
    send: impl Future<Output = Result<Sent, SendError>> + Send + 'static,
) -> impl Future<Output = Result<Sent, Status>> {
    let task = tokio::spawn(send);
    async move {
        match task.await {
            Ok(result) => result.map_err(Status::from),
            Err(_) => Err(Status::internal("the send task failed")),
        }
    }
}

/// The caller's deadline, from `grpc-timeout`, a little early so that our
/// own answer (with its details) beats tonic's bare timeout.
fn deadline_of<T>(request: &Request<T>) -> Option<Instant> {
    let timeout = parse_grpc_timeout(request.metadata().get("grpc-timeout")?.to_str().ok()?)?;
    let margin = (timeout / 10).clamp(Duration::from_millis(1), Duration::from_millis(50));
    Some(Instant::now() + timeout.saturating_sub(margin))
}

/// `grpc-timeout` is at most 8 digits and a unit (gRPC over HTTP/2 spec).
fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_in_every_unit() {
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse_grpc_timeout("10S"), Some(Duration::from_secs(10)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(
            parse_grpc_timeout("99999999u"),
            Some(Duration::from_micros(99999999))
        );
        assert_eq!(parse_grpc_timeout("5n"), Some(Duration::from_nanos(5)));
        for bad in ["", "S", "10", "10x", "123456789S", "-1S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad}");
        }
    }
}
