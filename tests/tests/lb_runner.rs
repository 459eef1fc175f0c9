//! The LB against the real `ferrofn-runner` and the testfn image (Docker): the runner advertises the
//! accept ack, so calls stream both ways; echo, large bodies, config, triggers, detached 202, and
//! Fn-style exact errors for a short failing response. Each test drains its runner and checks that
//! no container is left.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Result;
use bollard::Docker;
use serde_json::{Value, json};

use ferrofn_tests::images::{FnImage, TESTFN_IMAGE, ensure_image};
use ferrofn_tests::lb_proc::{LbProc, json as call, request};
use ferrofn_tests::runner_proc::RunnerProc;

async fn setup(env: &[(&str, &str)]) -> Result<(Docker, RunnerProc, LbProc, Value, Value)> {
    let docker = ferrofn_tests::docker::connect().await?;
    ensure_image(&docker, FnImage::Testfn).await?;
    let runner = RunnerProc::start(env).await?;
    let addr = runner.grpc_addr.to_string();
    let lb = LbProc::start(|s| s.runner_addresses = vec![addr]).await?;
    let app = call(
        "POST",
        &lb.url("/v2/apps"),
        Some(json!({"name": "rapp", "config": {"APPVAR": "a"}})),
    )
    .await?
    .json();
    let f = call(
        "POST",
        &lb.url("/v2/fns"),
        Some(json!({"app_id": app["id"], "name": "echo", "image": TESTFN_IMAGE.as_str(), "config": {"FNVAR": "f"}})),
    )
    .await?
    .json();
    Ok((docker, runner, lb, app, f))
}

async fn finish(docker: &Docker, runner: RunnerProc, lb: LbProc) -> Result<()> {
    lb.stop().await;
    runner.drain_and_check(docker).await
}

#[tokio::test]
async fn invoke_trigger_and_detached_through_a_real_runner() -> Result<()> {
    let (docker, runner, lb, app, f) = setup(&[]).await?;
    assert!(
        lb.handle.pool.runners()[0].supports_accept_ack(),
        "the ferrofn runner advertises the accept ack"
    );
    let path = format!("/invoke/{}", f["id"].as_str().unwrap());

    // Echo with config and Fn-Call-Id.
    let headers = BTreeMap::from([("content-type", "application/json")]);
    let r = request(
        "POST",
        &lb.url(&path),
        &headers,
        json!({"echoContent": "hi"}).to_string(),
    )
    .await?;
    assert_eq!(r.status, 200, "{}\n{}", r.text(), runner.logs());
    let body = r.json();
    assert_eq!(body["request"]["echoContent"], json!("hi"));
    let call_id = r.header("fn-call-id");
    assert_eq!(call_id.len(), 26);
    assert_eq!(
        body["header"]["Fn-Call-Id"],
        json!([call_id]),
        "the function sees the LB's call id"
    );
    assert_eq!(body["config"]["APPVAR"], json!("a"));
    assert_eq!(body["config"]["FNVAR"], json!("f"));
    assert_eq!(body["config"]["FN_FN_ID"], f["id"]);

    // A 3 MB body streamed in, a 3 MB response streamed out. (Echoing while still reading would
    // be Fn's premature write, a 502 on the runner, so the function reads everything first.)
    let mut big = json!({"responseSize": 3_000_000}).to_string().into_bytes();
    big.extend((0..3_000_000u32).map(|i| b'a' + (i % 26) as u8));
    let r = request("POST", &lb.url(&path), &BTreeMap::new(), big).await?;
    assert_eq!(
        r.status,
        200,
        "{}",
        String::from_utf8_lossy(&r.body[..r.body.len().min(300)])
    );
    assert_eq!(r.body.len(), 3_000_000);
    assert!(
        r.body
            .iter()
            .enumerate()
            .all(|(i, b)| *b == b'a' + (i % 26) as u8),
        "response differs"
    );

    // HTTP trigger.
    let t = call(
        "POST",
        &lb.url("/v2/triggers"),
        Some(json!({"app_id": app["id"], "fn_id": f["id"], "name": "t", "type": "http", "source": "/echo"})),
    )
    .await?;
    assert_eq!(t.status, 200);
    let r = request(
        "POST",
        &lb.url("/t/rapp/echo"),
        &BTreeMap::from([("x-in", "1")]),
        json!({"echoContent": "t"}).to_string(),
    )
    .await?;
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    assert_eq!(body["request"]["echoContent"], json!("t"));
    assert_eq!(body["header"]["Fn-Http-H-X-In"], json!(["1"]));

    // Detached: 202 long before the function's 3 s sleep ends.
    let started = Instant::now();
    let r = request(
        "POST",
        &lb.url(&path),
        &BTreeMap::from([("fn-invoke-type", "detached")]),
        json!({"sleepTime": 3000}).to_string(),
    )
    .await?;
    assert_eq!(r.status, 202, "{}", r.text());
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );

    // A short failing response keeps its exact status (function crash -> 502).
    let r = request(
        "POST",
        &lb.url(&path),
        &BTreeMap::new(),
        json!({"isCrash": true}).to_string(),
    )
    .await?;
    assert_eq!(r.status, 502, "{}", r.text());
    // Let the detached call finish before draining.
    tokio::time::sleep(Duration::from_millis(100)).await;
    finish(&docker, runner, lb).await
}
