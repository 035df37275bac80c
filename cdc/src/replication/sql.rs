//! An ordinary (non-replication) connection for catalog queries, via tokio-postgres,
//! with the same TLS (client certificate included) and SCRAM channel binding as the
//! replication connection.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::config::{ChannelBinding as PgChannelBinding, SslMode as PgSslMode};
use tokio_postgres::tls::{self as pg_tls, MakeTlsConnect, TlsConnect};

use super::url::ChannelBinding;
use super::{hosts, tls, ReplicationError, SourceUrl, SslMode};

/// Connects with tokio-postgres, spawns the connection task, returns the client.
/// application_name from the url. With several hosts, to the first that fits
/// `target_session_attrs` (see `hosts`).
pub async fn connect_sql(url: &SourceUrl) -> Result<tokio_postgres::Client, ReplicationError> {
    if !url.chooses_host() {
        return connect_one(url).await;
    }
    hosts::first_fitting(url, |candidate| async move {
        let client = connect_one(&candidate).await?;
        let row = client.query_one(hosts::SESSION_QUERY, &[]).await?;
        let (read_only, in_recovery): (String, String) = (row.try_get(0)?, row.try_get(1)?);
        Ok(
            match hosts::misfit(candidate.target_session_attrs, &read_only, &in_recovery) {
                None => hosts::Attempt::Fits(client),
                Some(why) => hosts::Attempt::Misfit(why),
            },
        )
    })
    .await
}

async fn connect_one(url: &SourceUrl) -> Result<tokio_postgres::Client, ReplicationError> {
    let mut config = tokio_postgres::Config::new();
    config
        .user(&url.user)
        .dbname(&url.dbname)
        .port(url.port)
        .application_name(&url.application_name)
        // The replication connection's value settings (conn.rs): a row read here (snapshot,
        // resync) renders exactly as the same row streamed.
        .options(
            "-c statement_timeout=0 -c DateStyle=ISO,MDY -c TimeZone=UTC \
             -c IntervalStyle=iso_8601 -c extra_float_digits=3 -c bytea_output=hex",
        )
        .connect_timeout(super::conn::CONNECT_TIMEOUT)
        .channel_binding(match url.channel_binding {
            ChannelBinding::Disable => PgChannelBinding::Disable,
            ChannelBinding::Prefer => PgChannelBinding::Prefer,
            ChannelBinding::Require => PgChannelBinding::Require,
        });
    let password = url.password_for_connect();
    if let Some(password) = &password {
        config.password(password.expose());
    }
    let application_name = url.application_name.clone();
    let require_binding = url.channel_binding == ChannelBinding::Require;

    if url.is_unix_socket() {
        if require_binding {
            return Err(super::auth::channel_binding_refused(
                "the connection is a Unix socket (never encrypted)",
            ));
        }
        // Postgres never speaks TLS on a Unix socket (libpq ignores sslmode there too).
        config.host_path(&url.host).ssl_mode(PgSslMode::Disable);
        let (client, connection) = config
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| explain(e, url, password.is_some()))?;
        spawn_connection(connection, application_name);
        return Ok(client);
    }

    config.host(&url.host).ssl_mode(match url.sslmode {
        SslMode::Disable => PgSslMode::Disable,
        SslMode::Prefer => PgSslMode::Prefer,
        // Verification itself happens in the rustls config.
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => PgSslMode::Require,
    });
    let tls = MakeTls(Arc::new(tls::client_config(url)?));
    let (client, connection) = config
        .connect(tls)
        .await
        .map_err(|e| explain(e, url, password.is_some()))?;
    spawn_connection(connection, application_name);
    Ok(client)
}

/// tokio-postgres says only "password missing" or "authentication error": say why and
/// what to do, as the replication connection does.
fn explain(e: tokio_postgres::Error, url: &SourceUrl, has_password: bool) -> ReplicationError {
    let cause = std::error::Error::source(&e).map(ToString::to_string);
    let cause = cause.as_deref().unwrap_or_default();
    if e.as_db_error().is_some() {
        ReplicationError::from(e)
    } else if !has_password && cause.contains("password missing") {
        super::auth::no_password(url)
    } else if url.channel_binding == ChannelBinding::Require && cause.contains("channel binding") {
        super::auth::channel_binding_refused(
            "the server did not authenticate with SCRAM-SHA-256-PLUS over TLS",
        )
    } else {
        ReplicationError::from(e)
    }
}

fn spawn_connection<F>(connection: F, application_name: String)
where
    F: std::future::Future<Output = Result<(), tokio_postgres::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        // The client sees the failure on its next call; this is for the log.
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, application_name = %application_name, "catalog connection ended");
        }
    });
}

/// tokio-postgres' TLS over rustls, with `tls-server-end-point` channel binding
/// computed as the replication connection computes it ([`tls::server_end_point`]).
#[derive(Clone)]
struct MakeTls(Arc<rustls::ClientConfig>);

/// One TLS handshake, to the host named for SNI and verify-full.
struct TlsConnector {
    connector: tokio_rustls::TlsConnector,
    name: ServerName<'static>,
}

/// The TLS stream tokio-postgres reads and writes.
struct TlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S> MakeTlsConnect<S> for MakeTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = TlsStream<S>;
    type TlsConnect = TlsConnector;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> io::Result<TlsConnector> {
        let name = ServerName::try_from(domain.to_owned())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        Ok(TlsConnector {
            connector: tokio_rustls::TlsConnector::from(self.0.clone()),
            name,
        })
    }
}

impl<S> TlsConnect<S> for TlsConnector
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = TlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let stream = self.connector.connect(self.name, stream).await?;
            Ok(TlsStream(stream))
        })
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> pg_tls::TlsStream for TlsStream<S> {
    fn channel_binding(&self) -> pg_tls::ChannelBinding {
        self.0
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|certs| certs.first())
            .and_then(|cert| tls::server_end_point(cert))
            .map_or_else(
                pg_tls::ChannelBinding::none,
                pg_tls::ChannelBinding::tls_server_end_point,
            )
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
