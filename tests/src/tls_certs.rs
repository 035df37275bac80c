//! Self-signed CA and server certificate for TLS test clusters, made with the
//! `openssl` CLI (already on every machine that has Postgres) so the harness
//! needs no certificate-building crate.

use std::path::{Path, PathBuf};

use crate::error::{io_err, HarnessError, Result};
use crate::os_user::RunAs;

/// The files a TLS cluster is configured with.
#[derive(Debug, Clone)]
pub(crate) struct TlsFiles {
    /// The CA that signed the server certificate; clients trust this.
    pub(crate) ca_cert: PathBuf,
    /// Server certificate (CN `localhost`, SAN `localhost` and `127.0.0.1`).
    pub(crate) server_cert: PathBuf,
    /// Server private key, mode 0600 and owned by the server's OS user.
    pub(crate) server_key: PathBuf,
    /// Client certificate (CN `pgcdc-client`, clientAuth) signed by the same CA, for mTLS.
    pub(crate) client_cert: PathBuf,
    /// Client private key.
    pub(crate) client_key: PathBuf,
}

/// A test PKI: a CA, a server certificate for `localhost`/`127.0.0.1`, and a client
/// certificate, all PEM files in one directory.
#[derive(Debug, Clone)]
pub struct TestPki {
    /// CA certificate.
    pub ca_cert: PathBuf,
    /// Server certificate and key.
    pub server_cert: PathBuf,
    /// Server key.
    pub server_key: PathBuf,
    /// Client certificate (signed by the CA) and key, for mTLS.
    pub client_cert: PathBuf,
    /// Client key.
    pub client_key: PathBuf,
}

/// Generates a [`TestPki`] into `dir` with the `openssl` CLI.
pub async fn generate_pki(dir: &Path) -> Result<TestPki> {
    let f = generate(dir, None).await?;
    Ok(TestPki {
        ca_cert: f.ca_cert,
        server_cert: f.server_cert,
        server_key: f.server_key,
        client_cert: f.client_cert,
        client_key: f.client_key,
    })
}

const CLIENT_EXT: &str = "\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
authorityKeyIdentifier = keyid
subjectKeyIdentifier = hash
";

const CA_CONFIG: &str = "\
[req]
distinguished_name = dn
prompt = no
x509_extensions = v3_ca
[dn]
CN = pgcdc-test-ca
[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
";

// rustls (webpki) rejects end-entity certificates without SAN or with CA:TRUE,
// so the server certificate spells its extensions out.
const SERVER_EXT: &str = "\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
authorityKeyIdentifier = keyid
subjectKeyIdentifier = hash
";

/// Generates the CA and server certificate into `dir`.
pub(crate) async fn generate(dir: &Path, run_as: Option<RunAs>) -> Result<TlsFiles> {
    std::fs::create_dir_all(dir).map_err(io_err("create", dir))?;
    let ca_cnf = dir.join("ca.cnf");
    let server_ext = dir.join("server.ext");
    std::fs::write(&ca_cnf, CA_CONFIG).map_err(io_err("write", &ca_cnf))?;
    std::fs::write(&server_ext, SERVER_EXT).map_err(io_err("write", &server_ext))?;
    let files = TlsFiles {
        ca_cert: dir.join("ca.crt"),
        server_cert: dir.join("server.crt"),
        server_key: dir.join("server.key"),
        client_cert: dir.join("client.crt"),
        client_key: dir.join("client.key"),
    };
    let ca_key = dir.join("ca.key");
    let csr = dir.join("server.csr");
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];

    let mut ca = vec!["req", "-x509", "-nodes", "-days", "3650"];
    ca.extend(ec);
    openssl(
        &ca,
        &[
            ("-config", &ca_cnf),
            ("-keyout", &ca_key),
            ("-out", &files.ca_cert),
        ],
    )
    .await?;

    let mut req = vec!["req", "-new", "-nodes", "-subj", "/CN=localhost"];
    req.extend(ec);
    openssl(&req, &[("-keyout", &files.server_key), ("-out", &csr)]).await?;

    openssl(
        &["x509", "-req", "-days", "3650", "-set_serial", "2"],
        &[
            ("-in", &csr),
            ("-CA", &files.ca_cert),
            ("-CAkey", &ca_key),
            ("-extfile", &server_ext),
            ("-out", &files.server_cert),
        ],
    )
    .await?;

    let client_ext = dir.join("client.ext");
    std::fs::write(&client_ext, CLIENT_EXT).map_err(io_err("write", &client_ext))?;
    let client_csr = dir.join("client.csr");
    let mut req = vec!["req", "-new", "-nodes", "-subj", "/CN=pgcdc-client"];
    req.extend(ec);
    openssl(
        &req,
        &[("-keyout", &files.client_key), ("-out", &client_csr)],
    )
    .await?;
    openssl(
        &["x509", "-req", "-days", "3650", "-set_serial", "3"],
        &[
            ("-in", &client_csr),
            ("-CA", &files.ca_cert),
            ("-CAkey", &ca_key),
            ("-extfile", &client_ext),
            ("-out", &files.client_cert),
        ],
    )
    .await?;

    // Postgres refuses a key readable by others, and it must own the key.
    set_mode(&files.server_key, 0o600)?;
    if let Some(user) = run_as {
        user.chown(&files.server_key)?;
        user.chown(&files.server_cert)?;
        user.chown(&files.ca_cert)?;
    }
    Ok(files)
}

async fn openssl(args: &[&str], paths: &[(&str, &Path)]) -> Result<()> {
    let mut cmd = tokio::process::Command::new("openssl");
    cmd.args(args);
    for (flag, path) in paths {
        cmd.arg(flag).arg(path);
    }
    let out = cmd.output().await.map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            HarnessError::Environment(
                "the `openssl` CLI is needed for TLS test clusters; install it (apt-get install openssl)"
                    .to_owned(),
            )
        } else {
            HarnessError::Spawn { program: "openssl".to_owned(), source }
        }
    })?;
    if !out.status.success() {
        return Err(HarnessError::Command {
            program: format!("openssl {}", args.join(" ")),
            status: out.status,
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        });
    }
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io_err("chmod", path))
}
