//! Packed values: JSON values as compact bytes, written and read without a
//! `serde_json::Value` in between.
//!
//! The journal's records keep row values in this form, and a [`Row`] built by
//! the reader or read back from the journal holds its values packed: one
//! buffer per row instead of a heap object per column. It serialises straight
//! from the bytes, to the same JSON a `Value` would give, number text included.
//!
//! ```text
//!  value  = NULL | FALSE | TRUE
//!         | INT    zigzag varint   (an integer whose text is the i64's canonical form)
//!         | NUMBER text            (any other JSON number, as its text)
//!         | STRING text
//!         | ARRAY  count value*
//!         | OBJECT count (text value)*
//!  text   = length varint, UTF-8 bytes
//! ```
//!
//! Integers are LEB128 varints (signed ones zigzag).
//!
//! [`Row`]: crate::row::Row

use std::borrow::Cow;
use std::cell::Cell;

use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};
use serde_json::{Map, Number, Value};

use crate::value::{
    bytea_base64_len, bytea_hex_to_base64, decode_text, is_digits, iso_datetime_len, kept_as_text,
    parse_array, ArrayNode, PgType,
};

/// Deeper than any value can be: json/jsonb values are refused past
/// `MAX_JSON_DEPTH` when decoded, and the event adds a few levels. Bytes
/// deeper than this are corrupt (and would otherwise recurse without bound).
pub const MAX_DEPTH: usize = crate::value::MAX_JSON_DEPTH + 16;

const NULL: u8 = 0;
const FALSE: u8 = 1;
const TRUE: u8 = 2;
/// An integer number whose text is the canonical form of an i64 (zigzag varint).
const INT: u8 = 3;
/// Any other number, as its text.
const NUMBER: u8 = 4;
const STRING: u8 = 5;
const ARRAY: u8 = 6;
const OBJECT: u8 = 7;

mod json;

/// Appends `n` as a LEB128 varint.
pub fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    // Byte by byte: most are one or two bytes long, and copying a slice of
    // unknown length calls `memcpy` (1.5% of a stream's samples).
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// Writes `n` as a LEB128 varint into `out` (what [`put_varint`] appends);
/// returns its length.
pub fn varint_into(out: &mut [u8; 10], mut n: u64) -> usize {
    let mut i = 0;
    while n >= 0x80 {
        out[i] = (n as u8) | 0x80;
        n >>= 7;
        i += 1;
    }
    out[i] = n as u8;
    i + 1
}

/// Appends `n` zigzag-encoded.
pub fn put_zigzag(out: &mut Vec<u8>, n: i64) {
    put_varint(out, ((n << 1) ^ (n >> 63)) as u64);
}

/// Appends length-prefixed text.
pub fn put_str(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// Appends length-prefixed bytes.
pub fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// Appends null.
pub fn put_null(out: &mut Vec<u8>) {
    out.push(NULL);
}

/// Appends a boolean.
pub fn put_bool(out: &mut Vec<u8>, b: bool) {
    out.push(if b { TRUE } else { FALSE });
}

/// Appends the start of an array of `len` values (which the caller appends next).
pub fn put_array_header(out: &mut Vec<u8>, len: usize) {
    out.push(ARRAY);
    put_varint(out, len as u64);
}

/// Appends a JSON string.
pub fn put_string(out: &mut Vec<u8>, s: &str) {
    out.push(STRING);
    put_str(out, s);
}

/// Appends the JSON number whose text is `text` (which must be JSON number syntax).
pub fn put_number_text(out: &mut Vec<u8>, text: &str) {
    match canonical_i64(text) {
        Some(i) => {
            out.push(INT);
            put_zigzag(out, i);
        }
        None => {
            out.push(NUMBER);
            put_str(out, text);
        }
    }
}

/// The i64 whose `to_string` is `s` exactly, if any (so that `Number::from` gives
/// back the same text).
pub fn canonical_i64(s: &str) -> Option<i64> {
    let digits = s.strip_prefix('-').unwrap_or(s);
    let canonical = !digits.is_empty()
        && digits.len() <= 18
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'))
        && s != "-0";
    if canonical {
        s.parse().ok()
    } else {
        None
    }
}

/// Appends `v`.
pub fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Null => put_null(out),
        Value::Bool(b) => put_bool(out, *b),
        Value::Number(n) => put_number_text(out, n.as_str()),
        Value::String(s) => put_string(out, s),
        Value::Array(items) => {
            out.push(ARRAY);
            put_varint(out, items.len() as u64);
            for item in items {
                put_value(out, item);
            }
        }
        Value::Object(map) => {
            out.push(OBJECT);
            put_varint(out, map.len() as u64);
            for (k, item) in map {
                put_str(out, k);
                put_value(out, item);
            }
        }
    }
}

