//! The Instagram accounts the gateway sends as. The [`Registry`] maps an
//! account's id or alias to that account's entry (its Graph
//! settings and token, its call limit, its queue), so "which account" is a
//! lookup, never a global.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;

use super::entry::{AccountEntry, TokenState};
use crate::graph::{Account, GraphClient};
use crate::metrics::Metrics;
use crate::send::delivery::{Deliverer, DeliveryPolicy};
use crate::send::pacing::{PaceLimits, Rate};

/// An Instagram account id: digits only.
pub fn is_account_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 32 && s.bytes().all(|b| b.is_ascii_digit())
}

/// An account alias: a letter, then up to 63 letters, digits, `-`, `_` or
/// `.`, so it can never be mistaken for an id, `me` aside.
pub fn is_alias(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && s.len() <= 64
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && s != crate::model::window::ME
}

/// One account as configured: what the registry builds an entry from.
#[derive(Debug, Clone)]
pub struct AccountSpec {
    /// An alias usable wherever the account is named.
    pub name: Option<String>,
    /// The Meta app (an `[[app]]` name) whose webhooks alone may carry this
    /// account's events; `None`: any app's.
    pub app: Option<String>,
    /// This account's own budgets, where they differ from the flags'.
    pub pace: PaceOverrides,
    /// Its Graph settings: base URL, Instagram user id, token.
    pub account: Account,
}

impl AccountSpec {
    pub fn new(account: Account) -> Self {
        Self {
            name: None,
            app: None,
            pace: PaceOverrides::default(),
            account,
        }
    }

    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    pub fn id(&self) -> &str {
        &self.account.account_id
    }
}

/// An account's budgets that differ from the flags'.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PaceOverrides {
    pub standard: Option<Rate>,
    pub media: Option<Rate>,
    pub private_replies: Option<Rate>,
}

impl PaceOverrides {
    fn over(self, limits: PaceLimits) -> PaceLimits {
        PaceLimits {
            standard: self.standard.unwrap_or(limits.standard),
            media: self.media.unwrap_or(limits.media),
            private_replies: self.private_replies.unwrap_or(limits.private_replies),
            per_recipient: limits.per_recipient,
        }
    }
}

/// What a reload changed, for the log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reloaded {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Accounts whose token or Graph URL changed.
    pub changed: Vec<String>,
}

/// Why a request's account could not be found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {
    #[error("account_id is required: this gateway sends as {configured} accounts")]
    Required { configured: usize },
    #[error("no account {0:?} is configured")]
    NotFound(String),
}

/// The configured accounts, each with its own delivery path.
pub struct Registry {
    table: ArcSwap<Table>,
    metrics: Arc<Metrics>,
    graph: GraphClient,
    policy: DeliveryPolicy,
    /// Entries taken out of the table that may still finish sends: a shutdown
    /// drains them too.
    retired: Mutex<Vec<Weak<Deliverer>>>,
}

#[derive(Default)]
struct Table {
    /// In configuration order.
    entries: Vec<Arc<AccountEntry>>,
    /// Id and alias, each to its index in `entries`.
    index: HashMap<String, usize>,
}

impl Table {
    fn new(entries: Vec<Arc<AccountEntry>>) -> Self {
        let mut index = HashMap::new();
        for (i, p) in entries.iter().enumerate() {
            index.insert(p.id.clone(), i);
            if let Some(name) = &p.name {
                index.insert(name.clone(), i);
            }
        }
        Self { entries, index }
    }
}

impl Registry {
    /// One entry per spec; ids and aliases must be distinct (the accounts
    /// file's parser checks).
    pub fn new(graph: GraphClient, policy: DeliveryPolicy, specs: Vec<AccountSpec>) -> Arc<Self> {
        Self::observed(graph, policy, specs, Arc::default())
    }

    /// As `new`, every account counting into `metrics`.
    pub fn observed(
        graph: GraphClient,
        policy: DeliveryPolicy,
        specs: Vec<AccountSpec>,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let registry = Self {
            table: ArcSwap::from_pointee(Table::default()),
            metrics,
            graph,
            policy,
            retired: Mutex::new(Vec::new()),
        };
        let entries = specs.into_iter().map(|s| registry.entry(s)).collect();
        registry.table.store(Arc::new(Table::new(entries)));
        Arc::new(registry)
    }

    fn entry(&self, spec: AccountSpec) -> Arc<AccountEntry> {
        // `--pace off` is off for every account.
        let policy = DeliveryPolicy {
            pace: self.policy.pace.map(|limits| spec.pace.over(limits)),
            ..self.policy.clone()
        };
        Arc::new(AccountEntry {
            id: spec.account.account_id.clone(),
            name: spec.name,
            app: spec.app,
            deliverer: Deliverer::observed(
                self.graph.clone(),
                spec.account.clone(),
                policy,
                self.metrics.clone(),
            ),
            configured: spec.account,
            pace: spec.pace,
            health: Arc::default(),
        })
    }

