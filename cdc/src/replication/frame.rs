//! Pure framing and payload codecs: bytes in, typed messages out. No I/O.
//!
//! postgres-protocol parses the ordinary backend messages; it does not know
//! CopyBothResponse (`W`) nor the replication payloads carried in CopyData
//! (`w` XLogData, `k` keepalive, `r` standby status), so those are here.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend;

use pgcdc_schema::Lsn;

use super::ReplicationError;

/// Largest frame accepted (Postgres itself caps messages at 1 GiB).
pub(crate) const MAX_FRAME_LEN: usize = 1 << 30;
const COPY_BOTH_RESPONSE_TAG: u8 = b'W';
const XLOG_DATA_TAG: u8 = b'w';
const KEEPALIVE_TAG: u8 = b'k';
const STANDBY_STATUS_TAG: u8 = b'r';
/// Seconds from the Unix epoch to the Postgres epoch (2000-01-01T00:00:00Z).
const PG_EPOCH_UNIX_SECS: i64 = 946_684_800;

/// One message from the server.
pub(crate) enum Backend {
    /// CopyBothResponse: START_REPLICATION succeeded.
    CopyBothResponse,
    /// Anything postgres-protocol understands.
    Message(backend::Message),
}

/// A message inside the replication CopyBoth stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicationMessage {
    /// WAL payload (a pgoutput message) starting at `wal_start`.
    XLogData {
        /// LSN where `data` starts.
        wal_start: u64,
        /// The server's current end of WAL.
        wal_end: u64,
        /// Server clock, µs since 2000-01-01.
        server_time: i64,
        /// The pgoutput message.
        data: Bytes,
    },
    /// Primary keepalive; answer promptly with a status update when `reply_requested`.
    Keepalive {
        /// The server's current end of WAL.
        wal_end: u64,
        /// Server clock, µs since 2000-01-01.
        server_time: i64,
        /// The server will time us out unless we reply soon.
        reply_requested: bool,
    },
}

fn protocol(msg: impl Into<String>) -> ReplicationError {
    ReplicationError::Protocol(msg.into())
}

/// Takes one complete message off the front of `buf`; `Ok(None)` means read more.
///
/// Consumes nothing unless a whole frame is present, so a caller that is
/// cancelled between reads loses no data.
pub(crate) fn take_message(buf: &mut BytesMut) -> Result<Option<Backend>, ReplicationError> {
    let Some(header) = backend::Header::parse(buf).map_err(|e| protocol(e.to_string()))? else {
        return Ok(None);
    };
    // Header::parse rejects len < 4, so this cannot underflow.
    let body_len = usize::try_from(header.len())
        .map_err(|_| protocol("negative frame length"))?
        .saturating_sub(4);
    if body_len > MAX_FRAME_LEN {
        return Err(protocol(format!(
            "server sent a {body_len}-byte frame (tag `{}`), over the 1 GiB limit",
            char::from(header.tag())
        )));
    }
    let total = 5 + body_len;
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    if header.tag() == COPY_BOTH_RESPONSE_TAG {
        let frame = buf.split_to(total).freeze();
        parse_copy_both_response(frame.slice(5..))?;
        return Ok(Some(Backend::CopyBothResponse));
    }
    match backend::Message::parse(buf) {
        Ok(Some(message)) => Ok(Some(Backend::Message(message))),
        Ok(None) => Err(protocol("frame vanished while parsing")),
        Err(e) => Err(protocol(format!(
            "bad `{}` message from server: {e}",
            char::from(header.tag())
        ))),
    }
}

/// Validates CopyBothResponse: format (i8), column count (i16), formats (i16 each).
fn parse_copy_both_response(mut body: Bytes) -> Result<(), ReplicationError> {
    if body.remaining() < 3 {
        return Err(protocol("CopyBothResponse too short"));
    }
    let _format = body.get_i8();
    let columns = usize::try_from(body.get_i16())
        .map_err(|_| protocol("CopyBothResponse has a negative column count"))?;
    if body.remaining() != columns * 2 {
        return Err(protocol(
            "CopyBothResponse length does not match its column count",
        ));
    }
    Ok(())
}

