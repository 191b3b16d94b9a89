//! Sending with what the gateway knows: the messaging window is checked
//! before Graph is called, Graph's own window refusals are remembered, and a
//! `request_id` makes a send happen at most once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::clock::{UnixMs, rfc3339};
use crate::conversation::inbox::Inbox;
use crate::graph;
use crate::metrics::Metrics;
use crate::model::error::{FieldViolation, Reason, SendError};
use crate::model::event::{EventKind, InboundEvent, SentMessage};
use crate::model::message::{
    OutgoingAction, OutgoingMessage, Priority, Recipient, RequestId, SenderAction, Sent,
};
use crate::model::window::{Decision, WindowPolicy};
use crate::send::budget::{Budget, CallStart};
use crate::store::{Claim, RecordedOutcome, SendRecord, SendState, Store, StoreError};

/// The account a send goes out as, as the guard sees it. The account
/// entry (`accounts::AccountEntry`) implements it around its deliverer, and
/// records what each result says of its token.
pub trait Outlet: Send + Sync {
    fn id(&self) -> &str;
    /// A full queue refuses at once, before any claim or check.
    fn refuse_if_full(&self) -> Option<SendError>;
    /// Sends `message`, whose Graph body is `body`.
    fn send_message(
        &self,
        message: &OutgoingMessage,
        body: Bytes,
        budget: Budget,
    ) -> impl Future<Output = Result<Sent, SendError>> + Send;
    fn send_action(
        &self,
        action: &OutgoingAction,
        budget: Budget,
    ) -> impl Future<Output = Result<Sent, SendError>> + Send;
    /// Counts and logs a send the guard refused before it started.
    fn refused(&self, kind: &str, recipient: &str, error: &SendError);
}

#[derive(Debug, Clone, Copy)]
pub struct GuardPolicy {
    pub window: WindowPolicy,
    /// Between 24 hours and 7 days, send with the HUMAN_AGENT tag instead of
    /// refusing (needs Meta's App Review of that permission).
    pub auto_human_agent: bool,
    /// Each message and reaction Graph accepted becomes an outbound event.
    pub record_sent: bool,
    /// How long a send whose Graph answer was lost waits for its echo
    /// before it is resolved as not seen.
    pub echo_horizon: std::time::Duration,
}

impl Default for GuardPolicy {
    fn default() -> Self {
        Self {
            window: WindowPolicy::default(),
            auto_human_agent: false,
            record_sent: true,
            echo_horizon: std::time::Duration::from_secs(10 * 60),
        }
    }
}

type Outcome = Option<Result<Sent, SendError>>;

/// Who asked for a send: the caller's API key (empty when keys are off),
/// which also scopes its `request_id`, so two callers never share one.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    pub key_id: String,
    pub request_id: Option<RequestId>,
}

/// The key a `request_id` is claimed and asked about under: the caller,
/// the account and the id. A request_id is printable ASCII, so a control
/// character keeps them apart.
pub fn request_scope(key_id: &str, account: &str, request_id: &RequestId) -> String {
    format!("{key_id}\u{1f}{account}\u{1f}{}", request_id.as_str())
}

/// What became of a send, as `GetSend` answers.
#[derive(Debug, Clone, PartialEq)]
pub enum SendFate {
    /// Graph answered with the message id, or its echo told it.
    Sent {
        sent: Sent,
        confirmed_by_echo: bool,
        /// The record it was settled from, when its answer was lost.
        record: Option<SendRecord>,
    },
    /// Graph may have it; no echo yet (or its call is under way).
    Pending { record: Option<SendRecord> },
    /// No echo came within the horizon.
    NotSeen { record: SendRecord },
    /// Not sent: the reason and Graph's or the gateway's words.
    Failed { record: SendRecord },
    /// The call began and the gateway stopped before its answer: nothing
    /// can tell whether Graph has it.
    Unknown,
}

/// How often a repeat of a pending send looks for its echo.
const ECHO_POLL: std::time::Duration = std::time::Duration::from_millis(50);

impl Origin {
    /// The caller's `request_id`, empty without one.
    fn request_id_text(&self) -> String {
        self.request_id
            .as_ref()
            .map(|r| r.as_str().to_owned())
            .unwrap_or_default()
    }
}

