//! The client side of Engage: one attempt on one runner. It sends the TryCall and the body in
//! frames of at most 10 KiB, classifies the runner's answer (NACK, or an open that failed before the
//! TryCall left the LB -> try the next runner; anything after commitment is final), bounds a
//! committed sync call by its deadline and turns the result into an HTTP response.
//!
//! Two modes. With Fn runners (or a mixed pool) the body is buffered for replay and the response is
//! buffered until the call ends, as Fn does. When every runner advertises the accept-ack capability,
//! the LB asks for the ack (extension `ferrofn-accept-ack=1`), holds the body back until the runner's
//! zero-length data frame says the call has started, then streams the body in and the response out
//! through bounded buffers; only a head of [`HEAD_BUFFER`] bytes is held so short responses still get
//! exact error statuses.

use std::collections::HashMap;
use std::error::Error as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::metadata::MetadataValue;

use ferrofn_common::error::FnError;
use ferrofn_common::frames::chunks;
use ferrofn_proto::{
    CallFinished, CallResultStart, ClientMsg, DataFrame, RunnerMsg, TryCall, call_result_start, client_msg,
    runner_msg,
};

use crate::placer::Attempt;
use crate::pool::{InFlight, Runner, RunnerState};

/// TryCall extension asking a ferrofn runner to acknowledge acceptance before the body is sent.
pub const ACCEPT_ACK_EXTENSION: &str = "ferrofn-accept-ack";
/// Default response bytes held before the LB commits to a status and starts streaming (ack mode).
pub const HEAD_BUFFER: usize = 64 * 1024;
/// Frames queued towards the runner or the client: with 10 KiB frames, a bounded window. 64 was
/// measured (BENCHMARKS.md): no faster in release and a higher RSS, so the window stays small.
const WINDOW_FRAMES: usize = 4;

/// Fn's text for a stream that ended without CallFinished (logs and metrics).
const NO_EOF: &str = "Purerunner missing EOF response";
/// Default margin added to a sync call's fn timeout for its deadline on the LB (queueing for a slot,
/// cold start, image pull).
pub const DEFAULT_SYNC_DEADLINE_MARGIN: Duration = Duration::from_secs(30);

/// The request body across attempts.
#[derive(Debug)]
pub enum BodyState {
    /// In memory: every attempt replays it.
    Buffered(Bytes),
    /// Not read yet: taken by the attempt whose runner acknowledged acceptance.
    Stream(Body),
    /// Already handed to a committed attempt.
    Taken,
}

/// The request body, shared by the attempts of one call.
pub type SharedBody = Arc<Mutex<BodyState>>;

/// One call as Engage needs it.
#[derive(Debug, Clone)]
pub struct EngageCall {
    /// The call ID (`fn_request_id` metadata).
    pub call_id: String,
    /// `models_call_json`.
    pub model_json: String,
    /// Detached call: the runner's 202 result start is the answer.
    pub detached: bool,
    /// gRPC deadline of a detached call's stream (Fn: 30 s + fn timeout + headroom).
    pub detached_deadline: Duration,
    /// Bound on a sync attempt from its open to CallFinished (fn timeout + margin):
    /// past it the LB gives up on a silent runner with 504. `None`: unbounded (Fn's behaviour).
    pub sync_deadline: Option<Duration>,
    /// W3C `traceparent` passed as gRPC metadata.
    pub traceparent: Option<String>,
    /// The body.
    pub body: SharedBody,
    /// `FN_MAX_REQUEST_SIZE` (0 = unlimited), enforced while streaming a body of unknown length.
    pub max_request: u64,
    /// Response head held before streaming (ack mode): errors within it keep their exact status.
    pub head_limit: usize,
}

/// The HTTP answer of a committed call.
#[derive(Debug)]
pub struct CallResponse {
    /// Status (the runner's ResultStart, 200 if it sent none).
    pub status: u16,
    /// The function's response headers, in order, one entry per value.
    pub headers: Vec<(String, String)>,
    /// The body (buffered, or streaming in ack mode).
    pub body: Body,
}

fn internal(what: &str, runner: &Runner, detail: impl std::fmt::Display) -> FnError {
    tracing::warn!(runner = %runner.addr(), error = %detail, "{what}");
    metrics::counter!("lb_engage_errors_total", "stage" => what.to_owned()).increment(1);
    FnError::internal()
}

/// Message of a committed call whose runner connection broke (Fn answers 500 there).
pub const CONNECTION_LOST: &str = "runner connection lost before the call finished";
/// Start of the message of a committed call whose runner answered a gRPC error status instead of
/// CallFinished (Fn: 500).
pub const STREAM_ABORTED: &str = "runner aborted the call stream";
/// Message of a committed call whose stream ended without CallFinished (Fn: 500).
pub const NO_RESULT: &str = "runner ended the call without a result";

