//! decisions.md "Better" (2): with runners that acknowledge acceptance, the LB's memory does not grow
//! with body size. A 64 MiB upload and a 64 MiB download go through the `ferrofn-lb` binary and its
//! peak RSS (VmHWM) is compared with a warm-up baseline; the same transfer against an Fn-style runner
//! (no ack: Fn's buffering) shows the growth the streaming mode avoids.

use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use ferrofn_proto::health::health_check_response::ServingStatus;
use ferrofn_tests::lb_proc::fake_runner::{Behaviour, FakeRunner};
use ferrofn_tests::lb_proc::{LbBinary, register};

const SIZE: usize = 64 << 20;
const MIB: u64 = 1 << 20;

/// Streams `size` bytes up and reads the response down, keeping nothing; returns (status line,
/// response body bytes).
async fn transfer(addr: std::net::SocketAddr, path: &str, size: usize) -> (String, usize) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n"
    );
    // The writer half is handed back, not dropped: dropping it would half-close the socket, which
    // the LB (like any hyper server) takes as the client going away.
    let writer = tokio::spawn(async move {
        wr.write_all(head.as_bytes()).await.unwrap();
        let chunk = vec![b'x'; 64 * 1024];
        let mut left = size;
        while left > 0 {
            let n = left.min(chunk.len());
            if wr.write_all(&chunk[..n]).await.is_err() {
                break;
            }
            left -= n;
        }
        wr
    });
    let mut buf = vec![0u8; 64 * 1024];
    let mut header = Vec::new();
    let mut body = 0usize;
    let mut in_body = false;
    loop {
        let n = rd.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        if in_body {
            body += n;
            continue;
        }
        header.extend_from_slice(&buf[..n]);
        if let Some(pos) = header.windows(4).position(|w| w == b"\r\n\r\n") {
            body += header.len() - pos - 4;
            header.truncate(pos);
            in_body = true;
        }
    }
    let _wr = writer.await.unwrap();
    let text = String::from_utf8_lossy(&header).into_owned();
    let status = text.lines().next().unwrap_or_default().to_owned();
    // A chunked response carries chunk-size lines too: a few bytes per 10 KiB frame at most.
    (format!("{status}\n{text}"), body)
}

async fn peak_growth(accept_ack: bool) -> u64 {
    let r = FakeRunner::start(Behaviour {
        accept_ack,
        health: Some(ServingStatus::Serving),
        discard: true,
        response_size: Some(SIZE),
        ..Behaviour::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite3://{}", dir.path().join("fn.db").display());
    let addr = r.address();
    let lb = LbBinary::start(
        &["--plaintext"],
        &[("FN_RUNNER_ADDRESSES", addr.as_str()), ("FN_DB_URL", db.as_str())],
    )
    .await
    .unwrap();
    let (_app, f) = register(&lb.url(""), "mem", json!({"name": "f", "image": "i"}))
        .await
        .unwrap();
    let path = format!("/invoke/{}", f["id"].as_str().unwrap());
    // Warm up (allocator pools, first connections), then take the baseline.
    let (status, _) = transfer(lb.addr, &path, 1 << 20).await;
    assert!(
        status.starts_with("HTTP/1.1 200"),
        "{status}\nLB log:\n{}",
        lb.stderr.lock().unwrap()
    );
    let baseline = lb.peak_rss().unwrap();
    let (status, body) = tokio::time::timeout(Duration::from_secs(120), transfer(lb.addr, &path, SIZE))
        .await
        .unwrap();
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert!(body >= SIZE, "got {body} of {SIZE} bytes");
    assert_eq!(
        r.shared.bytes_in.load(std::sync::atomic::Ordering::SeqCst),
        (SIZE + (1 << 20)) as u64
    );
    let peak = lb.peak_rss().unwrap();
    peak.saturating_sub(baseline)
}

#[tokio::test]
async fn streaming_mode_memory_does_not_grow_with_body_size() {
    let streaming = peak_growth(true).await;
    let buffering = peak_growth(false).await;
    eprintln!(
        "LB peak RSS growth for {} MiB up + {} MiB down: streaming {} MiB, Fn-style buffering {} MiB",
        SIZE as u64 / MIB,
        SIZE as u64 / MIB,
        streaming / MIB,
        buffering / MIB
    );
    assert!(
        streaming < 16 * MIB,
        "streaming mode grew by {} MiB",
        streaming / MIB
    );
    assert!(
        buffering > SIZE as u64 / 2,
        "buffering mode should hold the body: {} MiB",
        buffering / MIB
    );
}
