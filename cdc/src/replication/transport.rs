//! The byte pipe under a replication connection: TCP, TLS over TCP, or a Unix socket.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::BytesMut;
use postgres_protocol::message::{backend, frontend};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use super::frame::{self, Backend, ServerFields};
use super::{tls, ReplicationError, SourceUrl, SslMode};

/// Any full-duplex byte stream we can speak the protocol over.
pub(crate) trait AsyncIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> AsyncIo for T {}

/// The read buffer's size at open, and what it goes back to once a larger message
/// (a wide row: one message holds the whole row) has been taken off it.
const READ_BUF: usize = 8 * 1024;
const READ_BUF_KEEP: usize = 1 << 20;

/// A framed, buffered connection. The read buffer lives here so that a read
/// cancelled mid-frame (inside `tokio::select!`) resumes where it stopped.
pub(crate) struct Transport {
    io: Box<dyn AsyncIo>,
    read_buf: BytesMut,
    pub(crate) write_buf: BytesMut,
    /// Latest ParameterStatus values (server_version, integer_datetimes, ...).
    pub(crate) parameters: HashMap<String, String>,
    /// What TLS this connection runs over, for SCRAM channel binding.
    pub(crate) tls: TlsState,
}

/// Whether the connection is encrypted, and the channel binding data if it can bind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TlsState {
    /// Plain TCP or a Unix socket.
    None,
    /// TLS; `end_point` is the `tls-server-end-point` data (None: cannot bind).
    Tls { end_point: Option<Vec<u8>> },
}

impl Transport {
    /// Opens the socket and negotiates TLS as `sslmode` asks.
    pub(crate) async fn open(url: &SourceUrl) -> Result<Transport, ReplicationError> {
        let (io, tls): (Box<dyn AsyncIo>, TlsState) = if let Some(path) = url.unix_socket_path() {
            // Postgres never speaks TLS on a Unix socket; libpq ignores sslmode there too.
            (Box::new(UnixStream::connect(&path).await?), TlsState::None)
        } else {
            let tcp = TcpStream::connect((url.host.as_str(), url.port)).await?;
            // Status updates are tiny and latency-sensitive.
            tcp.set_nodelay(true)?;
            negotiate_tls(tcp, url).await?
        };
        Ok(Transport {
            io,
            read_buf: BytesMut::with_capacity(READ_BUF),
            write_buf: BytesMut::with_capacity(1024),
            parameters: HashMap::new(),
            tls,
        })
    }

    /// Writes and flushes everything in `write_buf`.
    pub(crate) async fn flush(&mut self) -> Result<(), ReplicationError> {
        self.io.write_all(&self.write_buf).await?;
        self.io.flush().await?;
        self.write_buf.clear();
        Ok(())
    }

    /// After a wide row's message (one message holds the whole row; `taken`
    /// bytes) the buffer it grew to goes, what follows it moved to a new one: a
    /// stream that goes quiet would otherwise hold the largest row's size for
    /// good. What is left after the message shares its allocation however
    /// little room it has left (a buffer grown to fit the message has almost
    /// none), and once the message is dropped it takes that allocation back.
    fn release_large_buffer(&mut self, taken: usize) {
        if (taken > READ_BUF_KEEP || self.read_buf.capacity() > READ_BUF_KEEP)
            && self.read_buf.len() <= READ_BUF
        {
            let mut fresh = BytesMut::with_capacity(READ_BUF);
            fresh.extend_from_slice(&self.read_buf);
            self.read_buf = fresh;
        }
    }

    /// The next message that matters; NoticeResponse and ParameterStatus are
    /// absorbed here because the server may send them at any point. Cancel-safe.
    pub(crate) async fn read(&mut self) -> Result<Backend, ReplicationError> {
        loop {
            let before = self.read_buf.len();
            while let Some(message) = frame::take_message(&mut self.read_buf)? {
                match message {
                    Backend::Message(backend::Message::NoticeResponse(body)) => {
                        let n = ServerFields::parse(body.fields())?;
                        tracing::info!(
                            severity = %n.severity, code = %n.code, message = %n.message,
                            "notice from source server"
                        );
                    }
                    Backend::Message(backend::Message::ParameterStatus(body)) => {
                        let name = body.name().map_err(proto)?.to_owned();
                        let value = body.value().map_err(proto)?.to_owned();
                        tracing::debug!(name = %name, value = %value, "source parameter status");
                        self.parameters.insert(name, value);
                    }
                    other => {
                        self.release_large_buffer(before - self.read_buf.len());
                        return Ok(other);
                    }
                }
            }
            // read_buf is cancel-safe: on cancellation no bytes were taken.
            let n = self.io.read_buf(&mut self.read_buf).await?;
            if n == 0 {
                return Err(ReplicationError::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "source server closed the connection",
                )));
            }
        }
    }

    /// Sends Terminate and shuts the socket down; errors are irrelevant by now.
    pub(crate) async fn close(mut self) {
        frontend::terminate(&mut self.write_buf);
        let _ = self.flush().await;
        let _ = self.io.shutdown().await;
    }
}