    /// Puts `specs` in force, as a reload of the accounts file does. An
    /// account kept keeps its queue and sends under way; a changed token or
    /// URL is used from its next Graph call (and clears an `INVALID`
    /// mark); an added one starts; a removed one takes no new sends and
    /// finishes those under way. Lookups never see a half-made table.
    pub fn reload(&self, specs: Vec<AccountSpec>) -> Reloaded {
        let old = self.table.load_full();
        let mut summary = Reloaded::default();
        let mut kept = std::collections::HashSet::new();
        let entries: Vec<Arc<AccountEntry>> = specs
            .into_iter()
            .map(|spec| {
                let Some(previous) = old
                    .index
                    .get(spec.id())
                    .map(|&i| &old.entries[i])
                    .filter(|p| p.id == spec.id())
                else {
                    summary.added.push(spec.id().to_owned());
                    return self.entry(spec);
                };
                kept.insert(previous.id.clone());
                if previous.pace != spec.pace {
                    // New budgets need a new pacer: a new entry, with
                    // the token in use and the token's status carried over;
                    // the old entry finishes what it has under way.
                    summary.changed.push(previous.id.clone());
                    let same_token = previous.configured.token() == spec.account.token();
                    let in_use = previous.deliverer.account();
                    let mut fresh = Arc::into_inner(self.entry(spec)).expect("just made");
                    if same_token && let Ok(account) = fresh.configured.with_token(in_use.token()) {
                        fresh.deliverer.replace_account(account);
                    }
                    fresh.health = previous.health.clone();
                    self.retired
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(Arc::downgrade(&previous.deliverer));
                    return Arc::new(fresh);
                }
                let changed = !previous.configured.same_as(&spec.account);
                if changed {
                    summary.changed.push(previous.id.clone());
                    let same_token = previous.configured.token() == spec.account.token();
                    // A new URL alone keeps the token in use, which may be
                    // a refresh of the configured one; a new token wins.
                    let in_use = match same_token {
                        true => spec
                            .account
                            .with_token(previous.deliverer.account().token())
                            .unwrap_or_else(|_| spec.account.clone()),
                        false => spec.account.clone(),
                    };
                    previous.deliverer.replace_account(in_use);
                    if !same_token {
                        previous.update_status(|s| {
                            s.state = TokenState::Unchecked;
                            s.expires_at_ms = None;
                            s.last_refresh_ms = None;
                        });
                    }
                } else if previous.name == spec.name && previous.app == spec.app {
                    return previous.clone();
                }
                Arc::new(AccountEntry {
                    id: previous.id.clone(),
                    name: spec.name,
                    app: spec.app,
                    deliverer: previous.deliverer.clone(),
                    configured: spec.account,
                    pace: spec.pace,
                    health: previous.health.clone(),
                })
            })
            .collect();
        let mut retired = self.retired.lock().unwrap_or_else(|p| p.into_inner());
        retired.retain(|w| w.strong_count() > 0);
        for gone in old.entries.iter().filter(|p| !kept.contains(&p.id)) {
            summary.removed.push(gone.id.clone());
            retired.push(Arc::downgrade(&gone.deliverer));
        }
        self.table.store(Arc::new(Table::new(entries)));
        summary
    }

    /// The account `given` names (id or alias); an empty `given` names the
    /// only account when there is exactly one.
    pub fn resolve(&self, given: &str) -> Result<Arc<AccountEntry>, AccountError> {
        let table = self.table.load();
        if given.is_empty() {
            return match table.entries.as_slice() {
                [only] => Ok(only.clone()),
                entries => Err(AccountError::Required {
                    configured: entries.len(),
                }),
            };
        }
        table
            .index
            .get(given)
            .map(|&i| table.entries[i].clone())
            .ok_or_else(|| AccountError::NotFound(given.to_owned()))
    }

    /// The entry of the account with this id, if configured.
    pub fn by_id(&self, id: &str) -> Option<Arc<AccountEntry>> {
        let table = self.table.load();
        table
            .index
            .get(id)
            .map(|&i| table.entries[i].clone())
            .filter(|p| p.id == id)
    }

    /// Whether events for the account `id` have a configured account to
    /// answer as (an account configured as `me` may be any).
    pub fn knows(&self, id: &str) -> bool {
        let table = self.table.load();
        table
            .index
            .get(id)
            .is_some_and(|&i| table.entries[i].id == id)
            || table.index.contains_key(crate::model::window::ME)
    }

    /// Whether a webhook that arrived for `app` (`None`: the `/webhook` of
    /// the `INSTAGRAM_APP_SECRET` pair) may carry events for `id`.
    pub fn accepts_from(&self, id: &str, app: Option<&str>) -> bool {
        self.by_id(id)
            .is_none_or(|p| p.app.is_none() || p.app.as_deref() == app)
    }

    /// Every configured account, in configuration order.
    pub fn entries(&self) -> Vec<Arc<AccountEntry>> {
        self.table.load().entries.clone()
    }

