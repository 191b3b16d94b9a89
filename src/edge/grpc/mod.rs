//! The tonic adapter: generated types, the `Messenger` service, and the
//! conversions at its edge. Handlers only convert and delegate.

mod authenticate;
pub mod codec;
pub mod deadline;
mod stream;

use deadline::deadline_of;
use stream::STREAM_READ_AHEAD;
pub mod from_pb;
pub mod status;
pub mod to_pb;

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::accounts::{self, AccountEntry, AccountError, Registry};
use crate::conversation::inbox::Inbox;
use crate::edge::auth::{AuthError, Caller, Keys, Operation};
use crate::model::error::{FieldViolation, Reason, SendError};
use crate::model::event::InboundEvent;
use crate::model::message::Priority;
use crate::model::message::{Igsid, Sent};
use crate::refusals;
use crate::send::budget::Budget;
use crate::send::guard::{Guard, Origin};

/// Code generated from `proto/messenger/v1/messenger.proto`.
pub mod pb {
    tonic::include_proto!("messenger.v1");

    /// For server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/messenger_descriptor.bin"));
}

pub use authenticate::Authenticate;
pub use pb::messenger_server::MessengerServer;

/// The largest request any valid one can be, rounded up: a generic template
/// of 10 elements with 2 KB URLs everywhere is about 120 KB; text with its
/// quick replies about 16 KB. Anything larger is refused before decoding.
pub const MAX_REQUEST_BYTES: usize = 128 * 1024;

/// The `Messenger` service: sends go to the guard; windows and the event
/// stream come from the inbox. Every call is checked against its caller's
/// key before anything else happens.
#[derive(Clone)]
pub struct MessengerService {
    guard: Arc<Guard>,
    inbox: Arc<Inbox>,
    keys: Arc<Keys>,
    /// The accounts sends go out as, and windows are reported for.
    accounts: Arc<Registry>,
    /// The deadline of a call that brings none.
    default_timeout: Duration,
}

impl MessengerService {
    pub fn new(
        guard: Arc<Guard>,
        inbox: Arc<Inbox>,
        keys: Arc<Keys>,
        accounts: Arc<Registry>,
        default_timeout: Duration,
    ) -> Self {
        Self {
            guard,
            inbox,
            keys,
            accounts,
            default_timeout,
        }
    }

    /// The service behind its authentication check.
    pub fn into_server(self) -> InterceptedService<MessengerServer<Self>, Authenticate> {
        let authenticate = Authenticate(self.keys.clone());
        InterceptedService::new(
            MessengerServer::new(self).max_decoding_message_size(MAX_REQUEST_BYTES),
            authenticate,
        )
    }

