//! Issue 10, point 1 (with the load-side checks of points 2 and 4): zero failed calls under load.
//!
//! The real `ferrofn-lb` binary in front of 1 or 3 real `ferrofn-runner` processes, plaintext and
//! mTLS (certificates generated at test time), the testfn image on the real Docker engine. N
//! concurrent clients, each on ONE keep-alive HTTP/1.1 connection, call `POST /invoke/{fn_id}`
//! with `{}` for `FERROFN_LOAD_SECS` seconds (default 3; `make soak` uses 30) after a warm-up, at
//! 16, 64 and 256 clients. One cluster per (runners, tls) serves its three client counts in turn.
//!
//! Per scenario:
//! - every response is 200 and no call gets a transport error (the first failures are printed);
//! - over each scenario (its warm-up included), TryCalls received by all runners per 200 served
//!   stays <= 1.2 (point 4);
//! - no runner sees its LB connection replaced during the run (point 2: a GOAWAY or a lost
//!   connection makes the LB reconnect), read two ways: `ferrofn_runner_grpc_connections_total`
//!   must not grow, and the set of LB->runner TCP connections in `/proc/net/tcp` must not change;
//! - at the end the runners drain (SIGTERM) and leave no container.
//!
//! One table line per scenario is printed (run with `--nocapture` to see them).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use bytes::Bytes;
use serde_json::json;
use tokio::sync::Semaphore;

use ferrofn_tests::images::TESTFN_IMAGE;
use ferrofn_tests::load::{
    ConnWatch, LoadConfig, LoadRun, ProcCluster, RunnerCounters, count_lines, load_secs, metric_sum, scrape,
    tail,
};
use ferrofn_tests::runner_proc::{RunnerProc, eventually};

/// Memory of the registered fn, MB. testfn is a static binary of a few MB resident; 64 MB is
/// plenty and keeps the reservations of many containers modest.
const FN_MEMORY_MB: u64 = 64;
/// Containers each runner may hold: `FN_MAX_TOTAL_MEMORY_BYTES` = 32 x 64 MiB = 2 GiB.
///
/// Why 32 and not one container per client (256): a warm testfn call takes a few ms of CPU and
/// this machine has 2 cores, so at most a handful of calls execute at any instant; 32 containers
/// per runner is far more than the calls that can run at once, i.e. the memory the load needs is
/// there. Clients beyond 32 per runner queue for a container of the SAME function, which Fn's
/// semantics (issue 10 point 4) make a wait on the runner, never a failed call. Starting 256
/// containers per runner would also take longer than the whole CI budget of this test on 2 cores.
const CONTAINERS_PER_RUNNER: u64 = 32;
/// Client counts, each one scenario per cluster, in this order.
const CLIENTS: [usize; 3] = [16, 64, 256];
/// Load before the measured window (cold starts of the containers the new client count needs).
const WARMUP: Duration = Duration::from_millis(1500);
/// Issue 10 point 4: TryCalls received per call served, at steady state.
const MAX_TRYCALLS_PER_CALL: f64 = 1.2;
/// The LB's placement budget in this test (Fn's default is 360 s): a call that cannot be placed
/// gets its 503 within the test's bounds.
const PLACER_TIMEOUT_MS: &str = "20000";
/// Client-side bound on one call (above the placer timeout, so the LB's answer is what counts).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on the steps that should happen promptly.
const PROMPT: Duration = Duration::from_secs(30);

/// One cluster at a time in this binary: the figures should not share the 2 cores.
static ONE_AT_A_TIME: Semaphore = Semaphore::const_new(1);

fn sum(c: &[RunnerCounters], f: impl Fn(&RunnerCounters) -> f64) -> f64 {
    c.iter().map(f).sum()
}

fn ms(d: Duration) -> String {
    format!("{:.1}ms", d.as_secs_f64() * 1000.0)
}

/// Engage streams the LB gave up on because a runner did not answer them in time (each one a call
/// placed again): a live runner under load should leave none; TryCalls per call bound them.
async fn lb_unanswered(c: &ProcCluster) -> Result<f64> {
    let text = scrape(c.lb.addr).await?;
    Ok(metric_sum(
        &text,
        "lb_engage_open_retries_total",
        &[("class", "no_answer")],
    ))
}

