//! Startup, authentication and commands on a `replication=database` connection.

use pgcdc_schema::quote_literal;
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;

use super::auth::authenticate;
use super::frame::{self, startup_error, unexpected, Backend, ServerFields};
use super::hosts;
use super::stream::ReplicationStream;
use super::transport::Transport;
use super::{ReplicationError, SourceUrl};

/// Upper bound for TCP connect, TLS and authentication together.
pub(crate) const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Result of IDENTIFY_SYSTEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentifySystem {
    /// The cluster's unique system identifier (a u64 in decimal).
    pub systemid: String,
    /// Current timeline.
    pub timeline: u32,
    /// Current WAL flush position.
    pub xlogpos: u64,
    /// Database this connection is attached to.
    pub dbname: String,
}

/// Result of CREATE_REPLICATION_SLOT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedSlot {
    /// The slot's name as the server reports it.
    pub slot_name: String,
    /// First LSN the slot will stream; everything before is in the snapshot.
    pub consistent_point: u64,
    /// Exported snapshot, usable with `SET TRANSACTION SNAPSHOT` until the
    /// next command on this connection.
    pub snapshot_name: Option<String>,
    /// The output plugin (`pgoutput`).
    pub output_plugin: String,
}

/// A walsender connection (`replication=database`) before streaming starts.
pub struct ReplicationConnection {
    transport: Transport,
    /// `host:port` connected to (one of the URL's hosts).
    host: String,
}

impl std::fmt::Debug for ReplicationConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationConnection")
            .finish_non_exhaustive()
    }
}

/// Double-quotes an identifier for a replication command (with the shared
/// [`pgcdc_schema::quote_ident`]), refusing one the server could not take.
pub(crate) fn quote_ident(name: &str) -> Result<String, ReplicationError> {
    if name.is_empty() || name.contains('\0') {
        return Err(ReplicationError::Config(format!(
            "identifier `{}` must be non-empty and contain no NUL byte",
            name.escape_debug()
        )));
    }
    Ok(pgcdc_schema::quote_ident(name))
}

impl ReplicationConnection {
    /// Startup with replication=database, TLS per sslmode, auth trust/cleartext/MD5/SCRAM-SHA-256;
    /// with several hosts, on the first that fits `target_session_attrs` (see `hosts`).
    pub async fn connect(url: &SourceUrl) -> Result<Self, ReplicationError> {
        if !url.chooses_host() {
            return Self::connect_one(url).await;
        }
        hosts::first_fitting(url, |candidate| async move {
            let mut conn = Self::connect_one(&candidate).await?;
            let rows = conn.simple_query(hosts::SESSION_QUERY).await?;
            let row = single_row(rows, 2, "the session check")?;
            let text = |i: usize| row.get(i).cloned().flatten().unwrap_or_default();
            match hosts::misfit(candidate.target_session_attrs, &text(0), &text(1)) {
                None => Ok(hosts::Attempt::Fits(conn)),
                Some(why) => {
                    conn.close().await;
                    Ok(hosts::Attempt::Misfit(why))
                }
            }
        })
        .await
    }

