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

/// ferrofn's additions between ferrofn peers: frames larger than 10 KiB when the LB asks for them
/// (`ferrofn-frame-bytes`), and a small body sent inline behind the TryCall (`ferrofn-inline-body`),
/// which must match its announced length.
#[tokio::test]
async fn large_frames_and_inline_bodies_between_ferrofn_peers() -> Result<()> {
    let (docker, runner) = setup(&[]).await?;
    let mut client = runner.client().await?;
    let ext = |pairs: &[(&str, String)]| {
        let mut m: std::collections::HashMap<String, String> =
            [("ferrofn-accept-ack".to_owned(), "1".to_owned())].into();
        m.extend(pairs.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
        EngageOpts {
            extensions: m,
            ..EngageOpts::default()
        }
    };
    let call = || call_json(TESTFN_IMAGE.as_str(), &fn_id(7), &[], |_| {});
    let mut body = knobs(serde_json::json!({"echoBody": true}));
    body.extend_from_slice(&pattern(600 * 1024));

    let r = engage(
        &mut client,
        &call(),
        &body,
        ext(&[("ferrofn-frame-bytes", "65536".into())]),
    )
    .await?;
    assert!(r.finished().success, "{:?}\n{}", r.finished(), runner.logs());
    assert!(r.body == body, "echoed body differs");
    assert!(
        r.max_frame > 10240 && r.max_frame <= 65536,
        "frames up to the size asked for: {}",
        r.max_frame
    );
    // Not asked: Fn's 10 KiB.
    let r = engage(&mut client, &call(), &body, ext(&[])).await?;
    assert!(r.finished().success && r.body == body);
    assert!(r.max_frame <= 10240, "frame of {} bytes", r.max_frame);

    let mut small = knobs(serde_json::json!({"echoBody": true}));
    small.extend_from_slice(&pattern(20 * 1024));
    let len = small.len().to_string();
    let r = engage(&mut client, &call(), &small, ext(&[("ferrofn-inline-body", len)])).await?;
    assert!(r.finished().success, "{:?}", r.finished());
    assert!(r.body == small, "inline body reached the function whole");
    // An announced length the frames do not match is the LB's protocol error; nothing runs.
    let wrong = (small.len() + 5).to_string();
    let r = engage(
        &mut client,
        &call(),
        &small,
        ext(&[("ferrofn-inline-body", wrong)]),
    )
    .await?;
    assert!(!r.finished().success, "{:?}", r.finished());
    assert_eq!(r.status, None, "no answer from the function");
    runner.drain_and_check(&docker).await
}
