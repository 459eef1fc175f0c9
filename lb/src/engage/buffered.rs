//! Fn's mode: the body, held in memory, goes out behind the TryCall at once (so a NACKed attempt
//! can be replayed on the next runner), and the response is held until CallFinished and the end of
//! the stream, so that bytes of a failed attempt never reach the client.

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use ferrofn_common::error::FnError;
use ferrofn_common::frames::chunks;
use ferrofn_proto::{ClientMsg, runner_msg};
use tokio::sync::mpsc;

use super::{
    AbortOnDrop, BodyState, CallResponse, EngageCall, Engaged, NO_EOF, RecvFailure, ResponseHead,
    connection_lost, data_msg, detached_ack, ended_without_result, finish, internal, nack, recv, recv_failed,
    status_is_too_busy, unprocessed_by_runner,
};
use crate::placer::Attempt;

/// Starts sending the buffered body in frames of at most 10 KiB, then the eof frame; the LB's side
/// of the stream closes when the last sender is dropped.
pub(super) async fn send_body(call: &EngageCall, tx: mpsc::Sender<ClientMsg>) -> AbortOnDrop {
    let bytes = match &*call.body.lock().await {
        BodyState::Buffered(b) => b.clone(),
        _ => Bytes::new(),
    };
    AbortOnDrop(tokio::spawn(async move {
        for chunk in chunks(bytes) {
            if tx.send(data_msg(chunk, false)).await.is_err() {
                return;
            }
        }
        let _ = tx.send(data_msg(Bytes::new(), true)).await;
    }))
}

/// Receives the whole answer of an attempt whose body `sender` is sending.
pub(super) async fn run(
    mut a: Engaged<'_>,
    mut sender: Option<AbortOnDrop>,
) -> Attempt<CallResponse, FnError> {
    let mut head = ResponseHead::default();
    let mut started = false;
    let mut body = BytesMut::new();
    loop {
        let msg = match recv(&mut a.stream, a.deadline).await {
            Ok(Some(m)) => m,
            Ok(None) => return ended_without_result(&a.runner),
            Err(RecvFailure::Status(s)) if !started && status_is_too_busy(&s) => return nack(&a.runner),
            // HTTP/2 says the runner never processed the stream: place the call again.
            Err(RecvFailure::Status(s)) if !started && unprocessed_by_runner(&s) => {
                return connection_lost(&a.runner, &s);
            }
            Err(f) => return Attempt::Placed(Err(recv_failed("engage receive", &a.runner, a.call, f))),
        };
        match msg.body {
            Some(runner_msg::Body::ResultStart(rs)) => {
                head.apply(rs);
                if a.call.detached && !started {
                    // The body may still be on its way (Fn acks when the call gets a slot, before
                    // the function has read its input): the sender lives on with the stream.
                    return detached_ack(sender.take(), a, head);
                }
                started = true;
            }
            Some(runner_msg::Body::Data(d)) => {
                started = true;
                if !a.call.detached {
                    body.extend_from_slice(&d.data);
                }
            }
            Some(runner_msg::Body::Finished(f)) => {
                // The call is over: stop sending (closes the LB's side) whatever is left of the body.
                drop(sender.take());
                if f.success {
                    // Fn reads on to the end of the stream; extra messages are a protocol error.
                    match recv(&mut a.stream, a.deadline).await {
                        Ok(None) | Err(_) => {}
                        Ok(Some(_)) => {
                            return Attempt::Placed(Err(internal(NO_EOF, &a.runner, "extra message")));
                        }
                    }
                }
                return finish(
                    &a.runner,
                    &f,
                    started,
                    head,
                    a.call.detached,
                    Body::from(body.freeze()),
                );
            }
            None => tracing::debug!(runner = %a.runner.addr(), "ignoring an empty runner message"),
        }
    }
}