/// Decodes the payload of a CopyData message in the replication stream.
pub(crate) fn parse_replication_payload(
    mut data: Bytes,
) -> Result<ReplicationMessage, ReplicationError> {
    if data.is_empty() {
        return Err(protocol("empty CopyData in replication stream"));
    }
    match data.get_u8() {
        XLOG_DATA_TAG => {
            if data.remaining() < 24 {
                return Err(protocol("XLogData header truncated"));
            }
            let wal_start = data.get_u64();
            let wal_end = data.get_u64();
            let server_time = data.get_i64();
            Ok(ReplicationMessage::XLogData {
                wal_start,
                wal_end,
                server_time,
                data,
            })
        }
        KEEPALIVE_TAG => {
            if data.remaining() != 17 {
                return Err(protocol(format!(
                    "keepalive has {} bytes after its tag, expected 17",
                    data.remaining()
                )));
            }
            let wal_end = data.get_u64();
            let server_time = data.get_i64();
            let reply_requested = data.get_u8() != 0;
            Ok(ReplicationMessage::Keepalive {
                wal_end,
                server_time,
                reply_requested,
            })
        }
        tag => Err(protocol(format!(
            "unknown replication message `{}` (0x{tag:02x})",
            char::from(tag)
        ))),
    }
}

/// Appends a CopyData frame holding a standby status update (`r`).
pub(crate) fn encode_standby_status(
    write: u64,
    flush: u64,
    apply: u64,
    client_time: i64,
    reply_requested: bool,
    out: &mut BytesMut,
) {
    const BODY_LEN: i32 = 1 + 8 + 8 + 8 + 8 + 1;
    out.put_u8(b'd');
    out.put_i32(4 + BODY_LEN);
    out.put_u8(STANDBY_STATUS_TAG);
    out.put_u64(write);
    out.put_u64(flush);
    out.put_u64(apply);
    out.put_i64(client_time);
    out.put_u8(u8::from(reply_requested));
}

/// Now, in µs since 2000-01-01 (the clock unit of the replication protocol).
pub(crate) fn pg_now_micros() -> i64 {
    let unix_micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    unix_micros - PG_EPOCH_UNIX_SECS * 1_000_000
}

/// Fields of an ErrorResponse or NoticeResponse.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct ServerFields {
    pub(crate) severity: String,
    pub(crate) code: String,
    pub(crate) message: String,
    pub(crate) detail: Option<String>,
    pub(crate) hint: Option<String>,
}

impl ServerFields {
    /// Reads the fields postgres-protocol exposes for an ErrorResponse/NoticeResponse.
    pub(crate) fn parse(
        mut fields: backend::ErrorFields<'_>,
    ) -> Result<ServerFields, ReplicationError> {
        let mut out = ServerFields::default();
        let mut localized_severity = None;
        while let Some(field) = fields.next().map_err(|e| protocol(e.to_string()))? {
            let value = String::from_utf8_lossy(field.value_bytes()).into_owned();
            match field.type_() {
                // `V` is never translated, so prefer it over `S`.
                b'V' => out.severity = value,
                b'S' => localized_severity = Some(value),
                b'C' => out.code = value,
                b'M' => out.message = value,
                b'D' => out.detail = Some(value),
                b'H' => out.hint = Some(value),
                _ => {}
            }
        }
        if out.severity.is_empty() {
            out.severity = localized_severity.unwrap_or_else(|| "ERROR".to_owned());
        }
        Ok(out)
    }

    /// The error callers see for a server ErrorResponse.
    pub(crate) fn into_error(self) -> ReplicationError {
        ReplicationError::Server {
            severity: self.severity,
            code: self.code,
            message: self.message,
            detail: self.detail,
            hint: self.hint,
        }
    }
}

/// Text columns of a DataRow (`None` = NULL); the connection's encoding is UTF-8.
pub(crate) fn data_row_text(
    row: &backend::DataRowBody,
) -> Result<Vec<Option<String>>, ReplicationError> {
    let buffer = row.buffer();
    row.ranges()
        .map_err(|e| protocol(e.to_string()))
        .map(|range| {
            range
                .map(|r| {
                    let bytes = buffer
                        .get(r)
                        .ok_or_else(|| protocol("DataRow column out of bounds"))?;
                    String::from_utf8(bytes.to_vec())
                        .map_err(|_| protocol("DataRow column is not UTF-8"))
                })
                .transpose()
        })
        .collect()
}

