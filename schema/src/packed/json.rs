//! jsonb text packed straight from its text: what
//! `put_value(out, &decode_text(&PgType::Jsonb, text))` appends, without the
//! `serde_json::Value` (a heap node per element, a map per object) in between.
//!
//! Only jsonb: Postgres prints it with each key once, so the pairs go out as
//! they come. `json` text may repeat a key, which a `Value` map collapses;
//! it keeps the `Value` path.

use std::borrow::Cow;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use super::{put_bool, put_null, put_number_text, put_str, put_string, put_varint, ARRAY, OBJECT};
use crate::value::{json_depth, MAX_JSON_DEPTH};

/// The key under which serde_json (with `arbitrary_precision`) hands over a
/// number's text, as the one entry of a map.
const NUMBER_TOKEN: &str = "$serde_json::private::Number";

/// Appends jsonb `text` packed; false (nothing appended) when it is deeper than
/// [`MAX_JSON_DEPTH`] or not JSON, which the `Value` path turns into its
/// "unrepresentable" object.
pub(crate) fn pack_jsonb(text: &str, out: &mut Vec<u8>) -> bool {
    let start = out.len();
    let mut fast = Fast {
        s: text,
        b: text.as_bytes(),
        at: 0,
    };
    if fast.value(out, 1).is_some() && fast.end() {
        return true;
    }
    // Not the common shape (escapes beyond the short ones, exponents, too deep,
    // not JSON): serde_json decides.
    out.truncate(start);
    pack_jsonb_serde(text, out)
}

/// [`pack_jsonb`] through serde_json's parser.
fn pack_jsonb_serde(text: &str, out: &mut Vec<u8>) -> bool {
    if json_depth(text) > MAX_JSON_DEPTH {
        return false;
    }
    let start = out.len();
    let mut de = serde_json::Deserializer::from_str(text);
    // Depth is checked above; serde_json's own limit (128) is too low for real documents.
    de.disable_recursion_limit();
    let packed = Pack(out).deserialize(&mut de).and_then(|()| de.end());
    if packed.is_err() {
        out.truncate(start);
    }
    packed.is_ok()
}

/// A parser for the JSON Postgres prints for jsonb: whitespace, literals,
/// numbers without exponents, strings with the short escapes. Anything else
/// (`\u` escapes, exponents, deeper than [`MAX_JSON_DEPTH`], not JSON) is
/// `None`, and the caller starts over with serde_json. What it appends is what
/// the serde path appends (`tests::fast_and_serde_paths_agree`).
struct Fast<'a> {
    s: &'a str,
    b: &'a [u8],
    at: usize,
}

impl Fast<'_> {
    fn ws(&mut self) {
        while matches!(self.b.get(self.at), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    /// Whether only whitespace is left.
    fn end(&mut self) -> bool {
        self.ws();
        self.at == self.b.len()
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        self.ws();
        (self.b.get(self.at) == Some(&c)).then(|| self.at += 1)
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        self.b[self.at..]
            .starts_with(word)
            .then(|| self.at += word.len())
    }

    /// The value at the cursor, at nesting `depth` (1 for the document).
    fn value(&mut self, out: &mut Vec<u8>, depth: usize) -> Option<()> {
        self.ws();
        match *self.b.get(self.at)? {
            b'n' => self.literal(b"null").map(|()| put_null(out)),
            b't' => self.literal(b"true").map(|()| put_bool(out, true)),
            b'f' => self.literal(b"false").map(|()| put_bool(out, false)),
            b'"' => {
                let s = self.string()?;
                put_string(out, &s);
                Some(())
            }
            b'[' if depth <= MAX_JSON_DEPTH => {
                self.at += 1;
                out.push(ARRAY);
                let at = out.len();
                let mut count = 0u64;
                if self.eat(b']').is_none() {
                    loop {
                        self.value(out, depth + 1)?;
                        count += 1;
                        if self.eat(b',').is_none() {
                            self.eat(b']')?;
                            break;
                        }
                    }
                }
                insert_count(out, at, count);
                Some(())
            }
            b'{' if depth <= MAX_JSON_DEPTH => {
                self.at += 1;
                out.push(OBJECT);
                let at = out.len();
                let mut count = 0u64;
                if self.eat(b'}').is_none() {
                    loop {
                        self.ws();
                        if self.b.get(self.at) != Some(&b'"') {
                            return None;
                        }
                        let key = self.string()?;
                        put_str(out, &key);
                        self.eat(b':')?;
                        self.value(out, depth + 1)?;
                        count += 1;
                        if self.eat(b',').is_none() {
                            self.eat(b'}')?;
                            break;
                        }
                    }
                }
                insert_count(out, at, count);
                Some(())
            }
            b'-' | b'0'..=b'9' => {
                let from = self.at;
                self.at += usize::from(self.b[self.at] == b'-');
                let digits = |p: &mut Self| {
                    let from = p.at;
                    while p.b.get(p.at).is_some_and(u8::is_ascii_digit) {
                        p.at += 1;
                    }
                    p.at - from
                };
                match self.b.get(self.at) {
                    Some(b'0') => self.at += 1,
                    Some(b'1'..=b'9') => {
                        digits(self);
                    }
                    _ => return None,
                }
                if self.b.get(self.at) == Some(&b'.') {
                    self.at += 1;
                    if digits(self) == 0 {
                        return None;
                    }
                }
                if matches!(self.b.get(self.at), Some(b'e' | b'E')) {
                    return None;
                }
                put_number_text(out, self.s.get(from..self.at)?);
                Some(())
            }
            _ => None,
        }
    }

    /// The string at the cursor (which is at its opening quote).
    fn string(&mut self) -> Option<Cow<'_, str>> {
        self.at += 1;
        let from = self.at;
        let mut owned: Option<String> = None;
        let mut run = from;
        loop {
            match *self.b.get(self.at)? {
                b'"' => break,
                b'\\' => {
                    let esc = match *self.b.get(self.at + 1)? {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        _ => return None,
                    };
                    let buf = owned.get_or_insert_with(String::new);
                    buf.push_str(self.s.get(run..self.at)?);
                    buf.push(esc);
                    self.at += 2;
                    run = self.at;
                }
                0..=0x1F => return None,
                _ => self.at += 1,
            }
        }
        let end = self.at;
        self.at += 1;
        // Cut at quotes and backslashes: ASCII, so at character boundaries.
        Some(match owned {
            None => Cow::Borrowed(self.s.get(from..end)?),
            Some(mut buf) => {
                buf.push_str(self.s.get(run..end)?);
                Cow::Owned(buf)
            }
        })
    }
}