    /// The caller, cleared for `operation` (for `Subscribe`, the stream is
    /// filtered to the key's accounts instead). Borrowed, not cloned: a
    /// clone per call would bounce the key's reference count between the
    /// worker threads.
    fn authorize<'r, T>(
        &self,
        request: &'r Request<T>,
        operation: Operation,
    ) -> Result<&'r Caller, Status> {
        let caller = request
            .extensions()
            .get::<Caller>()
            .ok_or_else(|| Status::internal("the call was not authenticated"))?;
        if let Err(e) = caller.authorize_operation(operation) {
            return Err(refused_call(caller, operation, e));
        }
        Ok(caller)
    }

    /// The caller, cleared for `operation` as the account it names (`given`,
    /// an id or alias; empty for the only one), and that account's path.
    fn authorize_for<'r, T>(
        &self,
        request: &'r Request<T>,
        operation: Operation,
        given: &str,
    ) -> Result<(&'r Caller, Arc<AccountEntry>), Status> {
        let caller = self.authorize(request, operation)?;
        Ok((caller, self.account_for(caller, operation, given)?))
    }

    /// The account `given` names, if `caller` may act for it.
    fn account_for(
        &self,
        caller: &Caller,
        operation: Operation,
        given: &str,
    ) -> Result<Arc<AccountEntry>, Status> {
        let account = self.resolve_for(caller, operation, "account_id", given)?;
        if let Err(e) = caller.authorize(operation, &account.id, account.name.as_deref()) {
            return Err(refused_call(caller, operation, e));
        }
        Ok(account)
    }

    /// Checks one `SendRequest` as `caller` would have it sent, and starts
    /// it on its own task: what `Send` does, and `SendStream` per message.
    /// `default` is the priority of a request that names none.
    fn start_send(
        &self,
        caller: &Caller,
        request: &pb::SendRequest,
        mut budget: Budget,
        default: Priority,
    ) -> Result<impl Future<Output = Result<pb::SendResponse, Status>> + Send + 'static, Status>
    {
        let account = self.account_for(caller, Operation::Send, &request.account_id)?;
        let span = caller.span();
        let key_id = caller.request_scope().to_owned();
        budget.priority = match request.priority() {
            pb::Priority::Bulk => Priority::Bulk,
            pb::Priority::Interactive => Priority::Interactive,
            pb::Priority::Unspecified => default,
        };
        // Answered before anything is awaited, so even a deadline of a
        // nanosecond gets this answer rather than tonic's bare timeout.
        if let Some(e) = self.guard.budget_refusal(&budget) {
            return Err(
                span.in_scope(|| refused(caller, &account, "message", &request.recipient_id, e))
            );
        }
        let (message, request_id) = from_pb::message_from_pb(request).map_err(|v| {
            span.in_scope(|| rejected(caller, &account, "message", &request.recipient_id, v))
        })?;
        let guard = self.guard.clone();
        let cancelled = budget.cancelled.clone();
        let account_id = account.id.clone();
        let sent = finish_detached(
            async move {
                guard
                    .send_message(&*account, message, Origin { key_id, request_id }, budget)
                    .await
            }
            .instrument(span),
            cancelled,
        );
        Ok(async move {
            let sent = sent.await?;
            Ok(pb::SendResponse {
                message_id: sent.message_id.unwrap_or_default(),
                recipient_id: sent.recipient_id,
                graph_calls: sent.graph_calls,
                account_id,
                queued_ms: sent.queued_ms,
            })
        })
    }

    /// The account `given` names. A key limited to some accounts learns
    /// nothing of others: one it may not name is refused as not allowed,
    /// whether or not it is configured.
    fn resolve_for(
        &self,
        caller: &Caller,
        operation: Operation,
        field: &str,
        given: &str,
    ) -> Result<Arc<AccountEntry>, Status> {
        // Checked for shape before any lookup or log line: a huge or odd
        // value is refused here, and not repeated back in full.
        if !given.is_empty()
            && given != crate::model::window::ME
            && !accounts::is_account_id(given)
            && !accounts::is_alias(given)
        {
            return Err(SendError::InvalidRequest(vec![FieldViolation::new(
                field,
                format!(
                    "must be an account's id (digits) or its alias (a letter, then letters, digits, -, _ or .; at most 64 bytes); got {} bytes",
                    given.len()
                ),
            )])
            .into());
        }
        match self.accounts.resolve(given) {
            Ok(account) => Ok(account),
            Err(e @ AccountError::NotFound(_)) => match caller.authorize(operation, given, None) {
                Err(refusal) => Err(refused_call(caller, operation, refusal)),
                Ok(()) => Err(e.into()),
            },
            Err(e) => Err(e.into()),
        }
    }

    /// The caller's deadline, or the default one: no send waits forever.
    fn budget_of<T>(&self, request: &Request<T>) -> Budget {
        Some(deadline_of(request).unwrap_or_else(|| Instant::now() + self.default_timeout)).into()
    }
}

#[tonic::async_trait]
impl pb::messenger_server::Messenger for MessengerService {
    type SubscribeStream = Pin<Box<dyn Stream<Item = Result<pb::InboundEvent, Status>> + Send>>;

    async fn send(
        &self,
        request: Request<pb::SendRequest>,
    ) -> Result<Response<pb::SendResponse>, Status> {
        let job = {
            let caller = self.authorize(&request, Operation::Send)?;
            let budget = self.budget_of(&request);
            self.start_send(caller, request.get_ref(), budget, Priority::Interactive)?
        };
        // Not kept while the send is under way.
        drop(request);
        Ok(Response::new(job.await?))
    }

    type SendStreamStream = Pin<Box<dyn Stream<Item = Result<pb::SendResult, Status>> + Send>>;

