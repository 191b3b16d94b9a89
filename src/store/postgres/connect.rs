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

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
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
    // Our keys are taken out or rewritten; the others pass as written,
    // encoding and all.
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut root_file = None;
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = url::form_urlencoded::parse(pair.as_bytes())
            .next()
            .unwrap_or_default();
        match (&*key, &*value) {
            ("sslrootcert", file) => root_file = Some(PathBuf::from(file)),
            ("sslmode", "verify-ca" | "verify-full") => kept.push("sslmode=require".to_owned()),
            ("sslmode", "prefer") => kept.push("sslmode=disable".to_owned()),
            _ => kept.push(pair.to_owned()),
        }
    }
    let url = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    let mut config = tokio_postgres::Config::from_str(&url).map_err(|e| bad(e.to_string()))?;
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
    // And the server's side: a replica cut off mid-transaction must not
    // hold the event counter's lock for the kernel's two hours.
    let server_side = "-c idle_in_transaction_session_timeout=15s -c tcp_keepalives_idle=5 \
                       -c tcp_keepalives_interval=2 -c tcp_keepalives_count=3 -c tcp_user_timeout=10000";
    let options = match config.get_options() {
        Some(given) => format!("{given} {server_side}"),
        None => server_side.to_owned(),
    };
    config.options(&options);
    let tls = MakeRustlsConnect::new(client_config(root_file)?);
    Ok(Target { config, tls })
}

fn client_config(root_file: Option<PathBuf>) -> Result<rustls::ClientConfig, StoreError> {
    let mut roots = rustls::RootCertStore::empty();
    match root_file {
        Some(file) => {
            let failed =
                |e: &dyn std::fmt::Display| StoreError::Backend(format!("{}: {e}", file.display()));
            let certs = CertificateDer::pem_file_iter(&file).map_err(|e| failed(&e))?;
            for cert in certs {
                let cert = cert.map_err(|e| failed(&e))?;
                roots.add(cert).map_err(|e| failed(&e))?;
            }
            if roots.is_empty() {
                return Err(failed(&"no PEM certificate found"));
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
    fn the_server_is_asked_to_end_a_session_that_stops_mid_transaction() {
        let options = |url: &str| {
            target(url)
                .unwrap()
                .config
                .get_options()
                .unwrap()
                .to_owned()
        };
        assert!(options("postgres://u@h/db").contains("idle_in_transaction_session_timeout=15s"));
        // Options the URL gives are kept.
        let given = options("postgres://u@h/db?options=-c%20search_path%3Dgw");
        assert!(given.starts_with("-c search_path=gw "), "{given}");
        assert!(given.contains("tcp_user_timeout=10000"), "{given}");
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