    pub fn len(&self) -> usize {
        self.table.load().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The least of its deadline a send must have left to be started.
    pub fn min_send_budget(&self) -> Duration {
        self.policy.min_send_budget
    }

    /// Sends under way or waiting, over every account (retired ones too).
    pub fn in_flight(&self) -> usize {
        self.deliverers().iter().map(|d| d.in_flight()).sum()
    }

    /// From now on no account's sends make further attempts.
    pub fn start_draining(&self) {
        for d in self.deliverers() {
            d.start_draining();
        }
    }

    fn deliverers(&self) -> Vec<Arc<Deliverer>> {
        let mut retired = self.retired.lock().unwrap_or_else(|p| p.into_inner());
        retired.retain(|w| w.strong_count() > 0);
        let table = self.table.load();
        table
            .entries
            .iter()
            .map(|p| p.deliverer.clone())
            .chain(retired.iter().filter_map(Weak::upgrade))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::AccessToken;

    fn spec(id: &str, name: Option<&str>) -> AccountSpec {
        let account = Account::new("http://127.0.0.1:1/v25.0", id, &AccessToken::new("t")).unwrap();
        let spec = AccountSpec::new(account);
        match name {
            Some(n) => spec.named(n),
            None => spec,
        }
    }

    fn registry(specs: Vec<AccountSpec>) -> Arc<Registry> {
        Registry::new(
            GraphClient::new(Duration::from_secs(1)),
            DeliveryPolicy::default(),
            specs,
        )
    }

    #[test]
    fn an_account_is_found_by_id_or_alias() {
        let r = registry(vec![spec("1", Some("shop")), spec("2", None)]);
        assert_eq!(r.resolve("1").unwrap().id, "1");
        assert_eq!(r.resolve("shop").unwrap().id, "1");
        assert_eq!(r.resolve("2").unwrap().id, "2");
        assert_eq!(
            r.resolve("3").unwrap_err(),
            AccountError::NotFound("3".into())
        );
        assert!(r.by_id("shop").is_none());
    }

    #[test]
    fn no_account_named_means_the_only_one() {
        let one = registry(vec![spec("1", None)]);
        assert_eq!(one.resolve("").unwrap().id, "1");
        let two = registry(vec![spec("1", None), spec("2", None)]);
        assert_eq!(
            two.resolve("").unwrap_err(),
            AccountError::Required { configured: 2 }
        );
    }

    #[test]
    fn a_reload_adds_removes_and_rotates_keeping_what_is_unchanged() {
        let r = registry(vec![spec("1", Some("shop")), spec("2", None)]);
        let shop = r.resolve("shop").unwrap();
        shop.token_refused("expired");
        let two = r.resolve("2").unwrap();

        let rotated = AccountSpec::new(
            Account::new("http://127.0.0.1:1/v25.0", "1", &AccessToken::new("new")).unwrap(),
        )
        .named("shop");
        let summary = r.reload(vec![rotated, spec("3", None)]);
        assert_eq!(
            summary,
            Reloaded {
                added: vec!["3".into()],
                removed: vec!["2".into()],
                changed: vec!["1".into()],
            }
        );
        let shop_now = r.resolve("shop").unwrap();
        // The same queue, the new token, the INVALID mark cleared.
        assert!(Arc::ptr_eq(&shop.deliverer, &shop_now.deliverer));
        assert!(shop_now.deliverer.account().same_as(
            &Account::new("http://127.0.0.1:1/v25.0", "1", &AccessToken::new("new")).unwrap()
        ));
        assert_eq!(shop_now.status().state, TokenState::Unchecked);
        assert!(r.resolve("2").is_err());
        assert!(r.resolve("3").is_ok());
        // The removed account's sends under way are still drained.
        assert_eq!(r.deliverers().len(), 3);
        drop(two);
        assert_eq!(r.deliverers().len(), 2);

        // Reloading the same file changes nothing.
        let same = r.resolve("shop").unwrap();
        let again = r.reload(vec![
            AccountSpec::new(
                Account::new("http://127.0.0.1:1/v25.0", "1", &AccessToken::new("new")).unwrap(),
            )
            .named("shop"),
            spec("3", None),
        ]);
        assert_eq!(again, Reloaded::default());
        assert!(Arc::ptr_eq(&same, &r.resolve("shop").unwrap()));
    }

    #[test]
    fn a_reload_with_new_budgets_gives_the_account_a_new_pacer() {
        let paced = |standard: Option<Rate>| {
            let mut spec = spec("1", Some("shop"));
            spec.pace.standard = standard;
            spec
        };
        let r = Registry::new(
            GraphClient::new(Duration::from_secs(1)),
            DeliveryPolicy {
                pace: Some(PaceLimits::default()),
                ..DeliveryPolicy::default()
            },
            vec![paced(None)],
        );
        let before = r.resolve("shop").unwrap();
        before.token_refused("expired");
        let summary = r.reload(vec![paced(Some(Rate::per_second(50)))]);
        assert_eq!(summary.changed, ["1"]);
        let after = r.resolve("shop").unwrap();
        assert!(!Arc::ptr_eq(&before.deliverer, &after.deliverer));
        let limits = after.deliverer.pacer().unwrap().limits();
        assert_eq!(limits.standard, Rate::per_second(50));
        // What is known of the token carries over.
        assert_eq!(after.status().state, TokenState::Invalid);
        // The old entry still drains at shutdown while it has sends.
        assert_eq!(r.deliverers().len(), 2);
    }
}
