//! `SendStream`: a broadcast over one stream, each message sent as `Send`
//! would send it, at bulk priority, a bounded number read ahead.

use std::time::Instant;

use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming};

use super::{MessengerService, pb};
use crate::edge::auth::{AuthError, Caller};
use crate::model::message::Priority;
use crate::send::budget::Budget;

impl MessengerService {
    /// Runs one `SendStream`: reads at most `STREAM_READ_AHEAD` messages
    /// ahead of their results, sends each as `Send` would (bulk unless it
    /// says otherwise), and answers each as it finishes. When the caller
    /// goes, every send still waiting is dropped unsent.
    pub(super) async fn broadcast(
        self,
        caller: Caller,
        deadline: Option<Instant>,
        mut inbound: Streaming<pb::SendRequest>,
        results: tokio::sync::mpsc::Sender<Result<pb::SendResult, Status>>,
    ) {
        use futures_util::stream::FuturesUnordered;
        let stream_gone = CancellationToken::new();
        let _on_end = stream_gone.clone().drop_guard();
        let keys = self.keys.clone();
        let revoked_caller = caller.clone();
        let revoked = keys.revoked(&revoked_caller);
        tokio::pin!(revoked);
        let mut running = FuturesUnordered::new();
        let mut index = 0u64;
        let mut reading = true;
        // Why the caller's stream broke, told after what is under way.
        let mut broken: Option<Status> = None;
        loop {
            if !reading && running.is_empty() {
                if let Some(status) = broken {
                    let _ = results.send(Err(status)).await;
                }
                return;
            }
            tokio::select! {
                // A key revoked mid-stream: nothing more goes out for it.
                () = &mut revoked => {
                    let _ = results
                        .send(Err(AuthError::InvalidKey.into()))
                        .await;
                    return;
                }
                next = inbound.next(), if reading && running.len() < STREAM_READ_AHEAD => match next {
                    Some(Ok(request)) => {
                        let (i, request_id) = (index, request.request_id.clone());
                        index += 1;
                        let budget = Budget {
                            deadline: Some(deadline.unwrap_or_else(|| Instant::now() + self.default_timeout)),
                            cancelled: stream_gone.child_token(),
                            priority: Priority::Bulk,
                            start: None,
                        };
                        match self.start_send(&caller, &request, budget, Priority::Bulk) {
                            Ok(job) => running.push(async move { (i, request_id, job.await) }),
                            Err(status) => {
                                if results.send(Ok(send_result(i, request_id, Err(status)))).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    // The caller's stream broke: what is under way finishes,
                    // then the caller learns why the rest was not read.
                    Some(Err(status)) => {
                        reading = false;
                        broken = Some(status);
                    }
                    None => reading = false,
                },
                Some((i, request_id, outcome)) = running.next(), if !running.is_empty() => {
                    if results.send(Ok(send_result(i, request_id, outcome))).await.is_err() {
                        return;
                    }
                }
                () = results.closed() => return,
            }
        }
    }
}

/// Messages of one `SendStream` under way at once: the gateway reads no
/// further ahead, so HTTP/2 flow control holds the rest in the caller.
pub(super) const STREAM_READ_AHEAD: usize = 64;

/// One message's outcome in a `SendStream`: its response, or the status
/// `Send` would have answered, details and all.
fn send_result(
    index: u64,
    request_id: String,
    outcome: Result<pb::SendResponse, Status>,
) -> pb::SendResult {
    let result = match outcome {
        Ok(response) => pb::send_result::Result::Response(response),
        Err(status) => {
            let rpc = <tonic_types::pb::Status as prost::Message>::decode(status.details())
                .ok()
                .filter(|s| s.code != 0)
                .unwrap_or_else(|| tonic_types::pb::Status {
                    code: status.code() as i32,
                    message: status.message().to_owned(),
                    details: Vec::new(),
                });
            pb::send_result::Result::Error(rpc)
        }
    };
    pb::SendResult {
        index,
        request_id,
        result: Some(result),
    }
}
