//! jq expressions in the config: trigger conditions (`when`), sink filters
//! (`filter`), transforms (`transform`), Kafka keys (`key`) and `{...}`
//! placeholders in HTTP URLs and header values.
//!
//! ```text
//!  config text ──JqProgram::compile (once, at start-up)──▶ JqProgram (Send + Sync, cheap Clone)
//!  native event (serde_json::Value) ──run / test──▶ outputs / condition
//!  "https://x/{.new.id}" ──Template::parse──▶ Template ──render / render_url──▶ String
//! ```
//!
//! Expressions run on [jaq](https://github.com/01mf02/jaq) (jaq-core 3, jaq-std 3,
//! jaq-json 2) with its core, standard and JSON libraries: `select`, `map`, `has`,
//! `keys`, `to_entries`/`with_entries`, `paths`, `getpath`, `del`, `pick`,
//! `tostring`, `tonumber`, `tojson`/`fromjson`, `ascii_downcase`, `ltrimstr`,
//! `trim`, `split`, `join`, `test`/`match`/`capture`/`sub`/`gsub` (regex),
//! `now`, `todate`/`fromdate`, `strftime`/`strptime`/`mktime`, `@base64`,
//! `@base64d`, `@uri`, `@html`, `@sh`, `@json`, `@text`, string interpolation
//! `"\(.x)"`, `//`, `if`, `reduce`, `foreach` (2 and 3 arguments), `limit`,
//! `first`, `label`/`break`, `try`/`catch`, `..`, `def`, destructuring
//! (`. as {a: $x}`), object construction, `.[]`.
//!
//! Errors: a syntax error or an unknown filter/variable is reported by
//! [`JqProgram::compile`] with the config key and `line:column`; it is a
//! definite configuration error. An error raised while evaluating (`.a + 1` on
//! a string, `error("x")`) is [`MappingError::Runtime`]; going past a
//! [`Limits`] bound (time, outputs, output size, memory, recursion depth) is
//! [`MappingError::Limit`]. Both are definite for that event and never
//! retried; the caller decides what a failed event means for its sink.
//!
//! # Sandbox
//!
//! jaq has no fuel, no cancellation and no recursion guard: `def f: 1 + f; f`
//! overflows the stack (which aborts the whole process), `last(range(1e12))`
//! never returns, `[repeat(1)]` allocates until the machine is out of memory.
//! So where [`sandbox::install`] was called (the `pgcdc` binary), every
//! evaluation runs in a child process (see [`sandbox`]) that can be killed
//! and replaced; without it (unit tests, config checks) programs run in this
//! process with only the output limits.
//!
//! # jq features that are NOT available
//!
//! Checked against jaq-core 3.1 / jaq-std 3.0 / jaq-json 2.0 (see
//! <https://github.com/01mf02/jaq#differences-between-jq-and-jaq> and the
//! jaq manual <https://gedenkt.at/jaq/manual/>):
//!
//! - Undefined (a compile error names them): modules (`import`, `include`),
//!   `input`/`inputs`, `input_filename`, `input_line_number`, `$__loc__`,
//!   `$ARGS`, `$__prog_args`, `builtins`, `get_search_list`, SQL-style
//!   operators (`IN`, `INDEX`), streaming (`tostream`, `fromstream`,
//!   `truncate_stream`), `@csv`, `@tsv`, `@base32`, `@base32d`, `leaf_paths`,
//!   `isvalid`, `toarray`, `trimstr`, `ascii`, `dateadd`/`datesub`/`date`,
//!   `getpath/2`, `ltrimstr/2`, the destructuring alternative `?//`.
//! - `env` and `$ENV` are removed on purpose: use `${VAR}` in the config file
//!   instead, so that secrets are substituted once and never reach payloads.
//! - `halt`/`halt_error` do not stop pgcdc: they are a runtime error.
//! - `debug` and `stderr` write through the `log` facade, which pgcdc does not
//!   print: develop expressions with the `jaq` CLI instead.
//! - Numbers: `1` is an integer and `1.0` a float; integer arithmetic stays
//!   integer, `/` yields a float (`10 / 2` is `5.0`), array indices must be
//!   integers. `n / 0` is `nan`/`±infinite` (jq raises an error), and both
//!   become `null` in the output, as in jq.
//! - `p |= f` applies `f` to each match without building paths first:
//!   `[1,2,3] | .[] |= empty` yields `[]` (jq 1.6: `[2]`); assigning beyond an
//!   array's end is an out-of-bounds error (jq pads with `null`); `limit` and
//!   `first(f)` cannot be the left side of `|=`.
//! - `reduce`/`foreach` continue on every output of the update (jq only on
//!   the last one).
//! - Recursive `def`s may only take `$value` arguments; tail calls are not
//!   optimised (deep recursion overflows the sandbox's stack and fails the
//!   event with a [`MappingError::Limit`]: use `recurse`).
//! - `abs` on a non-number returns it unchanged (jq raises an error).