/// Writes the value it is given to the buffer.
struct Pack<'a>(&'a mut Vec<u8>);

impl<'de> DeserializeSeed<'de> for Pack<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

/// Puts `count` as a varint at `at`, before the elements already written after it.
fn insert_count(out: &mut Vec<u8>, at: usize, count: u64) {
    let end = out.len();
    put_varint(out, count);
    let width = out.len() - end;
    out[at..].rotate_right(width);
}

impl<'de> Visitor<'de> for Pack<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        put_null(self.0);
        Ok(())
    }

    fn visit_bool<E>(self, b: bool) -> Result<(), E> {
        put_bool(self.0, b);
        Ok(())
    }

    fn visit_i64<E>(self, n: i64) -> Result<(), E> {
        put_number_text(self.0, &n.to_string());
        Ok(())
    }

    fn visit_u64<E>(self, n: u64) -> Result<(), E> {
        put_number_text(self.0, &n.to_string());
        Ok(())
    }

    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<(), E> {
        // Not with `arbitrary_precision` (numbers come as their text): take the
        // `Value` path rather than guess the text.
        Err(E::custom("a number without its text"))
    }

    fn visit_str<E>(self, s: &str) -> Result<(), E> {
        put_string(self.0, s);
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let out = self.0;
        out.push(ARRAY);
        let at = out.len();
        let mut count = 0u64;
        while seq.next_element_seed(Pack(out))?.is_some() {
            count += 1;
        }
        insert_count(out, at, count);
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let out = self.0;
        let Some(first) = map.next_key_seed(Key)? else {
            out.push(OBJECT);
            put_varint(out, 0);
            return Ok(());
        };
        if first == NUMBER_TOKEN {
            let text: Cow<'de, str> = map.next_value_seed(Key)?;
            put_number_text(out, &text);
            return Ok(());
        }
        out.push(OBJECT);
        let at = out.len();
        put_str(out, &first);
        map.next_value_seed(Pack(out))?;
        let mut count = 1u64;
        while let Some(key) = map.next_key_seed(Key)? {
            put_str(out, &key);
            map.next_value_seed(Pack(out))?;
            count += 1;
        }
        insert_count(out, at, count);
        Ok(())
    }
}

