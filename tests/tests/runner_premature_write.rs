//! Fn's premature-write rule against the real Docker engine and the testfn image: a function that
//! answers before the whole request is in is a 502 in Fn mode; in accept-ack mode the exchange is
//! full duplex.
//! Every test ends with a drain (SIGTERM) and checks that no container of its runner is left.

use std::time::Duration;

use anyhow::Result;

use ferrofn_tests::images::TESTFN_IMAGE;
use ferrofn_tests::runner_proc::{EngageOpts, call_json, engage, start_with_testfn as setup};
use ferrofn_tests::testfn::{fn_id, knobs, pattern};

#[tokio::test]
async fn premature_write_is_502() -> Result<()> {
    let (docker, runner) = setup(&[]).await?;
    let mut client = runner.client().await?;
    let call = call_json(TESTFN_IMAGE.as_str(), &fn_id(6), &[], |_| {});
    let mut body = knobs(serde_json::json!({"writeBeforeRead": true}));
    body.extend_from_slice(&pattern(64 * 1024));
    let opts = EngageOpts {
        hold_eof_until_reply: true,
        ..Default::default()
    };
    let r = engage(&mut client, &call, &body, opts).await?;
    let f = r.finished();
    assert_eq!((f.success, f.error_code), (false, 502), "{f:?}");
    assert_eq!(
        f.error_str,
        "function invoked write before receiving entire request"
    );
    assert_eq!(r.result_starts, 0, "no ResultStart for a premature write");
    runner.drain_and_check(&docker).await
}

/// The premature-write rule depends on the mode: with the accept ack (ferrofn LB) an echo that
/// answers while the request is still open streams both ways; without it (Fn LB) the same exchange
/// is Fn's premature write. The eof frame is held until a ResultStart arrives, so the function can
/// only finish if the runner relays its head before the request ends.
#[tokio::test]
async fn accept_ack_mode_is_full_duplex_and_fn_mode_keeps_the_premature_write() -> Result<()> {
    let (docker, runner) = setup(&[]).await?;
    let mut client = runner.client().await?;
    let mut body = knobs(serde_json::json!({"echoBody": true}));
    // Far more than every window on the way (body channel, h2, the unix socket): both directions
    // must flow at the same time for this to finish.
    body.extend_from_slice(&pattern(4 << 20));
    let ack = EngageOpts {
        extensions: [("ferrofn-accept-ack".to_string(), "1".to_string())].into(),
        hold_eof_until_result_start: true,
        ..Default::default()
    };
    let call = call_json(TESTFN_IMAGE.as_str(), &fn_id(20), &[], |_| {});
    let r = tokio::time::timeout(
        Duration::from_secs(60),
        engage(&mut client, &call, &body, ack.clone()),
    )
    .await??;
    assert!(r.finished().success, "{:?}\n{}", r.finished(), runner.logs());
    assert_eq!((r.acks, r.result_starts, r.status), (1, 1, Some(200)));
    assert_eq!(r.body.len(), body.len());
    assert!(r.body == body, "echoed body differs");

    // A function that answers without reading the rest: fine in full duplex, and the container's
    // next call is not stuck behind the unread request (the FDK connection is replaced).
    let mut unread = knobs(serde_json::json!({"writeBeforeRead": true, "echoContent": "early"}));
    unread.extend_from_slice(&pattern(4 << 20));
    let plain_ack = EngageOpts {
        hold_eof_until_result_start: false,
        ..ack.clone()
    };
    let next = knobs(serde_json::json!({"echoContent": "next"}));
    for (what, b, opts) in [
        ("answer without reading", unread, ack.clone()),
        ("next call", next, plain_ack),
    ] {
        let call = call_json(TESTFN_IMAGE.as_str(), &fn_id(20), &[], |_| {});
        let r = tokio::time::timeout(Duration::from_secs(30), engage(&mut client, &call, &b, opts))
            .await
            .map_err(|_| anyhow::anyhow!("{what}: no answer within 30 s\n{}", runner.logs()))??;
        assert!(
            r.finished().success,
            "{what}: {:?}\n{}",
            r.finished(),
            runner.logs()
        );
        assert_eq!(r.status, Some(200), "{what}");
        assert!(
            String::from_utf8_lossy(&r.body).contains("\"echoContent\""),
            "{what}: {:?}",
            String::from_utf8_lossy(&r.body)
        );
    }

    let fn_mode = EngageOpts {
        hold_eof_until_result_start: true,
        ..Default::default()
    };
    let call = call_json(TESTFN_IMAGE.as_str(), &fn_id(20), &[], |_| {});
    let r = tokio::time::timeout(
        Duration::from_secs(60),
        engage(&mut client, &call, &body, fn_mode),
    )
    .await??;
    let f = r.finished();
    assert_eq!((f.success, f.error_code), (false, 502), "{f:?}");
    assert_eq!(
        f.error_str,
        "function invoked write before receiving entire request"
    );
    assert_eq!(r.result_starts, 0, "no ResultStart for a premature write");
    runner.drain_and_check(&docker).await
}