/// 502 for a committed call the runner side broke off: the stream failed (transport error, or an
/// error status instead of CallFinished) or ended without a result.
fn upstream_failure(
    stage: &str,
    runner: &Runner,
    detail: impl std::fmt::Display,
    message: impl Into<std::borrow::Cow<'static, str>>,
) -> FnError {
    let message = message.into();
    tracing::warn!(runner = %runner.addr(), error = %detail, stage, "{message}");
    metrics::counter!("lb_engage_errors_total", "stage" => stage.to_owned()).increment(1);
    FnError::new(502, message, false)
}

/// A broken committed stream: 502. A transport failure is a lost connection; a status the runner
/// sent instead of CallFinished is passed on in the message.
fn stream_broken(stage: &str, runner: &Runner, s: &tonic::Status) -> FnError {
    match s.source() {
        Some(src) => upstream_failure(stage, runner, format!("{s} ({src})"), CONNECTION_LOST),
        None => upstream_failure(
            stage,
            runner,
            s,
            format!("{STREAM_ABORTED}: {:?}: {}", s.code(), s.message()),
        ),
    }
}

/// 504 for a committed sync call the runner did not finish within its deadline.
fn deadline_passed(runner: &Runner, call: &EngageCall) -> FnError {
    let bound = call.sync_deadline.unwrap_or_default();
    tracing::warn!(runner = %runner.addr(), ?bound, "runner did not finish the call within its deadline");
    metrics::counter!("lb_engage_errors_total", "stage" => "deadline").increment(1);
    FnError::new(
        504,
        format!(
            "no result from the runner within {}s (fn timeout plus the LB's margin); the runner is unresponsive",
            bound.as_secs()
        ),
        false,
    )
}

/// How an Engage open (the stream, and the TryCall behind it) that failed is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenFailure {
    /// Fn's "too busy" answer (`grpc-status: 503`): try the next runner; this one stays up.
    Nack,
    /// No connection could be made (connect refused or timed out, name resolution, TLS handshake):
    /// try the next runner and mark this one down until the health loop sees it again.
    ConnectFailed,
    /// An established connection was lost (GOAWAY, reset, closed) while the call had not been
    /// accepted: the TryCall never left the LB, HTTP/2 says the runner did not process the stream
    /// (REFUSED_STREAM, a stream beyond a GOAWAY), or the runner had not acknowledged it (accept-ack
    /// mode: the function never started). Place the call again; the runner stays in the pool and the
    /// channel reconnects on the next attempt.
    ConnectionLost,
    /// The runner itself answered UNAVAILABLE (shutting down): try the next runner.
    Refused,
    /// The TryCall left the LB and the runner may have started the call, or the runner rejected the
    /// stream with another status: final, never sent to a second runner.
    Committed,
}

impl OpenFailure {
    /// True when the next runner may be tried (Fn's `placed == false`).
    pub fn retry(self) -> bool {
        self != OpenFailure::Committed
    }
}

/// True for a status the LB's transport made (connect, TLS, HTTP/2, keepalive): tonic keeps the
/// cause as the source. A status the runner sent has none.
pub fn is_transport_failure(s: &tonic::Status) -> bool {
    s.source().is_some()
}

/// True when an HTTP/2 error in the status' cause chain guarantees the runner did not process the
/// stream: REFUSED_STREAM, or a GOAWAY from the runner whose last stream precedes ours.
pub fn unprocessed_by_runner(s: &tonic::Status) -> bool {
    let mut cause = s.source();
    while let Some(e) = cause {
        if let Some(h2e) = e.downcast_ref::<h2::Error>()
            && (h2e.reason() == Some(h2::Reason::REFUSED_STREAM) || (h2e.is_go_away() && h2e.is_remote()))
        {
            return true;
        }
        cause = e.source();
    }
    false
}

/// True when the status comes from a failed connection attempt (not from a lost connection).
pub fn is_connect_failure(s: &tonic::Status) -> bool {
    s.source().is_some_and(ferrofn_common::tls::is_connect_failure)
}

/// Classifies a failed Engage open. `try_sent` says whether the transport took the TryCall from
/// the LB's outbound queue (the point of commitment, as Fn's successful `Send(TryCall)`);
/// `ack_mode` whether the runner only starts the function after acknowledging (so that a call it
/// never acknowledged never ran).
pub fn classify_open_failure(s: &tonic::Status, try_sent: bool, ack_mode: bool) -> OpenFailure {
    if status_is_too_busy(s) {
        OpenFailure::Nack
    } else if is_transport_failure(s) {
        if is_connect_failure(s) {
            OpenFailure::ConnectFailed
        } else if !try_sent || ack_mode || unprocessed_by_runner(s) {
            OpenFailure::ConnectionLost
        } else {
            OpenFailure::Committed
        }
    } else if s.code() == Code::Unavailable {
        OpenFailure::Refused
    } else {
        OpenFailure::Committed
    }
}

