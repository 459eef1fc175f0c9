//! Several LBs on one Postgres registry: two `ferrofn-lb` processes started at once on a fresh
//! database (the migrations run once), then every change made through one LB is served so by the
//! other within 1 s (its LISTEN/NOTIFY change feed clears the invocation cache): a fn created on A
//! runs through B, an image changed on B is the one A runs next, a fn, a trigger and an app deleted
//! on one answer 404 on the other. A change whose notification is lost is caught by the version
//! poll. The calls go to a fake runner that records the call JSON (image, config) it was given.

use std::future::Future;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use ferrofn_lb::registry::postgres::{PgOptions, PostgresRegistry, migrate};
use ferrofn_tests::lb_proc::fake_runner::{Behaviour, FakeRunner};
use ferrofn_tests::lb_proc::{LbBinary, Resp, invoke_fn, json as call, lb_binary, lb_on_registry, ok};
use ferrofn_tests::pg_server::{PASSWORD, PgServer};

/// The promise: a change on one LB is served by the others within this.
const PROPAGATION: Duration = Duration::from_secs(1);

/// Polls `probe` every 10 ms until it holds; how long that took, or `None` after `limit`.
async fn within<F, Fut>(limit: Duration, mut probe: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if probe().await {
            return Some(start.elapsed());
        }
        if start.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// An LB on `db_url` over `runner`, once its change feed follows the database.
async fn start_lb(db_url: &str, runner: &FakeRunner, poll_ms: &str) -> LbBinary {
    let lb = lb_on_registry(
        db_url,
        &runner.address(),
        &[("FERROFN_DB_VERSION_POLL_MSECS", poll_ms)],
    )
    .await;
    let shared = &lb;
    let feed = within(Duration::from_secs(10), || async move {
        counter(shared, "lb_registry_feed_connected").await == 1.0
    })
    .await;
    assert!(feed.is_some(), "the change feed did not connect");
    lb
}

async fn invoke(lb: &LbBinary, fn_id: &str) -> Resp {
    invoke_fn(&lb.url(""), fn_id).await
}

/// The value of a counter on the LB's `/metrics` (`name{labels}` exactly as exported; 0 if absent).
async fn counter(lb: &LbBinary, series: &str) -> f64 {
    let text = call("GET", &lb.url("/metrics"), None).await.unwrap().text();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

const CLEARED_BY_NOTIFY: &str = "lb_registry_cache_invalidations_total{why=\"notify\"}";
const CLEARED_BY_POLL: &str = "lb_registry_cache_invalidations_total{why=\"poll\"}";

/// The call JSON of the last call the runner took.
fn last_call(runner: &FakeRunner) -> Value {
    let seen = runner.seen();
    let last = seen.last().expect("the runner took a call");
    serde_json::from_str(&last.try_call.models_call_json).unwrap()
}

async fn migrations(pg: &PgServer, db: &str) -> Vec<i32> {
    let c = pg.client(db).await.unwrap();
    c.query(
        "SELECT version FROM ferrofn_schema_migrations ORDER BY version",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

#[tokio::test]
async fn changes_on_one_lb_are_served_by_the_other_within_a_second() {
    let pg = PgServer::shared().await.unwrap();
    let db = pg.create_database().await.unwrap();
    let url = pg.url(&db);
    let runner = FakeRunner::start(Behaviour::default()).await.unwrap();
    // Both start at once on the empty database: one applies the migrations, the other waits on
    // the advisory lock and finds them applied. A long poll period: only notifications count here.
    let (a, b) = tokio::join!(start_lb(&url, &runner, "60000"), start_lb(&url, &runner, "60000"));
    let all: Vec<i32> = migrate::MIGRATIONS.iter().map(|m| m.version).collect();
    assert_eq!(migrations(pg, &db).await, all);

    // Created on A, invoked on B.
    let app = ok(
        "POST",
        a.url("/v2/apps"),
        Some(json!({"name": "shared", "config": {"K": "1"}})),
    )
    .await;
    let app_id = app["id"].as_str().unwrap().to_owned();
    let f = ok(
        "POST",
        a.url("/v2/fns"),
        Some(json!({"app_id": app_id, "name": "f", "image": "local/one:1"})),
    )
    .await;
    let fn_id = f["id"].as_str().unwrap().to_owned();
    let (a, b, runner, fn_id) = (&a, &b, &runner, fn_id.as_str());
    let r = invoke(b, fn_id).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(last_call(runner)["image"], "local/one:1");
    // A has it cached too.
    assert_eq!(invoke(a, fn_id).await.status, 200);

    // The image changed on B: A runs the new one within the second.
    ok(
        "PUT",
        b.url(&format!("/v2/fns/{fn_id}")),
        Some(json!({"image": "local/two:1"})),
    )
    .await;
    let stale = &std::cell::Cell::new(0);
    let took = within(PROPAGATION, || async move {
        assert_eq!(invoke(a, fn_id).await.status, 200);
        let fresh = last_call(runner)["image"] == "local/two:1";
        stale.set(stale.get() + usize::from(!fresh));
        fresh
    })
    .await;
    println!(
        "image update on B served by A after {took:?} ({} calls ran the old image)",
        stale.get()
    );
    assert!(took.is_some(), "A still runs the old image after {PROPAGATION:?}");

    // App config changed on A: B's calls carry it.
    assert_eq!(invoke(b, fn_id).await.status, 200);
    ok(
        "PUT",
        a.url(&format!("/v2/apps/{app_id}")),
        Some(json!({"config": {"K": "2"}})),
    )
    .await;
    let took = within(PROPAGATION, || async move {
        assert_eq!(invoke(b, fn_id).await.status, 200);
        last_call(runner)["config"]["K"] == "2"
    })
    .await;
    println!("app config update on A served by B after {took:?}");
    assert!(took.is_some(), "B still sends the old app config");

    // A trigger created on A runs through B; deleted on A, B answers 404 within the second.
    let t = ok(
        "POST",
        a.url("/v2/triggers"),
        Some(json!({"app_id": app_id, "fn_id": fn_id, "name": "t", "type": "http", "source": "/hook"})),
    )
    .await;
    let hook = &b.url("/t/shared/hook");
    assert_eq!(call("POST", hook, Some(json!({}))).await.unwrap().status, 200);
    let r = call(
        "DELETE",
        &a.url(&format!("/v2/triggers/{}", t["id"].as_str().unwrap())),
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 204, "{}", r.text());
    let took = within(PROPAGATION, || async move {
        call("POST", hook, Some(json!({}))).await.unwrap().status == 404
    })
    .await;
    println!("trigger delete on A served by B after {took:?}");
    assert!(took.is_some(), "B still routes the deleted trigger");

    // The fn deleted on A: B answers 404 within the second.
    let r = call("DELETE", &a.url(&format!("/v2/fns/{fn_id}")), None)
        .await
        .unwrap();
    assert_eq!(r.status, 204, "{}", r.text());
    let took = within(PROPAGATION, || async move {
        let r = invoke(b, fn_id).await;
        r.status == 404 && r.json()["message"] == "Fn not found"
    })
    .await;
    println!("fn delete on A served by B after {took:?}");
    assert!(took.is_some(), "B still runs the deleted fn");

    // The app deleted on B takes its fns: A answers 404 for a fn it had cached.
    let f2 = ok(
        "POST",
        b.url("/v2/fns"),
        Some(json!({"app_id": app_id, "name": "f2", "image": "local/one:1"})),
    )
    .await;
    let f2 = f2["id"].as_str().unwrap();
    assert_eq!(invoke(a, f2).await.status, 200);
    let r = call("DELETE", &b.url(&format!("/v2/apps/{app_id}")), None)
        .await
        .unwrap();
    assert_eq!(r.status, 204, "{}", r.text());
    let took = within(PROPAGATION, || async move { invoke(a, f2).await.status == 404 }).await;
    println!("app delete on B served by A after {took:?}");
    assert!(took.is_some(), "A still runs a fn of the deleted app");

    // It was the notifications, on both sides.
    assert!(counter(a, CLEARED_BY_NOTIFY).await >= 2.0);
    assert!(counter(b, CLEARED_BY_NOTIFY).await >= 2.0);
    assert_eq!(counter(a, CLEARED_BY_POLL).await, 0.0);

    // The password never reaches the logs.
    for lb in [a, b] {
        let log = lb.stderr.lock().unwrap().clone();
        assert!(log.contains("registry: Postgres ready"), "{log}");
        assert!(!log.contains(PASSWORD), "{log}");
    }
}

#[tokio::test]
async fn a_change_whose_notification_is_lost_is_caught_by_the_version_poll() {
    let pg = PgServer::shared().await.unwrap();
    let db = pg.create_database().await.unwrap();
    let runner = FakeRunner::start(Behaviour::default()).await.unwrap();
    let lb = start_lb(&pg.url(&db), &runner, "300").await;
    let app = ok("POST", lb.url("/v2/apps"), Some(json!({"name": "polled"}))).await;
    let f = ok(
        "POST",
        lb.url("/v2/fns"),
        Some(json!({"app_id": app["id"], "name": "f", "image": "local/one:1"})),
    )
    .await;
    let fn_id = f["id"].as_str().unwrap();
    let (lb, runner) = (&lb, &runner);
    assert_eq!(invoke(lb, fn_id).await.status, 200);
    assert_eq!(last_call(runner)["image"], "local/one:1");
    // Its own writes needed no clearing from the feed.
    assert_eq!(counter(lb, CLEARED_BY_NOTIFY).await, 0.0);
    assert_eq!(counter(lb, CLEARED_BY_POLL).await, 0.0);
    // Another writer that bumps the version but whose NOTIFY never arrives.
    let c = pg.client(&db).await.unwrap();
    let n = c
        .execute(
            "UPDATE fns SET body = replace(body, 'local/one:1', 'local/two:1') WHERE id = $1",
            &[&fn_id],
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    c.execute("UPDATE registry_version SET version = version + 1", &[])
        .await
        .unwrap();
    let took = within(PROPAGATION, || async move {
        assert_eq!(invoke(lb, fn_id).await.status, 200);
        last_call(runner)["image"] == "local/two:1"
    })
    .await;
    println!("silent change seen by the version poll after {took:?}");
    assert!(took.is_some(), "the poll did not catch the change");
    assert_eq!(counter(lb, CLEARED_BY_POLL).await, 1.0);
    assert_eq!(counter(lb, CLEARED_BY_NOTIFY).await, 0.0);
}

#[tokio::test]
async fn lbs_starting_at_once_apply_each_migration_once() {
    let pg = PgServer::shared().await.unwrap();
    let db = pg.create_database().await.unwrap();
    let url = &pg.url(&db);
    let connect = || async move {
        let config = ferrofn_lb::registry::postgres::parse_url(url).unwrap();
        PostgresRegistry::connect(config, PgOptions::default(), "test".into()).await
    };
    let started = futures::future::join_all((0..6).map(|_| connect())).await;
    for s in &started {
        assert!(s.is_ok(), "{s:?}");
    }
    let all: Vec<i32> = migrate::MIGRATIONS.iter().map(|m| m.version).collect();
    assert_eq!(migrations(pg, &db).await, all);
    // A restart finds nothing to do and leaves the schema as it was.
    connect().await.unwrap();
    assert_eq!(migrations(pg, &db).await, all);
}

#[tokio::test]
async fn print_config_shows_the_database_url_without_its_password() {
    let bin = lb_binary().await.unwrap();
    let out = tokio::process::Command::new(&bin)
        .args(["--listen-address", "127.0.0.1", "print-config"])
        .env(
            "FN_DB_URL",
            "postgres://fn:hunter2@db.internal:5432/fnreg?sslmode=disable",
        )
        .env("FERROFN_DB_TIMEOUT_MSECS", "2500")
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("db_url = \"postgres://fn:<redacted>@db.internal:5432/fnreg?sslmode=disable\""),
        "{text}"
    );
    assert!(
        text.contains("db_timeout_ms = 2500  # environment variable FERROFN_DB_TIMEOUT_MSECS"),
        "{text}"
    );
    assert!(!text.contains("hunter2"), "{text}");
    // verify-full without the trusted CAs is refused, as the start would, without echoing the password.
    let out = tokio::process::Command::new(&bin)
        .args(["--listen-address", "127.0.0.1", "print-config"])
        .env(
            "FN_DB_URL",
            "postgres://fn:hunter2@db.internal/fnreg?sslmode=verify-full",
        )
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("need sslrootcert"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
}

#[tokio::test]
async fn a_wrong_password_fails_the_start_at_once_with_the_reason() {
    let pg = PgServer::shared().await.unwrap();
    let db = pg.create_database().await.unwrap();
    let url = pg.url(&db).replace(PASSWORD, "not-the-password");
    let config = ferrofn_lb::registry::postgres::parse_url(&url).unwrap();
    let start = Instant::now();
    let e = PostgresRegistry::connect(
        config,
        PgOptions::default(),
        ferrofn_lb::registry::redact_db_url(&url),
    )
    .await
    .unwrap_err();
    let text = ferrofn_common::exit::one_line(&e);
    println!(
        "start with a wrong password failed after {:?}: {text}",
        start.elapsed()
    );
    assert!(
        start.elapsed() < PgOptions::default().timeout,
        "not retried as if transient"
    );
    assert!(text.contains("password authentication failed"), "{text}");
    assert!(text.contains("ferrofn:<redacted>@127.0.0.1"), "{text}");
    assert!(!text.contains("not-the-password"), "{text}");
}

/// The TLS levels of `FN_DB_URL` against a real server with `ssl=on` whose certificate names
/// `db.test` and 127.0.0.1 is dialled: verify-ca and require connect (and the session really is
/// TLS), verify-full refuses the name, another CA is refused, and the registry works over TLS.
#[tokio::test]
async fn postgres_tls_levels_check_what_they_say() {
    use ferrofn_common::certs::{CertAuthority, LeafKind};
    use ferrofn_lb::registry::Registry;
    use ferrofn_lb::registry::postgres::parse_url;

    let ca = CertAuthority::generate("pg test CA", 1).unwrap();
    let other_ca = CertAuthority::generate("another CA", 1).unwrap();
    let server = ca
        .issue("db.test", &["db.test".to_owned()], LeafKind::Server, 1)
        .unwrap();
    let mut pg = PgServer::start_tls(&server.cert_pem, &server.key_pem)
        .await
        .unwrap();
    let db = pg.create_database().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (ca_file, other_file) = (dir.path().join("ca.pem"), dir.path().join("other.pem"));
    std::fs::write(&ca_file, ca.cert_pem()).unwrap();
    std::fs::write(&other_file, other_ca.cert_pem()).unwrap();
    let base = pg.url(&db).replace("?sslmode=disable", "");
    let url = |query: String| format!("{base}?{query}");
    let options = PgOptions {
        timeout: Duration::from_secs(3),
        ..PgOptions::default()
    };

    // The session is TLS (pg_stat_ssl), with the connector the registry uses.
    for query in [
        "sslmode=require".to_owned(),
        format!("sslmode=verify-ca&sslrootcert={}", ca_file.display()),
        format!("sslmode=require&sslrootcert={}", ca_file.display()),
    ] {
        let target = parse_url(&url(query.clone())).unwrap();
        let (client, conn) = target
            .config
            .connect(target.tls.connector().unwrap())
            .await
            .unwrap_or_else(|e| panic!("{query}: {e}"));
        tokio::spawn(conn);
        let ssl: bool = client
            .query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0);
        assert!(ssl, "{query}: the session is not TLS");
    }

    // The registry over verify-ca works end to end.
    let target = parse_url(&url(format!(
        "sslmode=verify-ca&sslrootcert={}",
        ca_file.display()
    )))
    .unwrap();
    let reg = PostgresRegistry::connect(target, options, "tls".into())
        .await
        .unwrap();
    reg.ping().await.unwrap();

    // What must be refused at start: the name (verify-full dials 127.0.0.1, the certificate says
    // db.test), and a certificate from a CA not in the root file.
    for (query, why) in [
        (
            format!("sslmode=verify-full&sslrootcert={}", ca_file.display()),
            "name",
        ),
        (
            format!("sslmode=verify-ca&sslrootcert={}", other_file.display()),
            "issuer",
        ),
    ] {
        let target = parse_url(&url(query.clone())).unwrap();
        let e = PostgresRegistry::connect(target, options, "tls".into())
            .await
            .expect_err(&query)
            .to_string();
        assert!(
            e.to_lowercase().contains("certificate"),
            "{query}: should fail on the certificate's {why}: {e}"
        );
    }
    pg.stop().unwrap();
}
