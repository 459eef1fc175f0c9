//! The LB's health loop (engage-protocol.md §3): runners that fail their status check or report
//! NOT_SERVING (draining) get no call until they recover, a stopped runner is marked down, and a
//! runner without grpc.health (an Fn runner) stays up.

use std::time::{Duration, Instant};

use ferrofn_proto::health::health_check_response::ServingStatus;
use ferrofn_tests::lb_fixture::{eventually, invoke_path, setup};
use ferrofn_tests::lb_proc::fake_runner::{Behaviour, FakeRunner};
use ferrofn_tests::lb_proc::json as call;

#[tokio::test]
async fn health_loop_skips_down_and_draining_runners_and_keeps_fn_runners() {
    // No grpc.health (UNIMPLEMENTED) as on an Fn runner: still up.
    let fnr = FakeRunner::start(Behaviour {
        health: None,
        ..Behaviour::default()
    })
    .await
    .unwrap();
    let (lb, _app, f) = setup(&[&fnr], |_| {}).await;
    assert_eq!(
        call("POST", &lb.url(&invoke_path(&f)), None)
            .await
            .unwrap()
            .status,
        200
    );
    lb.stop().await;

    let r = FakeRunner::start(Behaviour {
        status_failed: true,
        health: Some(ServingStatus::Serving),
        ..Behaviour::default()
    })
    .await
    .unwrap();
    let (lb, _app, f) = setup(&[&r], |s| s.placer_timeout_ms = 600).await;
    // Down after the start-up probe: the call waits for a runner to come up (Fn's placer loop),
    // then answers 503 at the placer timeout, with no Engage attempted.
    let started = Instant::now();
    let resp = call("POST", &lb.url(&invoke_path(&f)), None).await.unwrap();
    assert_eq!(resp.status, 503);
    assert!(
        started.elapsed() >= Duration::from_millis(550),
        "{:?}",
        started.elapsed()
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(r.engaged(), 0);
    // Recovers, then drains: the pool follows (probe every 200 ms).
    r.set(|b| b.status_failed = false);
    let pool = lb.handle.pool.clone();
    let up = || pool.snapshot().iter().all(|(c, _)| c.eligible);
    assert!(eventually(Duration::from_secs(5), up).await, "runner back up");
    assert_eq!(
        call("POST", &lb.url(&invoke_path(&f)), None)
            .await
            .unwrap()
            .status,
        200
    );
    r.set(|b| b.health = Some(ServingStatus::NotServing));
    let draining = || pool.snapshot().iter().all(|(c, _)| !c.eligible);
    assert!(
        eventually(Duration::from_secs(5), draining).await,
        "runner draining"
    );
    let before = r.engaged();
    assert_eq!(
        call("POST", &lb.url(&invoke_path(&f)), None)
            .await
            .unwrap()
            .status,
        503
    );
    assert_eq!(r.engaged(), before);
    // A runner that stops answering is marked down.
    r.set(|b| b.health = Some(ServingStatus::Serving));
    assert!(eventually(Duration::from_secs(5), up).await);
    r.stop();
    assert!(
        eventually(Duration::from_secs(5), draining).await,
        "stopped runner marked down"
    );
    lb.stop().await;
}