/// An Engage response stream. Once the runner's CallFinished has arrived, dropping the stream
/// before its end reads the rest (the trailers) in the background instead of resetting it, so that
/// no frame of a finished call ever meets a reset stream (h2 counts those against its reset limit
/// and sends GOAWAY at 1024 per connection). Before CallFinished, dropping it resets the stream:
/// that is how a client's cancel reaches the runner.
#[derive(Debug)]
struct RunnerStream {
    inner: Option<tonic::Streaming<RunnerMsg>>,
    finished: bool,
}

/// How long a finished call's stream is read for its trailers before it is dropped anyway.
const TRAILERS_LIMIT: Duration = Duration::from_secs(10);

impl RunnerStream {
    fn new(s: tonic::Streaming<RunnerMsg>) -> Self {
        Self {
            inner: Some(s),
            finished: false,
        }
    }

    async fn message(&mut self) -> Result<Option<RunnerMsg>, tonic::Status> {
        let Some(s) = self.inner.as_mut() else {
            return Ok(None);
        };
        let r = s.message().await;
        match &r {
            Ok(Some(RunnerMsg {
                body: Some(runner_msg::Body::Finished(_)),
            })) => self.finished = true,
            Ok(Some(_)) => {}
            // The end, or a broken stream: nothing left to read either way.
            Ok(None) | Err(_) => self.inner = None,
        }
        r
    }
}

impl Drop for RunnerStream {
    fn drop(&mut self) {
        if let Some(mut s) = self.inner.take()
            && self.finished
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(async move {
                let _ = tokio::time::timeout(TRAILERS_LIMIT, async {
                    while let Ok(Some(_)) = s.message().await {}
                })
                .await;
            });
        }
    }
}

/// A failed receive on an Engage stream.
#[derive(Debug)]
enum RecvFailure {
    /// The stream broke: a transport error or an error status from the runner.
    Status(tonic::Status),
    /// The sync call's deadline passed.
    Deadline,
}

/// The next runner message, bounded by the call's deadline.
async fn recv(
    stream: &mut RunnerStream,
    deadline: Option<Instant>,
) -> Result<Option<RunnerMsg>, RecvFailure> {
    match deadline {
        Some(d) => match tokio::time::timeout_at(d, stream.message()).await {
            Ok(r) => r.map_err(RecvFailure::Status),
            Err(_) => Err(RecvFailure::Deadline),
        },
        None => stream.message().await.map_err(RecvFailure::Status),
    }
}

/// The final error of a committed call whose receive failed.
fn recv_failed(stage: &str, runner: &Runner, call: &EngageCall, f: RecvFailure) -> FnError {
    match f {
        RecvFailure::Status(s) => stream_broken(stage, runner, &s),
        RecvFailure::Deadline => deadline_passed(runner, call),
    }
}

/// Fn's `isTooBusy` for a gRPC status: code 503 travels as a non-standard `grpc-status`, which tonic
/// reads as UNKNOWN; the raw value or the message tells it apart.
pub fn status_is_too_busy(s: &tonic::Status) -> bool {
    let raw = s.metadata().get("grpc-status").and_then(|v| v.to_str().ok()) == Some("503");
    raw || (s.code() == Code::Unknown && s.message().contains("too busy"))
}

fn finished_error(f: &CallFinished) -> FnError {
    FnError::from_code(f.error_code, f.error_str.clone()).with_user_error(f.error_user)
}

fn data_msg(data: Bytes, eof: bool) -> ClientMsg {
    ClientMsg {
        body: Some(client_msg::Body::Data(DataFrame { data, eof })),
    }
}

/// Reads a whole body, failing with 413 past `max` (0 = unlimited): covers chunked bodies too.
pub async fn read_limited(body: Body, max: u64) -> Result<Bytes, FnError> {
    let mut stream = body.into_data_stream();
    let mut buf = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            tracing::debug!(error = %e, "reading the request body failed");
            FnError::internal()
        })?;
        buf.extend_from_slice(&chunk);
        if max > 0 && buf.len() as u64 > max {
            return Err(FnError::request_too_large(buf.len() as u64, max));
        }
    }
    Ok(buf.freeze())
}

