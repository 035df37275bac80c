//! The worker side: compiles the programs it is sent, evaluates calls with
//! the output limits, answers one frame per call.
//!
//! Threads: the main thread only reads requests, so that it sees the end of
//! stdin (the parent exited, even by SIGKILL) and ends the process while an
//! evaluation still runs; evaluations run on one thread with a large stack,
//! whose overflow aborts this process, not pgcdc.

use std::collections::HashMap;
use std::io::{self, BufWriter, Write};
use std::sync::mpsc;

use super::wire::{self, Reply, Request};
use crate::mapping::{JqProgram, Limits, MappingError};

/// Stack of the evaluation thread: deep enough for any sane recursion over
/// nested rows, small next to `max_memory_mb` (it counts against it).
pub const EVAL_STACK_BYTES: usize = 64 * 1024 * 1024;

/// Serves requests from stdin until it closes; returns the process exit code.
pub fn serve_stdio(limits: Limits) -> i32 {
    let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(1);
    let eval = std::thread::Builder::new()
        .name("jq-eval".into())
        .stack_size(EVAL_STACK_BYTES)
        .spawn(move || {
            let mut session = Session::new(limits);
            let stdout = io::stdout();
            let mut out = BufWriter::new(stdout.lock());
            for request in rx {
                if let Err(e) = session.handle(&request, &mut out) {
                    // A request this worker cannot read, or a parent that stopped
                    // reading: end, so that the parent learns why from stderr
                    // instead of waiting for replies that never come.
                    eprintln!("pgcdc jq worker: {e}");
                    std::process::exit(3);
                }
            }
        });
    if eval.is_err() {
        eprintln!("pgcdc jq worker: cannot start the evaluation thread");
        return 1;
    }
    let mut stdin = io::stdin().lock();
    loop {
        match wire::read_frame(&mut stdin) {
            Ok(Some(frame)) => {
                if tx.send(frame).is_err() {
                    return 1;
                }
            }
            // The parent closed the pipe (or died): stop, even mid-evaluation.
            Ok(None) => return 0,
            Err(e) => {
                eprintln!("pgcdc jq worker: reading a request: {e}");
                return 1;
            }
        }
    }
}

/// Serves every request of `input` in turn, on this thread (tests).
#[cfg(test)]
pub(crate) fn serve(
    input: &mut impl io::Read,
    out: &mut impl Write,
    limits: Limits,
) -> io::Result<()> {
    let mut session = Session::new(limits);
    while let Some(frame) = wire::read_frame(input)? {
        session.handle(&frame, out)?;
    }
    Ok(())
}

/// The programs compiled so far.
struct Session {
    limits: Limits,
    programs: HashMap<u64, Result<JqProgram, String>>,
}

impl Session {
    fn new(limits: Limits) -> Session {
        Session {
            limits,
            programs: HashMap::new(),
        }
    }

    fn handle(&mut self, frame: &[u8], out: &mut impl Write) -> io::Result<()> {
        let request: Request<'_> = serde_json::from_slice(frame)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("bad request: {e}")))?;
        for def in request.define {
            let compiled = JqProgram::compile(&def.key, &def.source).map_err(|e| e.to_string());
            self.programs.insert(def.id, compiled);
        }
        for call in request.calls {
            let reply = match self.programs.get(&call.program) {
                Some(Ok(program)) => match program.eval_local(&call.input, call.want, &self.limits)
                {
                    Ok(outputs) => Reply::Ok(outputs),
                    Err(MappingError::Limit { message, .. }) => Reply::Limit(message),
                    Err(MappingError::Runtime { message, .. }) => Reply::Runtime(message),
                    Err(other) => Reply::Runtime(other.to_string()),
                },
                Some(Err(message)) => Reply::Runtime(message.clone()),
                None => Reply::Runtime(format!("program {} was never sent", call.program)),
            };
            let bytes = serde_json::to_vec(&reply)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            wire::write_frame(out, &bytes)?;
            // Flushed per call: after a kill, the parent knows which call hung.
            out.flush()?;
        }
        Ok(())
    }
}
