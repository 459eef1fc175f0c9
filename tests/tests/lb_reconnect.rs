//! Issue 10, point 3: a connection loss is not a dead runner. The LB's runner is a front that
//! speaks HTTP/2 itself on its first connection (it answers the LB's Status and health probes,
//! advertising the accept ack) and, when the first Engage arrives there, ends that connection:
//! with a GOAWAY (as a runner's HTTP/2 layer does when it shuts a connection down), or by dropping
//! the socket (a broken connection). Every later connection is relayed byte for byte to a scripted
//! runner. The call, sent but never accepted on the first connection, must be placed again on
//! the same runner over a new connection: the client gets its 200, the call runs exactly once, and
//! the runner stays up.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result};
use bytes::Bytes;
use prost::Message;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::Notify;

use ferrofn_lb::pool::RunnerState;
use ferrofn_proto::RunnerStatus;
use ferrofn_proto::ext::{CAPABILITIES_KEY, CAPABILITY_ACCEPT_ACK};
use ferrofn_proto::health::HealthCheckResponse;
use ferrofn_proto::health::health_check_response::ServingStatus;
use ferrofn_tests::lb_proc::fake_runner::{Behaviour, FakeRunner};
use ferrofn_tests::lb_proc::{LbProc, json as call};

/// How the front ends its first connection once an Engage arrived on it.
#[derive(Debug, Clone, Copy)]
enum Cut {
    /// GOAWAY (NO_ERROR), then close.
    GoAway,
    /// Drop the socket.
    Drop,
}

/// What the front saw.
#[derive(Debug, Default)]
struct FrontCounts {
    connections: AtomicU32,
    engages_on_first: AtomicU32,
}

/// Answers one unary gRPC request with `msg` (grpc-status 0).
fn unary_reply<M: Message>(mut respond: h2::server::SendResponse<Bytes>, msg: &M) -> Result<()> {
    let head = http::Response::builder()
        .status(200)
        .header("content-type", "application/grpc")
        .body(())?;
    let mut send = respond.send_response(head, false)?;
    let body = msg.encode_to_vec();
    let mut framed = Vec::with_capacity(5 + body.len());
    framed.push(0);
    framed.extend_from_slice(&u32::try_from(body.len())?.to_be_bytes());
    framed.extend_from_slice(&body);
    send.send_data(framed.into(), false)?;
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    send.send_trailers(trailers)?;
    Ok(())
}

/// The first connection: probes answered, the first Engage ends the connection as `cut` says.
async fn serve_first(socket: tokio::net::TcpStream, cut: Cut, counts: Arc<FrontCounts>) -> Result<()> {
    let mut conn = h2::server::handshake(socket).await?;
    let engage = Arc::new(Notify::new());
    // Engage streams are held (neither answered nor reset) until the connection ends.
    let mut held = Vec::new();
    loop {
        tokio::select! {
            req = conn.accept() => {
                let Some(req) = req else { return Ok(()) };
                let (req, respond) = req?;
                let path = req.uri().path().to_owned();
                if path.ends_with("/Engage") {
                    counts.engages_on_first.fetch_add(1, Ordering::SeqCst);
                    held.push((req, respond));
                    engage.notify_one();
                } else if path.ends_with("/Status") {
                    let mut st = RunnerStatus::default();
                    st.custom_status
                        .insert(CAPABILITIES_KEY.into(), CAPABILITY_ACCEPT_ACK.into());
                    unary_reply(respond, &st)?;
                } else if path.ends_with("/Check") {
                    unary_reply(respond, &HealthCheckResponse { status: ServingStatus::Serving as i32 })?;
                } else {
                    anyhow::bail!("unexpected request {path}");
                }
            }
            () = engage.notified() => match cut {
                Cut::GoAway => {
                    conn.abrupt_shutdown(h2::Reason::NO_ERROR);
                    // Polled to its end: the GOAWAY is flushed, then the connection closes.
                    std::future::poll_fn(|cx| conn.poll_closed(cx)).await.ok();
                    drop(held);
                    return Ok(());
                }
                Cut::Drop => return Ok(()),
            }
        }
    }
}

