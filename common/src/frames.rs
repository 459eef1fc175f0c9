//! Splits a body into Engage data frames of at most [`MAX_DATA_CHUNK`] (10 KiB) bytes, both ways.
//! Chunks are `Bytes::slice`s of the input: no copying, the frames share the caller's buffer.

use bytes::Bytes;

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
}
