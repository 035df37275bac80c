//! Unit tests of the pure parts: config, retry classification, backoff, signing.

use std::time::{Duration, SystemTime};

use super::config::{AuthConfig, HttpMethod, HttpSinkConfig, Secret};
use super::retry::{parse_retry_after, AttemptError, Disposition, RetryPolicy, RETRY_AFTER_CAP};
use super::signing::{batch_key, SigningKey};
use super::HTTP_KEYS;

fn parse(toml_like_json: serde_json::Value) -> Result<HttpSinkConfig, serde_json::Error> {
    serde_json::from_value(toml_like_json)
}

#[test]
fn defaults_retry_forever_from_half_a_second() {
    let cfg = parse(serde_json::json!({"url": "https://api.example/x"})).ok();
    let cfg = cfg.unwrap_or_else(|| HttpSinkConfig::new("bad"));
    assert_eq!(cfg.url, "https://api.example/x");
    assert_eq!(cfg.method, HttpMethod::Post);
    assert_eq!(cfg.timeout_ms, 10_000);
    assert_eq!(cfg.concurrency, 8);
    assert_eq!(cfg.retry.max_attempts, None);
    assert_eq!(cfg.retry.initial_backoff_ms, 500);
    assert_eq!(cfg.retry.max_backoff_ms, 60_000);
    assert_eq!(cfg.validate("sink[0]"), Ok(()));
}

#[test]
fn unknown_keys_are_rejected_and_http_keys_lists_every_field() {
    let err = parse(serde_json::json!({"url": "https://a/", "transform": "."}));
    assert!(err.is_err(), "engine-owned keys must not be accepted here");
    let mut all = serde_json::Map::new();
    for key in HTTP_KEYS {
        let v = match *key {
            "url" => serde_json::json!("https://a/"),
            "method" => serde_json::json!("PUT"),
            "headers" => serde_json::json!({"X-A": "b"}),
            "auth" => serde_json::json!({"type": "basic", "username": "u", "password": "p"}),
            "signing_secret" => serde_json::json!("whsec_c2VjcmV0"),
            "tls" => serde_json::json!({}),
            "rate_limit" => serde_json::json!(10.0),
            "batch" => serde_json::json!({"max_events": 5}),
            "retry" => serde_json::json!({"max_elapsed": "2d"}),
            _ => serde_json::json!(5),
        };
        all.insert((*key).into(), v);
    }
    let cfg = parse(serde_json::Value::Object(all));
    assert!(cfg.is_ok(), "{cfg:?}");
}

#[test]
fn validate_names_the_key_path() {
    let mut cfg = HttpSinkConfig::new("https://a/");
    cfg.retry.max_attempts = Some(0);
    let err = cfg.validate("sink[1]").err().map(|e| e.key);
    assert_eq!(err.as_deref(), Some("sink[1].retry.max_attempts"));

    let mut cfg = HttpSinkConfig::new("https://a/");
    cfg.retry.max_elapsed = Some("soon".into());
    let err = cfg.validate("sink[1]").err().map(|e| e.key);
    assert_eq!(err.as_deref(), Some("sink[1].retry.max_elapsed"));

    let mut cfg = HttpSinkConfig::new("ftp://a/");
    assert_eq!(
        cfg.validate("s").err().map(|e| e.key).as_deref(),
        Some("s.url")
    );
    cfg.url = "https://a/".into();
    cfg.headers.insert("Idempotency-Key".into(), "x".into());
    assert_eq!(
        cfg.validate("s").err().map(|e| e.key).as_deref(),
        Some("s.headers.Idempotency-Key")
    );

    let mut cfg = HttpSinkConfig::new("https://a/");
    cfg.auth = Some(AuthConfig::Bearer {
        token: None,
        token_file: None,
    });
    assert_eq!(
        cfg.validate("s").err().map(|e| e.key).as_deref(),
        Some("s.auth")
    );

    let mut cfg = HttpSinkConfig::new("https://a/");
    cfg.signing_secret = Some(Secret::new("nope"));
    let err = cfg.validate("s").err();
    assert_eq!(
        err.as_ref().map(|e| e.key.as_str()),
        Some("s.signing_secret")
    );
    assert!(!err
        .map(|e| e.to_string())
        .unwrap_or_default()
        .contains("nope"));
}

