//! What an Fn-mode runner receives from the LB for one invoke (engage-protocol.md §2.2-2.3): the
//! body cut into 10 KiB data frames ending with an eof frame, the call model in the TryCall (type,
//! URL, resources, merged config, headers), the call id and trace context in the gRPC metadata;
//! and the LB's call metrics.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use ferrofn_tests::lb_fixture::{invoke_path, setup};
use ferrofn_tests::lb_proc::fake_runner::{Behaviour, FakeRunner};
use ferrofn_tests::lb_proc::{json as call, request};

#[tokio::test]
async fn fn_mode_frames_body_and_builds_the_call_model() {
    let r = FakeRunner::start(Behaviour::default()).await.unwrap();
    let (lb, app, f) = setup(&[&r], |_| {}).await;
    let body: Vec<u8> = (0..25_000u32).map(|i| (i % 251) as u8).collect();
    let headers = BTreeMap::from([("content-type", "application/octet-stream"), ("x-test", "yes")]);
    let resp = request("POST", &lb.url(&invoke_path(&f)), &headers, body.clone())
        .await
        .unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(&resp.body[..], &body[..], "echoed intact");
    assert_eq!(resp.header("content-type"), "text/plain");
    let call_id = resp.header("fn-call-id");
    assert_eq!(call_id.len(), 26);

    let seen = r.seen();
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    let sizes: Vec<(usize, bool)> = s.frames.iter().map(|d| (d.data.len(), d.eof)).collect();
    assert_eq!(
        sizes,
        vec![(10240, false), (10240, false), (4520, false), (0, true)]
    );
    assert!(s.try_call.extensions.is_empty(), "no ack asked of an Fn runner");
    assert_eq!(s.try_call.slot_hash_id, "");
    assert_eq!(s.metadata.get("fn_request_id"), Some(&call_id));
    assert!(
        s.metadata
            .get("traceparent")
            .is_some_and(|t| t.starts_with("00-"))
    );
    let m: Value = serde_json::from_str(&s.try_call.models_call_json).unwrap();
    assert_eq!(m["id"], json!(call_id));
    assert_eq!(
        (m["type"].clone(), m["method"].clone(), m["status"].clone()),
        (json!("sync"), json!("POST"), json!("running"))
    );
    assert_eq!(
        m["url"],
        json!(format!("http://{}{}", lb.addr(), invoke_path(&f)))
    );
    assert_eq!(
        (
            m["memory"].clone(),
            m["timeout"].clone(),
            m["idle_timeout"].clone()
        ),
        (json!(128), json!(30), json!(30))
    );
    assert_eq!(m["image"], json!("local/e:1"));
    assert_eq!(
        (m["app_id"].clone(), m["fn_id"].clone(), m["app_name"].clone()),
        (app["id"].clone(), f["id"].clone(), json!("eapp"))
    );
    assert_eq!(m["trigger_id"], json!(""));
    let c = &m["config"];
    assert_eq!(
        (
            c["A"].clone(),
            c["B"].clone(),
            c["FN_MEMORY"].clone(),
            c["FN_TYPE"].clone()
        ),
        (json!("1"), json!("2"), json!("128"), json!("sync"))
    );
    assert_eq!(
        (c["FN_FN_ID"].clone(), c["FN_APP_ID"].clone()),
        (f["id"].clone(), app["id"].clone())
    );
    assert_eq!(m["headers"]["X-Test"], json!(["yes"]));
    assert_eq!(m["headers"]["Content-Type"], json!(["application/octet-stream"]));
    assert!(m["headers"].get("Host").is_none());
    assert_eq!(m["completed_at"], json!("0001-01-01T00:00:00.000Z"));

    // An empty body is exactly one empty eof frame.
    let resp = call("POST", &lb.url(&invoke_path(&f)), None).await.unwrap();
    assert_eq!((resp.status, resp.body.len()), (200, 0));
    let frames = &r.seen()[1].frames;
    assert_eq!(frames.len(), 1);
    assert!(frames[0].eof && frames[0].data.is_empty());
    let metrics = call("GET", &lb.url("/metrics"), None).await.unwrap().text();
    for name in [
        "lb_calls_total",
        "lb_placer_attempts_total",
        "lb_call_latency_seconds",
        "lb_runner_up",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
    lb.stop().await;
}
