//! Issue 10, point 5 (a runner cut off the network): a ferrofn runner answers an Engage stream at
//! once (its response headers go out before the call waits for a container), so a stream left
//! unanswered past `runner_answer_timeout_ms` after its TryCall left means a runner that cannot
//! be reached. The call, never acknowledged, goes to another runner at once, and the silent runner
//! is avoided until it answers again (a passed probe or an answered stream), instead of every call
//! waiting for the HTTP/2 keepalive verdict. Here a fake runner answers Status and health but
//! never an Engage stream.

use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::json;

use ferrofn_lb::pool::RunnerState;
use ferrofn_tests::lb_proc::fake_runner::{Behaviour, FakeRunner};
use ferrofn_tests::lb_proc::{LbProc, json as call, wait_accept_ack};

/// Calls within which a pass of the naive placer (random start, 2 runners) meets a given runner,
/// but for a chance of 2^-40.
const CALLS_TO_MEET: usize = 40;

fn ack_runner(silent: bool) -> Behaviour {
    Behaviour {
        accept_ack: true,
        silent,
        ..Behaviour::default()
    }
}

/// Registers a fn and returns its invoke path.
async fn invoke_path(lb: &LbProc) -> Result<String> {
    let app = call("POST", &lb.url("/v2/apps"), Some(json!({"name": "uapp"})))
        .await?
        .json();
    let f = call(
        "POST",
        &lb.url("/v2/fns"),
        Some(json!({"app_id": app["id"], "name": "ufn", "image": "local/u:1", "timeout": 30})),
    )
    .await?
    .json();
    Ok(format!("/invoke/{}", f["id"].as_str().context("fn id")?))
}

#[tokio::test]
async fn a_silent_runner_is_left_for_another_and_avoided_until_it_answers() -> Result<()> {
    let silent = FakeRunner::start(ack_runner(true)).await?;
    let good = FakeRunner::start(ack_runner(false)).await?;
    // Only the start-up probe runs: nothing but an answer may clear the mark during the test.
    let lb = LbProc::start(|s| {
        s.runner_addresses = vec![silent.address(), good.address()];
        s.health_interval_ms = 60_000;
        s.runner_answer_timeout_ms = 250;
    })
    .await?;
    let path = invoke_path(&lb).await?;
    let runners = lb.handle.pool.runners();
    wait_accept_ack(&runners).await?;

    // The naive placer starts each pass at a random runner: call until one pass has met the
    // silent runner (each call does with probability 1/2), then every later call must avoid it.
    let mut n = 0;
    while silent.engaged() == 0 {
        assert!(
            n < CALLS_TO_MEET,
            "{CALLS_TO_MEET} calls and none met the silent runner"
        );
        let resp = call("POST", &lb.url(&path), Some(json!({ "n": n }))).await?;
        assert_eq!((resp.status, resp.json()), (200, json!({ "n": n })), "call {n}");
        n += 1;
    }
    for m in n..n + 16 {
        let resp = call("POST", &lb.url(&path), Some(json!({ "n": m }))).await?;
        assert_eq!((resp.status, resp.json()), (200, json!({ "n": m })), "call {m}");
    }
    assert_eq!(
        silent.engaged(),
        1,
        "only the first call that met the silent runner met it, once"
    );
    assert_eq!(good.seen().len(), n + 16, "the other runner served every call");
    assert!(runners[0].is_unanswered(), "the silent runner is marked");
    assert_eq!(
        runners[0].state(),
        RunnerState::Up,
        "silence is not a verdict on the runner"
    );
    assert!(!runners[1].is_unanswered());

    // It answers again: a passed probe clears the mark and calls reach it again (again as the
    // random start of a pass falls).
    silent.set(|b| b.silent = false);
    ferrofn_lb::pool::health::probe(&runners[0], Duration::from_secs(2)).await;
    assert!(!runners[0].is_unanswered(), "a passed probe clears the mark");
    let mut n = 0;
    while silent.seen().is_empty() {
        assert!(
            n < CALLS_TO_MEET,
            "{CALLS_TO_MEET} calls and none reached the runner that answers again"
        );
        let resp = call("POST", &lb.url(&path), Some(json!({ "n": n }))).await?;
        assert_eq!(resp.status, 200);
        n += 1;
    }
    assert!(!runners[0].is_unanswered(), "its answers keep it unmarked");
    lb.stop().await;
    Ok(())
}

