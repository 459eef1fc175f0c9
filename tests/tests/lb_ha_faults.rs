//! Issue 12, point 3: faults of a tier with two LBs on one Postgres registry, nginx in front
//! (`deploy/nginx/ferrofn.conf` with both LBs as upstream servers), under load through nginx:
//! (a) one LB SIGKILLed: only calls it had in flight fail, nginx sends the rest to the other;
//! (b) Postgres restarted: calls to fns the LBs have cached keep succeeding, none fails;
//! (c) a slow database (a lock held on the registry's tables): cached calls never wait on it, and a
//!     management write answers 503 within the registry timeout instead of hanging.
//! The runner is a fake (Engage over gRPC, 20 ms per call): these are faults of the LB tier.

use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::json;

use ferrofn_tests::lb_proc::fake_runner::{Behaviour, FakeRunner};
use ferrofn_tests::lb_proc::{LbBinary, json as call, lb_on_registry, ok};
use ferrofn_tests::load::{CallRecord, LoadConfig, LoadReport, LoadRun};
use ferrofn_tests::nginx::Nginx;
use ferrofn_tests::pg_server::PgServer;

/// The LBs' registry timeout (FERROFN_DB_TIMEOUT_MSECS).
const DB_TIMEOUT: Duration = Duration::from_millis(1000);
const CLIENTS: usize = 16;

struct Tier {
    pg: PgServer,
    db: String,
    runner: FakeRunner,
    a: LbBinary,
    b: LbBinary,
    nginx: Nginx,
    fn_id: String,
}

async fn start_lb(db_url: &str, runner: &FakeRunner) -> LbBinary {
    lb_on_registry(db_url, &runner.address(), &[("FERROFN_DB_TIMEOUT_MSECS", "1000")]).await
}

/// Postgres, a fake runner, two LBs and nginx; a fn registered through A and served once by each
/// LB (so both have it cached).
async fn tier() -> Tier {
    let pg = PgServer::start().await.unwrap();
    let db = pg.create_database().await.unwrap();
    let url = pg.socket_url(&db);
    let runner = FakeRunner::start(Behaviour {
        run_ms: 20,
        ..Behaviour::default()
    })
    .await
    .unwrap();
    let (a, b) = tokio::join!(start_lb(&url, &runner), start_lb(&url, &runner));
    let nginx = Nginx::start(&[a.addr.port(), b.addr.port()]).await.unwrap();
    let app = ok("POST", a.url("/v2/apps"), Some(json!({"name": "ha"}))).await;
    let f = ok(
        "POST",
        a.url("/v2/fns"),
        Some(json!({"app_id": app["id"], "name": "f", "image": "local/ha:1"})),
    )
    .await;
    let fn_id = f["id"].as_str().unwrap().to_owned();
    for lb in [&a, &b] {
        let r = call("POST", &lb.url(&format!("/invoke/{fn_id}")), Some(json!({})))
            .await
            .unwrap();
        assert_eq!(r.status, 200, "warm-up: {}", r.text());
    }
    Tier {
        pg,
        db,
        runner,
        a,
        b,
        nginx,
        fn_id,
    }
}

fn load(t: &Tier) -> LoadRun {
    LoadRun::start(&LoadConfig {
        addr: format!("127.0.0.1:{}", t.nginx.port()).parse().unwrap(),
        path: format!("/invoke/{}", t.fn_id),
        body: Bytes::from_static(b"{}"),
        clients: CLIENTS,
        request_timeout: Duration::from_secs(30),
        stagger: Duration::ZERO,
    })
}

fn failed(r: &LoadReport) -> Vec<&CallRecord> {
    r.calls.iter().filter(|c| !c.ok()).collect()
}

