//! An Engage that cannot be opened (engage-protocol.md §2.6): a stopped runner (connect refused)
//! or one whose TLS handshake never answers (connect timeout) is skipped for the next runner and
//! marked down at once, and every call runs exactly once.

use std::time::{Duration, Instant};

use serde_json::json;

use ferrofn_tests::lb_fixture::{black_hole, invoke_path, setup_addrs};
use ferrofn_tests::lb_proc::fake_runner::{Behaviour, FakeRunner};
use ferrofn_tests::lb_proc::json as call;

#[tokio::test]
async fn open_failure_on_a_stopped_runner_tries_the_next_and_marks_it_down() {
    use ferrofn_lb::pool::RunnerState;
    let a = FakeRunner::start(Behaviour::default()).await.unwrap();
    let b = FakeRunner::start(Behaviour::default()).await.unwrap();
    // Probes once a minute: only the failed open can mark the stopped runner down.
    let (lb, f) = setup_addrs(vec![a.address(), b.address()], 30, |s| {
        s.health_interval_ms = 60_000;
    })
    .await;
    let pool = lb.handle.pool.clone();
    a.stop();
    let addr = a.addr;
    let mut closed = false;
    for _ in 0..250 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(closed, "the stopped runner's port still accepts");
    assert_eq!(pool.runners()[0].state(), RunnerState::Up, "not probed since");
    // A connection opened before the stop may still serve a stream or two.
    let a_before = a.engaged();
    // Naive placement starts at a random runner: call until the stopped one was tried.
    let mut calls = 0;
    while pool.runners()[0].state() == RunnerState::Up && calls < 30 {
        let resp = call("POST", &lb.url(&invoke_path(&f)), Some(json!({"n": calls})))
            .await
            .unwrap();
        assert_eq!(
            (resp.status, resp.json()),
            (200, json!({"n": calls})),
            "call {calls}"
        );
        calls += 1;
    }
    assert_eq!(
        pool.runners()[0].state(),
        RunnerState::Down,
        "marked down by the failed open"
    );
    assert_eq!(
        a.engaged() - a_before + b.engaged(),
        calls,
        "every call ran exactly once"
    );
    lb.stop().await;
}

#[tokio::test]
async fn connect_timeout_to_a_runner_is_retried_on_the_next_one() {
    use ferrofn_common::certs::{ClusterCertOptions, generate_cluster};
    use ferrofn_common::tls::{ReloadingServerTls, TlsFiles};
    use ferrofn_lb::pool::RunnerState;
    ferrofn_common::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let opts = ClusterCertOptions {
        runner_names: vec!["r1".into()],
        ..ClusterCertOptions::default()
    };
    let certs = generate_cluster(dir.path(), &opts).unwrap();
    let server_tls = ReloadingServerTls::new(TlsFiles::runner_in(dir.path(), "r1")).unwrap();
    let good = FakeRunner::start_tls(Behaviour::default(), Some(server_tls))
        .await
        .unwrap();
    // TCP connects, the TLS handshake never answers: tonic's connect timeout (500 ms), which it
    // reports as UNKNOWN "transport error".
    let (hole, _task) = black_hole().await;
    let lb_files = certs.lb.clone();
    let (lb, f) = setup_addrs(vec![hole, good.address()], 30, |s| {
        s.plaintext = false;
        s.tls.ca = lb_files.ca.clone();
        s.tls.cert = lb_files.cert.clone();
        s.tls.key = lb_files.key.clone();
        s.health_interval_ms = 60_000;
    })
    .await;
    let pool = lb.handle.pool.clone();
    let mut tried = 0;
    for n in 0..30 {
        // The start-up probe found it down; pretend the health loop has not noticed yet.
        pool.runners()[0].set_state(RunnerState::Up, "test");
        let started = Instant::now();
        let resp = call("POST", &lb.url(&invoke_path(&f)), Some(json!({"n": n})))
            .await
            .unwrap();
        assert_eq!((resp.status, resp.json()), (200, json!({"n": n})), "call {n}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        if pool.runners()[0].state() == RunnerState::Down {
            tried += 1;
            if tried == 2 {
                break;
            }
        }
    }
    assert_eq!(
        tried, 2,
        "the silent runner was tried first in two calls and marked down"
    );
    lb.stop().await;
}
