use serde_json::{json, Value};

use super::{decode_text, PgType, MAX_JSON_DEPTH};
use crate::packed::{pack_text, pack_timestamptz};

fn arr(elem: PgType) -> PgType {
    PgType::Array(Box::new(elem))
}

fn s(text: &str) -> Value {
    Value::String(text.to_owned())
}

#[test]
fn builtin_oids_map_to_kinds() {
    let cases = [
        (16, PgType::Bool),
        (17, PgType::Bytea),
        (20, PgType::Int8),
        (21, PgType::Int2),
        (23, PgType::Int4),
        (26, PgType::Oid),
        (700, PgType::Float4),
        (701, PgType::Float8),
        (1700, PgType::Numeric),
        (790, PgType::Money),
        (25, PgType::Text),
        (1043, PgType::Text),
        (1042, PgType::Text),
        (19, PgType::Text),
        (18, PgType::Text),
        (142, PgType::Text),
        (869, PgType::Text),
        (650, PgType::Text),
        (829, PgType::Text),
        (2950, PgType::Uuid),
        (1082, PgType::Date),
        (1083, PgType::Time),
        (1266, PgType::TimeTz),
        (1114, PgType::Timestamp),
        (1184, PgType::TimestampTz),
        (1186, PgType::Interval),
        (114, PgType::Json),
        (3802, PgType::Jsonb),
        (22, PgType::Other),
        (30, PgType::Other),
        (603, PgType::Other),
        (1007, arr(PgType::Int4)),
        (1016, arr(PgType::Int8)),
        (1009, arr(PgType::Text)),
        (1015, arr(PgType::Text)),
        (1185, arr(PgType::TimestampTz)),
        (3807, arr(PgType::Jsonb)),
        (1001, arr(PgType::Bytea)),
        (2951, arr(PgType::Uuid)),
        (1231, arr(PgType::Numeric)),
        (1006, arr(PgType::Other)),
        // box[] uses `;` as delimiter: not parsed as an array.
        (1020, PgType::Other),
    ];
    for (oid, want) in cases {
        assert_eq!(PgType::from_builtin_oid(oid), Some(want), "oid {oid}");
    }
    // User-defined types (enums, domains, extensions like citext) are the caller's.
    assert_eq!(PgType::from_builtin_oid(16_384), None);
    assert_eq!(PgType::from_builtin_oid(0), None);
}

#[test]
fn bool_values() {
    assert_eq!(decode_text(&PgType::Bool, "t"), json!(true));
    assert_eq!(decode_text(&PgType::Bool, "f"), json!(false));
    assert_eq!(decode_text(&PgType::Bool, "yes"), s("yes"));
}

#[test]
fn integers_are_exact() {
    assert_eq!(decode_text(&PgType::Int2, "-32768"), json!(-32768));
    assert_eq!(
        decode_text(&PgType::Int4, "2147483647"),
        json!(2_147_483_647)
    );
    let max = decode_text(&PgType::Int8, "9223372036854775807");
    assert_eq!(max, json!(i64::MAX));
    assert_eq!(max.to_string(), "9223372036854775807");
    let min = decode_text(&PgType::Int8, "-9223372036854775808");
    assert_eq!(min, json!(i64::MIN));
    assert_eq!(min.to_string(), "-9223372036854775808");
    // 2^53 + 1 is where f64 would lose the last digit.
    assert_eq!(
        decode_text(&PgType::Int8, "9007199254740993").to_string(),
        "9007199254740993"
    );
    assert_eq!(
        decode_text(&PgType::Oid, "4294967295"),
        json!(4_294_967_295u64)
    );
    assert_eq!(decode_text(&PgType::Int4, "12x"), s("12x"));
    assert_eq!(decode_text(&PgType::Oid, "-1"), s("-1"));
}

