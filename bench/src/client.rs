//! The client side of every scenario: one HTTP/1.1 keep-alive connection (TCP with `TCP_NODELAY`,
//! or a unix socket for the FDK floor) on hyper's low-level `conn` API, so that each call's cost is
//! the server's and not a pool's. A connection closed by the peer is reopened and counted.

use bytes::Bytes;
use http::{HeaderValue, Method, Request, header};
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use std::{
    convert::Infallible,
    fmt,
    path::PathBuf,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};
use tokio::io::{AsyncRead, AsyncWrite};

/// Every request body the tool sends: fixed bytes or a generated stream, never failing.
pub type ReqBody = UnsyncBoxBody<Bytes, Infallible>;

/// A fixed request body.
pub fn full_body(bytes: impl Into<Bytes>) -> ReqBody {
    Full::new(bytes.into()).boxed_unsync()
}

/// A failure on the client side of a call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL is not an `http://host[:port][/prefix]` URL.
    #[error("bad URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    /// The TCP or unix connect failed.
    #[error("cannot connect to {endpoint}")]
    Connect {
        endpoint: Endpoint,
        source: std::io::Error,
    },
    /// The HTTP/1.1 handshake failed.
    #[error("HTTP handshake with {endpoint} failed")]
    Handshake {
        endpoint: Endpoint,
        source: hyper::Error,
    },
    /// Sending the request or reading the response head failed.
    #[error("{method} {path} on {endpoint} failed")]
    Send {
        endpoint: Endpoint,
        method: Method,
        path: String,
        source: hyper::Error,
    },
    /// Reading the response body failed.
    #[error("reading the response body of {path} from {endpoint} failed")]
    Body {
        endpoint: Endpoint,
        path: String,
        source: hyper::Error,
    },
}

impl ClientError {
    /// The cause a failed call is counted under: `"connect"` when no connection could be opened,
    /// `"transport"` when the exchange broke (handshake, request or response).
    pub fn cause(&self) -> &'static str {
        match self {
            ClientError::Connect { .. } => "connect",
            ClientError::BadUrl { .. } => "bad-url",
            ClientError::Handshake { .. } | ClientError::Send { .. } | ClientError::Body { .. } => {
                "transport"
            }
        }
    }
}

/// Where a connection goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Endpoint {
    /// `host:port`.
    Tcp(String),
    /// A unix socket path (the function's `lsnr.sock`).
    Unix(PathBuf),
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp(addr) => write!(f, "tcp:{addr}"),
            Endpoint::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// A parsed `http://host[:port][/prefix]` base URL.
#[derive(Debug, Clone, PartialEq)]
pub struct BaseUrl {
    pub endpoint: Endpoint,
    /// The `Host` header value.
    pub authority: String,
    /// Path prefix without a trailing slash (`""` for none).
    pub prefix: String,
}

impl BaseUrl {
    /// Parses a base URL; only plain `http` is supported (the LB's TLS is for runners, not clients).
    pub fn parse(url: &str) -> Result<Self, ClientError> {
        let bad = |reason: &str| ClientError::BadUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let uri: http::Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
        if uri.scheme_str() != Some("http") {
            return Err(bad("only http:// URLs are supported"));
        }
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        let port = authority.port_u16().unwrap_or(80);
        let host = authority.host();
        let addr = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        if uri.query().is_some() {
            return Err(bad("a base URL takes no query"));
        }
        Ok(BaseUrl {
            endpoint: Endpoint::Tcp(addr),
            authority: authority.as_str().to_owned(),
            prefix: uri.path().trim_end_matches('/').to_owned(),
        })
    }

    /// The request target for `path` (which starts with `/`) under this base.
    pub fn path(&self, path: &str) -> String {
        format!("{}{path}", self.prefix)
    }
}

/// What a call's request looks like apart from its body.
#[derive(Debug, Clone)]
pub struct CallTemplate {
    pub method: Method,
    /// `Host` header.
    pub authority: String,
    /// Request target (`/invoke/<id>`, `/call`).
    pub path: String,
    pub content_type: Option<HeaderValue>,
    /// Add the headers a runner sends to an FDK (`Fn-Call-Id`, `Fn-Deadline`).
    pub fdk: bool,
}

impl CallTemplate {
    /// `POST <path>` with a JSON content type.
    pub fn post(authority: impl Into<String>, path: impl Into<String>) -> Self {
        CallTemplate {
            method: Method::POST,
            authority: authority.into(),
            path: path.into(),
            content_type: Some(HeaderValue::from_static("application/json")),
            fdk: false,
        }
    }

