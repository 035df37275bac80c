//! Operator commands on the state dir: `pgcdc dlq ...` and `pgcdc audit ...`.
//! They work whether pgcdc runs or not (SQLite serialises writers).

use clap::{Args, Subcommand};
use serde_json::json;

use crate::config::Config;

use crate::journal::{Access, DlqSelector, MetaKey, StateStore, Store};

/// `pgcdc dlq` subcommands.
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List the sink's dead-lettered and parked events, in order.
    List(DlqListArgs),
    /// Deliver them again (one id with the events parked behind it, or all), keeping row order.
    Replay(DlqArgs),
    /// Remove them for good.
    Drop(DlqArgs),
}

/// `pgcdc dlq list` arguments.
#[derive(Debug, Args)]
pub struct DlqListArgs {
    #[command(flatten)]
    pub(crate) config: super::ConfigArg,
    /// Sink name.
    #[arg(long)]
    pub(crate) sink: String,
    /// Print JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `pgcdc dlq replay` and `pgcdc dlq drop` arguments: which events.
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("which").required(true).args(["id", "all"]))]
pub struct DlqArgs {
    #[command(flatten)]
    pub(crate) config: super::ConfigArg,
    /// Sink name.
    #[arg(long)]
    pub(crate) sink: String,
    /// One event id (as `dlq list` shows it).
    #[arg(long)]
    pub(crate) id: Option<String>,
    /// Every event of the sink.
    #[arg(long)]
    pub(crate) all: bool,
}

fn open(config: &Config, sink: &str) -> anyhow::Result<Box<dyn StateStore>> {
    config.check_sink(sink).map_err(anyhow::Error::msg)?;
    Ok(Store::from_config(&config.state).open(Access::Existing)?)
}

fn selector(args: &DlqArgs) -> anyhow::Result<DlqSelector> {
    match (&args.id, args.all) {
        (Some(id), false) => Ok(DlqSelector::One(id.clone())),
        (None, true) => Ok(DlqSelector::All),
        _ => anyhow::bail!("say which events: --id EVENT_ID or --all"),
    }
}

