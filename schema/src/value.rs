//! Typed decoding of Postgres' text output format into JSON values.
//!
//! pgoutput sends each column in the type's text output form. The walsender
//! session pins the formatting GUCs (`DateStyle=ISO, MDY`, `TimeZone=UTC`,
//! `IntervalStyle=iso_8601`, `extra_float_digits=3`, `bytea_output=hex`), so
//! only those forms need decoding. Decoding never fails: a value that does not
//! have the expected form is kept as its text, because dropping or rejecting a
//! committed row is worse than delivering it untyped.

mod array;

pub(crate) use array::{parse as parse_array, Node as ArrayNode};
#[cfg(test)]
mod tests;

use base64::Engine as _;
use serde_json::{Number, Value};

/// The decoding kind of a Postgres type.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PgType {
    /// `bool`: `t`/`f`.
    Bool,
    /// `int2` / `smallint`.
    Int2,
    /// `int4` / `integer`.
    Int4,
    /// `int8` / `bigint`, kept exact.
    Int8,
    /// `oid`, an unsigned 32-bit integer.
    Oid,
    /// `float4` / `real`.
    Float4,
    /// `float8` / `double precision`.
    Float8,
    /// `numeric`, kept as its exact text.
    Numeric,
    /// `money`, kept as its locale-formatted text.
    Money,
    /// Text-like types (`text`, `varchar`, `bpchar`, `name`, `xml`, `inet`, ...).
    Text,
    /// `uuid`.
    Uuid,
    /// `date`.
    Date,
    /// `time` (without time zone).
    Time,
    /// `timetz`.
    TimeTz,
    /// `timestamp` (without time zone).
    Timestamp,
    /// `timestamptz`.
    TimestampTz,
    /// `interval` (ISO 8601 style).
    Interval,
    /// `json`.
    Json,
    /// `jsonb`.
    Jsonb,
    /// `bytea` (hex output).
    Bytea,
    /// An array whose elements have the given kind.
    Array(Box<PgType>),
    /// Any other type: kept as its text.
    Other,
}

impl PgType {
    /// The type's name as events carry it: `bool`, `int2`, `int4`, `int8`, `oid`,
    /// `float4`, `float8`, `numeric`, `money`, `text`, `uuid`, `date`, `time`,
    /// `timetz`, `timestamp`, `timestamptz`, `interval`, `json`, `jsonb`, `bytea`,
    /// `other`, and `<element>[]` for arrays.
    pub fn name(&self) -> String {
        let scalar = match self {
            PgType::Bool => "bool",
            PgType::Int2 => "int2",
            PgType::Int4 => "int4",
            PgType::Int8 => "int8",
            PgType::Oid => "oid",
            PgType::Float4 => "float4",
            PgType::Float8 => "float8",
            PgType::Numeric => "numeric",
            PgType::Money => "money",
            PgType::Text => "text",
            PgType::Uuid => "uuid",
            PgType::Date => "date",
            PgType::Time => "time",
            PgType::TimeTz => "timetz",
            PgType::Timestamp => "timestamp",
            PgType::TimestampTz => "timestamptz",
            PgType::Interval => "interval",
            PgType::Json => "json",
            PgType::Jsonb => "jsonb",
            PgType::Bytea => "bytea",
            PgType::Other => "other",
            PgType::Array(elem) => return format!("{}[]", elem.name()),
        };
        scalar.to_string()
    }

    /// Kind of a built-in type OID (incl. the built-in array OIDs, e.g. 1007 = int4[]), or None.
    pub fn from_builtin_oid(oid: u32) -> Option<PgType> {
        if let Some(scalar) = scalar_from_oid(oid) {
            return Some(scalar);
        }
        array_element_oid(oid).and_then(|elem| match elem {
            // box[] is the one built-in array whose delimiter is `;`, so it is
            // not parsed as an array literal.
            BOX_OID => Some(PgType::Other),
            _ => scalar_from_oid(elem).map(|e| PgType::Array(Box::new(e))),
        })
    }
}

const BOX_OID: u32 = 603;

