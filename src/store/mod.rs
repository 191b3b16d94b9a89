//! What the gateway remembers, behind the [`Store`] trait and its five
//! roles: inbound events with their sequence numbers ([`EventLog`]), each
//! conversation's window ([`WindowStore`]), `request_id` claims
//! ([`RequestLog`]), refreshed tokens and refresh leases ([`TokenStore`]),
//! and the replicas sharing it ([`ReplicaSet`]). [`SqliteStore`] is the
//! embedded one; [`PgStore`] is shared by replicas.

#[cfg(test)]
pub(crate) mod contract;
mod postgres;
mod record;
mod sqlite;

pub use postgres::PgStore;
pub use sqlite::SqliteStore;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, watch};

use serde::{Deserialize, Serialize};

use crate::model::event::InboundEvent;

use crate::clock::UnixMs;
use crate::model::message::Sent;
use crate::model::window::WindowFacts;

/// An event as kept, with its place in the stream.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub seq: u64,
    pub received_ms: UnixMs,
    pub event: InboundEvent,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ingested {
    pub new_events: usize,
    pub duplicates: usize,
    /// The highest sequence number now stored.
    pub head: u64,
    /// Echoes of messages this gateway sent, joined to their `sent` events
    /// (marked echoed) instead of being stored again.
    pub joined: usize,
    /// Echoes that settled a send whose Graph answer was lost: each is
    /// stored as that send's `sent` event (counted in `new_events` too).
    pub resolved: usize,
}

/// How a send under a `request_id` ended, as remembered for repeats.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecordedOutcome {
    Sent(Sent),
    /// The request reached Graph but its outcome is unknown: it may have been
    /// delivered, so it is never sent again under this id.
    MaybeDelivered,
    /// As `MaybeDelivered`, kept in the [`SendLedger`] as `send_id`: an
    /// echo may still tell that it was delivered.
    Pending {
        send_id: String,
    },
}

/// The `outcome` column of a claim whose Graph call has not started; NULL
/// is a call that may have started (what every claim meant before this
/// state existed, so older rows stay safe).
pub(crate) const QUEUED: &str = "queued";

/// What claiming a `request_id` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The id is ours: mark it started just before the Graph call, then
    /// settle it. `token` names this claim (one id may be claimed again).
    Claimed { token: UnixMs },
    /// The id was used within the last day for different content.
    Conflict,
    /// The first send under this id ended like this.
    Recorded(RecordedOutcome),
    /// A Graph call under this id may have started at or after
    /// `claimed_ms` and has no outcome yet: a send under way (on another
    /// replica), or one whose process stopped mid-call.
    Unsettled { claimed_ms: UnixMs },
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub events: usize,
    pub request_ids: usize,
    pub windows: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the store failed: {0}")]
    Backend(String),
    #[error("the store is closed")]
    Closed,
    #[error("the store cannot be reached")]
    Unreachable,
    #[error("a stored row could not be read: {0}")]
    Corrupt(String),
}

/// How long a delivery's dedup keys are kept at least, even after their
/// events are pruned: Meta redelivers for up to 36 hours, and late.
pub const DEDUP_TTL: Duration = Duration::from_secs(30 * 24 * 60 * 60);

/// How long a `request_id` is remembered (AIP-155 suggests at least a day).
pub const REQUEST_ID_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// The inbound events, numbered in commit order: what `Subscribe` streams.
#[async_trait::async_trait]
pub trait EventLog: Send + Sync + 'static {
    /// Durably records new events (skipping ones already kept, by
    /// [`InboundEvent::dedup_key`]) and the windows they open, in one step.
    /// Event times are taken as given: the core caps them before. In the
    /// same step (see `record`): an echo of a message this gateway sent is
    /// joined to its `sent` event, not stored; an echo matching a pending
    /// send resolves it and is stored as its `sent` event; a read marks the
    /// thread read up to its message; a reaction is attached to its message.
    async fn ingest(
        &self,
        events: Vec<InboundEvent>,
        received_ms: UnixMs,
    ) -> Result<Ingested, StoreError>;

    /// Every event as it is committed, in seq order. A receiver that falls
    /// too far behind gets `Lagged` and reads the rest with `events_after`.
    fn committed(&self) -> broadcast::Receiver<Arc<StoredEvent>>;

    /// Up to `limit` events with sequence numbers above `after`, in order.
    async fn events_after(&self, after: u64, limit: usize) -> Result<Vec<StoredEvent>, StoreError>;

    /// The highest sequence number stored, and the highest pruned (0: none).
    async fn bounds(&self) -> Result<(u64, u64), StoreError>;
}

/// What is known of each conversation's messaging window.
#[async_trait::async_trait]
pub trait WindowStore: Send + Sync + 'static {
    /// What is known of the window between `user` and each account that
    /// has one with them.
    async fn windows(&self, user: &str) -> Result<Vec<(String, WindowFacts)>, StoreError>;

    /// Remembers that Graph refused a send as outside the window.
    async fn window_refused(
        &self,
        account: &str,
        user: &str,
        at: UnixMs,
        human_agent: bool,
    ) -> Result<(), StoreError>;
}

