//! Detached invokes (`Fn-Invoke-Type: detached`): 202 with a call id once a runner has the call, in
//! both Engage modes; the body keeps flowing to the runner after the 202, however large.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

use ferrofn_proto::health::health_check_response::ServingStatus;
use ferrofn_tests::lb_fixture::{eventually, invoke_path, setup};
use ferrofn_tests::lb_proc::fake_runner::{Behaviour, FakeRunner};
use ferrofn_tests::lb_proc::request;

#[tokio::test]
async fn detached_invoke_answers_202() {
    for accept_ack in [false, true] {
        let b = Behaviour {
            accept_ack,
            health: Some(ServingStatus::Serving),
            ..Behaviour::default()
        };
        let r = FakeRunner::start(b).await.unwrap();
        let (lb, _app, f) = setup(&[&r], |_| {}).await;
        let headers = BTreeMap::from([("fn-invoke-type", "detached")]);
        let resp = request("POST", &lb.url(&invoke_path(&f)), &headers, "payload")
            .await
            .unwrap();
        assert_eq!(
            (resp.status, resp.body.len()),
            (202, 0),
            "ack={accept_ack}: {}",
            resp.text()
        );
        assert_eq!(resp.header("fn-call-id").len(), 26);
        let m: Value = serde_json::from_str(&r.seen()[0].try_call.models_call_json).unwrap();
        assert_eq!(m["type"], json!("detached"));
        assert_eq!(m["config"]["FN_TYPE"], json!("sync"), "as Fn");
        assert_eq!(m["headers"]["Fn-Invoke-Type"], json!(["detached"]));
        // The body still reaches the runner after the 202 ack.
        let got = || {
            r.seen()[0]
                .frames
                .iter()
                .flat_map(|d| d.data.to_vec())
                .collect::<Vec<u8>>()
                == b"payload"
        };
        assert!(
            eventually(Duration::from_secs(5), got).await,
            "ack={accept_ack}: body delivered"
        );
        lb.stop().await;
    }
}

#[tokio::test]
async fn detached_body_still_flows_after_an_early_202() {
    // An Fn runner acks a detached call when it gets a slot, before the function reads its input:
    // a body larger than the HTTP/2 windows must keep flowing after the 202 has been answered.
    let r = FakeRunner::start(Behaviour {
        discard: true,
        ..Behaviour::default()
    })
    .await
    .unwrap();
    let (lb, _app, f) = setup(&[&r], |_| {}).await;
    let headers = BTreeMap::from([("fn-invoke-type", "detached")]);
    let body = vec![b'z'; 4 << 20];
    let resp = request("POST", &lb.url(&invoke_path(&f)), &headers, body)
        .await
        .unwrap();
    assert_eq!(resp.status, 202);
    let all_in = || r.shared.bytes_in.load(std::sync::atomic::Ordering::SeqCst) == 4 << 20;
    assert!(
        eventually(Duration::from_secs(10), all_in).await,
        "the whole body reached the runner"
    );
    let done = || r.shared.completed.load(std::sync::atomic::Ordering::SeqCst) == 1;
    assert!(
        eventually(Duration::from_secs(10), done).await,
        "the call ran to its end"
    );
    lb.stop().await;
}
