//! The HTTP sink over TLS: a custom CA (`tls.ca`) and a client certificate
//! (`tls.client_cert`/`client_key`) against an HTTPS receiver that requires mTLS.

use std::sync::Arc;

use pgcdc_schema::{ChangeEvent, EventId, Lsn, Op};
use pgcdc_sinks::http::{HttpSink, HttpSinkConfig, TlsConfig};
use pgcdc_sinks::{AuditLog, ItemResult, Outgoing, Sink};
use pgcdc_tests::http_receiver::Receiver;
use pgcdc_tests::{generate_pki, TestPki};

fn item() -> Outgoing {
    let event = ChangeEvent {
        id: EventId::from_position(Lsn(0x10), 0),
        op: Op::Insert,
        schema: "public".into(),
        table: "permits".into(),
        key: None,
        old: None,
        new: None,
        trigger: None,
        lsn: Lsn(0x10),
        xid: Some(1),
        commit_time: Some("2026-11-26T10:00:00Z".into()),
        unchanged_toast: vec![],
        columns: None,
        previous: None,
        origin: Default::default(),
    };
    Outgoing {
        event: Arc::new(event),
        body: serde_json::json!({"permit": 1}),
        part: 0,
        row: "public.permits{\"id\":1}".into(),
    }
}

fn config(url: &str, tls: Option<TlsConfig>) -> HttpSinkConfig {
    let mut cfg = HttpSinkConfig::new(url);
    cfg.retry.max_attempts = Some(1);
    cfg.timeout_ms = 5_000;
    cfg.tls = tls;
    cfg
}

fn tls(pki: &TestPki, client: bool) -> TlsConfig {
    TlsConfig {
        ca: Some(pki.ca_cert.display().to_string()),
        client_cert: client.then(|| pki.client_cert.display().to_string()),
        client_key: client.then(|| pki.client_key.display().to_string()),
    }
}

async fn deliver_one(cfg: HttpSinkConfig) -> anyhow::Result<ItemResult> {
    let mut sink = HttpSink::new("api", cfg.validated("sink[0]")?, AuditLog::disabled())?;
    let mut results = sink.deliver(&[item()]).await?;
    Ok(results.remove(0))
}

#[tokio::test(flavor = "multi_thread")]
async fn mtls_with_a_custom_ca_delivers_and_refusals_are_clear() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let pki = generate_pki(dir.path()).await?;
    let rx = Receiver::start_tls(&pki.server_cert, &pki.server_key, Some(&pki.ca_cert)).await?;
    anyhow::ensure!(rx.url().starts_with("https://localhost:"), "{}", rx.url());

    // Custom CA + client certificate: delivered over mTLS.
    let ok = deliver_one(config(&rx.url(), Some(tls(&pki, true)))).await?;
    anyhow::ensure!(ok == ItemResult::Delivered, "mTLS delivery: {ok:?}");
    anyhow::ensure!(
        rx.api_requests().len() == 1,
        "the receiver saw {} requests",
        rx.api_requests().len()
    );
    anyhow::ensure!(rx.api_requests()[0].json() == serde_json::json!({"permit": 1}));

    // No client certificate: the server ends the handshake; nothing arrives.
    match deliver_one(config(&rx.url(), Some(tls(&pki, false)))).await? {
        ItemResult::DeadLettered { error } => anyhow::ensure!(!error.is_empty(), "empty error"),
        other => anyhow::bail!("delivered without a client certificate: {other:?}"),
    }
    // Without the custom CA the server's certificate is not trusted.
    match deliver_one(config(&rx.url(), None)).await? {
        ItemResult::DeadLettered { error } => {
            anyhow::ensure!(
                error.to_lowercase().contains("certificate")
                    || error.contains("TLS")
                    || error.contains("connect"),
                "{error}"
            )
        }
        other => anyhow::bail!("delivered to an untrusted server: {other:?}"),
    }
    anyhow::ensure!(
        rx.api_requests().len() == 1,
        "refused requests reached the API"
    );

    // A plain HTTPS server (no client auth) with only the custom CA works too.
    let plain = Receiver::start_tls(&pki.server_cert, &pki.server_key, None).await?;
    let ok = deliver_one(config(&plain.url(), Some(tls(&pki, false)))).await?;
    anyhow::ensure!(ok == ItemResult::Delivered, "custom CA: {ok:?}");
    Ok(())
}