    async fn connect_one(url: &SourceUrl) -> Result<Self, ReplicationError> {
        // A blackholed host would otherwise hang for the OS TCP timeout (minutes).
        match tokio::time::timeout(CONNECT_TIMEOUT, Self::connect_inner(url)).await {
            Ok(result) => result,
            Err(_) => Err(ReplicationError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "connecting to {}:{} took longer than {CONNECT_TIMEOUT:?}",
                    url.host, url.port
                ),
            ))),
        }
    }

    async fn connect_inner(url: &SourceUrl) -> Result<Self, ReplicationError> {
        let mut transport = Transport::open(url).await?;
        // Fixed session settings so text values parse the same on every server.
        let params = [
            ("user", url.user.as_str()),
            ("database", url.dbname.as_str()),
            ("replication", "database"),
            ("application_name", url.application_name.as_str()),
            ("client_encoding", "UTF8"),
            ("DateStyle", "ISO, MDY"),
            ("TimeZone", "UTC"),
            ("IntervalStyle", "iso_8601"),
            ("extra_float_digits", "3"),
            ("options", "-c bytea_output=hex -c statement_timeout=0"),
        ];
        frontend::startup_message(params.iter().copied(), &mut transport.write_buf)?;
        transport.flush().await?;
        authenticate(&mut transport, url).await?;
        loop {
            match transport.read().await? {
                Backend::Message(Message::BackendKeyData(_)) => {}
                Backend::Message(Message::ReadyForQuery(_)) => break,
                Backend::Message(Message::ErrorResponse(body)) => {
                    return Err(startup_error(ServerFields::parse(body.fields())?))
                }
                other => return Err(unexpected("startup", &other)),
            }
        }
        tracing::debug!(
            host = %url.host, port = url.port, dbname = %url.dbname,
            server_version = transport.parameters.get("server_version").map(String::as_str),
            "replication connection ready"
        );
        Ok(ReplicationConnection {
            transport,
            host: format!("{}:{}", url.host, url.port),
        })
    }

    /// The `host:port` this connection went to.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// A ParameterStatus value reported by the server (e.g. `server_version`).
    pub(crate) fn server_parameter(&self, name: &str) -> Option<&str> {
        self.transport.parameters.get(name).map(String::as_str)
    }

    /// IDENTIFY_SYSTEM: system id, timeline, current WAL position, database.
    pub async fn identify_system(&mut self) -> Result<IdentifySystem, ReplicationError> {
        let rows = self.simple_query("IDENTIFY_SYSTEM").await?;
        let row = single_row(rows, 4, "IDENTIFY_SYSTEM")?;
        let text = |i: usize, name: &str| {
            row.get(i).cloned().flatten().ok_or_else(|| {
                ReplicationError::Protocol(format!("IDENTIFY_SYSTEM returned NULL {name}"))
            })
        };
        let timeline = text(1, "timeline")?;
        Ok(IdentifySystem {
            systemid: text(0, "systemid")?,
            timeline: timeline.parse().map_err(|_| {
                ReplicationError::Protocol(format!("IDENTIFY_SYSTEM timeline `{timeline}`"))
            })?,
            xlogpos: frame::parse_lsn(&text(2, "xlogpos")?)?,
            dbname: text(3, "dbname")?,
        })
    }

    /// Simple-query protocol; returns rows as text columns (None = NULL). Works for SQL and
    /// replication commands (e.g. READ_REPLICATION_SLOT, SHOW) on a replication=database conn.
    pub async fn simple_query(
        &mut self,
        sql: &str,
    ) -> Result<Vec<Vec<Option<String>>>, ReplicationError> {
        frontend::query(sql, &mut self.transport.write_buf)?;
        self.transport.flush().await?;
        let mut rows = Vec::new();
        let mut failure = None;
        // Always read through ReadyForQuery so the connection stays usable after an error.
        loop {
            match self.transport.read().await? {
                Backend::Message(Message::DataRow(row)) => rows.push(frame::data_row_text(&row)?),
                Backend::Message(
                    Message::RowDescription(_)
                    | Message::CommandComplete(_)
                    | Message::EmptyQueryResponse,
                ) => {}
                Backend::Message(Message::ErrorResponse(body)) => {
                    failure = Some(ServerFields::parse(body.fields())?.into_error());
                }
                Backend::Message(Message::ReadyForQuery(_)) => break,
                other => {
                    return Err(ReplicationError::Protocol(format!(
                        "{}; simple_query cannot run COPY or START_REPLICATION",
                        unexpected("simple_query", &other)
                    )))
                }
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(rows),
        }
    }

    /// The server's major version, from its `server_version` ParameterStatus
    /// (`14.23`, `18beta1`, `17.2 (Debian 17.2-1)`); None when it cannot be read.
    pub fn server_major(&self) -> Option<u32> {
        server_major(self.server_parameter("server_version")?)
    }

    /// CREATE_REPLICATION_SLOT "name" LOGICAL pgoutput, not a failover slot.
    pub async fn create_logical_slot(
        &mut self,
        slot: &str,
        export_snapshot: bool,
    ) -> Result<CreatedSlot, ReplicationError> {
        self.create_slot(slot, export_snapshot, false).await
    }

    /// CREATE_REPLICATION_SLOT "name" LOGICAL pgoutput, in the server's dialect:
    /// `(SNAPSHOT 'export'|'nothing'[, FAILOVER])` on 15+ (FAILOVER: 17+), the
    /// `EXPORT_SNAPSHOT`/`NOEXPORT_SNAPSHOT` keywords on 14.
    pub async fn create_slot(
        &mut self,
        slot: &str,
        export_snapshot: bool,
        failover: bool,
    ) -> Result<CreatedSlot, ReplicationError> {
        let major = self.server_major().unwrap_or(0);
        let options = if major >= 15 {
            let snapshot = if export_snapshot { "export" } else { "nothing" };
            let failover = if failover { ", FAILOVER" } else { "" };
            format!("(SNAPSHOT '{snapshot}'{failover})")
        } else if export_snapshot {
            "EXPORT_SNAPSHOT".to_owned()
        } else {
            "NOEXPORT_SNAPSHOT".to_owned()
        };
        if failover && major < 17 {
            return Err(ReplicationError::Config(format!(
                "failover slots need PostgreSQL 17 or later; the source is {}",
                self.server_parameter("server_version").unwrap_or("older")
            )));
        }
        let sql = format!(
            "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput {options}",
            quote_ident(slot)?
        );
        let rows = self.simple_query(&sql).await?;
        let mut row = single_row(rows, 4, "CREATE_REPLICATION_SLOT")?.into_iter();
        let mut next = |name: &str| {
            row.next().flatten().ok_or_else(|| {
                ReplicationError::Protocol(format!("CREATE_REPLICATION_SLOT returned NULL {name}"))
            })
        };
        let slot_name = next("slot_name")?;
        let consistent_point = frame::parse_lsn(&next("consistent_point")?)?;
        let snapshot_name = next("snapshot_name").ok();
        let output_plugin = next("output_plugin")?;
        Ok(CreatedSlot {
            slot_name,
            consistent_point,
            snapshot_name,
            output_plugin,
        })
    }

    /// ALTER_REPLICATION_SLOT "slot" (FAILOVER): synchronised to standbys from now on (17+).
    pub async fn alter_slot_failover(&mut self, slot: &str) -> Result<(), ReplicationError> {
        let sql = format!("ALTER_REPLICATION_SLOT {} (FAILOVER)", quote_ident(slot)?);
        self.simple_query(&sql).await.map(|_| ())
    }

    /// START_REPLICATION SLOT "slot" LOGICAL X/Y (proto_version '1', publication_names '"pub"',
    /// messages 'true'): logical messages carry the resync watermarks (PostgreSQL 14+).
    /// With `streaming` (`source.streaming`, PostgreSQL 14+): `proto_version '2',
    /// streaming 'on'`, so a transaction larger than `logical_decoding_work_mem` comes in
    /// blocks before it commits (the reader stages them: `ingest::streaming`) instead of
    /// being spilled to disk by the server.
    pub async fn start_replication(
        mut self,
        slot: &str,
        start_lsn: u64,
        publication: &str,
        streaming: bool,
    ) -> Result<ReplicationStream, ReplicationError> {
        let protocol = if streaming {
            "proto_version '2', streaming 'on'"
        } else {
            "proto_version '1'"
        };
        let sql = format!(
            "START_REPLICATION SLOT {} LOGICAL {} ({protocol}, publication_names {}, messages 'true')",
            quote_ident(slot)?,
            pgcdc_schema::Lsn(start_lsn),
            quote_literal(&quote_ident(publication)?)
        );
        frontend::query(&sql, &mut self.transport.write_buf)?;
        self.transport.flush().await?;
        match self.transport.read().await? {
            Backend::CopyBothResponse => Ok(ReplicationStream::new(self.transport)),
            Backend::Message(Message::ErrorResponse(body)) => {
                Err(ServerFields::parse(body.fields())?.into_error())
            }
            other => Err(unexpected("START_REPLICATION", &other)),
        }
    }

    /// Sends Terminate and closes the socket.
    pub async fn close(self) {
        self.transport.close().await;
    }
}

