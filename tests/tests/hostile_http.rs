//! What a hostile HTTP client gets from the LB, over raw sockets: ambiguous framings are refused
//! (two Content-Lengths: 400) or read one way and the connection closed (Content-Length with
//! chunked), a header over the limit gets 431, a client that never finishes its headers is
//! disconnected after the header timeout and one that stalls its body gets 408 and is disconnected
//! after the body idle timeout, dot segments and invalid UTF-8 in paths get 404/400 in Fn's shape
//! (never another route), connections over the limit are closed at accept; and a well-behaved
//! client on another connection is served all along. (Chunked bodies over `FN_MAX_REQUEST_SIZE`:
//! `lb_request_size.rs`.)

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use serde_json::json;

use ferrofn_tests::lb_fixture::{invoke_path, setup_addrs};
use ferrofn_tests::lb_proc::fake_runner::{Behaviour, FakeRunner};
use ferrofn_tests::lb_proc::{LbProc, json as call, wait_accept_ack};

/// Sends `raw` on a new connection and reads until the server closes it or `limit` passes; returns
/// the status code of the first response (0 if none) and the time the server took to close.
async fn exchange(
    addr: std::net::SocketAddr,
    raw: &[u8],
    limit: Duration,
) -> (u16, String, Option<Duration>) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    // A server that closes early may reset the rest of a large write: that is an answer too.
    let _ = s.write_all(raw).await;
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let closed = loop {
        match tokio::time::timeout_at((started + limit).into(), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break Some(started.elapsed()),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => break None,
        }
    };
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text, closed)
}

async fn well_behaved(lb: &LbProc) {
    let r = call("GET", &lb.url("/version"), None).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test]
