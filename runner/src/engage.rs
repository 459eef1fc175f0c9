//! One Engage stream (engage-protocol.md §2.4): TryCall -> admit or NACK -> body in with back-pressure
//! -> ResultStart once, Data frames <= 10240 bytes -> always CallFinished. Adds decisions.md (2)'s accept
//! ack and, for an LB that asked for it, full duplex (the answer streams while the body comes in).

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferrofn_common::call::CallModel;
use ferrofn_common::datetime::DateTime;
use ferrofn_common::error::FnError;
use ferrofn_proto::{
    CallFinished, CallResultStart, ClientMsg, DataFrame, HttpHeader, HttpRespMeta, MAX_DATA_CHUNK, RunnerMsg,
    TryCall, call_result_start, client_msg, runner_msg,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::agent::{Agent, PreparedCall, Slot};
use crate::fdk::{FdkBody, FdkError, FdkRequest};

/// Body chunks buffered between the gRPC stream and the function (the back-pressure window). 64
/// was measured (BENCHMARKS.md): no faster in release and a higher RSS, so it stays small.
const BODY_WINDOW: usize = 4;

/// How long a 200 that arrives before the LB's eof frame waits for that frame before it counts as
/// Fn's premature write. Fn checks at the instant the head arrives, which makes a function that
/// streams its answer while reading (an echo) fail at random; a short grace keeps the rule for
/// functions that really answer without reading, and lets small streaming answers work. Applies to
/// Fn mode only: an LB that asked for the accept ack gets full duplex (see [`Duplex`]).
const PREMATURE_WRITE_GRACE: Duration = Duration::from_millis(500);

/// Whether the function's answer may be relayed while the request body is still streaming in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Duplex {
    /// Fn mode: a response head before the LB's eof frame is a premature write (502) once the
    /// grace has passed. An Fn LB buffers the whole response anyway, so nothing is lost.
    Half,
    /// Accept-ack mode (the LB asked for `ferrofn-accept-ack`): the head and data are relayed at
    /// once while the feeder keeps pushing the body; both directions stay bounded by their windows.
    Full,
}

/// Live counters reported by Status.
#[derive(Debug, Default)]
pub struct Counters {
    /// Engage handlers running now.
    pub inflight: AtomicI64,
    /// Engage streams accepted.
    pub received: AtomicU64,
    /// Streams that ended without a NACK (decisions.md: Fn counted every stream).
    pub handled: AtomicU64,
}

/// What every Engage stream shares.
#[derive(Debug, Clone)]
pub struct EngageContext {
    /// The agent.
    pub agent: Agent,
    /// Calls naming this image are refused (400); it is the status image.
    pub status_image: Option<String>,
    /// Counters for Status.
    pub counters: Arc<Counters>,
    /// Set when draining: new calls are NACKed.
    pub draining: CancellationToken,
}

type Out = mpsc::Sender<Result<RunnerMsg, tonic::Status>>;

fn msg(body: runner_msg::Body) -> Result<RunnerMsg, tonic::Status> {
    Ok(RunnerMsg { body: Some(body) })
}

/// What the LB sent as gRPC metadata with the stream.
#[derive(Debug, Clone, Default)]
pub struct StreamMeta {
    /// `fn_request_id` (logging only, as in Fn).
    pub request_id: Option<String>,
    /// W3C `traceparent` of the LB's span.
    pub traceparent: Option<String>,
}

impl StreamMeta {
    /// Reads the metadata of an Engage request.
    pub fn from_metadata(md: &tonic::metadata::MetadataMap) -> Self {
        let get = |k: &str| md.get(k).and_then(|v| v.to_str().ok()).map(str::to_string);
        StreamMeta {
            request_id: get("fn_request_id"),
            traceparent: get("traceparent"),
        }
    }

    /// The trace id of a valid `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`).
    fn trace(&self) -> Option<(&str, &str)> {
        let tp = self.traceparent.as_deref()?;
        let parts: Vec<&str> = tp.split('-').collect();
        let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
        (parts.len() == 4 && hex(parts[0], 2) && hex(parts[1], 32) && hex(parts[2], 16) && hex(parts[3], 2))
            .then(|| (parts[1], parts[3]))
    }

