//! Rows of a `COPY (SELECT ...) TO STDOUT` in text format, read as a stream.
//!
//! COPY's text format is each value in its type's output format (what the simple
//! query protocol and pgoutput send), tab-separated, one row a line, NULL as `\N`,
//! with backslash escapes for the bytes that would break the framing. Decoding
//! follows `CopyReadAttributesText` in Postgres' copyfromparse.c, so anything
//! COPY FROM would read back is read here the same way.

use std::ops::Range;
use std::pin::Pin;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio_postgres::CopyOutStream;

/// Largest row (its COPY line) read: a row wider than this is an error naming the
/// table, not an allocation as large as the source sends. Postgres' own bound for one
/// row is about 1 GB.
pub(crate) const MAX_LINE_BYTES: usize = 256 << 20;

/// Why a COPY stream could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CopyTextError {
    /// The source failed mid-stream.
    #[error(transparent)]
    Source(#[from] tokio_postgres::Error),
    /// The stream is not what `COPY ... TO STDOUT` (text) sends.
    #[error("{0}")]
    Malformed(String),
}

/// One row's values, decoded, borrowed from a buffer reused row after row.
#[derive(Debug, Default)]
pub(crate) struct CopyLine {
    text: String,
    fields: Vec<Option<Range<usize>>>,
    /// Bytes of the line as received (its size on the wire).
    raw_len: usize,
}

impl CopyLine {
    /// Number of values.
    pub(crate) fn len(&self) -> usize {
        self.fields.len()
    }

    /// The `i`th value's text; `None` for SQL NULL (or past the end).
    pub(crate) fn get(&self, i: usize) -> Option<&str> {
        let range = self.fields.get(i)?.clone()?;
        self.text.get(range)
    }

    /// Bytes the line took on the wire (without its newline).
    pub(crate) fn raw_len(&self) -> usize {
        self.raw_len
    }

    /// Decodes one line (without its `\n`).
    pub(crate) fn parse(&mut self, line: &[u8]) -> Result<(), CopyTextError> {
        let mut out = std::mem::take(&mut self.text).into_bytes();
        out.clear();
        self.fields.clear();
        self.raw_len = line.len();
        // Fields are found with `memchr` (SIMD): a byte-at-a-time scan for tabs,
        // backslashes and newlines took 11% of a 1M-row snapshot's samples.
        let mut from = 0;
        loop {
            let end = memchr::memchr(b'\t', &line[from..]).map_or(line.len(), |n| from + n);
            let raw = &line[from..end];
            // NULL is the unescaped field `\N` as a whole; an escaped `\\N` is the text.
            if raw == b"\\N" {
                self.fields.push(None);
            } else {
                let start = out.len();
                unescape(raw, &mut out);
                self.fields.push(Some(start..out.len()));
            }
            if end == line.len() {
                break;
            }
            from = end + 1;
        }
        // One check for the whole line: escapes are the only way to produce a byte
        // the server did not send as UTF-8 (octal or hex escapes of high bytes).
        self.text = String::from_utf8(out).map_err(|_| {
            CopyTextError::Malformed(
                "a COPY value is not valid UTF-8; the catalog connection asks for UTF8".into(),
            )
        })?;
        // A field boundary inside a multi-byte character cannot happen: the tab
        // separator is ASCII and so is every escape's first byte.
        Ok(())
    }
}

/// Appends `raw` with COPY text escapes resolved: `\b \f \n \r \t \v`, `\` + 1-3
/// octal digits, `\x` + 1-2 hex digits; any other escaped byte stands for itself
/// (`\\` is a backslash).
fn unescape(raw: &[u8], out: &mut Vec<u8>) {
    let Some(first) = memchr::memchr(b'\\', raw) else {
        out.extend_from_slice(raw);
        return;
    };
    out.extend_from_slice(&raw[..first]);
    let mut i = first;
    while i < raw.len() {
        let b = raw[i];
        i += 1;
        if b != b'\\' {
            out.push(b);
            continue;
        }
        let Some(&c) = raw.get(i) else {
            // A trailing lone backslash: Postgres keeps it as is.
            out.push(b'\\');
            break;
        };
        i += 1;
        match c {
            b'0'..=b'7' => {
                let mut v = u32::from(c - b'0');
                for _ in 0..2 {
                    match raw.get(i) {
                        Some(&d @ b'0'..=b'7') => {
                            v = v * 8 + u32::from(d - b'0');
                            i += 1;
                        }
                        _ => break,
                    }
                }
                // Postgres keeps the low byte of `\777`, as here.
                out.push((v & 0xff) as u8);
            }
            b'x' => match raw.get(i).and_then(|&d| hex(d)) {
                Some(h) => {
                    i += 1;
                    let mut v = h;
                    if let Some(l) = raw.get(i).and_then(|&d| hex(d)) {
                        v = v * 16 + l;
                        i += 1;
                    }
                    out.push(v);
                }
                // `\x` without a hex digit is the letter x.
                None => out.push(b'x'),
            },
            b'b' => out.push(0x08),
            b'f' => out.push(0x0c),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(0x0b),
            other => out.push(other),
        }
    }
}