mod convert;
mod eval;
mod old_columns;
pub mod sandbox;
mod template;
#[cfg(test)]
mod tests;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use jaq_core::load::{self, Arena, File, Loader};
use jaq_core::{data::JustLut, Compiler, Ctx, Vars};
use jaq_json::Val;
use serde_json::Value;

pub use eval::{evaluate, JqCall, Limits, Want};
pub use template::Template;

/// Longest runtime error message kept: jaq prints offending values, which may
/// be whole rows, and those must not flood the logs or the DLQ.
const MAX_MESSAGE_CHARS: usize = 512;

/// The compiled filter type for our value type and no custom global data.
type Filter = jaq_core::Filter<JustLut<Val>>;

/// Errors from compiling or evaluating a jq expression or a template.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MappingError {
    /// The expression does not parse or uses an undefined filter or variable.
    #[error("{key}: invalid jq expression at {position}: {message}")]
    Compile {
        /// The config key holding the expression (e.g. `trigger[0].when`).
        key: String,
        /// Where in the config value the error is.
        position: Position,
        /// What is wrong.
        message: String,
    },
    /// Evaluating the expression on one event raised an error.
    #[error("{key}: jq error: {message}")]
    Runtime {
        /// The config key holding the expression.
        key: String,
        /// jaq's error, truncated.
        message: String,
    },
    /// Evaluating the expression on one event went past a `[jq]` limit, or
    /// crashed the sandbox (too deep a recursion, too much memory).
    #[error("{key}: {message}")]
    Limit {
        /// The config key holding the expression.
        key: String,
        /// Which limit, and the config key that sets it.
        message: String,
    },
    /// A template is malformed, or a placeholder did not yield one scalar.
    #[error("{key}: {message}")]
    Template {
        /// The config key holding the template.
        key: String,
        /// What is wrong, naming the placeholder.
        message: String,
    },
}

/// A position in an expression's source text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// 0-based byte offset.
    pub offset: usize,
}

impl Position {
    /// The position of byte `offset` in `source` (clamped to its end).
    pub(crate) fn at(source: &str, offset: usize) -> Position {
        let mut offset = offset.min(source.len());
        while !source.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &source[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        Position {
            line,
            column,
            offset,
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// Which columns of `.old` a program reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldColumns {
    /// The program never looks at `.old`.
    None,
    /// Only these columns, by name (sorted, deduplicated).
    Some(Vec<String>),
    /// The whole old row, or a use the scan cannot bound.
    All,
}

/// A compiled jq program.
#[derive(Clone)]
pub struct JqProgram {
    inner: Arc<Compiled>,
}

struct Compiled {
    /// Unique in this process: the sandbox's workers cache programs by it.
    id: u64,
    key: String,
    source: String,
    filter: Filter,
    old_columns: OldColumns,
    new_columns: OldColumns,
}

impl fmt::Debug for JqProgram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JqProgram")
            .field("key", &self.inner.key)
            .field("source", &self.inner.source)
            .finish_non_exhaustive()
    }
}

impl JqProgram {
    /// Compiles; on a syntax/undefined-name error, the error names the config key
    /// (`key`, e.g. "trigger[0].when") and the position (line:column) in the source.
    pub fn compile(key: &str, source: &str) -> Result<JqProgram, MappingError> {
        let filter = compile_filter(source).map_err(|(offset, message)| MappingError::Compile {
            key: key.to_owned(),
            position: Position::at(source, offset),
            message,
        })?;
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        Ok(JqProgram {
            inner: Arc::new(Compiled {
                id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
                key: key.to_owned(),
                source: source.to_owned(),
                filter,
                old_columns: old_columns::scan(source, "old"),
                new_columns: old_columns::scan(source, "new"),
            }),
        })
    }

    /// All outputs (0..n). A runtime error names the key and the jq error;
    /// more outputs than [`Limits::max_outputs`] is a [`MappingError::Limit`].
    pub fn run(&self, input: &Value) -> Result<Vec<Value>, MappingError> {
        self.call(input, Want::All)
    }

    /// As a condition: true iff it yields at least one output and the first is neither
    /// false nor null (jq truthiness).
    pub fn test(&self, input: &Value) -> Result<bool, MappingError> {
        Ok(eval::truth(&self.call(input, Want::Truth)?))
    }

    /// The source text.
    pub fn source(&self) -> &str {
        &self.inner.source
    }

    /// The config key this program was compiled for.
    pub fn key(&self) -> &str {
        &self.inner.key
    }

    /// Which columns of `.old` the program reads (a conservative AST scan).
    pub fn old_columns(&self) -> OldColumns {
        self.inner.old_columns.clone()
    }

    /// Which row columns (of `.old` or `.new`) the program reads, by the same scan.
    pub fn row_columns(&self) -> OldColumns {
        match (&self.inner.old_columns, &self.inner.new_columns) {
            (OldColumns::All, _) | (_, OldColumns::All) => OldColumns::All,
            (OldColumns::None, other) | (other, OldColumns::None) => other.clone(),
            (OldColumns::Some(a), OldColumns::Some(b)) => {
                let mut all: Vec<String> = a.iter().chain(b).cloned().collect();
                all.sort();
                all.dedup();
                OldColumns::Some(all)
            }
        }
    }