/// How long after its claim a `request_id` on a shared store may still be
/// settling on another replica (a send within any caller's deadline): a
/// repeat in that time waits for the outcome.
const SETTLING: std::time::Duration = std::time::Duration::from_secs(60);
/// How often such a repeat looks again.
const SETTLING_POLL: std::time::Duration = std::time::Duration::from_millis(20);

/// A send under a `request_id` that is under way in this process.
struct Pending {
    fingerprint: String,
    done: watch::Receiver<Outcome>,
}

/// Guards each send with what the gateway knows: the window check,
/// remembered Graph refusals and `request_id`s, in front of the account's
/// [`Outlet`].
pub struct Guard {
    /// Where `request_id` claims and window refusals are kept.
    store: Arc<dyn Store>,
    /// The windows, and the clock.
    inbox: Arc<Inbox>,
    policy: GuardPolicy,
    /// A send with less of its deadline left is not started: the figure
    /// each account's deliverer checks again before its Graph call.
    min_send_budget: std::time::Duration,
    /// Keyed by the caller's scope, the account and the `request_id`.
    pending: Mutex<HashMap<String, Pending>>,
    metrics: Arc<Metrics>,
}

impl From<StoreError> for SendError {
    fn from(e: StoreError) -> Self {
        SendError::Store(e.to_string())
    }
}

