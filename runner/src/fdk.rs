//! The FDK `http-stream` client: HTTP/1.1 over the container's unix socket, one connection per
//! container. Builds `POST /call` (forwarded headers minus hop-by-hop, `Fn-Call-Id`, `Fn-Deadline`,
//! a streamed chunked body) and maps the answer: 200 / 502 / 504 / other, header and body size caps.

use std::convert::Infallible;
use std::io::IoSlice;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// Request headers never forwarded to the function: hop-by-hop headers (Go's list) plus the framing
/// headers Go's client ignores (`Content-Length`, `Host`, `Transfer-Encoding`).
const NOT_FORWARDED: &[&str] = &[
    "connection",
    "proxy-connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "host",
    "fn-call-id",
    "fn-deadline",
];

/// Response headers dropped from the function's answer (hop-by-hop).
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

/// hyper rejects response heads larger than this when no cap is configured (Go's 10 MiB default).
const DEFAULT_MAX_HEADER_BYTES: usize = 10 << 20;

/// Most header lines a function's response may have (more: the header-too-big error). hyper parses
/// up to this many in place; a larger limit makes it allocate (and zero) two arrays of that many
/// entries for every response it parses: with 10,000, ~640 KB per call (BENCHMARKS.md, round 3).
const MAX_RESPONSE_HEADERS: usize = 100;

/// The request body, streamed from the Engage data frames through a bounded channel.
pub type RequestBody = BoxBody<Bytes, Infallible>;

/// A failed exchange with the function, each with what it means for the call and the container.
#[derive(Debug, thiserror::Error)]
pub enum FdkError {
    /// The socket refused the connection.
    #[error("cannot connect to function socket {path}: {source}")]
    Connect { path: PathBuf, source: std::io::Error },
    /// The HTTP/1.1 handshake failed.
    #[error("HTTP handshake with function socket {path} failed: {source}")]
    Handshake { path: PathBuf, source: hyper::Error },
    /// No (valid) response head arrived: the process crashed, exited or closed the connection.
    #[error("error receiving function response: {0}")]
    Receive(#[source] hyper::Error),
    /// The response head is over `FN_MAX_HDR_RESPONSE_SIZE`.
    #[error("function response header too large ({size} > {max} bytes)")]
    HeaderTooBig { size: usize, max: usize },
    /// The FDK answered 502: the function failed.
    #[error("function failed (FDK status 502)")]
    FunctionFailed,
    /// The FDK answered 504: the function timed out.
    #[error("function timed out (FDK status 504)")]
    FunctionTimeout,
    /// The FDK answered another status than 200 / 502 / 504.
    #[error("invalid function response: FDK status {0}")]
    InvalidStatus(u16),
    /// The body is over `FN_MAX_RESPONSE_SIZE`.
    #[error("function response body too large (over {max} bytes)")]
    BodyTooBig { max: u64 },
    /// The body broke off after the head.
    #[error("error reading function response body: {0}")]
    Body(#[source] hyper::Error),
}

impl FdkError {
    /// True when the container must be destroyed after this error (runner-docker-fdk.md §3.7).
    pub fn kills_container(&self) -> bool {
        !matches!(
            self,
            FdkError::FunctionFailed | FdkError::FunctionTimeout | FdkError::BodyTooBig { .. }
        )
    }
}

/// Limits applied to the function's answer. 0 means unlimited.
#[derive(Debug, Clone, Copy, Default)]
pub struct FdkLimits {
    /// `FN_MAX_RESPONSE_SIZE`.
    pub max_body: u64,
    /// `FN_MAX_HDR_RESPONSE_SIZE`.
    pub max_header: usize,
}

/// One call to send to the function.
#[derive(Debug)]
pub struct FdkRequest {
    /// `Fn-Call-Id`.
    pub call_id: String,
    /// `Fn-Deadline` value (RFC 3339).
    pub deadline: String,
    /// The call's request headers, one entry per value.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: FdkBody,
}

/// The body of a `POST /call`.
#[derive(Debug)]
pub enum FdkBody {
    /// Whole, in memory: sent with a `Content-Length`, in one write with the head.
    Full(Bytes),
    /// Streamed (chunked) as it arrives; ended when the sender is dropped.
    Stream(mpsc::Receiver<Bytes>),
}

/// The function's 200 answer: headers, then the body read with [`FdkResponse::next_chunk`].
#[derive(Debug)]
pub struct FdkResponse {
    /// Response headers, canonical Go names, hop-by-hop removed, one entry per value.
    pub headers: Vec<(String, String)>,
    body: Incoming,
    max_body: u64,
    read: u64,
}

impl FdkResponse {
    /// The body's length when the function declared it (`Content-Length`).
    pub fn content_length(&self) -> Option<u64> {
        hyper::body::Body::size_hint(&self.body).exact()
    }

    /// `FN_MAX_RESPONSE_SIZE` (0 = unlimited).
    pub fn max_body(&self) -> u64 {
        self.max_body
    }

    /// `first` and the body chunks that are already there, up to about `frame` bytes in all (the
    /// last chunk joined may pass it; the caller splits). "Already there" includes what the
    /// connection task holds in its buffer: it gets one turn of the scheduler to hand the next
    /// chunk over (a yield, not a timer); the join stops at the first chunk that is not there.
    pub async fn join_ready(&mut self, first: Bytes, frame: usize) -> Result<Bytes, FdkError> {
        use futures::FutureExt;
        let mut joined: Option<bytes::BytesMut> = None;
        loop {
            let len = joined.as_ref().map_or(first.len(), bytes::BytesMut::len);
            if len >= frame || hyper::body::Body::is_end_stream(&self.body) {
                break;
            }
            tokio::task::yield_now().await;
            match self.next_chunk().now_or_never() {
                Some(Ok(Some(c))) => joined
                    .get_or_insert_with(|| bytes::BytesMut::from(&first[..]))
                    .extend_from_slice(&c),
                Some(Ok(None)) | None => break,
                Some(Err(e)) => return Err(e),
            }
        }
        Ok(joined.map_or(first, bytes::BytesMut::freeze))
    }

    /// Next body chunk; `None` at the end; an error past `FN_MAX_RESPONSE_SIZE`.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, FdkError> {
        loop {
            match self.body.frame().await {
                None => return Ok(None),
                Some(Err(e)) => return Err(FdkError::Body(e)),
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else { continue };
                    if data.is_empty() {
                        continue;
                    }
                    self.read += data.len() as u64;
                    if self.max_body > 0 && self.read > self.max_body {
                        return Err(FdkError::BodyTooBig { max: self.max_body });
                    }
                    return Ok(Some(data));
                }
            }
        }
    }
}

