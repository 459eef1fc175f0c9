//! `FN_MAX_REQUEST_SIZE` on chunked bodies, whose size is unknown up front: 413 once the limit is
//! passed, in both Engage modes; a body under the limit goes through.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use ferrofn_proto::health::health_check_response::ServingStatus;
use ferrofn_tests::lb_fixture::{invoke_path, setup};
use ferrofn_tests::lb_proc::fake_runner::{Behaviour, FakeRunner};

/// Sends a chunked request over a raw socket and returns the status line and the whole response.
async fn raw_chunked(addr: std::net::SocketAddr, path: &str, chunks: usize, chunk: usize) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    for _ in 0..chunks {
        let piece = format!("{chunk:x}\r\n{}\r\n", "y".repeat(chunk));
        if s.write_all(piece.as_bytes()).await.is_err() {
            break;
        }
    }
    let _ = s.write_all(b"0\r\n\r\n").await;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn chunked_body_over_the_limit_is_413() {
    for accept_ack in [false, true] {
        let r = FakeRunner::start(Behaviour {
            accept_ack,
            health: Some(ServingStatus::Serving),
            ..Behaviour::default()
        })
        .await
        .unwrap();
        let (lb, _app, f) = setup(&[&r], |s| s.max_request_size = 50_000).await;
        let out = raw_chunked(lb.addr(), &invoke_path(&f), 10, 10_000).await;
        assert!(out.starts_with("HTTP/1.1 413"), "ack={accept_ack}: {out}");
        assert!(out.contains("too large for this server"), "{out}");
        let ok = raw_chunked(lb.addr(), &invoke_path(&f), 4, 10_000).await;
        assert!(ok.starts_with("HTTP/1.1 200"), "ack={accept_ack}: {ok}");
        lb.stop().await;
    }
}