/// Runs one attempt of `call` on `runner`.
pub async fn try_runner(runner: Arc<Runner>, call: &EngageCall) -> Attempt<CallResponse, FnError> {
    let in_flight = runner.begin_call();
    // Detached calls carry their bound as the gRPC deadline instead.
    let deadline = call
        .sync_deadline
        .filter(|_| !call.detached)
        .map(|d| Instant::now() + d);
    // Ack mode needs the runner's capability; a body already buffered is simply replayed.
    let mut ack_mode = false;
    {
        let mut body = call.body.lock().await;
        if matches!(*body, BodyState::Stream(_)) {
            if runner.supports_accept_ack() {
                ack_mode = true;
            } else {
                // The pool changed under us: fall back to Fn's buffering for this call.
                let BodyState::Stream(b) = std::mem::replace(&mut *body, BodyState::Taken) else {
                    unreachable!("checked above")
                };
                match read_limited(b, call.max_request).await {
                    Ok(bytes) => *body = BodyState::Buffered(bytes),
                    Err(e) => return Attempt::Placed(Err(e)),
                }
            }
        } else if matches!(*body, BodyState::Taken) {
            return Attempt::Placed(Err(internal("body already consumed", &runner, "no replay")));
        }
    }

    let (tx, rx) = mpsc::channel::<ClientMsg>(WINDOW_FRAMES);
    let mut extensions = HashMap::new();
    if ack_mode {
        extensions.insert(ACCEPT_ACK_EXTENSION.to_owned(), "1".to_owned());
    }
    let try_msg = ClientMsg {
        body: Some(client_msg::Body::Try(TryCall {
            models_call_json: call.model_json.clone(),
            slot_hash_id: String::new(),
            extensions,
        })),
    };
    if tx.send(try_msg).await.is_err() {
        return Attempt::NotPlaced(FnError::server_busy());
    }
    // The transport polls the TryCall (always the first message) out of the queue only once the
    // stream is open on a live connection: until then a failure cannot have reached the runner.
    let try_sent = Arc::new(AtomicBool::new(false));
    let outbound = {
        let try_sent = try_sent.clone();
        ReceiverStream::new(rx).inspect(move |_| try_sent.store(true, Ordering::Release))
    };
    let mut req = tonic::Request::new(outbound);
    if let Ok(v) = MetadataValue::try_from(call.call_id.as_str()) {
        req.metadata_mut().insert("fn_request_id", v);
    }
    if let Some(tp) = call
        .traceparent
        .as_deref()
        .and_then(|t| MetadataValue::try_from(t).ok())
    {
        req.metadata_mut().insert("traceparent", tp);
    }
    if call.detached {
        req.set_timeout(call.detached_deadline);
    }

    // Fn mode: the body goes out at once, optimistically, while we wait for the answer.
    let sender = if ack_mode {
        None
    } else {
        let bytes = match &*call.body.lock().await {
            BodyState::Buffered(b) => b.clone(),
            _ => Bytes::new(),
        };
        let tx = tx.clone();
        Some(tokio::spawn(async move {
            for chunk in chunks(bytes) {
                if tx.send(data_msg(chunk, false)).await.is_err() {
                    return;
                }
            }
            let _ = tx.send(data_msg(Bytes::new(), true)).await;
        }))
    };
    // Abort the buffered sender if this attempt ends early (NACK, error).
    let mut sender_guard = sender.map(AbortOnDrop);

    let mut client = runner.client();
    // An Fn runner sends its response headers only with its first message, so for a sync call the
    // open can last as long as the function: the deadline bounds it too.
    let opened = match deadline {
        Some(d) => match tokio::time::timeout_at(d, client.engage(req)).await {
            Ok(r) => r,
            Err(_) if try_sent.load(Ordering::Acquire) => {
                return Attempt::Placed(Err(deadline_passed(&runner, call)));
            }
            Err(_) => {
                tracing::info!(runner = %runner.addr(), "engage open timed out before the TryCall left; trying the next runner");
                runner.set_state(RunnerState::Down);
                return Attempt::NotPlaced(FnError::server_busy());
            }
        },
        None => client.engage(req).await,
    };
    let mut stream = match opened {
        Ok(resp) => RunnerStream::new(resp.into_inner()),
        Err(s) => {
            let sent = try_sent.load(Ordering::Acquire);
            let class = classify_open_failure(&s, sent, ack_mode);
            let cause = s.source().map(ToString::to_string).unwrap_or_default();
            tracing::info!(runner = %runner.addr(), code = ?s.code(), error = %s.message(), %cause,
                try_sent = sent, ?class, "engage open failed");
            return match class {
                OpenFailure::Nack => nack(&runner),
                OpenFailure::ConnectFailed => {
                    // Skip it at once; the health loop brings it back when it answers again.
                    runner.set_state(RunnerState::Down);
                    metrics::counter!("lb_engage_open_retries_total", "class" => "connect_failed")
                        .increment(1);
                    Attempt::NotPlaced(FnError::server_busy())
                }
                OpenFailure::ConnectionLost => connection_lost(&runner, &s),
                OpenFailure::Refused => {
                    metrics::counter!("lb_engage_open_retries_total", "class" => "refused").increment(1);
                    Attempt::NotPlaced(FnError::server_busy())
                }
                OpenFailure::Committed => Attempt::Placed(Err(stream_broken("engage open", &runner, &s))),
            };
        }
    };

    if ack_mode {
        return ack_flow(runner, call, tx, stream, in_flight, deadline).await;
    }
    drop(tx);

    // Fn mode: buffer everything until CallFinished and the end of the stream.
    let mut status = 0_u16;
    let mut headers = Vec::new();
    let mut started = false;
    let mut body = BytesMut::new();
    loop {
        let msg = match recv(&mut stream, deadline).await {
            Ok(Some(m)) => m,
            Ok(None) => {
                return Attempt::Placed(Err(upstream_failure(
                    "engage receive",
                    &runner,
                    NO_EOF,
                    NO_RESULT,
                )));
            }
            Err(RecvFailure::Status(s)) if !started && status_is_too_busy(&s) => return nack(&runner),
            // HTTP/2 says the runner never processed the stream: place the call again.
            Err(RecvFailure::Status(s)) if !started && unprocessed_by_runner(&s) => {
                return connection_lost(&runner, &s);
            }
            Err(f) => return Attempt::Placed(Err(recv_failed("engage receive", &runner, call, f))),
        };
        match msg.body {
            Some(runner_msg::Body::ResultStart(rs)) => {
                apply_result_start(rs, &mut status, &mut headers);
                if call.detached && !started {
                    // The body may still be on its way (Fn acks when the call gets a slot, before
                    // the function has read its input): the sender lives on with the stream.
                    let sender = sender_guard.take();
                    return detached_ack(sender, stream, in_flight, runner, status, headers);
                }
                started = true;
            }
            Some(runner_msg::Body::Data(d)) => {
                started = true;
                if !call.detached {
                    body.extend_from_slice(&d.data);
                }
            }
            Some(runner_msg::Body::Finished(f)) => {
                record_finished(&f);
                if !f.success {
                    let err = finished_error(&f);
                    if err.is_nack() && !started {
                        return nack(&runner);
                    }
                    return Attempt::Placed(Err(err));
                }
                // Fn reads on to the end of the stream; extra messages are a protocol error.
                match recv(&mut stream, deadline).await {
                    Ok(None) | Err(_) => {}
                    Ok(Some(_)) => return Attempt::Placed(Err(internal(NO_EOF, &runner, "extra message"))),
                }
                let status = if status == 0 {
                    if call.detached { 202 } else { 200 }
                } else {
                    status
                };
                return Attempt::Placed(Ok(CallResponse {
                    status,
                    headers,
                    body: Body::from(body.freeze()),
                }));
            }
            None => tracing::debug!(runner = %runner.addr(), "ignoring an empty runner message"),
        }
    }
}

