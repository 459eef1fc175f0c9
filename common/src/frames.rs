//! Splits a body into Engage data frames of at most [`MAX_DATA_CHUNK`] (10 KiB) bytes (or a size
//! agreed between ferrofn peers), both ways. Chunks are `Bytes::slice`s of the input: no copying,
//! the frames share the caller's buffer. [`Coalesce`] joins small pieces that are already there
//! into frames of up to the agreed size.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};

pub use ferrofn_proto::MAX_DATA_CHUNK;

/// The pieces of `b`, in order, each at most [`MAX_DATA_CHUNK`] bytes and only the last one shorter.
/// An empty input yields nothing (a sender that must mark the end sends its own empty `eof` frame).
pub fn chunks(b: Bytes) -> impl Iterator<Item = Bytes> {
    chunks_of(b, MAX_DATA_CHUNK)
}

/// Like [`chunks`] with another limit (`size` must be > 0).
pub fn chunks_of(b: Bytes, size: usize) -> impl Iterator<Item = Bytes> {
    assert!(size > 0, "chunk size must be positive");
    let len = b.len();
    (0..len)
        .step_by(size)
        .map(move |start| b.slice(start..(start + size).min(len)))
}

/// A body stream whose pieces are joined, as long as the next ones are already there, into pieces of
/// up to `frame` bytes: fewer, larger frames for a body that arrives in small reads, and never a
/// wait for data that has not come yet. "Already there" includes a piece that the task feeding
/// `inner` (e.g. hyper's connection task) holds in its buffer: when `inner` is not ready, the
/// stream yields once (wakes itself and returns `Pending`, a turn of the scheduler, no timer)
/// before it passes on what it has. A piece of `frame` bytes or more passes through untouched (no
/// copy); an error is passed on after the data before it.
#[derive(Debug)]
pub struct Coalesce<S, E> {
    inner: S,
    frame: usize,
    /// An item read ahead (it did not fit in the piece being built).
    ahead: Option<Result<Bytes, E>>,
    /// The piece being built while the stream yields for the next one.
    building: Option<Piece>,
    /// Whether the yield for the piece being built was spent.
    yielded: bool,
    done: bool,
}

/// A piece being built: one input piece as it came (no copy), or several joined.
#[derive(Debug)]
enum Piece {
    One(Bytes),
    Many(BytesMut),
}

impl Piece {
    fn len(&self) -> usize {
        match self {
            Piece::One(b) => b.len(),
            Piece::Many(b) => b.len(),
        }
    }

    fn append(&mut self, more: &[u8], frame: usize) {
        match self {
            Piece::One(first) => {
                let mut joined = BytesMut::with_capacity(frame.max(first.len() + more.len()));
                joined.extend_from_slice(first);
                joined.extend_from_slice(more);
                *self = Piece::Many(joined);
            }
            Piece::Many(joined) => joined.extend_from_slice(more),
        }
    }

    fn into_bytes(self) -> Bytes {
        match self {
            Piece::One(b) => b,
            Piece::Many(b) => b.freeze(),
        }
    }
}

impl<S, E> Coalesce<S, E> {
    /// Joins the pieces of `inner` up to `frame` bytes.
    pub fn new(inner: S, frame: usize) -> Self {
        Self {
            inner,
            frame,
            ahead: None,
            building: None,
            yielded: false,
            done: false,
        }
    }
}