/// Parses an LSN in Postgres text form (`16/B374D848`) with [`Lsn`]; a malformed
/// one from the server is a protocol error.
pub(crate) fn parse_lsn(text: &str) -> Result<u64, ReplicationError> {
    text.parse::<Lsn>()
        .map(|lsn| lsn.0)
        .map_err(|e| protocol(e.to_string()))
}

pub(super) fn auth_err(message: impl Into<String>) -> ReplicationError {
    ReplicationError::Auth {
        message: message.into(),
    }
}

/// Class 28 SQLSTATEs (invalid authorization) are Auth, the rest stay Server.
pub(super) fn startup_error(fields: ServerFields) -> ReplicationError {
    if fields.code.starts_with("28") {
        auth_err(format!("{} (SQLSTATE {})", fields.message, fields.code))
    } else {
        fields.into_error()
    }
}

pub(super) fn unexpected(during: &str, message: &Backend) -> ReplicationError {
    let what = match message {
        Backend::CopyBothResponse => "CopyBothResponse",
        Backend::Message(backend::Message::CopyInResponse(_)) => "CopyInResponse",
        Backend::Message(backend::Message::CopyOutResponse(_)) => "CopyOutResponse",
        Backend::Message(backend::Message::CopyData(_)) => "CopyData",
        Backend::Message(backend::Message::ReadyForQuery(_)) => "ReadyForQuery",
        Backend::Message(backend::Message::AuthenticationOk) => "AuthenticationOk",
        _ => "another message",
    };
    ReplicationError::Protocol(format!("unexpected {what} during {during}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    fn xlog(wal_start: u64, wal_end: u64, time: i64, data: &[u8]) -> Vec<u8> {
        let mut v = vec![b'w'];
        v.extend_from_slice(&wal_start.to_be_bytes());
        v.extend_from_slice(&wal_end.to_be_bytes());
        v.extend_from_slice(&time.to_be_bytes());
        v.extend_from_slice(data);
        v
    }

    #[test]
    fn replication_frame_partial_frames_consume_nothing() {
        let full = frame(b'W', &[0, 0, 0]);
        let mut buf = BytesMut::new();
        for (i, byte) in full.iter().enumerate() {
            let before = buf.len();
            let got = take_message(&mut buf).map_err(|e| e.to_string());
            assert!(matches!(got, Ok(None)), "byte {i}");
            assert_eq!(buf.len(), before, "partial frame consumed at byte {i}");
            buf.put_u8(*byte);
        }
        assert!(matches!(
            take_message(&mut buf),
            Ok(Some(Backend::CopyBothResponse))
        ));
        assert!(buf.is_empty());
    }

    #[test]
    fn replication_frame_two_frames_in_one_read() {
        let mut bytes = frame(b'd', &xlog(1, 2, 3, b"B"));
        bytes.extend(frame(b'Z', b"I"));
        let mut buf = BytesMut::from(&bytes[..]);
        match take_message(&mut buf) {
            Ok(Some(Backend::Message(backend::Message::CopyData(body)))) => {
                let msg = parse_replication_payload(body.into_bytes());
                assert!(matches!(
                    msg,
                    Ok(ReplicationMessage::XLogData { wal_start: 1, .. })
                ));
            }
            _ => panic!("expected CopyData"),
        }
        match take_message(&mut buf) {
            Ok(Some(Backend::Message(backend::Message::ReadyForQuery(b)))) => {
                assert_eq!(b.status(), b'I')
            }
            _ => panic!("expected ReadyForQuery"),
        }
        assert!(matches!(take_message(&mut buf), Ok(None)));
    }

    #[test]
    fn replication_frame_rejects_oversized_and_garbage() {
        let mut buf = BytesMut::new();
        buf.put_u8(b'd');
        buf.put_u32((MAX_FRAME_LEN + 5) as u32);
        let err = take_message(&mut buf).err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("1 GiB")));

        let mut buf = BytesMut::from(&[b'd', 0, 0, 0, 2][..]);
        assert!(matches!(
            take_message(&mut buf),
            Err(ReplicationError::Protocol(_))
        ));

        let mut buf = BytesMut::from(&frame(b'?', b"")[..]);
        assert!(matches!(
            take_message(&mut buf),
            Err(ReplicationError::Protocol(_))
        ));

        let mut buf = BytesMut::from(&frame(b'W', &[0, 0, 2, 0, 0])[..]);
        assert!(matches!(
            take_message(&mut buf),
            Err(ReplicationError::Protocol(_))
        ));
    }

    #[test]
    fn replication_frame_xlogdata_and_keepalive() {
        let msg = parse_replication_payload(Bytes::from(xlog(0x10, 0x20, -5, b"Ihello")));
        assert_eq!(
            msg.ok(),
            Some(ReplicationMessage::XLogData {
                wal_start: 0x10,
                wal_end: 0x20,
                server_time: -5,
                data: Bytes::from_static(b"Ihello"),
            })
        );
        let mut k = vec![b'k'];
        k.extend_from_slice(&0x1_0000_0001u64.to_be_bytes());
        k.extend_from_slice(&42i64.to_be_bytes());
        k.push(1);
        assert_eq!(
            parse_replication_payload(Bytes::from(k.clone())).ok(),
            Some(ReplicationMessage::Keepalive {
                wal_end: 0x1_0000_0001,
                server_time: 42,
                reply_requested: true,
            })
        );
        k.pop();
        assert!(parse_replication_payload(Bytes::from(k)).is_err());
        assert!(parse_replication_payload(Bytes::from_static(b"w123")).is_err());
        assert!(parse_replication_payload(Bytes::from_static(b"x")).is_err());
        assert!(parse_replication_payload(Bytes::new()).is_err());
    }

    #[test]
    fn replication_frame_standby_status_layout() {
        let mut out = BytesMut::new();
        encode_standby_status(1, 2, 3, 4, true, &mut out);
        assert_eq!(out.len(), 1 + 4 + 34);
        assert_eq!(out[0], b'd');
        assert_eq!(&out[1..5], &38i32.to_be_bytes());
        assert_eq!(out[5], b'r');
        assert_eq!(&out[6..14], &1u64.to_be_bytes());
        assert_eq!(&out[14..22], &2u64.to_be_bytes());
        assert_eq!(&out[22..30], &3u64.to_be_bytes());
        assert_eq!(&out[30..38], &4i64.to_be_bytes());
        assert_eq!(out[38], 1);
    }

    #[test]
    fn replication_frame_error_response_fields() {
        let body = b"SERROR\0VERROR\0C55006\0Mreplication slot \"s\" is active for PID 7\0\
                     Dsome detail\0Hsome hint\0\0";
        let mut buf = BytesMut::from(&frame(b'E', body)[..]);
        let Ok(Some(Backend::Message(backend::Message::ErrorResponse(e)))) = take_message(&mut buf)
        else {
            panic!("expected ErrorResponse");
        };
        let fields = ServerFields::parse(e.fields()).map_err(|e| e.to_string());
        let err = fields.map(ServerFields::into_error);
        let Ok(err) = err else { panic!("{err:?}") };
        assert_eq!(err.sqlstate(), Some("55006"));
        assert!(err.is_transient());
        let ReplicationError::Server {
            severity,
            message,
            detail,
            hint,
            ..
        } = err
        else {
            panic!("not Server")
        };
        assert_eq!(severity, "ERROR");
        assert!(message.contains("is active for PID 7"));
        assert_eq!(detail.as_deref(), Some("some detail"));
        assert_eq!(hint.as_deref(), Some("some hint"));
    }

    #[test]
    fn replication_frame_data_row_nulls() {
        let mut body = Vec::new();
        body.extend_from_slice(&2i16.to_be_bytes());
        body.extend_from_slice(&3i32.to_be_bytes());
        body.extend_from_slice(b"abc");
        body.extend_from_slice(&(-1i32).to_be_bytes());
        let mut buf = BytesMut::from(&frame(b'D', &body)[..]);
        let Ok(Some(Backend::Message(backend::Message::DataRow(row)))) = take_message(&mut buf)
        else {
            panic!("expected DataRow");
        };
        assert_eq!(
            data_row_text(&row).ok(),
            Some(vec![Some("abc".to_owned()), None])
        );
    }

    #[test]
    fn replication_frame_lsn_text() {
        assert_eq!(parse_lsn("16/B374D848").ok(), Some(0x16_B374_D848));
        assert_eq!(parse_lsn("0/0").ok(), Some(0));
        assert!(parse_lsn("16B374D848").is_err());
        assert!(parse_lsn("x/1").is_err());
        assert_eq!(Lsn(0x16_B374_D848).to_string(), "16/B374D848");
        assert_eq!(Lsn(0).to_string(), "0/0");
    }
}