    /// Up to `limit` outputs; for placeholders, which need to know "exactly
    /// one" without running a generator to its end.
    pub(crate) fn first_outputs(
        &self,
        input: &Value,
        limit: usize,
    ) -> Result<Vec<Value>, MappingError> {
        self.call(input, Want::First(limit))
    }

    fn call(&self, input: &Value, want: Want) -> Result<Vec<Value>, MappingError> {
        let call = JqCall {
            program: self,
            input,
            want,
        };
        evaluate(&[call])
            .pop()
            .unwrap_or_else(|| Err(self.limit_error("the sandbox returned no result".into())))
    }

    pub(crate) fn id(&self) -> u64 {
        self.inner.id
    }

    /// Runs the filter in this process, handing each output to `sink` until it returns false.
    fn each(&self, input: &Value, mut sink: impl FnMut(Val) -> bool) -> Result<(), MappingError> {
        let filter = &self.inner.filter;
        let ctx = Ctx::<JustLut<Val>>::new(&filter.lut, Vars::new([]));
        for item in filter.id.run((ctx, convert::from_json(input))) {
            match item {
                Ok(v) => {
                    if !sink(v) {
                        break;
                    }
                }
                Err(exn) => return Err(self.runtime_error(exn)),
            }
        }
        Ok(())
    }

    pub(crate) fn limit_error(&self, message: String) -> MappingError {
        MappingError::Limit {
            key: self.inner.key.clone(),
            message: truncate(message),
        }
    }

    fn runtime_error(&self, exn: jaq_core::Exn<'_, Val>) -> MappingError {
        // `unwrap_valr` from jaq would exit the process on `halt`; a config
        // expression must never be able to stop pgcdc.
        let message = match exn.get_err() {
            Ok(err) => err.to_string(),
            Err(other) => match other.get_halt() {
                Ok(code) => format!("halt({code}) is not allowed in pgcdc expressions"),
                Err(_) => "unexpected jq control flow (break outside its label)".to_owned(),
            },
        };
        MappingError::Runtime {
            key: self.inner.key.clone(),
            message: truncate(message),
        }
    }
}

pub(crate) fn truncate(mut message: String) -> String {
    if let Some((cut, _)) = message.char_indices().nth(MAX_MESSAGE_CHARS) {
        message.truncate(cut);
        message.push('…');
    }
    message
}

/// Parses and compiles `source`; on error, the byte offset in `source` and a message.
fn compile_filter(source: &str) -> Result<Filter, (usize, String)> {
    let defs = jaq_core::defs()
        .chain(jaq_std::defs())
        .chain(jaq_json::defs());
    // `env` would hand the process environment, secrets included, to payloads.
    let funs = jaq_core::funs()
        .chain(jaq_std::funs())
        .chain(jaq_json::funs())
        .filter(|(name, _, _)| *name != "env");
    let arena = Arena::default();
    let loader = Loader::new(defs);
    let modules = loader
        .load(
            &arena,
            File {
                code: source,
                path: (),
            },
        )
        .map_err(|errs| load_error(source, errs))?;
    Compiler::default()
        .with_funs(funs)
        .compile(modules)
        .map_err(|errs| {
            let first = errs.into_iter().flat_map(|(_, e)| e).next();
            match first {
                Some((name, undefined)) => (
                    offset_in(source, name),
                    format!("undefined {} `{name}`", undefined.as_str()),
                ),
                None => (0, "compilation failed".to_owned()),
            }
        })
}

fn load_error(source: &str, errs: load::Errors<&str, ()>) -> (usize, String) {
    let Some((_, err)) = errs.into_iter().next() else {
        return (0, "parse failed".to_owned());
    };
    match err {
        load::Error::Io(io) => match io.into_iter().next() {
            Some((path, msg)) => (
                offset_in(source, path),
                format!("cannot load module {path}: {msg} (modules are not supported)"),
            ),
            None => (0, "modules are not supported".to_owned()),
        },
        load::Error::Lex(lex) => match lex.into_iter().next() {
            Some((expect, found)) => (
                offset_in(source, found),
                format!("expected {}", expect.as_str()),
            ),
            None => (0, "lexing failed".to_owned()),
        },
        load::Error::Parse(parse) => match parse.into_iter().next() {
            Some((expect, found)) => {
                let what = if found.is_empty() {
                    "end of input".to_owned()
                } else {
                    format!("`{found}`")
                };
                (
                    offset_in(source, found),
                    format!("expected {}, found {what}", expect.as_str()),
                )
            }
            None => (0, "parsing failed".to_owned()),
        },
    }
}

/// The byte offset of `part` inside `whole`, if `part` is a sub-slice of it,
/// else the end of `whole` (jaq reports "end of input" that way).
fn offset_in(whole: &str, part: &str) -> usize {
    let start = whole.as_ptr() as usize;
    let at = part.as_ptr() as usize;
    match at.checked_sub(start) {
        Some(off) if off + part.len() <= whole.len() => off,
        _ => whole.len(),
    }
}