/// One client count on a running cluster: the load, then its checks. Returns the problems found.
async fn scenario(c: &ProcCluster, clients: usize, secs: u64) -> Result<Vec<String>> {
    let n = c.runners.len();
    let tls = if c.tls { "mtls" } else { "plain" };
    let what = format!("{n} runner(s) {tls} {clients} clients");
    let sockets_before = c.sockets()?;
    let c0 = c.counters().await?;
    let unanswered0 = lb_unanswered(c).await?;
    let watch = ConnWatch::start(c.runners.iter().map(|r| r.grpc_addr).collect());
    let cfg = LoadConfig {
        addr: c.lb.addr,
        path: c.invoke_path(),
        body: Bytes::from_static(b"{}"),
        clients,
        request_timeout: REQUEST_TIMEOUT,
        stagger: Duration::ZERO,
    };
    let run = LoadRun::start(&cfg);
    // The load itself runs for these durations; nothing is being waited for.
    tokio::time::sleep(WARMUP).await;
    let t1 = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let t2 = Instant::now();
    let report = run.stop(REQUEST_TIMEOUT + PROMPT).await?;
    let c1 = c.counters().await?;
    let unanswered = lb_unanswered(c).await? - unanswered0;
    let seen = watch.stop().await;
    let sockets_after = c.sockets()?;

    let all = report.summary();
    let window = report.ended_within(t1, t2);
    // TryCalls per served call, over the whole scenario: every TryCall the runners received
    // between a scrape before the load started and one after the last call ended (nothing in
    // flight at either), over every 200 of the scenario. Both sides count exactly the same calls;
    // a window cut in the middle of the load does not (at 256 clients on a saturated machine a
    // call spends seconds in the LB before its TryCall leaves, so TryCalls counted from a
    // mid-load scrape include calls started before it). The warm-up is included, which only
    // makes the bound stricter (its cold starts are where a NACK could happen).
    let trycalls = sum(&c1, RunnerCounters::trycalls_or_calls) - sum(&c0, RunnerCounters::trycalls_or_calls);
    let exposed = c1.iter().all(|m| m.trycalls.is_some());
    let served = all.ok;
    let per_call = if served > 0 {
        trycalls / served as f64
    } else {
        f64::INFINITY
    };
    let nacks = sum(&c1, |m| m.nacks) - sum(&c0, |m| m.nacks);
    let conns_metric: Vec<(Option<f64>, Option<f64>)> = c0
        .iter()
        .zip(&c1)
        .map(|(a, b)| (a.grpc_connections, b.grpc_connections))
        .collect();
    println!(
        "LOAD runners={n} tls={tls:5} clients={clients:3} calls={:6} failures={:5} trycalls/call={:.2}{} \
         nacks={nacks:6} unanswered={unanswered} p50={} p99={} max={} conns(seen/at start)={:?}/{:?} statuses={:?} transport={}",
        all.calls,
        all.failures(),
        per_call,
        if exposed { "" } else { "(calls_total)" },
        ms(window.p50),
        ms(window.p99),
        ms(window.max),
        seen.iter().map(BTreeSet::len).collect::<Vec<_>>(),
        sockets_before.iter().map(BTreeSet::len).collect::<Vec<_>>(),
        all.by_status,
        all.transport_errors,
    );

    let mut problems = Vec::new();
    if all.failures() > 0 {
        problems.push(format!(
            "{what}: {} of {} calls failed (statuses {:?}, {} transport errors); first failures: {:?}",
            all.failures(),
            all.calls,
            all.by_status,
            all.transport_errors,
            report.failures.iter().take(8).collect::<Vec<_>>()
        ));
    }
    if window.ok == 0 {
        problems.push(format!("{what}: no 200 in the measured window"));
    }
    // Labelled: `ferrofn_runner_trycalls_total` is new (issue 10). Until a runner exposes it, the
    // sum of `ferrofn_runner_calls_total` (one per TryCall handled, NACKs included) stands in.
    if per_call > MAX_TRYCALLS_PER_CALL {
        problems.push(format!(
            "{what}: [point 4, {}] {trycalls} TryCalls for {} calls served in the scenario = {per_call:.2} per call > {MAX_TRYCALLS_PER_CALL} ({nacks} NACKs in the scenario)",
            if exposed {
                "ferrofn_runner_trycalls_total"
            } else {
                "ferrofn_runner_trycalls_total missing: sum of ferrofn_runner_calls_total"
            },
            served
        ));
    }
    // Labelled: `ferrofn_runner_grpc_connections_total` is new (issue 10); missing counts as 0.
    for (i, (before, after)) in conns_metric.iter().enumerate() {
        let (b, a) = (before.unwrap_or(0.0), after.unwrap_or(0.0));
        if a > b {
            problems.push(format!(
                "{what}: [point 2, ferrofn_runner_grpc_connections_total] runner {i} accepted {} new \
                 connection(s) during the run",
                a - b
            ));
        }
    }
    // The same from the sockets: every LB->runner connection seen during the run was already open
    // before it and is still open after it.
    for (i, ((before, during), after)) in sockets_before.iter().zip(&seen).zip(&sockets_after).enumerate() {
        if during != before || after != before {
            problems.push(format!(
                "{what}: [point 2, /proc/net/tcp] the LB's connections to runner {i} changed: client ports \
                 {before:?} before, {during:?} during, {after:?} after the run"
            ));
        }
    }
    Ok(problems)
}