fn proto(e: std::io::Error) -> ReplicationError {
    ReplicationError::Protocol(e.to_string())
}

async fn negotiate_tls(
    mut tcp: TcpStream,
    url: &SourceUrl,
) -> Result<(Box<dyn AsyncIo>, TlsState), ReplicationError> {
    if url.sslmode == SslMode::Disable {
        return Ok((Box::new(tcp), TlsState::None));
    }
    // Build the config first so a bad sslrootcert fails before any network I/O.
    let config = tls::client_config(url)?;
    let server_name = tls::server_name(url)?;
    let mut request = BytesMut::new();
    frontend::ssl_request(&mut request);
    tcp.write_all(&request).await?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await?;
    match answer[0] {
        b'S' => {
            let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
            let stream = connector
                .connect(server_name, tcp)
                .await
                .map_err(ReplicationError::from_tls_io)?;
            let end_point = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| certs.first())
                .and_then(|cert| tls::server_end_point(cert));
            Ok((Box::new(stream), TlsState::Tls { end_point }))
        }
        b'N' if url.sslmode == SslMode::Prefer => Ok((Box::new(tcp), TlsState::None)),
        b'N' => Err(ReplicationError::Tls {
            message: format!(
                "the server does not accept TLS connections but sslmode={}; \
                 enable ssl on the server or lower sslmode in the source URL",
                url.sslmode.as_str()
            ),
        }),
        // An ErrorResponse here means a pre-3.0 server or not Postgres at all.
        other => Err(ReplicationError::Protocol(format!(
            "unexpected answer 0x{other:02x} to SSLRequest; is this a PostgreSQL server?"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use bytes::BufMut;
    use tokio::io::AsyncWriteExt;

    use super::*;

    fn copy_data(len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 5);
        out.put_u8(b'd');
        out.put_i32(i32::try_from(len + 4).unwrap_or(i32::MAX));
        out.resize(len + 5, b'x');
        out
    }

    /// A wide row's message grows the read buffer; once it is taken and the
    /// next message read, the buffer is back to its usual size.
    #[tokio::test]
    async fn the_read_buffer_shrinks_after_a_large_message() {
        let (ours, mut server) = tokio::io::duplex(64 * 1024);
        let mut t = Transport {
            io: Box::new(ours),
            read_buf: BytesMut::with_capacity(READ_BUF),
            write_buf: BytesMut::new(),
            parameters: HashMap::new(),
            tls: TlsState::None,
        };
        let writer = tokio::spawn(async move {
            server.write_all(&copy_data(4 << 20)).await?;
            server.write_all(&copy_data(10)).await?;
            Ok::<_, std::io::Error>(server)
        });
        let first = t.read().await.expect("the large message");
        let Backend::Message(backend::Message::CopyData(body)) = first else {
            panic!("not the CopyData sent");
        };
        let body = body.into_bytes();
        assert_eq!(body.len(), 4 << 20);
        // Nothing but the message holds its allocation: the read buffer let go.
        assert!(
            body.is_unique(),
            "the read buffer still shares the large message's allocation"
        );
        drop(body);
        let second = t.read().await.expect("the small message");
        assert!(
            matches!(second, Backend::Message(backend::Message::CopyData(ref b)) if b.data().len() == 10)
        );
        assert!(
            t.read_buf.capacity() <= READ_BUF_KEEP,
            "read buffer kept {} bytes after a 4 MiB message",
            t.read_buf.capacity()
        );
        let _server = writer.await.expect("writer task").expect("writes");
    }
}