#[test]
fn floats() {
    assert_eq!(decode_text(&PgType::Float8, "1.5"), json!(1.5));
    assert_eq!(decode_text(&PgType::Float8, "1e+30"), json!(1e30));
    assert_eq!(decode_text(&PgType::Float8, "-1.5e-07"), json!(-1.5e-7));
    assert_eq!(decode_text(&PgType::Float4, "0.1"), json!(0.1));
    assert_eq!(decode_text(&PgType::Float8, "100"), json!(100.0));
    // Shortest round-trip text of a value needing all 17 digits survives.
    let v = decode_text(&PgType::Float8, "0.30000000000000004");
    assert_eq!(v.as_f64(), Some(0.1 + 0.2));
    assert_eq!(v.to_string(), "0.30000000000000004");
    let tiny = decode_text(&PgType::Float8, "2.2250738585072014e-308");
    assert_eq!(tiny.as_f64(), Some(f64::MIN_POSITIVE));
    assert_eq!(decode_text(&PgType::Float8, "NaN"), s("NaN"));
    assert_eq!(decode_text(&PgType::Float8, "Infinity"), s("Infinity"));
    assert_eq!(decode_text(&PgType::Float4, "-Infinity"), s("-Infinity"));
    // Spellings that are not JSON numbers stay text.
    for odd in ["inf", "nan", "+1", ".5", "5.", "1e", "01", "", "1e999"] {
        assert_eq!(decode_text(&PgType::Float8, odd), s(odd), "{odd:?}");
    }
}

#[test]
fn numeric_and_money_stay_text() {
    for t in [
        "3.14159265358979323846264338327950288",
        "NaN",
        "Infinity",
        "-0.000",
    ] {
        assert_eq!(decode_text(&PgType::Numeric, t), s(t));
    }
    assert_eq!(decode_text(&PgType::Money, "$1,234.56"), s("$1,234.56"));
}

#[test]
fn text_like_values_are_strings() {
    assert_eq!(decode_text(&PgType::Text, "héllo \"x\""), s("héllo \"x\""));
    assert_eq!(decode_text(&PgType::Text, "123"), s("123"));
    assert_eq!(decode_text(&PgType::Text, "t"), s("t"));
    let uuid = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11";
    assert_eq!(decode_text(&PgType::Uuid, uuid), s(uuid));
    assert_eq!(decode_text(&PgType::Other, "(1,2)"), s("(1,2)"));
    assert_eq!(decode_text(&PgType::Other, "1 2 3"), s("1 2 3"));
}

#[test]
fn dates_times_and_intervals_as_is() {
    for t in ["2026-11-26", "infinity", "-infinity", "0044-03-15 BC"] {
        assert_eq!(decode_text(&PgType::Date, t), s(t));
    }
    assert_eq!(
        decode_text(&PgType::Time, "10:00:00.123456"),
        s("10:00:00.123456")
    );
    for t in ["P1Y2M3DT4H5M6.5S", "PT0S", "P-1D"] {
        assert_eq!(decode_text(&PgType::Interval, t), s(t));
    }
}

#[test]
fn timetz_offsets_normalized() {
    let cases = [
        ("10:00:00+02", "10:00:00+02:00"),
        ("10:00:00.123+00", "10:00:00.123+00:00"),
        ("23:59:59.999999-03:30", "23:59:59.999999-03:30"),
        ("10:00:00+00:53:28", "10:00:00+00:53:28"),
    ];
    for (input, want) in cases {
        assert_eq!(decode_text(&PgType::TimeTz, input), s(want), "{input}");
    }
    for bad in ["10:00:00", "10:00+02", "10:00:00+2", "10:00:00+02:0", "x"] {
        assert_eq!(decode_text(&PgType::TimeTz, bad), s(bad), "{bad}");
    }
}

#[test]
fn timestamp_without_zone() {
    assert_eq!(
        decode_text(&PgType::Timestamp, "2026-11-26 10:00:00.123456"),
        s("2026-11-26T10:00:00.123456")
    );
    assert_eq!(
        decode_text(&PgType::Timestamp, "2026-11-26 10:00:00"),
        s("2026-11-26T10:00:00")
    );
    for t in [
        "infinity",
        "-infinity",
        "0044-03-15 10:00:00 BC",
        "10000-01-01 00:00:00",
        "2026-11-26 10:00:00+00",
        "2026-11-26T10:00:00",
        "2026-11-26 10:00:00.",
    ] {
        assert_eq!(decode_text(&PgType::Timestamp, t), s(t), "{t}");
    }
}