impl Guard {
    pub fn new(
        store: Arc<dyn Store>,
        inbox: Arc<Inbox>,
        policy: GuardPolicy,
        min_send_budget: std::time::Duration,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            inbox,
            policy,
            min_send_budget,
            pending: Mutex::new(HashMap::new()),
            metrics,
        })
    }

    /// Resolves, every so often, each pending send past its horizon as not
    /// seen (`GetSend` answers so from the horizon on anyway; this keeps
    /// the count, and the echo matching, to live sends).
    pub async fn settle_expired_periodically(self: Arc<Self>) {
        let every = (self.policy.echo_horizon / 4).clamp(
            std::time::Duration::from_millis(100),
            std::time::Duration::from_secs(30),
        );
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match self.store.expire_sends(self.inbox.now_ms()).await {
                Ok(0) => {}
                Ok(n) => self.metrics.unknown_sends("not_seen", n),
                Err(e) => tracing::warn!(error = %e, "could not resolve expired pending sends"),
            }
        }
    }

    /// Refuses at once, as not sent, a send with too little of its deadline
    /// left to be started at all.
    pub fn budget_refusal(&self, budget: &Budget) -> Option<SendError> {
        budget
            .too_short(self.min_send_budget)
            .map(SendError::not_sent)
    }

    /// Sends `action` as `account`; a reaction Graph accepted is recorded
    /// as an outbound event.
    pub async fn send_action(
        &self,
        account: &impl Outlet,
        action: &OutgoingAction,
        key_id: &str,
        budget: impl Into<Budget>,
    ) -> Result<Sent, SendError> {
        let sent = account.send_action(action, budget.into()).await?;
        if !self.policy.record_sent {
            return Ok(sent);
        }
        let (mid, kind, reaction) = match &action.action {
            SenderAction::React {
                message_id,
                reaction,
            } => (message_id, "react", reaction.as_str()),
            SenderAction::Unreact { message_id } => (message_id, "unreact", ""),
            _ => return Ok(sent),
        };
        let event = InboundEvent::new(
            account.id(),
            account.id(),
            action.recipient.as_str(),
            self.inbox.now_ms(),
            EventKind::SentReaction {
                mid: mid.as_str().to_owned(),
                action: kind.to_owned(),
                reaction: reaction.to_owned(),
                key_id: key_id.to_owned(),
            },
        );
        self.inbox.record(event).await;
        Ok(sent)
    }

    /// Sends `message` as `account`; with a `request_id` at most once per
    /// account and caller. What Graph accepts is recorded as an outbound
    /// event.
    pub async fn send_message(
        &self,
        account: &impl Outlet,
        message: OutgoingMessage,
        origin: Origin,
        budget: impl Into<Budget>,
    ) -> Result<Sent, SendError> {
        let deadline = budget.into();
        if let Some(full) = account.refuse_if_full() {
            return Err(full);
        }
        let Some(request_id) = &origin.request_id else {
            return self
                .send_checked(account, Encoded::new(message), &origin, "", deadline)
                .await;
        };
        let id = request_scope(&origin.key_id, account.id(), request_id);
        let message = Encoded::new(message);
        let fingerprint = hex::encode(Sha256::digest(&message.body));
        let done = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(first) = pending.get(&id) {
                if first.fingerprint != fingerprint {
                    return Err(conflict());
                }
                Err(first.done.clone())
            } else {
                let (tx, rx) = watch::channel(None);
                pending.insert(
                    id.clone(),
                    Pending {
                        fingerprint: fingerprint.clone(),
                        done: rx,
                    },
                );
                Ok(tx)
            }
        };
        match done {
            // A repeat while the first is under way here: wait for it.
            Err(mut first) => {
                // The watch's guard is dropped before anything else is awaited.
                let outcome = match first.wait_for(Option::is_some).await {
                    Ok(outcome) => outcome.clone().expect("waited for Some"),
                    Err(_) => return Err(SendError::MaybeDeliveredBefore(
                        "the first send under this request_id stopped before it finished; it may have been delivered".into(),
                    )),
                };
                match outcome {
                    Err(SendError::Unsettled { send_id, .. }) => {
                        self.await_echo(&send_id, &deadline).await
                    }
                    outcome => outcome,
                }
            }
            Ok(tx) => {
                let _forget = Forget(&self.pending, &id);
                // Boxed: only sends with a request_id pay for its state.
                let result = Box::pin(self.send_once(
                    account,
                    &id,
                    &fingerprint,
                    message,
                    &origin,
                    deadline,
                ))
                .await;
                tx.send_replace(Some(result.clone()));
                result
            }
        }
    }

    /// Claims `id` in the store. On a shared store, a claim another replica
    /// made moments ago is a send under way there: this one waits (within
    /// its own deadline) for that send's outcome, so the callers of both
    /// get one answer from one Graph call.
    async fn claim(
        &self,
        id: &str,
        fingerprint: &str,
        budget: &Budget,
    ) -> Result<Claim, StoreError> {
        let store = &self.store;
        loop {
            let now = self.inbox.now_ms();
            // Alone on its store, a claim whose call never started was left
            // by a gateway that stopped: taken over at once. On a shared
            // store it may wait on another replica: taken over once it has
            // waited longer than a send settles.
            let take_over_before = if store.is_shared() {
                now - SETTLING.as_millis() as i64
            } else {
                now
            };
            let claim = store
                .claim_request(id, fingerprint, now, take_over_before)
                .await?;
            let Claim::Unsettled { claimed_ms } = claim else {
                return Ok(claim);
            };
            let settling =
                store.is_shared() && now.saturating_sub(claimed_ms) < SETTLING.as_millis() as i64;
            let in_time = budget
                .deadline
                .is_none_or(|d| Instant::now() + SETTLING_POLL < d);
            if !settling || !in_time || budget.cancelled.is_cancelled() {
                return Ok(claim);
            }
            tokio::time::sleep(SETTLING_POLL).await;
        }
    }

    /// Claims `id` in the store, sends, and records the outcome there.
    async fn send_once(
        &self,
        account: &impl Outlet,
        id: &str,
        fingerprint: &str,
        message: Encoded,
        origin: &Origin,
        deadline: Budget,
    ) -> Result<Sent, SendError> {
        let store = &self.store;
        let token = match self.claim(id, fingerprint, &deadline).await? {
            Claim::Claimed { token } => token,
            Claim::Conflict => return Err(conflict()),
            Claim::Recorded(RecordedOutcome::Sent(sent)) => return Ok(sent),
            Claim::Recorded(RecordedOutcome::Pending { send_id }) => {
                return self.await_echo(&send_id, &deadline).await;
            }
            Claim::Recorded(RecordedOutcome::MaybeDelivered) => {
                return Err(SendError::MaybeDeliveredBefore(
                    "the first send under this request_id reached Graph with no answer; it may have been delivered, so it is not sent again".into(),
                ));
            }
            Claim::Unsettled { .. } if store.is_shared() => {
                return Err(SendError::MaybeDeliveredBefore(
                    "the first send under this request_id is still under way or was interrupted; it may have been delivered, so it is not sent again".into(),
                ));
            }
            Claim::Unsettled { .. } => {
                return Err(SendError::MaybeDeliveredBefore(
                    "the first send under this request_id was interrupted (the gateway stopped) after its Graph call began; it may have been delivered, so it is not sent again".into(),
                ));
            }
        };
        let mut deadline = deadline;
        deadline.start = Some(Arc::new(RequestStart {
            store: store.clone(),
            id: id.to_owned(),
            token,
            started: AtomicBool::new(false),
        }));
        let result = self
            .send_checked(account, message, origin, id, deadline)
            .await;
        let outcome = match &result {
            Ok(sent) => Some(RecordedOutcome::Sent(sent.clone())),
            Err(SendError::Unsettled { send_id, .. }) => Some(RecordedOutcome::Pending {
                send_id: send_id.clone(),
            }),
            Err(e) if e.reason() == Reason::DeliveryUnknown => {
                Some(RecordedOutcome::MaybeDelivered)
            }
            // Nothing reached the person: the id may be used again.
            Err(_) => None,
        };
        if let Err(e) = store.settle_request(id, token, outcome).await {
            // The claim stays unsettled, so a repeat is refused, never resent.
            tracing::error!(request_id = id, error = %e, "could not record a send's outcome");
        }
        result
    }

    /// The window check, the send, remembering a window refusal, and
    /// recording what became of it: what Graph accepted as an outbound
    /// event; a send whose answer was lost as pending (its echo may tell);
    /// a failure under a `request_id` (`scope`), so a caller can ask.
    async fn send_checked(
        &self,
        account: &impl Outlet,
        message: Encoded,
        origin: &Origin,
        scope: &str,
        deadline: Budget,
    ) -> Result<Sent, SendError> {
        let priority = deadline.priority;
        let (Encoded { message, body }, result) =
            self.window_checked(account, message, deadline).await;
        let error = match result {
            Ok(sent) => {
                self.record_sent(account.id(), &sent, &body, origin, priority)
                    .await;
                return Ok(sent);
            }
            Err(e) => e,
        };
        let now = self.inbox.now_ms();
        let state = match error.reason() {
            Reason::DeliveryUnknown => SendState::Pending,
            _ if scope.is_empty() => return Err(error),
            reason => SendState::Failed {
                reason: reason.as_str().to_owned(),
                message: error.to_string(),
            },
        };
        // Only a send that failed pays for what its record needs.
        let user = match &message.recipient {
            Recipient::User(user) => user.as_str().to_owned(),
            Recipient::Comment(_) => String::new(),
        };
        let record = SendRecord {
            send_id: hex::encode(rand::random::<[u8; 12]>()),
            account: account.id().to_owned(),
            user,
            scope: scope.to_owned(),
            request_id: origin.request_id_text(),
            key_id: origin.key_id.clone(),
            priority,
            content_key: message.content_key(),
            body_json: String::from_utf8(body.to_vec()).unwrap_or_default(),
            created_ms: now,
            expires_ms: now + self.policy.echo_horizon.as_millis() as i64,
            state,
        };
        let send_id = record.send_id.clone();
        let pending = record.state == SendState::Pending;
        if let Err(e) = self.store.keep_send(record).await {
            tracing::error!(error = %e, "could not keep a send's record");
            return Err(error);
        }
        if !pending {
            return Err(error);
        }
        self.metrics.unknown_sends("pending", 1);
        Err(SendError::Unsettled {
            send_id,
            cause: Box::new(error),
        })
    }

    /// Waits, within the caller's deadline, for Instagram's echo to settle
    /// pending send `send_id`, and answers as the first send would have.
    async fn await_echo(&self, send_id: &str, budget: &Budget) -> Result<Sent, SendError> {
        let unsettled = |why: &str| SendError::Unsettled {
            send_id: send_id.to_owned(),
            cause: Box::new(SendError::MaybeDeliveredBefore(format!(
                "the first send under this request_id reached Graph with no answer and {why}; it is not sent again"
            ))),
        };
        loop {
            let Some(record) = self.store.send_by_id(send_id).await? else {
                return Err(unsettled("its record is gone"));
            };
            let now = self.inbox.now_ms();
            match record.state {
                SendState::Sent { mid, .. } => {
                    return Ok(Sent {
                        message_id: Some(mid),
                        recipient_id: record.user,
                        graph_calls: 0,
                        queued_ms: 0,
                    });
                }
                SendState::Pending if now <= record.expires_ms => {}
                _ => return Err(unsettled("no echo of it came in time")),
            }
            let in_time = budget
                .deadline
                .is_none_or(|d| Instant::now() + ECHO_POLL + self.min_send_budget < d);
            if !in_time || budget.cancelled.is_cancelled() {
                return Err(unsettled("no echo of it has come yet"));
            }
            tokio::time::sleep(ECHO_POLL).await;
        }
    }

    /// What became of a send of `account`: by the gateway's `send_id`, or
    /// by the caller's `request_id` within its `key_id`'s scope. `None`:
    /// no such send is remembered.
    pub async fn send_fate(
        &self,
        account: &str,
        key_id: &str,
        request_id: Option<&RequestId>,
        send_id: Option<&str>,
    ) -> Result<Option<SendFate>, StoreError> {
        let now = self.inbox.now_ms();
        if let Some(send_id) = send_id {
            let record = self.store.send_by_id(send_id).await?;
            // Another account's send is not this caller's to see.
            let record = record.filter(|r| r.account == account);
            return Ok(record.map(|r| fate_of(r, now)));
        }
        let Some(request_id) = request_id else {
            return Ok(None);
        };
        let scope = request_scope(key_id, account, request_id);
        match self.store.request_state(&scope, now).await? {
            Some(Claim::Recorded(RecordedOutcome::Sent(sent))) => {
                return Ok(Some(SendFate::Sent {
                    sent,
                    confirmed_by_echo: false,
                    record: None,
                }));
            }
            Some(Claim::Recorded(RecordedOutcome::Pending { send_id })) => {
                let record = self.store.send_by_id(&send_id).await?;
                return Ok(Some(match record {
                    Some(r) => fate_of(r, now),
                    None => SendFate::Unknown,
                }));
            }
            Some(Claim::Recorded(RecordedOutcome::MaybeDelivered)) => {
                return Ok(Some(SendFate::Unknown));
            }
            Some(_) => return Ok(Some(SendFate::Pending { record: None })),
            None => {}
        }
        // Released claims leave their failure in the ledger.
        Ok(self
            .store
            .send_by_request(&scope)
            .await?
            .map(|r| fate_of(r, now)))
    }

    /// Records a sent message in the inbox's stream.
    async fn record_sent(
        &self,
        account: &str,
        sent: &Sent,
        body: &Bytes,
        origin: &Origin,
        priority: Priority,
    ) {
        if !self.policy.record_sent {
            return;
        }
        // Sender actions have no message id; they are recorded apart.
        let Some(mid) = &sent.message_id else {
            return;
        };
        let event = InboundEvent::new(
            account,
            account,
            &sent.recipient_id,
            self.inbox.now_ms(),
            EventKind::Sent(SentMessage {
                mid: mid.clone(),
                request_id: origin.request_id_text(),
                key_id: origin.key_id.clone(),
                priority,
                // The body was encoded from Rust strings: always UTF-8.
                body_json: String::from_utf8(body.to_vec()).unwrap_or_default(),
                send_id: String::new(),
                confirmed_by_echo: false,
            }),
        );
        self.inbox.record(event).await;
    }

    /// The window check, the send, and remembering a window refusal;
    /// answers the body posted (or that would have been) and what Graph
    /// said.
    async fn window_checked(
        &self,
        account: &impl Outlet,
        message: Encoded,
        deadline: Budget,
    ) -> (Encoded, Result<Sent, SendError>) {
        let Encoded {
            mut message,
            mut body,
        } = message;
        let Recipient::User(user) = &message.recipient else {
            // Private replies follow the comment's own 7-day rule, which
            // Graph enforces.
            let sent = account.send_message(&message, body.clone(), deadline).await;
            return (Encoded { message, body }, sent);
        };
        let user = user.as_str().to_owned();
        let now = self.inbox.now_ms();
        let window = match self.inbox.window(account.id(), &user).await {
            Ok(window) => window,
            Err(e) => return (Encoded { message, body }, Err(e.into())),
        };
        match window.decide(
            message.human_agent,
            self.policy.window,
            self.policy.auto_human_agent,
            now,
        ) {
            Decision::Send => {}
            Decision::SendWithHumanAgent => {
                // The tag is part of the body.
                message.human_agent = true;
                body = graph::encode_message(&message);
            }
            Decision::Refuse { closed_at } => {
                let detail = match closed_at {
                    Some(at) => format!(
                        "outside the messaging window: it closed at {} ({} after the person's last message); nothing was sent",
                        rfc3339(at),
                        if message.human_agent { "7 days" } else { "24 hours" }
                    ),
                    None => "outside the messaging window: this person has never written to the account (--window-policy strict); nothing was sent".to_owned(),
                };
                let error = SendError::OutsideWindow {
                    closed_at_ms: closed_at,
                    detail,
                };
                account.refused("message", &user, &error);
                return (Encoded { message, body }, Err(error));
            }
        }
        let result = account.send_message(&message, body.clone(), deadline).await;
        if let Err(e) = &result
            && e.reason() == Reason::OutsideMessagingWindow
            && let Err(e) = self
                .store
                .window_refused(account.id(), &user, now, message.human_agent)
                .await
        {
            tracing::warn!(error = %e, "could not remember a window refusal");
        }
        (Encoded { message, body }, result)
    }
}

