//! Command-line interface: `pgcdc run | check | status | dlq | audit`.

pub(crate) mod admin_token;
pub(crate) mod operator;
pub(crate) mod resync;

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
#[command(name = "pgcdc", version = VERSION, about)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "PGCDC_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// `--version`: the crate version and the commit it was built from (when known).
pub(crate) const VERSION: &str = match option_env!("PGCDC_COMMIT") {
    Some(_) => concat!(env!("CARGO_PKG_VERSION"), " (", env!("PGCDC_COMMIT"), ")"),
    None => env!("CARGO_PKG_VERSION"),
};

/// Where the config file comes from: `--config`, else `$PGCDC_CONFIG`, else
/// `./pgcdc.toml`, else `/etc/pgcdc/pgcdc.toml`.
#[derive(Debug, Clone, clap::Args)]
pub struct ConfigArg {
    /// Config file [default: ./pgcdc.toml, then /etc/pgcdc/pgcdc.toml].
    #[arg(long, short, env = "PGCDC_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
}

/// The default config paths, in the order they are tried.
pub(crate) const DEFAULT_CONFIG_PATHS: [&str; 2] = ["pgcdc.toml", "/etc/pgcdc/pgcdc.toml"];

impl ConfigArg {
    /// The config file to read.
    pub(crate) fn path(&self) -> anyhow::Result<PathBuf> {
        if let Some(path) = &self.config {
            return Ok(path.clone());
        }
        DEFAULT_CONFIG_PATHS
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "no config file: none given with --config or PGCDC_CONFIG, and neither ./pgcdc.toml \
                     nor /etc/pgcdc/pgcdc.toml exists — fix: pass --config FILE (see \
                     deploy/pgcdc.example.toml for a start)"
                )
            })
    }

    /// Reads and validates the config file.
    pub(crate) fn load(&self) -> anyhow::Result<Config> {
        Ok(Config::load(&self.path()?)?)
    }
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
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Deliver from Kafka: run the config's HTTP/stdout sinks fed from the topics in
    /// `[deliver]`, as one worker of a Kafka consumer group, until SIGINT/SIGTERM.
    Deliver {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Preflight: check the source (and sinks); exit 0 only when ready.
    Check {
        #[command(flatten)]
        config: ConfigArg,
        /// Print JSON: `{"ok": bool, "checks": [{"name", "status", "detail"}]}`.
        #[arg(long)]
        json: bool,
    },
    /// Offline: parse the config, compile every jq program and template, resolve
    /// references; exit 0 when valid, 2 with the offending key otherwise.
    Validate {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Slot, WAL retained, journal head, each sink's cursor and lag.
    Status {
        #[command(flatten)]
        config: ConfigArg,
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
    /// Print a shell completion script: `pgcdc completions bash > /etc/bash_completion.d/pgcdc`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff): `pgcdc man | man -l -`.
    Man,
    /// Print the admin API's bearer token (configured, or generated at the first start).
    AdminToken(admin_token::AdminTokenArgs),
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
            let config = config.load()?;
            crate::fd_limit::ensure_enough(&config)?;
            let (tx, rx) = watch::channel(false);
            tokio::spawn(async move {
                wait_for_signal().await;
                let _ = tx.send(true);
            });
            engine::run(config, rx).await?;
            Ok(0)
        }
        Command::Deliver { config } => {
            let config = config.load()?;
            let (tx, rx) = watch::channel(false);
            tokio::spawn(async move {
                wait_for_signal().await;
                let _ = tx.send(true);
            });
            crate::deliver_engine::run(config, rx).await?;
            Ok(0)
        }
        Command::Check { config, json } => check(&config.load()?, json).await,
        Command::Validate { config } => validate(&config),
        Command::Status { config, json } => status(&config.load()?, json).await,
        Command::Dlq(cmd) => operator::dlq(cmd),
        Command::Audit(args) => operator::audit(args),
        Command::Checkpoint(cmd) => operator::checkpoint(cmd),
        Command::Teardown(args) => operator::teardown(args).await,
        Command::Resync(args) => resync::resync(args),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd, "pgcdc", &mut script);
            emit(&script)?;
            Ok(0)
        }
        Command::Man => {
            let cmd = <Cli as clap::CommandFactory>::command();
            let mut page = Vec::new();
            clap_mangen::Man::new(cmd).render(&mut page)?;
            emit(&page)?;
            Ok(0)
        }
        Command::AdminToken(args) => admin_token::admin_token(args),
    }
}

