//! The Postgres replication connection.
//!
//! ```text
//!  SourceUrl ──▶ Transport (TCP | TLS over TCP | Unix socket, one read buffer)
//!                   │ startup replication=database, trust/password/MD5/SCRAM (auth:
//!                   │ SCRAM-SHA-256-PLUS with channel binding over TLS)
//!                   ▼
//!  ReplicationConnection: IDENTIFY_SYSTEM, simple_query, CREATE_REPLICATION_SLOT
//!                   │ START_REPLICATION ... LOGICAL (CopyBothResponse)
//!                   ▼
//!  ReplicationStream: XLogData / keepalive in ──▶ pgoutput decoder
//!                     standby status ('r') out ◀── journaled LSN
//! ```
//!
//! With several hosts in the URL (or `target_session_attrs`), both connections
//! try each host in order on every connect and take the first that fits
//! (`hosts`). The URL (or libpq `key=value` string) is parsed by
//! `tokio_postgres::Config` with pgcdc's own parameters taken out first
//! (`url_forms`, `url_parse`), under the `PG*` environment variables; the
//! password file is read on each connect (`pgpass`).
//!
//! tokio-postgres has no replication mode, so the protocol is spoken here on
//! top of postgres-protocol's message codecs; [`connect_sql`] opens an
//! ordinary tokio-postgres connection for catalog queries with the same TLS.
//!
//! # Transient versus definite errors
//!
//! [`ReplicationError::is_transient`] is the single decision point.
//!
//! Transient (reconnect with backoff; no operator action needed):
//! - `Io`: refused, reset, timed out, or the server closed the socket.
//! - `Server` with SQLSTATE class 08 (connection exception), class 53
//!   (too many connections, out of memory/disk), 57P01..57P05 (shutdown,
//!   crash recovery, not yet accepting connections), 40001/40P01, 58000/58030,
//!   and 55006 (slot "is active for PID": the previous walsender has not yet
//!   noticed its client died; it frees the slot within `wal_sender_timeout`).
//!   Callers should still tell the operator about a 55006 that persists.
//! - `Sql` when the catalog connection closed or failed on I/O, or with a
//!   transient SQLSTATE as above.
//!
//! Definite (retrying cannot help; say why and stop):
//! - `Auth`: wrong password, no pg_hba entry or client certificate (SQLSTATE
//!   class 28), no password anywhere (URL, PGPASSWORD, password file), an
//!   unsupported method (GSSAPI, SSPI), or `channel_binding=require` unmet.
//! - `Tls`: the server refuses TLS under require/verify-*, or the
//!   certificate does not verify.
//! - `Config`: bad URL or `PG*` variable, unreadable `sslrootcert`, `sslcert` or
//!   `sslkey`, a key others may read.
//! - `Protocol`: the server broke the protocol (or a frame exceeded 1 GiB).
//! - `Server` with any other SQLSTATE (missing slot or publication,
//!   `wal_level` not logical, missing REPLICATION privilege, ...).

mod auth;
mod conn;
mod error;
mod frame;
mod hosts;
mod pgpass;
mod sql;
mod stream;
mod tls;
mod transport;
mod url;
mod url_forms;
mod url_parse;

pub use conn::{CreatedSlot, IdentifySystem, ReplicationConnection};
pub use error::ReplicationError;
pub use frame::ReplicationMessage;
pub use sql::connect_sql;
pub use stream::ReplicationStream;
pub use url::SourceUrl;
pub(crate) use url::{ChannelBinding, Secret, SslMode};
