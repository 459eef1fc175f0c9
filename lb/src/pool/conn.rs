//! The LB's HTTP/2 connection to one runner, on `h2` directly: a `tower::Service` that tonic's
//! generated clients (Engage, Status, health) run on, in place of tonic's `Channel`.
//!
//! Why not `Channel`: it puts a buffer task in front of hyper's client, and hyper sends a request's
//! body from a task of its own, so every Engage call crossed two extra tasks and its HEADERS and
//! its first DATA left in separate writes. Here the call's own task queues the HEADERS and every
//! body frame that is already there (the TryCall, an inline body, its end) before it yields; the
//! connection task then flushes them in one write. Only a body that is still coming when the call
//! starts waiting (a streamed body, after the runner's ack) is fed by a task of its own, with
//! HTTP/2 flow control as its bound.
//!
//! The connection is made on first use and made again on the next call after it is lost; calls
//! that find it connecting wait for that one attempt. HTTP/2 pings keep it honest
//! ([`ChannelOptions::keepalive_interval`]): a ping unanswered past the keepalive timeout closes it,
//! which fails its streams (a runner cut off the network without a reset).
//!
//! Errors keep their cause: a failed connect carries [`ConnectFailed`] (so the caller can tell a
//! runner it never reached from a connection lost mid-call) and an HTTP/2 error is the `h2::Error`
//! itself, as it was under hyper.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use h2::{Ping, RecvStream, SendStream};
use http::uri::{Authority, Scheme, Uri};
use http_body::{Body as _, Frame};
use tower::Service;

use ferrofn_common::lock::LockExt;
use ferrofn_common::tls::{ClientTls, ConnectFailed, RunnerConnector};

use super::channel::{
    CONNECTION_WINDOW, ChannelOptions, MAX_LOCAL_ERROR_RESETS, RESET_STREAMS_REMEMBERED, STREAM_WINDOW,
};

/// What a call on a runner connection can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// No connection could be made (TCP connect, name resolution, TLS or HTTP/2 handshake, or the
    /// connect timeout): the source chain holds [`ConnectFailed`].
    #[error("cannot connect to runner {addr}")]
    Connect {
        /// The runner's address.
        addr: String,
        /// The cause, wrapping [`ConnectFailed`].
        #[source]
        source: std::io::Error,
    },
    /// An HTTP/2 error: the connection was lost or closed, the stream was reset or refused.
    #[error("HTTP/2 error on the runner connection: {0}")]
    H2(#[from] h2::Error),
    /// The request cannot be sent as it is.
    #[error("invalid request: {0}")]
    Request(String),
}

/// A runner address that is not a valid URI authority.
#[derive(Debug, thiserror::Error)]
#[error("invalid runner address {addr:?}: {source}")]
pub struct AddressError {
    /// The address as configured.
    pub addr: String,
    /// The cause.
    #[source]
    pub source: http::uri::InvalidUri,
}

/// The connection to one runner; cheap to clone (clones share the connection).
#[derive(Clone, Debug)]
pub struct RunnerConn {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// `host:port` dialled.
    addr: String,
    /// `http://host:port` (TLS, if any, is the connector's).
    origin: Uri,
    connector: RunnerConnector,
    opts: ChannelOptions,
    /// The live connection, with its generation.
    current: Mutex<Option<(u64, SendRequest<Bytes>)>>,
    /// Held while connecting: callers that find no connection wait for the one attempt.
    connecting: tokio::sync::Mutex<()>,
    generation: AtomicU64,
}

impl RunnerConn {
    /// The connection to `addr` (`host:port`, resolved on each connect), verifying the runner's
    /// certificate against `verify` (unless the TLS settings name a server of their own); `tls:
    /// None` = plaintext HTTP/2 (Fn runners, trusted networks). Nothing is dialled before the
    /// first call.
    pub fn new(
        addr: &str,
        verify: &str,
        tls: Option<ClientTls>,
        opts: ChannelOptions,
    ) -> Result<Self, AddressError> {
        let bare = addr
            .strip_prefix("http://")
            .or_else(|| addr.strip_prefix("https://"))
            .unwrap_or(addr);
        let authority = Authority::try_from(bare).map_err(|source| AddressError {
            addr: addr.to_owned(),
            source,
        })?;
        let origin = Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(authority)
            .path_and_query("/")
            .build()
            .expect("scheme, authority and path are valid");
        Ok(Self {
            inner: Arc::new(Inner {
                addr: bare.to_owned(),
                origin,
                connector: RunnerConnector::new(tls)
                    .with_host(verify)
                    .with_tcp_user_timeout(opts.tcp_user_timeout),
                opts,
                current: Mutex::new(None),
                connecting: tokio::sync::Mutex::new(()),
                generation: AtomicU64::new(0),
            }),
        })
    }
}

