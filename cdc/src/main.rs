//! The `pgcdc` binary.

use clap::Parser;

/// mimalloc: decoding and journaling allocate many small values per change,
/// where glibc malloc cost a third of the CPU time (perf, bench-stream).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use pgcdc::cli::{self, Cli};

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    cli::init_logging(cli.log_format);
    let code = match cli::execute(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            2
        }
    };
    std::process::exit(code);
}