/// The leading number of a `server_version` string.
fn server_major(version: &str) -> Option<u32> {
    let digits: String = version.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

fn single_row(
    rows: Vec<Vec<Option<String>>>,
    columns: usize,
    command: &str,
) -> Result<Vec<Option<String>>, ReplicationError> {
    match <[_; 1]>::try_from(rows) {
        Ok([row]) if row.len() >= columns => Ok(row),
        Ok([row]) => Err(ReplicationError::Protocol(format!(
            "{command} returned {} columns, expected {columns}",
            row.len()
        ))),
        Err(rows) => Err(ReplicationError::Protocol(format!(
            "{command} returned {} rows, expected 1",
            rows.len()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replication_quoting() {
        assert_eq!(quote_ident("slot").ok().as_deref(), Some("\"slot\""));
        assert_eq!(quote_ident("a\"b").ok().as_deref(), Some("\"a\"\"b\""));
        assert!(quote_ident("").is_err());
        assert!(quote_ident("a\0b").is_err());
        assert_eq!(quote_literal("\"it's\""), "'\"it''s\"'");
    }

    #[test]
    fn replication_startup_error_class_28_is_auth() {
        let fields = ServerFields {
            severity: "FATAL".into(),
            code: "28P01".into(),
            message: "password authentication failed for user \"x\"".into(),
            detail: None,
            hint: None,
        };
        let e = startup_error(fields);
        assert!(matches!(&e, ReplicationError::Auth { message } if message.contains("28P01")));
        let fields = ServerFields {
            code: "3D000".into(),
            ..ServerFields::default()
        };
        assert_eq!(startup_error(fields).sqlstate(), Some("3D000"));
    }

    #[test]
    fn server_major_reads_the_leading_number() {
        assert_eq!(server_major("14.23"), Some(14));
        assert_eq!(server_major("18beta1"), Some(18));
        assert_eq!(server_major("17.2 (Debian 17.2-1.pgdg120+1)"), Some(17));
        assert_eq!(server_major("9.6.24"), Some(9));
        assert_eq!(server_major("devel"), None);
    }
}
