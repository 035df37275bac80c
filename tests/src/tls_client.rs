//! rustls connector for tokio-postgres that trusts only the harness CA.

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use crate::error::{HarnessError, Result};

/// Builds a connector that verifies the server against `ca_cert` only.
pub(crate) fn make_connector(ca_cert: &Path) -> Result<tokio_postgres_rustls::MakeRustlsConnect> {
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca_cert)
        .map_err(|e| HarnessError::Tls(format!("reading {}: {e}", ca_cert.display())))?;
    for cert in certs {
        let cert =
            cert.map_err(|e| HarnessError::Tls(format!("parsing {}: {e}", ca_cert.display())))?;
        roots
            .add(cert)
            .map_err(|e| HarnessError::Tls(format!("adding CA: {e}")))?;
    }
    // An explicit provider: another crate in the graph may enable aws-lc-rs,
    // and then rustls cannot pick a process default on its own.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| HarnessError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}