/// A key (or a number's text): borrowed from the input where it has no escapes.
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Cow<'de, str>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Borrowed(s))
    }

    fn visit_str<E>(self, s: &str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(s.to_owned()))
    }

    fn visit_string<E>(self, s: String) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packed::put_value;
    use crate::value::{decode_text, PgType};

    /// The bytes the `Value` path appends.
    fn via_value(text: &str) -> Vec<u8> {
        let mut out = Vec::new();
        put_value(&mut out, &decode_text(&PgType::Jsonb, text));
        out
    }

    #[test]
    fn jsonb_packs_as_its_value_would() {
        let many: Vec<String> = (0..300)
            .map(|i| format!("{{\"k{i}\": [{i}, \"v\"]}}"))
            .collect();
        let wide = format!("[{}]", many.join(", "));
        let deep = format!(
            "{}1{}",
            "[".repeat(MAX_JSON_DEPTH),
            "]".repeat(MAX_JSON_DEPTH)
        );
        let texts = [
            "null",
            "true",
            "false",
            "0",
            "-0",
            "1.50",
            "123456789012345678901234567890",
            "-9223372036854775808",
            "9223372036854775808",
            "1e400",
            "3.14159265358979323846",
            r#""plain""#,
            r#""esc \"q\" \\ \n \t \u00e9 \ud83d\ude00 ✓""#,
            "[]",
            "{}",
            r#"{"a": 1, "b": [1, [2, {"a": null}]], "c": {"d": "e"}, "": ""}"#,
            r#"{"big": 123456789012345678901234567890, "f": 1.50, "s": "é"}"#,
            r#"{"k\"ey\n": {"$ref": 1}}"#,
            "[1, null, true, \"x\", 2.5, [], {}]",
            &wide,
            &deep,
        ];
        for text in texts {
            let mut out = vec![0xAA];
            assert!(pack_jsonb(text, &mut out), "{text:.80}");
            assert_eq!(out[1..], via_value(text), "{text:.80}");
        }
    }

    /// A random JSON document (pseudo-random from `seed`): nesting, every escape,
    /// numbers with and without fractions and exponents, odd spacing.
    fn random_doc(seed: &mut u64, depth: usize, out: &mut String) {
        fn next_of(seed: &mut u64, n: u64) -> u64 {
            *seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (*seed >> 33) % n
        }
        let next = |seed: &mut u64, n: u64| next_of(seed, n);
        let space = [" ", "", "\n ", "\t"][next(seed, 4) as usize];
        match next(seed, if depth > 4 { 6 } else { 8 }) {
            0 => out.push_str("null"),
            1 => out.push_str(if next(seed, 2) == 0 { "true" } else { "false" }),
            2 => out.push_str(
                [
                    "0",
                    "-0",
                    "12",
                    "-9223372036854775809",
                    "1.50",
                    "0.001",
                    "1e5",
                    "-2.5E-3",
                    "01",
                    "1.",
                ][next(seed, 10) as usize],
            ),
            3..=5 => {
                out.push('"');
                for _ in 0..next(seed, 6) {
                    out.push_str(
                        [
                            "a",
                            "é",
                            "✓",
                            "\\\"",
                            "\\\\",
                            "\\n",
                            "\\t",
                            "\\/",
                            "\\b",
                            "\\f",
                            "\\r",
                            "\\u00e9",
                            "\\ud83d\\ude00",
                            " ",
                        ][next(seed, 14) as usize],
                    );
                }
                out.push('"');
            }
            6 => {
                out.push('[');
                for i in 0..next(seed, 4) {
                    if i > 0 {
                        out.push(',');
                        out.push_str(space);
                    }
                    random_doc(seed, depth + 1, out);
                }
                out.push(']');
            }
            _ => {
                out.push('{');
                for i in 0..next(seed, 4) {
                    if i > 0 {
                        out.push(',');
                        out.push_str(space);
                    }
                    out.push_str(["\"k\"", "\"\"", "\"k\\n\"", "\"é\""][next(seed, 4) as usize]);
                    out.push_str([": ", ":", " : "][next(seed, 3) as usize]);
                    random_doc(seed, depth + 1, out);
                }
                out.push('}');
            }
        }
    }

    #[test]
    fn fast_and_serde_paths_agree() {
        let mut seed = 7;
        let (mut fast_taken, mut valid) = (0, 0);
        for _ in 0..20_000 {
            let mut text = String::new();
            random_doc(&mut seed, 0, &mut text);
            let (mut fast, mut serde) = (vec![0xAA], vec![0xAA]);
            let fast_ok = pack_jsonb(&text, &mut fast);
            let serde_ok = pack_jsonb_serde(&text, &mut serde);
            assert_eq!(fast_ok, serde_ok, "{text}");
            assert_eq!(fast, serde, "{text}");
            valid += usize::from(serde_ok);
            let mut p = Fast {
                s: &text,
                b: text.as_bytes(),
                at: 0,
            };
            fast_taken += usize::from(p.value(&mut Vec::new(), 1).is_some() && p.end());
        }
        // Both kinds were exercised: documents the fast parser took, and ones it left.
        assert!(
            fast_taken > 5_000 && valid > fast_taken,
            "{fast_taken} {valid}"
        );
    }

    #[test]
    fn too_deep_or_not_json_appends_nothing_and_takes_the_value_path() {
        let deeper = format!(
            "{}1{}",
            "[".repeat(MAX_JSON_DEPTH + 1),
            "]".repeat(MAX_JSON_DEPTH + 1)
        );
        for text in [deeper.as_str(), "{\"a\": ", "[1, 2", "nul", "1 2", ""] {
            let mut out = vec![0xAA];
            assert!(!pack_jsonb(text, &mut out), "{text:.80}");
            assert_eq!(out, [0xAA], "{text:.80}");
        }
        // pack_text gives what the Value path gives for them (its "unrepresentable" object).
        let mut out = Vec::new();
        crate::packed::pack_text(&PgType::Jsonb, &deeper, &mut out);
        assert_eq!(out, via_value(&deeper));
    }
}
