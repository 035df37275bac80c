//! The byte primitives of record v2: LEB128 varints, length-prefixed text and
//! JSON values (a value as the event holds it, so that decoding gives back the
//! same `serde_json::Value`, number text included).

use serde_json::{Map, Number, Value};

/// Deeper than any value can be: json/jsonb values are refused past
/// `MAX_JSON_DEPTH` when decoded, and the event adds a few levels. A record
/// deeper than this is corrupt (and would otherwise recurse without bound).
const MAX_DEPTH: usize = pgcdc_schema::value::MAX_JSON_DEPTH + 16;

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

pub(super) fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

pub(super) fn put_zigzag(out: &mut Vec<u8>, n: i64) {
    put_varint(out, ((n << 1) ^ (n >> 63)) as u64);
}

pub(super) fn put_str(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// The i64 whose `to_string` is `s` exactly, if any (so that `Number::from` gives
/// back the same text).
fn canonical_i64(s: &str) -> Option<i64> {
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

pub(super) fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Null => out.push(NULL),
        Value::Bool(false) => out.push(FALSE),
        Value::Bool(true) => out.push(TRUE),
        Value::Number(n) => {
            let text = n.as_str();
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
        Value::String(s) => {
            out.push(STRING);
            put_str(out, s);
        }
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

/// A cursor over a record's bytes; every read checks the bounds.
pub(super) struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

/// What is wrong with a record (becomes `JournalError::Corrupt`).
pub(super) type Bad = String;

impl<'a> Reader<'a> {
    pub(super) fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, at: 0 }
    }

    pub(super) fn done(&self) -> bool {
        self.at == self.bytes.len()
    }

    pub(super) fn u8(&mut self) -> Result<u8, Bad> {
        let b = *self
            .bytes
            .get(self.at)
            .ok_or_else(|| format!("record ends early at byte {}", self.at))?;
        self.at += 1;
        Ok(b)
    }

    pub(super) fn varint(&mut self) -> Result<u64, Bad> {
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

    pub(super) fn zigzag(&mut self) -> Result<i64, Bad> {
        let n = self.varint()?;
        Ok(((n >> 1) as i64) ^ -((n & 1) as i64))
    }

    /// A count of items still to come, bounded by the bytes left (each item takes
    /// at least one), so a corrupt count cannot reserve unbounded memory.
    pub(super) fn count(&mut self) -> Result<usize, Bad> {
        let n = self.varint()?;
        let left = (self.bytes.len() - self.at) as u64;
        if n > left {
            return Err(format!("count {n} exceeds the {left} bytes left"));
        }
        Ok(n as usize)
    }

    pub(super) fn str(&mut self) -> Result<&'a str, Bad> {
        let len = self.count()?;
        let raw = &self.bytes[self.at..self.at + len];
        self.at += len;
        std::str::from_utf8(raw).map_err(|e| format!("text is not UTF-8: {e}"))
    }

    pub(super) fn string(&mut self) -> Result<String, Bad> {
        self.str().map(str::to_string)
    }

    pub(super) fn value(&mut self) -> Result<Value, Bad> {
        self.value_at(0)
    }

    fn value_at(&mut self, depth: usize) -> Result<Value, Bad> {
        if depth > MAX_DEPTH {
            return Err(format!("value nested deeper than {MAX_DEPTH} levels"));
        }
        Ok(match self.u8()? {
            NULL => Value::Null,
            FALSE => Value::Bool(false),
            TRUE => Value::Bool(true),
            INT => Value::Number(Number::from(self.zigzag()?)),
            NUMBER => {
                let text = self.str()?;
                Value::Number(
                    text.parse::<Number>()
                        .map_err(|e| format!("number {text:?}: {e}"))?,
                )
            }
            STRING => Value::String(self.string()?),
            ARRAY => {
                let n = self.count()?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value_at(depth + 1)?);
                }
                Value::Array(items)
            }
            OBJECT => {
                let n = self.count()?;
                let mut map = Map::with_capacity(n);
                for _ in 0..n {
                    let k = self.string()?;
                    map.insert(k, self.value_at(depth + 1)?);
                }
                Value::Object(map)
            }
            tag => return Err(format!("unknown value tag {tag} at byte {}", self.at - 1)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(v: &Value) -> Value {
        let mut out = Vec::new();
        put_value(&mut out, v);
        let mut r = Reader::new(&out);
        let back = r.value().unwrap_or_else(|e| panic!("{e}"));
        assert!(r.done());
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
            assert!(Reader::new(bytes).value().is_err(), "{bytes:?}");
        }
        let mut deep = [ARRAY, 1].repeat(MAX_DEPTH + 2);
        deep.push(NULL);
        assert!(Reader::new(&deep).value().is_err());
    }
}