/// Starts a cluster, runs the three client counts, drains, and fails with every problem found.
async fn load_test(runners: usize, tls: bool) -> Result<()> {
    let _slot = ONE_AT_A_TIME.acquire().await?;
    let secs = load_secs(3);
    let t0 = Instant::now();
    let memory = (CONTAINERS_PER_RUNNER * FN_MEMORY_MB * 1024 * 1024).to_string();
    // info, not the harness's debug: a log line per call would cost the runners CPU under load.
    let runner_env = [
        ("FN_MAX_TOTAL_MEMORY_BYTES", memory.as_str()),
        ("RUST_LOG", "info"),
    ];
    let lb_env = [
        ("FERROFN_PLACER_TIMEOUT_MSECS", PLACER_TIMEOUT_MS),
        ("RUST_LOG", "info"),
    ];
    let cluster = ProcCluster::start(
        runners,
        tls,
        &runner_env,
        &lb_env,
        json!({"name": "f", "image": TESTFN_IMAGE.as_str(), "memory": FN_MEMORY_MB, "timeout": 30}),
    )
    .await?;
    // One call first: a container exists and the LB's connections are open before the load.
    let warm = ferrofn_tests::lb_proc::json("POST", &cluster.lb.url(&cluster.invoke_path()), Some(json!({})))
        .await?;
    ensure!(
        warm.status == 200,
        "first call: {} {}\nLB log:\n{}",
        warm.status,
        warm.text(),
        tail(&cluster.lb_log(), 40)
    );
    eventually("an LB connection to every runner", PROMPT, || async {
        cluster
            .sockets()
            .map(|s| s.iter().all(|p| !p.is_empty()))
            .unwrap_or(false)
    })
    .await?;
    let mut problems = Vec::new();
    for clients in CLIENTS {
        problems.extend(scenario(&cluster, clients, secs).await?);
    }
    let lb_log = cluster.lb_log();
    let runner_logs: String = cluster.runners.iter().map(RunnerProc::logs).collect();
    let first_line = |log: &str, needle: &str| {
        log.lines()
            .find(|l| l.contains(needle))
            .map(|l| l.chars().take(700).collect::<String>())
            .unwrap_or_default()
    };
    println!(
        "LOAD runners={runners} tls={tls}: log lines: h2 'reached limit' runner {} LB {}, LB 'connection lost' {}, \
         LB 'no runner up' {}; {:.1}s in all\n  first h2 limit line: {}\n  first LB connection-lost line: {}",
        count_lines(&runner_logs, "reached limit"),
        count_lines(&lb_log, "reached limit"),
        count_lines(&lb_log, "connection lost"),
        count_lines(&lb_log, "no runner up"),
        t0.elapsed().as_secs_f64(),
        first_line(&format!("{runner_logs}{lb_log}"), "reached limit"),
        first_line(&lb_log, "connection lost"),
    );
    if let Err(e) = cluster.finish().await {
        problems.push(format!("drain: {e:#}"));
    }
    ensure!(
        problems.is_empty(),
        "{} problem(s):\n{}\nLB log tail:\n{}",
        problems.len(),
        problems.join("\n"),
        tail(&lb_log, 20)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_one_runner_plaintext() -> Result<()> {
    load_test(1, false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_one_runner_mtls() -> Result<()> {
    load_test(1, true).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_three_runners_plaintext() -> Result<()> {
    load_test(3, false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_three_runners_mtls() -> Result<()> {
    load_test(3, true).await
}