/// Runs a `dlq` subcommand; returns the exit code.
pub(crate) fn dlq(cmd: DlqCommand) -> anyhow::Result<i32> {
    match cmd {
        DlqCommand::List(args) => {
            let config = args.config.load()?;
            let reader = open(&config, &args.sink)?;
            let entries = reader.dlq_list(&args.sink)?;
            if args.json {
                let list: Vec<_> = entries
                    .iter()
                    .map(|e| {
                        json!({
                            "id": e.delivery_id, "row": e.row, "state": format!("{:?}", e.state).to_lowercase(),
                            "error": e.error, "replay_pending": e.replay, "created_at": e.created_at,
                            "event": e.item.event, "body": e.item.body,
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                for e in &entries {
                    println!(
                        "{}  {:<6} {}  row {}  {}{}",
                        e.delivery_id,
                        format!("{:?}", e.state).to_lowercase(),
                        e.created_at,
                        e.row,
                        e.error
                            .as_deref()
                            .unwrap_or("(parked behind an earlier event of this row)"),
                        if e.replay { "  [replay pending]" } else { "" }
                    );
                }
                println!(
                    "{} event(s) in the DLQ of sink {}",
                    entries.len(),
                    args.sink
                );
            }
            Ok(0)
        }
        DlqCommand::Replay(args) => {
            let config = args.config.load()?;
            let mut reader = open(&config, &args.sink)?;
            let n = reader.dlq_request_replay(&args.sink, &selector(&args)?)?;
            println!("{n} event(s) of sink {} marked for replay; a running pgcdc delivers them next, in order", args.sink);
            Ok(0)
        }
        DlqCommand::Drop(args) => {
            let config = args.config.load()?;
            let mut reader = open(&config, &args.sink)?;
            let n = reader.dlq_drop(&args.sink, &selector(&args)?)?;
            println!("{n} event(s) dropped from the DLQ of sink {}", args.sink);
            Ok(0)
        }
    }
}

/// `pgcdc audit` arguments.
#[derive(Debug, Args)]
pub struct AuditArgs {
    #[command(flatten)]
    pub(crate) config: super::ConfigArg,
    /// Attempts for one event id.
    #[arg(long, conflicts_with = "sink")]
    pub(crate) event: Option<String>,
    /// Attempts of one sink.
    #[arg(long)]
    pub(crate) sink: Option<String>,
    /// With --sink: only attempts at or after this time (RFC 3339).
    #[arg(long, requires = "sink")]
    pub(crate) since: Option<String>,
    /// Most attempts to print.
    #[arg(long, default_value_t = 1000)]
    pub(crate) limit: usize,
    /// Print JSON lines.
    #[arg(long)]
    pub(crate) json: bool,
}

/// Runs `pgcdc audit`; returns the exit code.
pub(crate) fn audit(args: AuditArgs) -> anyhow::Result<i32> {
    let config = args.config.load()?;
    let reader = Store::from_config(&config.state).open(Access::Existing)?;
    let attempts = match (&args.event, &args.sink) {
        (Some(id), None) => reader.audit_by_event(id)?,
        (None, Some(sink)) => {
            let since = match &args.since {
                Some(s) => s
                    .parse::<pgcdc_sinks::AttemptTime>()
                    .map_err(|_| {
                        anyhow::anyhow!(
                            "--since {s:?} is not an RFC 3339 time, e.g. 2026-11-26T10:00:00Z"
                        )
                    })?
                    .to_string(),
                None => "0000".to_string(),
            };
            reader.audit_by_sink(sink, &since, args.limit)?
        }
        _ => anyhow::bail!("say what to show: --event EVENT_ID or --sink NAME [--since RFC3339]"),
    };
    for a in &attempts {
        if args.json {
            println!("{}", serde_json::to_string(a)?);
        } else {
            println!(
                "{}  {}  sink {}  attempt {}  {:?}  {}  {} ms",
                a.at,
                a.event_id,
                a.sink,
                a.attempt,
                a.outcome,
                a.status
                    .map(|s| format!("HTTP {s}"))
                    .or_else(|| a.error.clone())
                    .unwrap_or_default(),
                a.latency_ms
            );
        }
    }
    if !args.json {
        println!("{} attempt(s)", attempts.len());
    }
    Ok(0)
}

/// `pgcdc checkpoint` subcommands.
#[derive(Debug, Subcommand)]
pub enum CheckpointCommand {
    /// Move one sink's cursor within what the journal holds; other sinks are untouched.
    Reset(CheckpointArgs),
    /// Remove the cursor (and DLQ items) of a sink no longer in the config, so the
    /// journal stops keeping entries for it.
    Drop(CheckpointDropArgs),
}

/// `pgcdc checkpoint drop` arguments.
#[derive(Debug, Args)]
pub struct CheckpointDropArgs {
    #[command(flatten)]
    pub(crate) config: super::ConfigArg,
    /// Name of the removed sink whose cursor to drop.
    #[arg(long)]
    pub(crate) sink: String,
}

/// `pgcdc checkpoint reset` arguments.
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("target").required(true).args(["lsn", "time", "latest"]))]
pub struct CheckpointArgs {
    #[command(flatten)]
    pub(crate) config: super::ConfigArg,
    /// Sink name.
    #[arg(long)]
    pub(crate) sink: String,
    /// Re-deliver from the first transaction committed at or after this LSN (e.g. 0/16B3748).
    #[arg(long)]
    pub(crate) lsn: Option<String>,
    /// Re-deliver from the first transaction committed at or after this time (RFC 3339).
    #[arg(long)]
    pub(crate) time: Option<String>,
    /// Skip everything not yet delivered: deliver only what comes next.
    #[arg(long)]
    pub(crate) latest: bool,
}

/// Runs `pgcdc checkpoint reset`; returns the exit code.
pub(crate) fn checkpoint(cmd: CheckpointCommand) -> anyhow::Result<i32> {
    let args = match cmd {
        CheckpointCommand::Reset(args) => args,
        CheckpointCommand::Drop(args) => return checkpoint_drop(args),
    };
    let config = args.config.load()?;
    config.require_source()?;
    let mut reader = open(&config, &args.sink)?;
    let target = crate::ops::reset_target(args.lsn.as_deref(), args.time.as_deref(), args.latest)?;
    let before = reader.cursor_state(&args.sink)?.pos;
    let after = reader.reset_cursor(&args.sink, target)?;
    let head = reader.head()?.pos;
    println!(
        "sink {}: cursor moved from {before} to {} (journal head {head}); {} event(s) will be delivered \
         — a running pgcdc picks this up within a second",
        args.sink,
        after.pos,
        (head - after.pos).max(0),
    );
    Ok(0)
}

/// Runs `pgcdc checkpoint drop`; returns the exit code.
fn checkpoint_drop(args: CheckpointDropArgs) -> anyhow::Result<i32> {
    let config = args.config.load()?;
    if let Some(why) = crate::ops::drop_refusal(&config, &args.sink) {
        anyhow::bail!(why);
    }
    let mut journal = Store::from_config(&config.state).open(Access::Existing)?;
    match journal.drop_cursor(&args.sink)? {
        Some(d) => {
            println!(
                "sink {}: cursor (at {}) dropped with {} DLQ item(s); the journal prunes past it \
                 at the next round",
                args.sink, d.cursor, d.dlq_items
            );
            Ok(0)
        }
        None => {
            let orphans = journal.orphaned_cursors(&crate::status::sink_names(&config))?;
            let names: Vec<&str> = orphans.iter().map(|o| o.sink.as_str()).collect();
            anyhow::bail!(
                "no cursor named {:?} in the journal; orphaned cursors: {}",
                args.sink,
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            )
        }
    }
}

/// `pgcdc teardown` arguments.
#[derive(Debug, Args)]
pub struct TeardownArgs {
    #[command(flatten)]
    pub(crate) config: super::ConfigArg,
    /// Really drop them (without it, only say what would be dropped).
    #[arg(long)]
    pub(crate) yes: bool,
}

/// Runs `pgcdc teardown`: drops the slot and the publication pgcdc created (never ones it
/// found). Returns the exit code.
pub(crate) async fn teardown(args: TeardownArgs) -> anyhow::Result<i32> {
    use pgcdc_schema::quote_ident;
    let config = args.config.load()?;
    let journal = Store::from_config(&config.state).open(Access::Existing)?;
    let created_slot = journal
        .meta(&MetaKey::CreatedSlot)?
        .filter(|s| *s == config.source.slot);
    let created_publication = journal
        .meta(&MetaKey::CreatedPublication)?
        .filter(|p| *p == config.source.publication);
    let url = config.source_url()?;
    let client = crate::replication::connect_sql(&url)
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to the source at {url}: {e}"))?;
    let slot = crate::source::slot_info(&client, &config.source.slot).await?;
    if let Some(pid) = slot.as_ref().and_then(|s| s.active_pid) {
        anyhow::bail!(
            "slot {} is in use (walsender PID {pid}); stop pgcdc first, then run teardown again",
            config.source.slot
        );
    }
    let mut plan = Vec::new();
    match (&created_slot, &slot) {
        (Some(name), Some(_)) => {
            plan.push(format!("drop replication slot {name} (created by pgcdc)"))
        }
        (None, Some(_)) => println!(
            "keep  slot {}: pgcdc found it, it did not create it",
            config.source.slot
        ),
        (_, None) => println!("skip  slot {}: it does not exist", config.source.slot),
    }
    match &created_publication {
        Some(name) => plan.push(format!("drop publication {name} (created by pgcdc)")),
        None => println!(
            "keep  publication {}: pgcdc found it, it did not create it",
            config.source.publication
        ),
    }
    let ddl_trigger = crate::source::ddl_capture::installed(&client, &config.source.slot).await?;
    if ddl_trigger {
        plan.push(format!(
            "drop event trigger {} (source.ddl_capture)",
            crate::source::ddl_capture::name(&config.source.slot)
        ));
    }
    if !args.yes {
        for p in &plan {
            println!("would {p}");
        }
        println!(
            "nothing dropped; run again with --yes to drop {} object(s)",
            plan.len()
        );
        return Ok(if plan.is_empty() { 0 } else { 1 });
    }
    if let (Some(name), Some(_)) = (&created_slot, &slot) {
        client
            .execute("SELECT pg_drop_replication_slot($1)", &[name])
            .await?;
        println!("dropped replication slot {name}");
    }
    if let Some(name) = &created_publication {
        client
            .batch_execute(&format!("DROP PUBLICATION IF EXISTS {}", quote_ident(name)))
            .await?;
        println!("dropped publication {name}");
    }
    if ddl_trigger {
        client
            .batch_execute(&crate::source::ddl_capture::drop_sql(&config.source.slot))
            .await?;
        println!(
            "dropped event trigger {}",
            crate::source::ddl_capture::name(&config.source.slot)
        );
    }
    Ok(0)
}
