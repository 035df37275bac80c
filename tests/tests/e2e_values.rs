//! End to end: values and configuration text keep their meaning. json/jsonb
//! numbers stay exact numbers (never rounded to f64, never turned into
//! strings by size or depth); jq programs are taken verbatim from the config
//! (no `${VAR}` substitution into them, `$${` is a literal `${` elsewhere);
//! a refused librdkafka property is named without its value.

mod e2e_fixture;

use std::time::Duration;

use anyhow::{ensure, Context};
use e2e_fixture::{config_toml, next_lines, start_streaming};
use pgcdc_tests::{state_dir, ConfigFile, PgCluster};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread")]
async fn json_numbers_are_exact_and_deep_json_stays_json() -> anyhow::Result<()> {
    let pg = PgCluster::new().await?;
    pg.batch("CREATE TABLE docs (id int PRIMARY KEY, j json, b jsonb)")
        .await?;
    let state = state_dir()?;
    let cfg = ConfigFile::new(&config_toml(&pg.url(), &["public.docs"], state.path(), ""))?;
    let mut p = start_streaming(&pg, &cfg).await?;

    let nested = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
    pg.batch(&format!(
        "INSERT INTO docs VALUES
           (1, '{{\"big\":123456789012345678901234567890}}', '{{\"big\":123456789012345678901234567890}}'),
           (2, '{{\"p\":3.14159265358979323846}}', '{{\"p\":3.14159265358979323846}}'),
           (3, '{{\"n\":1e400}}', '{{\"n\":1e400}}'),
           (4, '{}', '{}'),
           (5, '{}', '{}');",
        nested(200),
        nested(200),
        nested(600),
        nested(600),
    ))
    .await?;
    let lines = next_lines(&mut p, 5, Duration::from_secs(60)).await?;
    // The raw line: the digits must be there verbatim, as JSON numbers.
    ensure!(
        lines[0].contains(r#""j":{"big":123456789012345678901234567890}"#)
            && lines[0].contains(r#""b":{"big":123456789012345678901234567890}"#),
        "big integers must keep every digit: {}",
        lines[0]
    );
    ensure!(
        lines[1].contains(r#""j":{"p":3.14159265358979323846}"#)
            && lines[1].contains(r#""b":{"p":3.14159265358979323846}"#),
        "decimals must keep every digit: {}",
        lines[1]
    );
    let ev: Value = serde_json::from_str(&lines[2]).context("event 3")?;
    ensure!(
        ev["new"]["j"]["n"].is_number() && ev["new"]["b"]["n"].is_number(),
        "1e400 must stay a number: {}",
        lines[2]
    );
    ensure!(
        lines[2].contains(&format!(r#""b":{{"n":1{}}}"#, "0".repeat(400))),
        "jsonb's 1e400 (401 digits) must be exact"
    );
    // 200 levels: deeper than serde_json's default limit of 128, still JSON.
    let ev4 = &lines[3];
    ensure!(
        ev4.contains(&format!(r#""b":{}"#, nested(200)))
            && ev4.contains(&format!(r#""j":{}"#, nested(200))),
        "200 levels of nesting must stay JSON arrays: {}",
        &ev4[..ev4.len().min(300)]
    );
    // 600 levels: past pgcdc's limit; the event says so explicitly, with the text.
    let ev: Value = serde_json::from_str(&lines[4]).context("event 5")?;
    for col in ["j", "b"] {
        let v = &ev["new"][col];
        ensure!(
            v["__pgcdc_unrepresentable"]
                .as_str()
                .is_some_and(|why| why.contains("600 levels")),
            "{col}: {v}"
        );
        ensure!(v["text"] == Value::String(nested(600)), "{col}: text kept");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn jq_programs_are_verbatim_and_dollar_dollar_is_a_literal() -> anyhow::Result<()> {
    let pg = PgCluster::new().await?;
    pg.batch("CREATE TABLE permits (id int PRIMARY KEY, status text)")
        .await?;
    let state = state_dir()?;
    let extra = r#"transform = '{a: "cost ${5}", b: "${HOME}", id: .new.id}'
filter = '.new.status != "${NOPE_NOT_SET}"'
"#;
    let mut text = config_toml(&pg.url(), &["public.permits"], state.path(), extra);
    // `$${` outside a program: a literal `${` (here in the heartbeat... a string key
    // that is echoed back: the publication name would be refused, so use the slot's
    // application_name in the URL).
    text = text.replacen(
        &pg.url(),
        &format!(
            "{}{}application_name=lit$${{X}}",
            pg.url(),
            if pg.url().contains('?') { "&" } else { "?" }
        ),
        1,
    );
    let cfg = ConfigFile::new(&text)?;
    let mut p = start_streaming(&pg, &cfg).await?;
    let app: String = pg
        .query_scalar(
            "SELECT application_name FROM pg_stat_activity WHERE application_name LIKE 'lit%' LIMIT 1",
        )
        .await?;
    ensure!(app == "lit${X}", "application_name: {app}");

    pg.execute("INSERT INTO permits VALUES (1, 'new')").await?;
    let lines = next_lines(&mut p, 1, Duration::from_secs(60)).await?;
    let ev: Value = serde_json::from_str(&lines[0])?;
    ensure!(
        ev == serde_json::json!({"a": "cost ${5}", "b": "${HOME}", "id": 1}),
        "the program must see its text verbatim: {ev}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_librdkafka_property_is_named_without_its_value() -> anyhow::Result<()> {
    let state = state_dir()?;
    for (key, value) in [
        ("sasl.pasword", "${KPW}"),
        (
            "sasl.jaas.config",
            r#"org.apache.kafka.common.security.plain.PlainLoginModule required username=\"u\" password=\"${KPW}\";"#,
        ),
    ] {
        let toml = format!(
            "[source]\nurl = \"postgres://u@127.0.0.1:1/db\"\ntables = [\"public.permits\"]\n\n\
             [state]\ndir = \"{}\"\n\n[[sink]]\nname = \"bus\"\ntype = \"kafka\"\n\
             brokers = \"127.0.0.1:1\"\n[sink.librdkafka]\n\"{key}\" = \"{value}\"\n",
            state.path().display()
        );
        let cfg = ConfigFile::new(&toml)?;
        for cmd in ["check", "run"] {
            let (code, out, err) = e2e_fixture::run_output_env(
                &pgcdc_tests::pgcdc_bin(),
                &[cmd, "--config", &cfg.arg()],
                &[("KPW", "Hunter2-Kafka-Secret")],
            )
            .await?;
            let all = format!("{out}{err}");
            ensure!(code == 2, "{cmd} with {key}: exit {code}\n{all}");
            ensure!(
                all.contains(&format!("sink[0].librdkafka.\"{key}\"")),
                "{cmd}: the key must be named: {all}"
            );
            ensure!(
                !all.contains("Hunter2"),
                "{cmd}: the value must never be printed: {all}"
            );
        }
    }
    Ok(())
}
