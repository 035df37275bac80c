//! The worker protocol: frames of a little-endian `u32` length and JSON.
//!
//! ```text
//!  parent ── Request {define: [{id, key, source}], calls: [{program, want, input}]} ──▶ worker
//!  parent ◀── Reply (one frame per call, in order, flushed as each finishes) ── worker
//! ```

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::mapping::Want;

/// Largest frame either side accepts: a request holds one batch of events,
/// a reply the outputs of one call (bounded by `max_output_bytes`).
pub(crate) const MAX_FRAME: usize = 1 << 30;

/// A program the worker has not seen yet.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Define<'a> {
    pub id: u64,
    #[serde(borrow)]
    pub key: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    pub source: std::borrow::Cow<'a, str>,
}

/// One call.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Call<'a> {
    pub program: u64,
    pub want: Want,
    #[serde(borrow)]
    pub input: std::borrow::Cow<'a, Value>,
}

/// A batch of calls, with the programs they need that the worker lacks.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Request<'a> {
    #[serde(borrow)]
    pub define: Vec<Define<'a>>,
    #[serde(borrow)]
    pub calls: Vec<Call<'a>>,
}

/// The result of one call.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Reply {
    /// The outputs (one boolean for [`Want::Truth`]).
    Ok(Vec<Value>),
    /// A jq runtime error.
    Runtime(String),
    /// A limit was reached.
    Limit(String),
}

/// Writes one frame (not flushed).
pub(crate) fn write_frame(out: &mut impl Write, payload: &[u8]) -> io::Result<()> {
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|&n| n as usize <= MAX_FRAME)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "frame too large"))?;
    out.write_all(&len.to_le_bytes())?;
    out.write_all(payload)
}

/// Reads one frame; `None` at a clean end of the stream.
pub(crate) fn read_frame(input: &mut impl Read) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match input.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes is over the limit"),
        ));
    }
    let mut payload = vec![0u8; len];
    input.read_exact(&mut payload)?;
    Ok(Some(payload))
}
