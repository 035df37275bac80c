//! Test-only encoder: builds pgoutput v1/v2 bytes from a [`Message`], written
//! straight from the protocol docs so the decoder tests do not depend on the
//! decoder to make their input.

use super::{Column, Datum, Message, OldTuple, Relation, ReplicaIdentity, Tuple};

/// The message as sent outside a streamed block.
pub(crate) fn encode(message: &Message) -> Vec<u8> {
    encode_with(message, None)
}

/// The message as sent inside a streamed block: data messages carry `xid`
/// right after the tag; the others are sent as outside one.
pub(crate) fn encode_in_stream(xid: u32, message: &Message) -> Vec<u8> {
    encode_with(message, Some(xid))
}

/// Whether a message with this tag carries the xid inside a streamed block (per the
/// protocol docs, kept apart from the decoder's own list so a slip in either shows).
pub(crate) fn carries_xid_in_stream(tag: u8) -> bool {
    matches!(tag, b'R' | b'Y' | b'I' | b'U' | b'D' | b'T' | b'M')
}

fn encode_with(message: &Message, xid: Option<u32>) -> Vec<u8> {
    let mut out = encode_body(message);
    if let Some(xid) = xid.filter(|_| carries_xid_in_stream(out[0])) {
        out.splice(1..1, xid.to_be_bytes());
    }
    out
}

fn encode_body(message: &Message) -> Vec<u8> {
    let mut out = Vec::new();
    match message {
        Message::Begin {
            final_lsn,
            commit_time,
            xid,
        } => {
            out.push(b'B');
            out.extend(final_lsn.to_be_bytes());
            out.extend(commit_time.to_be_bytes());
            out.extend(xid.to_be_bytes());
        }
        Message::Commit {
            flags,
            commit_lsn,
            end_lsn,
            commit_time,
        } => {
            out.push(b'C');
            out.push(*flags);
            out.extend(commit_lsn.to_be_bytes());
            out.extend(end_lsn.to_be_bytes());
            out.extend(commit_time.to_be_bytes());
        }
        Message::Origin { commit_lsn, name } => {
            out.push(b'O');
            out.extend(commit_lsn.to_be_bytes());
            cstr(&mut out, name);
        }
        Message::Relation(relation) => relation_body(&mut out, relation),
        Message::Type {
            id,
            namespace,
            name,
        } => {
            out.push(b'Y');
            out.extend(id.to_be_bytes());
            cstr(&mut out, namespace);
            cstr(&mut out, name);
        }
        Message::Insert { relation_id, new } => {
            out.push(b'I');
            out.extend(relation_id.to_be_bytes());
            out.push(b'N');
            tuple(&mut out, new);
        }
        Message::Update {
            relation_id,
            old,
            new,
        } => {
            out.push(b'U');
            out.extend(relation_id.to_be_bytes());
            if let Some(old) = old {
                old_tuple(&mut out, old);
            }
            out.push(b'N');
            tuple(&mut out, new);
        }
        Message::Delete { relation_id, old } => {
            out.push(b'D');
            out.extend(relation_id.to_be_bytes());
            old_tuple(&mut out, old);
        }
        Message::Truncate {
            options,
            relation_ids,
        } => {
            out.push(b'T');
            out.extend(len32(relation_ids.len()).to_be_bytes());
            out.push(*options);
            for id in relation_ids {
                out.extend(id.to_be_bytes());
            }
        }
        Message::Message {
            transactional,
            lsn,
            prefix,
            content,
        } => {
            out.push(b'M');
            out.push(u8::from(*transactional));
            out.extend(lsn.to_be_bytes());
            cstr(&mut out, prefix);
            out.extend(len32(content.len()).to_be_bytes());
            out.extend_from_slice(content);
        }
        Message::StreamStart { xid, first_segment } => {
            out.push(b'S');
            out.extend(xid.to_be_bytes());
            out.push(u8::from(*first_segment));
        }
        Message::StreamStop => out.push(b'E'),
        Message::StreamCommit {
            xid,
            flags,
            commit_lsn,
            end_lsn,
            commit_time,
        } => {
            out.push(b'c');
            out.extend(xid.to_be_bytes());
            out.push(*flags);
            out.extend(commit_lsn.to_be_bytes());
            out.extend(end_lsn.to_be_bytes());
            out.extend(commit_time.to_be_bytes());
        }
        Message::StreamAbort { xid, subxid } => {
            out.push(b'A');
            out.extend(xid.to_be_bytes());
            out.extend(subxid.to_be_bytes());
        }
    }
    out
}

fn relation_body(out: &mut Vec<u8>, relation: &Relation) {
    out.push(b'R');
    out.extend(relation.id.to_be_bytes());
    cstr(out, &relation.namespace);
    cstr(out, &relation.name);
    out.push(match relation.replica_identity {
        ReplicaIdentity::Default => b'd',
        ReplicaIdentity::Nothing => b'n',
        ReplicaIdentity::Full => b'f',
        ReplicaIdentity::Index => b'i',
    });
    out.extend(len16(relation.columns.len()).to_be_bytes());
    for Column {
        is_key,
        name,
        type_oid,
        type_modifier,
    } in &relation.columns
    {
        out.push(u8::from(*is_key));
        cstr(out, name);
        out.extend(type_oid.to_be_bytes());
        out.extend(type_modifier.to_be_bytes());
    }
}

fn old_tuple(out: &mut Vec<u8>, old: &OldTuple) {
    match old {
        OldTuple::Key(t) => {
            out.push(b'K');
            tuple(out, t);
        }
        OldTuple::Full(t) => {
            out.push(b'O');
            tuple(out, t);
        }
    }
}

fn tuple(out: &mut Vec<u8>, Tuple(datums): &Tuple) {
    out.extend(len16(datums.len()).to_be_bytes());
    for datum in datums {
        match datum {
            Datum::Null => out.push(b'n'),
            Datum::UnchangedToast => out.push(b'u'),
            Datum::Text(bytes) | Datum::Binary(bytes) => {
                out.push(if matches!(datum, Datum::Text(_)) {
                    b't'
                } else {
                    b'b'
                });
                out.extend(len32(bytes.len()).to_be_bytes());
                out.extend_from_slice(bytes);
            }
        }
    }
}

fn cstr(out: &mut Vec<u8>, s: &str) {
    assert!(!s.contains('\0'), "test strings must not contain NUL");
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

fn len16(n: usize) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX)
}

fn len32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}
