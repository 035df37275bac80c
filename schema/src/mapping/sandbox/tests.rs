use std::borrow::Cow;

use serde_json::{json, Value};

use super::wire::{self, Call, Define, Reply, Request};
use super::*;
use crate::mapping::Want;

fn define(id: u64, source: &str) -> Define<'_> {
    Define {
        id,
        key: Cow::Borrowed("sink[0].transform"),
        source: Cow::Borrowed(source),
    }
}

fn call(program: u64, want: Want, input: Value) -> Call<'static> {
    Call {
        program,
        want,
        input: Cow::Owned(input),
    }
}

/// Serves `requests` as a worker would and returns its replies.
fn serve_all(requests: &[Request<'_>], limits: Limits) -> Vec<Reply> {
    let mut input = Vec::new();
    for r in requests {
        let bytes = serde_json::to_vec(r).unwrap_or_else(|e| panic!("{e}"));
        wire::write_frame(&mut input, &bytes).unwrap_or_else(|e| panic!("{e}"));
    }
    let mut out = Vec::new();
    worker::serve(&mut input.as_slice(), &mut out, limits).unwrap_or_else(|e| panic!("{e}"));
    let mut replies = Vec::new();
    let mut rest = out.as_slice();
    while let Some(frame) = wire::read_frame(&mut rest).unwrap_or_else(|e| panic!("{e}")) {
        replies.push(serde_json::from_slice(&frame).unwrap_or_else(|e| panic!("{e}")));
    }
    replies
}

#[test]
fn sandbox_worker_answers_each_call_in_order_and_caches_programs() {
    let replies = serve_all(
        &[
            Request {
                define: vec![define(1, "{a: .x}"), define(2, ".x > 1")],
                calls: vec![
                    call(1, Want::All, json!({"x": 1})),
                    call(2, Want::Truth, json!({"x": 2})),
                ],
            },
            // A later request reuses program 1 without sending it again.
            Request {
                define: vec![],
                calls: vec![
                    call(1, Want::All, json!({"x": 3})),
                    call(9, Want::All, json!(null)),
                ],
            },
        ],
        Limits::DEFAULT,
    );
    assert!(matches!(&replies[0], Reply::Ok(v) if v == &vec![json!({"a": 1})]));
    assert!(matches!(&replies[1], Reply::Ok(v) if v == &vec![json!(true)]));
    assert!(matches!(&replies[2], Reply::Ok(v) if v == &vec![json!({"a": 3})]));
    assert!(matches!(&replies[3], Reply::Runtime(m) if m.contains("never sent")));
    assert_eq!(replies.len(), 4);
}

#[test]
fn sandbox_worker_caps_outputs_and_output_bytes() {
    let limits = Limits {
        max_outputs: 100,
        max_output_bytes: 1000,
        ..Limits::DEFAULT
    };
    let replies = serve_all(
        &[Request {
            define: vec![
                define(1, "repeat(1)"),
                define(2, "range(10) | \"x\" * 200"),
                define(3, "error(\"boom\")"),
            ],
            calls: vec![
                call(1, Want::All, json!(null)),
                // A condition stops at its first output, so a generator is fine there.
                call(1, Want::Truth, json!(null)),
                call(1, Want::First(2), json!(null)),
                call(2, Want::All, json!(null)),
                call(3, Want::All, json!(null)),
            ],
        }],
        limits,
    );
    assert!(
        matches!(&replies[0], Reply::Limit(m) if m.contains("more than 100 outputs") && m.contains("max_outputs")),
        "{replies:?}"
    );
    assert!(matches!(&replies[1], Reply::Ok(v) if v == &vec![json!(true)]));
    assert!(matches!(&replies[2], Reply::Ok(v) if v.len() == 2));
    assert!(
        matches!(&replies[3], Reply::Limit(m) if m.contains("1000 bytes") && m.contains("max_output_bytes")),
        "{replies:?}"
    );
    assert!(matches!(&replies[4], Reply::Runtime(m) if m.contains("boom")));
}

#[test]
fn sandbox_frames_reject_oversized_lengths() {
    let mut frame = Vec::new();
    frame.extend_from_slice(&u32::MAX.to_le_bytes());
    let err = wire::read_frame(&mut frame.as_slice()).err();
    assert!(err.is_some_and(|e| e.to_string().contains("over the limit")));
    // A stream cut inside the length is a clean end; inside the payload, an error.
    assert!(matches!(
        wire::read_frame(&mut [1u8, 0].as_slice()),
        Ok(None)
    ));
    assert!(wire::read_frame(&mut [5u8, 0, 0, 0, b'{'].as_slice()).is_err());
}

#[test]
fn sandbox_explains_a_dead_worker() {
    let overflow = explain(
        "its reply pipe closed",
        None,
        "\nthread 'jq-eval' has overflowed its stack\nfatal runtime error: stack overflow\n",
    );
    assert!(overflow.contains("recursed too deeply"), "{overflow}");
    let oom = explain("x", None, "memory allocation of 1048576 bytes failed\n");
    assert!(oom.contains("max_memory_mb"), "{oom}");
    let deep = explain(
        "its reply pipe closed",
        None,
        "pgcdc jq worker: bad request: recursion limit exceeded at line 1 column 130\n",
    );
    assert!(deep.contains("128 levels"), "{deep}");
    let other = explain("its reply pipe closed", None, "something odd\n");
    assert!(
        other.contains("died") && other.contains("something odd"),
        "{other}"
    );
}

#[test]
fn sandbox_that_cannot_start_fails_each_call_with_the_key() {
    let sandbox = Sandbox::new("/nonexistent/pgcdc-worker", Vec::new(), Limits::DEFAULT);
    let program =
        crate::mapping::JqProgram::compile("sink[2].filter", ".").unwrap_or_else(|e| panic!("{e}"));
    let input = json!(1);
    let results = sandbox.evaluate(&[JqCall {
        program: &program,
        input: &input,
        want: Want::Truth,
    }]);
    assert!(
        matches!(&results[..], [Err(MappingError::Limit { key, message })]
            if key == "sink[2].filter" && message.contains("cannot start a jq worker")),
        "{results:?}"
    );
}

/// A real child process: `sh` stands in for a worker that hangs or dies,
/// which the pgcdc binary's e2e tests cover with real jq programs.
#[test]
fn sandbox_kills_a_worker_that_does_not_answer_in_time() {
    let limits = Limits {
        timeout_ms: 200,
        ..Limits::DEFAULT
    };
    let hang = Sandbox::new("sh", vec!["-c".into(), "exec sleep 30".into()], limits);
    let program = crate::mapping::JqProgram::compile("sink[0].transform", ".")
        .unwrap_or_else(|e| panic!("{e}"));
    let input = json!(1);
    let calls = [JqCall {
        program: &program,
        input: &input,
        want: Want::All,
    }; 2];
    let started = std::time::Instant::now();
    let results = hang.evaluate(&calls);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        matches!(&results[0], Err(MappingError::Limit { message, .. }) if message.contains("ran longer than 200 ms")),
        "{results:?}"
    );
    assert!(
        matches!(&results[1], Err(MappingError::Limit { message, .. }) if message.contains("not evaluated")),
        "{results:?}"
    );

    let crash = Sandbox::new(
        "sh",
        vec![
            "-c".into(),
            "echo \"thread 'jq-eval' has overflowed its stack\" >&2; exit 134".into(),
        ],
        limits,
    );
    let results = crash.evaluate(&calls[..1]);
    assert!(
        matches!(&results[0], Err(MappingError::Limit { key, message })
            if key == "sink[0].transform" && message.contains("recursed too deeply")),
        "{results:?}"
    );
}
