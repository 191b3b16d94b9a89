//! What SIGHUP does: re-read the keys file, the certificates and the
//! accounts file, each keeping what is in force if it fails to load.

use std::path::PathBuf;
use std::sync::Arc;

use crate::accounts::Registry;
use crate::edge::auth::Keys;
use crate::edge::tls::ReloadableTls;

/// SIGHUP re-reads the keys file, the certificates and the accounts file.
/// A bad file is logged and what is in force stays.
#[cfg(unix)]
pub async fn reload_on_sighup(
    hangup: Option<tokio::signal::unix::Signal>,
    reloader: Arc<Reloader>,
) {
    let Some(mut hangup) = hangup else {
        tracing::warn!("cannot watch SIGHUP: keys, certificates and accounts will not reload");
        return;
    };
    while hangup.recv().await.is_some() {
        reloader.reload();
    }
}

/// What SIGHUP re-reads.
pub struct Reloader {
    pub keys: Arc<Keys>,
    pub certificates: Vec<Arc<ReloadableTls>>,
    pub accounts: Option<AccountsFile>,
}

/// The accounts file SIGHUP re-reads into the registry.
pub struct AccountsFile {
    pub file: PathBuf,
    pub allow_insecure_graph: bool,
    pub registry: Arc<Registry>,
}

impl Reloader {
    /// Reloads keys, certificates and accounts, as SIGHUP does. Each part
    /// that fails to load is logged and keeps what is in force.
    pub fn reload(&self) {
        match self.keys.reload() {
            Ok(n) if !self.keys.is_open() => tracing::info!(keys = n, "API keys reloaded"),
            Ok(_) => {}
            Err(e) => {
                tracing::error!(error = %e, "API keys not reloaded: the previous keys stay in force")
            }
        }
        for tls in &self.certificates {
            match tls.reload() {
                Ok(()) => tracing::info!("TLS certificates reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "TLS certificates not reloaded: the previous ones stay in force")
                }
            }
        }
        if let Some(accounts) = &self.accounts {
            accounts.reload();
        }
    }
}

impl AccountsFile {
    fn reload(&self) {
        let read = crate::accounts::file::read_accounts_file(
            &self.file,
            |name| std::env::var(name).ok(),
            self.allow_insecure_graph,
        );
        match read {
            Ok(specs) => {
                let done = self.registry.reload(specs.accounts);
                tracing::info!(
                    accounts = self.registry.len(),
                    added = ?done.added,
                    removed = ?done.removed,
                    new_token_or_url = ?done.changed,
                    "accounts reloaded"
                );
            }
            Err(e) => {
                tracing::error!(error = %e, "accounts not reloaded: the previous accounts stay in force")
            }
        }
    }
}