/// Per-connection switches shared between [`FdkConn`] and its socket.
#[derive(Debug, Default)]
struct IoState {
    /// Write errors are swallowed (set for every call; see [`FdkConn::call`]).
    tolerate_write_errors: AtomicBool,
    /// A write failed and was swallowed: the connection cannot carry another call.
    broken: AtomicBool,
}

/// The function's socket. A write error (the function answered early and closed its side) turns
/// the rest of the request into a discard, so hyper still reads the answer that
/// is waiting in the receive buffer instead of failing the call with the write error.
struct FdkIo {
    inner: UnixStream,
    state: Arc<IoState>,
}

impl FdkIo {
    /// Maps a write outcome: an error becomes "all written" and marks the connection broken.
    fn tolerate<T>(&self, r: Poll<std::io::Result<T>>, written: T) -> Poll<std::io::Result<T>> {
        match r {
            Poll::Ready(Err(e)) if self.state.tolerate_write_errors.load(Ordering::SeqCst) => {
                if !self.state.broken.swap(true, Ordering::SeqCst) {
                    tracing::debug!(error = %e, "function closed its socket early: dropping the rest");
                }
                Poll::Ready(Ok(written))
            }
            other => other,
        }
    }

    fn broken(&self) -> bool {
        self.state.broken.load(Ordering::SeqCst)
    }
}

impl AsyncRead for FdkIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for FdkIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if this.broken() {
            return Poll::Ready(Ok(buf.len()));
        }
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.tolerate(r, buf.len())
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let len = bufs.iter().map(|b| b.len()).sum();
        if this.broken() {
            return Poll::Ready(Ok(len));
        }
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.tolerate(r, len)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.broken() {
            return Poll::Ready(Ok(()));
        }
        let r = Pin::new(&mut this.inner).poll_flush(cx);
        this.tolerate(r, ())
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.broken() {
            return Poll::Ready(Ok(()));
        }
        let r = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.tolerate(r, ())
    }
}