/// Appends the packed form of one value's text form: what
/// `put_value(out, &decode_text(ty, text))` appends, without building
/// the `Value` for the types a row mostly holds.
pub fn pack_text(ty: &PgType, text: &str, out: &mut Vec<u8>) {
    match ty {
        PgType::Int2 | PgType::Int4 | PgType::Int8 | PgType::Oid
            if canonical_i64(text)
                .is_some_and(|n| *ty != PgType::Oid || u32::try_from(n).is_ok()) =>
        {
            put_number_text(out, text)
        }
        PgType::Bool if text == "t" || text == "f" => put_bool(out, text == "t"),
        PgType::TimestampTz if pack_timestamptz(text, out) => {}
        PgType::Jsonb if json::pack_jsonb(text, out) => {}
        PgType::Array(elem) if pack_array(elem, text, out) => {}
        PgType::Bytea if pack_bytea_hex(text, out) => {}
        _ if kept_as_text(ty) => put_string(out, text),
        _ => put_value(out, &decode_text(ty, text)),
    }
}

/// Appends a `\x` hex bytea as the base64 string `decode_text` gives for it,
/// straight from the hex; false (nothing appended) when it is not hex.
fn pack_bytea_hex(text: &str, out: &mut Vec<u8>) -> bool {
    let Some(len) = bytea_base64_len(text) else {
        return false;
    };
    let start = out.len();
    out.push(STRING);
    put_varint(out, len as u64);
    if bytea_hex_to_base64(text, out).is_none() {
        out.truncate(start);
        return false;
    }
    true
}

/// Appends the packed form of an array literal (what `put_value` appends for
/// its decoded value) with each element packed from its text; false (nothing
/// appended) when malformed.
fn pack_array(elem: &PgType, text: &str, out: &mut Vec<u8>) -> bool {
    fn node(elem: &PgType, n: &ArrayNode<'_>, out: &mut Vec<u8>) {
        match n {
            ArrayNode::Null => put_null(out),
            ArrayNode::Item(text) => pack_text(elem, text, out),
            ArrayNode::List(items) => {
                put_array_header(out, items.len());
                for item in items {
                    node(elem, item, out);
                }
            }
        }
    }
    let Some(root) = parse_array(text) else {
        return false;
    };
    node(elem, &root, out);
    true
}

/// What `decode_timestamptz` gives, packed, without building it on the heap;
/// false (nothing written) where it would keep the text.
pub(crate) fn pack_timestamptz(text: &str, out: &mut Vec<u8>) -> bool {
    let b = text.as_bytes();
    let Some(end) = iso_datetime_len(b) else {
        return false;
    };
    // The offset, as normalize_offset writes it: ±HH:MM[:SS].
    let rest = &b[end..];
    let Some(&sign) = rest.first().filter(|s| matches!(s, b'+' | b'-')) else {
        return false;
    };
    let mut offset = [sign, b'0', b'0', b':', b'0', b'0', b':', b'0', b'0'];
    let mut offset_len = 6;
    let mut parts = rest[1..].split(|&c| c == b':');
    for (i, at) in [1usize, 4, 7].into_iter().enumerate() {
        match parts.next() {
            Some(p) if p.len() == 2 && is_digits(p) => {
                offset[at..at + 2].copy_from_slice(p);
                if i == 2 {
                    offset_len = 9;
                }
            }
            None if i > 0 => break,
            _ => return false,
        }
    }
    if parts.next().is_some() {
        return false;
    }
    let utc = offset_len == 6 && &offset[1..6] == b"00:00";
    let tail: &[u8] = if utc { b"Z" } else { &offset[..offset_len] };
    out.push(STRING);
    put_varint(out, (end + tail.len()) as u64);
    out.extend_from_slice(&b[..10]);
    out.push(b'T');
    out.extend_from_slice(&b[11..end]);
    out.extend_from_slice(tail);
    true
}

/// What is wrong with packed bytes.
pub type Bad = String;

