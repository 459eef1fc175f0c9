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

fn ack_runner(silent: bool) -> Behaviour {
    Behaviour {
        accept_ack: true,
        silent,
        ..Behaviour::default()
    }
}

/// Registers a fn (30 s timeout) and returns its invoke path.
async fn invoke_path(lb: &LbProc) -> Result<String> {
    fn_with_timeout(lb, 30).await
}

/// Registers a fn with this timeout (s) in an app of its own and returns its invoke path.
async fn fn_with_timeout(lb: &LbProc, timeout: u32) -> Result<String> {
    let app = call("POST", &lb.url("/v2/apps"), Some(json!({"name": "uapp"})))
        .await?
        .json();
    let f = call(
        "POST",
        &lb.url("/v2/fns"),
        Some(json!({"app_id": app["id"], "name": "ufn", "image": "local/u:1", "timeout": timeout})),
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

    for n in 0..8 {
        let resp = call("POST", &lb.url(&path), Some(json!({ "n": n }))).await?;
        assert_eq!((resp.status, resp.json()), (200, json!({ "n": n })), "call {n}");
    }
    assert_eq!(
        silent.engaged(),
        1,
        "only the first call meets the silent runner, once"
    );
    assert_eq!(good.seen().len(), 8, "the other runner served every call");
    assert!(runners[0].is_unanswered(), "the silent runner is marked");
    assert_eq!(
        runners[0].state(),
        RunnerState::Up,
        "silence is not a verdict on the runner"
    );
    assert!(!runners[1].is_unanswered());

    // It answers again: a passed probe clears the mark and calls reach it again.
    silent.set(|b| b.silent = false);
    ferrofn_lb::pool::health::probe(&runners[0], Duration::from_secs(2)).await;
    assert!(!runners[0].is_unanswered(), "a passed probe clears the mark");
    for n in 0..4 {
        let resp = call("POST", &lb.url(&path), Some(json!({ "n": n }))).await?;
        assert_eq!(resp.status, 200);
    }
    assert!(
        !silent.seen().is_empty(),
        "the runner serves calls again once it answers"
    );
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
    let path = fn_with_timeout(&lb, 1).await?;
    let runners = lb.handle.pool.runners();
    wait_accept_ack(&runners).await?;

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

#[tokio::test]
async fn calls_waiting_on_a_runner_found_silent_are_placed_again_at_once() -> Result<()> {
    // A runner that had answered a call's stream (the call waits there for a container, not yet
    // acknowledged) is then cut off. The next call it leaves unanswered marks it silent: the
    // waiting call goes elsewhere at that moment, not after the connection's keepalive (which
    // never comes here: the fake keeps answering HTTP/2 pings) or its own deadline.
    let a = FakeRunner::start(ack_runner(false)).await?;
    let b = FakeRunner::start(ack_runner(false)).await?;
    let lb = LbProc::start(|s| {
        s.runner_addresses = vec![a.address(), b.address()];
        s.placer = "ch".into();
        s.health_interval_ms = 60_000;
        s.runner_answer_timeout_ms = 250;
    })
    .await?;
    // fn timeout 20 s: without the verdict the first call would wait that long, then 504.
    let path = fn_with_timeout(&lb, 20).await?;
    let runners = lb.handle.pool.runners();
    wait_accept_ack(&runners).await?;

    // The consistent-hash placer sends every call of the fn to the same runner first.
    let resp = call("POST", &lb.url(&path), Some(json!({ "n": 0 }))).await?;
    assert_eq!(resp.status, 200);
    let (first, other, first_idx) = if a.seen().is_empty() {
        (&b, &a, 1)
    } else {
        (&a, &b, 0)
    };
    let served_before = other.seen().len();

    first.set(|x| x.hold_before_ack = true);
    let waiting = {
        let url = lb.url(&path);
        tokio::spawn(async move { call("POST", &url, Some(json!({ "n": 1 }))).await })
    };
    let held = || first.seen().len() == 2;
    assert!(
        ferrofn_tests::lb_fixture::eventually(Duration::from_secs(5), held).await,
        "the second call reached the first runner and waits there"
    );

    // Cut off: new streams get no answer at all.
    first.set(|x| x.silent = true);
    let t = std::time::Instant::now();
    let resp = call("POST", &lb.url(&path), Some(json!({ "n": 2 }))).await?;
    assert_eq!((resp.status, resp.json()), (200, json!({ "n": 2 })));
    assert!(runners[first_idx].is_unanswered(), "the silent runner is marked");
    let resp = waiting.await??;
    let waited = t.elapsed();
    assert_eq!(
        (resp.status, resp.json()),
        (200, json!({ "n": 1 })),
        "the waiting call is served by the other runner"
    );
    assert!(
        waited < Duration::from_secs(5),
        "placed again at the verdict, not at its deadline: {waited:?}"
    );
    assert_eq!(other.seen().len(), served_before + 2);
    let cancelled = || first.shared.cancelled.load(std::sync::atomic::Ordering::SeqCst) == 1;
    assert!(
        ferrofn_tests::lb_fixture::eventually(Duration::from_secs(5), cancelled).await,
        "the first runner sees the waiting call's stream reset"
    );
    lb.stop().await;
    Ok(())
}