#[tokio::test]
async fn with_no_other_runner_the_call_waits_on_the_silent_one() -> Result<()> {
    // Nowhere else to go: leaving the stream for a new one on the same runner would only add
    // streams to a runner that may be loaded rather than cut off. The call waits for its answer,
    // bounded by its deadline (fn timeout 1 s + the LB's margin): Fn's 504, one stream in all.
    let silent = FakeRunner::start(ack_runner(true)).await?;
    let lb = LbProc::start(|s| {
        s.runner_addresses = vec![silent.address()];
        s.health_interval_ms = 60_000;
        s.runner_answer_timeout_ms = 100;
        s.sync_deadline_margin_ms = 1_000;
    })
    .await?;
    let app = call("POST", &lb.url("/v2/apps"), Some(json!({"name": "sapp"})))
        .await?
        .json();
    let f = call(
        "POST",
        &lb.url("/v2/fns"),
        Some(json!({"app_id": app["id"], "name": "sfn", "image": "local/s:1", "timeout": 1})),
    )
    .await?
    .json();
    let runners = lb.handle.pool.runners();
    wait_accept_ack(&runners).await?;

    let path = format!("/invoke/{}", f["id"].as_str().context("fn id")?);
    let resp = call("POST", &lb.url(&path), Some(json!({}))).await?;
    assert_eq!(resp.status, 504, "{}", resp.text());
    assert_eq!(
        silent.engaged(),
        1,
        "the call was not sent again to the same runner"
    );
    assert!(silent.seen().is_empty(), "no TryCall was ever read: nothing ran");
    lb.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_runner_that_answers_is_never_timed_out_by_a_slow_call() -> Result<()> {
    // The bound is on the answer, not the call: a function slower than it is served normally.
    let slow = FakeRunner::start(Behaviour {
        run_ms: 600,
        ..ack_runner(false)
    })
    .await?;
    let lb = LbProc::start(|s| {
        s.runner_addresses = vec![slow.address()];
        s.health_interval_ms = 60_000;
        s.runner_answer_timeout_ms = 100;
    })
    .await?;
    let path = invoke_path(&lb).await?;
    let runners = lb.handle.pool.runners();
    wait_accept_ack(&runners).await?;
    let resp = call("POST", &lb.url(&path), Some(json!({"slow": true}))).await?;
    assert_eq!((resp.status, resp.json()), (200, json!({"slow": true})));
    assert_eq!(slow.engaged(), 1, "placed once");
    assert!(!runners[0].is_unanswered());
    lb.stop().await;
    Ok(())
}

/// A TCP relay in front of a runner that the test cuts as a network would: [`Relay::blackhole`]
/// stops carrying bytes while every connection stays open (a cut without RST: the LB hears
/// nothing, and its writes go nowhere).
struct Relay {
    addr: std::net::SocketAddr,
    cut: tokio::sync::watch::Sender<bool>,
}

impl Relay {
    async fn start(upstream: String) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (cut, cut_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            while let Ok((down, _)) = listener.accept().await {
                let cut = cut_rx.clone();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    if *cut.borrow() {
                        // Accepted after the cut: held open, silent.
                        hold(down).await;
                    }
                    let Ok(up) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (dr, dw) = down.into_split();
                    let (ur, uw) = up.into_split();
                    tokio::join!(pipe(dr, uw, cut.clone()), pipe(ur, dw, cut));
                });
            }
        });
        Ok(Self { addr, cut })
    }

    fn address(&self) -> String {
        self.addr.to_string()
    }

    fn blackhole(&self) {
        self.cut.send_replace(true);
    }
}

/// Carries bytes one way until the relay is cut; from then on holds both ends open and silent.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut cut: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let read = tokio::select! {
            _ = cut.wait_for(|&c| c) => break,
            r = from.read(&mut buf) => r,
        };
        match read {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            // Bytes read as the cut falls are lost, as on the wire.
            Ok(_) if *cut.borrow() => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
    hold((from, to)).await;
}

/// Keeps `what` (sockets) open and silent for good.
async fn hold<T>(what: T) -> ! {
    let _held = what;
    std::future::pending().await
}

#[tokio::test]
async fn a_health_probe_of_a_runner_cut_off_ends_at_its_timeout() -> Result<()> {
    // The probe's deadline is the LB's to keep: a runner cut off never sees the grpc-timeout its
    // request carries. Unbounded, a probe would last until the keepalive (here 60 s) and hold up
    // the health loop for every runner.
    let runner = FakeRunner::start(ack_runner(false)).await?;
    let relay = Relay::start(runner.address()).await?;
    let lb = LbProc::start(|s| {
        s.runner_addresses = vec![relay.address()];
        s.health_interval_ms = 60_000;
        s.runner_keepalive_ms = 60_000;
        s.runner_keepalive_timeout_ms = 60_000;
    })
    .await?;
    let runners = lb.handle.pool.runners();
    wait_accept_ack(&runners).await?;
    relay.blackhole();
    let state = tokio::time::timeout(
        Duration::from_secs(5),
        ferrofn_lb::pool::health::probe(&runners[0], Duration::from_millis(300)),
    )
    .await
    .context("the probe outlasted its 300 ms timeout by far")?;
    assert_eq!(state, RunnerState::Down);
    lb.stop().await;
    Ok(())
}