/// Kind of a built-in scalar (non-array) type OID.
fn scalar_from_oid(oid: u32) -> Option<PgType> {
    let ty = match oid {
        16 => PgType::Bool,
        17 => PgType::Bytea,
        20 => PgType::Int8,
        21 => PgType::Int2,
        23 => PgType::Int4,
        26 => PgType::Oid,
        700 => PgType::Float4,
        701 => PgType::Float8,
        1700 => PgType::Numeric,
        790 => PgType::Money,
        2950 => PgType::Uuid,
        1082 => PgType::Date,
        1083 => PgType::Time,
        1266 => PgType::TimeTz,
        1114 => PgType::Timestamp,
        1184 => PgType::TimestampTz,
        1186 => PgType::Interval,
        114 => PgType::Json,
        3802 => PgType::Jsonb,
        // "char", name, text, xml, cidr, macaddr8, macaddr, inet, bpchar, varchar, refcursor
        18 | 19 | 25 | 142 | 650 | 774 | 829 | 869 | 1042 | 1043 | 1790 => PgType::Text,
        // int2vector, regproc, tid, xid, cid, oidvector, point, lseg, path, box,
        // polygon, line, circle, aclitem, bit, varbit, regprocedure, regoper,
        // regoperator, regclass, regtype, pg_lsn, tsvector, tsquery, regconfig,
        // regdictionary, jsonpath, regnamespace, regrole, xid8
        22 | 24 | 27 | 28 | 29 | 30 | 600 | 601 | 602 | 603 | 604 | 628 | 718 | 1033 | 1560
        | 1562 | 2202 | 2203 | 2204 | 2205 | 2206 | 3220 | 3614 | 3615 | 3734 | 3769 | 4072
        | 4089 | 4096 | 5069 => PgType::Other,
        _ => return None,
    };
    Some(ty)
}

/// Element OID of a built-in array type OID.
fn array_element_oid(oid: u32) -> Option<u32> {
    let elem = match oid {
        1000 => 16,
        1001 => 17,
        1002 => 18,
        1003 => 19,
        1005 => 21,
        1006 => 22,
        1007 => 23,
        1008 => 24,
        1009 => 25,
        1010 => 27,
        1011 => 28,
        1012 => 29,
        1013 => 30,
        1014 => 1042,
        1015 => 1043,
        1016 => 20,
        1017 => 600,
        1018 => 601,
        1019 => 602,
        1020 => BOX_OID,
        1021 => 700,
        1022 => 701,
        1027 => 604,
        1028 => 26,
        1034 => 1033,
        1040 => 829,
        1041 => 869,
        1115 => 1114,
        1182 => 1082,
        1183 => 1083,
        1185 => 1184,
        1187 => 1186,
        1231 => 1700,
        1270 => 1266,
        1561 => 1560,
        1563 => 1562,
        143 => 142,
        199 => 114,
        271 => 5069,
        629 => 628,
        651 => 650,
        719 => 718,
        775 => 774,
        791 => 790,
        2201 => 1790,
        2207 => 2202,
        2208 => 2203,
        2209 => 2204,
        2210 => 2205,
        2211 => 2206,
        2951 => 2950,
        3221 => 3220,
        3643 => 3614,
        3645 => 3615,
        3735 => 3734,
        3770 => 3769,
        3807 => 3802,
        4073 => 4072,
        4090 => 4089,
        4097 => 4096,
        _ => return None,
    };
    Some(elem)
}

/// Decodes one value's text form. Never fails: what cannot be parsed is kept as its text.
pub fn decode_text(ty: &PgType, text: &str) -> Value {
    if kept_as_text(ty) {
        return Value::String(text.to_owned());
    }
    let decoded = match ty {
        PgType::Bool => decode_bool(text),
        PgType::Int2 | PgType::Int4 | PgType::Int8 => {
            text.parse::<i64>().ok().map(|n| Value::Number(n.into()))
        }
        PgType::Oid => text.parse::<u32>().ok().map(|n| Value::Number(n.into())),
        PgType::Float4 | PgType::Float8 => decode_float(text),
        PgType::Timestamp => decode_timestamp(text).map(Value::String),
        PgType::TimestampTz => decode_timestamptz(text).map(Value::String),
        PgType::TimeTz => decode_timetz(text).map(Value::String),
        PgType::Json | PgType::Jsonb => Some(decode_json(text)),
        PgType::Bytea => decode_bytea_hex(text).map(Value::String),
        PgType::Array(elem) => array::decode_array(elem, text),
        _ => None,
    };
    decoded.unwrap_or_else(|| Value::String(text.to_owned()))
}

/// Whether values of `ty` are their text as they are (`decode_text` does not
/// decode them).
pub(crate) fn kept_as_text(ty: &PgType) -> bool {
    match ty {
        // Numeric and money stay text so no precision or currency format is lost;
        // dates, times and intervals are already ISO 8601 under the pinned GUCs.
        PgType::Numeric
        | PgType::Money
        | PgType::Text
        | PgType::Uuid
        | PgType::Date
        | PgType::Time
        | PgType::Interval
        | PgType::Other => true,
        PgType::Bool
        | PgType::Int2
        | PgType::Int4
        | PgType::Int8
        | PgType::Oid
        | PgType::Float4
        | PgType::Float8
        | PgType::Timestamp
        | PgType::TimestampTz
        | PgType::TimeTz
        | PgType::Json
        | PgType::Jsonb
        | PgType::Bytea
        | PgType::Array(_) => false,
    }
}

