//! An ordinary (non-replication) connection for catalog queries, via tokio-postgres.

use tokio_postgres::config::SslMode as PgSslMode;

use super::{hosts, tls, ReplicationError, SourceUrl, SslMode};

/// Connects with tokio-postgres (TLS through tokio-postgres-rustls with client_config above),
/// spawns the connection task, returns the client. application_name from the url. With
/// several hosts, to the first that fits `target_session_attrs` (see `hosts`).
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
        .connect_timeout(super::conn::CONNECT_TIMEOUT);
    if let Some(password) = &url.password {
        config.password(password.expose());
    }
    let application_name = url.application_name.clone();

    if url.is_unix_socket() {
        // Postgres never speaks TLS on a Unix socket (libpq ignores sslmode there too).
        config.host_path(&url.host).ssl_mode(PgSslMode::Disable);
        let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
        spawn_connection(connection, application_name);
        return Ok(client);
    }

    config.host(&url.host).ssl_mode(match url.sslmode {
        SslMode::Disable => PgSslMode::Disable,
        SslMode::Prefer => PgSslMode::Prefer,
        // Verification itself happens in the rustls config.
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => PgSslMode::Require,
    });
    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls::client_config(url)?);
    let (client, connection) = config.connect(tls).await?;
    spawn_connection(connection, application_name);
    Ok(client)
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