/// `request_id` claims: at most one Graph call per id, its outcome kept
/// for repeats.
#[async_trait::async_trait]
pub trait RequestLog: Send + Sync + 'static {
    /// Durably claims `id` for a send whose content hashes to `fingerprint`.
    /// A claim made at or before `take_over_before` whose Graph call never
    /// started (its process stopped while it waited, or it still waits on
    /// another replica) is taken over: the old holder's
    /// [`RequestLog::start_request`] then fails, so one call is made. A later
    /// one is `Unsettled`, like a call under way.
    async fn claim_request(
        &self,
        id: &str,
        fingerprint: &str,
        now: UnixMs,
        take_over_before: UnixMs,
    ) -> Result<Claim, StoreError>;

    /// Durably marks that the Graph call of claim `token` may start now;
    /// `false`: the claim was taken over, and the call must not be made.
    async fn start_request(&self, id: &str, token: UnixMs) -> Result<bool, StoreError>;

    /// What is remembered of `id`, without claiming it: its outcome, or
    /// `Unsettled` while its send waits or is under way; `None` when
    /// unknown or older than [`REQUEST_ID_TTL`].
    async fn request_state(&self, id: &str, now: UnixMs) -> Result<Option<Claim>, StoreError>;

    /// Records how the send of claim `token` ended, or (`None`) releases
    /// the id because nothing was delivered, so a retry under it may send
    /// again. A claim taken over meanwhile is left alone.
    async fn settle_request(
        &self,
        id: &str,
        token: UnixMs,
        outcome: Option<RecordedOutcome>,
    ) -> Result<(), StoreError>;
}

/// Refreshed tokens, and the lease that lets one replica at a time
/// refresh an account's token.
#[async_trait::async_trait]
pub trait TokenStore: Send + Sync + 'static {
    /// Keeps an account's refreshed token, replacing the one kept before.
    async fn save_token(&self, record: TokenRecord) -> Result<(), StoreError>;

    /// Every refreshed token kept.
    async fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError>;

    /// Changes whenever another process may have kept a refreshed token.
    /// Never, for a store no other process shares.
    fn token_updates(&self) -> watch::Receiver<u64> {
        watch::channel(0).1
    }

    /// Takes the right to refresh `account`'s token until `until`, unless
    /// another replica holds it: one replica at a time refreshes a token.
    async fn lease_refresh(
        &self,
        account: &str,
        now: UnixMs,
        until: UnixMs,
    ) -> Result<bool, StoreError> {
        let _ = (account, now, until);
        Ok(true)
    }

    /// Gives the right to refresh `account`'s token back.
    async fn release_refresh(&self, account: &str) -> Result<(), StoreError> {
        let _ = account;
        Ok(())
    }
}

/// The replicas sharing the store, as each says it is alive.
#[async_trait::async_trait]
pub trait ReplicaSet: Send + Sync + 'static {
    /// Says replica `me` is alive at `now`, and answers how many replicas
    /// are (seen within [`REPLICA_TTL`]; this one included). One for a
    /// store no other process shares.
    async fn replicas_alive(&self, me: &str, now: UnixMs) -> Result<u32, StoreError> {
        let _ = (me, now);
        Ok(1)
    }
}

/// What became of the gateway's sends beyond Graph's answer, and of each
/// message in a thread: sends whose answer was lost (pending until their
/// echo or their horizon) or that failed, so a caller can ask; and each
/// message's echo, reads and reactions, which [`EventLog::ingest`] notes
/// as those events arrive.
#[async_trait::async_trait]
pub trait SendLedger: Send + Sync + 'static {
    /// Keeps (or replaces) a send's record.
    async fn keep_send(&self, record: SendRecord) -> Result<(), StoreError>;

    /// A send by the id the gateway gave it.
    async fn send_by_id(&self, send_id: &str) -> Result<Option<SendRecord>, StoreError>;

    /// The newest send kept under a `request_id` scope (see
    /// [`SendRecord::scope`]).
    async fn send_by_request(&self, scope: &str) -> Result<Option<SendRecord>, StoreError>;

    /// Resolves every pending send whose horizon passed before `now` as
    /// not seen; answers how many.
    async fn expire_sends(&self, now: UnixMs) -> Result<usize, StoreError>;

    /// A message of the thread record by its `mid`: what the person sent,
    /// what this gateway sent, or an echo of what was sent elsewhere, with
    /// what is known of it since.
    async fn message(&self, account: &str, mid: &str) -> Result<Option<MessageRecord>, StoreError>;
}

