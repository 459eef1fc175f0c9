//! Large request bodies generated on the fly (a prefix, then `a..z` repeated) and the check of
//! their echo, chunk by chunk: gigabytes can be streamed and verified byte for byte without ever
//! being held in memory. Chunks are zero-copy slices of one shared block, so generation costs
//! nothing next to the transfer being measured.

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use std::{
    convert::Infallible,
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
    time::Instant,
};

/// Bytes per generated frame.
pub const CHUNK: usize = 64 * 1024;

/// The knob object that makes the test function stream the whole request body back unchanged
/// (it reads only this first JSON object, then replays it and the rest as they arrive).
pub const ECHO_PREFIX: &[u8] = br#"{"echoBody":true}"#;

/// The pattern byte at `offset`.
pub fn pattern_byte(offset: u64) -> u8 {
    b'a' + (offset % 26) as u8
}

/// `CHUNK + 26` pattern bytes: any chunk-sized window starting at a phase `< 26` is a slice of it.
fn block() -> &'static Bytes {
    static BLOCK: OnceLock<Bytes> = OnceLock::new();
    BLOCK.get_or_init(|| {
        (0..(CHUNK + 26) as u64)
            .map(pattern_byte)
            .collect::<Vec<u8>>()
            .into()
    })
}

/// `len` pattern bytes starting at pattern offset `offset` (`len <= CHUNK`), without copying.
fn pattern_slice(offset: u64, len: usize) -> Bytes {
    let phase = (offset % 26) as usize;
    block().slice(phase..phase + len)
}

/// `prefix` then `len` pattern bytes, with an exact length (sent with `Content-Length`). Records
/// when its last frame was taken, i.e. when the request body has been handed to the connection.
pub struct PatternBody {
    prefix: Option<Bytes>,
    sent: u64,
    len: u64,
    finished: Arc<OnceLock<Instant>>,
}

impl PatternBody {
    pub fn new(prefix: Bytes, len: u64) -> Self {
        PatternBody {
            prefix: Some(prefix).filter(|p| !p.is_empty()),
            sent: 0,
            len,
            finished: Arc::new(OnceLock::new()),
        }
    }

    /// Set when the last byte has been produced.
    pub fn finished(&self) -> Arc<OnceLock<Instant>> {
        self.finished.clone()
    }
}

impl Body for PatternBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        let frame = if let Some(prefix) = this.prefix.take() {
            prefix
        } else if this.sent < this.len {
            let n = (this.len - this.sent).min(CHUNK as u64) as usize;
            let chunk = pattern_slice(this.sent, n);
            this.sent += n as u64;
            chunk
        } else {
            let _ = this.finished.set(Instant::now());
            return Poll::Ready(None);
        };
        if this.prefix.is_none() && this.sent >= this.len {
            let _ = this.finished.set(Instant::now());
        }
        Poll::Ready(Some(Ok(Frame::data(frame))))
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && self.sent >= self.len
    }

    fn size_hint(&self) -> SizeHint {
        let prefix = self.prefix.as_ref().map_or(0, |p| p.len() as u64);
        SizeHint::with_exact(prefix + self.len - self.sent)
    }
}

/// Compares a response stream with what a [`PatternBody`] sent, as it arrives.
#[derive(Debug)]
pub struct EchoCheck {
    prefix: Bytes,
    seen: u64,
    /// Offset of the first differing byte, if any.
    pub first_mismatch: Option<u64>,
}

impl EchoCheck {
    pub fn new(prefix: Bytes) -> Self {
        EchoCheck {
            prefix,
            seen: 0,
            first_mismatch: None,
        }
    }

    /// Checks the next chunk of the response.
    pub fn feed(&mut self, mut chunk: &[u8]) {
        while !chunk.is_empty() {
            let at = self.seen;
            let plen = self.prefix.len() as u64;
            let (expected, n): (&[u8], usize) = if at < plen {
                let rest = &self.prefix[at as usize..];
                let n = rest.len().min(chunk.len());
                (&rest[..n], n)
            } else {
                let n = chunk.len().min(CHUNK);
                let phase = ((at - plen) % 26) as usize;
                (&block()[phase..phase + n], n)
            };
            if self.first_mismatch.is_none() && chunk[..n] != *expected {
                let i = chunk[..n]
                    .iter()
                    .zip(expected)
                    .position(|(a, b)| a != b)
                    .unwrap_or(0);
                self.first_mismatch = Some(at + i as u64);
            }
            self.seen += n as u64;
            chunk = &chunk[n..];
        }
    }

    /// Bytes checked so far.
    pub fn seen(&self) -> u64 {
        self.seen
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn body_is_prefix_then_exact_pattern() {
        let len = 3 * CHUNK as u64 + 7;
        let body = PatternBody::new(Bytes::from_static(ECHO_PREFIX), len);
        let finished = body.finished();
        assert_eq!(body.size_hint().exact(), Some(ECHO_PREFIX.len() as u64 + len));
        let bytes = body.collect().await.unwrap().to_bytes();
        assert!(finished.get().is_some());
        assert_eq!(bytes.len() as u64, ECHO_PREFIX.len() as u64 + len);
        assert_eq!(&bytes[..ECHO_PREFIX.len()], ECHO_PREFIX);
        let tail = &bytes[ECHO_PREFIX.len()..];
        assert!(tail.iter().enumerate().all(|(i, b)| *b == pattern_byte(i as u64)));

        // The echo check accepts the same bytes in any chunking, and finds a flipped byte.
        let mut check = EchoCheck::new(Bytes::from_static(ECHO_PREFIX));
        for piece in bytes.chunks(10_000) {
            check.feed(piece);
        }
        assert_eq!(check.seen(), bytes.len() as u64);
        assert_eq!(check.first_mismatch, None);
        let mut bad = bytes.to_vec();
        bad[100_000] ^= 1;
        let mut check = EchoCheck::new(Bytes::from_static(ECHO_PREFIX));
        for piece in bad.chunks(70_000) {
            check.feed(piece);
        }
        assert_eq!(check.first_mismatch, Some(100_000));
    }

    #[tokio::test]
    async fn empty_prefix_and_zero_length() {
        let body = PatternBody::new(Bytes::new(), 0);
        assert!(body.is_end_stream());
        assert!(body.collect().await.unwrap().to_bytes().is_empty());
    }
}