    async fn send_stream(
        &self,
        request: Request<Streaming<pb::SendRequest>>,
    ) -> Result<Response<Self::SendStreamStream>, Status> {
        let caller = self.authorize(&request, Operation::Send)?.clone();
        let deadline = deadline_of(&request);
        let inbound = request.into_inner();
        let (results, rx) = tokio::sync::mpsc::channel(STREAM_READ_AHEAD);
        tokio::spawn(self.clone().broadcast(caller, deadline, inbound, results));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn send_action(
        &self,
        request: Request<pb::SendActionRequest>,
    ) -> Result<Response<pb::SendActionResponse>, Status> {
        let (span, account, caller) = {
            let given = &request.get_ref().account_id;
            let (caller, account) = self.authorize_for(&request, Operation::SendAction, given)?;
            (caller.span(), account, caller.clone())
        };
        let budget = self.budget_of(&request);
        if let Some(e) = self.guard.budget_refusal(&budget) {
            return Err(span.in_scope(|| {
                refused(
                    &caller,
                    &account,
                    "action",
                    &request.get_ref().recipient_id,
                    e,
                )
            }));
        }
        let action = from_pb::action_from_pb(request.get_ref()).map_err(|v| {
            span.in_scope(|| {
                rejected(
                    &caller,
                    &account,
                    "action",
                    &request.get_ref().recipient_id,
                    v,
                )
            })
        })?;
        drop(request);
        let guard = self.guard.clone();
        let cancelled = budget.cancelled.clone();
        let account_id = account.id.clone();
        let key_id = caller.request_scope().to_owned();
        let sent = finish_detached(
            async move { guard.send_action(&*account, &action, &key_id, budget).await }
                .instrument(span),
            cancelled,
        )
        .await?;
        Ok(Response::new(pb::SendActionResponse {
            recipient_id: sent.recipient_id,
            graph_calls: sent.graph_calls,
            account_id,
        }))
    }

    async fn get_window(
        &self,
        request: Request<pb::GetWindowRequest>,
    ) -> Result<Response<pb::GetWindowResponse>, Status> {
        let given = &request.get_ref().account_id;
        let (_, account) = self.authorize_for(&request, Operation::GetWindow, given)?;
        let recipient_id = request.into_inner().recipient_id;
        let user = Igsid::parse(&recipient_id).map_err(|e| {
            Status::from(SendError::InvalidRequest(vec![FieldViolation::new(
                "recipient_id",
                e,
            )]))
        })?;
        let window = self.inbox.window(&account.id, user.as_str()).await?;
        Ok(Response::new(to_pb::window_to_pb(
            account.id.clone(),
            recipient_id,
            &window,
        )))
    }

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let caller = self.authorize(&request, Operation::Subscribe)?.clone();
        let pb::SubscribeRequest {
            after,
            account_ids,
            include_outbound,
        } = request.into_inner();
        // Each named account must exist and be the caller's to see.
        let mut only = Vec::with_capacity(account_ids.len());
        for given in account_ids.iter().take(MAX_ACCOUNT_FILTER + 1) {
            if only.len() == MAX_ACCOUNT_FILTER {
                return Err(SendError::InvalidRequest(vec![FieldViolation::new(
                    "account_ids",
                    format!("at most {MAX_ACCOUNT_FILTER} accounts"),
                )])
                .into());
            }
            let account = self.resolve_for(&caller, Operation::Subscribe, "account_ids", given)?;
            if let Err(e) =
                caller.authorize(Operation::Subscribe, &account.id, account.name.as_deref())
            {
                return Err(refused_call(&caller, Operation::Subscribe, e));
            }
            only.push(account.id.clone());
        }
        if after > i64::MAX as u64 {
            return Err(SendError::InvalidRequest(vec![FieldViolation::new(
                "after",
                format!("must be a seq this gateway gave (at most {})", i64::MAX),
            )])
            .into());
        }
        let sees = caller.clone();
        let accounts = self.accounts.clone();
        use crate::model::window::ME;
        let filter = Box::new(move |e: &InboundEvent| {
            if !include_outbound && e.kind.is_outbound() {
                return false;
            }
            // An account configured as `me` answers for whichever id its
            // webhooks carry (one no other account has).
            let as_me = || accounts.by_id(&e.account_id).is_none();
            let named = only.is_empty()
                || only.contains(&e.account_id)
                || (only.iter().any(|a| a == ME) && as_me());
            if !named {
                return false;
            }
            // Run per event and subscriber: no lookup where every account
            // is seen, and the alias borrowed, not copied.
            if matches!(sees, Caller::Open) {
                return true;
            }
            match accounts.by_id(&e.account_id) {
                Some(path) => sees.sees(&e.account_id, path.name.as_deref()),
                None => {
                    sees.sees(&e.account_id, None)
                        || accounts
                            .by_id(ME)
                            .is_some_and(|me| sees.sees(ME, me.name.as_deref()))
                }
            }
        });
        let keys = self.keys.clone();
        let revoked = Box::pin(async move { keys.revoked(&caller).await });
        let events = self.inbox.subscribe(after, filter, revoked).await?;
        let stream = events.map(|item| {
            item.map(|e| to_pb::event_to_pb(Arc::unwrap_or_clone(e)))
                .map_err(Status::from)
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_accounts(
        &self,
        request: Request<pb::ListAccountsRequest>,
    ) -> Result<Response<pb::ListAccountsResponse>, Status> {
        let caller = self.authorize(&request, Operation::Admin)?;
        // A key limited to some accounts lists only those.
        let accounts = self
            .accounts
            .entries()
            .iter()
            .filter(|a| caller.sees(&a.id, a.name.as_deref()))
            .map(|a| to_pb::account_to_pb(a))
            .collect();
        Ok(Response::new(pb::ListAccountsResponse { accounts }))
    }

    async fn get_send(
        &self,
        request: Request<pb::GetSendRequest>,
    ) -> Result<Response<pb::GetSendResponse>, Status> {
        let given = &request.get_ref().account_id;
        let (caller, account) = self.authorize_for(&request, Operation::Send, given)?;
        let lookup = from_pb::send_lookup_from_pb(request.get_ref())
            .map_err(|v| Status::from(SendError::InvalidRequest(v)))?;
        let (request_id, send_id) = match &lookup {
            from_pb::SendLookup::Request(r) => (Some(r), None),
            from_pb::SendLookup::Send(s) => (None, Some(s.as_str())),
        };
        let fate = self
            .guard
            .send_fate(&account.id, caller.request_scope(), request_id, send_id)
            .await?;
        match fate {
            Some(fate) => Ok(Response::new(to_pb::send_fate_to_pb(
                account.id.clone(),
                fate,
            ))),
            None => Err(status::failure(
                Reason::SendNotFound,
                "no send of this account is remembered under that id (request ids are kept 24 hours, send records as long as the events)",
                Default::default(),
                None,
                &[],
            )),
        }
    }

    async fn get_message(
        &self,
        request: Request<pb::GetMessageRequest>,
    ) -> Result<Response<pb::GetMessageResponse>, Status> {
        let given = &request.get_ref().account_id;
        let (_, account) = self.authorize_for(&request, Operation::Subscribe, given)?;
        let mid = from_pb::mid_from_pb(&request.get_ref().message_id)
            .map_err(|v| Status::from(SendError::InvalidRequest(v)))?;
        match self.inbox.store().message(&account.id, &mid).await? {
            Some(record) => Ok(Response::new(to_pb::message_record_to_pb(record))),
            None => Err(status::failure(
                Reason::MessageNotFound,
                "the record holds no message of this account with that id (or it was pruned)",
                Default::default(),
                None,
                &[],
            )),
        }
    }
}

/// The most accounts one `Subscribe` may name.
const MAX_ACCOUNT_FILTER: usize = 1000;

/// Logs (within the caller's share of refusal lines) and converts a call
/// its key does not allow.
fn refused_call(caller: &Caller, operation: Operation, error: AuthError) -> Status {
    refusals::log_for(
        caller.id(),
        || tracing::warn!(key = caller.id(), operation = operation.as_str(), error = %refusals::shown(&error.to_string()), "call refused"),
    );
    error.into()
}

/// Logs and converts a request that failed validation.
fn rejected(
    caller: &Caller,
    account: &AccountEntry,
    kind: &str,
    recipient: &str,
    violations: Vec<FieldViolation>,
) -> Status {
    refused(
        caller,
        account,
        kind,
        recipient,
        SendError::InvalidRequest(violations),
    )
}

/// Counts, logs (within the caller's share) and converts a send refused
/// before it started.
fn refused(
    caller: &Caller,
    account: &AccountEntry,
    kind: &str,
    recipient: &str,
    error: SendError,
) -> Status {
    account.refused_for(caller.id(), kind, recipient, &error);
    error.into()
}

/// Runs a send on its own task, so the handler's future holds only the join
/// handle, not a copy of the whole send: that is memory per call in flight.
/// If the caller hangs up, `cancelled` fires: a send still waiting for its
/// Graph call is dropped unsent; one under way finishes and is logged.
fn finish_detached(
    send: impl Future<Output = Result<Sent, SendError>> + Send + 'static,
    cancelled: CancellationToken,
) -> impl Future<Output = Result<Sent, Status>> {
    let task = tokio::spawn(send);
    async move {
        let _on_hang_up = cancelled.drop_guard();
        match task.await {
            Ok(result) => result.map_err(Status::from),
            Err(_) => Err(Status::internal("the send task failed")),
        }
    }
}