    /// The request a runner sends to a function: `POST /call`, `Host: localhost`, FDK headers.
    pub fn fdk_call() -> Self {
        CallTemplate {
            fdk: true,
            ..CallTemplate::post("localhost", "/call")
        }
    }

    /// Builds one request around `body`.
    pub fn request(&self, body: ReqBody) -> Request<ReqBody> {
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.path.parse().unwrap_or_else(|_| http::Uri::from_static("/"));
        let headers = req.headers_mut();
        if let Ok(host) = HeaderValue::from_str(&self.authority) {
            headers.insert(header::HOST, host);
        }
        if let Some(ct) = &self.content_type {
            headers.insert(header::CONTENT_TYPE, ct.clone());
        }
        if self.fdk {
            if let Ok(id) = HeaderValue::from_str(&next_call_id()) {
                headers.insert("fn-call-id", id);
            }
            if let Ok(deadline) = HeaderValue::from_str(&fdk_deadline(Duration::from_secs(300))) {
                headers.insert("fn-deadline", deadline);
            }
        }
        req
    }
}

/// A call id unique within this process and across concurrent bench runs.
fn next_call_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "bench{:x}{:08x}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// `Fn-Deadline` as runners send it: RFC 3339, whole seconds, `ahead` from now.
pub fn fdk_deadline(ahead: Duration) -> String {
    let at = time::OffsetDateTime::now_utc() + ahead;
    let at = at.replace_nanosecond(0).unwrap_or(at);
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// How one call went.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outcome {
    pub status: u16,
    /// Response body bytes received.
    pub body_bytes: u64,
    /// From the moment the call was issued to its response head.
    pub head_after: Duration,
    /// From the moment the call was issued to the end of its response body.
    pub elapsed: Duration,
}

impl Outcome {
    /// A 2xx answer.
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// One keep-alive HTTP/1.1 connection, reopened when the peer closes it.
pub struct Conn {
    endpoint: Endpoint,
    sender: Option<SendRequest<ReqBody>>,
    /// Connections opened so far (1 for a healthy keep-alive run).
    pub connects: u64,
}

impl Conn {
    /// Opens the connection now, so an unreachable target fails fast with a clear error.
    pub async fn open(endpoint: Endpoint) -> Result<Self, ClientError> {
        let mut conn = Conn {
            endpoint,
            sender: None,
            connects: 0,
        };
        conn.reconnect().await?;
        Ok(conn)
    }

    async fn reconnect(&mut self) -> Result<(), ClientError> {
        self.sender = None;
        let sender = match &self.endpoint {
            Endpoint::Tcp(addr) => {
                let stream = tokio::net::TcpStream::connect(addr)
                    .await
                    .map_err(|source| self.connect_error(source))?;
                // Small requests must not wait for Nagle's delayed ACK dance.
                stream
                    .set_nodelay(true)
                    .map_err(|source| self.connect_error(source))?;
                self.handshake(stream).await?
            }
            Endpoint::Unix(path) => {
                let stream = tokio::net::UnixStream::connect(path)
                    .await
                    .map_err(|source| self.connect_error(source))?;
                self.handshake(stream).await?
            }
        };
        self.connects += 1;
        self.sender = Some(sender);
        Ok(())
    }

    fn connect_error(&self, source: std::io::Error) -> ClientError {
        ClientError::Connect {
            endpoint: self.endpoint.clone(),
            source,
        }
    }