fn hex(d: u8) -> Option<u8> {
    (d as char).to_digit(16).map(|v| v as u8)
}

/// The lines of a `COPY ... TO STDOUT` (text) stream, one at a time. Postgres sends
/// one row per CopyData message; a row split over several, or several rows in one,
/// is read just as well. Holds at most one message and one line.
pub(crate) struct CopyReader {
    stream: Pin<Box<CopyOutStream>>,
    /// The message being read, and where its unread part starts.
    data: Bytes,
    at: usize,
    /// The start of a line whose end is in a later message.
    partial: Vec<u8>,
    line: CopyLine,
    finished: bool,
}

impl CopyReader {
    pub(crate) fn new(stream: CopyOutStream) -> Self {
        CopyReader {
            stream: Box::pin(stream),
            data: Bytes::new(),
            at: 0,
            partial: Vec::new(),
            line: CopyLine::default(),
            finished: false,
        }
    }

    /// The next row, or `None` at the end of the COPY.
    pub(crate) async fn next(&mut self) -> Result<Option<&CopyLine>, CopyTextError> {
        loop {
            let rest = &self.data[self.at..];
            if let Some(n) = memchr::memchr(b'\n', rest) {
                self.at += n + 1;
                if self.partial.is_empty() {
                    self.line.parse(&rest[..n])?;
                } else {
                    self.partial.extend_from_slice(&rest[..n]);
                    check_len(self.partial.len())?;
                    let whole = std::mem::take(&mut self.partial);
                    let parsed = self.line.parse(&whole);
                    self.partial = whole;
                    self.partial.clear();
                    parsed?;
                }
                return Ok(Some(&self.line));
            }
            if !rest.is_empty() {
                self.partial.extend_from_slice(rest);
                check_len(self.partial.len())?;
            }
            self.data = Bytes::new();
            self.at = 0;
            if self.finished {
                if !self.partial.is_empty() {
                    return Err(CopyTextError::Malformed(
                        "the COPY stream ended inside a row".into(),
                    ));
                }
                return Ok(None);
            }
            match self.stream.next().await {
                Some(data) => self.data = data?,
                None => self.finished = true,
            }
        }
    }
}

fn check_len(len: usize) -> Result<(), CopyTextError> {
    if len > MAX_LINE_BYTES {
        return Err(CopyTextError::Malformed(format!(
            "a row is more than {} MiB in COPY text; pgcdc reads rows up to that size: \
             leave the widest columns out of the table's `columns`",
            MAX_LINE_BYTES >> 20
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(line: &[u8]) -> Vec<Option<String>> {
        let mut l = CopyLine::default();
        l.parse(line).unwrap_or_else(|e| panic!("{e}"));
        (0..l.len()).map(|i| l.get(i).map(str::to_owned)).collect()
    }

    #[test]
    fn nulls_empty_strings_and_plain_values() {
        assert_eq!(
            values(b"1\t\\N\t\tplain text"),
            vec![
                Some("1".into()),
                None,
                Some(String::new()),
                Some("plain text".into())
            ]
        );
        // An escaped backslash followed by N is the text `\N`, not NULL.
        assert_eq!(values(b"\\\\N"), vec![Some("\\N".into())]);
        // Empty fields at either end, and a line of one empty field.
        assert_eq!(values(b"a\t"), vec![Some("a".into()), Some(String::new())]);
        assert_eq!(values(b"\t\\N"), vec![Some(String::new()), None]);
        assert_eq!(values(b""), vec![Some(String::new())]);
        assert_eq!(values(b"\\N\\N"), vec![Some("NN".into())]);
    }

    #[test]
    fn backslash_escapes_as_copy_writes_them() {
        assert_eq!(
            values(b"a\\tb\\nc\\rd\\\\e\\bf\\fg\\vh"),
            vec![Some("a\tb\nc\rd\\e\u{8}f\u{c}g\u{b}h".into())]
        );
    }

    #[test]
    fn octal_and_hex_escapes_as_copy_reads_them() {
        assert_eq!(values(b"\\101\\7\\0619"), vec![Some("A\u{7}19".into())]);
        assert_eq!(values(b"\\x41\\x4g\\xz"), vec![Some("A\u{4}gxz".into())]);
        // Escaped bytes of one UTF-8 character.
        assert_eq!(values(b"\\303\\251"), vec![Some("é".into())]);
        // Any other escaped byte is itself; a lone trailing backslash stays.
        assert_eq!(values(b"\\.\\q\\"), vec![Some(".q\\".into())]);
        assert_eq!(values("é\\tü".as_bytes()), vec![Some("é\tü".into())]);
    }

    #[test]
    fn bytes_that_are_not_utf8_are_an_error() {
        let mut l = CopyLine::default();
        let err = l.parse(b"\\377").err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("UTF-8")));
    }
}
