//! The client side of Engage: one attempt on one runner. It opens the stream with the TryCall,
//! classifies what happens before the runner accepts the call (a NACK, a failed connect, a lost
//! connection -> try again; anything after acceptance is final), bounds a committed sync call by its
//! deadline and turns the runner's answer into an HTTP response through one finish path.
//!
//! Two modes, chosen per attempt in one place ([`body_mode`]):
//! - [`buffered`]: Fn's. The body is held in memory and sent optimistically behind the TryCall (so
//!   it can be replayed after a NACK); the response is held until CallFinished. Used with Fn runners,
//!   and for detached calls, whose body must not depend on the client connection once answered.
//! - [`streaming`]: with runners that advertise the accept-ack capability, the LB asks for the ack
//!   (TryCall extension [`ferrofn_proto::ext::ACCEPT_ACK`]), sends the body only once the runner
//!   says the call holds a slot, and streams both ways through bounded buffers; a head of
//!   [`HEAD_BUFFER`] bytes is held so that short responses still get exact error statuses.
//!
//! Streams are ended, not reset: the LB half-closes its side after the body (or at once when the
//! call ends early), and a finished call's stream is read to its trailers ([`RunnerStream`]); only a
//! cancelled call (the client went away) resets its stream, which is how the cancel reaches the
//! runner.

mod buffered;
mod streaming;

use std::collections::HashMap;
use std::error::Error as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tokio::sync::{Mutex, mpsc};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::metadata::MetadataValue;

use ferrofn_common::error::FnError;
use ferrofn_common::frames::chunks_of;
use ferrofn_proto::{
    CallFinished, CallResultStart, ClientMsg, DataFrame, RunnerMsg, TryCall, call_result_start, client_msg,
    runner_msg,
};

use crate::placer::Attempt;
use crate::pool::{InFlight, Runner, RunnerPool, RunnerState};

/// Default response bytes held before the LB commits to a status and starts streaming (ack mode).
pub const HEAD_BUFFER: usize = 64 * 1024;
/// Frames queued towards the runner or the client: with 10 KiB frames, a bounded window. 64 was
/// measured (BENCHMARKS.md): no faster in release and a higher RSS, so the window stays small.
pub(crate) const WINDOW_FRAMES: usize = 4;
/// Default data frame size between the LB and a ferrofn runner that advertises the `frames`
/// capability (`FERROFN_ENGAGE_FRAME_BYTES`): 6.4x fewer per-frame costs than 10 KiB when
/// streaming. 256 KiB measured no faster on the 2-core bench machine and left a runner at 22.5 MiB
/// RSS after the streaming scenarios (BENCHMARKS.md, round 3); the windows of 4 frames per
/// direction and call stay at 256 KiB with this size.
pub const DEFAULT_FRAME_BYTES: usize = 64 * 1024;
/// Largest request body sent inline in ack mode: a body of declared length up to this is read first
/// and goes out with the TryCall in one write, without waiting for the runner's ack (the runner
/// holds it in its HTTP/2 window until the call has a slot, and the LB keeps it for a replay after
/// a NACK). Saves one LB <-> runner round trip per small call.
pub const INLINE_BODY: u64 = ferrofn_proto::ext::MAX_INLINE_BODY;

/// Fn's text for a stream that ended without CallFinished (logs and metrics).
pub(crate) const NO_EOF: &str = "Purerunner missing EOF response";
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
    /// The body's length as the client declared it (`Content-Length`); `None` for a chunked body.
    pub declared_len: Option<u64>,
    /// `FN_MAX_REQUEST_SIZE` (0 = unlimited), enforced while streaming a body of unknown length.
    pub max_request: u64,
    /// Data frame size with a runner that takes large frames (else Fn's 10 KiB).
    pub frame_bytes: usize,
    /// Response head held before streaming (ack mode): errors within it keep their exact status.
    pub head_limit: usize,
    /// The pool the call is placed on (is there another runner to leave a silent one for?).
    pub pool: Arc<RunnerPool>,
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

