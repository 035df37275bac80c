use std::path::Path;

use axum::http::HeaderValue;

use super::*;

fn config(admin: &str) -> Result<Config, crate::config::ConfigError> {
    let text = format!(
        "[source]\nurl = \"postgres://u@127.0.0.1:5432/db\"\ntables = [\"public.t\"]\n\n[admin]\n{admin}\n"
    );
    Config::parse(&text, Path::new("test.toml"), &|name| {
        (name == "TOKEN").then(|| "s3cret".to_string())
    })
}

fn err(admin: &str) -> String {
    match config(admin) {
        Ok(_) => panic!("config with [admin] {admin:?} loaded"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn admin_config_defaults_and_validation() {
    let c = config("").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.admin.listen, "127.0.0.1:9187");
    assert!(c.admin.token.is_none());

    let c =
        config("listen = \"0.0.0.0:9000\"\ntoken = \"${TOKEN}\"").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.admin.token.as_ref().map(Secret::expose), Some("s3cret"));
    assert!(
        !format!("{c:?}").contains("s3cret"),
        "Debug must redact the token"
    );

    let e = err("listen = \"0.0.0.0:9187\"");
    assert!(
        e.contains("admin.listen") && e.contains("admin.token"),
        "{e}"
    );
    let e = err("listen = \"localhost\"");
    assert!(e.contains("admin.listen") && e.contains("IP:PORT"), "{e}");
    let e = err("token = \"\"");
    assert!(e.contains("admin.token"), "{e}");
    let e = err("port = 1");
    assert!(e.contains("port"), "{e}");
    config("listen = \"[::1]:9187\"").unwrap_or_else(|e| panic!("{e}"));
}

fn state(token: Option<&str>, loopback: bool) -> AdminState {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let journal = crate::journal::Store::sqlite(dir.path())
        .open(crate::journal::Access::Create)
        .unwrap_or_else(|e| panic!("{e}"));
    let c = config("").unwrap_or_else(|e| panic!("{e}"));
    AdminState {
        config: Arc::new(c),
        sink_names: vec!["hook".into()],
        journal: Mutex::new(journal),
        token: token.map(|t| {
            serde_json::from_value(serde_json::json!(t)).unwrap_or_else(|e| panic!("{e}"))
        }),
        loopback,
        status_permits: tokio::sync::Semaphore::new(STATUS_CONCURRENCY),
    }
}

fn kind(r: Result<(), ApiError>) -> &'static str {
    match r {
        Ok(()) => "ok",
        Err(ApiError::Unauthorized(_)) => "401",
        Err(ApiError::Forbidden(_)) => "403",
        Err(_) => "other",
    }
}

#[test]
fn bearer_token_is_required_when_configured() {
    let s = state(Some("s3cret"), true);
    let h = |v: &'static str| HeaderValue::from_static(v);
    assert_eq!(kind(authorize(&s, None)), "401");
    assert_eq!(kind(authorize(&s, Some(&h("Basic s3cret")))), "401");
    assert_eq!(kind(authorize(&s, Some(&h("Bearer s3cre")))), "403");
    assert_eq!(kind(authorize(&s, Some(&h("Bearer s3cret!")))), "403");
    assert_eq!(kind(authorize(&s, Some(&h("Bearer s3cret")))), "ok");
}

#[test]
fn without_a_token_only_loopback_may_mutate() {
    assert_eq!(kind(authorize(&state(None, true), None)), "ok");
    assert_eq!(kind(authorize(&state(None, false), None)), "403");
    assert!(state(None, true).known_sink("hook").is_ok());
    assert!(matches!(
        state(None, true).known_sink("nope"),
        Err(ApiError::NotFound(m)) if m.contains("hook")
    ));
}

#[test]
fn constant_time_eq_compares_whole_strings() {
    assert!(constant_time_eq(b"abc", b"abc"));
    assert!(!constant_time_eq(b"abc", b"abd"));
    assert!(!constant_time_eq(b"abc", b"abcd"));
    assert!(!constant_time_eq(b"", b"a"));
    assert!(constant_time_eq(b"", b""));
}