/// A message with its Graph body, encoded once per send: the bytes its
/// `request_id` is fingerprinted by are the bytes posted.
struct Encoded {
    message: OutgoingMessage,
    body: Bytes,
}

impl Encoded {
    fn new(message: OutgoingMessage) -> Self {
        let body = graph::encode_message(&message);
        Self { message, body }
    }
}

/// A kept send record as `GetSend` answers it: a pending send past its
/// horizon is not seen, whether or not the sweep has marked it yet.
fn fate_of(record: SendRecord, now: UnixMs) -> SendFate {
    match &record.state {
        SendState::Sent { mid, .. } => SendFate::Sent {
            sent: Sent {
                message_id: Some(mid.clone()),
                recipient_id: record.user.clone(),
                graph_calls: 0,
                queued_ms: 0,
            },
            confirmed_by_echo: true,
            record: Some(record),
        },
        SendState::Pending if now > record.expires_ms => SendFate::NotSeen { record },
        SendState::Pending => SendFate::Pending {
            record: Some(record),
        },
        SendState::NotSeen { .. } => SendFate::NotSeen { record },
        SendState::Failed { .. } => SendFate::Failed { record },
    }
}

fn conflict() -> SendError {
    SendError::InvalidRequest(vec![FieldViolation::new(
        "request_id",
        "was already used within 24 hours for a different message",
    )])
}

/// Removes a finished send from the in-process table, even if its task is
/// cancelled.
struct Forget<'a>(&'a Mutex<HashMap<String, Pending>>, &'a str);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(self.1);
    }
}

/// Marks a send's `request_id` as started, durably, just before its first
/// Graph call: a claim whose call never started is released by a restart
/// (taken over by the retry), so only a call that began can leave a send's
/// fate unknown.
struct RequestStart {
    store: Arc<dyn Store>,
    id: String,
    token: UnixMs,
    started: AtomicBool,
}

impl std::fmt::Debug for RequestStart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestStart")
            .field("token", &self.token)
            .finish()
    }
}

#[async_trait::async_trait]
impl CallStart for RequestStart {
    async fn start(&self) -> Result<(), String> {
        // A retry's later attempts are under the same start.
        if self.started.load(Ordering::SeqCst) {
            return Ok(());
        }
        match self.store.start_request(&self.id, self.token).await {
            Ok(true) => {
                self.started.store(true, Ordering::SeqCst);
                Ok(())
            }
            Ok(false) => Err(
                "another send under this request_id took it over; retry to learn its outcome"
                    .into(),
            ),
            Err(e) => Err(format!(
                "the request_id could not be marked as started: {e}"
            )),
        }
    }
}
