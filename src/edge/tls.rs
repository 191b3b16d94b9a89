//! TLS for both ports (rustls): certificates read from PEM files and
//! reloaded on SIGHUP. A reload swaps the configuration new handshakes use;
//! connections already open keep the session they have.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio_rustls::TlsAcceptor;

/// What a client certificate proves: its URI SANs (such as SPIFFE ids) and
/// DNS SANs. Put on every request of the connection.
#[derive(Debug, Clone, Default)]
pub struct PeerIdentities(pub Arc<[String]>);

/// The files a TLS port is served from.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// When set, clients must present a certificate signed by this CA.
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
#[error("{}: {what}", .file.display())]
pub struct TlsError {
    pub file: PathBuf,
    pub what: String,
}

/// A TLS configuration that SIGHUP can replace.
pub struct ReloadableTls {
    files: TlsFiles,
    alpn: Vec<Vec<u8>>,
    current: ArcSwap<ServerConfig>,
}

impl ReloadableTls {
    /// `alpn`: the protocols offered (`h2` for gRPC, `http/1.1` for webhooks).
    pub fn load(files: TlsFiles, alpn: &[&[u8]]) -> Result<Arc<Self>, TlsError> {
        let alpn: Vec<Vec<u8>> = alpn.iter().map(|p| p.to_vec()).collect();
        let config = server_config(&files, &alpn)?;
        Ok(Arc::new(Self {
            files,
            alpn,
            current: ArcSwap::from_pointee(config),
        }))
    }

    /// Re-reads the files; on an error the configuration in force stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = server_config(&self.files, &self.alpn)?;
        self.current.store(Arc::new(config));
        Ok(())
    }

    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.load_full())
    }

    pub fn requires_client_certs(&self) -> bool {
        self.files.client_ca.is_some()
    }
}

fn failed(file: &Path, what: impl std::fmt::Display) -> TlsError {
    TlsError {
        file: file.to_owned(),
        what: what.to_string(),
    }
}

pub(crate) fn certs(file: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(file)
        .map_err(|e| failed(file, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| failed(file, e))?;
    if certs.is_empty() {
        return Err(failed(file, "no PEM certificate found"));
    }
    Ok(certs)
}

fn server_config(files: &TlsFiles, alpn: &[Vec<u8>]) -> Result<ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| failed(&files.cert, e))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in certs(ca)? {
                roots.add(cert).map_err(|e| failed(ca, e))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| failed(ca, e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| failed(&files.key, e))?;
    let mut config = builder
        .with_single_cert(certs(&files.cert)?, key)
        .map_err(|e| failed(&files.key, e))?;
    config.alpn_protocols = alpn.to_vec();
    Ok(config)
}

/// The URI and DNS SANs of a (verified) client certificate, typed as the
/// keys file matches them (`uri:…`, `dns:…`).
pub fn identities(cert: &CertificateDer<'_>) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
        return Vec::new();
    };
    let Ok(Some(san)) = parsed.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(crate::edge::auth::uri_identity(uri)),
            GeneralName::DNSName(dns) => Some(crate::edge::auth::dns_identity(dns)),
            _ => None,
        })
        .collect()
}