/// The connection to `runner` was lost before the call was accepted: place it again. The runner
/// stays in the pool (only a failed connect or the health check mark it down); the channel
/// reconnects on the next attempt.
fn connection_lost(runner: &Runner, s: &tonic::Status) -> Attempt<CallResponse, FnError> {
    tracing::info!(runner = %runner.addr(), error = %s, "connection lost before the runner accepted the call; placing it again");
    metrics::counter!("lb_engage_open_retries_total", "class" => "connection_lost").increment(1);
    Attempt::NotPlaced(FnError::server_busy())
}

fn nack(runner: &Runner) -> Attempt<CallResponse, FnError> {
    metrics::counter!("lb_engage_nacks_total", "runner" => runner.addr().to_owned()).increment(1);
    tracing::debug!(runner = %runner.addr(), "runner NACKed the call");
    Attempt::NotPlaced(FnError::server_busy())
}

fn record_finished(f: &CallFinished) {
    if f.execution_duration > 0 {
        metrics::histogram!("lb_runner_exec_latency_seconds").record(f.execution_duration as f64 / 1e9);
    }
    if f.scheduler_duration > 0 {
        metrics::histogram!("lb_runner_sched_latency_seconds").record(f.scheduler_duration as f64 / 1e9);
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// After a detached ack the stream must stay open until the function ends (closing it would cancel
/// the call on the runner).
/// Applies a runner's ResultStart to the response being built: its status when > 0 (as Fn's LB
/// does) and its headers, one entry per value.
fn apply_result_start(rs: CallResultStart, status: &mut u16, headers: &mut Vec<(String, String)>) {
    if let Some(call_result_start::Meta::Http(h)) = rs.meta {
        if h.status_code > 0 {
            *status = u16::try_from(h.status_code).unwrap_or(500);
        }
        headers.extend(h.headers.into_iter().map(|hh| (hh.key, hh.value)));
    }
}

/// A detached call's ack (the runner's first ResultStart): answers the client now (202 unless the
/// runner gave a status) and lets the call run to its end in the background, keeping `guard` (what
/// still feeds the request body) alive with the stream.
fn detached_ack<G: Send + 'static>(
    guard: G,
    stream: RunnerStream,
    in_flight: InFlight,
    runner: Arc<Runner>,
    status: u16,
    headers: Vec<(String, String)>,
) -> Attempt<CallResponse, FnError> {
    tokio::spawn(async move {
        let _guard = guard;
        drain_detached(stream, in_flight, runner).await;
    });
    Attempt::Placed(Ok(CallResponse {
        status: if status == 0 { 202 } else { status },
        headers,
        body: Body::empty(),
    }))
}

async fn drain_detached(mut stream: RunnerStream, _in_flight: InFlight, runner: Arc<Runner>) {
    loop {
        match stream.message().await {
            Ok(Some(RunnerMsg {
                body: Some(runner_msg::Body::Finished(f)),
            })) => {
                record_finished(&f);
                if !f.success {
                    tracing::info!(runner = %runner.addr(), call = %f.details, code = f.error_code,
                        error = %f.error_str, "detached call failed");
                }
            }
            Ok(Some(_)) => {}
            Ok(None) => return,
            Err(s) => {
                tracing::info!(runner = %runner.addr(), error = %s, "detached call stream ended with an error");
                return;
            }
        }
    }
}

/// Pumps the client body to the runner in frames, stopping at `max` bytes (0 = unlimited) with an
/// error on `over`.
async fn pump_body(body: Body, tx: mpsc::Sender<ClientMsg>, max: u64, over: oneshot::Sender<FnError>) {
    let mut stream = body.into_data_stream();
    let mut total = 0_u64;
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "client body read failed");
                let _ = over.send(FnError::internal());
                return;
            }
        };
        total += chunk.len() as u64;
        if max > 0 && total > max {
            let _ = over.send(FnError::request_too_large(total, max));
            return;
        }
        for piece in chunks(chunk) {
            if tx.send(data_msg(piece, false)).await.is_err() {
                return;
            }
        }
    }
    let _ = tx.send(data_msg(Bytes::new(), true)).await;
}