#[test]
fn secrets_never_print() {
    let cfg = parse(serde_json::json!({
        "url": "https://a/",
        "auth": {"type": "oauth2", "token_url": "https://t/", "client_id": "id",
                 "client_secret": "hunter2"},
        "signing_secret": "whsec_aHVudGVyMw=="
    }));
    let text = format!("{cfg:?}");
    assert!(text.contains("***"));
    assert!(!text.contains("hunter2"), "{text}");
    assert!(!text.contains("aHVudGVyMw"), "{text}");
    assert_eq!(Secret::new("x").to_string(), "***");
}

#[test]
fn retry_or_definite() {
    let s = |code| AttemptError::status(code, b"oops", None).disposition();
    for code in [408, 429, 500, 502, 503, 504, 599] {
        assert_eq!(s(code), Disposition::Retry { after: None }, "{code}");
    }
    for code in [301, 400, 401, 403, 404, 409, 422, 501] {
        assert_eq!(s(code), Disposition::Definite, "{code}");
    }
    let after = Some(Duration::from_secs(3));
    assert_eq!(
        AttemptError::status(429, b"", after).disposition(),
        Disposition::Retry { after }
    );
    assert_eq!(
        AttemptError::Timeout(Duration::from_secs(1)).disposition(),
        Disposition::Retry { after: None }
    );
    assert_eq!(
        AttemptError::Transport("reset".into()).disposition(),
        Disposition::Retry { after: None }
    );
    assert_eq!(
        AttemptError::Request("bad url".into()).disposition(),
        Disposition::Definite
    );
}

#[test]
fn error_body_is_cut_to_512_bytes() {
    let body = vec![b'a'; 2000];
    let text = AttemptError::status(400, &body, None).to_string();
    assert_eq!(text, format!("HTTP 400: {}", "a".repeat(512)));
}

#[test]
fn retry_after_seconds_and_http_date() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
    let later = httpdate::fmt_http_date(now + Duration::from_secs(90));
    assert_eq!(
        parse_retry_after(&later, now),
        Some(Duration::from_secs(90))
    );
    let earlier = httpdate::fmt_http_date(now - Duration::from_secs(90));
    assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
    assert_eq!(parse_retry_after("soon", now), None);
}

#[test]
fn backoff_is_capped_full_jitter_with_limits() {
    let mut cfg = super::RetryConfig {
        initial_backoff_ms: 100,
        max_backoff_ms: 1_000,
        ..Default::default()
    };
    let p = RetryPolicy::new(&cfg);
    let zero = Duration::ZERO;
    // The largest random value gives the ceiling: 100, 200, 400, 800, then capped.
    for (failed, ceiling) in [
        (1, 100),
        (2, 200),
        (3, 400),
        (4, 800),
        (5, 1000),
        (40, 1000),
    ] {
        assert_eq!(
            p.next_delay(failed, zero, None, ceiling),
            Some(Duration::from_millis(ceiling))
        );
        assert_eq!(p.next_delay(failed, zero, None, ceiling + 1), Some(zero));
    }
    // Retry-After is a floor, capped.
    let after = Some(Duration::from_secs(5));
    assert_eq!(
        p.next_delay(1, zero, after, 0),
        Some(Duration::from_secs(5))
    );
    let huge = Some(Duration::from_secs(10 * 3600));
    assert_eq!(p.next_delay(1, zero, huge, 0), Some(RETRY_AFTER_CAP));

    cfg.max_attempts = Some(3);
    cfg.max_elapsed = Some("2s".into());
    let p = RetryPolicy::new(&cfg);
    assert!(p.next_delay(2, zero, None, 0).is_some());
    assert_eq!(p.next_delay(3, zero, None, 0), None);
    assert_eq!(p.next_delay(1, Duration::from_millis(2001), None, 0), None);
}

#[test]
fn standard_webhooks_signature_matches_the_reference_vector() {
    // The example from the Standard Webhooks reference implementations.
    let key = SigningKey::parse(&Secret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"));
    let sig = key.map(|k| {
        k.sign(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            br#"{"test": 2432232314}"#,
        )
    });
    assert_eq!(
        sig.as_deref(),
        Ok("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=")
    );
    assert!(SigningKey::parse(&Secret::new("MfKQ9r8G")).is_err());
    assert!(SigningKey::parse(&Secret::new("whsec_!!!")).is_err());
}

#[test]
fn batch_key_is_stable_and_order_sensitive() {
    let a = batch_key(["1", "2"].into_iter());
    assert_eq!(a, batch_key(["1", "2"].into_iter()));
    assert_ne!(a, batch_key(["2", "1"].into_iter()));
    assert!(a.starts_with("batch-") && a.len() == 38, "{a}");
}