#[test]
fn timestamptz_offsets() {
    let cases = [
        (
            "2026-11-26 10:00:00.123456+00",
            "2026-11-26T10:00:00.123456Z",
        ),
        ("2026-11-26 10:00:00+00", "2026-11-26T10:00:00Z"),
        ("2026-11-26 10:00:00+00:00", "2026-11-26T10:00:00Z"),
        ("2026-11-26 10:00:00.5+05:30", "2026-11-26T10:00:00.5+05:30"),
        ("2026-11-26 10:00:00-03", "2026-11-26T10:00:00-03:00"),
        // Fraction digits are kept exactly, never rounded or padded.
        ("2026-11-26 10:00:00.1+00", "2026-11-26T10:00:00.1Z"),
        (
            "2026-11-26 10:00:00.999999+00",
            "2026-11-26T10:00:00.999999Z",
        ),
        // Local mean time offsets carry seconds.
        (
            "1850-01-01 00:00:00+00:53:28",
            "1850-01-01T00:00:00+00:53:28",
        ),
    ];
    for (input, want) in cases {
        assert_eq!(decode_text(&PgType::TimestampTz, input), s(want), "{input}");
    }
    for t in [
        "infinity",
        "-infinity",
        "0044-03-15 10:00:00+00 BC",
        "2026-11-26 10:00:00",
        "2026-11-26 10:00:00 UTC",
        "garbage",
    ] {
        assert_eq!(decode_text(&PgType::TimestampTz, t), s(t), "{t}");
    }
}

#[test]
fn json_and_jsonb_are_parsed() {
    assert_eq!(
        decode_text(&PgType::Jsonb, r#"{"a": [1, "x", null], "b": {"c": true}}"#),
        json!({"a": [1, "x", null], "b": {"c": true}})
    );
    assert_eq!(decode_text(&PgType::Json, "42"), json!(42));
    assert_eq!(decode_text(&PgType::Json, "\"s\""), json!("s"));
    // Postgres never sends invalid JSON; if it did, the event says so explicitly.
    assert_eq!(
        decode_text(&PgType::Json, "{bad"),
        json!({"__pgcdc_unrepresentable": "not valid JSON", "text": "{bad"})
    );
}

#[test]
fn json_numbers_are_exact_and_stay_numbers() {
    let cases = [
        r#"{"big":123456789012345678901234567890}"#,
        r#"{"p":3.14159265358979323846}"#,
        // What `json` (not jsonb, which expands it to 401 digits) sends for 1e400.
        r#"{"n":1e+400}"#,
        r#"{"neg":-98765432109876543210.000000000000000001}"#,
        r#"[0.1,1e+2,-0,18446744073709551616]"#,
    ];
    for text in cases {
        let v = decode_text(&PgType::Jsonb, text);
        assert_eq!(
            serde_json::to_string(&v).ok().as_deref(),
            Some(text),
            "{text}"
        );
        let first = match &v {
            Value::Object(o) => o.values().next().cloned(),
            Value::Array(a) => a.first().cloned(),
            _ => None,
        };
        assert!(matches!(first, Some(Value::Number(_))), "{text}: {v}");
    }
}

#[test]
fn deep_json_is_kept_up_to_the_limit_then_marked() {
    let nested = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
    for depth in [129, 300, MAX_JSON_DEPTH] {
        let text = nested(depth);
        // Checked on a thread with the stack size tokio gives its workers.
        let out = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || {
                let v = decode_text(&PgType::Jsonb, &text);
                let back = serde_json::to_string(&v).unwrap_or_default();
                let jq = crate::mapping::JqProgram::compile("t", ".")
                    .ok()
                    .and_then(|p| p.run(&v).ok())
                    .map(|outs| outs.len());
                (back == text, v.is_array(), jq)
            })
            .ok()
            .and_then(|h| h.join().ok());
        assert_eq!(out, Some((true, true, Some(1))), "depth {depth}");
    }
    let deep = nested(MAX_JSON_DEPTH + 1);
    let v = decode_text(&PgType::Jsonb, &deep);
    assert_eq!(v["text"], json!(deep));
    assert!(v["__pgcdc_unrepresentable"]
        .as_str()
        .is_some_and(|why| why.contains("513 levels")));
    // Brackets inside strings do not count.
    let v = decode_text(&PgType::Jsonb, &format!("[\"{}\"]", "[".repeat(5000)));
    assert!(v.is_array());
}