/// Writes to stdout; a reader that went away (`pgcdc man | head`) is not an error.
fn emit(bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

/// `pgcdc validate`: everything `run` checks before it connects anywhere.
fn validate(arg: &ConfigArg) -> anyhow::Result<i32> {
    let path = arg.path()?;
    let config = Config::load(&path)?;
    // The sinks' own settings (URLs, TLS files, auth, librdkafka properties) are
    // checked by building them, which opens no connection.
    for (i, sink) in config.sink.iter().enumerate() {
        match &sink.kind {
            SinkKind::Stdout => {}
            SinkKind::Http(http) => {
                crate::sink_build::build_http_sink(&sink.name, http, AuditLog::disabled())?;
            }
            SinkKind::Kafka(kafka) => {
                crate::sink_build::build_kafka_sink(
                    i,
                    sink,
                    kafka,
                    "validate",
                    AuditLog::disabled(),
                )?;
            }
        }
    }
    println!(
        "ok    {}: {} table(s), {} trigger(s), {} sink(s)",
        path.display(),
        config.tables().len(),
        config.trigger.len(),
        config.sink.len()
    );
    Ok(0)
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

/// One line of `pgcdc check`.
struct CheckLine {
    status: &'static str,
    name: String,
    detail: String,
}

/// What `check` found, printed as text lines or one JSON document.
#[derive(Default)]
struct CheckReport(Vec<CheckLine>);

impl CheckReport {
    fn ok(&mut self, name: impl Into<String>, detail: impl Into<String>) {
        self.push("ok", name, detail);
    }
    fn fail(&mut self, name: impl Into<String>, detail: impl Into<String>) {
        self.push("fail", name, detail);
    }
    fn warn(&mut self, name: impl Into<String>, detail: impl Into<String>) {
        self.push("warn", name, detail);
    }
    fn push(&mut self, status: &'static str, name: impl Into<String>, detail: impl Into<String>) {
        self.0.push(CheckLine {
            status,
            name: name.into(),
            detail: detail.into(),
        });
    }
    fn failed(&self) -> bool {
        self.0.iter().any(|l| l.status == "fail")
    }
    fn print(&self, as_json: bool) -> anyhow::Result<()> {
        if as_json {
            let checks: Vec<_> = self
                .0
                .iter()
                .map(|l| json!({"name": l.name, "status": l.status, "detail": l.detail}))
                .collect();
            let doc = json!({"ok": !self.failed(), "checks": checks});
            emit(format!("{}\n", serde_json::to_string_pretty(&doc)?).as_bytes())
        } else {
            let mut text = String::new();
            for l in &self.0 {
                let tag = match l.status {
                    "ok" => "ok   ",
                    "warn" => "warn ",
                    _ => "FAIL ",
                };
                text.push_str(&format!("{tag} {}: {}\n", l.name, l.detail));
            }
            emit(text.as_bytes())
        }
    }
}

async fn check(config: &Config, as_json: bool) -> anyhow::Result<i32> {
    let mut report = CheckReport::default();
    report.ok(
        "config",
        format!(
            "{} sink(s), {} table(s)",
            config.sink.len(),
            config.tables().len()
        ),
    );
    check_into(config, &mut report).await?;
    report.print(as_json)?;
    Ok(if report.failed() { 1 } else { 0 })
}

async fn check_into(config: &Config, report: &mut CheckReport) -> anyhow::Result<()> {
    match crate::fd_limit::limits() {
        // `run` raises the soft limit to the hard one, so the hard one is what counts.
        Some((soft, hard)) => match crate::fd_limit::judge(config, soft, hard) {
            Ok(detail) => report.ok("file descriptors", detail),
            Err(problem) => report.fail("file descriptors", problem.to_string()),
        },
        None => report.warn(
            "file descriptors",
            "cannot read the open-files limit (getrlimit)",
        ),
    }
    if let Some(deliver) = &config.deliver {
        match crate::deliver::group::consumer::check(deliver).await {
            Ok(detail) => report.ok("kafka topics", detail),
            Err(e) => report.fail("kafka topics", format!("{e:#}")),
        }
        check_sinks(config, "", report).await;
        return Ok(());
    }
    let url = config.source_url()?;
    match connect_sql(&url).await {
        Err(e) => report.fail(
            "source connection",
            format!(
                "cannot connect to {url}: {e} — fix: check source.url, that Postgres runs and accepts connections from this host (pg_hba.conf)"
            ),
        ),
        Ok(client) => {
            report.ok("source connection", url.to_string());
            for c in source::preflight(config, &client).await {
                match c.outcome {
                    Ok(detail) if c.warning => report.warn(c.name, detail),
                    Ok(detail) => report.ok(c.name, detail),
                    Err(p) => report.fail(c.name, p.to_string()),
                }
            }
        }
    }
    check_sinks(config, &url.dbname, report).await;
    Ok(())
}

/// Each sink: stdout is fine, an HTTP endpoint must answer, Kafka brokers must
/// answer; `db` is the source database (Debezium `source.db`).
async fn check_sinks(config: &Config, db: &str, report: &mut CheckReport) {
    for (i, sink) in config.sink.iter().enumerate() {
        match &sink.kind {
            SinkKind::Stdout => report.ok(format!("sink {}", sink.name), "stdout"),
            SinkKind::Http(http) => {
                let built =
                    crate::sink_build::build_http_sink(&sink.name, http, AuditLog::disabled());
                let checked = match built {
                    Ok(s) => s.healthcheck().await.map_err(anyhow::Error::from),
                    Err(e) => Err(e),
                };
                match checked {
                    Ok(()) => report.ok(
                        format!("sink {}", sink.name),
                        format!("{} reachable", origin(&http.http().url)),
                    ),
                    Err(e) => report.fail(
                        format!("sink {}", sink.name),
                        format!(
                            "{e:#} — fix: check sink[{i}].url, that the endpoint is up and reachable from this host, and its TLS settings"
                        ),
                    ),
                }
            }
            SinkKind::Kafka(kafka) => {
                let checked = match crate::sink_build::build_kafka_sink(
                    i,
                    sink,
                    kafka,
                    db,
                    AuditLog::disabled(),
                ) {
                    Ok(s) => s.healthcheck().await.map_err(anyhow::Error::msg),
                    Err(e) => Err(e),
                };
                match checked {
                    Ok(detail) => report.ok(format!("sink {}", sink.name), detail),
                    Err(e) => report.fail(
                        format!("sink {}", sink.name),
                        format!(
                            "{e:#} — fix: check sink[{i}].brokers, that the brokers are up and reachable from this host, and [sink.librdkafka] security settings"
                        ),
                    ),
                }
            }
        }
    }
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

/// `pgcdc status` of a `[deliver]` config: the group's partitions and the DLQs.
fn print_deliver_status(status: &serde_json::Value) {
    let d = &status["deliver"];
    println!("group:    {}", d["group"].as_str().unwrap_or("?"));
    match d["partitions"].as_array() {
        Some(parts) => {
            for p in parts {
                println!(
                    "partition {}[{}]: lag {} records",
                    p["topic"].as_str().unwrap_or("?"),
                    p["partition"],
                    p["lag_records"]
                );
            }
        }
        None => println!(
            "partitions: cannot read from Kafka: {}",
            d["partitions"]["error"]
        ),
    }
    for s in status["sinks"].as_array().into_iter().flatten() {
        println!(
            "sink {}: {} in the DLQ",
            s["name"].as_str().unwrap_or("?"),
            s["dlq_events"]
        );
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
    if config.deliver.is_some() {
        print_deliver_status(&status);
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
