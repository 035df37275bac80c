use serde_json::{json, Value};

use super::*;

fn approved_update() -> Value {
    json!({
        "id": "0000000001A2B3C4-00000000", "op": "update",
        "schema": "public", "table": "permits", "key": {"id": 42},
        "old": {"id": 42, "status": "pending", "expiry_date": "2027-01-31"},
        "new": {"id": 42, "status": "approved", "expiry_date": "2027-01-31"},
        "trigger": null, "lsn": "0/1A2B3C4", "xid": 731,
        "commit_time": "2026-11-26T10:00:00.123456Z", "unchanged_toast": []
    })
}

fn insert(status: &str) -> Value {
    json!({
        "id": "0000000001A2B3C4-00000001", "op": "insert",
        "schema": "public", "table": "permits", "key": {"id": 7},
        "old": null,
        "new": {"id": 7, "status": status, "expiry_date": "2028-05-01", "amount": "12.50"},
        "trigger": null, "lsn": "0/1A2B3C4", "xid": 732,
        "commit_time": "2026-11-26T10:00:01Z", "unchanged_toast": []
    })
}

fn jq(source: &str) -> JqProgram {
    match JqProgram::compile("test.expr", source) {
        Ok(p) => p,
        Err(e) => panic!("{source}: {e}"),
    }
}

fn compile_err(key: &str, source: &str) -> (String, Position, String) {
    match JqProgram::compile(key, source) {
        Err(MappingError::Compile {
            key,
            position,
            message,
        }) => (key, position, message),
        other => panic!("{source}: expected a compile error, got {other:?}"),
    }
}

#[test]
fn program_is_send_sync_and_clone() {
    fn check<T: Send + Sync + Clone + 'static>() {}
    check::<JqProgram>();
    check::<Template>();
}

#[test]
fn mapping_compile_error_names_key_and_position() {
    let (key, pos, msg) = compile_err("trigger[0].when", ".new.status == ");
    assert_eq!(key, "trigger[0].when");
    assert_eq!((pos.line, pos.column), (1, 16), "{msg}");
    assert!(msg.contains("expected"), "{msg}");

    let (_, pos, msg) = compile_err("sink[1].transform", "{a: .x,\n  b: (.y | frobnicate)}");
    assert_eq!((pos.line, pos.column), (2, 12), "{msg}");
    assert!(msg.contains("frobnicate"), "{msg}");

    let (_, pos, msg) = compile_err("k", ".a | $nope");
    assert_eq!((pos.line, pos.column, pos.offset), (1, 6, 5));
    assert!(msg.contains("variable"), "{msg}");

    let (_, _, msg) = compile_err("k", "\"unterminated");
    assert!(msg.contains("quote"), "{msg}");

    let err = JqProgram::compile("trigger[3].when", "(.a").map_err(|e| e.to_string());
    let text = err.err().unwrap_or_default();
    assert!(text.starts_with("trigger[3].when: "), "{text}");
    assert!(
        text.contains("1:4") && text.contains("closing parenthesis"),
        "{text}"
    );
}

#[test]
fn mapping_env_and_modules_are_unavailable() {
    let (_, _, msg) = compile_err("k", "env.HOME");
    assert!(msg.contains("env"), "{msg}");
    let (_, _, msg) = compile_err("k", "$ENV.HOME");
    assert!(msg.contains("ENV"), "{msg}");
    assert!(JqProgram::compile("k", "import \"foo\" as f; .").is_err());
}

#[test]
fn mapping_halt_is_an_error_not_an_exit() {
    let err = jq("halt").run(&json!(1));
    assert!(
        matches!(&err, Err(MappingError::Runtime { message, .. }) if message.contains("halt")),
        "{err:?}"
    );
}

#[test]
fn mapping_test_truthiness() {
    let cases = [
        ("false", false),
        ("null", false),
        ("empty", false),
        ("0", true),
        ("\"\"", true),
        ("[]", true),
        ("true", true),
        ("(false, true)", false),
        ("(1, false)", true),
        ("(null, error(\"never reached\"))", false),
    ];
    for (src, want) in cases {
        assert_eq!(jq(src).test(&json!({})).ok(), Some(want), "{src}");
    }
}

