//! What an operator sees of the `ferrofn-lb` binary: settings checked when read (the same error
//! from `print-config` and at start, exit code 2) with the source of every value, deprecated names
//! still read with a warning, errors said once without a backtrace, the liveness and readiness
//! endpoints, the reason a runner is down in the log, and a prompt 503 that says no runner is up.

use std::time::{Duration, Instant};

use serde_json::json;

use ferrofn_tests::lb_proc::fake_runner::{Behaviour, FakeRunner};
use ferrofn_tests::lb_proc::{LbBinary, free_port, json as call, lb_binary, register};

async fn run_lb(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let bin = lb_binary().await.unwrap();
    let mut cmd = tokio::process::Command::new(&bin);
    cmd.args(args).env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().await.unwrap()
}

#[tokio::test]
async fn print_config_names_the_source_of_every_value() {
    let out = run_lb(
        &["--placer", "ch-bounded", "print-config"],
        &[
            ("FN_PORT", "9999"),
            ("FN_TLS_CA", "/old/ca.pem"),
            ("FERROFN_API_TOKEN", "s3cret"),
        ],
    )
    .await;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("port = 9999  # environment variable FN_PORT"),
        "{stdout}"
    );
    assert!(
        stdout.contains("placer = \"ch-bounded\"  # flag --placer"),
        "{stdout}"
    );
    assert!(
        stdout.contains("health_interval_ms = 2000  # default"),
        "{stdout}"
    );
    assert!(
        stdout.contains("ca = \"/old/ca.pem\"  # environment variable FN_TLS_CA"),
        "{stdout}"
    );
    assert!(
        stderr.contains("warning: FN_TLS_CA is deprecated: use FERROFN_TLS_CA"),
        "{stderr}"
    );
}

#[tokio::test]
async fn bad_settings_are_refused_by_print_config_and_at_start_alike() {
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        (
            &["--placer", "foo"],
            &[],
            "invalid setting placer (from flag --placer)",
        ),
        (
            &[],
            &[("FN_RUNNER_ADDRESSES", "garbage")],
            "invalid setting runner_addresses (from environment variable FN_RUNNER_ADDRESSES): \"garbage\" is not host:port",
        ),
        (
            &[],
            &[("FN_DB_URL", "postgres://db/fn")],
            "invalid setting db_url",
        ),
    ];
    for (flags, env, expect) in cases {
        let mut with_print = flags.to_vec();
        with_print.push("print-config");
        let mut with_start = flags.to_vec();
        with_start.extend(["--plaintext", "--port", "0", "--listen-address", "127.0.0.1"]);
        for args in [with_print, with_start] {
            let out = run_lb(&args, env).await;
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{args:?} {env:?}: {stderr}");
            assert!(stderr.starts_with("ferrofn-lb: error: "), "{stderr}");
            assert!(stderr.contains(expect), "{args:?} {env:?}: {stderr}");
            assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        }
    }
}

#[tokio::test]
async fn a_start_failure_is_said_once_without_a_backtrace() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nowhere").join("ca.pem");
    let db = format!("sqlite3://{}", dir.path().join("fn.db").display());
    let out = run_lb(
        &["--port", "0", "--listen-address", "127.0.0.1"],
        &[
            ("FERROFN_TLS_CA", missing.to_str().unwrap()),
            ("FN_DB_URL", &db),
            ("RUST_BACKTRACE", "1"),
        ],
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let report: Vec<&str> = stderr
        .lines()
        .skip_while(|l| !l.starts_with("ferrofn-lb: error: "))
        .collect();
    assert!(!report.is_empty(), "{stderr}");
    let text = report.join("\n");
    assert_eq!(text.matches("No such file").count(), 1, "{text}");
    assert_eq!(text.matches(&*missing.to_string_lossy()).count(), 1, "{text}");
    assert!(!stderr.contains("backtrace"), "{stderr}");
}