impl Inner {
    /// A sender on the live connection, connecting first if there is none.
    async fn sender(self: &Arc<Self>) -> Result<(u64, SendRequest<Bytes>), ConnError> {
        if let Some(live) = self.current.lock_unpoisoned().clone() {
            return Ok(live);
        }
        let _gate = self.connecting.lock().await;
        // Someone else may have connected while this call waited for the gate.
        if let Some(live) = self.current.lock_unpoisoned().clone() {
            return Ok(live);
        }
        let live = self.connect().await?;
        *self.current.lock_unpoisoned() = Some(live.clone());
        Ok(live)
    }

    /// Dials, handshakes (TLS, then HTTP/2) and starts the connection task.
    async fn connect(self: &Arc<Self>) -> Result<(u64, SendRequest<Bytes>), ConnError> {
        let failed = |source: std::io::Error| ConnError::Connect {
            addr: self.addr.clone(),
            source,
        };
        let mut connector = self.connector.clone();
        let io = match tokio::time::timeout(self.opts.connect_timeout, connector.call(self.origin.clone()))
            .await
        {
            Ok(r) => r.map_err(failed)?.into_inner(),
            Err(_) => {
                return Err(failed(timed_out(format!(
                    "no connection within {:?}",
                    self.opts.connect_timeout
                ))));
            }
        };
        let handshake = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_concurrent_reset_streams(RESET_STREAMS_REMEMBERED)
            .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS))
            .handshake::<_, Bytes>(io);
        let (send, mut conn) = match tokio::time::timeout(self.opts.connect_timeout, handshake).await {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => {
                return Err(failed(std::io::Error::other(ConnectFailed(
                    std::io::Error::other(e),
                ))));
            }
            Err(_) => {
                return Err(failed(timed_out(
                    "no HTTP/2 handshake within the connect timeout".into(),
                )));
            }
        };
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        let ping = conn.ping_pong().expect("the first call of ping_pong returns it");
        let me = Arc::downgrade(self);
        let (addr, opts) = (self.addr.clone(), self.opts);
        tokio::spawn(async move {
            let cause = tokio::select! {
                r = &mut conn => match r {
                    Ok(()) => {
                        tracing::debug!(runner = %addr, "runner connection closed");
                        "closed"
                    }
                    Err(e) => {
                        tracing::info!(runner = %addr, error = %e, "runner connection lost");
                        loss_cause(&e)
                    }
                },
                () = keepalive(ping, opts.keepalive_interval, opts.keepalive_timeout) => {
                    tracing::info!(runner = %addr, timeout = ?opts.keepalive_timeout,
                        "runner connection did not answer a ping in time; closing it");
                    "ping_timeout"
                }
            };
            metrics::counter!("lb_runner_connections_ended_total", "runner" => addr.clone(), "cause" => cause)
                .increment(1);
            // The next call connects again. Dropping `conn` fails the streams still open on it.
            if let Some(inner) = me.upgrade() {
                inner.forget(generation);
            }
        });
        tracing::debug!(runner = %self.addr, generation, "runner connection established");
        Ok((generation, send))
    }

    /// Forgets connection `generation` (lost): the next call connects again.
    fn forget(&self, generation: u64) {
        let mut current = self.current.lock_unpoisoned();
        if current.as_ref().is_some_and(|(g, _)| *g == generation) {
            *current = None;
        }
    }

    async fn request(
        self: Arc<Self>,
        req: http::Request<tonic::body::Body>,
    ) -> Result<http::Response<RecvBody>, ConnError> {
        let (mut generation, send) = self.sender().await?;
        let mut send = match send.ready().await {
            Ok(s) => s,
            Err(e) => {
                // The connection was lost (or told us to go away) since the last call: nothing of
                // this call has left, so it may go on a new one.
                tracing::debug!(runner = %self.addr, error = %e, "runner connection gone; connecting again");
                self.forget(generation);
                let (g, send) = self.sender().await?;
                generation = g;
                send.ready().await.inspect_err(|_| self.forget(generation))?
            }
        };
        let (mut parts, body) = req.into_parts();
        let mut uri = self.origin.clone().into_parts();
        uri.path_and_query = parts.uri.path_and_query().cloned();
        parts.uri = Uri::from_parts(uri).map_err(|e| ConnError::Request(e.to_string()))?;
        let head = http::Request::from_parts(parts, ());
        let end = body.is_end_stream();
        let (response, stream) = match send.send_request(head, end) {
            Ok(pair) => pair,
            Err(e) => {
                if e.is_io() || e.is_go_away() {
                    self.forget(generation);
                }
                return Err(e.into());
            }
        };
        if !end {
            // Queue what the body already has now, from this task: the connection writes it
            // with the HEADERS. Whatever is still to come is fed by a task of its own.
            let mut feed = Box::pin(feed_body(body, stream));
            if futures::poll!(feed.as_mut()).is_pending() {
                tokio::spawn(feed);
            }
        }
        let response = response.await?;
        Ok(response.map(|recv| RecvBody {
            recv,
            data_done: false,
        }))
    }
}

