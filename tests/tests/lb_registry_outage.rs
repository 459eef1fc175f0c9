//! Postgres goes away under two LBs and comes back. While it is down: calls to fns (and through
//! triggers) the LBs have already served keep working, quickly; management calls and calls to fns an
//! LB has never seen answer 503 with Fn's `{"message": ...}` within the registry timeout;
//! `/health/ready` says the registry is the problem. After the server is back, without restarting an
//! LB: management calls work again, readiness is back, and the change feeds follow the database
//! again (a change on one LB is served by the other within 1 s). The LBs reach this throwaway
//! server over its unix socket.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use ferrofn_tests::lb_proc::fake_runner::{Behaviour, FakeRunner};
use ferrofn_tests::lb_proc::{LbBinary, Resp, invoke_fn, json as call, lb_on_registry, ok};
use ferrofn_tests::pg_server::PgServer;

/// The LBs' registry timeout in this test (FERROFN_DB_TIMEOUT_MSECS).
const DB_TIMEOUT: Duration = Duration::from_millis(1000);
/// How long after the database is back the LBs must have recovered.
const RECOVERY_LIMIT: Duration = Duration::from_secs(10);

async fn start_lb(db_url: &str, runner: &FakeRunner) -> LbBinary {
    lb_on_registry(db_url, &runner.address(), &[("FERROFN_DB_TIMEOUT_MSECS", "1000")]).await
}

async fn invoke(lb: &LbBinary, fn_id: &str) -> Resp {
    invoke_fn(&lb.url(""), fn_id).await
}

fn last_image(runner: &FakeRunner) -> Value {
    let seen = runner.seen();
    let v: Value = serde_json::from_str(&seen.last().unwrap().try_call.models_call_json).unwrap();
    v["image"].clone()
}

/// The 503 of a registry that cannot be reached: Fn's JSON, a clear message, Retry-After.
fn assert_registry_503(r: &Resp, what: &str) {
    assert_eq!(r.status, 503, "{what}: {}", r.text());
    assert_eq!(
        r.json(),
        json!({"message": "The registry database is unavailable: try again later"}),
        "{what}"
    );
    assert_eq!(r.header("retry-after"), "15", "{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_keeps_cached_calls_working_and_heals_without_restarts() {
    let mut pg = PgServer::start().await.unwrap();
    let db = pg.create_database().await.unwrap();
    let url = pg.socket_url(&db);
    let runner = FakeRunner::start(Behaviour::default()).await.unwrap();
    let (a, b) = tokio::join!(start_lb(&url, &runner), start_lb(&url, &runner));
    let app = ok("POST", a.url("/v2/apps"), Some(json!({"name": "steady"}))).await;
    let f = ok(
        "POST",
        a.url("/v2/fns"),
        Some(json!({"app_id": app["id"], "name": "f", "image": "local/one:1"})),
    )
    .await;
    let fn_id = f["id"].as_str().unwrap().to_owned();
    ok(
        "POST",
        a.url("/v2/triggers"),
        Some(json!({"app_id": app["id"], "fn_id": fn_id, "name": "t", "type": "http", "source": "/go"})),
    )
    .await;
    // Both LBs serve the fn and the trigger once: now they have them cached.
    for lb in [&a, &b] {
        assert_eq!(invoke(lb, &fn_id).await.status, 200);
        assert_eq!(
            call("POST", &lb.url("/t/steady/go"), None).await.unwrap().status,
            200
        );
        assert_eq!(
            call("GET", &lb.url("/health/ready"), None).await.unwrap().status,
            200
        );
    }

    pg.stop().unwrap();
    assert!(!pg.running());

    // Known fns keep running, without waiting on the database.
    let mut slowest = Duration::ZERO;
    for i in 0..20 {
        let lb = if i % 2 == 0 { &a } else { &b };
        let start = Instant::now();
        let r = if i % 4 < 2 {
            invoke(lb, &fn_id).await
        } else {
            call("POST", &lb.url("/t/steady/go"), Some(json!({})))
                .await
                .unwrap()
        };
        slowest = slowest.max(start.elapsed());
        assert_eq!(r.status, 200, "call {i} during the outage: {}", r.text());
    }
    println!("20 calls to cached fns during the outage: all 200, slowest {slowest:?}");
    assert!(
        slowest < DB_TIMEOUT,
        "a cached call waited on the database: {slowest:?}"
    );

    // Management calls (and fns never seen) answer 503 within the registry timeout.
    let start = Instant::now();
    let r = call("GET", &a.url("/v2/apps"), None).await.unwrap();
    let took = start.elapsed();
    assert_registry_503(&r, "GET /v2/apps");
    println!("a management call during the outage answered 503 after {took:?}");
    assert!(took < DB_TIMEOUT * 3, "{took:?}");
    let r = call(
        "POST",
        &b.url("/v2/fns"),
        Some(json!({"app_id": app["id"], "name": "g", "image": "local/one:1"})),
    )
    .await
    .unwrap();
    assert_registry_503(&r, "POST /v2/fns");
    assert_registry_503(&invoke(&b, "01NEVERSEENFN0000000000000").await, "an unknown fn");
    let r = call("GET", &a.url("/health/ready"), None).await.unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    let ready = r.json();
    assert_eq!(ready["runners_up"], 1, "{ready}");
    assert!(
        ready["registry"].as_str().unwrap().contains("unavailable"),
        "readiness names the registry: {ready}"
    );

    // The database comes back: everything recovers, no LB restarted.
    pg.restart().await.unwrap();
    let back = Instant::now();
    loop {
        let mut healthy = true;
        for lb in [&a, &b] {
            healthy &= call("GET", &lb.url("/v2/apps"), None).await.unwrap().status == 200
                && call("GET", &lb.url("/health/ready"), None).await.unwrap().status == 200;
        }
        if healthy {
            break;
        }
        assert!(
            back.elapsed() < RECOVERY_LIMIT,
            "not recovered {RECOVERY_LIMIT:?} after the database came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let recovered = back.elapsed();
    println!("management API and readiness back {recovered:?} after the database");

    // The change feeds follow the database again (their reconnect backoff is at most 0.5 s): a
    // change on B reaches A within the second.
    ok(
        "PUT",
        b.url(&format!("/v2/fns/{fn_id}")),
        Some(json!({"image": "local/two:1"})),
    )
    .await;
    let changed = Instant::now();
    loop {
        assert_eq!(invoke(&a, &fn_id).await.status, 200);
        if last_image(&runner) == "local/two:1" {
            break;
        }
        assert!(
            changed.elapsed() < Duration::from_secs(1),
            "A still runs the old image after the database came back"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "after the outage, an update on B was served by A after {:?}",
        changed.elapsed()
    );
    // The LBs said what happened, without the outage flooding the log with errors per call.
    let log = a.stderr.lock().unwrap().clone();
    assert!(log.contains("registry change feed lost"), "{log}");
    assert!(log.contains("registry unavailable"), "{log}");
}