/// A send whose fate the gateway tracks beyond the call: one whose Graph
/// answer was lost (pending), or one that failed under a `request_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SendRecord {
    pub send_id: String,
    pub account: String,
    /// The person's IGSID; empty for a private reply.
    pub user: String,
    /// The `request_id` claim's key (caller, account, id), empty without
    /// one: a caller asks only within its own scope.
    pub scope: String,
    pub request_id: String,
    pub key_id: String,
    pub priority: crate::model::message::Priority,
    /// What its echo will repeat; `None`: never matched by an echo.
    pub content_key: Option<String>,
    /// The Graph body as posted.
    pub body_json: String,
    pub created_ms: UnixMs,
    /// Past this, a pending send with no echo is resolved as not seen.
    pub expires_ms: UnixMs,
    pub state: SendState,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum SendState {
    /// Graph may have it; no echo yet.
    Pending,
    /// Its echo arrived: Instagram delivered it as `mid`.
    Sent { mid: String, at_ms: UnixMs },
    /// No echo came within the horizon: most likely never delivered.
    NotSeen { at_ms: UnixMs },
    /// It was not sent, for this reason (an ErrorInfo reason).
    Failed { reason: String, message: String },
}

impl SendState {
    /// The column value queries select on.
    pub fn name(&self) -> &'static str {
        match self {
            SendState::Pending => "pending",
            SendState::Sent { .. } => "sent",
            SendState::NotSeen { .. } => "not_seen",
            SendState::Failed { .. } => "failed",
        }
    }
}

/// A message as the record holds it, and what happened to it since.
#[derive(Debug, Clone, PartialEq)]
pub struct MessageRecord {
    /// The `message`, `sent` or `echo` event.
    pub event: StoredEvent,
    /// When its echo arrived (an outbound message).
    pub echoed_ms: Option<UnixMs>,
    /// When the person read it or a later message (an outbound message).
    pub read_ms: Option<UnixMs>,
    /// Each side's reaction to it, as it stands.
    pub reactions: Vec<ReactionMark>,
}

/// One party's reaction to a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReactionMark {
    /// Who reacted: the person's IGSID or the account's id.
    pub by: String,
    pub reaction: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub emoji: String,
}

/// The whole store, in six roles (each with its part of the contract
/// suite, both backends implementing all), plus what spans them: pruning,
/// and whether it is shared and reachable. Consumers hold `Arc<dyn Store>`.
#[async_trait::async_trait]
pub trait Store:
    EventLog + WindowStore + RequestLog + TokenStore + ReplicaSet + SendLedger
{
    /// Drops events received before `events_before`, request ids claimed
    /// before `now - REQUEST_ID_TTL`, and windows closed for good.
    async fn prune(&self, now: UnixMs, events_before: UnixMs) -> Result<Pruned, StoreError>;

    /// Whether other processes (replicas) share this store: then an
    /// unsettled `request_id` may be a send under way elsewhere, not one a
    /// stopped process left behind.
    fn is_shared(&self) -> bool {
        false
    }

    /// Whether the store answers, now and as it changes. An embedded store
    /// always does.
    fn reachable(&self) -> watch::Receiver<bool> {
        watch::channel(true).1
    }
}

/// A claim row as [`RequestLog::request_state`] answers it. (Both
/// backends.)
fn request_state_of(
    id: &str,
    claimed_ms: UnixMs,
    outcome: Option<String>,
    now: UnixMs,
) -> Result<Option<Claim>, StoreError> {
    if claimed_ms < now - REQUEST_ID_TTL.as_millis() as i64 {
        return Ok(None);
    }
    Ok(Some(match outcome {
        None => Claim::Unsettled { claimed_ms },
        Some(q) if q == QUEUED => Claim::Unsettled { claimed_ms },
        Some(outcome) => Claim::Recorded(
            serde_json::from_str(&outcome)
                .map_err(|e| StoreError::Corrupt(format!("request id {id}: {e}")))?,
        ),
    }))
}

/// When an event opened its window: a clock ahead of ours cannot stretch
/// a window. (Both backends.)
fn opened_at(event: &InboundEvent, received_ms: UnixMs) -> UnixMs {
    event.timestamp_ms.min(received_ms)
}

/// The windows column a refusal of this kind is remembered in.
fn refusal_column(human_agent: bool) -> &'static str {
    if human_agent {
        "human_agent_refused_ms"
    } else {
        "standard_refused_ms"
    }
}

/// A replica not heard from for this long is taken for gone: its share of
/// each account's budget goes to the others.
pub const REPLICA_TTL: Duration = Duration::from_secs(3);

/// A refreshed token as kept: sealed by the core (encrypted when a store
/// key is set), and tied to the configured token it was refreshed from, so
/// a new configured token wins.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub account: String,
    /// Hex SHA-256 of the configured token.
    pub configured_sha256: String,
    pub sealed_token: String,
    pub expires_ms: Option<UnixMs>,
    pub refreshed_ms: UnixMs,
}

/// Without the sealed token, which is the token itself when no store key
/// is set.
impl std::fmt::Debug for TokenRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenRecord")
            .field("account", &self.account)
            .field("sealed_token", &"<redacted>")
            .field("expires_ms", &self.expires_ms)
            .field("refreshed_ms", &self.refreshed_ms)
            .finish()
    }
}