    async fn handshake<S>(&self, stream: S) -> Result<SendRequest<ReqBody>, ClientError>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|source| ClientError::Handshake {
                endpoint: self.endpoint.clone(),
                source,
            })?;
        let endpoint = self.endpoint.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%endpoint, error = %e, "connection ended with an error");
            }
        });
        Ok(sender)
    }

    /// Sends `req` and reads the whole response, handing each body chunk to `on_chunk`. The clock
    /// starts before a closed connection is reopened: a client pays for that too.
    pub async fn call(
        &mut self,
        req: Request<ReqBody>,
        mut on_chunk: impl FnMut(&[u8]),
    ) -> Result<Outcome, ClientError> {
        let started = Instant::now();
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let usable = match self.sender.as_mut() {
            Some(sender) => !sender.is_closed() && sender.ready().await.is_ok(),
            None => false,
        };
        if !usable {
            self.reconnect().await?;
        }
        let Some(sender) = self.sender.as_mut() else {
            unreachable!("reconnect sets the sender or fails");
        };
        let response = match sender.send_request(req).await {
            Ok(response) => response,
            Err(source) => {
                self.sender = None;
                return Err(ClientError::Send {
                    endpoint: self.endpoint.clone(),
                    method,
                    path,
                    source,
                });
            }
        };
        let head_after = started.elapsed();
        let status = response.status().as_u16();
        let mut body = response.into_body();
        let mut body_bytes = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = match frame {
                Ok(frame) => frame,
                Err(source) => {
                    self.sender = None;
                    return Err(ClientError::Body {
                        endpoint: self.endpoint.clone(),
                        path,
                        source,
                    });
                }
            };
            if let Some(data) = frame.data_ref() {
                body_bytes += data.len() as u64;
                on_chunk(data);
            }
        }
        Ok(Outcome {
            status,
            body_bytes,
            head_after,
            elapsed: started.elapsed(),
        })
    }

    /// [`Conn::call`] keeping the body (for small API answers).
    pub async fn call_collect(&mut self, req: Request<ReqBody>) -> Result<(Outcome, Vec<u8>), ClientError> {
        let mut body = Vec::new();
        let outcome = self.call(req, |chunk| body.extend_from_slice(chunk)).await?;
        Ok((outcome, body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_base_urls() {
        let u = BaseUrl::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!(u.endpoint, Endpoint::Tcp("127.0.0.1:8080".into()));
        assert_eq!(u.authority, "127.0.0.1:8080");
        assert_eq!(u.path("/invoke/x"), "/invoke/x");
        let u = BaseUrl::parse("http://localhost/fn/").unwrap();
        assert_eq!(u.endpoint, Endpoint::Tcp("localhost:80".into()));
        assert_eq!(u.path("/v2/apps"), "/fn/v2/apps");
        let u = BaseUrl::parse("http://[::1]:9000").unwrap();
        assert_eq!(u.endpoint, Endpoint::Tcp("[::1]:9000".into()));
        assert!(BaseUrl::parse("https://x").is_err());
        assert!(BaseUrl::parse("127.0.0.1:8080").is_err());
        assert!(BaseUrl::parse("http://x/?a=b").is_err());
    }

    #[test]
    fn fdk_requests_carry_call_id_and_deadline() {
        let t = CallTemplate::fdk_call();
        let a = t.request(full_body("{}"));
        let b = t.request(full_body("{}"));
        assert_eq!(a.uri().path(), "/call");
        assert_eq!(a.headers()["host"], "localhost");
        assert_ne!(a.headers()["fn-call-id"], b.headers()["fn-call-id"]);
        let deadline = a.headers()["fn-deadline"].to_str().unwrap();
        let parsed =
            time::OffsetDateTime::parse(deadline, &time::format_description::well_known::Rfc3339).unwrap();
        assert_eq!(parsed.nanosecond(), 0);
        assert!(parsed > time::OffsetDateTime::now_utc());
        let plain = CallTemplate::post("h:1", "/invoke/f").request(full_body("{}"));
        assert!(plain.headers().get("fn-deadline").is_none());
    }

    /// A real round trip over a unix socket against a tiny hyper server: keep-alive reuse, body
    /// counting, and reconnection after the server closes the connection.
    #[tokio::test]
    async fn keeps_alive_and_reconnects() {
        use hyper::{Response, server::conn::http1, service::service_fn};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            // Two connections: the first serves two calls then closes, the second serves one.
            for calls_before_close in [2usize, 1] {
                let (stream, _) = listener.accept().await.unwrap();
                let served = std::sync::Arc::new(AtomicU64::new(0));
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let n = served.fetch_add(1, Ordering::SeqCst) as usize + 1;
                    async move {
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let mut resp = Response::new(Full::new(body));
                        if n >= calls_before_close {
                            resp.headers_mut()
                                .insert("connection", HeaderValue::from_static("close"));
                        }
                        Ok::<_, Infallible>(resp)
                    }
                });
                http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await
                    .unwrap();
            }
        });
        let mut conn = Conn::open(Endpoint::Unix(path)).await.unwrap();
        let t = CallTemplate::fdk_call();
        for _ in 0..3 {
            let mut seen = Vec::new();
            let out = conn
                .call(t.request(full_body("hello")), |c| seen.extend_from_slice(c))
                .await
                .unwrap();
            assert!(out.ok());
            assert_eq!(out.body_bytes, 5);
            assert_eq!(seen, b"hello");
            assert!(out.elapsed >= out.head_after);
        }
        assert_eq!(conn.connects, 2);
        server.await.unwrap();
    }
}
