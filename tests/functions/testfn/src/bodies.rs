//! Request-body classification and the streamed response bodies. The knobs live in the first JSON
//! object of the body, so only that prefix is read before acting: `writeBeforeRead` can answer
//! with the rest unread and `echoBody` can stream gigabytes back without buffering them.

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use serde_json::Value;
use std::{
    pin::Pin,
    task::{Context, Poll},
};

/// How much of a body is kept for the `request` echo of a non-JSON body, and how far we look for
/// the end of the knob object before giving up on JSON.
pub const MAX_KEPT: usize = 1 << 20;

/// What the start of the request body turned out to be.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// Nothing but whitespace.
    Empty,
    /// A JSON value: the knob object (possibly followed by more bytes) or a whole-body JSON value.
    Json(Value),
    /// Not JSON: echoed as a string, no knobs.
    Opaque,
}

/// The part of the body read so far.
#[derive(Debug)]
pub struct Prefix {
    /// Classification of the body.
    pub input: Input,
    /// The raw bytes read (all of them, so `echoBody` can replay them).
    pub bytes: BytesMut,
    /// The body ended within the prefix.
    pub eof: bool,
}

/// Decides from the bytes so far what the body is; `None` means "read more".
pub fn classify(buf: &[u8], eof: bool) -> Option<Input> {
    let mut values = serde_json::Deserializer::from_slice(buf).into_iter::<Value>();
    match values.next() {
        // A finished object is decisive even if more bytes follow: the knobs are known.
        Some(Ok(value @ Value::Object(_))) => Some(Input::Json(value)),
        // A scalar may still grow ("12" + "3"), so other values wait for the end of the body.
        Some(Ok(_)) | None | Some(Err(_)) if !eof && buf.len() > MAX_KEPT => Some(Input::Opaque),
        Some(Err(e)) if !e.is_eof() => Some(Input::Opaque),
        _ if !eof => None,
        None => Some(Input::Empty),
        Some(_) => Some(
            serde_json::from_slice(buf)
                .map(Input::Json)
                .unwrap_or(Input::Opaque),
        ),
    }
}

/// Reads the body until it can be classified.
pub async fn read_prefix(body: &mut Incoming) -> Result<Prefix, hyper::Error> {
    let mut bytes = BytesMut::new();
    let mut eof = false;
    loop {
        if let Some(input) = classify(&bytes, eof) {
            return Ok(Prefix { input, bytes, eof });
        }
        match body.frame().await {
            None => eof = true,
            Some(frame) => {
                if let Ok(data) = frame?.into_data() {
                    bytes.extend_from_slice(&data);
                }
            }
        }
    }
}

/// Reads the rest of the body, keeping up to [`MAX_KEPT`] bytes in `prefix`; returns the total
/// number of body bytes seen.
pub async fn drain(prefix: &mut Prefix, body: &mut Incoming) -> Result<u64, hyper::Error> {
    let mut total = prefix.bytes.len() as u64;
    while !prefix.eof {
        match body.frame().await {
            None => prefix.eof = true,
            Some(frame) => {
                if let Ok(data) = frame?.into_data() {
                    total += data.len() as u64;
                    let room = MAX_KEPT.saturating_sub(prefix.bytes.len());
                    prefix.bytes.extend_from_slice(&data[..room.min(data.len())]);
                }
            }
        }
    }
    Ok(total)
}

/// The request body replayed: the bytes already read, then the rest as it arrives.
pub struct EchoBody {
    prefix: Option<Bytes>,
    rest: Option<Incoming>,
}

impl EchoBody {
    /// `rest` is `None` when the prefix already holds the whole body.
    pub fn new(prefix: Bytes, rest: Option<Incoming>) -> Self {
        EchoBody {
            prefix: Some(prefix).filter(|p| !p.is_empty()),
            rest,
        }
    }
}

impl Body for EchoBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        if let Some(prefix) = this.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(prefix))));
        }
        let Some(rest) = this.rest.as_mut() else {
            return Poll::Ready(None);
        };
        loop {
            return match Pin::new(&mut *rest).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) if data.is_empty() => continue,
                    Ok(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
                    // Request trailers end the echo; they are not replayed.
                    Err(_) => {
                        this.rest = None;
                        Poll::Ready(None)
                    }
                },
                other => other,
            };
        }
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && self.rest.as_ref().is_none_or(Body::is_end_stream)
    }
}

/// `len` bytes of the repeating `a..z` pattern (byte `i` is `b'a' + i % 26`), in 64 KiB chunks.
pub struct PatternBody {
    offset: u64,
    len: u64,
}

impl PatternBody {
    const CHUNK: u64 = 64 * 1024;

    /// A body of exactly `len` bytes.
    pub fn new(len: u64) -> Self {
        PatternBody { offset: 0, len }
    }
}

/// `CHUNK + 26` bytes of the pattern, built once.
fn pattern_block() -> Bytes {
    static BLOCK: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
    BLOCK
        .get_or_init(|| {
            (0..PatternBody::CHUNK + 26)
                .map(pattern_byte)
                .collect::<Vec<u8>>()
                .into()
        })
        .clone()
}

/// The pattern byte at `offset`.
pub fn pattern_byte(offset: u64) -> u8 {
    b'a' + (offset % 26) as u8
}

impl Body for PatternBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if this.offset >= this.len {
            return Poll::Ready(None);
        }
        let end = (this.offset + Self::CHUNK).min(this.len);
        // Slices of one pre-built block: the pattern repeats every 26 bytes, so any window of it
        // starts at `offset % 26` in the block. Zero-copy, so the function is never the bottleneck.
        let start = (this.offset % 26) as usize;
        let chunk = pattern_block().slice(start..start + (end - this.offset) as usize);
        this.offset = end;
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.offset >= self.len
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len - self.offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn classifies_prefixes() {
        assert_eq!(classify(b"", false), None);
        assert_eq!(classify(b"  ", true), Some(Input::Empty));
        assert_eq!(classify(br#"{"echoContent":"#, false), None);
        assert_eq!(
            classify(br#"{"a":1} and then lots of bytes"#, false),
            Some(Input::Json(json!({"a": 1})))
        );
        assert_eq!(classify(b"12", false), None);
        assert_eq!(classify(b"12", true), Some(Input::Json(json!(12))));
        assert_eq!(classify(b"hello world", false), Some(Input::Opaque));
        assert_eq!(classify(br#"{"a":"#, true), Some(Input::Opaque));
        assert_eq!(classify(br#"[1] x"#, true), Some(Input::Opaque));
        assert_eq!(classify(&vec![b'['; MAX_KEPT + 1], false), Some(Input::Opaque));
    }

    #[tokio::test]
    async fn pattern_body_has_exact_length_and_pattern() {
        let body = PatternBody::new(200_000);
        assert_eq!(body.size_hint().exact(), Some(200_000));
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(bytes.len(), 200_000);
        assert!(
            bytes
                .iter()
                .enumerate()
                .all(|(i, b)| *b == pattern_byte(i as u64))
        );
        assert_eq!(&bytes[..3], b"abc");
    }
}
