//! The `pgcdc` binary.

use clap::Parser;

use pgcdc::cli::{self, Cli, Command};
use pgcdc::deliver::plan::sandbox;

fn main() {
    // The allocator (mimalloc, `pgcdc-alloc`) gives freed memory back within 100 ms
    // (and when a thread goes idle) and uses no transparent huge pages.
    pgcdc_alloc::tune();
    // A jq sandbox worker: no runtime, no logging, nothing on stdout but replies.
    let mut args = std::env::args_os().skip(1);
    if args.next().is_some_and(|a| a == sandbox::WORKER_ARG) {
        std::process::exit(sandbox::worker_main(args.next().as_deref()));
    }
    run();
}

fn run() {
    // A worker going idle gives back what the allocator freed (`pgcdc_alloc::idle`).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_park(pgcdc_alloc::idle)
        .build();
    match runtime {
        Ok(runtime) => runtime.block_on(run_async()),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(2);
        }
    }
}

async fn run_async() {
    let cli = Cli::parse();
    cli::init_logging(cli.log_format);
    tracing::debug!(
        huge_pages = pgcdc_alloc::huge_pages(),
        purge_delay_ms = pgcdc_alloc::purge_delay_ms(),
        "allocator: mimalloc"
    );
    if matches!(cli.command, Command::Run { .. }) {
        // The soft limit is often 1024 while the hard one is far higher; a server takes
        // what it is allowed (`run` then checks it against what the config needs).
        if let Some((before, after)) = pgcdc::fd_limit::raise_soft_limit() {
            tracing::debug!(
                before,
                after,
                "open-files soft limit raised to the hard limit"
            );
        }
    }
    let code = match cli::execute(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", pgcdc::fd_limit::explain(format!("{e:#}")));
            2
        }
    };
    // Exits here, not after the runtime's drop, which would wait for blocking
    // tasks (a jq evaluation runs up to its time limit).
    std::process::exit(code);
}
