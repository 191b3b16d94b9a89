//! From the store URL to a connection: which TLS, if any.
//!
//! `sslmode=require` (and libpq's `verify-ca` / `verify-full`, which mean
//! the same here) encrypts and checks the server's certificate and name
//! against `sslrootcert=FILE` (PEM), or the system's roots without it:
//! unlike libpq's `require`, an unverified server is never trusted, since
//! the connection carries tokens. No `sslmode`, `prefer` or `disable`
//! connect without TLS, for a database on the same host or network.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::store::StoreError;

pub(super) type Tls = MakeRustlsConnect;

/// The store URL, understood.
pub(super) struct Target {
    pub config: tokio_postgres::Config,
    pub tls: Tls,
}

/// Reads `url`. Errors never repeat the URL: it may hold a password.
pub(super) fn target(url: &str) -> Result<Target, StoreError> {
    let bad = |what: String| StoreError::Backend(format!("the store URL: {what}"));
    let mut parsed = url::Url::parse(url).map_err(|e| bad(e.to_string()))?;
    let mut root_file = None;
    let kept: Vec<(String, String)> = parsed
        .query_pairs()
        .filter_map(|(key, value)| match (&*key, &*value) {
            ("sslrootcert", file) => {
                root_file = Some(PathBuf::from(file));
                None
            }
            ("sslmode", "verify-ca" | "verify-full") => {
                Some((key.into_owned(), "require".to_owned()))
            }
            ("sslmode", "prefer") => Some((key.into_owned(), "disable".to_owned())),
            _ => Some((key.into_owned(), value.into_owned())),
        })
        .collect();
    if kept.is_empty() {
        parsed.set_query(None);
    } else {
        parsed.query_pairs_mut().clear().extend_pairs(kept);
    }
    let mut config =
        tokio_postgres::Config::from_str(parsed.as_str()).map_err(|e| bad(e.to_string()))?;
    // Decided on what the parser kept (the last of repeated keys).
    if config.get_ssl_mode() != SslMode::Require {
        config.ssl_mode(SslMode::Disable);
    }
    // A database behind a silent network drop sends no error, only
    // nothing: unanswered bytes fail a connection within seconds, not the
    // kernel's quarter of an hour.
    config
        .keepalives(true)
        .keepalives_idle(std::time::Duration::from_secs(5))
        .keepalives_interval(std::time::Duration::from_secs(2))
        .keepalives_retries(3)
        .tcp_user_timeout(std::time::Duration::from_secs(10));
    let tls = MakeRustlsConnect::new(client_config(root_file)?);
    Ok(Target { config, tls })
}

fn client_config(root_file: Option<PathBuf>) -> Result<rustls::ClientConfig, StoreError> {
    let mut roots = rustls::RootCertStore::empty();
    match root_file {
        Some(file) => {
            let certs = crate::tls::certs(&file).map_err(|e| StoreError::Backend(e.to_string()))?;
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| StoreError::Backend(format!("{}: {e}", file.display())))?;
            }
        }
        None => {
            // Unreadable system certificates only narrow what is trusted.
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::Backend(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sslmode_require_or_verify_asks_for_tls() {
        let mode = |url: &str| target(url).unwrap().config.get_ssl_mode();
        assert_eq!(mode("postgres://u@h/db"), SslMode::Disable);
        assert_eq!(mode("postgres://u@h/db?sslmode=prefer"), SslMode::Disable);
        assert_eq!(mode("postgres://u@h/db?sslmode=require"), SslMode::Require);
        assert_eq!(
            mode("postgres://u@h/db?sslmode=verify-full"),
            SslMode::Require
        );
        let t = target("postgres://u:pw@h:5/db?sslmode=verify-ca&application_name=gw").unwrap();
        assert_eq!(t.config.get_application_name(), Some("gw"));
        assert_eq!(t.config.get_password(), Some(&b"pw"[..]));
    }

    #[test]
    fn a_bad_url_or_root_file_is_named_without_the_password() {
        let e = target("postgres://u:secret@h/db?sslmode=sometimes")
            .err()
            .unwrap();
        assert!(!e.to_string().contains("secret"), "{e}");
        let e = target("postgres://u:secret@h/db?sslmode=require&sslrootcert=/nonexistent.pem")
            .err()
            .unwrap();
        assert!(e.to_string().contains("/nonexistent.pem"), "{e}");
        assert!(!e.to_string().contains("secret"), "{e}");
    }
}
