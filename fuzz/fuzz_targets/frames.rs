//! Frame chunking and reassembly: a body split into Engage data frames (common/src/frames.rs), each
//! frame encoded as a gRPC message, the wire cut at arbitrary points (as HTTP/2 DATA frames may cut
//! it) and decoded again by tonic's `Streaming`, as the runner reads an LB's stream.
//! Invariants: every chunk is non-empty and at most the limit, only the last is shorter; the
//! decoded messages are the frames sent, in order; the reassembled bytes equal the body.
#![no_main]

use bytes::Bytes;
use ferrofn_common::frames::{MAX_DATA_CHUNK, chunks, chunks_of};
use ferrofn_fuzz::{Input, grpc_frame, runtime, split_body};
use ferrofn_proto::{ClientMsg, DataFrame, client_msg};
use libfuzzer_sys::fuzz_target;
use tonic::codec::{Codec, Streaming};
use tonic_prost::ProstCodec;

fn check_chunks(body: &Bytes, size: usize, got: &[Bytes]) {
    assert_eq!(
        got.len(),
        body.len().div_ceil(size),
        "chunk count for {} bytes / {size}",
        body.len()
    );
    for (i, c) in got.iter().enumerate() {
        assert!(
            !c.is_empty() && c.len() <= size,
            "chunk {i} has {} bytes (limit {size})",
            c.len()
        );
        if i + 1 < got.len() {
            assert_eq!(c.len(), size, "chunk {i} is short but not last");
        }
    }
    assert_eq!(
        got.concat(),
        body.as_ref(),
        "chunks do not reassemble to the body"
    );
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    // A small limit (1..=256) most of the time, so that short inputs still make many frames.
    let size = match input.byte() {
        0 => MAX_DATA_CHUNK,
        n => n as usize,
    };
    let ncuts = (input.byte() % 16) as usize;
    let cuts: Vec<u16> = (0..ncuts).map(|_| input.u16()).collect();
    let body = Bytes::copy_from_slice(input.rest());

    let frames: Vec<Bytes> = chunks_of(body.clone(), size).collect();
    check_chunks(&body, size, &frames);
    check_chunks(&body, MAX_DATA_CHUNK, &chunks(body.clone()).collect::<Vec<_>>());

    let sent: Vec<ClientMsg> = frames
        .iter()
        .enumerate()
        .map(|(i, f)| ClientMsg {
            body: Some(client_msg::Body::Data(DataFrame {
                data: f.clone(),
                eof: i + 1 == frames.len(),
            })),
        })
        .collect();
    let wire: Vec<u8> = sent.iter().flat_map(grpc_frame).collect();
    let decoder = Codec::decoder(&mut ProstCodec::<ClientMsg, ClientMsg>::default());
    let mut stream = Streaming::new_request(decoder, split_body(wire, &cuts), None, None);
    let received = runtime().block_on(async {
        let mut out = Vec::new();
        while let Some(m) = stream.message().await.expect("well-formed wire decodes") {
            out.push(m);
        }
        out
    });
    assert_eq!(received, sent, "decoded messages differ from the frames sent");
    let mut reassembled = Vec::with_capacity(body.len());
    for m in &received {
        if let Some(client_msg::Body::Data(d)) = &m.body {
            reassembled.extend_from_slice(&d.data);
        }
    }
    assert_eq!(reassembled, body.as_ref(), "reassembled body differs");
});
