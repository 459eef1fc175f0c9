//! The trigger front `/t/{app}/{source}`: request headers renamed to `Fn-Http-H-*` plus Fn's
//! `Fn-Http-*` headers, the trigger id in the call model, and the response mapped back (headers
//! unwrapped, `Fn-Http-Status` applied unless the function failed).

use std::collections::BTreeMap;

use serde_json::{Value, json};

use ferrofn_tests::lb_fixture::setup;
use ferrofn_tests::lb_proc::fake_runner::{Behaviour, FakeRunner};
use ferrofn_tests::lb_proc::{json as call, request};

#[tokio::test]
async fn trigger_renames_headers_and_maps_the_response() {
    let r = FakeRunner::start(Behaviour {
        headers: vec![
            ("Content-Type".into(), "application/json".into()),
            ("Fn-Http-H-X-Out".into(), "v".into()),
            ("Fn-Http-Status".into(), "201".into()),
            ("Fn-Fdk-Version".into(), "fdk-rust/1".into()),
        ],
        ..Behaviour::default()
    })
    .await
    .unwrap();
    let (lb, app, f) = setup(&[&r], |_| {}).await;
    let t = call(
        "POST",
        &lb.url("/v2/triggers"),
        Some(json!({"app_id": app["id"], "fn_id": f["id"], "name": "hook", "type": "http", "source": "/hook/x"})),
    )
    .await
    .unwrap()
    .json();
    let headers = BTreeMap::from([("x-in", "a"), ("content-type", "text/plain")]);
    let resp = request("PUT", &lb.url("/t/eapp/hook/x?q=1"), &headers, "hi")
        .await
        .unwrap();
    assert_eq!(resp.status, 201, "{}", resp.text());
    assert_eq!(resp.text(), "hi");
    assert_eq!(resp.header("x-out"), "v");
    assert_eq!(resp.header("content-type"), "application/json");
    assert_eq!(resp.header("fn-call-id").len(), 26);
    assert_eq!(resp.header("fn-fdk-version"), "");
    assert_eq!(resp.header("fn-http-status"), "");
    let m: Value = serde_json::from_str(&r.seen()[0].try_call.models_call_json).unwrap();
    let h = &m["headers"];
    assert_eq!(h["Fn-Http-H-X-In"], json!(["a"]));
    assert_eq!(h["Content-Type"], json!(["text/plain"]));
    assert_eq!(h["Fn-Http-Method"], json!(["PUT"]));
    assert_eq!(
        h["Fn-Http-Request-Url"],
        json!([format!("http://{}/t/eapp/hook/x?q=1", lb.addr())])
    );
    assert_eq!(h["Fn-Intent"], json!(["httprequest"]));
    assert!(h.get("X-In").is_none());
    assert_eq!(m["trigger_id"], t["id"]);
    assert_eq!(m["method"], json!("PUT"));
    // A function error status >= 400 wins over Fn-Http-Status.
    r.set(|b| b.error = Some((502, "function failed".into(), true)));
    let resp = request("GET", &lb.url("/t/eapp/hook/x"), &BTreeMap::new(), "")
        .await
        .unwrap();
    assert_eq!(resp.status, 502);
    lb.stop().await;
}
