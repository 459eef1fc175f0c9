//! Headers both ways through the runner, against the real Docker engine and the testfn image:
//! the call's headers, trace context, deadline and config reach the function (hop-by-hop headers
//! dropped), its headers come back canonical; the accept ack only when the TryCall asks for it.
//! Every test ends with a drain (SIGTERM) and checks that no container of its runner is left.

use anyhow::Result;

use ferrofn_tests::images::TESTFN_IMAGE;
use ferrofn_tests::runner_proc::{EngageOpts, call_json, engage, start_with_testfn as setup};
use ferrofn_tests::testfn::{fn_id, knobs};

#[tokio::test]
async fn headers_both_ways_and_the_accept_ack() -> Result<()> {
    let (docker, runner) = setup(&[]).await?;
    let mut client = runner.client().await?;
    let call = call_json(TESTFN_IMAGE.as_str(), &fn_id(7), &[("MY_CONFIG", "v1")], |v| {
        v["headers"]["X-Custom"] = serde_json::json!(["a", "b"]);
        v["headers"]["Connection"] = serde_json::json!(["keep-alive"]);
        v["headers"]["Content-Length"] = serde_json::json!(["12345"]);
    });
    let id = serde_json::from_str::<serde_json::Value>(&call)?["id"]
        .as_str()
        .unwrap()
        .to_string();
    let k = serde_json::json!({"returnHeaders": {"X-Out": ["1", "2"]}, "responseContentType": "application/x-test"});
    let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let opts = EngageOpts {
        metadata: vec![
            ("traceparent", trace.to_string()),
            ("fn_request_id", "req-1".to_string()),
        ],
        ..Default::default()
    };
    let r = engage(&mut client, &call, &knobs(k.clone()), opts).await?;
    assert!(r.finished().success, "{:?}", r.finished());
    assert_eq!(r.acks, 0, "no ack unless the TryCall asks for it");
    assert_eq!(r.header("X-Out"), vec!["1", "2"]);
    assert_eq!(r.header("Content-Type"), vec!["application/x-test"]);
    assert!(
        r.headers.iter().any(|h| h.key == "X-Out"),
        "canonical header names: {:?}",
        r.headers
    );
    let doc: serde_json::Value = serde_json::from_slice(&r.body)?;
    let seen = &doc["header"];
    assert_eq!(seen["Fn-Call-Id"], serde_json::json!([id]));
    assert_eq!(seen["X-Custom"], serde_json::json!(["a", "b"]));
    let tp = seen["Traceparent"][0].as_str().unwrap_or_default();
    assert!(
        tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && !tp.contains("00f067aa0ba902b7"),
        "the function gets the LB's trace with the runner's hop as parent: {seen}"
    );
    assert!(
        seen.get("Connection").is_none(),
        "hop-by-hop header forwarded: {seen}"
    );
    assert_ne!(
        seen["Content-Length"],
        serde_json::json!(["12345"]),
        "Content-Length copied: {seen}"
    );
    let deadline = seen["Fn-Deadline"][0].as_str().unwrap_or_default();
    let deadline = time::OffsetDateTime::parse(deadline, &time::format_description::well_known::Rfc3339)?;
    let left = deadline - time::OffsetDateTime::now_utc();
    assert!(
        left > time::Duration::seconds(20) && left <= time::Duration::seconds(31),
        "Fn-Deadline {deadline} ({left})"
    );
    assert_eq!(doc["config"]["MY_CONFIG"], "v1");
    assert_eq!(doc["config"]["FN_LISTENER"], "unix:/tmp/iofs/lsnr.sock");
    assert_eq!(doc["config"]["FN_FORMAT"], "http-stream");

    let opts = EngageOpts {
        extensions: [("ferrofn-accept-ack".to_string(), "1".to_string())].into(),
        ..Default::default()
    };
    let call = call_json(TESTFN_IMAGE.as_str(), &fn_id(7), &[("MY_CONFIG", "v1")], |_| {});
    let r = engage(&mut client, &call, &knobs(k), opts).await?;
    assert!(r.finished().success, "{:?}", r.finished());
    assert_eq!(r.acks, 1, "exactly one zero-length ack frame before ResultStart");
    assert_eq!(r.status, Some(200));
    runner.drain_and_check(&docker).await
}
