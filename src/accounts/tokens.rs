//! Keeping every account's token alive. At start and then every hour each
//! token is checked with Graph (`/me`): it must belong to its account.
//! Instagram-Login tokens last 60 days; one at least a day old and within
//! `refresh_before` of expiry (or of unknown age at start) is refreshed,
//! and the new token is kept in the store, where it wins over the
//! configured one until the configured one changes. One account's failure
//! never holds up another's.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio::time::Instant;

pub use super::seal::Sealer;
use crate::accounts::{AccountEntry, Registry, TokenState};
use crate::clock::Clock;
use crate::clock::UnixMs;
use crate::graph::{self, AccessToken, GraphClient};
use crate::model::error::{Failure, Reason};
use crate::model::window::ME;
use crate::store::{Store, TokenRecord};

/// How tokens are looked after.
#[derive(Debug, Clone)]
pub struct TokenPolicy {
    pub check_every: Duration,
    /// Refresh a token that expires within this.
    pub refresh_before: Duration,
    /// Graph refuses to refresh a token younger than a day.
    pub min_age: Duration,
    /// The first wait after a failed check or refresh; it doubles up to
    /// `check_every`.
    pub first_retry: Duration,
    /// The most one Graph call may take.
    pub call_timeout: Duration,
    /// Accounts tended at once.
    pub concurrency: usize,
}

impl TokenPolicy {
    pub const DEFAULT_REFRESH_BEFORE: Duration = Duration::from_secs(10 * 24 * 60 * 60);
    /// What Graph gives a refreshed Instagram-Login token when it says
    /// nothing.
    const DEFAULT_LIFETIME: Duration = Duration::from_secs(60 * 24 * 60 * 60);
}

impl Default for TokenPolicy {
    fn default() -> Self {
        Self {
            check_every: Duration::from_secs(60 * 60),
            refresh_before: Self::DEFAULT_REFRESH_BEFORE,
            min_age: Duration::from_secs(24 * 60 * 60),
            first_retry: Duration::from_secs(60),
            call_timeout: Duration::from_secs(10),
            concurrency: 8,
        }
    }
}

/// What the keeper knows of one account's token.
#[derive(Debug, Clone)]
struct Tracked {
    /// Of the configured token this is about: a new one starts over.
    configured_sha256: String,
    /// When the token in use was made by a refresh; `None`: age unknown.
    refreshed_ms: Option<UnixMs>,
    expires_ms: Option<UnixMs>,
    /// Scheduling runs on the monotonic clock; ages and expiry on the
    /// wall clock.
    next_due: Instant,
    failures: u32,
}

/// Looks after every account's token (see the module docs).
pub struct TokenKeeper {
    accounts: Arc<Registry>,
    graph: GraphClient,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    policy: TokenPolicy,
    sealer: Sealer,
    tracked: tokio::sync::Mutex<HashMap<String, Tracked>>,
    /// One round at a time: two would tend (and refresh) an account twice.
    round: tokio::sync::Mutex<()>,
}

