//! Accept-ack mode (ferrofn runners): the TryCall asks for the ack; the body is sent only once the
//! runner acknowledged (the call holds a slot, so the runner never NACKs after it), then streams in
//! through a bounded window while the answer streams out: a head of `head_limit` bytes is held so
//! that short responses get their exact status even when the call fails late; past it the response
//! is committed and a late failure cuts the body. (A response over the runner's
//! `FN_MAX_RESPONSE_SIZE` is refused by the runner before it sends anything, so that limit is always
//! an error status, never a cut body.)

use std::sync::Arc;

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

use ferrofn_common::error::FnError;
use ferrofn_common::frames::{Coalesce, chunks_of};
use ferrofn_proto::{ClientMsg, RunnerMsg, runner_msg};

use super::{
    AbortOnDrop, BodyState, CONNECTION_LOST, CallResponse, EngageCall, Engaged, NO_RESULT, RecvFailure,
    ResponseHead, RunnerStream, WINDOW_FRAMES, connection_lost, data_msg, detached_ack, ended_without_result,
    finish, internal, is_transport_failure, nack, record_finished, recv, recv_failed, status_is_too_busy,
    upstream_failure,
};
use crate::placer::Attempt;
use crate::pool::{InFlight, Runner};

/// Waits for the runner's ack, then streams the body in and the answer out.
/// `tx` is `None` when the body went out inline with the TryCall; `frame` is the data frame size
/// agreed with the runner.
pub(super) async fn run(
    mut a: Engaged<'_>,
    tx: Option<mpsc::Sender<ClientMsg>>,
    frame: usize,
) -> Attempt<CallResponse, FnError> {
    // 1. Wait for the ack (a zero-length data frame) or a refusal. Until it comes the LB's side
    //    stays open with nothing but the TryCall sent.
    match recv(&mut a.stream, a.deadline).await {
        Ok(Some(RunnerMsg {
            body: Some(runner_msg::Body::Data(d)),
        })) if d.data.is_empty() => {}
        Ok(Some(RunnerMsg {
            body: Some(runner_msg::Body::Finished(f)),
        })) => {
            drop(tx);
            if f.success {
                return Attempt::Placed(Err(internal("ack", &a.runner, "finished before ack")));
            }
            return finish(
                &a.runner,
                &f,
                false,
                ResponseHead::default(),
                a.call.detached,
                Body::empty(),
            );
        }
        // A detached call's 202 result start is its acceptance ack (the runner sends it once the
        // call holds a slot): send the body (from memory) and answer 202 now.
        Ok(Some(RunnerMsg {
            body: Some(runner_msg::Body::ResultStart(rs)),
        })) if a.call.detached => {
            let mut head = ResponseHead::default();
            head.apply(rs);
            let pump = match tx {
                Some(tx) => {
                    let body = take_body(a.call).await;
                    let (over_tx, _over_rx) = oneshot::channel();
                    let pump = pump_body(body, tx, a.call.max_request, over_tx, frame);
                    Some(AbortOnDrop(tokio::spawn(pump)))
                }
                None => None,
            };
            return detached_ack(pump, a, head);
        }
        Ok(Some(other)) => {
            return Attempt::Placed(Err(internal(
                "ack",
                &a.runner,
                format!("unexpected message before ack: {other:?}"),
            )));
        }
        Ok(None) => {
            return Attempt::Placed(Err(upstream_failure(
                "ack",
                &a.runner,
                "stream ended before ack",
                NO_RESULT,
            )));
        }
        Err(RecvFailure::Status(s)) if status_is_too_busy(&s) => return nack(&a.runner),
        // The connection broke before the ack: the runner never started the function.
        Err(RecvFailure::Status(s)) if is_transport_failure(&s) => return connection_lost(&a.runner, &s),
        Err(f) => return Attempt::Placed(Err(recv_failed("ack", &a.runner, a.call, f))),
    }
    // 2. Committed: the body streams in behind the ack (unless it went inline).
    let (over_tx, mut over_rx) = oneshot::channel();
    let mut pump_running = tx.is_some();
    let pump = match tx {
        Some(tx) => {
            let body = take_body(a.call).await;
            let pump = pump_body(body, tx, a.call.max_request, over_tx, frame);
            Some(AbortOnDrop(tokio::spawn(pump)))
        }
        None => None,
    };

    // 3. Read the response head; stream the rest once the head buffer is full.
    let mut head = ResponseHead::default();
    let mut held = BytesMut::new();
    let mut started = false;
    loop {
        let msg = tokio::select! {
            m = recv(&mut a.stream, a.deadline) => m,
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
            Ok(None) => return ended_without_result(&a.runner),
            Err(f) => return Attempt::Placed(Err(recv_failed("engage receive", &a.runner, a.call, f))),
        };
        match msg.body {
            Some(runner_msg::Body::ResultStart(rs)) => {
                head.apply(rs);
                if a.call.detached && !started {
                    return detached_ack(pump, a, head);
                }
                started = true;
            }
            Some(runner_msg::Body::Data(d)) => {
                started = true;
                if a.call.detached {
                    continue;
                }
                held.extend_from_slice(&d.data);
                if held.len() >= a.call.head_limit {
                    let (btx, brx) = mpsc::channel::<Result<Bytes, std::io::Error>>(WINDOW_FRAMES);
                    let detached = a.call.detached;
                    let Engaged {
                        runner,
                        stream,
                        in_flight,
                        deadline,
                        ..
                    } = a;
                    tokio::spawn(stream_rest(
                        stream,
                        held.freeze(),
                        btx,
                        pump,
                        in_flight,
                        runner,
                        deadline,
                    ));
                    let body = Body::from_stream(ReceiverStream::new(brx));
                    return Attempt::Placed(Ok(head.respond(detached, body)));
                }
            }
            Some(runner_msg::Body::Finished(f)) => {
                return finish(
                    &a.runner,
                    &f,
                    started,
                    head,
                    a.call.detached,
                    Body::from(held.freeze()),
                );
            }
            None => {}
        }
    }
}

/// Pumps the client body to the runner in frames of at most `frame` bytes, stopping at `max` bytes
/// (0 = unlimited) with an error on `over`. Pieces that are already there are joined up to a
/// frame (fewer, larger frames); a piece never waits for the next one.
async fn pump_body(
    body: Body,
    tx: mpsc::Sender<ClientMsg>,
    max: u64,
    over: oneshot::Sender<FnError>,
    frame: usize,
) {
    let mut stream = Coalesce::new(body.into_data_stream(), frame);
    let mut total = 0_u64;
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                let _ = over.send(super::body_read_failed(&e));
                return;
            }
        };
        total += chunk.len() as u64;
        if max > 0 && total > max {
            let _ = over.send(FnError::request_too_large(total, max));
            return;
        }
        for piece in chunks_of(chunk, frame) {
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

/// Forwards the rest of a streamed response. A late failure aborts the body (the client sees a
/// truncated response instead of a status, which is the price of not buffering).
async fn stream_rest(
    mut stream: RunnerStream,
    head: Bytes,
    out: mpsc::Sender<Result<Bytes, std::io::Error>>,
    _pump: Option<AbortOnDrop>,
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
