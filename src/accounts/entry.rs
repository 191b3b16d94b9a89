//! One account as the gateway holds it: its deliverer (private), alias,
//! app, configured settings and token health. The guard sends through it
//! (it is the guard's `Outlet`), so every result updates the token's
//! health.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::PaceOverrides;
use crate::graph::Account;
use crate::model::error::{Reason, SendError};
use crate::model::message::{OutgoingAction, OutgoingMessage, Priority, Sent};
use crate::send::budget::Budget;
use crate::send::delivery::Deliverer;
use crate::send::guard::Outlet;
use crate::send::pacing::Pacer;

/// What the gateway knows of an account's token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TokenState {
    /// Not checked with Graph yet.
    #[default]
    Unchecked,
    /// Graph accepted it at the last check or send.
    Valid,
    /// Valid, but close to expiry and not yet refreshed.
    Expiring,
    /// Graph refused it (code 190), or it belongs to another account.
    Invalid,
}

/// An account's token and Graph health, for `ListAccounts` and the logs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenStatus {
    pub state: TokenState,
    /// The Instagram username, as Graph last reported it.
    pub username: Option<String>,
    pub expires_at_ms: Option<i64>,
    pub last_refresh_ms: Option<i64>,
    /// The last error Graph gave for the token or a send.
    pub last_error: Option<String>,
}

/// One account: its deliverer (private), alias, app, configured settings and token health.
#[derive(Debug)]
pub struct AccountEntry {
    pub id: String,
    pub name: Option<String>,
    /// The only app whose webhooks may carry this account's events.
    pub app: Option<String>,
    pub(super) deliverer: Arc<Deliverer>,
    /// The settings as configured (the deliverer may hold a refreshed token).
    pub(super) configured: Account,
    /// The budgets of its own it was built with.
    pub(super) pace: PaceOverrides,
    /// Shared with the entry that replaces this one on a reload, so sends
    /// and checks still under way on this one report where it is seen.
    pub(super) health: Arc<Health>,
}

/// An account's token status, and a mirror a send can read without a lock.
#[derive(Debug, Default)]
pub(super) struct Health {
    pub(super) status: Mutex<TokenStatus>,
    /// Mirrors `status.state` being `Valid` or `Expiring`: a send's success
    /// then has nothing to change.
    pub(super) fine: AtomicBool,
}

impl AccountEntry {
    /// The account as sends use it now (its token may have been refreshed).
    pub fn account(&self) -> Arc<Account> {
        self.deliverer.account()
    }

    /// Sends use `account` (a refreshed token, say) from the next Graph call.
    pub fn replace_account(&self, account: Account) {
        self.deliverer.replace_account(account);
    }

    /// The account's pace, when it has one.
    pub fn pacer(&self) -> Option<&Pacer> {
        self.deliverer.pacer()
    }

    /// Sends under way or waiting.
    pub fn in_flight(&self) -> usize {
        self.deliverer.in_flight()
    }

    /// Graph calls under way.
    pub fn calls_under_way(&self) -> usize {
        self.deliverer.calls_under_way()
    }

    /// Sends of `priority` waiting for the pace (`None` when unpaced).
    pub fn waiting(&self, priority: Priority) -> Option<usize> {
        self.pacer().map(|p| p.waiting(priority))
    }

    /// Counts a send refused at the edge for `caller`, logged within that
    /// caller's share of refusal lines.
    pub fn refused_for(&self, caller: &str, kind: &str, recipient: &str, error: &SendError) {
        self.deliverer.refused_for(caller, kind, recipient, error);
    }

    /// What a send's outcome says of the token.
    fn note_token(&self, result: &Result<Sent, SendError>) {
        match result {
            Ok(_) => self.token_worked(),
            Err(e) if e.reason() == Reason::AccessTokenInvalid => {
                let message = e.failure().map(|f| f.message()).unwrap_or_default();
                self.token_refused(&message);
            }
            Err(_) => {}
        }
    }

    /// The account as configured (its token may since have been refreshed).
    pub fn configured(&self) -> &Account {
        &self.configured
    }

    pub fn status(&self) -> TokenStatus {
        self.health
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Changes the status in one step.
    pub fn update_status(&self, f: impl FnOnce(&mut TokenStatus)) {
        let mut status = self.health.status.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut status);
        self.health.fine.store(
            matches!(status.state, TokenState::Valid | TokenState::Expiring),
            Ordering::Relaxed,
        );
    }

    /// Graph refused the token (code 190): sends fail until it is replaced
    /// or a check passes. Logged once per change, never with the token.
    pub fn token_refused(&self, graph_message: &str) {
        self.update_status(|s| {
            if s.state != TokenState::Invalid {
                tracing::error!(account = %self.id, error = graph_message, "Graph refused the account's access token: sends fail until it is replaced (reload) or a check passes");
            }
            s.state = TokenState::Invalid;
            s.last_error = Some(graph_message.to_owned());
        });
    }

    /// A send went through: the token is valid (again). An expiring token
    /// stays `Expiring`: it works, for now.
    pub fn token_worked(&self) {
        if !self.health.fine.load(Ordering::Relaxed) {
            self.update_status(|s| {
                if s.state == TokenState::Invalid {
                    tracing::info!(account = %self.id, "the account's access token works again");
                }
                if s.state != TokenState::Expiring {
                    s.state = TokenState::Valid;
                }
            });
        }
    }

    /// Whether `given` names this account, by id or alias.
    pub fn is_named(&self, given: &str) -> bool {
        self.id == given || self.name.as_deref() == Some(given)
    }
}

/// The guard sends through the entry, so every result updates the token's
/// health.
impl Outlet for AccountEntry {
    fn id(&self) -> &str {
        &self.id
    }

    fn refuse_if_full(&self) -> Option<SendError> {
        self.deliverer.refuse_if_full()
    }

    async fn send_message(
        &self,
        message: &OutgoingMessage,
        body: Bytes,
        budget: Budget,
    ) -> Result<Sent, SendError> {
        let result = self.deliverer.send_message(message, body, budget).await;
        self.note_token(&result);
        result
    }

    async fn send_action(
        &self,
        action: &OutgoingAction,
        budget: Budget,
    ) -> Result<Sent, SendError> {
        let result = self.deliverer.send_action(action, budget).await;
        self.note_token(&result);
        result
    }

    fn refused(&self, kind: &str, recipient: &str, error: &SendError) {
        self.deliverer.refused(kind, recipient, error);
    }
}