fn sha256_hex(token: &AccessToken) -> String {
    hex::encode(Sha256::digest(token.expose_secret().as_bytes()))
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl TokenKeeper {
    pub fn new(
        accounts: Arc<Registry>,
        graph: GraphClient,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        policy: TokenPolicy,
        sealer: Sealer,
    ) -> Arc<Self> {
        Arc::new(Self {
            accounts,
            graph,
            store,
            clock,
            policy,
            sealer,
            tracked: tokio::sync::Mutex::new(HashMap::new()),
            round: tokio::sync::Mutex::new(()),
        })
    }

    /// Puts the refreshed tokens kept in the store back in use, where they
    /// were refreshed from the token configured now. Run before serving.
    pub async fn restore(&self) {
        self.adopt_stored(None).await;
    }

    /// Puts in use each refreshed token kept in the store (of `only`, or
    /// of every account) that was refreshed from the token configured now
    /// and is newer than the one in use: at start, and when another
    /// replica has refreshed one.
    async fn adopt_stored(&self, only: Option<&str>) {
        let records = match self.store.tokens().await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the refreshed tokens: the ones in use stay");
                return;
            }
        };
        let mut tracked = self.tracked.lock().await;
        for record in records {
            if only.is_some_and(|a| a != record.account) {
                continue;
            }
            let Some(path) = self.accounts.by_id(&record.account) else {
                continue;
            };
            let configured_sha256 = sha256_hex(path.configured().token());
            if record.configured_sha256 != configured_sha256 {
                continue;
            }
            let known = tracked
                .get(&path.id)
                .filter(|t| t.configured_sha256 == configured_sha256);
            if known.is_some_and(|t| t.refreshed_ms >= Some(record.refreshed_ms)) {
                continue;
            }
            let next_due = known.map_or_else(Instant::now, |t| t.next_due);
            let Some(token) = self.sealer.open(&record.account, &record.sealed_token) else {
                tracing::warn!(account = %record.account, "the refreshed token kept for this account cannot be opened (was MESSENGER_GATEWAY_STORE_KEY changed?): the configured one is used");
                continue;
            };
            if !self.use_token(&path, &AccessToken::new(token)) {
                continue;
            }
            path.update_status(|s| {
                s.expires_at_ms = record.expires_ms;
                s.last_refresh_ms = Some(record.refreshed_ms);
            });
            tracked.insert(
                path.id.clone(),
                Tracked {
                    configured_sha256,
                    refreshed_ms: Some(record.refreshed_ms),
                    expires_ms: record.expires_ms,
                    next_due,
                    failures: 0,
                },
            );
        }
    }

    /// Puts tokens other replicas refresh in use here too, as they are
    /// kept; runs for as long as the gateway does.
    pub async fn follow_store(self: Arc<Self>) {
        let mut updates = self.store.token_updates();
        while updates.changed().await.is_ok() {
            self.adopt_stored(None).await;
        }
    }

    /// Puts `token` in use for `path`'s sends.
    fn use_token(&self, path: &AccountEntry, token: &AccessToken) -> bool {
        match path.configured().with_token(token) {
            Ok(account) => {
                path.replace_account(account);
                true
            }
            Err(e) => {
                tracing::error!(account = %path.id, error = %e, "a refreshed token cannot be used");
                false
            }
        }
    }

    /// Tends every account that is due, a few at a time.
    pub async fn run_once(&self) {
        self.tend_accounts(false).await;
    }

    /// Tends every account now, due or not.
    pub async fn check_all(&self) {
        self.tend_accounts(true).await;
    }

    async fn tend_accounts(&self, all: bool) {
        let _round = self.round.lock().await;
        let now = Instant::now();
        let paths = self.accounts.entries();
        let due: Vec<(Arc<AccountEntry>, Tracked)> = {
            let mut tracked = self.tracked.lock().await;
            tracked.retain(|id, _| paths.iter().any(|p| &p.id == id));
            paths
                .into_iter()
                .filter_map(|path| {
                    let sha = sha256_hex(path.configured().token());
                    let t = tracked.entry(path.id.clone()).or_insert_with(|| Tracked {
                        configured_sha256: sha.clone(),
                        refreshed_ms: None,
                        expires_ms: None,
                        next_due: now,
                        failures: 0,
                    });
                    if t.configured_sha256 != sha {
                        // Reloaded with a new token: it is in use already.
                        *t = Tracked {
                            configured_sha256: sha,
                            refreshed_ms: None,
                            expires_ms: None,
                            next_due: now,
                            failures: 0,
                        };
                    }
                    (all || t.next_due <= now).then(|| (path, t.clone()))
                })
                .collect()
        };
        let results: Vec<(String, Tracked)> = futures_util::stream::iter(due)
            .map(|(path, t)| async move {
                let id = path.id.clone();
                (id, self.tend(&path, t).await)
            })
            .buffer_unordered(self.policy.concurrency.max(1))
            .collect()
            .await;
        let mut tracked = self.tracked.lock().await;
        for (id, t) in results {
            // Unless a reload changed the account meanwhile; and a token
            // adopted meanwhile from another replica stays in the record.
            let Some(old) = tracked.get_mut(&id) else {
                continue;
            };
            if old.configured_sha256 != t.configured_sha256 {
                continue;
            }
            if old.refreshed_ms > t.refreshed_ms {
                old.next_due = t.next_due;
            } else {
                *old = t;
            }
        }
    }

    /// Runs for as long as the gateway does.
    pub async fn run(self: Arc<Self>) {
        loop {
            self.run_once().await;
            let next = {
                let tracked = self.tracked.lock().await;
                tracked.values().map(|t| t.next_due).min()
            };
            let wait = next
                .map(|due| due.saturating_duration_since(Instant::now()))
                .unwrap_or(self.policy.check_every);
            // Woken at least each minute: accounts added by a reload are
            // checked soon after.
            tokio::time::sleep(wait.clamp(Duration::from_millis(100), Duration::from_secs(60)))
                .await;
        }
    }

    fn retry_later(&self, t: &mut Tracked) {
        t.failures = t.failures.saturating_add(1);
        let wait = self
            .policy
            .first_retry
            .saturating_mul(1 << (t.failures - 1).min(16))
            .min(self.policy.check_every);
        t.next_due = Instant::now() + wait;
    }

    /// Checks one account's token, and refreshes it when it is time.
    async fn tend(&self, path: &AccountEntry, mut t: Tracked) -> Tracked {
        let now = self.clock.now_ms();
        let account = path.account();
        match self
            .graph
            .whose_token(&account, self.policy.call_timeout)
            .await
        {
            Ok(me) if path.id != ME && me.user_id != path.id => {
                path.token_refused(&format!(
                    "the token belongs to Instagram account {}, not {}",
                    me.user_id, path.id
                ));
                t.next_due = Instant::now() + self.policy.check_every;
                return t;
            }
            Ok(me) => {
                path.update_status(|s| {
                    if s.state == TokenState::Invalid {
                        tracing::info!(account = %path.id, "the account's token works again");
                    }
                    // An expiring token stays so until it is refreshed.
                    if s.state != TokenState::Expiring {
                        s.state = TokenState::Valid;
                    }
                    s.username = me.username;
                });
            }
            Err(e) if e.failure.reason() == Reason::AccessTokenInvalid => {
                path.token_refused(&e.failure.message());
                t.next_due = Instant::now() + self.policy.check_every;
                return t;
            }
            Err(e) => {
                let message = e.failure.message();
                tracing::warn!(account = %path.id, error = %message, "could not check the account's token; trying again later");
                path.update_status(|s| s.last_error = Some(message));
                self.retry_later(&mut t);
                return t;
            }
        }
        if !graph::is_refreshable(&account) || !self.refresh_due(&t, now) {
            return self.not_due(path, t);
        }
        if !self.store.is_shared() {
            return self.refresh(path, t, now).await;
        }
        // Replicas share the token: one refreshes it at a time, under a
        // lease that outlasts the calls a refresh makes.
        let until = now.saturating_add(ms(self.policy.call_timeout).saturating_mul(3));
        match self.store.lease_refresh(&path.id, now, until).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::debug!(account = %path.id, "another replica is refreshing the account's token");
                t.next_due = Instant::now() + self.policy.first_retry.min(self.policy.check_every);
                return t;
            }
            Err(e) => {
                tracing::warn!(account = %path.id, error = %e, "could not take the token-refresh lease; trying again later");
                self.retry_later(&mut t);
                return t;
            }
        }
        // Another replica may have refreshed it just before.
        self.adopt_stored(Some(&path.id)).await;
        if let Some(newer) = self.tracked.lock().await.get(&path.id).filter(|n| {
            n.configured_sha256 == t.configured_sha256 && n.refreshed_ms > t.refreshed_ms
        }) {
            t.refreshed_ms = newer.refreshed_ms;
            t.expires_ms = newer.expires_ms;
        }
        let t = if self.refresh_due(&t, now) {
            self.refresh(path, t, now).await
        } else {
            self.not_due(path, t)
        };
        if let Err(e) = self.store.release_refresh(&path.id).await {
            tracing::warn!(account = %path.id, error = %e, "could not give the token-refresh lease back; it lapses by itself");
        }
        t
    }

    /// The token works and needs no refresh yet.
    fn not_due(&self, path: &AccountEntry, mut t: Tracked) -> Tracked {
        path.update_status(|s| {
            if s.state == TokenState::Expiring {
                s.state = TokenState::Valid;
            }
        });
        t.failures = 0;
        t.next_due = Instant::now() + self.policy.check_every;
        t
    }

    /// Refreshes the token now, and keeps the new one.
    async fn refresh(&self, path: &AccountEntry, mut t: Tracked, now: UnixMs) -> Tracked {
        let account = path.account();
        match self.graph.refresh(&account, self.policy.call_timeout).await {
            Ok(refreshed) => {
                let lifetime = refreshed
                    .expires_in
                    .map(Duration::from_secs)
                    .unwrap_or(TokenPolicy::DEFAULT_LIFETIME);
                let expires_ms = now.saturating_add(ms(lifetime));
                let token = AccessToken::new(refreshed.access_token);
                // A reload may have put a new token (or URL) in force while
                // this refresh was under way: the refresh of the old one is
                // then dropped, never put back in use nor kept.
                let current = self
                    .accounts
                    .by_id(&path.id)
                    .filter(|p| sha256_hex(p.configured().token()) == t.configured_sha256);
                let Some(current) = current else {
                    tracing::info!(account = %path.id, "the account was reloaded during a token refresh: the refresh is dropped");
                    return t;
                };
                let in_use = match current.configured().with_token(&token) {
                    Ok(account) => account,
                    Err(e) => {
                        tracing::error!(account = %path.id, error = %e, "Graph gave a refreshed token that cannot be used");
                        self.retry_later(&mut t);
                        return t;
                    }
                };
                let record = TokenRecord {
                    account: path.id.clone(),
                    configured_sha256: t.configured_sha256.clone(),
                    sealed_token: self.sealer.seal(&path.id, token.expose_secret()),
                    expires_ms: Some(expires_ms),
                    refreshed_ms: now,
                };
                // Kept before use: a token in use that a restart forgets
                // would be refreshed again from the configured one, which
                // Graph may have retired.
                if let Err(e) = self.store.save_token(record).await {
                    tracing::error!(account = %path.id, error = %e, "could not keep a refreshed token; trying again later");
                    self.retry_later(&mut t);
                    return t;
                }
                current.replace_account(in_use);
                // A newer one kept by another replica (our lease lapsed
                // while we refreshed) wins over ours.
                if self.store.is_shared() {
                    self.adopt_stored(Some(&path.id)).await;
                }
                tracing::info!(account = %path.id, expires_in_days = lifetime.as_secs() / 86_400, "refreshed the account's token");
                current.update_status(|s| {
                    s.state = TokenState::Valid;
                    s.expires_at_ms = Some(expires_ms);
                    s.last_refresh_ms = Some(now);
                });
                t.refreshed_ms = Some(now);
                t.expires_ms = Some(expires_ms);
                t.failures = 0;
                t.next_due = Instant::now() + self.policy.check_every;
            }
            Err(e) => {
                let message = e.failure.message();
                tracing::warn!(account = %path.id, error = %message, "could not refresh the account's token; trying again later");
                let expiring = t
                    .expires_ms
                    .is_some_and(|x| x - now <= ms(self.policy.refresh_before));
                path.update_status(|s| {
                    s.last_error = Some(message);
                    if expiring && s.state == TokenState::Valid {
                        s.state = TokenState::Expiring;
                    }
                });
                if let Failure::Graph { .. } = e.failure
                    && e.failure.reason() == Reason::AccessTokenInvalid
                {
                    path.token_refused(&e.failure.message());
                }
                self.retry_later(&mut t);
            }
        }
        t
    }

    /// A token of unknown age is refreshed at once; a known one when it is
    /// old enough and close enough to expiry.
    fn refresh_due(&self, t: &Tracked, now: UnixMs) -> bool {
        match (t.refreshed_ms, t.expires_ms) {
            (Some(made), Some(expires)) => {
                now - made >= ms(self.policy.min_age)
                    && expires - now <= ms(self.policy.refresh_before)
            }
            _ => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_tokens_open_only_with_their_key() {
        let sealer = Sealer::new(Some("a long store key"));
        let sealed = sealer.seal("1", "IGAAtoken");
        assert!(sealed.starts_with("v1:") && !sealed.contains("IGAAtoken"));
        assert_eq!(sealer.open("1", &sealed).as_deref(), Some("IGAAtoken"));
        assert_eq!(Sealer::new(Some("another key")).open("1", &sealed), None);
        assert_eq!(Sealer::new(None).open("1", &sealed), None);
        // Bound to its account: copied to another row, it does not open.
        assert_eq!(sealer.open("2", &sealed), None);
        // Two seals of one token differ (a fresh nonce each).
        assert_ne!(sealer.seal("1", "IGAAtoken"), sealed);

        let plain = Sealer::new(None).seal("1", "IGAAtoken");
        assert_eq!(
            Sealer::new(None).open("1", &plain).as_deref(),
            Some("IGAAtoken")
        );
        // With a key set, a token kept in clear is not taken.
        assert_eq!(sealer.open("1", &plain), None);
        assert_eq!(Sealer::new(None).open("1", "v1:not base64!"), None);
    }
}
