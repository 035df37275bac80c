//! Evaluation with limits: one call is (program, input, what is wanted of its
//! outputs). [`evaluate`] runs a batch of calls in the installed sandbox, or
//! in this process when there is none; [`JqProgram::eval_local`] is the
//! evaluation itself, shared by both (the sandbox's worker runs it too).

use jaq_json::Val;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{convert, sandbox, JqProgram, MappingError};

/// Bounds on one evaluation (`[jq]` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Longest time one call may run, in milliseconds (sandbox only).
    pub timeout_ms: u64,
    /// Most outputs one call may yield.
    pub max_outputs: usize,
    /// Most bytes (as JSON text) all outputs of one call may add up to.
    pub max_output_bytes: usize,
    /// Address space of a sandbox worker process, in MiB (sandbox only).
    pub max_memory_mb: u64,
}

impl Limits {
    /// The defaults: far above what a per-event expression needs, far below
    /// what hurts the process.
    pub const DEFAULT: Limits = Limits {
        timeout_ms: 2_000,
        max_outputs: 10_000,
        max_output_bytes: 16 * 1024 * 1024,
        max_memory_mb: 1_024,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Limits::DEFAULT
    }
}

/// What a call wants of a program's outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Want {
    /// The jq truthiness of the first output (false without one); the
    /// program is not run past its first output.
    Truth,
    /// Every output, up to the limits.
    All,
    /// At most this many outputs.
    First(usize),
}

/// One evaluation: `program` on `input`.
#[derive(Debug, Clone, Copy)]
pub struct JqCall<'a> {
    /// The program.
    pub program: &'a JqProgram,
    /// The input (`.`).
    pub input: &'a Value,
    /// What is wanted of its outputs.
    pub want: Want,
}

/// Runs the calls, in order, one result per call: for [`Want::Truth`] one
/// boolean, otherwise the outputs. Blocks (up to each call's time limit in
/// the sandbox): call it off async executor threads. A call that fails does
/// not stop the others, except when the sandbox had to be killed: the calls
/// after it then fail too, saying so.
pub fn evaluate(calls: &[JqCall<'_>]) -> Vec<Result<Vec<Value>, MappingError>> {
    match sandbox::installed() {
        Some(sandbox) => sandbox.evaluate(calls),
        None => calls
            .iter()
            .map(|c| c.program.eval_local(c.input, c.want, &Limits::DEFAULT))
            .collect(),
    }
}

/// The truth of a [`Want::Truth`] result.
pub(crate) fn truth(outputs: &[Value]) -> bool {
    matches!(outputs.first(), Some(Value::Bool(true)))
}

impl JqProgram {
    /// Evaluates in this process, with the output limits of `limits`.
    pub(crate) fn eval_local(
        &self,
        input: &Value,
        want: Want,
        limits: &Limits,
    ) -> Result<Vec<Value>, MappingError> {
        if want == Want::Truth {
            let mut truth = false;
            self.each(input, |v| {
                truth = !matches!(v, Val::Null | Val::Bool(false));
                false
            })?;
            return Ok(vec![Value::Bool(truth)]);
        }
        let most = match want {
            Want::First(n) => n.min(limits.max_outputs),
            _ => limits.max_outputs,
        };
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut over = None;
        self.each(input, |v| {
            if out.len() >= most {
                if want == Want::All {
                    over = Some(format!(
                        "yielded more than {} outputs for one event (limit [jq] max_outputs); \
                         a generator such as `repeat` or `range` without a bound?",
                        limits.max_outputs
                    ));
                }
                return false;
            }
            let json = convert::to_json(&v);
            bytes = bytes.saturating_add(json_len(&json));
            if bytes > limits.max_output_bytes {
                over = Some(format!(
                    "outputs for one event exceed {} bytes as JSON (limit [jq] max_output_bytes)",
                    limits.max_output_bytes
                ));
                return false;
            }
            out.push(json);
            true
        })?;
        match over {
            Some(message) => Err(self.limit_error(message)),
            None => Ok(out),
        }
    }
}

/// The length of `value` as compact JSON text, without building the text.
fn json_len(value: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing a Value to a sink that never fails cannot fail.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}
