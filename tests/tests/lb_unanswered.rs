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