/// Takes the body for the committed attempt.
async fn take_body(call: &EngageCall) -> Body {
    match std::mem::replace(&mut *call.body.lock().await, BodyState::Taken) {
        BodyState::Stream(b) => b,
        BodyState::Buffered(b) => Body::from(b),
        BodyState::Taken => Body::empty(),
    }
}

async fn ack_flow(
    runner: Arc<Runner>,
    call: &EngageCall,
    tx: mpsc::Sender<ClientMsg>,
    mut stream: RunnerStream,
    in_flight: InFlight,
    deadline: Option<Instant>,
) -> Attempt<CallResponse, FnError> {
    // 1. Wait for the ack (a zero-length data frame) or a refusal.
    match recv(&mut stream, deadline).await {
        Ok(Some(RunnerMsg {
            body: Some(runner_msg::Body::Data(d)),
        })) if d.data.is_empty() => {}
        Ok(Some(RunnerMsg {
            body: Some(runner_msg::Body::Finished(f)),
        })) => {
            record_finished(&f);
            let err = if f.success {
                internal("ack", &runner, "finished before ack")
            } else {
                finished_error(&f)
            };
            if err.is_nack() {
                return nack(&runner);
            }
            return Attempt::Placed(Err(err));
        }
        // A detached call's 202 result start is its acceptance ack (the runner sends it once the
        // call holds a slot): stream the body in and answer 202 now.
        Ok(Some(RunnerMsg {
            body: Some(runner_msg::Body::ResultStart(rs)),
        })) if call.detached => {
            let (status, headers) = match rs.meta {
                Some(call_result_start::Meta::Http(h)) => (
                    u16::try_from(h.status_code)
                        .ok()
                        .filter(|s| *s > 0)
                        .unwrap_or(202),
                    h.headers.into_iter().map(|hh| (hh.key, hh.value)).collect(),
                ),
                None => (202, Vec::new()),
            };
            let body = take_body(call).await;
            let (over_tx, _over_rx) = oneshot::channel();
            let pump = AbortOnDrop(tokio::spawn(pump_body(body, tx, call.max_request, over_tx)));
            tokio::spawn(async move {
                let _pump = pump;
                drain_detached(stream, in_flight, runner).await;
            });
            return Attempt::Placed(Ok(CallResponse {
                status,
                headers,
                body: Body::empty(),
            }));
        }
        Ok(Some(other)) => {
            return Attempt::Placed(Err(internal(
                "ack",
                &runner,
                format!("unexpected message before ack: {other:?}"),
            )));
        }
        Ok(None) => {
            return Attempt::Placed(Err(upstream_failure(
                "ack",
                &runner,
                "stream ended before ack",
                NO_RESULT,
            )));
        }
        Err(RecvFailure::Status(s)) if status_is_too_busy(&s) => return nack(&runner),
        // The connection broke before the ack: the runner never started the function.
        Err(RecvFailure::Status(s)) if is_transport_failure(&s) => return connection_lost(&runner, &s),
        Err(f) => return Attempt::Placed(Err(recv_failed("ack", &runner, call, f))),
    }
    // 2. Committed: the body streams in behind the ack.
    let body = take_body(call).await;
    let (over_tx, mut over_rx) = oneshot::channel();
    let pump = AbortOnDrop(tokio::spawn(pump_body(body, tx, call.max_request, over_tx)));

    // 3. Read the response head; stream the rest once the head buffer is full.
    let mut status = 0_u16;
    let mut headers = Vec::new();
    let mut head = BytesMut::new();
    let mut started = false;
    let mut pump_running = true;
    loop {
        let msg = tokio::select! {
            m = recv(&mut stream, deadline) => m,
            r = &mut over_rx, if pump_running => match r {
                Ok(err) => return Attempt::Placed(Err(err)),
                // The pump finished the body normally.
                Err(_) => {
                    pump_running = false;
                    continue;
                }
            },
        };
        let msg = match msg {
            Ok(Some(m)) => m,
            Ok(None) => {
                return Attempt::Placed(Err(upstream_failure(
                    "engage receive",
                    &runner,
                    NO_EOF,
                    NO_RESULT,
                )));
            }
            Err(f) => return Attempt::Placed(Err(recv_failed("engage receive", &runner, call, f))),
        };
        match msg.body {
            Some(runner_msg::Body::ResultStart(rs)) => {
                apply_result_start(rs, &mut status, &mut headers);
                if call.detached && !started {
                    return detached_ack(pump, stream, in_flight, runner, status, headers);
                }
                started = true;
            }
            Some(runner_msg::Body::Data(d)) => {
                started = true;
                if call.detached {
                    continue;
                }
                head.extend_from_slice(&d.data);
                if head.len() >= call.head_limit {
                    let (btx, brx) = mpsc::channel::<Result<Bytes, std::io::Error>>(WINDOW_FRAMES);
                    let head = head.freeze();
                    tokio::spawn(stream_rest(
                        stream,
                        head,
                        btx,
                        pump,
                        in_flight,
                        runner.clone(),
                        deadline,
                    ));
                    let status = if status == 0 { 200 } else { status };
                    let body = Body::from_stream(ReceiverStream::new(brx));
                    return Attempt::Placed(Ok(CallResponse {
                        status,
                        headers,
                        body,
                    }));
                }
            }
            Some(runner_msg::Body::Finished(f)) => {
                record_finished(&f);
                if !f.success {
                    return Attempt::Placed(Err(finished_error(&f)));
                }
                let status = if status == 0 {
                    if call.detached { 202 } else { 200 }
                } else {
                    status
                };
                return Attempt::Placed(Ok(CallResponse {
                    status,
                    headers,
                    body: Body::from(head.freeze()),
                }));
            }
            None => {}
        }
    }
}

