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
