//! The CopyBoth phase: XLogData and keepalives in, standby status updates out.

use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;

use super::frame::{self, Backend, ReplicationMessage, ServerFields};
use super::transport::Transport;
use super::ReplicationError;

/// A started logical replication stream.
pub struct ReplicationStream {
    transport: Transport,
    /// The server sent CopyDone: no more data will come.
    server_done: bool,
}

impl std::fmt::Debug for ReplicationStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationStream")
            .field("server_done", &self.server_done)
            .finish_non_exhaustive()
    }
}

impl ReplicationStream {
    pub(crate) fn new(transport: Transport) -> Self {
        ReplicationStream {
            transport,
            server_done: false,
        }
    }

    /// Next message; Ok(None) when the server ended the COPY (CopyDone) cleanly.
    ///
    /// Cancel-safe: partial frames stay in the connection's read buffer.
    pub async fn next_message(&mut self) -> Result<Option<ReplicationMessage>, ReplicationError> {
        if self.server_done {
            return Ok(None);
        }
        match self.transport.read().await? {
            Backend::Message(Message::CopyData(body)) => {
                frame::parse_replication_payload(body.into_bytes()).map(Some)
            }
            // A server shutting down (pg_ctl stop) ends the COPY with
            // CommandComplete and no CopyDone: the stream is over all the same.
            Backend::Message(Message::CopyDone | Message::CommandComplete(_)) => {
                self.server_done = true;
                Ok(None)
            }
            Backend::Message(Message::ErrorResponse(body)) => {
                Err(ServerFields::parse(body.fields())?.into_error())
            }
            _ => Err(ReplicationError::Protocol(
                "unexpected message in the replication stream".to_owned(),
            )),
        }
    }

    /// Standby status update ('r'): write/flush/apply LSNs, client time (µs since 2000-01-01), reply flag.
    pub async fn send_status(
        &mut self,
        write: u64,
        flush: u64,
        apply: u64,
        reply_requested: bool,
    ) -> Result<(), ReplicationError> {
        frame::encode_standby_status(
            write,
            flush,
            apply,
            frame::pg_now_micros(),
            reply_requested,
            &mut self.transport.write_buf,
        );
        self.transport.flush().await
    }

    /// Send CopyDone and drain until the server finishes, then close (graceful shutdown).
    pub async fn finish(mut self) -> Result<(), ReplicationError> {
        frontend::copy_done(&mut self.transport.write_buf);
        self.transport.flush().await?;
        // The server may still send CopyData it had queued, then its own
        // CopyDone (unless already seen), CommandComplete and ReadyForQuery.
        loop {
            match self.transport.read().await? {
                Backend::Message(
                    Message::CopyData(_) | Message::CopyDone | Message::CommandComplete(_),
                ) => {}
                // A timeline switch reports the next timeline as a result set.
                Backend::Message(Message::RowDescription(_) | Message::DataRow(_)) => {}
                Backend::Message(Message::ReadyForQuery(_)) => break,
                Backend::Message(Message::ErrorResponse(body)) => {
                    return Err(ServerFields::parse(body.fields())?.into_error())
                }
                _ => {
                    return Err(ReplicationError::Protocol(
                        "unexpected message while finishing the replication stream".to_owned(),
                    ))
                }
            }
        }
        self.transport.close().await;
        Ok(())
    }
}