#[test]
fn bytea_hex_to_base64() {
    assert_eq!(decode_text(&PgType::Bytea, "\\x0102ff"), s("AQL/"));
    assert_eq!(decode_text(&PgType::Bytea, "\\x0102FF"), s("AQL/"));
    assert_eq!(decode_text(&PgType::Bytea, "\\x"), s(""));
    assert_eq!(decode_text(&PgType::Bytea, "\\x68656c6c6f"), s("aGVsbG8="));
    // Escape format, odd length and bad digits stay text.
    for t in ["hello\\000", "\\x012", "\\x0g", "0102"] {
        assert_eq!(decode_text(&PgType::Bytea, t), s(t), "{t}");
    }
}

/// Wide values are decoded a chunk (3,072 bytes) at a time: lengths around the
/// chunk's edges give the base64 of the whole, packed or decoded, and a bad digit
/// in a later chunk leaves the text as it was.
#[test]
fn wide_bytea_decodes_across_chunks() {
    use base64::Engine as _;
    for n in [3071, 3072, 3073, 6144, 6145, 10_000] {
        let bytes: Vec<u8> = (0..n).map(|i| (i * 7 % 256) as u8).collect();
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let text = format!("\\x{hex}");
        let want = base64::engine::general_purpose::STANDARD.encode(&bytes);
        assert_eq!(decode_text(&PgType::Bytea, &text), s(&want), "{n} bytes");
        let mut packed = Vec::new();
        pack_text(&PgType::Bytea, &text, &mut packed);
        let mut expected = Vec::new();
        crate::packed::put_value(&mut expected, &s(&want));
        assert_eq!(packed, expected, "{n} bytes, packed");
        let bad = format!("{}zz", &text[..text.len() - 2]);
        assert_eq!(
            decode_text(&PgType::Bytea, &bad),
            s(&bad),
            "{n} bytes, bad digit"
        );
        let mut packed = vec![9];
        pack_text(&PgType::Bytea, &bad, &mut packed);
        let mut expected = vec![9];
        crate::packed::put_value(&mut expected, &s(&bad));
        assert_eq!(packed, expected, "{n} bytes, bad digit, packed");
    }
}

#[test]
fn arrays_of_scalars() {
    assert_eq!(
        decode_text(&arr(PgType::Int4), "{1,2,NULL}"),
        json!([1, 2, null])
    );
    assert_eq!(decode_text(&arr(PgType::Int4), "{}"), json!([]));
    assert_eq!(
        decode_text(
            &arr(PgType::Int8),
            "{9223372036854775807,-9223372036854775808}"
        )
        .to_string(),
        "[9223372036854775807,-9223372036854775808]"
    );
    assert_eq!(
        decode_text(&arr(PgType::Bool), "{t,f,null}"),
        json!([true, false, null])
    );
    assert_eq!(
        decode_text(&arr(PgType::Float8), "{1.5,NaN,-Infinity}"),
        json!([1.5, "NaN", "-Infinity"])
    );
}

