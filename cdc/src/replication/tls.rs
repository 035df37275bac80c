//! rustls client configs for each `sslmode` (ring provider only).

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::{ReplicationError, SourceUrl, SslMode};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// rustls config for the sslmode: require/prefer = encrypt without verifying; verify-ca =
/// verify chain against sslrootcert (or the system roots) but not the host name;
/// verify-full = chain + host name. With sslcert/sslkey, the client shows that certificate.
pub(crate) fn client_config(url: &SourceUrl) -> Result<rustls::ClientConfig, ReplicationError> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ReplicationError::Tls {
            message: format!("cannot build TLS config: {e}"),
        })?;
    let builder = match url.sslmode {
        // Disable never reaches the handshake; a usable config keeps callers simple.
        SslMode::Disable | SslMode::Prefer | SslMode::Require => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification { provider })),
        SslMode::VerifyCa => {
            let inner = webpki_verifier(url, provider)?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChainOnly { inner }))
        }
        SslMode::VerifyFull => builder.with_webpki_verifier(webpki_verifier(url, provider)?),
    };
    match client_identity(url)? {
        None => Ok(builder.with_no_client_auth()),
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).map_err(|e| {
            ReplicationError::Config(format!(
                "sslcert and sslkey do not make a usable client certificate ({e}); \
                 the key must be the certificate's own"
            ))
        }),
    }
}

/// The client certificate chain and key from `sslcert`/`sslkey`, read on each connect
/// (so a renewed certificate is picked up). The key must be private, as libpq demands.
fn client_identity(
    url: &SourceUrl,
) -> Result<Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>, ReplicationError> {
    let (Some(cert), Some(key)) = (&url.sslcert, &url.sslkey) else {
        return Ok(None);
    };
    let shown = cert.display();
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| {
            ReplicationError::Config(format!(
                "sslcert `{shown}` cannot be read: {e}; point it at the client certificate (PEM)"
            ))
        })?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            ReplicationError::Config(format!("sslcert `{shown}` is not valid PEM: {e}"))
        })?;
    if chain.is_empty() {
        return Err(ReplicationError::Config(format!(
            "sslcert `{shown}` holds no `-----BEGIN CERTIFICATE-----` block"
        )));
    }
    check_key_permissions(key)?;
    // The key's bytes never reach a message: only its path and the kind of failure.
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        ReplicationError::Config(format!(
            "sslkey `{}` holds no usable private key ({}); it must be an unencrypted PEM key \
             (PKCS#8, PKCS#1 RSA or SEC1 EC: `openssl pkey -in KEY -out KEY.plain` decrypts one)",
            key.display(),
            key_error_kind(&e)
        ))
    })?;
    Ok(Some((chain, key_der)))
}

/// What went wrong reading a key, without any of its content.
fn key_error_kind(e: &rustls::pki_types::pem::Error) -> &'static str {
    use rustls::pki_types::pem::Error;
    match e {
        Error::Io(_) => "cannot read the file",
        Error::NoItemsFound => "no private key block found",
        _ => "malformed PEM",
    }
}

/// libpq's rule: owner-only (0600 or less) when we own it, 0640 or less when root owns it.
fn check_key_permissions(key: &std::path::Path) -> Result<(), ReplicationError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(key).map_err(|e| {
        ReplicationError::Config(format!("sslkey `{}` cannot be read: {e}", key.display()))
    })?;
    let mode = meta.mode();
    // Exactly libpq's test (a key owned by someone else, e.g. a mounted secret's group, passes).
    let euid = nix::unistd::geteuid().as_raw();
    let too_open =
        (meta.uid() == euid && mode & 0o077 != 0) || (meta.uid() == 0 && mode & 0o037 != 0);
    if too_open {
        return Err(ReplicationError::Config(format!(
            "sslkey `{}` has group or world access (mode {:o}); chmod 0600 it \
             (or 0640 owned by root)",
            key.display(),
            mode & 0o777
        )));
    }
    Ok(())
}

/// SCRAM's `tls-server-end-point` channel binding data (RFC 5929 4.1): the server
/// certificate hashed with its signature's hash (SHA-256 for MD5 and SHA-1), as
/// Postgres computes it. None for a signature Postgres cannot bind either (RSASSA-PSS,
/// Ed25519) or a certificate that does not parse.
pub(crate) fn server_end_point(cert: &[u8]) -> Option<Vec<u8>> {
    use sha2::Digest;
    use x509_cert::der::Decode;
    let parsed = x509_cert::Certificate::from_der(cert).ok()?;
    let oid = parsed.signature_algorithm.oid.to_string();
    let hash = match oid.as_str() {
        // md5/sha1/sha256 WithRSAEncryption, ecdsa-with-SHA1/SHA256
        "1.2.840.113549.1.1.4"
        | "1.2.840.113549.1.1.5"
        | "1.2.840.113549.1.1.11"
        | "1.2.840.10045.4.1"
        | "1.2.840.10045.4.3.2" => sha2::Sha256::digest(cert).to_vec(),
        "1.2.840.113549.1.1.12" | "1.2.840.10045.4.3.3" => sha2::Sha384::digest(cert).to_vec(),
        "1.2.840.113549.1.1.13" | "1.2.840.10045.4.3.4" => sha2::Sha512::digest(cert).to_vec(),
        "1.2.840.113549.1.1.14" => sha2::Sha224::digest(cert).to_vec(),
        _ => return None,
    };
    Some(hash)
}

