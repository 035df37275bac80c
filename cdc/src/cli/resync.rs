//! `pgcdc resync`: queue (or cancel) an online resync of one table, for one sink
//! or all. The request is a row in the journal file; a running pgcdc picks it up
//! within a second, a stopped one when it starts.

use clap::Args;

use crate::journal::{Access, ResyncKind, Store};

/// `pgcdc resync` arguments.
#[derive(Debug, Args)]
pub struct ResyncArgs {
    #[command(flatten)]
    pub(crate) config: super::ConfigArg,
    /// The table, `schema.table` (one of `source.tables`).
    #[arg(long)]
    pub(crate) table: String,
    /// Only this sink receives the rows (default: every sink).
    #[arg(long)]
    pub(crate) sink: Option<String>,
    /// Only rows matching this SQL condition, e.g. "status = 'approved'".
    #[arg(long = "where", conflicts_with = "cancel")]
    pub(crate) where_sql: Option<String>,
    /// Cancel the table's queued or running resyncs (of `--sink` only, when given).
    #[arg(long)]
    pub(crate) cancel: bool,
}

/// Runs `pgcdc resync`; returns the exit code.
pub(crate) fn resync(args: ResyncArgs) -> anyhow::Result<i32> {
    let config = args.config.load()?;
    config.require_source()?;
    let table = crate::ops::validate_resync(&config, &args.table, args.sink.as_deref())
        .map_err(anyhow::Error::msg)?;
    let mut journal = Store::from_config(&config.state).open(Access::Create)?;
    if args.cancel {
        let ids = journal.cancel_resync(&table, args.sink.as_deref())?;
        if ids.is_empty() {
            println!("no queued or running resync of {table} to cancel");
            return Ok(1);
        }
        println!(
            "cancelled resync {ids:?} of {table}; a running pgcdc stops after the chunk in hand"
        );
        return Ok(0);
    }
    let info = journal.request_resync(
        ResyncKind::Resync,
        &table,
        args.sink.as_deref(),
        args.where_sql.as_deref(),
    )?;
    println!(
        "resync {} of {table} queued for {}; progress in `pgcdc status` — a running pgcdc starts it within a second",
        info.id,
        info.sink.as_deref().map_or("every sink".to_string(), |s| format!("sink {s}"))
    );
    Ok(0)
}
