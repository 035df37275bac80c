//! The jq sandbox: evaluations run in child processes ("workers") that pgcdc
//! starts from its own binary (`pgcdc __jq-worker`), because jaq can be
//! neither interrupted nor stopped from overflowing its stack.
//!
//! ```text
//!  evaluate(calls) ──take an idle worker (or start one)──▶ write one Request frame
//!        ▲                                                   │ stdin pipe
//!        │ one Reply per call, each within timeout_ms        ▼
//!  reader thread ◀── stdout pipe ── worker: compile (cached by program id),
//!                                   eval thread (64 MiB stack), RLIMIT_AS
//! ```
//!
//! Failure of one call, all [`MappingError::Limit`] naming the program's key:
//! - no reply within `timeout_ms`: the worker is killed (SIGKILL), the call
//!   fails with "ran longer than";
//! - the worker dies (stack overflow, allocation past `max_memory_mb`,
//!   anything else): the call fails with what its stderr said;
//! - in both cases the calls after it in the batch fail as "not evaluated",
//!   and the next batch starts a fresh worker.
//!
//! Too many or too large outputs are caught inside the worker, which stays.
//! This module does process I/O (the exception in this crate) but no async:
//! callers run it on blocking threads.

#[cfg(test)]
mod tests;
mod wire;
mod worker;

use std::collections::HashSet;
use std::ffi::OsString;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::Value;

use super::{JqCall, Limits, MappingError};
pub use worker::{serve_stdio, EVAL_STACK_BYTES};

/// Idle workers kept for reuse; more concurrent callers start more workers,
/// which end when returned to a full pool.
const MAX_IDLE: usize = 8;

/// How much of a worker's stderr is kept to explain its death.
const STDERR_TAIL: usize = 4096;

static INSTALLED: OnceLock<Sandbox> = OnceLock::new();

/// Routes every evaluation of this process through `sandbox`; false if one
/// was installed before (it stays).
pub fn install(sandbox: Sandbox) -> bool {
    INSTALLED.set(sandbox).is_ok()
}

pub(crate) fn installed() -> Option<&'static Sandbox> {
    INSTALLED.get()
}

