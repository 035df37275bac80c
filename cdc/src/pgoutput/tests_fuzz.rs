//! The decoder's fuzz run, on the stable toolchain, in every `cargo test`:
//! structure-aware generation (every message kind, inside and outside a
//! stream) checked for `decode(encode(msg)) == msg`, and mutated or random
//! bytes checked to never panic, each for a bounded time; plus a replay of
//! the corpus kept in the repository (`cdc/fuzz/corpus/`).
//!
//! Seeds run 0, 1, 2, ... until the time is up, so a failure names a seed that
//! reproduces it exactly (`PGCDC_FUZZ_SEED=<n>` runs just that one). The
//! budget per test is `PGCDC_FUZZ_SECS` (default 30: the two tests take about
//! 60 s of one core per CI run).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::tests_encoder::{carries_xid_in_stream, encode, encode_in_stream};
use super::tests_generator::{message, mutate, XorShift, KINDS};
use super::{decode, decode_bytes, decode_stream_bytes, StreamedMessage};

const DEFAULT_SECS: u64 = 30;

/// The seeds to run: one when `PGCDC_FUZZ_SEED` is set, else 0.. until `PGCDC_FUZZ_SECS`.
fn seeds() -> (u64, Option<u64>, Duration) {
    let budget = std::env::var("PGCDC_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SECS);
    match std::env::var("PGCDC_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        Some(seed) => (seed, Some(seed), Duration::MAX),
        None => (0, None, Duration::from_secs(budget)),
    }
}

/// Runs `case` for each seed until the budget is spent; a panic names the seed.
fn run(name: &str, mut case: impl FnMut(u64)) -> u64 {
    let (first, only, budget) = seeds();
    let started = Instant::now();
    let mut seed = first;
    loop {
        if catch_unwind(AssertUnwindSafe(|| case(seed))).is_err() {
            panic!(
                "{name} failed at seed {seed}: rerun with PGCDC_FUZZ_SEED={seed} cargo test -p pgcdc \
                 {name}; once fixed, add the input (printed above) to cdc/fuzz/corpus/regressions.hex"
            );
        }
        seed += 1;
        if only.is_some() || started.elapsed() >= budget {
            return seed - first;
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn fuzz_every_message_kind_round_trips() {
    let mut seen = [false; KINDS];
    let runs = run("fuzz_every_message_kind_round_trips", |seed| {
        let mut rng = XorShift::new(seed);
        let kind = rng.below(KINDS);
        seen[kind] = true;
        let msg = message(&mut rng, kind);
        let bytes = encode(&msg);
        assert_eq!(decode(&bytes), Ok(msg.clone()), "input {}", hex(&bytes));
        let xid = u32::try_from(rng.next() >> 32).unwrap_or(0);
        let bytes = Bytes::from(encode_in_stream(xid, &msg));
        let expected = StreamedMessage {
            xid: carries_xid_in_stream(bytes[0]).then_some(xid),
            message: msg,
        };
        assert_eq!(
            decode_stream_bytes(&bytes),
            Ok(expected),
            "stream input {}",
            hex(&bytes)
        );
    });
    eprintln!("round-tripped {runs} generated messages");
    if std::env::var("PGCDC_FUZZ_SEED").is_err() {
        assert!(seen.iter().all(|s| *s), "kinds not generated: {seen:?}");
    }
}

/// Decodes `input` both ways and in both contexts; whatever decodes must mean
/// the same after re-encoding.
fn check_never_panics(input: &[u8]) {
    let copied = decode(input);
    assert_eq!(copied, decode_bytes(&Bytes::copy_from_slice(input)));
    match copied {
        Ok(msg) => assert_eq!(decode(&encode(&msg)), Ok(msg), "input {}", hex(input)),
        Err(e) => assert!(!e.to_string().is_empty()),
    }
    if let Ok(streamed) = decode_stream_bytes(&Bytes::copy_from_slice(input)) {
        let again = encode_in_stream(streamed.xid.unwrap_or(0), &streamed.message);
        assert_eq!(
            decode_stream_bytes(&Bytes::from(again)),
            Ok(streamed),
            "stream input {}",
            hex(input)
        );
    }
}

#[test]
fn fuzz_mutated_and_random_bytes_never_panic() {
    const TAGS: &[u8] = b"BCORYIUDTMSEcA";
    let runs = run("fuzz_mutated_and_random_bytes_never_panic", |seed| {
        let mut rng = XorShift::new(seed);
        let input = if seed % 2 == 0 {
            let kind = rng.below(KINDS);
            let msg = message(&mut rng, kind);
            let mut bytes = if rng.below(2) == 0 {
                encode(&msg)
            } else {
                encode_in_stream(rng.below(1_000) as u32, &msg)
            };
            mutate(&mut rng, &mut bytes);
            bytes
        } else {
            // Random bodies behind a real tag, so decoding gets past byte 0.
            let len = rng.below(48);
            let mut bytes = vec![TAGS[rng.below(TAGS.len())]];
            bytes.extend((0..len).map(|_| rng.byte()));
            bytes
        };
        if let Err(panic) = catch_unwind(|| check_never_panics(&input)) {
            eprintln!("input {}", hex(&input));
            std::panic::resume_unwind(panic);
        }
    });
    eprintln!("decoded {runs} mutated or random inputs");
}

/// Every input of the corpus kept in the repository (seeds and past failures).
#[test]
fn fuzz_corpus_replays() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let mut inputs = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.map(|e| e.path()).unwrap_or_default();
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bytes: Vec<u8> = (0..line.len() / 2)
                .map(|i| u8::from_str_radix(&line[2 * i..2 * i + 2], 16))
                .collect::<Result<_, _>>()
                .unwrap_or_else(|e| panic!("{}: bad hex line {line}: {e}", path.display()));
            check_never_panics(&bytes);
            inputs += 1;
        }
    }
    assert!(inputs >= 20, "corpus has only {inputs} inputs");
}
