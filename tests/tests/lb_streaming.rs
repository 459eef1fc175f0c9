//! Streaming mode (engage-protocol.md §5): with a runner that advertises the accept ack, the LB asks
//! for it, sends no frame of a large body before it (a small one of declared length goes inline,
//! with the TryCall), and streams request and response through bounded windows;
//! short failures keep their status, and a NACK before the ack places the call again.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::json;

use ferrofn_proto::health::health_check_response::ServingStatus;
use ferrofn_tests::lb_fixture::{invoke_path, setup};
use ferrofn_tests::lb_proc::fake_runner::{Behaviour, FakeRunner};
use ferrofn_tests::lb_proc::request;

/// With a runner that advertises the `frames` capability the LB asks for its frame size
/// (`FERROFN_ENGAGE_FRAME_BYTES`) and joins the client's pieces into frames of up to that size;
/// the same body to a runner without it goes in 10 KiB frames (checked above).
#[tokio::test]
async fn large_frames_are_asked_for_and_used_only_with_runners_that_take_them() {
    let r = FakeRunner::start(Behaviour {
        accept_ack: true,
        large_frames: true,
        health: Some(ServingStatus::Serving),
        ..Behaviour::default()
    })
    .await
    .unwrap();
    let (lb, _app, f) = setup(&[&r], |s| s.engage_frame_bytes = 100_000).await;
    assert!(lb.handle.pool.runners()[0].supports_large_frames());
    let body: Vec<u8> = (0..1_000_000u32).map(|i| (i * 13 % 256) as u8).collect();
    let resp = request("POST", &lb.url(&invoke_path(&f)), &BTreeMap::new(), body.clone())
        .await
        .unwrap();
    assert_eq!(resp.status, 200);
    assert!(resp.body[..] == body[..], "body intact");
    let s = &r.seen()[0];
    assert_eq!(
        s.try_call
            .extensions
            .get("ferrofn-frame-bytes")
            .map(String::as_str),
        Some("100000")
    );
    let largest = s.frames.iter().map(|d| d.data.len()).max().unwrap();
    assert!(largest <= 100_000, "no frame over the agreed size: {largest}");
    assert!(
        largest > 10_240,
        "pieces joined into frames larger than Fn's: {largest}"
    );
    assert_eq!(s.frames.iter().map(|d| d.data.len()).sum::<usize>(), body.len());
    lb.stop().await;
}

#[tokio::test]
async fn accept_ack_runner_gets_the_body_only_after_acking_and_streams_back() {
    let r = FakeRunner::start(Behaviour {
        accept_ack: true,
        health: Some(ServingStatus::Serving),
        ..Behaviour::default()
    })
    .await
    .unwrap();
    let (lb, _app, f) = setup(&[&r], |s| s.placer_timeout_ms = 600).await;
    assert!(
        lb.handle.pool.runners()[0].supports_accept_ack(),
        "capability learnt from Status"
    );
    let body: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let resp = request("POST", &lb.url(&invoke_path(&f)), &BTreeMap::new(), body.clone())
        .await
        .unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body.len(), body.len());
    assert!(resp.body[..] == body[..], "streamed response intact");
    let s = &r.seen()[0];
    assert_eq!(
        s.try_call
            .extensions
            .get("ferrofn-accept-ack")
            .map(String::as_str),
        Some("1")
    );
    assert_eq!(
        s.frames_before_ack,
        Some(0),
        "no frame of a large body before the ack"
    );
    assert!(s.frames.iter().all(|d| d.data.len() <= 10240));
    assert!(s.frames.last().unwrap().eof);
    // A small body of declared length goes inline, with the TryCall: no round trip for the ack.
    let small: Vec<u8> = (0..25_000u32).map(|i| (i * 3 % 256) as u8).collect();
    let resp = request("POST", &lb.url(&invoke_path(&f)), &BTreeMap::new(), small.clone())
        .await
        .unwrap();
    assert_eq!((resp.status, &resp.body[..]), (200, &small[..]));
    let s = r.seen().last().cloned().unwrap();
    assert_eq!(
        s.frames_before_ack,
        Some(4),
        "three frames of <= 10 KiB and the eof, before the ack"
    );
    assert!(s.frames.iter().all(|d| d.data.len() <= 10240));
    // The largest inline body, and one byte more (streamed after the ack).
    for (len, inline) in [(64 * 1024, true), (64 * 1024 + 1, false)] {
        let resp = request(
            "POST",
            &lb.url(&invoke_path(&f)),
            &BTreeMap::new(),
            vec![b'i'; len],
        )
        .await
        .unwrap();
        assert_eq!((resp.status, resp.body.len()), (200, len));
        let early = r.seen().last().unwrap().frames_before_ack;
        assert_eq!(early.is_some_and(|n| n > 0), inline, "{len} bytes: {early:?}");
    }
    // Short error answers keep their exact status in this mode too.
    r.set(|b| b.error = Some((502, "function failed".into(), true)));
    let resp = request("POST", &lb.url(&invoke_path(&f)), &BTreeMap::new(), "x")
        .await
        .unwrap();
    assert_eq!(resp.status, 502);
    // NACK before the ack: the call is placed again (here on the same, only runner) until the
    // (short) placer timeout, then 503.
    r.set(|b| b.nack = true);
    let before = r.engaged();
    let started = Instant::now();
    let resp = request("POST", &lb.url(&invoke_path(&f)), &BTreeMap::new(), "x")
        .await
        .unwrap();
    assert_eq!(
        (resp.status, resp.json()["message"].clone()),
        (503, json!("Timed out - server too busy"))
    );
    assert!(
        started.elapsed() >= Duration::from_millis(550),
        "{:?}",
        started.elapsed()
    );
    assert!(r.engaged() - before >= 2, "placed again after the NACK");
    lb.stop().await;
}
