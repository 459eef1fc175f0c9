//! A minimal FDK for ferrofn's test and demo functions: it speaks Fn's `http-stream` contract
//! (runner-docker-fdk.md §3) on the unix socket named by `FN_LISTENER`, so the images built from it
//! behave like functions written with Fn's own FDKs.
//!
//! Usage: `Server::bind(ListenerConfig::from_env()?)?.serve(handler).await`, where `handler` maps a
//! [`Request`] to a [`Response`]. The FDK owns everything the contract fixes: the phony socket and
//! its relative symlink, `POST /call` routing, `Fn-Deadline` (handler deadline → UDS 504),
//! `Fn-Intent: httprequest` header (un)prefixing and `Fn-Http-Status`.
#![forbid(unsafe_code)]

mod headers;
mod listener;
mod server;

pub use headers::{canonical_header_name, parse_rfc3339};
pub use listener::{ListenerConfig, phony_path};
pub use server::{Server, Shutdown};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header::CONTENT_TYPE};
use http_body_util::{BodyExt, Empty, Full, combinators::UnsyncBoxBody};
use std::time::SystemTime;

/// Boxed error carried by response bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body of a function's response: anything from a fixed buffer to a live stream.
pub type ResponseBody = UnsyncBoxBody<Bytes, BoxError>;

/// The request body as it arrives on the socket (streamed, possibly chunked).
pub type RequestBody = hyper::body::Incoming;

/// Everything the FDK failed on, one variant per failure point.
#[derive(Debug, thiserror::Error)]
pub enum FdkError {
    /// `FN_FORMAT` names a format other than `http-stream`.
    #[error("FN_FORMAT is {0:?}; only \"http-stream\" is supported")]
    UnsupportedFormat(String),
    /// `FN_LISTENER` is absent.
    #[error("FN_LISTENER is not set")]
    MissingListener,
    /// `FN_LISTENER` is not `unix:<path>` with a file name.
    #[error("FN_LISTENER {0:?} is not of the form unix:<path to socket file>")]
    InvalidListener(String),
    /// A stale socket or link could not be removed before binding.
    #[error("cannot remove stale file {path}: {source}")]
    RemoveStale {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// `bind()`/`listen()` on the phony socket failed.
    #[error("cannot listen on unix socket {path}: {source}")]
    Bind {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// The phony socket could not be made world-writable.
    #[error("cannot chmod 0666 socket {path}: {source}")]
    Chmod {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// The `lsnr.sock -> phonylsnr.sock` link could not be created.
    #[error("cannot create symlink {link} -> {target}: {source}")]
    Symlink {
        link: std::path::PathBuf,
        target: std::path::PathBuf,
        source: std::io::Error,
    },
    /// `accept()` failed on the listening socket.
    #[error("cannot accept a connection on {path}: {source}")]
    Accept {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// Method and URL of the client's request when the call came through an HTTP trigger
/// (`Fn-Intent: httprequest`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpContext {
    /// `Fn-Http-Method`.
    pub method: String,
    /// `Fn-Http-Request-Url`.
    pub request_url: String,
}

/// One call, as the function's handler sees it.
#[derive(Debug)]
pub struct Request {
    /// `Fn-Call-Id`, if the runner sent one.
    pub call_id: Option<String>,
    /// `Fn-Deadline` parsed as RFC 3339; `None` if missing or unparseable (as fdk-go: no deadline).
    pub deadline: Option<SystemTime>,
    /// Headers as the handler sees them: verbatim for plain invokes; for HTTP-trigger calls only
    /// `Content-Type` and the `Fn-Http-H-*` headers plus an un-prefixed copy of each of those.
    pub headers: HeaderMap,
    /// Set for HTTP-trigger calls.
    pub http: Option<HttpContext>,
    /// The streamed request body.
    pub body: RequestBody,
    /// Stops the server after this call (the `isShutdown` behaviour of fn-test-utils).
    pub shutdown: Shutdown,
}

/// What a handler answers.
#[derive(Debug)]
pub struct Response {
    /// The user-level status: sent as `Fn-Http-Status` for HTTP-trigger calls, dropped otherwise
    /// (exactly like fdk-go).
    pub status: StatusCode,
    /// User headers; prefixed with `Fn-Http-H-` (except `Content-Type`) for HTTP-trigger calls.
    pub headers: HeaderMap,
    /// The body, streamed to the runner.
    pub body: ResponseBody,
    /// Overrides the status of the UDS response itself (normally 200). Test functions use it to
    /// answer 502/504/other raw statuses and exercise the runner's mapping.
    pub raw_status: Option<StatusCode>,
}

impl Response {
    /// A 200 response with the given body and no headers.
    pub fn new(body: ResponseBody) -> Self {
        Response {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body,
            raw_status: None,
        }
    }

    /// A 200 response without a body.
    pub fn empty() -> Self {
        Self::new(empty_body())
    }

    /// A 200 response with a fixed body.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        Self::new(full_body(bytes))
    }

    /// A 200 `application/json` response.
    pub fn json(value: &serde_json::Value) -> Self {
        let mut response = Self::full(value.to_string());
        response
            .headers
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        response
    }
}

/// A body that ends immediately.
pub fn empty_body() -> ResponseBody {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A body made of one buffer.
pub fn full_body(bytes: impl Into<Bytes>) -> ResponseBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Reads a whole request body into memory (for small JSON inputs).
pub async fn read_body(body: RequestBody) -> Result<Bytes, hyper::Error> {
    Ok(body.collect().await?.to_bytes())
}

/// Writes one line to stderr, ignoring failures: `eprintln!` panics when nobody reads the stream
/// (closed pipe), and a function must not die because its logs are discarded.
pub fn log_err(line: impl std::fmt::Display) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// Writes one line to stdout, ignoring failures (see [`log_err`]).
pub fn log_out(line: impl std::fmt::Display) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}