/// Why a runner connection was lost, for `lb_runner_connections_ended_total`: `tcp_timeout`
/// when the kernel gave up on data the runner's host never acknowledged
/// ([`ChannelOptions::tcp_user_timeout`]), `reset` when the runner's host reset it, `error`
/// otherwise (a protocol error, a GOAWAY with an error).
fn loss_cause(e: &h2::Error) -> &'static str {
    match e.get_io().map(std::io::Error::kind) {
        Some(std::io::ErrorKind::TimedOut) => "tcp_timeout",
        Some(std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe) => "reset",
        _ => "error",
    }
}

/// A connect step that ran out of time: a failed connect ([`ConnectFailed`]), kind `TimedOut`.
fn timed_out(what: String) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        ConnectFailed(std::io::Error::new(std::io::ErrorKind::TimedOut, what)),
    )
}

/// Pings every `interval`; resolves when one is not answered within `timeout` (or the connection
/// refuses pings: it is closing).
async fn keepalive(mut ping: h2::PingPong, interval: Duration, timeout: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        match tokio::time::timeout(timeout, ping.ping(Ping::opaque())).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) | Err(_) => return,
        }
    }
}

/// Sends `body` on `stream`, within the stream's flow control, then ends it; a failed body resets
/// the stream (the runner sees the call cancelled).
async fn feed_body(body: tonic::body::Body, mut stream: SendStream<Bytes>) {
    let mut body = std::pin::pin!(body);
    loop {
        let frame = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await;
        // A failed send means the stream is gone (reset by the runner, connection lost): the
        // response side reports it.
        match frame {
            None => {
                let _ = stream.send_data(Bytes::new(), true);
                return;
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    if send_within_window(&mut stream, data).await.is_err() {
                        return;
                    }
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        let _ = stream.send_trailers(trailers);
                        return;
                    }
                }
            },
            Some(Err(status)) => {
                tracing::debug!(error = %status, "request body failed; resetting the stream");
                stream.send_reset(h2::Reason::CANCEL);
                return;
            }
        }
    }
}

/// Sends `data` in pieces the runner's flow-control window admits.
async fn send_within_window(stream: &mut SendStream<Bytes>, mut data: Bytes) -> Result<(), h2::Error> {
    while !data.is_empty() {
        stream.reserve_capacity(data.len());
        let mut window = stream.capacity();
        while window == 0 {
            window = match std::future::poll_fn(|cx| stream.poll_capacity(cx)).await {
                Some(r) => r?,
                None => return Err(h2::Error::from(h2::Reason::STREAM_CLOSED)),
            };
        }
        let piece = data.split_to(window.min(data.len()));
        stream.send_data(piece, false)?;
    }
    Ok(())
}

/// A response body read from an h2 stream: data, then trailers. Received data is released to
/// the runner's flow-control window as it is handed on.
#[derive(Debug)]
pub struct RecvBody {
    recv: RecvStream,
    data_done: bool,
}

impl http_body::Body for RecvBody {
    type Data = Bytes;
    type Error = ConnError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ConnError>>> {
        if !self.data_done {
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                None => self.data_done = true,
            }
        }
        match ready!(self.recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e.into()))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }
}