/// Forwards the rest of a streamed response. A late failure aborts the body (the client sees a
/// truncated response instead of a status, which is the price of not buffering).
async fn stream_rest(
    mut stream: RunnerStream,
    head: Bytes,
    out: mpsc::Sender<Result<Bytes, std::io::Error>>,
    _pump: AbortOnDrop,
    _in_flight: InFlight,
    runner: Arc<Runner>,
    deadline: Option<Instant>,
) {
    if out.send(Ok(head)).await.is_err() {
        return; // client gone: dropping the stream cancels the call on the runner
    }
    loop {
        let item = match recv(&mut stream, deadline).await {
            Ok(Some(RunnerMsg {
                body: Some(runner_msg::Body::Data(d)),
            })) => Ok(d.data),
            Ok(Some(RunnerMsg {
                body: Some(runner_msg::Body::Finished(f)),
            })) => {
                record_finished(&f);
                if f.success {
                    return;
                }
                tracing::info!(runner = %runner.addr(), code = f.error_code, error = %f.error_str,
                    "call failed after its response started streaming; aborting the body");
                Err(std::io::Error::other(f.error_str))
            }
            Ok(Some(_)) => continue,
            Ok(None) => Err(std::io::Error::other(NO_RESULT)),
            Err(RecvFailure::Status(s)) => {
                tracing::warn!(runner = %runner.addr(), error = %s, "{CONNECTION_LOST}; aborting the streamed body");
                Err(std::io::Error::other(CONNECTION_LOST))
            }
            Err(RecvFailure::Deadline) => {
                tracing::warn!(runner = %runner.addr(), "call deadline passed while streaming; aborting the body");
                Err(std::io::Error::other("call deadline passed"))
            }
        };
        let failed = item.is_err();
        if out.send(item).await.is_err() || failed {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn too_busy_detection() {
        assert!(status_is_too_busy(&tonic::Status::unknown(
            "Timed out - server too busy"
        )));
        assert!(!status_is_too_busy(&tonic::Status::unknown("boom")));
        assert!(!status_is_too_busy(&tonic::Status::internal("server too busy")));
    }

    #[test]
    fn open_failures_before_the_try_call_left_are_retried_whatever_the_code() {
        // A connect timeout reaches us as UNKNOWN "transport error" with the cause as source.
        let timeout = tonic::Status::from_error(Box::new(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            ferrofn_common::tls::ConnectFailed(std::io::Error::from(std::io::ErrorKind::TimedOut)),
        )));
        assert_eq!(timeout.code(), Code::Unknown);
        assert!(is_transport_failure(&timeout));
        assert_eq!(
            classify_open_failure(&timeout, false, false),
            OpenFailure::ConnectFailed
        );
        assert_eq!(
            classify_open_failure(&timeout, true, false),
            OpenFailure::ConnectFailed
        );
        // A lost connection (not a failed connect) after the TryCall left: the runner may run it.
        let lost = tonic::Status::from_error(Box::new(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "connection reset",
        )));
        assert_eq!(classify_open_failure(&lost, true, false), OpenFailure::Committed);
        assert!(!OpenFailure::Committed.retry());
        assert_eq!(
            classify_open_failure(&lost, false, false),
            OpenFailure::ConnectionLost
        );
        // In accept-ack mode nothing runs before the ack: placed again.
        assert_eq!(
            classify_open_failure(&lost, true, true),
            OpenFailure::ConnectionLost
        );
        assert!(OpenFailure::ConnectionLost.retry());
    }

    #[test]
    fn http2_refusals_are_retried_even_after_the_try_call_left() {
        let refused = tonic::Status::from_error(Box::new(h2::Error::from(h2::Reason::REFUSED_STREAM)));
        assert!(unprocessed_by_runner(&refused), "{refused:?}");
        assert_eq!(
            classify_open_failure(&refused, true, false),
            OpenFailure::ConnectionLost
        );
        // A reset for another reason after the TryCall left is final.
        let reset = tonic::Status::from_error(Box::new(h2::Error::from(h2::Reason::INTERNAL_ERROR)));
        assert!(!unprocessed_by_runner(&reset));
        assert_eq!(classify_open_failure(&reset, true, false), OpenFailure::Committed);
        assert_eq!(
            classify_open_failure(&reset, false, false),
            OpenFailure::ConnectionLost
        );
    }

    #[test]
    fn runner_statuses_at_open() {
        // Sent by the runner (no transport cause): UNAVAILABLE is a refusal, too busy a NACK,
        // anything else final.
        let unavailable = tonic::Status::unavailable("shutting down");
        assert!(!is_transport_failure(&unavailable));
        assert_eq!(
            classify_open_failure(&unavailable, true, false),
            OpenFailure::Refused
        );
        let busy = tonic::Status::unknown("Timed out - server too busy");
        assert_eq!(classify_open_failure(&busy, true, true), OpenFailure::Nack);
        let denied = tonic::Status::permission_denied("no");
        assert_eq!(
            classify_open_failure(&denied, false, false),
            OpenFailure::Committed
        );
    }

    #[tokio::test]
    async fn limited_read_rejects_over_limit_bodies() {
        let ok = read_limited(Body::from("abc"), 3).await.unwrap();
        assert_eq!(&ok[..], b"abc");
        let err = read_limited(Body::from("abcd"), 3).await.unwrap_err();
        assert_eq!(err.code(), 413);
        assert_eq!(read_limited(Body::from("abcd"), 0).await.unwrap().len(), 4);
    }
}
