//! The FDK client's reading of a function's answer (runner/src/fdk.rs `FdkConn::call` and
//! `FdkResponse::next_chunk`): arbitrary bytes come back on the container's unix socket as the
//! response to `POST /call`, under header and body caps taken from the input. This drives hyper's
//! response-head parser as the runner configures it, then the runner's status mapping, header
//! filtering and body cap.
//! Invariants: the outcome agrees with the status code httparse reads from the same bytes (200 ->
//! a response, 502 / 504 / other -> their errors); a response carries no hop-by-hop header, only
//! canonical names and at most `max_header` bytes of headers; the body read never exceeds
//! `max_body`, and a declared `Content-Length` body that ends cleanly has exactly that length.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use ferrofn_fuzz::{Input, runtime};
use ferrofn_runner::fdk::{FdkBody, FdkConn, FdkError, FdkLimits, FdkRequest, canonical_header_name};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "proxy-connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

struct Socket {
    _dir: tempfile::TempDir,
    path: PathBuf,
    listener: UnixListener,
}

fn socket() -> &'static Socket {
    static S: OnceLock<Socket> = OnceLock::new();
    S.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("lsnr.sock");
        let _guard = runtime().enter();
        let listener = UnixListener::bind(&path).expect("bind");
        Socket {
            _dir: dir,
            path,
            listener,
        }
    })
}

/// The status of the first final (non-1xx) response head httparse finds complete in `bytes`.
fn oracle_status(mut bytes: &[u8]) -> Option<u16> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 256];
        let mut resp = httparse::Response::new(&mut headers);
        let n = match resp.parse(bytes) {
            Ok(httparse::Status::Complete(n)) => n,
            _ => return None,
        };
        let code = resp.code?;
        if code >= 200 {
            return Some(code);
        }
        bytes = &bytes[n..];
    }
}

async fn exchange(
    answer: Vec<u8>,
    limits: FdkLimits,
) -> (Result<(), FdkError>, Option<u64>, u64, Vec<(String, String)>) {
    let s = socket();
    let server = async {
        let (mut stream, _) = s.listener.accept().await.expect("accept");
        let _ = stream.write_all(&answer).await;
        let _ = stream.shutdown().await;
        let mut sink = Vec::new();
        let _ = stream.read_to_end(&mut sink).await;
    };
    let client = async {
        let mut conn = FdkConn::new(&s.path, limits);
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        drop(tx);
        let req = FdkRequest {
            call_id: "01FUZZ".into(),
            deadline: "2030-01-01T00:00:00.000Z".into(),
            headers: vec![("Content-Type".into(), "text/plain".into())],
            body: FdkBody::Stream(rx),
        };
        let mut resp = match conn.call(req).await {
            Ok(r) => r,
            Err(e) => return (Err(e), None, 0, Vec::new()),
        };
        let declared = resp.content_length();
        let mut read = 0u64;
        let end = loop {
            match resp.next_chunk().await {
                Ok(Some(c)) => read += c.len() as u64,
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        let headers = std::mem::take(&mut resp.headers);
        (end, declared, read, headers)
    };
    let (_, out) = tokio::join!(server, client);
    out
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let max_header = match input.byte() {
        0 => 0,
        n => n as usize * 16,
    };
    let max_body = u64::from(input.byte());
    let answer = input.rest().to_vec();
    let limits = FdkLimits { max_body, max_header };
    let expected = oracle_status(&answer);
    let (result, declared, read, headers) = runtime().block_on(async {
        tokio::time::timeout(Duration::from_secs(10), exchange(answer, limits))
            .await
            .expect("the exchange hung")
    });
    if let Some(code) = expected {
        match &result {
            Err(FdkError::FunctionFailed) => assert_eq!(code, 502),
            Err(FdkError::FunctionTimeout) => assert_eq!(code, 504),
            Err(FdkError::InvalidStatus(s)) => assert_eq!(code, *s),
            Ok(()) | Err(FdkError::BodyTooBig { .. } | FdkError::Body(_)) => assert_eq!(code, 200),
            _ => {}
        }
    }
    for (name, _) in &headers {
        assert!(
            !HOP_BY_HOP.contains(&name.to_ascii_lowercase().as_str()),
            "hop-by-hop {name} kept"
        );
        assert_eq!(&canonical_header_name(name), name, "header name not canonical");
    }
    // Values are decoded lossily (a bad byte becomes 3), so the cap is checked on clean values only.
    if max_header > 0 && !headers.iter().any(|(_, v)| v.contains('\u{FFFD}')) {
        let size: usize = headers.iter().map(|(k, v)| k.len() + v.len() + 4).sum();
        assert!(
            size <= max_header,
            "{size} header bytes passed a {max_header}-byte cap"
        );
    }
    if max_body > 0 {
        assert!(read <= max_body, "{read} body bytes passed a {max_body}-byte cap");
    }
    if let (Ok(()), Some(len)) = (&result, declared) {
        assert_eq!(read, len, "Content-Length {len} but {read} bytes read");
    }
});
