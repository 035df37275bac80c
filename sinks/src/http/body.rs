//! Response bodies read to a limit: an endless or huge answer costs at most
//! the limit, never the whole body.

/// Most of a response body pgcdc reads: far more than the DLQ / audit excerpt needs,
/// and enough to drain a typical acknowledgement so the connection is reused.
pub(crate) const RESPONSE_BODY_LIMIT: usize = 64 * 1024;

/// A response body read to at most `limit` bytes (the client's timeout bounds the
/// time). The rest is never read: dropping the response then closes the connection
/// instead of returning it to the pool, so an endless or huge body costs `limit`.
pub(crate) async fn read_capped(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<CappedBody, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = limit - body.len();
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            return Ok(CappedBody {
                bytes: body,
                truncated: true,
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(CappedBody {
        bytes: body,
        truncated: false,
    })
}

/// The first bytes of a response body.
#[derive(Debug)]
pub(crate) struct CappedBody {
    pub(crate) bytes: Vec<u8>,
    /// The body went on past the limit (the rest was not read).
    pub(crate) truncated: bool,
}

impl std::ops::Deref for CappedBody {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}