#[test]
fn nested_arrays() {
    assert_eq!(
        decode_text(&arr(PgType::Int4), "{{1,2},{3,4}}"),
        json!([[1, 2], [3, 4]])
    );
    assert_eq!(
        decode_text(&arr(PgType::Text), r#"{{"a b",NULL},{NULL,"c\"d"}}"#),
        json!([["a b", null], [null, "c\"d"]])
    );
    assert_eq!(
        decode_text(&arr(PgType::Int4), "{{{1},{2}},{{3},{4}}}"),
        json!([[[1], [2]], [[3], [4]]])
    );
    // Six dimensions is Postgres' maximum and still decodes.
    assert_eq!(
        decode_text(&arr(PgType::Int4), "{{{{{{1}}}}}}"),
        json!([[[[[[1]]]]]])
    );
}

#[test]
fn quoted_elements_and_escapes() {
    assert_eq!(
        decode_text(&arr(PgType::Text), r#"{"a b","c\"d",NULL,"NULL"}"#),
        json!(["a b", "c\"d", null, "NULL"])
    );
    assert_eq!(
        decode_text(&arr(PgType::Text), r#"{"back\\slash","",",","{}","é"}"#),
        json!(["back\\slash", "", ",", "{}", "é"])
    );
    // Unquoted input accepted by array_in: whitespace trimmed, escapes honoured.
    assert_eq!(
        decode_text(&arr(PgType::Text), r"{ a , b\ ,\NULL, null }"),
        json!(["a", "b ", "NULL", null])
    );
}

#[test]
fn array_elements_use_element_type() {
    assert_eq!(
        decode_text(
            &arr(PgType::TimestampTz),
            r#"{"2026-11-26 10:00:00+00","2026-11-26 10:00:00.5-03",infinity}"#
        ),
        json!([
            "2026-11-26T10:00:00Z",
            "2026-11-26T10:00:00.5-03:00",
            "infinity"
        ])
    );
    assert_eq!(
        decode_text(&arr(PgType::Bytea), r#"{"\\x0102ff",NULL}"#),
        json!(["AQL/", null])
    );
    assert_eq!(
        decode_text(&arr(PgType::Jsonb), r#"{"{\"a\": 1}","[1, 2]"}"#),
        json!([{"a": 1}, [1, 2]])
    );
    assert_eq!(
        decode_text(&arr(PgType::Numeric), "{1.10,NaN}"),
        json!(["1.10", "NaN"])
    );
}

#[test]
fn dimension_decoration_is_dropped() {
    assert_eq!(
        decode_text(&arr(PgType::Int4), "[0:1]={1,2}"),
        json!([1, 2])
    );
    assert_eq!(
        decode_text(&arr(PgType::Int4), "[-1:0][1:2]={{1,2},{3,4}}"),
        json!([[1, 2], [3, 4]])
    );
    assert_eq!(
        decode_text(&arr(PgType::Text), r#"[2:2]={"a=b"}"#),
        json!(["a=b"])
    );
}

#[test]
fn malformed_arrays_stay_text() {
    for t in [
        "",
        "{",
        "{1,2",
        "1,2",
        "{1,,2}",
        "{1,}",
        "{,}",
        "{1}x",
        "{1}{2}",
        r#"{"abc}"#,
        r#"{"a"b}"#,
        "{a{b}",
        "{1,{2}}",
        "{{1},2}",
        "{{1},NULL}",
        "[0:1{1,2}",
        "[a:b]={1}",
        "[0:1]",
        "=={1}",
        "{{{{{{{1}}}}}}}",
    ] {
        assert_eq!(decode_text(&arr(PgType::Int4), t), s(t), "{t:?}");
    }
    // Well-formed literal whose element does not parse as the element type:
    // only that element falls back to text.
    assert_eq!(decode_text(&arr(PgType::Int4), "{1,x}"), json!([1, "x"]));
}

/// `pack_text` takes shortcuts for the common types; each must pack exactly what
/// decoding the text and packing the value does.
#[test]
fn pack_text_packs_what_decode_text_decodes() {
    let kinds = [
        PgType::Bool,
        PgType::Int2,
        PgType::Int4,
        PgType::Int8,
        PgType::Oid,
        PgType::Float8,
        PgType::Numeric,
        PgType::Money,
        PgType::Text,
        PgType::Uuid,
        PgType::Date,
        PgType::Time,
        PgType::TimeTz,
        PgType::TimestampTz,
        PgType::Interval,
        PgType::Jsonb,
        PgType::Bytea,
        PgType::Other,
        arr(PgType::Int8),
    ];
    let texts = [
        "t",
        "f",
        "true",
        "0",
        "-0",
        "007",
        "+5",
        "42",
        "-42",
        "4294967295",
        "4294967296",
        "-1",
        "999999999999999999",
        "1000000000000000000",
        "9223372036854775807",
        "-9223372036854775808",
        "9223372036854775808",
        "1.50",
        "NaN",
        "-Infinity",
        "$1,000.00",
        "2026-01-02 03:04:05.5+00",
        "2026-01-02 03:04:05-00",
        "2026-01-02 03:04:05+05:30",
        "2026-01-02 03:04:05.123456-08",
        "2026-01-02 03:04:05+00:00:00",
        "2026-01-02 03:04:05+01:02:03",
        "2026-01-02 03:04:05+1",
        "2026-01-02 03:04:05+01:02:03:04",
        "2026-01-02 03:04:05+01:",
        "2026-01-02 03:04:05",
        "2026-01-02 03:04:05 BC",
        "12026-01-02 03:04:05+00",
        "03:04:05+02",
        "P1DT2H",
        r#"{"a": [1, 2.50, "x"]}"#,
        "\\x00ff",
        "{1,NULL,3}",
        "",
        "é \" \\",
    ];
    assert_packs_as_decoded(&kinds, &texts);
    // The timestamptz shortcut is taken for what the walsender sends.
    for text in ["2026-01-02 03:04:05.5+00", "2026-01-02 03:04:05+05:30"] {
        assert!(pack_timestamptz(text, &mut Vec::new()), "{text}");
    }
}

/// Arrays are packed element by element from their text: the same bytes as
/// decoding the literal and packing the value, malformed literals included.
#[test]
fn pack_text_packs_arrays_as_decode_text_does() {
    let kinds = [
        arr(PgType::Text),
        arr(PgType::Int4),
        arr(PgType::Bool),
        arr(PgType::Numeric),
        arr(PgType::Jsonb),
        arr(PgType::TimestampTz),
        arr(PgType::Bytea),
    ];
    let texts = [
        "{}",
        "{a,b,c}",
        "{1,NULL,3}",
        "{null,NULL,\"NULL\"}",
        "{ a , b c ,\"d e\"}",
        r#"{"with \"quotes\"","back\\slash","",x}"#,
        r"{esc\,aped,trail\ }",
        "{{1,2},{3,4}}",
        "{{a},{NULL}}",
        "[0:1]={7,8}",
        "[1:2][1:1]={{1},{2}}",
        "{t,f,true}",
        r#"{"{\"a\": [1, 2]}","{\"b\": null}"}"#,
        r#"{"2026-01-02 03:04:05+00","2026-01-02 03:04:05.5+05:30",NULL}"#,
        r#"{"\\x00ff","\\x"}"#,
        "{é,✓,\"é ✓\"}",
        "{1,{2}}",
        "{{1},NULL}",
        "{a,b",
        "{a,,b}",
        "{\"a\"b}",
        "{{{{{{{1}}}}}}}",
        "not an array",
        "",
    ];
    assert_packs_as_decoded(&kinds, &texts);
}

/// `pack_text` of each text as each kind gives the bytes of packing `decode_text`'s value.
fn assert_packs_as_decoded(kinds: &[PgType], texts: &[&str]) {
    for kind in kinds {
        for text in texts {
            let mut fast = Vec::new();
            pack_text(kind, text, &mut fast);
            let mut slow = Vec::new();
            crate::packed::put_value(&mut slow, &decode_text(kind, text));
            assert_eq!(fast, slow, "{kind:?} {text:?}");
        }
    }
}
