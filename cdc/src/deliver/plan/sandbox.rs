//! The jq sandbox of the `pgcdc` binary: workers are this very executable,
//! started as `pgcdc __jq-worker LIMITS` (see `pgcdc_schema::mapping::sandbox`).

use std::ffi::{OsStr, OsString};

use nix::sys::resource::{setrlimit, Resource};
use pgcdc_schema::mapping::{sandbox, Limits};

use crate::config::JqConfig;

/// The hidden first argument that makes the binary a jq worker.
pub const WORKER_ARG: &str = "__jq-worker";

/// Routes every jq evaluation of this process through worker processes.
pub(crate) fn install(config: &JqConfig) -> anyhow::Result<()> {
    let limits = config.limits();
    // /proc/self/exe still runs the binary after an upgrade replaced the file.
    let exe = if std::path::Path::new("/proc/self/exe").exists() {
        OsString::from("/proc/self/exe")
    } else {
        std::env::current_exe()?.into_os_string()
    };
    let args = vec![
        OsString::from(WORKER_ARG),
        OsString::from(serde_json::to_string(&limits)?),
    ];
    // mimalloc reserves (and, with overcommit, maps writable) 1 GiB at a time,
    // which would spend the worker's whole address-space limit at once.
    let sandbox =
        sandbox::Sandbox::new(exe, args, limits).with_env("MIMALLOC_ARENA_RESERVE", "16MiB");
    if !sandbox::install(sandbox) {
        tracing::debug!("the jq sandbox was already installed");
    }
    Ok(())
}

/// Runs `f`, which evaluates jq (and so may block up to `[jq] timeout_ms`),
/// without holding up the other tasks of an async executor thread.
pub(crate) fn off_executor<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        // No runtime, or one that cannot hand its tasks to another thread.
        _ => f(),
    }
}

/// The worker process: bounds itself, then serves until its stdin closes.
/// Returns the exit code.
pub fn worker_main(limits: Option<&OsStr>) -> i32 {
    let Some(limits) = limits
        .and_then(OsStr::to_str)
        .and_then(|s| serde_json::from_str::<Limits>(s).ok())
    else {
        eprintln!("{WORKER_ARG} is started by pgcdc itself, with its limits as JSON");
        return 2;
    };
    let bytes = limits.max_memory_mb.saturating_mul(1024 * 1024);
    // An allocation past the limit fails and aborts this process only; a
    // crash writes no core file.
    let bounded = setrlimit(Resource::RLIMIT_AS, bytes, bytes)
        .and_then(|()| setrlimit(Resource::RLIMIT_CORE, 0, 0));
    if let Err(e) = bounded {
        eprintln!("{WORKER_ARG}: cannot set resource limits: {e}");
        return 2;
    }
    sandbox::serve_stdio(limits)
}
