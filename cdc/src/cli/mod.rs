//! Command-line interface: `pgcdc run | check | status | dlq | audit`.

pub mod operator;
pub mod resync;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::json;
use tokio::sync::watch;

use crate::config::{Config, SinkKind};
use crate::journal::{Access, Store};
use crate::replication::connect_sql;
use crate::{engine, source, status};
use pgcdc_sinks::AuditLog;

/// Change-data-capture from Postgres to HTTP APIs and Kafka.
#[derive(Debug, Parser)]
#[command(name = "pgcdc", version, about)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Log line format.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable.
    Text,
    /// One JSON object per line.
    Json,
}

/// pgcdc commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Stream changes and deliver them until SIGINT/SIGTERM.
    Run {
        /// Config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Preflight: check the source (and sinks); exit 0 only when ready.
    Check {
        /// Config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Slot, WAL retained, journal head, each sink's cursor and lag.
    Status {
        /// Config file.
        #[arg(long, short)]
        config: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Dead-letter queue of a sink: list, replay or drop.
    #[command(subcommand)]
    Dlq(operator::DlqCommand),
    /// Recorded delivery attempts.
    Audit(operator::AuditArgs),
    /// Sink cursors: `pgcdc checkpoint reset`.
    #[command(subcommand)]
    Checkpoint(operator::CheckpointCommand),
    /// Drop the slot and the publication that pgcdc created (not ones it found).
    Teardown(operator::TeardownArgs),
    /// Re-send a table's current rows to one sink or all, while streaming goes on.
    Resync(resync::ResyncArgs),
}

/// Sets up `tracing` on stderr.
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PGCDC_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Runs a command; returns the process exit code.
pub async fn execute(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Run { config } => {
            let config = Config::load(&config)?;
            crate::fd_limit::ensure_enough(&config)?;
            let (tx, rx) = watch::channel(false);
            tokio::spawn(async move {
                wait_for_signal().await;
                let _ = tx.send(true);
            });
            engine::run(config, rx).await?;
            Ok(0)
        }
        Command::Check { config } => check(&Config::load(&config)?).await,
        Command::Status { config, json } => status(&Config::load(&config)?, json).await,
        Command::Dlq(cmd) => operator::dlq(cmd),
        Command::Audit(args) => operator::audit(args),
        Command::Checkpoint(cmd) => operator::checkpoint(cmd),
        Command::Teardown(args) => operator::teardown(args).await,
        Command::Resync(args) => resync::resync(args),
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop pgcdc with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

async fn check(config: &Config) -> anyhow::Result<i32> {
    println!(
        "ok    config: {} sink(s), {} table(s)",
        config.sink.len(),
        config.source.tables.len()
    );
    let mut failed = 0;
    match crate::fd_limit::limits() {
        // `run` raises the soft limit to the hard one, so the hard one is what counts.
        Some((soft, hard)) => match crate::fd_limit::judge(config, soft, hard) {
            Ok(detail) => println!("ok    file descriptors: {detail}"),
            Err(problem) => {
                failed += 1;
                println!("FAIL  file descriptors: {problem}");
            }
        },
        None => println!("warn  file descriptors: cannot read the open-files limit (getrlimit)"),
    }
    let url = config.source_url()?;
    match connect_sql(&url).await {
        Err(e) => {
            failed += 1;
            println!(
                "FAIL  source connection: cannot connect to {url}: {e} — fix: check source.url, that Postgres runs and accepts connections from this host (pg_hba.conf)"
            );
        }
        Ok(client) => {
            println!("ok    source connection: {url}");
            for c in source::preflight(config, &client).await {
                match c.outcome {
                    Ok(detail) => println!("ok    {}: {detail}", c.name),
                    Err(p) => {
                        failed += 1;
                        println!("FAIL  {}: {p}", c.name);
                    }
                }
            }
        }
    }
    for (i, sink) in config.sink.iter().enumerate() {
        match &sink.kind {
            SinkKind::Stdout => println!("ok    sink {}: stdout", sink.name),
            SinkKind::Http(http) => {
                let built = engine::build_http_sink(i, &sink.name, http, AuditLog::disabled());
                let checked = match built {
                    Ok(s) => s.healthcheck().await.map_err(anyhow::Error::from),
                    Err(e) => Err(e),
                };
                match checked {
                    Ok(()) => println!("ok    sink {}: {} reachable", sink.name, origin(&http.url)),
                    Err(e) => {
                        failed += 1;
                        println!(
                            "FAIL  sink {}: {e:#} — fix: check sink[{i}].url, that the endpoint is up and reachable from this host, and its TLS settings",
                            sink.name
                        );
                    }
                }
            }
            SinkKind::Kafka(kafka) => {
                let checked = match engine::build_kafka_sink(
                    i,
                    sink,
                    kafka,
                    &url.dbname,
                    AuditLog::disabled(),
                ) {
                    Ok(s) => s.healthcheck().await.map_err(anyhow::Error::msg),
                    Err(e) => Err(e),
                };
                match checked {
                    Ok(detail) => println!("ok    sink {}: {detail}", sink.name),
                    Err(e) => {
                        failed += 1;
                        println!(
                            "FAIL  sink {}: {e:#} — fix: check sink[{i}].brokers, that the brokers are up and reachable from this host, and [sink.librdkafka] security settings",
                            sink.name
                        );
                    }
                }
            }
        }
    }
    Ok(if failed == 0 { 0 } else { 1 })
}

/// `scheme://host:port` of a URL, for messages (no path, query or credentials).
fn origin(url: &str) -> String {
    match url::Url::parse(url.split('{').next().unwrap_or(url)) {
        Ok(u) => format!(
            "{}://{}{}",
            u.scheme(),
            u.host_str().unwrap_or(""),
            u.port().map(|p| format!(":{p}")).unwrap_or_default()
        ),
        Err(_) => "the endpoint".to_string(),
    }
}

async fn status(config: &Config, as_json: bool) -> anyhow::Result<i32> {
    let store = Store::from_config(&config.state);
    let journal = store
        .open(Access::Existing)
        .with_context(|| match config.state.url {
            Some(_) => format!("cannot open the journal in {}", store.describe()),
            None => format!("cannot open the journal in {}", config.state.dir.display()),
        })?;
    let journal_status = status::read_journal(&*journal, &status::sink_names(config))?;
    let head = journal_status.head;
    let mut status = status::status_json(config, journal_status).await;
    if config.ha.enabled {
        status["ha"] = crate::ha::leader_json(config).await;
    }
    if as_json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(0);
    }
    let s = &status["source"];
    if s["reachable"] == true {
        println!(
            "source:   reachable, WAL at {}",
            s["current_wal_lsn"].as_str().unwrap_or("?")
        );
        match s["slot"].as_object() {
            Some(slot) => println!(
                "slot:     {} {} confirmed {} wal_status {} retained {} bytes",
                config.source.slot,
                if slot.get("active") == Some(&json!(true)) {
                    "active"
                } else {
                    "inactive"
                },
                slot.get("confirmed_flush_lsn")
                    .and_then(|v| v.as_str())
                    .unwrap_or("-"),
                slot.get("wal_status")
                    .and_then(|v| v.as_str())
                    .unwrap_or("-"),
                slot.get("retained_wal_bytes")
                    .map(|v| v.to_string())
                    .unwrap_or_default(),
            ),
            None => println!(
                "slot:     {} missing (created by `pgcdc run`)",
                config.source.slot
            ),
        }
        println!(
            "lag:      {} bytes of WAL not yet journaled",
            s["lag_bytes"]
        );
    } else {
        println!(
            "source:   UNREACHABLE: {}",
            s["error"].as_str().unwrap_or("?")
        );
    }
    if let Some(ha) = status.get("ha") {
        let l = &ha["leader"];
        match l["holder_id"].as_str() {
            Some(holder) => println!(
                "ha:       leader {holder} epoch {} since {}, renewed {} s ago",
                l["epoch"],
                l["since"].as_str().unwrap_or("?"),
                l["renewed_seconds_ago"]
            ),
            None => println!(
                "ha:       no leader yet{}",
                ha["error"]
                    .as_str()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            ),
        }
    }
    println!(
        "journal:  head {} confirmed {} ({} bytes)",
        head.pos, head.confirmed_lsn, status["journal"]["bytes"]
    );
    for sink in status["sinks"].as_array().into_iter().flatten() {
        println!(
            "sink {}: cursor {} lag {} events, {:.1} s, {} in DLQ",
            sink["name"].as_str().unwrap_or("?"),
            sink["cursor"],
            sink["lag_events"],
            sink["lag_seconds"].as_f64().unwrap_or(0.0),
            sink["dlq_events"]
        );
    }
    for o in status["orphaned_cursors"].as_array().into_iter().flatten() {
        let name = o["sink"].as_str().unwrap_or("?");
        println!(
            "orphaned cursor {name}: sink no longer configured, cursor {}, holds back {} journal entries \
             — remove it with `pgcdc checkpoint drop --sink {name}`",
            o["cursor"], o["held_events"],
        );
    }
    for s in status["schedules"].as_array().into_iter().flatten() {
        println!(
            "schedule \"{}\" ({}): resync {} for {}, next run {}",
            s["cron"].as_str().unwrap_or("?"),
            s["time_zone"].as_str().unwrap_or("UTC"),
            s["table"].as_str().unwrap_or("?"),
            s["sink"].as_str().unwrap_or("every sink"),
            s["next_run"].as_str().unwrap_or("never"),
        );
    }
    for r in status["resyncs"].as_array().into_iter().flatten() {
        println!(
            "{} {} of {} for {}: {}, {} rows in {} chunks{}",
            r["kind"].as_str().unwrap_or("resync"),
            r["id"],
            r["table"].as_str().unwrap_or("?"),
            r["sink"].as_str().unwrap_or("every sink"),
            r["state"].as_str().unwrap_or("?"),
            r["rows"],
            r["chunks"],
            r["error"]
                .as_str()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        );
    }
    Ok(0)
}