/// Deepest json/jsonb nesting pgcdc turns into a JSON value. Postgres accepts
/// about 10,000 levels (bounded by its `max_stack_depth`); every later step
/// (jq, serialisation, drop) recurses per level on threads with 2 MiB stacks.
pub const MAX_JSON_DEPTH: usize = 512;

/// Key of the object that stands for a json/jsonb value pgcdc cannot represent.
pub const UNREPRESENTABLE_KEY: &str = "__pgcdc_unrepresentable";

/// json/jsonb text as a JSON value: numbers exact (arbitrary precision, so
/// `123456789012345678901234567890`, `3.14159265358979323846` and `1e400` keep
/// their digits), and never turned into a string. Text nested deeper than
/// [`MAX_JSON_DEPTH`] (or, impossibly for Postgres output, not JSON) becomes
/// `{"__pgcdc_unrepresentable": why, "text": the original text}`.
fn decode_json(text: &str) -> Value {
    let depth = json_depth(text);
    if depth <= MAX_JSON_DEPTH {
        // Depth is checked above; serde_json's own limit (128) is too low for real documents.
        if let Ok(v) = crate::event::from_stored_json::<Value>(text) {
            return v;
        }
    }
    let why = if depth > MAX_JSON_DEPTH {
        format!("json nested {depth} levels deep; pgcdc represents at most {MAX_JSON_DEPTH}")
    } else {
        "not valid JSON".to_owned()
    };
    let mut o = serde_json::Map::with_capacity(2);
    o.insert(UNREPRESENTABLE_KEY.to_owned(), Value::String(why));
    o.insert("text".to_owned(), Value::String(text.to_owned()));
    Value::Object(o)
}