/// Starts, reuses and kills worker processes.
pub struct Sandbox {
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    limits: Limits,
    idle: Mutex<Vec<Worker>>,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("program", &self.program)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Sandbox {
    /// Workers are started as `program args...`; the program must serve the
    /// protocol on stdin/stdout ([`serve_stdio`]) with the same `limits`.
    pub fn new(program: impl Into<OsString>, args: Vec<OsString>, limits: Limits) -> Sandbox {
        Sandbox {
            program: program.into(),
            args,
            env: Vec::new(),
            limits,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Sets an environment variable for the workers, which get no other.
    pub fn with_env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Sandbox {
        self.env.push((key.into(), value.into()));
        self
    }

    /// The limits workers apply.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Runs the calls in a worker; see [`super::evaluate`].
    pub(crate) fn evaluate(&self, calls: &[JqCall<'_>]) -> Vec<Result<Vec<Value>, MappingError>> {
        if calls.is_empty() {
            return Vec::new();
        }
        let idle = self.idle.lock().map(|mut idle| idle.pop()).ok().flatten();
        let mut worker = match idle {
            Some(w) => w,
            None => match Worker::start(self) {
                Ok(w) => w,
                Err(e) => {
                    let message = format!("cannot start a jq worker process: {e}");
                    return calls
                        .iter()
                        .map(|c| Err(c.program.limit_error(message.clone())))
                        .collect();
                }
            },
        };
        let (results, healthy) = worker.evaluate(calls, &self.limits);
        if healthy {
            if let Ok(mut idle) = self.idle.lock() {
                if idle.len() < MAX_IDLE {
                    idle.push(worker);
                }
            }
        }
        results
    }
}

/// One worker process and the threads reading its pipes.
struct Worker {
    child: Child,
    stdin: BufWriter<ChildStdin>,
    replies: Receiver<io::Result<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    stderr_reader: Option<JoinHandle<()>>,
    /// Programs already sent.
    known: HashSet<u64>,
}

/// How a worker failed a call.
enum Broken {
    Timeout,
    Died(String),
}

impl Worker {
    fn start(sandbox: &Sandbox) -> io::Result<Worker> {
        let mut child = Command::new(&sandbox.program)
            .args(&sandbox.args)
            // Nothing of the environment (secrets) reaches expressions.
            .env_clear()
            .envs(sandbox.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let (Some(stdin), Some(stdout), Some(mut stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::other("the worker's pipes are missing"));
        };
        // Bounded: the parent reads every reply of a batch before sending more.
        let (tx, replies) = mpsc::sync_channel(64);
        std::thread::Builder::new()
            .name("jq-replies".into())
            .spawn(move || {
                let mut stdout = BufReader::new(stdout);
                loop {
                    let frame = match wire::read_frame(&mut stdout) {
                        Ok(Some(frame)) => Ok(frame),
                        Ok(None) => Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
                        Err(e) => Err(e),
                    };
                    let end = frame.is_err();
                    if tx.send(frame).is_err() || end {
                        return;
                    }
                }
            })?;
        let tail = Arc::new(Mutex::new(Vec::new()));
        let keep = tail.clone();
        let stderr_reader =
            std::thread::Builder::new()
                .name("jq-stderr".into())
                .spawn(move || {
                    let mut buf = [0u8; 1024];
                    while let Ok(n @ 1..) = stderr.read(&mut buf) {
                        if let Ok(mut tail) = keep.lock() {
                            tail.extend_from_slice(&buf[..n]);
                            let excess = tail.len().saturating_sub(STDERR_TAIL);
                            tail.drain(..excess);
                        }
                    }
                })?;
        Ok(Worker {
            child,
            stdin: BufWriter::new(stdin),
            replies,
            stderr: tail,
            stderr_reader: Some(stderr_reader),
            known: HashSet::new(),
        })
    }

    /// One result per call, and whether the worker can be used again.
    fn evaluate(
        &mut self,
        calls: &[JqCall<'_>],
        limits: &Limits,
    ) -> (Vec<Result<Vec<Value>, MappingError>>, bool) {
        let mut results = Vec::with_capacity(calls.len());
        let broken = match self.send(calls) {
            Err(e) => Some(self.died(&format!("writing to it failed: {e}"))),
            Ok(()) => self.receive(calls, limits, &mut results),
        };
        let Some(broken) = broken else {
            return (results, true);
        };
        let failed = results.len();
        let message = match broken {
            Broken::Timeout => format!(
                "ran longer than {} ms on this event (limit [jq] timeout_ms); the evaluation was killed",
                limits.timeout_ms
            ),
            Broken::Died(why) => why,
        };
        for (i, call) in calls.iter().enumerate().skip(failed) {
            let message = if i == failed {
                message.clone()
            } else {
                "not evaluated: an earlier evaluation in the same batch failed".to_owned()
            };
            results.push(Err(call.program.limit_error(message)));
        }
        (results, false)
    }

    fn send(&mut self, calls: &[JqCall<'_>]) -> io::Result<()> {
        let mut define = Vec::new();
        for call in calls {
            let program = call.program;
            if self.known.insert(program.id()) {
                define.push(wire::Define {
                    id: program.id(),
                    key: program.key().into(),
                    source: program.source().into(),
                });
            }
        }
        let request = wire::Request {
            define,
            calls: calls
                .iter()
                .map(|c| wire::Call {
                    program: c.program.id(),
                    want: c.want,
                    input: std::borrow::Cow::Borrowed(c.input),
                })
                .collect(),
        };
        let bytes = serde_json::to_vec(&request).map_err(io::Error::other)?;
        wire::write_frame(&mut self.stdin, &bytes)?;
        self.stdin.flush()
    }

    /// Collects one reply per call; `Some` when the worker failed one.
    fn receive(
        &mut self,
        calls: &[JqCall<'_>],
        limits: &Limits,
        results: &mut Vec<Result<Vec<Value>, MappingError>>,
    ) -> Option<Broken> {
        let timeout = Duration::from_millis(limits.timeout_ms.max(1));
        for call in calls {
            let frame = match self.replies.recv_timeout(timeout) {
                Ok(Ok(frame)) => frame,
                Ok(Err(e)) => return Some(self.died(&format!("reading from it failed: {e}"))),
                Err(RecvTimeoutError::Timeout) => {
                    self.kill();
                    return Some(Broken::Timeout);
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Some(self.died("its reply pipe closed"))
                }
            };
            let result = match serde_json::from_slice::<wire::Reply>(&frame) {
                Ok(wire::Reply::Ok(outputs)) => Ok(outputs),
                Ok(wire::Reply::Runtime(message)) => Err(MappingError::Runtime {
                    key: call.program.key().to_owned(),
                    message,
                }),
                Ok(wire::Reply::Limit(message)) => Err(call.program.limit_error(message)),
                Err(e) => Err(call
                    .program
                    .limit_error(format!("the jq worker's reply cannot be read: {e}"))),
            };
            results.push(result);
        }
        None
    }

    /// The worker failed: wait for its end and say why from its stderr.
    fn died(&mut self, how: &str) -> Broken {
        let status = self.kill();
        if let Some(reader) = self.stderr_reader.take() {
            let _ = reader.join();
        }
        let tail = self
            .stderr
            .lock()
            .map(|t| String::from_utf8_lossy(&t).into_owned())
            .unwrap_or_default();
        Broken::Died(explain(how, status, &tail))
    }

    /// Kills and reaps the process (a no-op if it already exited).
    fn kill(&mut self) -> Option<ExitStatus> {
        let _ = self.child.kill();
        self.child.wait().ok()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Why a worker died, for the operator: the two causes a program can
/// provoke are named with what to do.
fn explain(how: &str, status: Option<ExitStatus>, stderr: &str) -> String {
    if stderr.contains("overflowed its stack") {
        return format!(
            "recursed too deeply (the evaluation overflowed its {} MiB stack); \
             a recursive `def` without a base case? (use `recurse` or `limit`)",
            EVAL_STACK_BYTES / (1024 * 1024)
        );
    }
    if stderr.contains("memory allocation of") || stderr.contains("out of memory") {
        return "used more memory than allowed (limit [jq] max_memory_mb, the jq worker's \
                address space)"
            .to_owned();
    }
    if stderr.contains("recursion limit exceeded") {
        return "the event is nested more than 128 levels deep, deeper than the jq worker \
                reads"
            .to_owned();
    }
    let status = status.map_or_else(|| "unknown status".to_owned(), |s| s.to_string());
    let last = stderr.trim().lines().last().unwrap_or("no message");
    format!("the jq worker process died ({how}; {status}): {last}")
}