/// The runner's connection to one container's FDK.
pub struct FdkConn {
    path: PathBuf,
    limits: FdkLimits,
    sender: Option<http1::SendRequest<RequestBody>>,
    io_state: Arc<IoState>,
}

impl std::fmt::Debug for FdkConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FdkConn")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl FdkConn {
    /// A connection to the socket at `path`, opened lazily on the first call.
    pub fn new(path: impl Into<PathBuf>, limits: FdkLimits) -> Self {
        FdkConn {
            path: path.into(),
            limits,
            sender: None,
            io_state: Arc::default(),
        }
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Drops the connection; the next call opens a new one (after an answer that left it unusable).
    pub fn reset(&mut self) {
        self.sender = None;
    }

    async fn sender(&mut self) -> Result<&mut http1::SendRequest<RequestBody>, FdkError> {
        if self.io_state.broken.load(Ordering::SeqCst) || self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            self.sender = None;
            let stream = UnixStream::connect(&self.path)
                .await
                .map_err(|source| FdkError::Connect {
                    path: self.path.clone(),
                    source,
                })?;
            let io_state = Arc::new(IoState::default());
            self.io_state = io_state.clone();
            let max_header = if self.limits.max_header > 0 {
                self.limits.max_header
            } else {
                DEFAULT_MAX_HEADER_BYTES
            };
            let (sender, conn) = http1::Builder::new()
                .title_case_headers(true)
                .max_headers(MAX_RESPONSE_HEADERS)
                .max_buf_size(max_header.max(8192) + 1024)
                .handshake(TokioIo::new(FdkIo {
                    inner: stream,
                    state: io_state.clone(),
                }))
                .await
                .map_err(|source| FdkError::Handshake {
                    path: self.path.clone(),
                    source,
                })?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "FDK connection ended");
                }
            });
            self.sender = Some(sender);
        }
        Ok(self.sender.as_mut().expect("sender set above"))
    }

    /// Sends `POST /call` and waits for the response head. A 200 gives the streaming response;
    /// every other outcome is an [`FdkError`]. The caller bounds this with the exec deadline.
    pub async fn call(&mut self, req: FdkRequest) -> Result<FdkResponse, FdkError> {
        let limits = self.limits;
        let mut builder = hyper::Request::builder()
            .method(hyper::Method::POST)
            .uri("/call")
            .header(hyper::header::HOST, "localhost");
        for (k, v) in &req.headers {
            if NOT_FORWARDED.contains(&k.to_ascii_lowercase().as_str()) {
                continue;
            }
            // Names or values hyper cannot put on the wire are dropped rather than failing the call.
            let (Ok(name), Ok(value)) = (
                http::HeaderName::from_bytes(k.as_bytes()),
                http::HeaderValue::from_str(v),
            ) else {
                tracing::debug!(header = %k, "dropping request header that is not valid HTTP");
                continue;
            };
            builder = builder.header(name, value);
        }
        builder = builder
            .header("Fn-Call-Id", req.call_id.as_str())
            .header("Fn-Deadline", req.deadline.as_str());
        let body = match req.body {
            // The length is set here: hyper leaves it out for an empty POST body.
            FdkBody::Full(b) => {
                builder = builder.header(hyper::header::CONTENT_LENGTH, b.len());
                BodyExt::boxed(Full::new(b))
            }
            FdkBody::Stream(rx) => BodyExt::boxed(StreamBody::new(
                ReceiverStream::new(rx).map(|b| Ok::<_, Infallible>(Frame::data(b))),
            )),
        };
        let request = builder.body(body).expect("request built from valid parts");

        // Write errors are swallowed in both modes: a function that answers early and closes its
        // side must be seen answering (Fn mode: premature write, full duplex: the answer), not
        // reported as a failed receive because the write of the rest of the request lost the race.
        self.sender().await?;
        self.io_state.tolerate_write_errors.store(true, Ordering::SeqCst);
        let sender = self.sender.as_mut().expect("sender set above");
        if let Err(e) = sender.ready().await {
            self.sender = None;
            return Err(FdkError::Receive(e));
        }
        let resp = match sender.send_request(request).await {
            Ok(r) => r,
            Err(e) => {
                self.sender = None;
                return Err(if e.is_parse_too_large() {
                    FdkError::HeaderTooBig {
                        size: 0,
                        max: limits.max_header,
                    }
                } else {
                    FdkError::Receive(e)
                });
            }
        };
        let status = resp.status().as_u16();
        let header_size: usize = resp
            .headers()
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum();
        if limits.max_header > 0 && header_size > limits.max_header {
            self.sender = None;
            return Err(FdkError::HeaderTooBig {
                size: header_size,
                max: limits.max_header,
            });
        }
        match status {
            200 => {}
            502 => {
                self.sender = None;
                return Err(FdkError::FunctionFailed);
            }
            504 => {
                self.sender = None;
                return Err(FdkError::FunctionTimeout);
            }
            other => {
                self.sender = None;
                return Err(FdkError::InvalidStatus(other));
            }
        }
        let (parts, body) = resp.into_parts();
        let headers = parts
            .headers
            .iter()
            .filter(|(k, _)| !HOP_BY_HOP.contains(&k.as_str()))
            .map(|(k, v)| {
                (
                    canonical_header_name(k.as_str()),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        Ok(FdkResponse {
            headers,
            body,
            max_body: limits.max_body,
            read: 0,
        })
    }
}

/// Go's canonical MIME header form: `content-type` -> `Content-Type`, `fn-http-h-x` -> `Fn-Http-H-X`.
pub fn canonical_header_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = true;
    for c in name.chars() {
        if upper {
            out.extend(c.to_uppercase());
        } else {
            out.extend(c.to_lowercase());
        }
        upper = c == '-';
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;
    use hyper::service::service_fn;
    use std::sync::{Arc, Mutex};

    type Seen = Arc<Mutex<Vec<(String, String, String)>>>;

    /// The values the test server saw for header `name`, in order.
    fn values(seen: &[(String, String, String)], name: &str) -> Vec<String> {
        seen.iter()
            .filter(|(n, _, _)| n == name)
            .map(|(_, v, _)| v.clone())
            .collect()
    }

    /// Serves `POST /call` on a unix socket: records request headers and body, answers per `reply`.
    async fn serve(
        path: PathBuf,
        seen: Seen,
        reply: fn(&str) -> hyper::Response<Full<Bytes>>,
    ) -> tokio::task::JoinHandle<()> {
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<Incoming>| {
                        let seen = seen.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.unwrap().to_bytes();
                            let body = String::from_utf8_lossy(&body).into_owned();
                            {
                                let mut s = seen.lock().unwrap();
                                for (k, v) in &parts.headers {
                                    s.push((k.to_string(), v.to_str().unwrap().to_string(), body.clone()));
                                }
                                s.push((":path".into(), parts.uri.path().to_string(), body.clone()));
                            }
                            Ok::<_, Infallible>(reply(&body))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        })
    }

    fn request(body: &[&'static str]) -> FdkRequest {
        let (tx, rx) = mpsc::channel(4);
        let chunks: Vec<Bytes> = body.iter().map(|s| Bytes::from_static(s.as_bytes())).collect();
        tokio::spawn(async move {
            for c in chunks {
                tx.send(c).await.unwrap();
            }
        });
        FdkRequest {
            call_id: "01CALL".into(),
            deadline: "2030-01-01T00:00:00.000Z".into(),
            headers: vec![
                ("Content-Type".into(), "text/plain".into()),
                ("Connection".into(), "close".into()),
                ("Content-Length".into(), "999".into()),
                ("X-Multi".into(), "a".into()),
                ("X-Multi".into(), "b".into()),
            ],
            body: FdkBody::Stream(rx),
        }
    }

    #[tokio::test]
    async fn forwards_headers_and_streams_body() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("lsnr.sock");
        let seen = Seen::default();
        serve(path.clone(), seen.clone(), |b| {
            hyper::Response::builder()
                .header("x-out", "1")
                .header("connection", "keep-alive")
                .body(Full::from(b.to_uppercase()))
                .unwrap()
        })
        .await;
        let mut conn = FdkConn::new(&path, FdkLimits::default());
        for _ in 0..2 {
            let mut resp = conn.call(request(&["hello ", "world"])).await.unwrap();
            assert!(
                resp.headers.contains(&("X-Out".into(), "1".into())),
                "{:?}",
                resp.headers
            );
            assert!(!resp.headers.iter().any(|(k, _)| k == "Connection"));
            let mut body = Vec::new();
            while let Some(c) = resp.next_chunk().await.unwrap() {
                body.extend_from_slice(&c);
            }
            assert_eq!(body, b"HELLO WORLD");
        }
        let seen = seen.lock().unwrap();
        let get = |k: &str| values(&seen, k);
        assert_eq!(get(":path")[0], "/call");
        assert_eq!(get("host")[0], "localhost");
        assert_eq!(get("fn-call-id")[0], "01CALL");
        assert_eq!(get("fn-deadline")[0], "2030-01-01T00:00:00.000Z");
        assert_eq!(get("x-multi")[..2], ["a".to_string(), "b".to_string()]);
        assert_eq!(
            get("content-length"),
            Vec::<String>::new(),
            "streamed bodies are chunked"
        );
        assert_eq!(get("transfer-encoding")[0], "chunked");
        assert!(get("connection").is_empty());
    }

    #[tokio::test]
    async fn a_whole_body_goes_with_its_length() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("lsnr.sock");
        let seen = Seen::default();
        serve(path.clone(), seen.clone(), |b| {
            hyper::Response::builder().body(Full::from(b.to_owned())).unwrap()
        })
        .await;
        let mut conn = FdkConn::new(&path, FdkLimits::default());
        for body in ["inline body", ""] {
            let mut req = request(&[]);
            req.body = FdkBody::Full(Bytes::from_static(body.as_bytes()));
            let mut resp = conn.call(req).await.unwrap();
            let mut out = Vec::new();
            while let Some(c) = resp.next_chunk().await.unwrap() {
                out.extend_from_slice(&c);
            }
            assert_eq!(out, body.as_bytes());
        }
        let seen = seen.lock().unwrap();
        let get = |k: &str| values(&seen, k);
        assert_eq!(
            get("content-length"),
            ["11", "0"],
            "the body's own length, not the client's header"
        );
        assert!(get("transfer-encoding").is_empty());
    }

    #[tokio::test]
    async fn maps_statuses() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("lsnr.sock");
        serve(path.clone(), Seen::default(), |b| {
            let status: u16 = b.parse().unwrap();
            hyper::Response::builder()
                .status(status)
                .body(Full::from("x"))
                .unwrap()
        })
        .await;
        let mut conn = FdkConn::new(&path, FdkLimits::default());
        let e = conn.call(request(&["502"])).await.unwrap_err();
        assert!(matches!(e, FdkError::FunctionFailed) && !e.kills_container());
        let e = conn.call(request(&["504"])).await.unwrap_err();
        assert!(matches!(e, FdkError::FunctionTimeout) && !e.kills_container());
        let e = conn.call(request(&["500"])).await.unwrap_err();
        assert!(matches!(e, FdkError::InvalidStatus(500)) && e.kills_container());
    }

    #[tokio::test]
    async fn header_lines_past_the_limit_are_too_big() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("lsnr.sock");
        // `n` header lines in all (the server adds content-length and date).
        serve(path.clone(), Seen::default(), |b| {
            let n: usize = b.parse().unwrap();
            let mut r = hyper::Response::builder();
            for i in 0..n - 2 {
                r = r.header(format!("x-h{i}"), "v");
            }
            r.body(Full::from("ok")).unwrap()
        })
        .await;
        let mut conn = FdkConn::new(&path, FdkLimits::default());
        let ok = conn.call(request(&["100"])).await.unwrap();
        let extra = ok.headers.iter().filter(|(k, _)| k.starts_with("X-H")).count();
        assert_eq!(extra, 98, "every header line of the answer");
        let e = conn.call(request(&["101"])).await.unwrap_err();
        assert!(matches!(e, FdkError::HeaderTooBig { .. }), "{e}");
    }

    #[tokio::test]
    async fn enforces_body_and_header_caps() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("lsnr.sock");
        serve(path.clone(), Seen::default(), |b| {
            let n: usize = b.parse().unwrap();
            hyper::Response::builder()
                .header("x-big", "h".repeat(n))
                .body(Full::from(vec![b'x'; n]))
                .unwrap()
        })
        .await;
        let mut conn = FdkConn::new(
            &path,
            FdkLimits {
                max_body: 1000,
                max_header: 1200,
            },
        );
        let mut ok = conn.call(request(&["1000"])).await.unwrap();
        let mut n = 0;
        while let Some(c) = ok.next_chunk().await.unwrap() {
            n += c.len();
        }
        assert_eq!(n, 1000);
        let e = conn.call(request(&["1500"])).await.unwrap_err();
        assert!(matches!(e, FdkError::HeaderTooBig { .. }), "{e}");
        let mut conn = FdkConn::new(
            &path,
            FdkLimits {
                max_body: 1000,
                max_header: 0,
            },
        );
        let mut big = conn.call(request(&["1500"])).await.unwrap();
        let e = loop {
            match big.next_chunk().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("body over the cap was accepted"),
                Err(e) => break e,
            }
        };
        assert!(matches!(e, FdkError::BodyTooBig { max: 1000 }) && !e.kills_container());
    }

    /// A function that answers after the head and closes with the body unread: in full duplex the
    /// answer is read and the next call reconnects. (Whether hyper sees the failed write before the
    /// answer is a race; `full_duplex_io_swallows_write_errors` pins the mechanism down.)
    #[tokio::test]
    async fn full_duplex_reads_an_early_answer_and_reconnects() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("lsnr.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            for _ in 0..2 {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut buf).await.unwrap();
                    assert!(n > 0, "client closed before its head");
                    head.extend_from_slice(&buf[..n]);
                }
                s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nearly")
                    .await
                    .unwrap();
                // Closing with unread request bytes makes the runner's next writes fail.
            }
        });
        let (tx, rx) = mpsc::channel(4);
        let feeder = tokio::spawn(async move {
            let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
            for _ in 0..128 {
                if tx.send(chunk.clone()).await.is_err() {
                    break;
                }
            }
        });
        let mut conn = FdkConn::new(&path, FdkLimits::default());
        let mut req = request(&[]);
        req.body = FdkBody::Stream(rx);
        let mut resp = conn.call(req).await.expect("early answer is read");
        let mut body = Vec::new();
        while let Some(c) = resp.next_chunk().await.unwrap() {
            body.extend_from_slice(&c);
        }
        assert_eq!(body, b"early");
        feeder.await.unwrap();
        let mut next = conn.call(request(&["again"])).await.expect("a new connection");
        assert_eq!(next.next_chunk().await.unwrap().as_deref(), Some(&b"early"[..]));
        server.await.unwrap();
    }

    /// The socket wrapper: a write to a closed peer fails in Fn mode; in full duplex it "succeeds",
    /// marks the connection broken, and the peer's answer is still readable.
    #[tokio::test]
    async fn full_duplex_io_swallows_write_errors() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        for tolerate in [false, true] {
            let (ours, mut theirs) = UnixStream::pair().unwrap();
            theirs.write_all(b"answer").await.unwrap();
            drop(theirs);
            let state = Arc::new(IoState::default());
            state.tolerate_write_errors.store(tolerate, Ordering::SeqCst);
            let mut io = FdkIo {
                inner: ours,
                state: state.clone(),
            };
            let r = io.write_all(&[b'x'; 4096]).await;
            assert_eq!(r.is_ok(), tolerate, "{r:?}");
            assert_eq!(state.broken.load(Ordering::SeqCst), tolerate);
            let mut got = Vec::new();
            io.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, b"answer");
        }
    }

    #[tokio::test]
    async fn connect_failure_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let mut conn = FdkConn::new(tmp.path().join("none.sock"), FdkLimits::default());
        let e = conn.call(request(&[])).await.unwrap_err();
        assert!(matches!(e, FdkError::Connect { .. }) && e.kills_container());
    }

    #[test]
    fn canonical_names() {
        assert_eq!(canonical_header_name("content-type"), "Content-Type");
        assert_eq!(canonical_header_name("fn-http-h-x-foo"), "Fn-Http-H-X-Foo");
        assert_eq!(canonical_header_name("etag"), "Etag");
    }
}