/// Deepest nesting of `[`/`{` outside strings.
pub(crate) fn json_depth(text: &str) -> usize {
    let (mut depth, mut max, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &b in text.as_bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

fn decode_bool(text: &str) -> Option<Value> {
    match text {
        "t" => Some(Value::Bool(true)),
        "f" => Some(Value::Bool(false)),
        _ => None,
    }
}

/// Floats become JSON numbers; the non-finite values, which JSON cannot hold,
/// become the strings Postgres prints for them.
fn decode_float(text: &str) -> Option<Value> {
    match text {
        "NaN" | "Infinity" | "-Infinity" => return Some(Value::String(text.to_owned())),
        _ => {}
    }
    // Only JSON number syntax is accepted, so Rust-only spellings ("inf",
    // "+1", ".5") fall back to text instead of being reinterpreted.
    if !is_json_number(text) {
        return None;
    }
    // std's parser is correctly rounded (serde_json's default float parser is
    // not, without its `float_roundtrip` feature), so the text's f64 is kept exactly.
    let f = text.parse::<f64>().ok()?;
    Number::from_f64(f).map(Value::Number)
}

/// True when `text` matches the JSON number grammar.
fn is_json_number(text: &str) -> bool {
    let b = text.as_bytes();
    let mut i = 0;
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    let int_start = i;
    i += count_digits(&b[i..]);
    let int_len = i - int_start;
    if int_len == 0 || (int_len > 1 && b[int_start] == b'0') {
        return false;
    }
    if b.get(i) == Some(&b'.') {
        i += 1;
        let n = count_digits(&b[i..]);
        if n == 0 {
            return false;
        }
        i += n;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let n = count_digits(&b[i..]);
        if n == 0 {
            return false;
        }
        i += n;
    }
    i == b.len()
}

fn count_digits(b: &[u8]) -> usize {
    b.iter().take_while(|c| c.is_ascii_digit()).count()
}

/// `YYYY-MM-DD HH:MM:SS[.f...]` at the start of `text`, as
/// `YYYY-MM-DDTHH:MM:SS[.f...]` plus the rest of the text. Years of other than
/// four digits and BC dates do not match: RFC 3339 cannot express them.
fn split_iso_datetime(text: &str) -> Option<(String, &str)> {
    let end = iso_datetime_len(text.as_bytes())?;
    // Every byte up to `end` is ASCII, so these are char boundaries.
    let base = format!("{}T{}", &text[..10], &text[11..end]);
    Some((base, &text[end..]))
}

/// Length of the `YYYY-MM-DD HH:MM:SS[.f...]` prefix of `b`.
pub(crate) fn iso_datetime_len(b: &[u8]) -> Option<usize> {
    let date_ok = b.len() >= 10
        && is_digits(&b[0..4])
        && b[4] == b'-'
        && is_digits(&b[5..7])
        && b[7] == b'-'
        && is_digits(&b[8..10]);
    if !date_ok || b.get(10) != Some(&b' ') {
        return None;
    }
    Some(11 + iso_time_len(&b[11..])?)
}

/// Length of the `HH:MM:SS[.f...]` prefix of `b`.
fn iso_time_len(b: &[u8]) -> Option<usize> {
    let ok = b.len() >= 8
        && is_digits(&b[0..2])
        && b[2] == b':'
        && is_digits(&b[3..5])
        && b[5] == b':'
        && is_digits(&b[6..8]);
    if !ok {
        return None;
    }
    if b.get(8) == Some(&b'.') {
        let n = count_digits(&b[9..]);
        if n == 0 {
            return None;
        }
        return Some(9 + n);
    }
    Some(8)
}

pub(crate) fn is_digits(b: &[u8]) -> bool {
    b.iter().all(u8::is_ascii_digit)
}

/// A UTC offset `±HH[:MM[:SS]]` (the whole of `text`) as `±HH:MM[:SS]`.
fn normalize_offset(text: &str) -> Option<String> {
    let b = text.as_bytes();
    let sign = *b.first()?;
    if sign != b'+' && sign != b'-' {
        return None;
    }
    let rest = &text[1..];
    let parts: Vec<&str> = rest.split(':').collect();
    if parts.len() > 3
        || parts
            .iter()
            .any(|p| p.len() != 2 || !is_digits(p.as_bytes()))
    {
        return None;
    }
    let mut out = String::with_capacity(10);
    out.push(char::from(sign));
    out.push_str(parts[0]);
    out.push(':');
    out.push_str(parts.get(1).copied().unwrap_or("00"));
    if let Some(seconds) = parts.get(2) {
        out.push(':');
        out.push_str(seconds);
    }
    Some(out)
}

fn decode_timestamp(text: &str) -> Option<String> {
    match split_iso_datetime(text)? {
        (base, "") => Some(base),
        _ => None,
    }
}

fn decode_timestamptz(text: &str) -> Option<String> {
    let (base, offset) = split_iso_datetime(text)?;
    let offset = normalize_offset(offset)?;
    if offset == "+00:00" || offset == "-00:00" {
        Some(base + "Z")
    } else {
        Some(base + &offset)
    }
}

fn decode_timetz(text: &str) -> Option<String> {
    let len = iso_time_len(text.as_bytes())?;
    let offset = normalize_offset(&text[len..])?;
    Some(format!("{}{}", &text[..len], offset))
}

/// `\x` hex bytea as standard base64 with padding.
fn decode_bytea_hex(text: &str) -> Option<String> {
    let mut out = Vec::new();
    bytea_hex_to_base64(text, &mut out)?;
    String::from_utf8(out).ok()
}

/// The base64 length of a `\x` hex bytea's bytes (`None` if the text is not one):
/// what [`bytea_hex_to_base64`] appends.
pub(crate) fn bytea_base64_len(text: &str) -> Option<usize> {
    let hex = text.strip_prefix("\\x")?;
    (hex.len() % 2 == 0).then(|| (hex.len() / 2).div_ceil(3) * 4)
}

/// Appends the standard base64 (with padding) of a `\x` hex bytea's bytes to
/// `out`, a chunk at a time: a wide value is never held as bytes as well (a
/// 16 MB `bytea` arrives as 32 MB of hex; its bytes would be 16 MB more). On
/// `None` (not hex) `out` is as it was.
pub(crate) fn bytea_hex_to_base64(text: &str, out: &mut Vec<u8>) -> Option<()> {
    // 3,072 bytes make 4,096 base64 characters: no padding before the last chunk.
    const RAW: usize = 3 << 10;
    let len = bytea_base64_len(text)?;
    let hex = &text.as_bytes()[2..];
    let start = out.len();
    out.reserve(len);
    let mut raw = [0u8; RAW];
    let mut encoded = [0u8; RAW / 3 * 4];
    for chunk in hex.chunks(2 * RAW) {
        let bytes = &mut raw[..chunk.len() / 2];
        for (b, pair) in bytes.iter_mut().zip(chunk.chunks_exact(2)) {
            match (hex_nibble(pair[0]), hex_nibble(pair[1])) {
                (Some(hi), Some(lo)) => *b = hi << 4 | lo,
                _ => {
                    out.truncate(start);
                    return None;
                }
            }
        }
        // Cannot fail: `encoded` holds the base64 of a whole `raw`.
        let Ok(n) = base64::engine::general_purpose::STANDARD.encode_slice(&*bytes, &mut encoded)
        else {
            out.truncate(start);
            return None;
        };
        out.extend_from_slice(&encoded[..n]);
    }
    Some(())
}

fn hex_nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}