pub(crate) fn internal(what: &str, runner: &Runner, detail: impl std::fmt::Display) -> FnError {
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
pub(crate) fn upstream_failure(
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
pub(crate) fn stream_broken(stage: &str, runner: &Runner, s: &tonic::Status) -> FnError {
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
pub(crate) fn deadline_passed(runner: &Runner, call: &EngageCall) -> FnError {
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
pub(crate) struct RunnerStream {
    inner: Option<tonic::Streaming<RunnerMsg>>,
    finished: bool,
    /// Told of every message (the runner is alive).
    runner: Arc<Runner>,
}

/// How long a finished call's stream is read for its trailers before it is dropped anyway.
const TRAILERS_LIMIT: Duration = Duration::from_secs(10);

impl RunnerStream {
    pub(crate) fn new(s: tonic::Streaming<RunnerMsg>, runner: Arc<Runner>) -> Self {
        Self {
            inner: Some(s),
            finished: false,
            runner,
        }
    }

    pub(crate) async fn message(&mut self) -> Result<Option<RunnerMsg>, tonic::Status> {
        let Some(s) = self.inner.as_mut() else {
            return Ok(None);
        };
        let r = s.message().await;
        match &r {
            Ok(Some(RunnerMsg {
                body: Some(runner_msg::Body::Finished(_)),
            })) => {
                self.finished = true;
                self.runner.heard();
            }
            Ok(Some(_)) => self.runner.heard(),
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
pub(crate) enum RecvFailure {
    /// The stream broke: a transport error or an error status from the runner.
    Status(tonic::Status),
    /// The sync call's deadline passed.
    Deadline,
}

/// The next runner message, bounded by the call's deadline.
pub(crate) async fn recv(
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
pub(crate) fn recv_failed(stage: &str, runner: &Runner, call: &EngageCall, f: RecvFailure) -> FnError {
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

pub(crate) fn data_msg(data: Bytes, eof: bool) -> ClientMsg {
    ClientMsg {
        body: Some(client_msg::Body::Data(DataFrame { data, eof })),
    }
}

/// Reads a whole body, failing with 413 past `max` (0 = unlimited): covers chunked bodies too.
/// The answer to a client whose request body could not be read: 408 when it stalled past the
/// LB's body idle timeout (`FERROFN_REQUEST_BODY_IDLE_TIMEOUT_MSECS`), 400 when it broke.
pub(crate) fn body_read_failed(e: &axum::Error) -> FnError {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if c.is::<tower_http::timeout::TimeoutError>() {
            tracing::info!("request body stalled past the idle timeout: answering 408");
            metrics::counter!("lb_request_body_timeouts_total").increment(1);
            return FnError::new(408, "Timed out waiting for the request body", true);
        }
        cause = c.source();
    }
    tracing::debug!(error = %e, "reading the request body failed");
    FnError::new(400, "Failed to read the request body", true)
}

pub async fn read_limited(body: Body, max: u64) -> Result<Bytes, FnError> {
    let mut stream = body.into_data_stream();
    let mut buf = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| body_read_failed(&e))?;
        buf.extend_from_slice(&chunk);
        if max > 0 && buf.len() as u64 > max {
            return Err(FnError::request_too_large(buf.len() as u64, max));
        }
    }
    Ok(buf.freeze())
}

/// How one attempt talks to its runner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Fn's: body in memory, sent behind the TryCall, response held until the end.
    Buffered,
    /// Accept-ack: body streamed after the runner's ack, response streamed after its head.
    Streaming,
}

/// The stream-or-buffer decision, the only one: streaming needs the runner's accept-ack capability;
/// a detached call is buffered (once answered 202 it must not depend on the client connection,
/// which a body still being read from that connection would); everything else streams. A body
/// that must be buffered is read here (413 past `max_request`), once: later attempts replay it.
async fn body_mode(runner: &Runner, call: &EngageCall) -> Result<Mode, FnError> {
    let mut body = call.body.lock().await;
    let buffer =
        call.detached || !runner.supports_accept_ack() || call.declared_len.is_some_and(|n| n <= INLINE_BODY);
    if buffer && matches!(*body, BodyState::Stream(_)) {
        let BodyState::Stream(b) = std::mem::replace(&mut *body, BodyState::Taken) else {
            unreachable!("checked above")
        };
        *body = BodyState::Buffered(read_limited(b, call.max_request).await?);
    }
    match &*body {
        BodyState::Taken => Err(internal("body already consumed", runner, "no replay")),
        _ if runner.supports_accept_ack() => Ok(Mode::Streaming),
        _ => Ok(Mode::Buffered),
    }
}

/// The body an ack-mode attempt sends inline, behind its TryCall: one already in memory (read
/// because it is small, see [`body_mode`]) and at most [`INLINE_BODY`]. `None`: streamed after the
/// ack.
async fn inline_body(call: &EngageCall) -> Option<Bytes> {
    match &*call.body.lock().await {
        BodyState::Buffered(b) if b.len() as u64 <= INLINE_BODY && !call.detached => Some(b.clone()),
        _ => None,
    }
}

/// Runs one attempt of `call` on `runner`.
pub async fn try_runner(runner: Arc<Runner>, call: &EngageCall) -> Attempt<CallResponse, FnError> {
    let in_flight = runner.begin_call();
    // Detached calls carry their bound as the gRPC deadline instead.
    let deadline = call
        .sync_deadline
        .filter(|_| !call.detached)
        .map(|d| Instant::now() + d);
    let mode = match body_mode(&runner, call).await {
        Ok(m) => m,
        Err(e) => return Attempt::Placed(Err(e)),
    };
    let ack_mode = mode == Mode::Streaming;

    let inline = match mode {
        Mode::Streaming => inline_body(call).await,
        Mode::Buffered => None,
    };
    // Fn's 10 KiB frames unless this runner takes larger ones (then asked for in the TryCall).
    let frame = if ack_mode && runner.supports_large_frames() {
        call.frame_bytes
    } else {
        ferrofn_proto::MAX_DATA_CHUNK
    };
    // Room for the TryCall, an inline body's frames and its eof: all queued before the open.
    let inline_frames = inline.as_ref().map_or(0, |b| b.len().div_ceil(frame) + 1);
    let (tx, rx) = mpsc::channel::<ClientMsg>(WINDOW_FRAMES.max(1 + inline_frames));
    let mut extensions = HashMap::new();
    if ack_mode {
        extensions.insert(
            ferrofn_proto::ext::ACCEPT_ACK.to_owned(),
            ferrofn_proto::ext::ON.to_owned(),
        );
    }
    if let Some(b) = &inline {
        extensions.insert(ferrofn_proto::ext::INLINE_BODY.to_owned(), b.len().to_string());
    }
    if frame > ferrofn_proto::MAX_DATA_CHUNK {
        extensions.insert(ferrofn_proto::ext::FRAME_BYTES.to_owned(), frame.to_string());
    }
    let try_msg = ClientMsg {
        body: Some(client_msg::Body::Try(TryCall {
            models_call_json: call.model_json.clone(),
            slot_hash_id: String::new(),
            extensions,
        })),
    };
    if tx.try_send(try_msg).is_err() {
        return Attempt::NotPlaced(FnError::server_busy());
    }
    if let Some(b) = &inline {
        for piece in chunks_of(b.clone(), frame).chain(std::iter::once(Bytes::new())) {
            let eof = piece.is_empty();
            if tx.try_send(data_msg(piece, eof)).is_err() {
                return Attempt::NotPlaced(FnError::server_busy());
            }
        }
    }
    // An inline body is queued whole: the LB's side ends behind it, in the same write.
    let tx = if inline.is_some() {
        drop(tx);
        None
    } else {
        Some(tx)
    };
    // The transport polls the TryCall (always the first message) out of the queue only once the
    // stream is open on a live connection: until then a failure cannot have reached the runner.
    let try_sent = Arc::new(AtomicBool::new(false));
    let try_left = Arc::new(tokio::sync::Notify::new());
    let outbound = {
        let (try_sent, try_left) = (try_sent.clone(), try_left.clone());
        ReceiverStream::new(rx).inspect(move |_| {
            if !try_sent.swap(true, Ordering::AcqRel) {
                try_left.notify_one();
            }
        })
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

    // Fn mode: the body goes out at once, optimistically, while we wait for the answer; the sender
    // is aborted (and the LB's side closed) if the attempt ends first.
    let sender = match mode {
        Mode::Buffered => match &tx {
            Some(tx) => Some(buffered::send_body(call, tx.clone()).await),
            None => None,
        },
        Mode::Streaming => None,
    };

    let mut client = runner.client();
    let open = client.engage(req);
    // An Fn runner sends its response headers only with its first message, so for a sync call the
    // open can last as long as the function: the deadline bounds it too.
    let past_deadline = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    // A ferrofn runner answers at once, before queueing the call: silence once the TryCall left
    // means a runner cut off or stalled, and the call it never acknowledged never ran.
    let answer_timeout = runner.answer_timeout().filter(|_| ack_mode);
    let unanswered = async {
        match answer_timeout {
            Some(t) => {
                try_left.notified().await;
                silent_for(&runner, t, &call.pool).await;
            }
            None => std::future::pending().await,
        }
    };
    let opened = tokio::select! {
        r = open => r,
        () = unanswered => return no_answer(&runner, answer_timeout.unwrap_or_default()),
        () = past_deadline => {
            if try_sent.load(Ordering::Acquire) {
                return Attempt::Placed(Err(deadline_passed(&runner, call)));
            }
            tracing::info!(runner = %runner.addr(), "engage open timed out before the TryCall left; trying the next runner");
            runner.set_state(RunnerState::Down, "engage open timed out before the TryCall left");
            return Attempt::NotPlaced(FnError::server_busy());
        }
    };
    let stream = match opened {
        Ok(resp) => {
            runner.mark_answered();
            RunnerStream::new(resp.into_inner(), runner.clone())
        }
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
                    let why = format!("cannot connect: {}", ferrofn_common::exit::grpc_status(&s));
                    runner.set_state(RunnerState::Down, &why);
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
    let attempt = Engaged {
        runner,
        call,
        stream,
        in_flight,
        deadline,
    };
    match (mode, sender) {
        (Mode::Streaming, _) => streaming::run(attempt, tx, frame).await,
        (Mode::Buffered, sender) => {
            drop(tx);
            buffered::run(attempt, sender).await
        }
    }
}

/// An attempt whose stream is open.
pub(crate) struct Engaged<'a> {
    runner: Arc<Runner>,
    call: &'a EngageCall,
    stream: RunnerStream,
    in_flight: InFlight,
    deadline: Option<Instant>,
}

/// The connection to `runner` was lost before the call was accepted: place it again. The runner
/// stays in the pool (only a failed connect or the health check mark it down); the channel
/// reconnects on the next attempt.
fn connection_lost(runner: &Runner, s: &tonic::Status) -> Attempt<CallResponse, FnError> {
    tracing::info!(runner = %runner.addr(), error = %s, "connection lost before the runner accepted the call; placing it again");
    metrics::counter!("lb_engage_open_retries_total", "class" => "connection_lost").increment(1);
    Attempt::NotPlaced(FnError::server_busy())
}

/// Resolves once `runner` has sent nothing at all (on this stream, on any other, to a probe) for
/// `t` since now, and another runner is up and answering. A runner that is merely loaded keeps
/// sending on its other streams, so it is never left; with nowhere else to go the call waits here
/// (for the keepalive verdict, or the answer).
async fn silent_for(runner: &Runner, t: Duration, pool: &RunnerPool) {
    let left = Instant::now();
    loop {
        let quiet = runner.quiet_for().min(left.elapsed());
        if quiet < t {
            tokio::time::sleep(t - quiet).await;
            continue;
        }
        // Let the connection read what may already be waiting (a starved LB wakes its timers and
        // its sockets together) before judging.
        tokio::time::sleep(JUDGE_PAUSE).await;
        if runner.quiet_for() >= t && pool.answering_alternative(runner) {
            return;
        }
        if runner.quiet_for() >= t {
            tokio::time::sleep(t).await;
        }
    }
}

/// See [`silent_for`].
const JUDGE_PAUSE: Duration = Duration::from_millis(5);

/// An accept-ack runner left the stream unanswered past `waited` after the TryCall left: dropping
/// the stream resets it (a runner that is merely slow cancels the call before accepting it), the
/// runner is avoided until it answers again, and the call goes to the next runner.
fn no_answer(runner: &Runner, waited: Duration) -> Attempt<CallResponse, FnError> {
    tracing::info!(runner = %runner.addr(), waited_ms = waited.as_millis() as u64,
        "runner did not answer the Engage stream; placing the call again");
    runner.mark_unanswered();
    metrics::counter!("lb_engage_open_retries_total", "class" => "no_answer").increment(1);
    Attempt::NotPlaced(FnError::server_busy())
}

/// A committed call whose stream ended without CallFinished: 502 (Fn: 500).
fn ended_without_result(runner: &Runner) -> Attempt<CallResponse, FnError> {
    Attempt::Placed(Err(upstream_failure("engage receive", runner, NO_EOF, NO_RESULT)))
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
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Status and headers of the response being built from the runner's ResultStart.
#[derive(Debug, Default)]
pub(crate) struct ResponseHead {
    /// The runner's status (0: none given yet).
    status: u16,
    headers: Vec<(String, String)>,
}

impl ResponseHead {
    /// Applies a ResultStart: its status when > 0 (as Fn's LB does) and its headers, one entry per
    /// value.
    fn apply(&mut self, rs: CallResultStart) {
        if let Some(call_result_start::Meta::Http(h)) = rs.meta {
            if h.status_code > 0 {
                self.status = u16::try_from(h.status_code).unwrap_or(500);
            }
            self.headers
                .extend(h.headers.into_iter().map(|hh| (hh.key, hh.value)));
        }
    }

    /// The response with `body`: the runner's status, else 202 for a detached call, else 200.
    fn respond(self, detached: bool, body: Body) -> CallResponse {
        let status = match self.status {
            0 if detached => 202,
            0 => 200,
            s => s,
        };
        CallResponse {
            status,
            headers: self.headers,
            body,
        }
    }
}

/// The one finish path, for both modes: the runner's CallFinished turns what was received into the
/// call's answer. A failure before anything started that is Fn's "too busy" is a NACK (try the next
/// runner); any other failure is final with the runner's code; success answers `head` and `body`.
fn finish(
    runner: &Runner,
    f: &CallFinished,
    started: bool,
    head: ResponseHead,
    detached: bool,
    body: Body,
) -> Attempt<CallResponse, FnError> {
    record_finished(f);
    if !f.success {
        let err = finished_error(f);
        if err.is_nack() && !started {
            return nack(runner);
        }
        return Attempt::Placed(Err(err));
    }
    Attempt::Placed(Ok(head.respond(detached, body)))
}

/// A detached call's ack (the runner's first ResultStart): answers the client now (202 unless the
/// runner gave a status) and lets the call run to its end in the background, keeping `guard` (what
/// still feeds the request body) alive with the stream. Nothing of it depends on the client
/// connection any more: the body comes from memory (see [`body_mode`]).
fn detached_ack<G: Send + 'static>(
    guard: G,
    attempt: Engaged<'_>,
    head: ResponseHead,
) -> Attempt<CallResponse, FnError> {
    let Engaged {
        runner,
        stream,
        in_flight,
        ..
    } = attempt;
    tokio::spawn(async move {
        let _guard = guard;
        drain_detached(stream, in_flight, runner).await;
    });
    Attempt::Placed(Ok(head.respond(true, Body::empty())))
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
