//! The native event written as JSON straight into a byte buffer.
//!
//! [`write_event`] appends exactly the bytes `serde_json::to_writer(&event)`
//! gives (the stdout line, the HTTP body, the Kafka value of a sink without a
//! transform), walking a packed row's bytes once: strings are escaped as
//! serde_json escapes them, plain number text (Postgres' numeric) is
//! copied, and no serde state machine, `Number` or `Cow` is built per value.
//! `json_write::tests` checks the bytes against serde's on every column type.

use serde::Serialize;

use crate::event::{ChangeEvent, Column};
use crate::packed::{Bad, Reader};
use crate::row::{JsonValue, Row};
use crate::Lsn;

/// Appends the native JSON of `event` to `out` (the bytes `serde_json` writes for
/// it). On `Err` (a packed row whose bytes are damaged) `out` holds a partial
/// event: the caller drops what it appended.
pub fn write_event(event: &ChangeEvent, out: &mut Vec<u8>) -> Result<(), Bad> {
    out.reserve(event.packed_bytes() + 256);
    out.extend_from_slice(b"{\"id\":");
    write_str(out, event.id.as_str());
    out.extend_from_slice(b",\"op\":\"");
    out.extend_from_slice(event.op.as_str().as_bytes());
    out.extend_from_slice(b"\",\"schema\":");
    write_str(out, &event.schema);
    out.extend_from_slice(b",\"table\":");
    write_str(out, &event.table);
    for (field, row) in [
        (&b",\"key\":"[..], &event.key),
        (b",\"old\":", &event.old),
        (b",\"new\":", &event.new),
    ] {
        out.extend_from_slice(field);
        match row {
            Some(row) => row.write_json(out)?,
            None => out.extend_from_slice(b"null"),
        }
    }
    out.extend_from_slice(b",\"trigger\":");
    write_opt_str(out, event.trigger.as_deref());
    out.extend_from_slice(b",\"lsn\":\"");
    write_lsn(out, event.lsn);
    out.extend_from_slice(b"\",\"xid\":");
    match event.xid {
        Some(xid) => write_u64(out, u64::from(xid)),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"commit_time\":");
    write_opt_str(out, event.commit_time.as_deref());
    out.extend_from_slice(b",\"unchanged_toast\":[");
    for (i, name) in event.unchanged_toast.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(out, name);
    }
    out.push(b']');
    for (field, columns) in [
        (&b",\"columns\":"[..], &event.columns),
        (b",\"previous\":", &event.previous),
    ] {
        if let Some(columns) = columns {
            out.extend_from_slice(field);
            write_serde(out, columns.as_slice() as &[Column])?;
        }
    }
    out.push(b'}');
    Ok(())
}

/// The native JSON of `event` (see [`write_event`]).
pub fn to_vec(event: &ChangeEvent) -> Result<Vec<u8>, Bad> {
    let mut out = Vec::new();
    write_event(event, &mut out)?;
    Ok(out)
}

/// Appends `value` as serde_json writes it (the paths that are not hot).
pub(crate) fn write_serde<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) -> Result<(), Bad> {
    serde_json::to_writer(out, value).map_err(|e| e.to_string())
}

fn write_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => write_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

/// `Lsn`'s text (`{:X}/{:X}`), without the formatter.
fn write_lsn(out: &mut Vec<u8>, lsn: Lsn) {
    write_hex(out, (lsn.0 >> 32) as u32);
    out.push(b'/');
    write_hex(out, lsn.0 as u32);
}

fn write_hex(out: &mut Vec<u8>, n: u32) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let digits = (32 - (n | 1).leading_zeros()).div_ceil(4);
    for i in (0..digits).rev() {
        out.push(HEX[((n >> (4 * i)) & 0xF) as usize]);
    }
}

pub(crate) fn write_u64(out: &mut Vec<u8>, n: u64) {
    let mut buf = itoa::Buffer::new();
    out.extend_from_slice(buf.format(n).as_bytes());
}

pub(crate) fn write_i64(out: &mut Vec<u8>, n: i64) {
    let mut buf = itoa::Buffer::new();
    out.extend_from_slice(buf.format(n).as_bytes());
}

/// What serde_json writes for each byte of a string: 0 for the byte itself, else
/// the letter after the backslash (`u`: `\u00XX`).
const ESCAPE: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = b'u';
        b += 1;
    }
    table[0x08] = b'b';
    table[0x09] = b't';
    table[0x0A] = b'n';
    table[0x0C] = b'f';
    table[0x0D] = b'r';
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table
};

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// The 8 bytes at the start of `b` (which holds at least 8) as one word.
#[inline]
fn word(b: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[..8]);
    u64::from_le_bytes(w)
}

/// Whether one of the 8 bytes of `w` may need escaping (below 0x20, `"` or `\`);
/// a word that says no holds none. A yes is checked byte by byte.
#[inline]
fn may_escape(w: u64) -> bool {
    let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
    let control = w.wrapping_sub(ONES * 0x20) & !w & HIGHS;
    (control | zero(w ^ (ONES * u64::from(b'"'))) | zero(w ^ (ONES * u64::from(b'\\')))) != 0
}

