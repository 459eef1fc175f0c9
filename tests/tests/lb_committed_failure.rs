//! A call the runner took that never gets a proper end: a silent connection (found by keepalive)
//! is a 502, a runner that never finishes gets a 504 at the call deadline (fn timeout + margin) and
//! sees the call cancelled, a stream ending without CallFinished is a 502. None is retried.

use std::time::{Duration, Instant};

use serde_json::json;

use ferrofn_tests::lb_fixture::{black_hole, eventually, invoke_path, setup_addrs};
use ferrofn_tests::lb_proc::fake_runner::{Behaviour, FakeRunner};
use ferrofn_tests::lb_proc::json as call;

#[tokio::test]
async fn a_silent_runner_connection_fails_the_committed_call_with_502_after_keepalive() {
    use ferrofn_lb::pool::RunnerState;
    let (hole, _task) = black_hole().await;
    let (lb, f) = setup_addrs(vec![hole], 30, |s| {
        s.health_interval_ms = 60_000;
        s.runner_keepalive_ms = 300;
        s.runner_keepalive_timeout_ms = 300;
    })
    .await;
    lb.handle.pool.runners()[0].set_state(RunnerState::Up, "test");
    let started = Instant::now();
    let resp = call("POST", &lb.url(&invoke_path(&f)), None).await.unwrap();
    let took = started.elapsed();
    assert_eq!(
        (resp.status, resp.json()["message"].clone()),
        (502, json!(ferrofn_lb::engage::CONNECTION_LOST)),
        "after {took:?}"
    );
    assert_eq!(resp.header("fn-call-id").len(), 26);
    assert!(took < Duration::from_secs(5), "keepalive noticed late: {took:?}");
    lb.stop().await;
}

#[tokio::test]
async fn a_runner_that_never_finishes_gets_504_at_the_call_deadline() {
    for accept_ack in [false, true] {
        let r = FakeRunner::start(Behaviour {
            hang: true,
            accept_ack,
            ..Behaviour::default()
        })
        .await
        .unwrap();
        // fn timeout 1 s + 1 s margin.
        let (lb, f) = setup_addrs(vec![r.address()], 1, |s| s.sync_deadline_margin_ms = 1000).await;
        let started = Instant::now();
        let resp = call("POST", &lb.url(&invoke_path(&f)), Some(json!({"x": 1})))
            .await
            .unwrap();
        let took = started.elapsed();
        assert_eq!(resp.status, 504, "ack {accept_ack}: {}", resp.text());
        let msg = resp.json()["message"].as_str().unwrap().to_owned();
        assert!(msg.contains("within 2s"), "{msg}");
        assert_eq!(resp.header("fn-call-id").len(), 26);
        assert!(
            took >= Duration::from_millis(1900) && took < Duration::from_secs(5),
            "ack {accept_ack}: {took:?}"
        );
        let cancelled = || r.shared.cancelled.load(std::sync::atomic::Ordering::SeqCst) == 1;
        assert!(
            eventually(Duration::from_secs(5), cancelled).await,
            "the runner saw the call cancelled"
        );
        assert_eq!(r.engaged(), 1, "not retried");
        lb.stop().await;
    }
}

#[tokio::test]
async fn a_stream_ending_without_call_finished_is_a_clear_502() {
    for accept_ack in [false, true] {
        let r = FakeRunner::start(Behaviour {
            end_without_finish: true,
            accept_ack,
            ..Behaviour::default()
        })
        .await
        .unwrap();
        let (lb, f) = setup_addrs(vec![r.address()], 30, |_| {}).await;
        let resp = call("POST", &lb.url(&invoke_path(&f)), None).await.unwrap();
        assert_eq!(
            (resp.status, resp.json()["message"].clone()),
            (502, json!(ferrofn_lb::engage::NO_RESULT)),
            "ack {accept_ack}"
        );
        assert_eq!(resp.header("fn-call-id").len(), 26);
        assert_eq!(r.engaged(), 1, "committed: not retried");
        lb.stop().await;
    }
}