impl<S, E> Stream for Coalesce<S, E>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: Unpin,
{
    type Item = Result<Bytes, E>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let mut piece = match this.building.take() {
            Some(p) => p,
            None => {
                let first = match this.ahead.take() {
                    Some(item) => item,
                    None if this.done => return Poll::Ready(None),
                    None => match this.inner.poll_next_unpin(cx) {
                        Poll::Ready(Some(item)) => item,
                        Poll::Ready(None) => {
                            this.done = true;
                            return Poll::Ready(None);
                        }
                        Poll::Pending => return Poll::Pending,
                    },
                };
                match first {
                    Ok(b) if b.len() >= this.frame => return Poll::Ready(Some(Ok(b))),
                    Ok(b) => {
                        this.yielded = false;
                        Piece::One(b)
                    }
                    Err(e) => return Poll::Ready(Some(Err(e))),
                }
            }
        };
        while !this.done && piece.len() < this.frame {
            match this.inner.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(b))) if piece.len() + b.len() <= this.frame => {
                    piece.append(&b, this.frame);
                }
                Poll::Ready(Some(item)) => {
                    this.ahead = Some(item);
                    break;
                }
                Poll::Ready(None) => this.done = true,
                Poll::Pending if !this.yielded => {
                    // One turn of the scheduler for the feeding task to hand over what it holds.
                    this.yielded = true;
                    this.building = Some(piece);
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                Poll::Pending => break,
            }
        }
        Poll::Ready(Some(Ok(piece.into_bytes())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(len: usize) -> (Bytes, Vec<Bytes>) {
        let data: Bytes = (0..len).map(|i| (i % 251) as u8).collect::<Vec<u8>>().into();
        (data.clone(), chunks(data).collect())
    }

    fn check(len: usize, want_sizes: &[usize]) {
        let (data, parts) = split(len);
        let sizes: Vec<usize> = parts.iter().map(Bytes::len).collect();
        assert_eq!(sizes, want_sizes, "len {len}");
        let joined: Vec<u8> = parts.iter().flat_map(|p| p.iter().copied()).collect();
        assert_eq!(joined, data.as_ref(), "len {len}: bytes and order are kept");
        // Zero copy: each chunk points into the original buffer.
        let base = data.as_ptr() as usize;
        let mut offset = 0;
        for p in &parts {
            assert_eq!(p.as_ptr() as usize, base + offset);
            offset += p.len();
        }
    }

    #[test]
    fn empty_gives_no_chunks() {
        check(0, &[]);
    }

    #[test]
    fn one_byte() {
        check(1, &[1]);
    }

    #[test]
    fn exactly_one_chunk() {
        check(10240, &[10240]);
    }

    #[test]
    fn one_over() {
        check(10241, &[10240, 1]);
    }

    #[test]
    fn five_mib() {
        let len = 5 * 1024 * 1024;
        let (_, parts) = split(len);
        // 5 MiB is exactly 512 chunks of 10 KiB; one byte more adds a 1-byte chunk.
        assert_eq!(parts.len(), 512);
        assert!(parts.iter().all(|p| p.len() == MAX_DATA_CHUNK));
        let (_, more) = split(len + 1);
        assert_eq!((more.len(), more[512].len()), (513, 1));
        check(len, &parts.iter().map(Bytes::len).collect::<Vec<_>>());
    }

    #[test]
    fn custom_size() {
        let sizes: Vec<usize> = chunks_of(Bytes::from_static(b"abcdefg"), 3)
            .map(|b| b.len())
            .collect();
        assert_eq!(sizes, [3, 3, 1]);
    }

    fn pieces(sizes: &[usize]) -> Vec<Result<Bytes, &'static str>> {
        sizes.iter().map(|&n| Ok(Bytes::from(vec![b'x'; n]))).collect()
    }

    fn lens(out: Vec<Result<Bytes, &'static str>>) -> Vec<Result<usize, &'static str>> {
        out.into_iter().map(|r| r.map(|b| b.len())).collect()
    }

    #[tokio::test]
    async fn coalesce_joins_ready_pieces_up_to_the_frame() {
        let s = futures::stream::iter(pieces(&[4, 4, 4, 10, 3, 20, 1]));
        let out: Vec<_> = Coalesce::new(s, 10).collect().await;
        // 4+4 (the next 4 would pass 10), 4 alone (10 would pass), 10 whole, 3 alone (20 would
        // pass), 20 untouched, 1.
        assert_eq!(lens(out), [Ok(8), Ok(4), Ok(10), Ok(3), Ok(20), Ok(1)]);
    }

    #[tokio::test]
    async fn coalesce_passes_errors_after_the_data_before_them() {
        let mut items = pieces(&[2, 2]);
        items.push(Err("broken"));
        items.extend(pieces(&[5]));
        let out: Vec<_> = Coalesce::new(futures::stream::iter(items), 100).collect().await;
        assert_eq!(lens(out), [Ok(4), Err("broken"), Ok(5)]);
    }

    #[tokio::test]
    async fn coalesce_never_waits_for_data_not_there() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Result<Bytes, &'static str>>();
        let mut s = Coalesce::new(tokio_stream::wrappers::UnboundedReceiverStream::new(rx), 100);
        tx.send(Ok(Bytes::from_static(b"abc"))).unwrap();
        // Only what is there: the stream does not hold the piece back for more.
        assert_eq!(s.next().await.unwrap().unwrap(), Bytes::from_static(b"abc"));
        tx.send(Ok(Bytes::from_static(b"de"))).unwrap();
        tx.send(Ok(Bytes::from_static(b"f"))).unwrap();
        drop(tx);
        assert_eq!(s.next().await.unwrap().unwrap(), Bytes::from_static(b"def"));
        assert!(s.next().await.is_none());
    }

    #[tokio::test]
    async fn coalesce_gives_the_feeding_task_one_turn() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Result<Bytes, &'static str>>();
        let mut s = Coalesce::new(tokio_stream::wrappers::UnboundedReceiverStream::new(rx), 100);
        tx.send(Ok(Bytes::from_static(b"ab"))).unwrap();
        // Runs only when the stream's task yields (current-thread runtime).
        let feeder = tokio::spawn(async move {
            tx.send(Ok(Bytes::from_static(b"cd"))).unwrap();
        });
        assert_eq!(s.next().await.unwrap().unwrap(), Bytes::from_static(b"abcd"));
        feeder.await.unwrap();
        assert!(s.next().await.is_none());
    }
}
