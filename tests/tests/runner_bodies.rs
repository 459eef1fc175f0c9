//! The runner's Engage against the real Docker engine and the testfn image: a body echoed over many
//! 10 KiB frames with the CallFinished details, empty bodies, a 5.3 MB response, and the response
//! cap (Fn's 502, the container kept).
//! Every test ends with a drain (SIGTERM) and checks that no container of its runner is left.

use anyhow::Result;

use ferrofn_tests::images::TESTFN_IMAGE;
use ferrofn_tests::runner_proc::{EngageOpts, call_json, containers_of, engage, start_with_testfn as setup};
use ferrofn_tests::testfn::{fn_id, knobs, pattern};

#[tokio::test]
async fn echo_body_over_many_frames() -> Result<()> {
    let (docker, runner) = setup(&[]).await?;
    let mut client = runner.client().await?;
    let mut body = knobs(serde_json::json!({"echoBody": true}));
    body.extend_from_slice(&pattern(100 * 1024));
    let call = call_json(TESTFN_IMAGE.as_str(), "01FNECHO000000000000000000", &[], |_| {});
    let r = engage(&mut client, &call, &body, EngageOpts::default()).await?;
    let f = r.finished();
    assert!(f.success, "{f:?}\n{}", runner.logs());
    assert_eq!(r.status, Some(200));
    assert_eq!(r.result_starts, 1);
    assert_eq!(r.body.len(), body.len());
    assert!(r.body == body, "echoed body differs");
    assert!(r.frames >= 10, "expected many frames, got {}", r.frames);
    assert!(r.max_frame <= 10240, "frame of {} bytes", r.max_frame);
    assert_eq!(r.after_finished, 0);
    assert!(r.error.is_none(), "{:?}", r.error);
    let id: serde_json::Value = serde_json::from_str(&call)?;
    assert_eq!(
        f.details,
        id["id"].as_str().unwrap(),
        "CallFinished.details is the LB's call id"
    );
    assert!(!f.created_at.is_empty() && !f.started_at.is_empty() && !f.completed_at.is_empty());
    assert!(f.execution_duration > 0);
    assert_eq!(f.image, TESTFN_IMAGE.as_str());
    runner.drain_and_check(&docker).await
}

#[tokio::test]
async fn empty_body_and_large_bodies_and_the_response_cap() -> Result<()> {
    let (docker, runner) = setup(&[("FN_MAX_RESPONSE_SIZE", "6291456")]).await?;
    let mut client = runner.client().await?;
    let call = || call_json(TESTFN_IMAGE.as_str(), &fn_id(1), &[], |_| {});

    let r = engage(
        &mut client,
        &call(),
        &knobs(serde_json::json!({"isEmptyBody": true})),
        EngageOpts::default(),
    )
    .await?;
    assert!(r.finished().success, "{:?}", r.finished());
    assert_eq!((r.status, r.body.len()), (Some(200), 0));

    // No body at all: exactly one eof frame from the client.
    let r = engage(&mut client, &call(), b"", EngageOpts::default()).await?;
    assert!(r.finished().success, "{:?}", r.finished());

    let size = 5 * 1024 * 1024 + 300 * 1024;
    let r = engage(
        &mut client,
        &call(),
        &knobs(serde_json::json!({"responseSize": size})),
        EngageOpts::default(),
    )
    .await?;
    assert!(r.finished().success, "{:?}", r.finished());
    assert_eq!(r.body.len(), size);
    assert!(r.body == pattern(size), "5.3 MB response corrupted");
    assert!(r.max_frame <= 10240 && r.frames >= size / 10240);

    let over = 6 * 1024 * 1024 + 1;
    let r = engage(
        &mut client,
        &call(),
        &knobs(serde_json::json!({"responseSize": over})),
        EngageOpts::default(),
    )
    .await?;
    let f = r.finished();
    assert!(!f.success);
    assert_eq!(
        (f.error_code, f.error_str.as_str()),
        (502, "function response body too large")
    );
    assert!(f.error_user);

    // The container survived the over-size body (Fn keeps it): the next call reuses it.
    let r = engage(
        &mut client,
        &call(),
        &knobs(serde_json::json!({"echoContent": "after"})),
        EngageOpts::default(),
    )
    .await?;
    assert!(r.finished().success, "{:?}", r.finished());
    assert_eq!(containers_of(&docker, &runner.name).await?.len(), 1);
    runner.drain_and_check(&docker).await
}
