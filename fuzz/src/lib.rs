//! Helpers shared by the fuzz targets: a small cursor over the fuzz input, gRPC message framing and
//! a request body split at arbitrary points, and one tokio runtime per fuzzing process.

use std::convert::Infallible;
use std::sync::OnceLock;

use bytes::Bytes;
use http_body_util::StreamBody;
use hyper::body::Frame;

/// Reads the fuzz input front to back; every read past the end yields zeros / empty slices, so a
/// target never has to reject a short input.
#[derive(Debug)]
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    /// A cursor at the start of `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    /// True once everything was read.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The next byte (0 at the end).
    pub fn byte(&mut self) -> u8 {
        let (b, rest) = self.data.split_first().map_or((0, &[][..]), |(b, r)| (*b, r));
        self.data = rest;
        b
    }

    /// The next big-endian u16 (0 at the end).
    pub fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.byte(), self.byte()])
    }

    /// Up to `n` bytes.
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }

    /// A length-prefixed (one byte) slice.
    pub fn short(&mut self) -> &'a [u8] {
        let n = self.byte() as usize;
        self.take(n)
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        self.take(usize::MAX)
    }
}

/// One gRPC message on the wire: the uncompressed flag, the big-endian length, the protobuf bytes.
pub fn grpc_frame(msg: &impl prost::Message) -> Vec<u8> {
    let body = msg.encode_to_vec();
    let mut out = Vec::with_capacity(5 + body.len());
    out.push(0);
    out.extend_from_slice(&u32::try_from(body.len()).expect("small message").to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// A request body that delivers `wire` in pieces cut at `cuts` (offsets, any order, any value), as
/// HTTP/2 DATA frames may split gRPC messages anywhere.
pub fn split_body(
    wire: Vec<u8>,
    cuts: &[u16],
) -> StreamBody<futures::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>> {
    let wire = Bytes::from(wire);
    let mut points: Vec<usize> = cuts
        .iter()
        .map(|c| *c as usize)
        .filter(|c| *c > 0 && *c < wire.len())
        .collect();
    points.sort_unstable();
    points.dedup();
    let mut pieces = Vec::with_capacity(points.len() + 1);
    let mut start = 0;
    for p in points.into_iter().chain(std::iter::once(wire.len())) {
        pieces.push(Ok(Frame::data(wire.slice(start..p))));
        start = p;
    }
    StreamBody::new(futures::stream::iter(pieces))
}

/// The process's current-thread runtime (time enabled, IO enabled): built once, reused by every
/// input, so an input costs its own work and not a runtime's start-up.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
    })
}