/// Polls `url` until it answers `status` (the LB's health loop runs every 100 ms here).
async fn wait_for_status(url: &str, status: u16) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = call("GET", url, None).await.unwrap();
        if r.status == status {
            return r.json();
        }
        assert!(Instant::now() < deadline, "{url} still {} {}", r.status, r.text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn no_runner_up_readiness_log_and_a_prompt_503() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite3://{}", dir.path().join("fn.db").display());
    let closed = format!("127.0.0.1:{}", free_port().unwrap());
    let lb = LbBinary::start(
        &["--plaintext"],
        &[
            ("FN_DB_URL", db.as_str()),
            ("FN_RUNNER_ADDRESSES", closed.as_str()),
            ("FERROFN_HEALTH_INTERVAL_MSECS", "100"),
            ("FERROFN_NO_RUNNER_WAIT_MSECS", "300"),
        ],
    )
    .await
    .unwrap();
    let live = call("GET", &lb.url("/health/live"), None).await.unwrap();
    assert_eq!(live.status, 200, "{}", live.text());
    let body = wait_for_status(&lb.url("/health/ready"), 503).await;
    assert_eq!(
        (
            body["runners_up"].clone(),
            body["runners_configured"].clone(),
            body["registry"].clone()
        ),
        (json!(0), json!(1), json!("ok")),
        "{body}"
    );
    let bin = lb_binary().await.unwrap();
    let probe = |ready: bool| {
        let mut c = tokio::process::Command::new(&bin);
        c.args(["probe", "--addr", &lb.addr.to_string()]);
        if ready {
            c.arg("--ready");
        }
        c.output()
    };
    assert!(probe(false).await.unwrap().status.success(), "live");
    let not_ready = probe(true).await.unwrap();
    assert!(!not_ready.status.success());
    assert!(
        String::from_utf8_lossy(&not_ready.stderr).contains("\"runners_up\":0"),
        "{}",
        String::from_utf8_lossy(&not_ready.stderr)
    );
    // The log says why the runner is down, not only that it is.
    let log = lb.stderr.lock().unwrap().clone();
    let line = log
        .lines()
        .find(|l| l.contains("runner state changed") && l.contains("to=\"down\""))
        .unwrap_or_else(|| panic!("no down line: {log}"));
    assert!(line.contains("why="), "{line}");
    assert!(line.to_lowercase().contains("refused"), "{line}");

    // A call waits the no-runner wait (300 ms), not the placer timeout (360 s), and says why.
    let (_app, f) = register(&lb.url(""), "app", json!({"name": "f", "image": "i"}))
        .await
        .unwrap();
    let started = Instant::now();
    let r = call(
        "POST",
        &lb.url(&format!("/invoke/{}", f["id"].as_str().unwrap())),
        None,
    )
    .await
    .unwrap();
    let took = started.elapsed();
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(
        r.json()["message"],
        json!("No runner is up: all 1 configured runners are down or draining (the LB log says why)")
    );
    assert_eq!(r.header("retry-after"), "15");
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(5),
        "{took:?}"
    );
}

#[tokio::test]
async fn ready_when_a_runner_is_up() {
    let runner = FakeRunner::start(Behaviour::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite3://{}", dir.path().join("fn.db").display());
    let lb = LbBinary::start(
        &["--plaintext", "--runner-addresses", &runner.address()],
        &[
            ("FN_DB_URL", db.as_str()),
            ("FERROFN_HEALTH_INTERVAL_MSECS", "100"),
        ],
    )
    .await
    .unwrap();
    let body = wait_for_status(&lb.url("/health/ready"), 200).await;
    assert_eq!(body["runners_up"], json!(1), "{body}");
    let v = call("GET", &lb.url("/version"), None).await.unwrap().json();
    assert!(v["version"].is_string() && v["ferrofn"].is_string(), "{v}");
    let bin = lb_binary().await.unwrap();
    let ok = tokio::process::Command::new(&bin)
        .args(["probe", "--ready", "--addr", &lb.addr.to_string()])
        .output()
        .await
        .unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
}