/// A cursor over packed bytes; every read checks the bounds.
#[derive(Clone)]
pub struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, at: 0 }
    }

    /// Whether every byte was read.
    pub fn done(&self) -> bool {
        self.at == self.bytes.len()
    }

    /// The offset of the next byte.
    pub fn at(&self) -> usize {
        self.at
    }

    /// The bytes from `from` to the cursor.
    pub fn since(&self, from: usize) -> &'a [u8] {
        &self.bytes[from.min(self.at)..self.at]
    }

    /// One byte.
    pub fn u8(&mut self) -> Result<u8, Bad> {
        let b = *self
            .bytes
            .get(self.at)
            .ok_or_else(|| format!("record ends early at byte {}", self.at))?;
        self.at += 1;
        Ok(b)
    }

    /// A varint.
    #[inline]
    pub fn varint(&mut self) -> Result<u64, Bad> {
        // Most varints here (column refs, lengths, small numbers) are one byte.
        if let Some(&b) = self.bytes.get(self.at) {
            if b < 0x80 {
                self.at += 1;
                return Ok(u64::from(b));
            }
        }
        let mut n = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            n |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(n);
            }
        }
        Err(format!("varint too long at byte {}", self.at))
    }

    /// A zigzag varint.
    pub fn zigzag(&mut self) -> Result<i64, Bad> {
        let n = self.varint()?;
        Ok(((n >> 1) as i64) ^ -((n & 1) as i64))
    }

    /// A count of items still to come, bounded by the bytes left (each item takes
    /// at least one), so a corrupt count cannot reserve unbounded memory.
    pub fn count(&mut self) -> Result<usize, Bad> {
        let n = self.varint()?;
        let left = (self.bytes.len() - self.at) as u64;
        if n > left {
            return Err(format!("count {n} exceeds the {left} bytes left"));
        }
        Ok(n as usize)
    }

    /// Length-prefixed text.
    pub fn str(&mut self) -> Result<&'a str, Bad> {
        let len = self.count()?;
        let raw = &self.bytes[self.at..self.at + len];
        self.at += len;
        std::str::from_utf8(raw).map_err(|e| format!("text is not UTF-8: {e}"))
    }

    /// Length-prefixed bytes.
    pub fn bytes(&mut self) -> Result<&'a [u8], Bad> {
        let len = self.count()?;
        let raw = &self.bytes[self.at..self.at + len];
        self.at += len;
        Ok(raw)
    }

    /// Length-prefixed text, with any bytes that are not UTF-8 replaced (as the
    /// reader does with a value that is not): what a row's values read as.
    pub fn str_lossy(&mut self) -> Result<Cow<'a, str>, Bad> {
        let len = self.count()?;
        let raw = &self.bytes[self.at..self.at + len];
        self.at += len;
        // `from_utf8` first: it is much faster than the lossy decoder on valid text.
        Ok(match std::str::from_utf8(raw) {
            Ok(s) => Cow::Borrowed(s),
            Err(_) => String::from_utf8_lossy(raw),
        })
    }

    /// Steps over length-prefixed text.
    fn skip_str(&mut self) -> Result<(), Bad> {
        let len = self.count()?;
        self.at += len;
        Ok(())
    }

    /// Length-prefixed text, owned.
    pub fn string(&mut self) -> Result<String, Bad> {
        self.str().map(str::to_string)
    }

    /// Steps over one value, checking its structure (tags, counts, depth) but
    /// not its text: [`Packed`] and [`Reader::value_lossy`] read text as UTF-8
    /// where they use it.
    pub fn skip_value(&mut self) -> Result<(), Bad> {
        self.skip_at(0)
    }

    fn skip_at(&mut self, depth: usize) -> Result<(), Bad> {
        if depth > MAX_DEPTH {
            return Err(format!("value nested deeper than {MAX_DEPTH} levels"));
        }
        match self.u8()? {
            NULL | FALSE | TRUE => {}
            INT => {
                self.varint()?;
            }
            NUMBER | STRING => self.skip_str()?,
            ARRAY => {
                for _ in 0..self.count()? {
                    self.skip_at(depth + 1)?;
                }
            }
            OBJECT => {
                for _ in 0..self.count()? {
                    self.skip_str()?;
                    self.skip_at(depth + 1)?;
                }
            }
            tag => return Err(format!("unknown value tag {tag} at byte {}", self.at - 1)),
        }
        Ok(())
    }

    /// A value whose structure [`Reader::skip_value`] checked: text that is not
    /// UTF-8 is replaced, a number that does not parse is kept as its text.
    pub fn value_lossy(&mut self) -> Result<Value, Bad> {
        self.lossy_at(0)
    }

    fn lossy_at(&mut self, depth: usize) -> Result<Value, Bad> {
        if depth > MAX_DEPTH {
            return Err(format!("value nested deeper than {MAX_DEPTH} levels"));
        }
        Ok(match self.u8()? {
            NULL => Value::Null,
            FALSE => Value::Bool(false),
            TRUE => Value::Bool(true),
            INT => Value::Number(Number::from(self.zigzag()?)),
            NUMBER => {
                let text = self.str_lossy()?;
                match text.parse::<Number>() {
                    Ok(n) => Value::Number(n),
                    Err(_) => Value::String(text.into_owned()),
                }
            }
            STRING => Value::String(self.str_lossy()?.into_owned()),
            ARRAY => {
                let n = self.count()?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.lossy_at(depth + 1)?);
                }
                Value::Array(items)
            }
            OBJECT => {
                let n = self.count()?;
                let mut map = Map::with_capacity(n);
                for _ in 0..n {
                    let k = self.str_lossy()?.into_owned();
                    map.insert(k, self.lossy_at(depth + 1)?);
                }
                Value::Object(map)
            }
            tag => return Err(format!("unknown value tag {tag} at byte {}", self.at - 1)),
        })
    }
}