/// Waits (bounded) until the runner has taken `n` more calls, so that a fault strikes a loaded tier.
async fn calls_done(t: &Tier, n: u32) {
    let before = t.runner.engaged();
    let deadline = Instant::now() + Duration::from_secs(30);
    while t.runner.engaged() - before < n {
        assert!(Instant::now() < deadline, "the load did not reach {n} calls");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_lb_costs_only_its_in_flight_calls() {
    let mut t = tier().await;
    let run = load(&t);
    calls_done(&t, 200).await;
    // "After the kill" starts when A is gone: a call that started between the signal and A's
    // death could still be sent to A (found by CI on a loaded machine).
    t.a.kill_and_reap().await.unwrap();
    let killed = Instant::now();
    calls_done(&t, 300).await;
    let report = run.stop(Duration::from_secs(30)).await.unwrap();
    let failures = failed(&report);
    let after: Vec<&CallRecord> = report.calls.iter().filter(|c| c.start > killed).collect();
    let failed_after = after.iter().filter(|c| !c.ok()).count();
    println!(
        "LB A SIGKILLed under {CLIENTS} clients through nginx: {} calls, {} failed (all sent before the kill: {}), \
         {} sent after the kill, {failed_after} of them failed; first failures: {:?}",
        report.calls.len(),
        failures.len(),
        failures.iter().all(|c| c.start <= killed),
        after.len(),
        report.failures.iter().take(3).collect::<Vec<_>>()
    );
    // At most one call per client can have been in flight on A when it died.
    assert!(
        failures.len() <= CLIENTS,
        "{} failed calls, more than the {CLIENTS} that can have been in flight",
        failures.len()
    );
    // What the clients of those calls got from nginx: Fn's JSON shape (deploy/nginx/ferrofn.conf).
    for f in &report.failures {
        assert!(
            f.contains(r#"{"message":"No load balancer could complete the call"}"#),
            "nginx's answer: {f}"
        );
    }
    assert!(
        failures.iter().all(|c| c.start <= killed),
        "a call sent after the kill failed: nginx should have sent it to B"
    );
    assert!(after.len() >= 100, "B served the load after the kill");
    // B serves directly too, and nginx has marked A failed.
    let r = call("POST", &t.b.url(&format!("/invoke/{}", t.fn_id)), Some(json!({})))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    drop(t.nginx);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_under_load_fails_no_call_to_a_cached_fn() {
    let mut t = tier().await;
    let run = load(&t);
    calls_done(&t, 100).await;
    t.pg.stop().unwrap();
    let down = Instant::now();
    calls_done(&t, 200).await;
    // Management answers 503 meanwhile (Fn's shape), on both LBs.
    for lb in [&t.a, &t.b] {
        let r = call("GET", &lb.url("/v2/apps"), None).await.unwrap();
        assert_eq!(r.status, 503, "{}", r.text());
        assert!(r.json()["message"].is_string());
    }
    t.pg.restart().await.unwrap();
    let up = Instant::now();
    let outage = up - down;
    // Recovered without an LB restart.
    loop {
        let a = call("GET", &t.a.url("/v2/apps"), None).await.unwrap().status;
        let b = call("GET", &t.b.url("/v2/apps"), None).await.unwrap().status;
        if a == 200 && b == 200 {
            break;
        }
        assert!(up.elapsed() < Duration::from_secs(10), "no recovery within 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let recovered = up.elapsed();
    calls_done(&t, 100).await;
    let report = run.stop(Duration::from_secs(30)).await.unwrap();
    let during = report
        .calls
        .iter()
        .filter(|c| c.start >= down && c.start <= up)
        .count();
    let slowest = report
        .calls
        .iter()
        .map(CallRecord::latency)
        .max()
        .unwrap_or_default();
    println!(
        "Postgres down {outage:?} under {CLIENTS} clients: {} calls ({during} during the outage), {} failed, \
         slowest {slowest:?}; management API back {recovered:?} after the restart",
        report.calls.len(),
        failed(&report).len()
    );
    assert!(
        failed(&report).is_empty(),
        "calls to a cached fn failed while Postgres restarted: {:?}",
        report.failures
    );
    assert!(during >= 50, "the outage was under load ({during} calls)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_database_never_stalls_cached_calls() {
    let t = tier().await;
    // Another session holds the registry's tables: every registry query waits on the lock.
    let mut holder = t.pg.client(&t.db).await.unwrap();
    let tx = holder.transaction().await.unwrap();
    tx.batch_execute("LOCK TABLE apps, fns, triggers, registry_version IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let run = load(&t);
    let locked = Instant::now();
    calls_done(&t, 200).await;
    // A write through A cannot get the lock: 503 within the registry timeout, not a hang.
    let started = Instant::now();
    let r = call("POST", &t.a.url("/v2/apps"), Some(json!({"name": "blocked"})))
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(took < DB_TIMEOUT * 3, "the write hung for {took:?}");
    let held = locked.elapsed();
    tx.rollback().await.unwrap();
    let report = run.stop(Duration::from_secs(30)).await.unwrap();
    let slowest = report
        .calls
        .iter()
        .map(CallRecord::latency)
        .max()
        .unwrap_or_default();
    println!(
        "registry locked for {held:?} under {CLIENTS} clients: {} cached calls, {} failed, slowest {slowest:?}; \
         a write answered 503 after {took:?}",
        report.calls.len(),
        failed(&report).len()
    );
    assert!(failed(&report).is_empty(), "{:?}", report.failures);
    assert!(
        slowest < DB_TIMEOUT,
        "a cached call waited on the locked database: {slowest:?}"
    );
    // The lock gone, writes work again.
    ok("POST", t.a.url("/v2/apps"), Some(json!({"name": "after"}))).await;
}