fn webpki_verifier(
    url: &SourceUrl,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>, ReplicationError> {
    let roots = root_store(url)?;
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| ReplicationError::Tls {
            message: format!("cannot build certificate verifier: {e}"),
        })
}

fn root_store(url: &SourceUrl) -> Result<RootCertStore, ReplicationError> {
    let mut roots = RootCertStore::empty();
    match &url.sslrootcert {
        Some(path) => {
            let shown = path.display();
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| {
                    ReplicationError::Config(format!(
                        "sslrootcert `{shown}` cannot be read: {e}; point it at a PEM CA bundle"
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| {
                    ReplicationError::Config(format!("sslrootcert `{shown}` is not valid PEM: {e}"))
                })?;
            let (added, _ignored) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(ReplicationError::Config(format!(
                    "sslrootcert `{shown}` holds no usable CA certificate; \
                     it must contain `-----BEGIN CERTIFICATE-----` blocks"
                )));
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for err in &native.errors {
                tracing::warn!(error = %err, "could not load some system CA certificates");
            }
            roots.add_parsable_certificates(native.certs);
            if roots.is_empty() {
                return Err(ReplicationError::Config(format!(
                    "sslmode={} needs CA certificates but the system has none; \
                     set sslrootcert=/path/to/ca.pem in the source URL",
                    url.sslmode.as_str()
                )));
            }
        }
    }
    Ok(roots)
}

/// verify-ca: the chain must lead to a trusted root, any host name is accepted.
#[derive(Debug)]
struct ChainOnly {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // webpki checks the chain before the name, so a name mismatch means
        // the chain itself was fine.
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// prefer/require: encryption against passive snooping only, like libpq.
/// Handshake signatures are still checked so the session keys are sound.
#[derive(Debug)]
struct NoVerification {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The name presented for SNI and checked by verify-full.
pub(crate) fn server_name(url: &SourceUrl) -> Result<ServerName<'static>, ReplicationError> {
    ServerName::try_from(url.host.clone()).map_err(|e| {
        ReplicationError::Config(format!(
            "source host `{}` is not a valid TLS server name ({e}); use a DNS name or IP address",
            url.host
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> SourceUrl {
        match s.parse() {
            Ok(u) => u,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn replication_tls_configs_build() {
        for mode in ["disable", "prefer", "require"] {
            let cfg = client_config(&url(&format!("postgres://h/d?sslmode={mode}")));
            assert!(cfg.is_ok(), "{mode}");
        }
    }

    #[test]
    fn client_key_must_be_private_and_certificate_readable() {
        use std::os::unix::fs::PermissionsExt;
        let dir = match tempfile::tempdir() {
            Ok(d) => d,
            Err(e) => panic!("{e}"),
        };
        let key = dir.path().join("client.key");
        if let Err(e) = std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\nsecretbytes\n") {
            panic!("{e}");
        }
        let chmod = |mode| {
            if let Err(e) = std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)) {
                panic!("{e}");
            }
        };
        chmod(0o644);
        let err = check_key_permissions(&key)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("group or world access") && err.contains("0600"),
            "{err}"
        );
        chmod(0o600);
        assert!(check_key_permissions(&key).is_ok());
        let u = url(&format!(
            "postgres://h/d?sslmode=require&sslcert={}&sslkey={}",
            dir.path().join("missing.crt").display(),
            key.display()
        ));
        let err = client_config(&u)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("sslcert") && err.contains("cannot be read"),
            "{err}"
        );
        assert!(!err.contains("secretbytes"), "{err}");
    }

    #[test]
    fn replication_tls_bad_rootcert_is_config_error() {
        let dir = match tempfile::tempdir() {
            Ok(d) => d,
            Err(e) => panic!("{e}"),
        };
        let missing = dir.path().join("nope.pem");
        let u = url(&format!(
            "postgres://h/d?sslmode=verify-full&sslrootcert={}",
            missing.display()
        ));
        let err = client_config(&u)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("cannot be read"), "{err}");

        let empty = dir.path().join("empty.pem");
        if let Err(e) = std::fs::write(&empty, "not a cert\n") {
            panic!("{e}");
        }
        let u = url(&format!(
            "postgres://h/d?sslmode=verify-ca&sslrootcert={}",
            empty.display()
        ));
        let err = client_config(&u)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("no usable CA certificate"), "{err}");
    }
}