impl Service<http::Request<tonic::body::Body>> for RunnerConn {
    type Response = http::Response<RecvBody>;
    type Error = ConnError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ConnError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ConnError>> {
        // Readiness is the connection's, checked per call (tonic drops the cause of an error
        // reported here).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(self.inner.clone().request(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    use tokio::net::TcpListener;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};

    fn opts() -> ChannelOptions {
        ChannelOptions {
            keepalive_interval: Duration::from_millis(100),
            keepalive_timeout: Duration::from_millis(100),
            ..ChannelOptions::default()
        }
    }

    /// A gRPC health answer (SERVING) as it travels: a length-prefixed message.
    fn serving() -> Bytes {
        Bytes::from_static(&[0, 0, 0, 0, 2, 0x08, 0x01])
    }

    /// An HTTP/2 server that answers every request SERVING once it has the whole body, checking
    /// what the LB sent; each connection it accepts is counted, and closed (GOAWAY, then the
    /// socket) after `per_conn` calls, which `closed` is told.
    async fn health_server(per_conn: usize) -> (String, Arc<AtomicUsize>, Arc<tokio::sync::Notify>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(tokio::sync::Notify::new());
        let (count, told) = (accepted.clone(), closed.clone());
        let authority = addr.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = l.accept().await.unwrap();
                count.fetch_add(1, Ordering::AcqRel);
                let (authority, told) = (authority.clone(), told.clone());
                tokio::spawn(async move {
                    let mut conn = h2::server::handshake(tcp).await.unwrap();
                    // `accept` drives the connection: each request is answered by a task of its own.
                    for _ in 0..per_conn {
                        let Some(Ok((req, respond))) = conn.accept().await else {
                            return;
                        };
                        tokio::spawn(answer(req, respond, authority.clone()));
                    }
                    // Let the last answer leave, then close the connection.
                    conn.graceful_shutdown();
                    let _ = std::future::poll_fn(|cx| conn.poll_closed(cx)).await;
                    drop(conn);
                    told.notify_one();
                });
            }
        });
        (addr, accepted, closed)
    }

    async fn answer(
        req: http::Request<RecvStream>,
        mut respond: h2::server::SendResponse<Bytes>,
        authority: String,
    ) {
        let (head, mut body) = req.into_parts();
        assert_eq!(head.uri.authority().map(|a| a.as_str()), Some(authority.as_str()));
        assert_eq!(head.uri.path(), "/grpc.health.v1.Health/Check");
        assert_eq!(head.headers["te"], "trailers");
        let mut got = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.unwrap();
            let _ = body.flow_control().release_capacity(chunk.len());
            got.extend_from_slice(&chunk);
        }
        // The request message: a 5-byte prefix and its length.
        assert_eq!(
            got.len(),
            5 + u32::from_be_bytes(got[1..5].try_into().unwrap()) as usize
        );
        let resp = http::Response::builder()
            .header("content-type", "application/grpc")
            .body(())
            .unwrap();
        let mut send = respond.send_response(resp, false).unwrap();
        send.send_data(serving(), false).unwrap();
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        send.send_trailers(trailers).unwrap();
    }

    async fn check(conn: &RunnerConn) -> Result<i32, tonic::Status> {
        let mut client = HealthClient::new(conn.clone());
        let resp = client
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await?;
        Ok(resp.into_inner().status)
    }

    #[tokio::test]
    async fn calls_share_one_connection_and_get_their_answers() {
        let (addr, accepted, _) = health_server(usize::MAX).await;
        let conn = RunnerConn::new(&addr, "127.0.0.1", None, opts()).unwrap();
        assert_eq!(
            accepted.load(Ordering::Acquire),
            0,
            "nothing is dialled before the first call"
        );
        let calls: Vec<_> = (0..8).map(|_| check(&conn)).collect();
        for r in futures::future::join_all(calls).await {
            assert_eq!(r.unwrap(), ServingStatus::Serving as i32);
        }
        assert_eq!(accepted.load(Ordering::Acquire), 1, "eight calls, one connection");
    }

    #[tokio::test]
    async fn a_connection_the_runner_closed_is_made_again_for_the_next_call() {
        let (addr, accepted, closed) = health_server(1).await;
        let conn = RunnerConn::new(&addr, "127.0.0.1", None, opts()).unwrap();
        for n in 1..=3 {
            // The server closes each connection after one answer; whether the LB has noticed by
            // now or finds out when it sends, the call goes out on a new connection.
            assert_eq!(
                check(&conn).await.unwrap(),
                ServingStatus::Serving as i32,
                "call {n}"
            );
            assert_eq!(accepted.load(Ordering::Acquire), n);
            closed.notified().await;
        }
    }

    #[tokio::test]
    async fn a_runner_that_stops_answering_pings_fails_its_calls_as_a_lost_connection() {
        // Accepts TCP, then never says a word (no HTTP/2 settings, no ping answers).
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let held = tokio::spawn(async move {
            let (tcp, _) = l.accept().await.unwrap();
            std::future::pending::<()>().await;
            drop(tcp);
        });
        let conn = RunnerConn::new(&addr, "127.0.0.1", None, opts()).unwrap();
        let err = tokio::time::timeout(Duration::from_secs(10), check(&conn))
            .await
            .expect("the keepalive ends the call")
            .unwrap_err();
        assert!(crate::engage::is_transport_failure(&err), "{err:?}");
        assert!(
            !crate::engage::is_connect_failure(&err),
            "connected, then lost: {err:?}"
        );
        held.abort();
    }

    #[test]
    fn addresses_that_are_not_authorities_are_refused() {
        assert!(RunnerConn::new("runner:9190", "runner", None, opts()).is_ok());
        assert!(RunnerConn::new("http://runner:9190", "runner", None, opts()).is_ok());
        assert!(RunnerConn::new("run ner:9190", "runner", None, opts()).is_err());
    }
}
