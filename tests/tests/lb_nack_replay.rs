//! NACKs (engage-protocol.md §2.3, §2.6): a runner's 503 before it takes the call sends the call,
//! body replayed, to the next runner; errors after the runner took the call are final; when every
//! runner keeps refusing, the client gets Fn's 503 at the placer timeout.

use std::time::{Duration, Instant};

use serde_json::json;

use ferrofn_tests::lb_fixture::{invoke_path, setup};
use ferrofn_tests::lb_proc::fake_runner::{Behaviour, FakeRunner};
use ferrofn_tests::lb_proc::json as call;

#[tokio::test]
async fn nack_falls_through_and_committed_errors_are_final() {
    let a = FakeRunner::start(Behaviour {
        nack: true,
        ..Behaviour::default()
    })
    .await
    .unwrap();
    let b = FakeRunner::start(Behaviour::default()).await.unwrap();
    let (lb, _app, f) = setup(&[&a, &b], |_| {}).await;
    for i in 0..10 {
        let resp = call("POST", &lb.url(&invoke_path(&f)), Some(json!({"i": i})))
            .await
            .unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(
            resp.json(),
            json!({"i": i}),
            "the body was replayed to the second runner"
        );
    }
    assert_eq!(b.engaged(), 10);
    assert!(a.engaged() <= 10);
    // A committed failure goes to the client and is not retried elsewhere.
    b.set(|x| x.error = Some((502, "function failed".into(), true)));
    let before = b.engaged();
    let resp = call("POST", &lb.url(&invoke_path(&f)), None).await.unwrap();
    assert_eq!(
        (resp.status, resp.text()),
        (502, "{\"message\":\"function failed\"}\n".into())
    );
    assert_eq!(resp.header("fn-call-id").len(), 26);
    assert_eq!(b.engaged(), before + 1);
    // Fn's errorCode 0 becomes 500 (Go would answer 200).
    b.set(|x| x.error = Some((0, "json: cannot unmarshal".into(), false)));
    let resp = call("POST", &lb.url(&invoke_path(&f)), None).await.unwrap();
    assert_eq!(
        (resp.status, resp.json()["message"].clone()),
        (500, json!("json: cannot unmarshal"))
    );
    b.set(|x| x.error = Some((504, "Timed out".into(), true)));
    assert_eq!(
        call("POST", &lb.url(&invoke_path(&f)), None)
            .await
            .unwrap()
            .status,
        504
    );
    lb.stop().await;
}

#[tokio::test]
async fn every_runner_nacking_gives_503_at_the_placer_timeout() {
    let a = FakeRunner::start(Behaviour {
        nack: true,
        ..Behaviour::default()
    })
    .await
    .unwrap();
    let b = FakeRunner::start(Behaviour {
        nack: true,
        ..Behaviour::default()
    })
    .await
    .unwrap();
    let (lb, _app, f) = setup(&[&a, &b], |s| s.placer_timeout_ms = 400).await;
    let started = Instant::now();
    let resp = call("POST", &lb.url(&invoke_path(&f)), None).await.unwrap();
    let took = started.elapsed();
    assert_eq!(
        (resp.status, resp.json()["message"].clone()),
        (503, json!("Timed out - server too busy"))
    );
    assert_eq!(resp.header("retry-after"), "15");
    assert!(
        took >= Duration::from_millis(380) && took < Duration::from_secs(5),
        "{took:?}"
    );
    // Passes 10 ms apart: both runners tried several times, evenly.
    let (na, nb) = (a.engaged(), b.engaged());
    assert!(na >= 3 && na.abs_diff(nb) <= 1, "{na} vs {nb}");
    lb.stop().await;
}