/// Listens on a loopback port: the first connection is served by [`serve_first`], every later one
/// is relayed to `backend`.
async fn front(cut: Cut, backend: std::net::SocketAddr) -> Result<(String, Arc<FrontCounts>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    let counts = Arc::new(FrontCounts::default());
    let c = counts.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let n = c.connections.fetch_add(1, Ordering::SeqCst);
            let c = c.clone();
            tokio::spawn(async move {
                if n == 0 {
                    if let Err(e) = serve_first(socket, cut, c).await {
                        eprintln!("front, first connection: {e:#}");
                    }
                } else if let Ok(mut up) = tokio::net::TcpStream::connect(backend).await {
                    let _ = tokio::io::copy_bidirectional(&mut socket, &mut up).await;
                }
            });
        }
    });
    Ok((addr, counts))
}

async fn unaccepted_call_is_placed_again_on_the_same_runner(cut: Cut) -> Result<()> {
    let backend = FakeRunner::start(Behaviour {
        accept_ack: true,
        ..Behaviour::default()
    })
    .await?;
    let (addr, counts) = front(cut, backend.addr).await?;
    // Probes once a minute: only the start-up probe runs, so nothing but the lost connection can
    // change the runner's state during the call. The placer gives up long before the next probe:
    // a runner marked down by the loss could not serve the call again in time (503).
    let lb = LbProc::start(|s| {
        s.runner_addresses = vec![addr.clone()];
        s.health_interval_ms = 60_000;
        s.placer_timeout_ms = 10_000;
    })
    .await?;
    let app = call("POST", &lb.url("/v2/apps"), Some(json!({"name": "rapp"})))
        .await?
        .json();
    let f = call(
        "POST",
        &lb.url("/v2/fns"),
        Some(json!({"app_id": app["id"], "name": "rfn", "image": "local/r:1", "timeout": 30})),
    )
    .await?
    .json();
    let pool = lb.handle.pool.clone();
    let runner = pool.runners()[0].clone();
    ferrofn_tests::lb_proc::wait_accept_ack(std::slice::from_ref(&runner))
        .await
        .context("the start-up probe never reached the front")?;

    let path = format!("/invoke/{}", f["id"].as_str().context("fn id")?);
    let resp = call("POST", &lb.url(&path), Some(json!({"n": 1}))).await?;
    assert_eq!(
        (resp.status, resp.json()),
        (200, json!({"n": 1})),
        "{cut:?}: the client sees the call succeed"
    );
    assert_eq!(
        counts.engages_on_first.load(Ordering::SeqCst),
        1,
        "{cut:?}: the call was first sent on the connection that was then lost"
    );
    assert!(
        counts.connections.load(Ordering::SeqCst) >= 2,
        "{cut:?}: the LB reconnected"
    );
    assert_eq!(backend.engaged(), 1, "{cut:?}: the call ran exactly once");
    assert_eq!(
        runner.state(),
        RunnerState::Up,
        "{cut:?}: a lost connection does not mark the runner down"
    );
    // And the runner keeps serving over its new connection.
    let resp = call("POST", &lb.url(&path), Some(json!({"n": 2}))).await?;
    assert_eq!((resp.status, resp.json()), (200, json!({"n": 2})));
    assert_eq!(backend.engaged(), 2);
    lb.stop().await;
    Ok(())
}

#[tokio::test]
async fn goaway_before_the_accept_places_the_call_again_and_keeps_the_runner() -> Result<()> {
    unaccepted_call_is_placed_again_on_the_same_runner(Cut::GoAway).await
}

#[tokio::test]
async fn broken_connection_before_the_accept_places_the_call_again_and_keeps_the_runner() -> Result<()> {
    unaccepted_call_is_placed_again_on_the_same_runner(Cut::Drop).await
}
