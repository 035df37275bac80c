//! Bounds-checked big-endian cursor over one pgoutput message.
//!
//! Every read checks the remaining length first and reports what it was
//! reading, so a short or corrupt message becomes a `DecodeError` naming the
//! field instead of a panic.

use bytes::Bytes;

use super::DecodeError;

/// Cursor over a message; payload slices share the message's allocation.
pub(crate) struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a Bytes) -> Self {
        Self { buf, pos: 0 }
    }

    /// Offset of the next byte to read.
    pub(crate) fn position(&self) -> usize {
        self.pos
    }

    /// Bytes not yet consumed.
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Consumes `n` bytes, or fails without consuming anything.
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let available = self.remaining();
        if n > available {
            return Err(DecodeError::Truncated {
                what,
                offset: self.pos,
                needed: n,
                available,
            });
        }
        let start = self.pos;
        self.pos += n;
        Ok(&self.buf[start..self.pos])
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(what)?[0])
    }

    pub(crate) fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }

    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    pub(crate) fn i32(&mut self, what: &'static str) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array(what)?))
    }

    pub(crate) fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }

    pub(crate) fn i64(&mut self, what: &'static str) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array(what)?))
    }

    /// A NUL-terminated UTF-8 string (the terminator is consumed, not returned).
    pub(crate) fn cstr(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let rest = &self.buf[self.pos..];
        let Some(len) = rest.iter().position(|&b| b == 0) else {
            return Err(DecodeError::Unterminated {
                what,
                offset: self.pos,
            });
        };
        let raw = self.take(len + 1, what)?;
        let text =
            std::str::from_utf8(&raw[..len]).map_err(|_| DecodeError::InvalidUtf8 { what })?;
        Ok(text.to_owned())
    }

    /// An Int32 length followed by that many bytes, sliced without copying.
    pub(crate) fn len_prefixed(&mut self, what: &'static str) -> Result<Bytes, DecodeError> {
        let offset = self.pos;
        let len = self.i32(what)?;
        let len =
            usize::try_from(len).map_err(|_| DecodeError::NegativeLength { what, offset, len })?;
        let available = self.remaining();
        if len > available {
            return Err(DecodeError::Truncated {
                what,
                offset: self.pos,
                needed: len,
                available,
            });
        }
        let start = self.pos;
        self.pos += len;
        Ok(self.buf.slice(start..self.pos))
    }

    /// `Vec::with_capacity` for `count` items of at least `min_item_len`
    /// bytes each, capped by what the message can still hold so that a forged
    /// count cannot force a huge allocation.
    pub(crate) fn vec_for<T>(&self, count: usize, min_item_len: usize) -> Vec<T> {
        Vec::with_capacity(count.min(self.remaining() / min_item_len.max(1)))
    }

    /// Fails unless the whole message was consumed.
    pub(crate) fn finish(&self, message: &'static str) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(DecodeError::TrailingBytes {
                message,
                offset: self.pos,
                count,
            }),
        }
    }
}