/// One item of packed bytes, as [`Reader::item`] reads it: a scalar, or the
/// number of items (an array's values, an object's key and value pairs) that follow.
pub(crate) enum Item<'a> {
    Null,
    Bool(bool),
    Int(i64),
    /// A number that is not an i64's canonical text, as its text.
    Number(Text<'a>),
    String(Text<'a>),
    /// An array of this many values.
    Array(usize),
    /// An object of this many (key, value) pairs; each key is read with [`Reader::str_lossy`].
    Object(usize),
}

/// Text of an [`Item`] as its bytes, which should be UTF-8.
#[derive(Clone, Copy)]
pub(crate) struct Text<'a>(pub(crate) &'a [u8]);

impl<'a> Text<'a> {
    /// The text, with bytes that are not UTF-8 replaced (as [`Reader::str_lossy`]).
    pub(crate) fn lossy(self) -> Cow<'a, str> {
        match std::str::from_utf8(self.0) {
            Ok(s) => Cow::Borrowed(s),
            Err(_) => String::from_utf8_lossy(self.0),
        }
    }
}

impl<'a> Reader<'a> {
    /// The next item (text that is not UTF-8 replaced, as [`Reader::value_lossy`] does).
    pub(crate) fn item(&mut self) -> Result<Item<'a>, Bad> {
        Ok(match self.u8()? {
            NULL => Item::Null,
            FALSE => Item::Bool(false),
            TRUE => Item::Bool(true),
            INT => Item::Int(self.zigzag()?),
            NUMBER => Item::Number(Text(self.bytes()?)),
            STRING => Item::String(Text(self.bytes()?)),
            ARRAY => Item::Array(self.count()?),
            OBJECT => Item::Object(self.count()?),
            tag => return Err(format!("unknown value tag {tag} at byte {}", self.at - 1)),
        })
    }
}

/// One packed value whose structure was checked when it was read or written:
/// serialises as the `Value` that [`Reader::value_lossy`] gives would, straight
/// from the bytes.
#[derive(Clone, Copy)]
pub(crate) struct Packed<'a>(pub(crate) &'a [u8]);

impl<'a> Packed<'a> {
    /// Whether the value is null.
    pub(crate) fn is_null(&self) -> bool {
        self.0.first() == Some(&NULL)
    }

    /// A reader at the value.
    pub(crate) fn reader(&self) -> Reader<'a> {
        Reader::new(self.0)
    }
}

impl Serialize for Packed<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        Next::new(&mut Reader::new(self.0)).serialize(serializer)
    }
}

/// The next value of a reader, serialised straight from its bytes; the reader
/// is then past it (so a row's bytes are walked once to serialise it).
pub(crate) struct Next<'r, 'a>(Cell<Option<&'r mut Reader<'a>>>);

impl<'r, 'a> Next<'r, 'a> {
    pub(crate) fn new(r: &'r mut Reader<'a>) -> Self {
        Next(Cell::new(Some(r)))
    }
}