async fn ambiguous_framings_are_refused_or_read_one_way() {
    let lb = LbProc::start(|_| {}).await.unwrap();
    // Two different Content-Lengths: refused.
    let (status, text, _) = exchange(
        lb.addr(),
        b"POST /invoke/01ABCDEFGHJKMNPQRSTVWXYZ00 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\
          Content-Length: 7\r\nConnection: close\r\n\r\nhello",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(status, 400, "{text}");
    // Content-Length with Transfer-Encoding: chunked: the chunked framing wins (RFC 9112 6.3), the
    // answer says `connection: close` and the connection is closed, so nothing sent after it on the
    // connection (here a pipelined request, in an attack the smuggled one) is ever read.
    let raw = b"POST /invoke/01ABCDEFGHJKMNPQRSTVWXYZ00 HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\n\
                Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n\
                GET /version HTTP/1.1\r\nHost: x\r\n\r\n";
    let (status, text, closed) = exchange(lb.addr(), raw, Duration::from_secs(5)).await;
    assert_eq!(status, 404, "the chunked request (unknown fn): {text}");
    assert!(text.to_ascii_lowercase().contains("connection: close"), "{text}");
    assert_eq!(
        text.matches("HTTP/1.1 ").count(),
        1,
        "the bytes after it were not read as a request: {text}"
    );
    assert!(
        closed.is_some(),
        "the connection is closed after the ambiguous request"
    );
    well_behaved(&lb).await;
}

#[tokio::test]
async fn a_header_over_the_limit_gets_431() {
    let lb = LbProc::start(|s| s.max_request_header_size = 16 * 1024)
        .await
        .unwrap();
    let big = "a".repeat(200 * 1024);
    let raw = format!("GET /version HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\nConnection: close\r\n\r\n");
    let (status, text, closed) = exchange(lb.addr(), raw.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(status, 431, "{}", &text[..text.len().min(300)]);
    assert!(closed.is_some(), "the connection is closed after the 431");
    // Just under the limit is served.
    let ok = "a".repeat(8 * 1024);
    let raw = format!("GET /version HTTP/1.1\r\nHost: x\r\nX-Ok: {ok}\r\nConnection: close\r\n\r\n");
    let (status, text, _) = exchange(lb.addr(), raw.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(status, 200, "{text}");
}

#[tokio::test]
async fn slowloris_headers_are_cut_off_and_others_are_served() {
    let lb = LbProc::start(|s| s.request_header_read_timeout_secs = 1)
        .await
        .unwrap();
    // A request line and one header, then nothing: closed after the 1 s header timeout.
    let slow = tokio::spawn({
        let addr = lb.addr();
        async move {
            exchange(
                addr,
                b"GET /version HTTP/1.1\r\nHost: x\r\n",
                Duration::from_secs(10),
            )
            .await
        }
    });
    // Meanwhile a normal client is served.
    well_behaved(&lb).await;
    let (status, text, closed) = slow.await.unwrap();
    let closed =
        closed.unwrap_or_else(|| panic!("a half-sent request head kept its connection for 10 s: {text}"));
    assert!(
        closed >= Duration::from_millis(900) && closed < Duration::from_secs(5),
        "{closed:?}"
    );
    assert!(status == 0 || status == 408, "{status} {text}");
    // An idle kept-alive connection is not kept forever either.
    let mut s = TcpStream::connect(lb.addr()).await.unwrap();
    s.write_all(b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let started = Instant::now();
    let mut rest = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest)).await;
    assert!(end.is_ok(), "an idle keep-alive connection was kept for 10 s");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

/// A fn on a fake runner (accept-ack: the body streams to it; without: the LB reads it whole
/// first, as towards an Fn runner); returns the LB (body idle timeout 1 s) and the invoke path.
async fn lb_with_fn(accept_ack: bool) -> (LbProc, FakeRunner, String) {
    let runner = FakeRunner::start(Behaviour {
        accept_ack,
        ..Behaviour::default()
    })
    .await
    .unwrap();
    let (lb, f) = setup_addrs(vec![runner.address()], 30, |s| {
        s.request_body_idle_timeout_ms = 1_000
    })
    .await;
    let path = invoke_path(&f);
    if accept_ack {
        wait_accept_ack(&lb.handle.pool.runners()).await.unwrap();
    }
    (lb, runner, path)
}

/// `lb_request_body_timeouts_total` (the recorder is shared by the LBs of this test binary).
async fn body_timeouts(lb: &LbProc) -> f64 {
    let m = call("GET", &lb.url("/metrics"), None).await.unwrap().text();
    ferrofn_tests::load::metric_sum(&m, "lb_request_body_timeouts_total", &[])
}

#[tokio::test]
async fn slowloris_bodies_get_408_and_their_connection_closed() {
    for accept_ack in [false, true] {
        let (lb, runner, path) = lb_with_fn(accept_ack).await;
        let before = body_timeouts(&lb).await;
        // 10 of the 100 bytes announced, then nothing.
        let raw = format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789");
        let slow = tokio::spawn({
            let addr = lb.addr();
            async move { exchange(addr, raw.as_bytes(), Duration::from_secs(10)).await }
        });
        // Meanwhile a well-behaved client gets its call served.
        let r = call("POST", &lb.url(&path), Some(json!({"ok": true})))
            .await
            .unwrap();
        assert_eq!(
            (r.status, r.json()),
            (200, json!({"ok": true})),
            "ack={accept_ack}"
        );
        let (status, text, closed) = slow.await.unwrap();
        assert_eq!(status, 408, "ack={accept_ack}: {text}");
        assert!(text.contains("Timed out waiting for the request body"), "{text}");
        let closed = closed.unwrap_or_else(|| panic!("ack={accept_ack}: the stalled connection stayed open"));
        assert!(closed < Duration::from_secs(5), "ack={accept_ack}: {closed:?}");
        let complete = runner
            .seen()
            .iter()
            .filter(|s| s.frames.iter().any(|f| f.eof))
            .count();
        assert_eq!(
            complete, 1,
            "ack={accept_ack}: only the well-behaved body reached the runner whole"
        );
        assert!(
            body_timeouts(&lb).await >= before + 1.0,
            "ack={accept_ack}: counted"
        );
        lb.stop().await;
    }
}

#[tokio::test]
async fn dot_segments_and_invalid_utf8_in_paths_get_clean_answers() {
    let (lb, _runner, invoke) = lb_with_fn(true).await;
    let fns = call("GET", &lb.url("/v2/fns"), None).await.unwrap().json();
    let (app_id, fn_id) = (fns["items"][0]["app_id"].clone(), fns["items"][0]["id"].clone());
    let t = call(
        "POST",
        &lb.url("/v2/triggers"),
        Some(json!({"app_id": app_id, "fn_id": fn_id, "name": "t", "type": "http", "source": "/hello"})),
    )
    .await
    .unwrap();
    assert_eq!(t.status, 200, "{}", t.text());
    // The control: the trigger itself answers.
    let (status, text, _) = exchange(
        lb.addr(),
        b"GET /t/fapp/hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    // Dot segments are not resolved into another route (no way around /v2's token); invalid
    // UTF-8, percent-encoded or raw, is a 400 in Fn's shape or a refused request line, never a
    // crash; a NUL is just an unknown source.
    let cases: [(&[u8], &[u16]); 8] = [
        (b"/t/fapp/../v2/apps", &[404]),
        (b"/t/fapp/%2e%2e/%2e%2e/v2/apps", &[404]),
        (b"/t/fapp/hello/../../v2/apps", &[404]),
        (b"/t/fapp/%ff%fe", &[400]),
        (b"/t/%ff/hello", &[400]),
        (b"/t/fapp/hello%00", &[404]),
        (b"/t/fapp/\xff\xfe", &[400]),
        (b"/invoke/%c3%28", &[400]),
    ];
    for (path, want) in cases {
        let mut raw = b"GET ".to_vec();
        raw.extend_from_slice(path);
        raw.extend_from_slice(b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let (status, text, closed) = exchange(lb.addr(), &raw, Duration::from_secs(5)).await;
        let shown = String::from_utf8_lossy(path);
        assert!(want.contains(&status), "{shown}: {status} {text}");
        assert!(closed.is_some(), "{shown}: connection not closed");
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        if !body.is_empty() {
            let v: serde_json::Value =
                serde_json::from_str(body).unwrap_or_else(|e| panic!("{shown}: {e}: {body}"));
            assert!(v["message"].is_string(), "{shown}: Fn's error shape: {body}");
        }
    }
    let r = call("POST", &lb.url(&invoke), Some(json!({"after": 1})))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "the LB serves on: {}", r.text());
    lb.stop().await;
}

#[tokio::test]
async fn connections_over_the_limit_are_closed_and_the_lb_keeps_serving() {
    let lb = LbProc::start(|s| s.max_connections = 50).await.unwrap();
    let mut idle = Vec::new();
    for _ in 0..50 {
        idle.push(TcpStream::connect(lb.addr()).await.unwrap());
    }
    // The 51st is accepted and closed at once, with no answer.
    let (status, _, closed) = exchange(
        lb.addr(),
        b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(status, 0);
    assert!(closed.is_some(), "a connection over the limit is closed");
    // Freeing connections makes room again.
    idle.truncate(10);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, _, _) = exchange(
            lb.addr(),
            b"GET /version HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            Duration::from_secs(2),
        )
        .await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "no room after 40 connections closed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let m = call("GET", &lb.url("/metrics"), None).await.unwrap().text();
    assert!(m.contains("lb_connections_refused_total"), "{m}");
}