    /// The `traceparent` for the function: same trace, this runner's hop as the parent.
    pub fn child_traceparent(&self) -> Option<String> {
        let (trace, flags) = self.trace()?;
        Some(format!("00-{trace}-{:016x}-{flags}", rand::random::<u64>() | 1))
    }
}

/// When the stream's response headers may go out. The headers are sent as soon as the stream's
/// call knows how it starts without waiting: its ack queued (a free slot), its answer queued (a
/// NACK, an error), or the moment it has to wait for anything (the TryCall, a slot): then the
/// headers go at once as before, which is what an LB's answer timeout relies on. In the common
/// warm case headers and ack leave in one write, and the LB wakes once for both.
#[derive(Debug)]
struct Answer(Option<oneshot::Sender<()>>);

impl Answer {
    /// Lets the headers go (idempotent).
    fn now(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

/// Serves one Engage stream: the returned receiver is the response stream, and the oneshot
/// resolves (or is dropped) when its headers may be sent (see [`Answer`]).
pub fn engage(
    ctx: EngageContext,
    inbound: tonic::Streaming<ClientMsg>,
    meta: StreamMeta,
) -> (
    mpsc::Receiver<Result<RunnerMsg, tonic::Status>>,
    oneshot::Receiver<()>,
) {
    let (tx, rx) = mpsc::channel(BODY_WINDOW);
    let (answer_tx, answer_rx) = oneshot::channel();
    tokio::spawn(async move {
        ctx.counters.received.fetch_add(1, Ordering::Relaxed);
        let n = ctx.counters.inflight.fetch_add(1, Ordering::Relaxed) + 1;
        crate::metrics::inflight(n);
        let mut answer = Answer(Some(answer_tx));
        let nacked = run_stream(&ctx, inbound, tx, &meta, &mut answer).await;
        if !nacked {
            ctx.counters.handled.fetch_add(1, Ordering::Relaxed);
        }
        let n = ctx.counters.inflight.fetch_sub(1, Ordering::Relaxed) - 1;
        crate::metrics::inflight(n);
    });
    (rx, answer_rx)
}

/// Returns true when the stream ended in a NACK. The response stream ends (`tx` is dropped) as
/// soon as the last message is queued, so that the trailers go out with it.
async fn run_stream(
    ctx: &EngageContext,
    mut inbound: tonic::Streaming<ClientMsg>,
    tx: Out,
    meta: &StreamMeta,
    answer: &mut Answer,
) -> bool {
    let first = {
        let next = inbound.message();
        tokio::pin!(next);
        match futures::poll!(&mut next) {
            std::task::Poll::Ready(m) => m,
            std::task::Poll::Pending => {
                answer.now();
                next.await
            }
        }
    };
    let try_call = match first {
        Ok(Some(ClientMsg {
            body: Some(client_msg::Body::Try(t)),
        })) => t,
        Ok(_) => {
            let _ = tx
                .send(Err(tonic::Status::unknown(FnError::expected_try().message())))
                .await;
            drain_later(inbound);
            return false;
        }
        Err(status) => {
            // A reset by the LB (nobody reads this answer) or a message the runner refuses, e.g.
            // one over the size limit (OUT_OF_RANGE): the client gets that status, not an empty OK.
            debug!(%status, "engage stream broke before the TryCall");
            let _ = tx.send(Err(status)).await;
            return false;
        }
    };
    crate::metrics::try_call();
    let t0 = Instant::now();
    let broken = Arc::new(OnceLock::new());
    let (finished, outcome) = handle_try(ctx, try_call, inbound, &tx, meta, &broken, answer).await;
    let nack = !finished.success && finished.error_code == 503;
    crate::metrics::call_finished(&outcome, t0.elapsed());
    if tx.send(msg(runner_msg::Body::Finished(finished))).await.is_err() {
        debug!("LB went away before CallFinished");
    }
    // The stream broke while the body came in: after the CallFinished (always sent), the stream
    // ends with what broke it, e.g. OUT_OF_RANGE for a frame over the size limit.
    if let Some(status) = broken.get() {
        let _ = tx.send(Err(status.clone())).await;
    }
    drop(tx);
    nack
}

/// Timestamps and launch timings of one call, for CallFinished.
#[derive(Debug, Default)]
struct Times {
    created: DateTime,
    started: DateTime,
    completed: DateTime,
    image_pull_wait_ns: i64,
    ctr_prep_ns: i64,
    ctr_create_ns: i64,
    init_ns: i64,
}

fn finished(call_id: &str, image: &str, result: &Result<(), FnError>, t: &Times) -> CallFinished {
    let (created, started, completed) = if t.created.is_zero() {
        (String::new(), String::new(), String::new())
    } else if t.started.is_zero() {
        (t.created.to_string(), String::new(), String::new())
    } else {
        let completed = if t.completed.is_zero() {
            DateTime::now()
        } else {
            t.completed
        };
        (
            t.created.to_string(),
            t.started.to_string(),
            completed.to_string(),
        )
    };
    let completed_dt = if t.completed.is_zero() {
        DateTime::now()
    } else {
        t.completed
    };
    let (success, error_code, error_str, error_user) = match result {
        Ok(()) => (true, 0, String::new(), false),
        Err(e) => (
            false,
            i32::from(e.code()),
            e.message().to_string(),
            e.is_user_error(),
        ),
    };
    CallFinished {
        success,
        details: call_id.to_string(),
        error_code,
        error_str,
        created_at: created,
        started_at: started,
        completed_at: completed,
        scheduler_duration: t.started.nanos_since(t.created),
        execution_duration: if t.started.is_zero() {
            0
        } else {
            completed_dt.nanos_since(t.started)
        },
        error_user,
        image: image.to_string(),
        image_pull_wait_duration: t.image_pull_wait_ns,
        ctr_prep_duration: t.ctr_prep_ns,
        ctr_create_duration: t.ctr_create_ns,
        init_start_time: t.init_ns,
    }
}

/// The outcome of a call whose stream the LB reset before it ended (Fn's LB counts such calls as
/// `canceled` too).
const CANCELED: &str = "canceled";

/// The `outcome` label of `ferrofn_runner_calls_total` for a call's result.
fn outcome_label(r: &Result<(), FnError>) -> String {
    match r {
        Ok(()) => "ok".into(),
        Err(e) if e.code() == 503 => "nack".into(),
        Err(e) => e.code().to_string(),
    }
}

/// Parses and admits the TryCall, then runs the call. Returns the CallFinished to send.
async fn handle_try(
    ctx: &EngageContext,
    try_call: TryCall,
    inbound: tonic::Streaming<ClientMsg>,
    tx: &Out,
    meta: &StreamMeta,
    broken: &Arc<OnceLock<tonic::Status>>,
    answer: &mut Answer,
) -> (CallFinished, String) {
    let mut times = Times::default();
    let mut model = match CallModel::from_json(&try_call.models_call_json) {
        Ok(m) => m,
        Err(e) => {
            // Fn: a bad cpus value is an API 400; any other decode failure is not an API error (0).
            let err = e
                .api_error()
                .unwrap_or_else(|| FnError::new(0, e.to_string(), false));
            let r = Err(err);
            drain_later(inbound);
            return (finished("", "", &r, &times), outcome_label(&r));
        }
    };
    let trace_id = meta.trace().map(|(t, _)| t.to_string()).unwrap_or_default();
    let request_id = meta.request_id.clone().unwrap_or_default();
    let span = info_span!("call", call_id = %model.id, app_id = %model.app_id, fn_id = %model.fn_id,
                          request_id = %request_id, trace_id = %trace_id);
    let traceparent = meta.child_traceparent();
    async move {
        let call_id = model.id.clone();
        let image = model.image.clone();
        // The runner's own clock: created now, not started, not completed.
        model.created_at = DateTime::now();
        model.started_at = DateTime::ZERO;
        model.completed_at = DateTime::ZERO;
        times.created = model.created_at;

        let admitted: Result<PreparedCall, FnError> =
            if ctx.status_image.as_deref() == Some(model.image.as_str()) {
                Err(FnError::invalid_image())
            } else if ctx.draining.is_cancelled() {
                crate::metrics::nack("draining");
                Err(FnError::server_busy())
            } else {
                ctx.agent.prepare(model, &try_call.slot_hash_id)
            };
        let call = match admitted {
            Ok(c) => c,
            Err(e) => {
                let r = Err(e);
                drain_later(inbound);
                return (finished(&call_id, &image, &r, &times), outcome_label(&r));
            }
        };
        let want_ack = try_call
            .extensions
            .get(ferrofn_proto::ext::ACCEPT_ACK)
            .is_some_and(|v| v == ferrofn_proto::ext::ON);
        let asked = Asked {
            ack: want_ack,
            inline: inline_len(&try_call).filter(|_| want_ack),
            frame: frame_len(&try_call)
                .filter(|_| want_ack)
                .unwrap_or(MAX_DATA_CHUNK),
        };
        let r = run_call(
            ctx,
            &call,
            inbound,
            tx,
            asked,
            (traceparent, answer),
            broken,
            &mut times,
        )
        .await;
        // The LB reset the stream (its client went away, or it placed the call elsewhere after
        // this runner answered too late): nobody reads the answer, and the call is no failure of
        // the function or the runner.
        let canceled = r.is_err() && tx.is_closed();
        match &r {
            Err(_) if canceled => info!("call canceled: the LB reset its stream"),
            Err(e) => info!(code = e.code(), error = e.message(), "call failed"),
            Ok(()) => debug!("call succeeded"),
        }
        let outcome = if canceled {
            CANCELED.to_string()
        } else {
            outcome_label(&r)
        };
        (finished(&call_id, &image, &r, &times), outcome)
    }
    .instrument(span)
    .await
}

/// What the LB asked for in the TryCall's extensions (ferrofn's additions; none from an Fn LB).
#[derive(Debug, Clone, Copy)]
struct Asked {
    /// The accept ack, and with it full duplex.
    ack: bool,
    /// The length of a body sent inline.
    inline: Option<u64>,
    /// The data frame size for this stream (Fn's 10 KiB unless the LB asked for more).
    frame: usize,
}

/// The frame size an LB asked for ([`ferrofn_proto::ext::FRAME_BYTES`]), within 10 KiB and
/// [`ferrofn_proto::ext::MAX_FRAME_BYTES`].
fn frame_len(t: &TryCall) -> Option<usize> {
    t.extensions
        .get(ferrofn_proto::ext::FRAME_BYTES)
        .and_then(|v| v.parse::<usize>().ok())
        .map(|n| n.clamp(MAX_DATA_CHUNK, ferrofn_proto::ext::MAX_FRAME_BYTES))
}

/// The announced length of a body sent inline behind the TryCall ([`ferrofn_proto::ext::INLINE_BODY`]);
/// `None` when absent, unreadable or over the limit (then the body is read as a stream).
fn inline_len(t: &TryCall) -> Option<u64> {
    t.extensions
        .get(ferrofn_proto::ext::INLINE_BODY)
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|n| *n <= ferrofn_proto::ext::MAX_INLINE_BODY)
}

/// Reads a body the LB sent inline: data frames up to its eof, `len` bytes in all. Anything else
/// (another message, more or fewer bytes, the LB's side closed first) is Fn's "expected data"
/// protocol failure; a broken stream is recorded in `broken`.
async fn read_inline(
    inbound: &mut tonic::Streaming<ClientMsg>,
    len: u64,
    broken: &OnceLock<tonic::Status>,
) -> Result<Bytes, FnError> {
    let mut body = bytes::BytesMut::new();
    loop {
        match inbound.message().await {
            Ok(Some(ClientMsg {
                body: Some(client_msg::Body::Data(DataFrame { data, eof })),
            })) => {
                if (body.len() + data.len()) as u64 > len {
                    return Err(FnError::expected_data());
                }
                body.extend_from_slice(&data);
                if eof {
                    return if body.len() as u64 == len {
                        Ok(body.freeze())
                    } else {
                        Err(FnError::expected_data())
                    };
                }
            }
            Ok(_) => return Err(FnError::expected_data()),
            Err(status) => {
                debug!(%status, "engage stream broke while receiving the inline body");
                let e = broken_stream(&status);
                let _ = broken.set(status);
                return Err(e);
            }
        }
    }
}

/// After an inline body: the stream's end is normally already there (the LB half-closes behind its
/// eof); otherwise it is read in the background (see [`drain_inbound`]).
fn finish_inbound(mut inbound: tonic::Streaming<ClientMsg>) {
    use futures::FutureExt;
    if !matches!(inbound.message().now_or_never(), Some(Ok(None) | Err(_))) {
        drain_later(inbound);
    }
}

/// How long the runner keeps reading an Engage stream after its call ended, waiting for the LB to
/// close its side. A ferrofn LB half-closes right after its eof frame (or at once on a NACK); a Go
/// LB cancels the stream as soon as it has our CallFinished and trailers. Only a peer that does
/// neither is cut off here, with the reset HTTP/2 then sends (counted against h2's local reset
/// limit, which is the protection against such peers).
pub const DRAIN_LIMIT: Duration = Duration::from_secs(10);

/// Reads and discards what the LB still sends until it half-closes or resets the stream (bounded by
/// [`DRAIN_LIMIT`]). Dropping a request stream the peer is still sending on makes HTTP/2 reset it,
/// and frames already in flight then hit a closed stream: h2 counts each such stream as a local
/// error and sends GOAWAY once 1024 of them accumulate on one connection (engage-protocol.md).
async fn drain_inbound(mut inbound: tonic::Streaming<ClientMsg>) {
    let drained = tokio::time::timeout(DRAIN_LIMIT, async {
        while let Ok(Some(_)) = inbound.message().await {}
    })
    .await;
    if drained.is_err() {
        debug!("LB kept the call stream open after the call ended; resetting it");
        crate::metrics::stream_drain_timeout();
    }
}

/// Drains `inbound` in the background (a call that ended before its body was read).
fn drain_later(inbound: tonic::Streaming<ClientMsg>) {
    tokio::spawn(drain_inbound(inbound));
}

/// Feeds LB data frames into the function's body channel until `eof`. Sets `protocol_error` and
/// cancels the call when the LB sends something else, and records the status in `broken` and cancels
/// when the stream breaks. Once the call is over (`cancel`), it reads the rest of the stream to its
/// end (see [`drain_inbound`]).
async fn feed_body(
    mut inbound: tonic::Streaming<ClientMsg>,
    body: mpsc::Sender<Bytes>,
    eof_seen: watch::Sender<bool>,
    protocol_error: Arc<AtomicBool>,
    broken: Arc<OnceLock<tonic::Status>>,
    cancel: CancellationToken,
) {
    let mut body = Some(body);
    let mut eof = false;
    loop {
        let m = tokio::select! {
            m = inbound.message() => m,
            _ = cancel.cancelled() => break,
        };
        match m {
            Ok(Some(ClientMsg {
                body: Some(client_msg::Body::Data(DataFrame { data, eof: last })),
            })) if !eof => {
                if let Some(b) = &body
                    && !data.is_empty()
                {
                    // Waits while the function does not read: back-pressure to the LB via HTTP/2.
                    let sent = tokio::select! {
                        r = b.send(data) => r.is_ok(),
                        _ = cancel.cancelled() => break,
                    };
                    if !sent {
                        // The function stopped reading (it answered or died): drop the rest.
                        body = None;
                    }
                }
                if last {
                    eof = true;
                    eof_seen.send_replace(true);
                    drop(body.take());
                    // Keep reading: a ferrofn LB half-closes now, a Go LB only after the call ends.
                }
            }
            // Anything after the eof frame is ignored (Fn's runner stops reading there).
            Ok(Some(_)) if eof => {}
            Ok(Some(_)) => {
                protocol_error.store(true, Ordering::SeqCst);
                cancel.cancel();
                break;
            }
            // The LB closed its side: after the eof frame that is the normal end; before it, Fn's
            // "expected data" protocol failure. Either way the stream is read to its end.
            Ok(None) => {
                if !eof {
                    protocol_error.store(true, Ordering::SeqCst);
                    cancel.cancel();
                }
                return;
            }
            Err(status) => {
                debug!(%status, "engage stream broke while receiving the body");
                let _ = broken.set(status);
                cancel.cancel();
                return;
            }
        }
    }
    drop(body);
    drain_inbound(inbound).await;
}

#[allow(clippy::too_many_arguments)]
async fn run_call(
    ctx: &EngageContext,
    call: &PreparedCall,
    mut inbound: tonic::Streaming<ClientMsg>,
    tx: &Out,
    asked: Asked,
    (traceparent, answer): (Option<String>, &mut Answer),
    broken: &Arc<OnceLock<tonic::Status>>,
    times: &mut Times,
) -> Result<(), FnError> {
    let cancel = CancellationToken::new();
    let _cancel_on_exit = cancel.clone().drop_guard();
    let protocol_error = Arc::new(AtomicBool::new(false));
    // An inline body is read here and now (it came with the TryCall); any other is fed to the
    // function by its own task as it arrives, with back-pressure.
    let want_ack = asked.ack;
    let (body, eof_seen) = match asked.inline {
        Some(len) => {
            let read = {
                let body = read_inline(&mut inbound, len, broken);
                tokio::pin!(body);
                match futures::poll!(&mut body) {
                    std::task::Poll::Ready(r) => r,
                    std::task::Poll::Pending => {
                        answer.now();
                        tokio::select! {
                            r = &mut body => r,
                            _ = tx.closed() => Err(FnError::internal()),
                        }
                    }
                }
            };
            match read {
                Ok(b) => {
                    finish_inbound(inbound);
                    (FdkBody::Full(b), watch::channel(true).1)
                }
                Err(e) => {
                    drain_later(inbound);
                    return Err(e);
                }
            }
        }
        None => {
            let (body_tx, body_rx) = mpsc::channel::<Bytes>(BODY_WINDOW);
            let (eof_tx, eof_seen) = watch::channel(false);
            tokio::spawn(feed_body(
                inbound,
                body_tx,
                eof_tx,
                protocol_error.clone(),
                broken.clone(),
                cancel.clone(),
            ));
            (FdkBody::Stream(body_rx), eof_seen)
        }
    };
    let lb_gone = {
        let tx = tx.clone();
        let cancel = cancel.clone();
        async move {
            tokio::select! {
                _ = tx.closed() => {}
                _ = cancel.cancelled() => {}
            }
        }
    };
    tokio::pin!(lb_gone);
    let abort_err = |protocol_error: &AtomicBool| {
        if protocol_error.load(Ordering::SeqCst) {
            FnError::expected_data()
        } else if let Some(status) = broken.get() {
            broken_stream(status)
        } else {
            FnError::internal()
        }
    };

    if call.model.timeout <= 0 {
        return Err(FnError::call_timeout());
    }
    // A free slot is taken at once (the headers then wait for the ack); any wait lets them go.
    let get = ctx.agent.get_slot(call);
    tokio::pin!(get);
    let slot = match futures::poll!(&mut get) {
        std::task::Poll::Ready(s) => s?,
        std::task::Poll::Pending => {
            answer.now();
            tokio::select! {
                s = &mut get => s?,
                _ = &mut lb_gone => return Err(abort_err(&protocol_error)),
            }
        }
    };
    // A stream the LB gave up on while the call waited (cancelled, or re-placed because this
    // runner answered too late) must not start the function once it has a slot.
    if tx.is_closed() {
        return Err(abort_err(&protocol_error));
    }
    let mut slot = slot;
    times.started = DateTime::now();
    if slot.launched_for_this_call() {
        let c = slot.container();
        times.image_pull_wait_ns = c.timings.image_pull_wait_ns;
        times.ctr_prep_ns = c.timings.ctr_prep_ns;
        times.ctr_create_ns = c.timings.ctr_create_ns;
        times.init_ns = c.init_ns;
    }
    let detached = call.model.is_detached();
    // The call holds a slot: from here on the runner never NACKs (decisions.md (2)).
    if detached {
        let ack = CallResultStart {
            meta: Some(call_result_start::Meta::Http(HttpRespMeta {
                status_code: 202,
                headers: vec![],
            })),
        };
        let _ = tx.send(msg(runner_msg::Body::ResultStart(ack))).await;
    } else if want_ack {
        let _ = tx
            .send(msg(runner_msg::Body::Data(DataFrame {
                data: Bytes::new(),
                eof: false,
            })))
            .await;
    }
    answer.now();
    slot.container().begin_call(&call.model.id);

    let timeout = Duration::from_secs(call.model.timeout as u64);
    let deadline = tokio::time::Instant::now() + timeout;
    let fn_deadline = DateTime::from_offset(
        time::OffsetDateTime::now_utc() + time::Duration::seconds(i64::from(call.model.timeout)),
    );
    // The trace context of this hop replaces whatever the client's own headers carried.
    let mut headers: Vec<(String, String)> = call
        .model
        .headers
        .iter()
        .filter(|(k, _)| traceparent.is_none() || !k.eq_ignore_ascii_case("traceparent"))
        .flat_map(|(k, vs)| vs.iter().map(move |v| (k.clone(), v.clone())))
        .collect();
    if let Some(tp) = traceparent {
        headers.push(("Traceparent".to_string(), tp));
    }
    // Only an LB that asked for the accept ack streams both ways; Fn's LB keeps Fn's rule.
    let duplex = if want_ack { Duplex::Full } else { Duplex::Half };
    let req = FdkRequest {
        call_id: call.model.id.clone(),
        deadline: fn_deadline.to_string(),
        headers,
        body,
    };

    let exchanged = exchange(&mut slot, req, eof_seen, tx, detached, (duplex, asked.frame));
    let result = tokio::select! {
        r = tokio::time::timeout_at(deadline, exchanged) => match r {
            Ok(r) => r,
            Err(_) => Err(Exchange::Fn(FnError::call_timeout(), false)),
        },
        _ = &mut lb_gone => Err(Exchange::Fn(abort_err(&protocol_error), false)),
    };
    times.completed = DateTime::now();
    match result {
        Ok(()) => {
            slot.release(true);
            Ok(())
        }
        Err(Exchange::Fn(e, keep)) => {
            // The connection may hold half a request or response: the next call opens a new one.
            slot.fdk().reset();
            slot.release(keep);
            Err(e)
        }
    }
}

/// The call's error when its stream broke while the body came in: a message the runner refused
/// (over the size limit, undecodable) is the LB's protocol failure, named; anything else (a reset:
/// the LB is gone and reads nothing) stays Fn's plain 500.
fn broken_stream(status: &tonic::Status) -> FnError {
    match status.code() {
        tonic::Code::OutOfRange | tonic::Code::Internal | tonic::Code::InvalidArgument => {
            FnError::new(500, format!("Protocol failure: {}", status.message()), false)
        }
        _ => FnError::internal(),
    }
}

enum Exchange {
    /// The call's error, and whether the container may serve again.
    Fn(FnError, bool),
}

fn fdk_error(e: FdkError) -> Exchange {
    let keep = !e.kills_container();
    let err = match &e {
        FdkError::HeaderTooBig { .. } => FnError::header_too_big(),
        FdkError::FunctionFailed => FnError::function_failed(),
        FdkError::FunctionTimeout => FnError::call_timeout(),
        FdkError::InvalidStatus(_) => FnError::invalid_response(),
        FdkError::BodyTooBig { .. } => FnError::response_too_big(),
        FdkError::Connect { .. } | FdkError::Handshake { .. } | FdkError::Receive(_) | FdkError::Body(_) => {
            FnError::receive_failed()
        }
    };
    debug!(error = %e, "function exchange failed");
    Exchange::Fn(err, keep)
}

/// True when the LB's eof frame has arrived or arrives within [`PREMATURE_WRITE_GRACE`].
async fn premature_write_grace(eof_seen: &mut watch::Receiver<bool>) -> bool {
    matches!(
        tokio::time::timeout(PREMATURE_WRITE_GRACE, eof_seen.wait_for(|eof| *eof)).await,
        Ok(Ok(_))
    )
}

/// `POST /call`, then relay the answer: ResultStart once, Data frames of at most 10240 bytes.
async fn exchange(
    slot: &mut Slot,
    req: FdkRequest,
    mut eof_seen: watch::Receiver<bool>,
    tx: &Out,
    detached: bool,
    (duplex, frame): (Duplex, usize),
) -> Result<(), Exchange> {
    let mut resp = slot.fdk().call(req).await.map_err(fdk_error)?;
    // Fn mode: a 200 before the whole request arrived is Fn's premature write (502), after a short
    // grace. In full duplex the feeder task keeps streaming the body while this relays the answer.
    if duplex == Duplex::Half && !premature_write_grace(&mut eof_seen).await {
        warn!("function answered before receiving the entire request");
        return Err(Exchange::Fn(FnError::premature_write(), false));
    }
    let gone = || Exchange::Fn(FnError::internal(), true);
    // With FN_MAX_RESPONSE_SIZE set, an answer over it must be Fn's 502, never a cut body: so the
    // relay starts only once the answer is known to fit. A declared length is checked at once; an
    // undeclared one is held (up to the limit, so memory stays bounded by it) until it ends.
    let limit = resp.max_body();
    let mut held = Vec::new();
    let mut complete = false;
    if limit > 0 && !detached {
        match resp.content_length() {
            Some(n) if n > limit => {
                slot.fdk().reset();
                return Err(fdk_error(FdkError::BodyTooBig { max: limit }));
            }
            Some(_) => {}
            None => loop {
                match resp.next_chunk().await {
                    Ok(Some(c)) => held.push(c),
                    Ok(None) => {
                        complete = true;
                        break;
                    }
                    Err(e) => {
                        slot.fdk().reset();
                        return Err(fdk_error(e));
                    }
                }
            },
        }
    }
    if !detached {
        let headers = resp
            .headers
            .iter()
            .map(|(k, v)| HttpHeader {
                key: k.clone(),
                value: v.clone(),
            })
            .collect::<Vec<_>>();
        let start = CallResultStart {
            meta: Some(call_result_start::Meta::Http(HttpRespMeta {
                status_code: 200,
                headers,
            })),
        };
        tx.send(msg(runner_msg::Body::ResultStart(start)))
            .await
            .map_err(|_| gone())?;
    }
    let mut held = held.into_iter();
    loop {
        let next = match held.next() {
            Some(c) => Ok(Some(c)),
            None if complete => Ok(None),
            None => match resp.next_chunk().await {
                // Larger frames agreed: join what the function has already sent.
                Ok(Some(c)) if c.len() < frame => resp.join_ready(c, frame).await.map(Some),
                other => other,
            },
        };
        let chunk = match next {
            Ok(Some(_)) if detached => continue,
            Ok(Some(c)) => c,
            Ok(None) => {
                if duplex == Duplex::Full && !*eof_seen.borrow() {
                    // The function answered without reading the whole request: that request is
                    // still open on the connection, so the next call must not queue behind it.
                    debug!("answer complete before the request: replacing the FDK connection");
                    slot.fdk().reset();
                }
                return Ok(());
            }
            Err(e) => {
                slot.fdk().reset();
                return Err(fdk_error(e));
            }
        };
        for piece in ferrofn_common::frames::chunks_of(chunk, frame) {
            let frame = DataFrame {
                data: piece,
                eof: false,
            };
            tx.send(msg(runner_msg::Body::Data(frame)))
                .await
                .map_err(|_| gone())?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_child_keeps_the_trace() {
        let meta = StreamMeta {
            request_id: None,
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
        };
        let child = meta.child_traceparent().unwrap();
        let parts: Vec<&str> = child.split('-').collect();
        assert_eq!(parts[0], "00");
        assert_eq!(parts[1], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(parts[2], "00f067aa0ba902b7");
        assert_eq!(parts[2].len(), 16);
        assert_eq!(parts[3], "01");
        let bad = StreamMeta {
            request_id: None,
            traceparent: Some("garbage".into()),
        };
        assert_eq!(bad.child_traceparent(), None);
    }

    #[test]
    fn a_refused_message_is_a_named_protocol_failure_and_a_reset_a_plain_500() {
        let too_big = tonic::Status::out_of_range(
            "Error, decoded message length too large: found 67108869 bytes, the limit is: 4194304 bytes",
        );
        let e = broken_stream(&too_big);
        assert_eq!(e.code(), 500);
        assert_eq!(
            e.message(),
            "Protocol failure: Error, decoded message length too large: found 67108869 bytes, the limit is: 4194304 bytes"
        );
        assert!(!e.is_user_error());
        let garbled = broken_stream(&tonic::Status::internal("failed to decode Protobuf message"));
        assert_eq!(
            garbled.message(),
            "Protocol failure: failed to decode Protobuf message"
        );
        assert_eq!(
            broken_stream(&tonic::Status::cancelled("h2 protocol error")),
            FnError::internal()
        );
    }

    #[test]
    fn call_finished_timestamps_nest() {
        let t = Times {
            created: DateTime::now(),
            ..Default::default()
        };
        let f = finished("id", "img", &Err(FnError::server_busy()), &t);
        assert!(!f.created_at.is_empty() && f.started_at.is_empty() && f.completed_at.is_empty());
        assert_eq!(
            (f.error_code, f.error_user, f.details.as_str()),
            (503, false, "id")
        );
        let t = Times {
            created: DateTime::now(),
            started: DateTime::now(),
            ..Default::default()
        };
        let f = finished("id", "img", &Ok(()), &t);
        assert!(
            f.success && !f.completed_at.is_empty(),
            "completion defaults to now"
        );
        assert!(f.execution_duration >= 0 && f.scheduler_duration >= 0);
    }
}