/// Appends `s` as a JSON string, escaped as serde_json escapes it.
pub(crate) fn write_str(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let (mut start, mut i) = (0, 0);
    while i < bytes.len() {
        if i + 8 <= bytes.len() && !may_escape(word(&bytes[i..])) {
            i += 8;
            continue;
        }
        let b = bytes[i];
        let escape = ESCAPE[b as usize];
        i += 1;
        if escape == 0 {
            continue;
        }
        out.extend_from_slice(&bytes[start..i - 1]);
        start = i;
        if escape == b'u' {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.push(HEX[(b >> 4) as usize]);
            out.push(HEX[(b & 0xF) as usize]);
        } else {
            out.push(b'\\');
            out.push(escape);
        }
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Appends packed text (bytes that should be UTF-8) as a JSON string: ASCII
/// that needs no escape is copied as it is (one pass over the bytes), anything
/// else is checked as UTF-8 (bytes that are not replaced, as `str_lossy` does)
/// and escaped.
pub(crate) fn write_text(out: &mut Vec<u8>, raw: &[u8]) {
    let mut i = 0;
    while i + 8 <= raw.len() {
        let w = word(&raw[i..]);
        if w & HIGHS != 0 || may_escape(w) {
            break;
        }
        i += 8;
    }
    while i < raw.len() && raw[i] < 0x80 && ESCAPE[raw[i] as usize] == 0 {
        i += 1;
    }
    if i == raw.len() {
        out.reserve(raw.len() + 2);
        out.push(b'"');
        out.extend_from_slice(raw);
        out.push(b'"');
        return;
    }
    match std::str::from_utf8(raw) {
        Ok(s) => write_str(out, s),
        Err(_) => write_str(out, &String::from_utf8_lossy(raw)),
    }
}

/// Whether `s` is a plain JSON number (`-?(0|[1-9][0-9]*)(\.[0-9]+)?`, what
/// Postgres' integer and numeric text is): `serde_json::Number` parses it and
/// writes it back unchanged. Exponents are left to it (it writes `1e5` as `1e+5`).
pub(crate) fn is_plain_number(b: &[u8]) -> bool {
    let mut i = usize::from(b.first() == Some(&b'-'));
    let digits = |i: &mut usize| {
        let from = *i;
        while b.get(*i).is_some_and(u8::is_ascii_digit) {
            *i += 1;
        }
        *i - from
    };
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => {
            digits(&mut i);
        }
        _ => return false,
    }
    if b.get(i) == Some(&b'.') {
        i += 1;
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == b.len()
}

/// What goes between a container's items and after an object's keys.
pub(crate) struct Spacing {
    item: &'static [u8],
    key: &'static [u8],
}

/// serde_json's compact output: `[1,2]`, `{"a":1}`.
pub(crate) const COMPACT: Spacing = Spacing {
    item: b",",
    key: b":",
};

/// Postgres' jsonb output: `[1, 2]`, `{"a": 1}`.
pub(crate) const JSONB: Spacing = Spacing {
    item: b", ",
    key: b": ",
};

/// Appends the packed value at `r` as JSON (what `Packed`'s `Serialize` writes),
/// leaving `r` past it.
pub(crate) fn write_packed(r: &mut Reader<'_>, out: &mut Vec<u8>) -> Result<(), Bad> {
    write_packed_spaced(r, out, &COMPACT)
}

/// [`write_packed`] with `spacing` between items and after keys.
pub(crate) fn write_packed_spaced(
    r: &mut Reader<'_>,
    out: &mut Vec<u8>,
    spacing: &Spacing,
) -> Result<(), Bad> {
    use crate::packed::Item;
    match r.item()? {
        Item::Null => out.extend_from_slice(b"null"),
        Item::Bool(true) => out.extend_from_slice(b"true"),
        Item::Bool(false) => out.extend_from_slice(b"false"),
        Item::Int(n) => write_i64(out, n),
        Item::Number(text) if is_plain_number(text.0) => out.extend_from_slice(text.0),
        // As a `Value` read from the bytes prints: the number's text, or a string
        // when the text is not a number.
        Item::Number(text) => {
            let text = text.lossy();
            match text.parse::<serde_json::Number>() {
                Ok(n) => write_serde(out, &n)?,
                Err(_) => write_str(out, &text),
            }
        }
        Item::String(text) => write_text(out, text.0),
        Item::Array(n) => {
            out.push(b'[');
            for i in 0..n {
                if i > 0 {
                    out.extend_from_slice(spacing.item);
                }
                write_packed_spaced(r, out, spacing)?;
            }
            out.push(b']');
        }
        Item::Object(n) => {
            out.push(b'{');
            for i in 0..n {
                if i > 0 {
                    out.extend_from_slice(spacing.item);
                }
                write_text(out, r.bytes()?);
                out.extend_from_slice(spacing.key);
                write_packed_spaced(r, out, spacing)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

impl Row {
    /// Appends the row as a JSON object (the bytes its `Serialize` writes).
    pub fn write_json(&self, out: &mut Vec<u8>) -> Result<(), Bad> {
        out.push(b'{');
        let mut first = true;
        self.for_each_json_entry(|name, value| {
            if !first {
                out.push(b',');
            }
            first = false;
            write_str(out, name);
            out.push(b':');
            match value {
                JsonValue::Packed(r) => write_packed(r, out),
                JsonValue::Value(v) => write_serde(out, v),
            }
        })?;
        out.push(b'}');
        Ok(())
    }
}

#[cfg(test)]
mod tests;
