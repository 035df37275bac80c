//! The stdout sink: one JSON line per item (the native event, or the
//! transform's output), flushed before the batch counts as delivered.

use pgcdc_schema::json_write;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::{ItemResult, Outgoing, Sink, SinkError};

/// Writes native events as JSON lines to stdout (or any writer, for tests).
pub struct StdoutSink<W = tokio::io::Stdout> {
    name: String,
    out: W,
    buf: Vec<u8>,
    /// No transform: each line is encoded straight from `Outgoing::event`, so
    /// items need no `body` (a large row is then held once, not twice).
    native_from_event: bool,
}

/// What the line buffer keeps between batches: a batch of narrow rows' lines
/// (1,000 rows of 9 columns: about 450 KiB) fits, so it is not grown again for
/// each batch (every growth copied the lines and touched fresh pages: 2-3% of a
/// stream's CPU); a batch of large rows grows it, and that is given back afterwards.
const BUF_KEEP: usize = 1 << 20;

impl StdoutSink {
    /// A sink writing to the process' stdout.
    pub fn new(name: impl Into<String>) -> Self {
        Self::with_writer(name, tokio::io::stdout())
    }
}

impl<W: AsyncWrite + Unpin + Send + 'static> StdoutSink<W> {
    /// A sink writing to `out`.
    pub fn with_writer(name: impl Into<String>, out: W) -> Self {
        StdoutSink {
            name: name.into(),
            out,
            buf: Vec::new(),
            native_from_event: false,
        }
    }

    /// For a sink without a transform: lines are the native event, encoded from
    /// `Outgoing::event`; with a transform, `body` is what is written.
    pub fn with_native_body_from_event(mut self, untransformed: bool) -> Self {
        self.native_from_event = untransformed;
        self
    }

    /// The writer (for tests).
    pub fn into_writer(self) -> W {
        self.out
    }

    fn definite(&self, message: String) -> SinkError {
        SinkError::Definite {
            sink: self.name.clone(),
            message,
        }
    }
}

impl<W: AsyncWrite + Unpin + Send + 'static> Sink for StdoutSink<W> {
    fn name(&self) -> &str {
        &self.name
    }

    fn wants_native_body(&self) -> bool {
        !self.native_from_event
    }

    async fn deliver(&mut self, items: &[Outgoing]) -> Result<Vec<ItemResult>, SinkError> {
        self.buf.clear();
        for item in items {
            let encoded = if self.native_from_event {
                json_write::write_event(&item.event, &mut self.buf)
            } else {
                serde_json::to_writer(&mut self.buf, &item.body).map_err(|e| e.to_string())
            };
            encoded.map_err(|e| {
                self.definite(format!("cannot encode event {}: {e}", item.event.id))
            })?;
            self.buf.push(b'\n');
        }
        let result = async {
            self.out.write_all(&self.buf).await?;
            self.out.flush().await
        }
        .await;
        if self.buf.capacity() > BUF_KEEP {
            self.buf.clear();
            self.buf.shrink_to(BUF_KEEP);
        }
        result.map_err(|e| {
            self.definite(format!(
                "writing to stdout failed: {e}; is the reader of pgcdc's output gone?"
            ))
        })?;
        Ok(vec![ItemResult::Delivered; items.len()])
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use pgcdc_schema::{ChangeEvent, EventId, Lsn, Op};

    use super::*;

    fn item(seq: u32) -> Outgoing {
        let event = ChangeEvent {
            id: EventId::from_position(Lsn(0x10), seq),
            op: Op::Insert,
            schema: "public".into(),
            table: "permits".into(),
            key: None,
            old: None,
            new: None,
            trigger: None,
            lsn: Lsn(0x10),
            xid: Some(1),
            commit_time: None,
            unchanged_toast: vec![],
            columns: None,
            previous: None,
            origin: Default::default(),
        };
        Outgoing {
            body: serde_json::to_value(&event).unwrap_or_default(),
            event: Arc::new(event),
            part: 0,
            row: "public.permits{}".into(),
        }
    }

    #[tokio::test]
    async fn writes_one_json_line_per_event() {
        let mut sink = StdoutSink::with_writer("out", Vec::<u8>::new());
        let delivered = sink.deliver(&[item(0), item(1)]).await.ok();
        assert_eq!(delivered, Some(vec![ItemResult::Delivered; 2]));
        let text = String::from_utf8(sink.into_writer()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        let v: serde_json::Value = serde_json::from_str(lines[1]).unwrap_or_default();
        assert_eq!(v["id"], "0000000000000010-00000001");
        assert_eq!(v["op"], "insert");
    }
}
