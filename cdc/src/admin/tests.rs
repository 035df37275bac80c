use std::path::Path;

use axum::http::HeaderValue;

use super::*;
use crate::config::Secret;

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
    let c = config("allowed_hosts = [\"pgcdc.internal\"]").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.admin.allowed_hosts, ["pgcdc.internal"]);
}

#[test]
fn resync_statement_timeout_defaults_and_must_be_a_positive_duration() {
    let parse = |extra: &str| {
        let text = format!(
            "[source]\nurl = \"postgres://u@127.0.0.1:5432/db\"\ntables = [\"public.t\"]\n{extra}\n"
        );
        Config::parse(&text, Path::new("test.toml"), &|_| None)
    };
    let c = parse("").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        c.source.resync_statement_timeout(),
        std::time::Duration::from_secs(60)
    );
    let c = parse("resync_statement_timeout = \"2s\"").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        c.source.resync_statement_timeout(),
        std::time::Duration::from_secs(2)
    );
    for bad in ["\"0s\"", "\"soon\""] {
        let e = parse(&format!("resync_statement_timeout = {bad}"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("source.resync_statement_timeout"), "{bad}: {e}");
    }
}

fn guard(token: &str, configured: bool) -> guard::Guard {
    guard::Guard::new(
        Secret::new(token),
        configured,
        &["pgcdc.example.org".to_string()],
    )
}

fn kind(r: Result<(), ApiError>) -> &'static str {
    match r {
        Ok(()) => "ok",
        Err(ApiError::Unauthorized(_)) => "401",
        Err(ApiError::Forbidden(_)) => "403",
        Err(ApiError::UnsupportedMediaType(_)) => "415",
        Err(_) => "other",
    }
}

#[test]
fn bearer_token_is_required() {
    let g = guard("s3cret", false);
    let h = |v: &'static str| HeaderValue::from_static(v);
    assert_eq!(kind(g.authorize(None)), "401");
    assert_eq!(kind(g.authorize(Some(&h("Basic s3cret")))), "401");
    assert_eq!(kind(g.authorize(Some(&h("Bearer s3cre")))), "403");
    assert_eq!(kind(g.authorize(Some(&h("Bearer s3cret!")))), "403");
    assert_eq!(kind(g.authorize(Some(&h("Bearer s3cret")))), "ok");
}

/// Headers from `(name, value)` pairs.
fn headers(pairs: &[(&'static str, &'static str)]) -> axum::http::HeaderMap {
    let mut h = axum::http::HeaderMap::new();
    for (k, v) in pairs {
        h.insert(*k, HeaderValue::from_static(v));
    }
    h
}

#[test]
fn mutations_always_need_the_token_reads_only_when_configured() {
    use axum::http::Method;
    let json = [
        ("host", "127.0.0.1:9187"),
        ("content-type", "application/json"),
    ];
    let authed = [
        ("host", "127.0.0.1:9187"),
        ("content-type", "application/json"),
        ("authorization", "Bearer s3cret"),
    ];
    for configured in [false, true] {
        let g = guard("s3cret", configured);
        let post = |h: &[(&'static str, &'static str)]| {
            kind(g.check(&Method::POST, "/api/resync", &headers(h)))
        };
        assert_eq!(post(&json), "401");
        assert_eq!(post(&authed), "ok");
        let get = |path: &str| kind(g.check(&Method::GET, path, &headers(&json)));
        for probe in ["/healthz", "/readyz", "/metrics", "/"] {
            assert_eq!(get(probe), "ok", "{probe}");
        }
        let row_data = if configured { "401" } else { "ok" };
        for read in ["/api/status", "/api/sinks/hook/dlq", "/api/audit?sink=hook"] {
            assert_eq!(
                get(read),
                row_data,
                "{read} (configured token: {configured})"
            );
        }
    }
}

#[test]
fn foreign_hosts_origins_and_bodies_are_refused() {
    use axum::http::Method;
    let g = guard("s3cret", false);
    let post = |h: &[(&'static str, &'static str)]| {
        let mut all = headers(h);
        all.insert("authorization", HeaderValue::from_static("Bearer s3cret"));
        if !all.contains_key("content-type") {
            all.insert("content-type", HeaderValue::from_static("application/json"));
        }
        kind(g.check(&Method::POST, "/api/resync", &all))
    };
    for ok in [
        "127.0.0.1:9187",
        "[::1]:9187",
        "localhost:9187",
        "LOCALHOST",
        "10.1.2.3",
        "pgcdc.example.org:9187",
    ] {
        assert_eq!(post(&[("host", ok)]), "ok", "{ok}");
    }
    for bad in [
        "attacker.example:9187",
        "127.0.0.1.nip.io:9187",
        "",
        "example.org",
    ] {
        assert_eq!(post(&[("host", bad)]), "403", "{bad}");
    }
    // Probes answer under any name (a Service's), and without any check.
    assert_eq!(
        kind(g.check(
            &Method::GET,
            "/metrics",
            &headers(&[("host", "pgcdc.monitoring.svc")])
        )),
        "ok"
    );
    let h = "127.0.0.1:9187";
    assert_eq!(
        post(&[("host", h), ("origin", "http://127.0.0.1:9187")]),
        "ok"
    );
    assert_eq!(
        post(&[("host", h), ("origin", "http://evil.example")]),
        "403"
    );
    assert_eq!(post(&[("host", h), ("origin", "null")]), "403");
    assert_eq!(
        post(&[("host", h), ("sec-fetch-site", "cross-site")]),
        "403"
    );
    assert_eq!(post(&[("host", h), ("sec-fetch-site", "same-site")]), "403");
    assert_eq!(
        post(&[("host", h), ("sec-fetch-site", "same-origin")]),
        "ok"
    );
    let form = ("content-type", "application/x-www-form-urlencoded");
    assert_eq!(post(&[("host", h), form]), "415");
    assert_eq!(post(&[("host", h), ("content-type", "text/plain")]), "415");
    assert_eq!(
        post(&[
            ("host", h),
            ("content-type", "application/json; charset=utf-8")
        ]),
        "ok"
    );
    let bare = headers(&[("host", h), ("authorization", "Bearer s3cret")]);
    assert_eq!(kind(g.check(&Method::POST, "/api/resync", &bare)), "415");
    assert_eq!(
        kind(g.check(&Method::DELETE, "/api/resync/public.t", &bare)),
        "ok"
    );
}

#[test]
fn constant_time_eq_compares_whole_strings() {
    use guard::constant_time_eq;
    assert!(constant_time_eq(b"abc", b"abc"));
    assert!(!constant_time_eq(b"abc", b"abd"));
    assert!(!constant_time_eq(b"abc", b"abcd"));
    assert!(!constant_time_eq(b"", b"a"));
    assert!(constant_time_eq(b"", b""));
}