#[test]
fn mapping_run_outputs() {
    let input = approved_update();
    assert_eq!(jq("empty").run(&input).ok(), Some(vec![]));
    assert_eq!(jq(".key.id").run(&input).ok(), Some(vec![json!(42)]));
    assert_eq!(
        jq(".new | .id, .status, .expiry_date").run(&input).ok(),
        Some(vec![json!(42), json!("approved"), json!("2027-01-31")])
    );
    let err = jq(".new.status + 1").run(&input);
    match err {
        Err(MappingError::Runtime { key, message }) => {
            assert_eq!(key, "test.expr");
            assert!(message.contains("approved"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn mapping_transform_from_architecture() {
    let t = jq("{registryId: .new.id, validUntil: .new.expiry_date}");
    assert_eq!(
        t.run(&approved_update()).ok(),
        Some(vec![json!({"registryId": 42, "validUntil": "2027-01-31"})])
    );
    // Key order follows construction order (serde_json preserve_order).
    let out = t.run(&insert("approved")).ok().unwrap_or_default();
    let text = serde_json::to_string(&out).unwrap_or_default();
    assert_eq!(text, r#"[{"registryId":7,"validUntil":"2028-05-01"}]"#);
}

#[test]
fn mapping_trigger_from_architecture() {
    let when = jq(r#".old.status != "approved" and .new.status == "approved""#);
    assert_eq!(when.test(&approved_update()).ok(), Some(true));
    // `.old` is null on insert and `null.status` is null in jq, so an insert
    // of an approved row fires the trigger.
    assert_eq!(when.test(&insert("approved")).ok(), Some(true));
    assert_eq!(when.test(&insert("pending")).ok(), Some(false));
    let mut unchanged = approved_update();
    unchanged["old"]["status"] = json!("approved");
    assert_eq!(when.test(&unchanged).ok(), Some(false));
    let mut delete = approved_update();
    delete["op"] = json!("delete");
    delete["new"] = Value::Null;
    assert_eq!(when.test(&delete).ok(), Some(false));
}

#[test]
fn mapping_std_library() {
    let input = insert("Approved");
    let cases: &[(&str, Value)] = &[
        (".new | has(\"status\")", json!(true)),
        ("[.new | keys[]] | length", json!(4)),
        (".new.status | ascii_downcase", json!("approved")),
        // The decimal literal keeps its digits (as in jq 1.7): money stays exact.
        (
            ".new.amount | tonumber",
            serde_json::from_str("12.50").unwrap_or(Value::Null),
        ),
        (".new.id | tostring", json!("7")),
        (".new.status | test(\"^app\"; \"i\")", json!(true)),
        ("[.new[] | select(type == \"number\")]", json!([7])),
        ("[1, 2, 3] | map(. * 2)", json!([2, 4, 6])),
        (
            "\"permit \\(.new.id) is \\(.new.status)\"",
            json!("permit 7 is Approved"),
        ),
        (".old.status // \"none\"", json!("none")),
        ("if .op == \"insert\" then \"I\" else \"U\" end", json!("I")),
        ("[.. | numbers] | add", json!(7 + 7 + 732)),
        ("0 | todate", json!("1970-01-01T00:00:00Z")),
        ("now | type", json!("number")),
        (
            ".new | to_entries | map(.key) | join(\",\")",
            json!("id,status,expiry_date,amount"),
        ),
        (".new.id | @base64 \"\\(.)\"", json!("Nw==")),
        ("{a: 1} | .a += 1 | .a", json!(2)),
        ("1.5 + 1", json!(2.5)),
        ("10 / 4", json!(2.5)),
    ];
    for (src, want) in cases {
        assert_eq!(jq(src).run(&input).ok(), Some(vec![want.clone()]), "{src}");
    }
}

#[test]
fn mapping_values_round_trip() {
    let v = json!({"s": "é\u{1F600}", "i": -3, "u": u64::MAX, "f": 0.1, "n": null,
                   "a": [true, false, {"x": []}], "big": 9007199254740993_i64});
    assert_eq!(jq(".").run(&v).ok(), Some(vec![v.clone()]));
    assert_eq!(jq("0 / 0").run(&v).ok(), Some(vec![Value::Null]));
}

#[test]
fn mapping_old_columns() {
    let cases: &[(&str, OldColumns)] = &[
        (".new.id", OldColumns::None),
        (
            "{registryId: .new.id, validUntil: .new.expiry_date}",
            OldColumns::None,
        ),
        (".old.status", OldColumns::Some(vec!["status".into()])),
        (".old[\"status\"]", OldColumns::Some(vec!["status".into()])),
        (".[\"old\"].status", OldColumns::Some(vec!["status".into()])),
        (
            r#".old.status != "approved" and .new.status == "approved""#,
            OldColumns::Some(vec!["status".into()]),
        ),
        (
            ".old.b != .new.b or .old.a? != .new.a",
            OldColumns::Some(vec!["a".into(), "b".into()]),
        ),
        (
            ".new.id as $id | .old.x",
            OldColumns::Some(vec!["x".into()]),
        ),
        (
            "select(.op == \"update\") | .old.x",
            OldColumns::Some(vec!["x".into()]),
        ),
        (".new | .old", OldColumns::None),
        ("{key, new}", OldColumns::None),
        ("has(\"old\")", OldColumns::None),
        (".old", OldColumns::All),
        (".old | keys", OldColumns::All),
        (".old == null", OldColumns::All),
        (".", OldColumns::All),
        ("{old}", OldColumns::All),
        ("..", OldColumns::All),
        (".[]", OldColumns::All),
        (".[\"ol\" + \"d\"].x", OldColumns::All),
        (". as $e | $e.old.x", OldColumns::All),
        ("to_entries", OldColumns::All),
        ("tojson", OldColumns::All),
        ("getpath([\"old\", \"x\"])", OldColumns::All),
        (".new.x |= 1", OldColumns::All),
        ("def f: .old.y; f", OldColumns::All),
        ("select(.old.x == 1)", OldColumns::All),
        (".old[]", OldColumns::All),
    ];
    for (src, want) in cases {
        assert_eq!(&jq(src).old_columns(), want, "{src}");
    }
}

#[test]
fn mapping_row_columns() {
    let cases: &[(&str, OldColumns)] = &[
        (".op", OldColumns::None),
        (".new.id", OldColumns::Some(vec!["id".into()])),
        (
            r#".old.status != "approved" and .new.status == "approved" and .new.x > 1"#,
            OldColumns::Some(vec!["status".into(), "x".into()]),
        ),
        (".new", OldColumns::All),
        (".old.a == .new", OldColumns::All),
    ];
    for (src, want) in cases {
        assert_eq!(&jq(src).row_columns(), want, "{src}");
    }
}

#[test]
fn mapping_program_source_and_key() {
    let p = jq(" .new.id ");
    assert_eq!(p.source(), " .new.id ");
    assert_eq!(p.key(), "test.expr");
    let q = p.clone();
    assert_eq!(q.run(&insert("x")).ok(), Some(vec![json!(7)]));
}

fn template(source: &str) -> Template {
    match Template::parse("sink[0].url", source) {
        Ok(t) => t,
        Err(e) => panic!("{source}: {e}"),
    }
}

fn template_err(source: &str) -> MappingError {
    match Template::parse("sink[0].url", source) {
        Ok(t) => panic!("{source}: expected an error, got {t:?}"),
        Err(e) => e,
    }
}

#[test]
fn mapping_template_render() {
    let input = approved_update();
    let t = template("https://registry.example/api/permits/{.new.id}");
    assert!(!t.is_static());
    assert_eq!(
        t.render(&input).ok().as_deref(),
        Some("https://registry.example/api/permits/42")
    );
    let t = template("Bearer-{.key.id}-{.new.status}-{.xid > 1}");
    assert_eq!(
        t.render(&input).ok().as_deref(),
        Some("Bearer-42-approved-true")
    );
    let t = template("{ .table | ascii_upcase }{.schema}");
    assert_eq!(t.render(&input).ok().as_deref(), Some("PERMITSpublic"));
    // Braces inside the expression: object construction and strings.
    let t = template("x/{{a}}/{.new | {a: .id} | .a }/{.new.status | \"}\\(.)}\" }");
    assert_eq!(
        t.render(&input).ok().as_deref(),
        Some("x/{a}/42/}approved}")
    );
}

#[test]
fn mapping_template_static_and_literal_braces() {
    let t = template("https://x.example/api/update");
    assert!(t.is_static());
    assert_eq!(t.literal(), Some("https://x.example/api/update"));
    let t = template("a{{b}}c");
    assert!(t.is_static());
    assert_eq!(t.literal(), Some("a{b}c"));
    assert_eq!(t.render(&json!(null)).ok().as_deref(), Some("a{b}c"));
    assert_eq!(template("").literal(), Some(""));
}

#[test]
fn mapping_template_render_url_encodes_values_only() {
    let input = json!({"new": {"id": "a/b c", "n": "é?&=#%"}});
    let t = template("https://x.example/p/{.new.id}?q={.new.n}");
    assert_eq!(
        t.render_url(&input).ok().as_deref(),
        Some("https://x.example/p/a%2Fb%20c?q=%C3%A9%3F%26%3D%23%25")
    );
    assert_eq!(
        t.render(&input).ok().as_deref(),
        Some("https://x.example/p/a/b c?q=é?&=#%")
    );
}

#[test]
fn mapping_template_parse_errors() {
    for src in [
        "/p/{new.id}",
        "/p/{}",
        "/p/{schema}",
        "a}b",
        "/p/{.new.id",
        "/p/{.a | \"}",
    ] {
        match template_err(src) {
            MappingError::Template { key, message } => {
                assert_eq!(key, "sink[0].url");
                assert!(message.contains("1:"), "{src}: {message}");
            }
            other => panic!("{src}: {other:?}"),
        }
    }
    match template_err("https://x/{.new | nope}") {
        MappingError::Compile {
            key,
            position,
            message,
        } => {
            assert_eq!(key, "sink[0].url");
            assert_eq!(position.column, 19, "{message}");
            assert!(message.contains("{.new | nope}"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn mapping_template_render_errors() {
    let input = approved_update();
    for (src, what) in [
        ("/{.new.missing}", "null"),
        ("/{.old}", "object"),
        ("/{.key | [.id]}", "array"),
        ("/{.new.id, .key.id}", "more than one"),
        ("/{.new.id | empty}", "no value"),
    ] {
        match template(src).render(&input) {
            Err(MappingError::Template { key, message }) => {
                assert_eq!(key, "sink[0].url");
                assert!(message.contains(what), "{src}: {message}");
                assert!(message.contains(&src[1..]), "{src}: {message}");
            }
            other => panic!("{src}: {other:?}"),
        }
    }
    match template("/{.new.status + 1}").render(&input) {
        Err(MappingError::Runtime { key, message }) => {
            assert_eq!(key, "sink[0].url");
            assert!(message.contains("{.new.status + 1}"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
#[ignore = "micro-benchmark: cargo test -p pgcdc-schema --release mapping_bench -- --ignored --nocapture"]
fn mapping_bench() {
    let input = approved_update();
    let transform = jq("{registryId: .new.id}");
    let trigger = jq(r#".old.status != "approved" and .new.status == "approved""#);
    let n = 200_000u32;
    for (name, program) in [("transform", &transform), ("trigger", &trigger)] {
        let start = std::time::Instant::now();
        let mut outputs = 0usize;
        for _ in 0..n {
            outputs += program.run(&input).map(|o| o.len()).unwrap_or(0);
        }
        let secs = start.elapsed().as_secs_f64();
        assert_eq!(outputs, n as usize);
        println!("{name}: {:.0} evaluations/s", f64::from(n) / secs);
    }
}

#[test]
fn mapping_limits_cut_endless_generators_with_the_key() {
    let endless = jq("repeat(1)");
    match endless.run(&json!(null)) {
        Err(MappingError::Limit { key, message }) => {
            assert_eq!(key, "test.expr");
            assert!(message.contains("more than 10000 outputs"), "{message}");
            assert!(message.contains("max_outputs"), "{message}");
        }
        other => panic!("expected a limit error, got {other:?}"),
    }
    // Conditions and placeholders stop at the outputs they need.
    assert_eq!(endless.test(&json!(null)), Ok(true));
    assert_eq!(
        endless.first_outputs(&json!(null), 2).map(|v| v.len()),
        Ok(2)
    );
    // Exactly the limit is fine.
    assert_eq!(
        jq("range(10000)").run(&json!(null)).map(|v| v.len()),
        Ok(10000)
    );
}

#[test]
fn mapping_evaluate_answers_each_call_in_order() {
    let double = jq(".x * 2");
    let fails = jq("error(\"no\")");
    let (a, b) = (json!({"x": 1}), json!({"x": 2}));
    let results = evaluate(&[
        JqCall {
            program: &double,
            input: &a,
            want: Want::All,
        },
        JqCall {
            program: &fails,
            input: &a,
            want: Want::Truth,
        },
        JqCall {
            program: &double,
            input: &b,
            want: Want::Truth,
        },
    ]);
    assert_eq!(results[0], Ok(vec![json!(2)]));
    assert!(
        matches!(&results[1], Err(MappingError::Runtime { message, .. }) if message.contains("no"))
    );
    assert_eq!(results[2], Ok(vec![json!(true)]));
}