impl Serialize for Next<'_, '_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::Error;
        let bad = |e: Bad| S::Error::custom(format!("packed value: {e}"));
        let r = self
            .0
            .take()
            .ok_or_else(|| bad("serialised twice".into()))?;
        match r.u8().map_err(bad)? {
            NULL => serializer.serialize_unit(),
            FALSE => serializer.serialize_bool(false),
            TRUE => serializer.serialize_bool(true),
            INT => serializer.serialize_i64(r.zigzag().map_err(bad)?),
            NUMBER => {
                let text = r.str_lossy().map_err(bad)?;
                match text.parse::<Number>() {
                    Ok(n) => n.serialize(serializer),
                    Err(_) => serializer.serialize_str(&text),
                }
            }
            STRING => serializer.serialize_str(&r.str_lossy().map_err(bad)?),
            ARRAY => {
                let n = r.count().map_err(bad)?;
                let mut seq = serializer.serialize_seq(Some(n))?;
                for _ in 0..n {
                    seq.serialize_element(&Next::new(r))?;
                }
                seq.end()
            }
            OBJECT => {
                let n = r.count().map_err(bad)?;
                let mut map = serializer.serialize_map(Some(n))?;
                for _ in 0..n {
                    let k = r.str_lossy().map_err(bad)?;
                    map.serialize_entry(&*k, &Next::new(r))?;
                }
                map.end()
            }
            tag => Err(bad(format!("unknown value tag {tag}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(v: &Value) -> Value {
        let mut out = Vec::new();
        put_value(&mut out, v);
        let mut skip = Reader::new(&out);
        assert!(skip.skip_value().is_ok());
        assert!(skip.done());
        let mut r = Reader::new(&out);
        let back = r.value_lossy().unwrap_or_else(|e| panic!("{e}"));
        assert!(r.done());
        assert_eq!(
            serde_json::to_string(&Packed(&out)).unwrap_or_default(),
            serde_json::to_string(v).unwrap_or_default(),
            "packed serialises as the value"
        );
        assert_eq!(serde_json::to_value(Packed(&out)).ok().as_ref(), Some(v));
        back
    }

    #[test]
    fn values_come_back_with_the_same_text() {
        let text = r#"[null, true, false, 0, -1, 42, -9223372036854775808, 9223372036854775807,
            18446744073709551615, 123456789012345678901234567890.0123456789, 1.50, -0, 1e5, -0.0,
            "é\n\"", {"b": 1, "a": [{}, []]}, "NaN"]"#;
        let v: Value = serde_json::from_str(text).unwrap_or_default();
        let back = round_trip(&v);
        assert_eq!(
            serde_json::to_string(&back).unwrap_or_default(),
            serde_json::to_string(&v).unwrap_or_default()
        );
        assert_eq!(back, v);
    }

    #[test]
    fn small_integers_take_two_bytes() {
        let mut out = Vec::new();
        put_value(&mut out, &Value::from(42));
        assert_eq!(out.len(), 2);
        assert_eq!(canonical_i64("007"), None);
        assert_eq!(canonical_i64("-0"), None);
        assert_eq!(canonical_i64("-12"), Some(-12));
    }

    #[test]
    fn corrupt_bytes_are_refused_not_trusted() {
        // A count far past the end, an unknown tag, a truncated string.
        for bytes in [&[ARRAY, 0xff, 0xff, 0x7f][..], &[9], &[STRING, 5, b'a']] {
            assert!(Reader::new(bytes).skip_value().is_err(), "{bytes:?}");
        }
        for bytes in [&[ARRAY, 0xff, 0xff, 0x7f][..], &[9], &[STRING, 5, b'a']] {
            assert!(Reader::new(bytes).value_lossy().is_err(), "{bytes:?}");
        }
        let mut deep = [ARRAY, 1].repeat(MAX_DEPTH + 2);
        deep.push(NULL);
        assert!(Reader::new(&deep).value_lossy().is_err());
        assert!(Reader::new(&deep).skip_value().is_err());
    }

    #[test]
    fn text_that_is_not_utf8_reads_replaced_not_lost() {
        // A string of bytes that are not UTF-8, a number that is not one.
        let bytes = [ARRAY, 2, STRING, 2, b'a', 0xff, NUMBER, 1, b'x'];
        assert!(Reader::new(&bytes).skip_value().is_ok());
        let v = Reader::new(&bytes).value_lossy().unwrap_or_default();
        assert_eq!(v, serde_json::json!(["a\u{fffd}", "x"]));
        assert_eq!(
            serde_json::to_string(&Packed(&bytes)).unwrap_or_default(),
            "[\"a\u{fffd}\",\"x\"]"
        );
    }
}
