//! Issue 10, point 2: streams end cleanly, and ONE HTTP/2 connection survives many calls.
//!
//! One real runner, ONE tonic channel to it (its connector counts the TCP connections it opens),
//! and on it, concurrently:
//! - ok calls (16 at a time) to fn `ok`: each a success with a 200;
//!   (ok calls and NACKs alternate between Fn's exchange and the accept-ack one of the ferrofn LB)
//! - NACKs: calls to fn `nack`, whose container can never fit (see the memory plan below): each a
//!   clean CallFinished 503 before any ResultStart, then the stream's normal end (grpc-status OK);
//! - client cancels, alternating: a call to fn `wait` dropped while it waits for a slot (its only
//!   container never finishes starting), and a call to fn `stream` dropped after its ResultStart
//!   (a large streamed response).
//!
//! Counts (x `FERROFN_ENDURANCE_SCALE`, default 1; `make soak` uses 20): 5,000 ok calls, 1,000
//! NACKs, 50 cancels. The connection must survive: the channel never opens a second connection,
//! `ferrofn_runner_grpc_connections_total` (when the runner exposes it) is 1 at the end, and no
//! call sees a transport error.
//!
//! Memory plan (`FN_MAX_TOTAL_MEMORY_BYTES` = 1536 MiB): `hold` 128 MB, busy all along with one
//! long sleeping call; `wait` 64 MB, one container starting all along (`ENABLE_INIT_DELAY_MSEC`
//! of an hour, with the runner's hot start timeout above it); `ok` 16 x 64 MB; `stream` at most a
//! few x 64 MB. `nack` asks for 1500 MB: free memory is at most 1536 - 192 = 1344 MB, and the
//! evictor, which only takes idle containers and only when they cover the whole shortfall, can
//! never cover it (the shortfall always exceeds the idle containers by the 192 MB of `hold` and
//! `wait`). So every `nack` call is NACKed and no `ok` container is ever evicted for it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};

use ferrofn_proto::runner_protocol_client::RunnerProtocolClient;
use ferrofn_proto::{RunnerMsg, runner_msg};
use ferrofn_tests::images::TESTFN_IMAGE;
use ferrofn_tests::load::{GRPC_CONNECTIONS, count_lines, has_metric, metric_sum, scrape};
use ferrofn_tests::runner_proc::{
    EngageOpts, RunnerProc, call_json, engage, eventually, open_call, start_with_testfn,
};

const OK_CALLS: u64 = 5_000;
const NACKS: u64 = 1_000;
const CANCELS: u64 = 50;
const OK_CONCURRENCY: usize = 16;
const NACK_CONCURRENCY: usize = 2;
const MIB: u64 = 1024 * 1024;
const PROMPT: Duration = Duration::from_secs(30);

const FN_HOLD: &str = "01FNENDURHOLD0000000000000";
const FN_WAIT: &str = "01FNENDURWAIT0000000000000";
const FN_OK: &str = "01FNENDUROK000000000000000";
const FN_NACK: &str = "01FNENDURNACK0000000000000";
const FN_STREAM: &str = "01FNENDURSTREAM00000000000";

fn scale() -> u64 {
    std::env::var("FERROFN_ENDURANCE_SCALE")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|s| *s > 0)
        .unwrap_or(1)
}

/// The call JSON of fn `fn_id` with `memory` MB and `timeout` s.
fn call(fn_id: &str, memory: u64, timeout: u64, config: &[(&str, &str)]) -> String {
    let mem = memory.to_string();
    let mut config = config.to_vec();
    config.push(("FN_MEMORY", &mem));
    call_json(TESTFN_IMAGE.as_str(), fn_id, &config, |v| {
        v["memory"] = memory.into();
        v["timeout"] = timeout.into();
    })
}

/// Every other ok call and NACK asks for the accept ack, as the ferrofn LB does with ferrofn
/// runners; the others are Fn-mode exchanges.
fn opts(n: u64) -> EngageOpts {
    let mut o = EngageOpts::default();
    if n % 2 == 1 {
        o.extensions.insert("ferrofn-accept-ack".into(), "1".into());
    }
    o
}

/// What went wrong, by kind; every counter must stay 0.
#[derive(Debug, Default)]
struct Tally {
    ok: AtomicU64,
    nacks: AtomicU64,
    cancels_waiting: AtomicU64,
    cancels_started: AtomicU64,
    ok_failed: AtomicU64,
    nack_unclean: AtomicU64,
    transport: AtomicU64,
    first_problems: std::sync::Mutex<Vec<String>>,
}

impl Tally {
    fn problem(&self, counter: &AtomicU64, what: String) {
        counter.fetch_add(1, Ordering::SeqCst);
        let mut p = self.first_problems.lock().unwrap();
        if p.len() < 10 {
            p.push(what);
        }
    }

    fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::SeqCst)
    }
}

async fn gauge(r: &RunnerProc, name: &str) -> f64 {
    metric_sum(&scrape(r.http_addr).await.unwrap_or_default(), name, &[])
}

async fn ok_worker(
    mut client: RunnerProtocolClient<Channel>,
    next: Arc<AtomicU64>,
    total: u64,
    t: Arc<Tally>,
) {
    loop {
        let n = next.fetch_add(1, Ordering::SeqCst);
        if n >= total {
            return;
        }
        let c = call(FN_OK, 64, 30, &[]);
        match engage(&mut client, &c, b"{}", opts(n)).await {
            Err(e) => t.problem(&t.transport, format!("ok call: {e:#}")),
            Ok(r) if r.error.is_some() => {
                t.problem(&t.transport, format!("ok call: stream error {:?}", r.error))
            }
            Ok(r) if r.finished.as_ref().is_some_and(|f| f.success) && r.status == Some(200) => {
                t.ok.fetch_add(1, Ordering::SeqCst);
            }
            Ok(r) => t.problem(
                &t.ok_failed,
                format!("ok call: status {:?}, finished {:?}", r.status, r.finished),
            ),
        }
    }
}

async fn nack_worker(
    mut client: RunnerProtocolClient<Channel>,
    next: Arc<AtomicU64>,
    total: u64,
    t: Arc<Tally>,
) {
    loop {
        let n = next.fetch_add(1, Ordering::SeqCst);
        if n >= total {
            return;
        }
        let c = call(FN_NACK, 1500, 30, &[]);
        match engage(&mut client, &c, b"{}", opts(n)).await {
            Err(e) => t.problem(&t.transport, format!("nack call: {e:#}")),
            Ok(r) if r.error.is_some() => t.problem(
                &t.transport,
                format!("nack call: stream ended with {:?}", r.error),
            ),
            Ok(r) => {
                let clean = r
                    .finished
                    .as_ref()
                    .is_some_and(|f| !f.success && f.error_code == 503)
                    && r.result_starts == 0
                    && r.frames == 0
                    && r.after_finished == 0;
                if clean {
                    t.nacks.fetch_add(1, Ordering::SeqCst);
                } else {
                    t.problem(&t.nack_unclean, format!("nack call: not a clean NACK: {r:?}"));
                }
            }
        }
    }
}

/// Alternates the two cancels, one at a time.
async fn cancel_worker(
    mut client: RunnerProtocolClient<Channel>,
    runner: &RunnerProc,
    total: u64,
    t: Arc<Tally>,
) -> Result<()> {
    for i in 0..total {
        if i % 2 == 0 {
            // Dropped while waiting for a slot: the `wait` container never finishes starting.
            let open = open_call(
                &mut client,
                call(FN_WAIT, 64, 3600, &[("ENABLE_INIT_DELAY_MSEC", "3600000")]),
                b"{}",
                opts(i / 2).extensions,
            )
            .await;
            let open = match open {
                Ok(o) => o,
                Err(e) => {
                    t.problem(&t.transport, format!("waiting call: {e:#}"));
                    continue;
                }
            };
            // Other calls wait for a moment now and then; this one waits until it is cancelled.
            eventually("the call waits for a slot", PROMPT, || async {
                gauge(runner, "ferrofn_runner_waiting_calls").await >= 1.0
            })
            .await?;
            drop(open);
            t.cancels_waiting.fetch_add(1, Ordering::SeqCst);
        } else {
            // Dropped after the ResultStart of a response far larger than the windows.
            let body = serde_json::json!({"responseSize": 64 * MIB}).to_string();
            let mut open = match open_call(
                &mut client,
                call(FN_STREAM, 64, 30, &[]),
                body.as_bytes(),
                Default::default(),
            )
            .await
            {
                Ok(o) => o,
                Err(e) => {
                    t.problem(&t.transport, format!("streaming call: {e:#}"));
                    continue;
                }
            };
            let first = tokio::time::timeout(PROMPT, open.responses.message())
                .await
                .context("no answer to the streaming call")?;
            match first {
                Ok(Some(RunnerMsg {
                    body: Some(runner_msg::Body::ResultStart(_)),
                })) => {
                    drop(open);
                    t.cancels_started.fetch_add(1, Ordering::SeqCst);
                }
                Err(status) => t.problem(&t.transport, format!("streaming call: {status:?}")),
                other => t.problem(
                    &t.ok_failed,
                    format!("streaming call: expected a ResultStart, got {other:?}"),
                ),
            }
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_survives_calls_nacks_and_cancels() -> Result<()> {
    let scale = scale();
    let (ok_total, nack_total, cancel_total) = (OK_CALLS * scale, NACKS * scale, CANCELS * scale);
    let bound = Duration::from_secs(180 * scale + 120);
    let memory = (1536 * MIB).to_string();
    let (docker, runner) = start_with_testfn(&[
        ("FN_MAX_TOTAL_MEMORY_BYTES", memory.as_str()),
        ("FN_HOT_START_TIMEOUT_MSECS", "3600000"),
        // info: a debug line per call would only slow the runner down.
        ("RUST_LOG", "info"),
    ])
    .await?;

    // The one channel; its connector counts every TCP connection it opens.
    let connects = Arc::new(AtomicU64::new(0));
    let addr = runner.grpc_addr;
    let counter = connects.clone();
    let channel = Endpoint::from_shared(format!("http://{addr}"))?
        .connect_with_connector(tower::service_fn(move |_uri: http::Uri| {
            counter.fetch_add(1, Ordering::SeqCst);
            async move {
                let s = tokio::net::TcpStream::connect(addr).await?;
                s.set_nodelay(true)?;
                Ok::<_, std::io::Error>(TokioIo::new(s))
            }
        }))
        .await?;
    let client = RunnerProtocolClient::new(channel);
    let t = Arc::new(Tally::default());
    let started = Instant::now();

    let run = async {
        // `hold` occupies its container for the whole test.
        let mut c = client.clone();
        let hold = open_call(
            &mut c,
            call(FN_HOLD, 128, 3600, &[]),
            b"{\"sleepTime\":3600000}",
            Default::default(),
        )
        .await?;
        eventually("the hold call runs", PROMPT, || async {
            gauge(&runner, "ferrofn_runner_inflight_calls").await >= 1.0
        })
        .await?;
        // The ok containers first (16 concurrent calls), so that later only `wait` calls wait.
        let warm: Vec<_> = (0..OK_CONCURRENCY)
            .map(|_| {
                let next = Arc::new(AtomicU64::new(0));
                tokio::spawn(ok_worker(client.clone(), next, 1, t.clone()))
            })
            .collect();
        for w in warm {
            w.await?;
        }
        let next_ok = Arc::new(AtomicU64::new(OK_CONCURRENCY as u64));
        let next_nack = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..OK_CONCURRENCY {
            tasks.push(tokio::spawn(ok_worker(
                client.clone(),
                next_ok.clone(),
                ok_total,
                t.clone(),
            )));
        }
        for _ in 0..NACK_CONCURRENCY {
            tasks.push(tokio::spawn(nack_worker(
                client.clone(),
                next_nack.clone(),
                nack_total,
                t.clone(),
            )));
        }
        cancel_worker(client.clone(), &runner, cancel_total, t.clone()).await?;
        for task in tasks {
            task.await?;
        }
        // The end of `hold` is one more client cancel (of a running call).
        drop(hold);
        // No cancelled call stayed in the queue (the `wait` calls' timeout of an hour would keep a
        // leaked one there) nor left its stream open.
        eventually(
            "every cancelled call left the runner",
            Duration::from_secs(5),
            || async {
                gauge(&runner, "ferrofn_runner_waiting_calls").await == 0.0
                    && gauge(&runner, "ferrofn_runner_inflight_calls").await == 0.0
            },
        )
        .await?;
        // ... and the connection still serves a call.
        let mut c = client.clone();
        let r = engage(&mut c, &call(FN_OK, 64, 30, &[]), b"{}", EngageOpts::default()).await?;
        ensure!(r.finished().success, "last call: {:?}", r.finished());
        anyhow::Ok(())
    };
    let outcome = tokio::time::timeout(bound, run).await;
    let elapsed = started.elapsed();

    let text = scrape(runner.http_addr).await.unwrap_or_default();
    let server_conns = has_metric(&text, GRPC_CONNECTIONS).then(|| metric_sum(&text, GRPC_CONNECTIONS, &[]));
    let resets = count_lines(&runner.logs(), "reached limit");
    let g = Tally::get;
    println!(
        "ENDURANCE scale={scale} in {:.1}s: ok={} nacks={} cancels waiting={} started={} | ok failed={} unclean \
         nacks={} transport errors={} | channel connections={} server {GRPC_CONNECTIONS}={} | runner log h2 'reached \
         limit'={resets}; first problems: {:?}",
        elapsed.as_secs_f64(),
        g(&t.ok),
        g(&t.nacks),
        g(&t.cancels_waiting),
        g(&t.cancels_started),
        g(&t.ok_failed),
        g(&t.nack_unclean),
        g(&t.transport),
        connects.load(Ordering::SeqCst),
        server_conns.map_or("missing".to_string(), |v| v.to_string()),
        t.first_problems.lock().unwrap()
    );
    let drained = runner.drain_and_check(&docker).await;

    match outcome {
        Err(_) => bail!("the endurance run did not end within {bound:?}"),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(())) => {}
    }
    let mut problems = Vec::new();
    let conns = connects.load(Ordering::SeqCst);
    if conns != 1 {
        problems.push(format!(
            "the channel opened {conns} connections: the first one did not survive (runner log: {resets} x h2 'reached limit')"
        ));
    }
    // Labelled: `ferrofn_runner_grpc_connections_total` is new (issue 10); missing counts as 0.
    if let Some(n) = server_conns
        && n != 1.0
    {
        problems.push(format!(
            "[{GRPC_CONNECTIONS}] the runner accepted {n} connections"
        ));
    }
    for (what, n) in [
        ("ok calls failed", g(&t.ok_failed)),
        ("NACKs were not clean", g(&t.nack_unclean)),
        ("calls got a transport error", g(&t.transport)),
    ] {
        if n > 0 {
            problems.push(format!("{n} {what}"));
        }
    }
    if g(&t.ok) != ok_total {
        problems.push(format!("{} ok calls of {ok_total}", g(&t.ok)));
    }
    if g(&t.nacks) != nack_total {
        problems.push(format!("{} clean NACKs of {nack_total}", g(&t.nacks)));
    }
    if g(&t.cancels_waiting) + g(&t.cancels_started) != cancel_total {
        problems.push(format!(
            "{} + {} cancels of {cancel_total}",
            g(&t.cancels_waiting),
            g(&t.cancels_started)
        ));
    }
    if let Err(e) = drained {
        problems.push(format!("drain: {e:#}"));
    }
    ensure!(
        problems.is_empty(),
        "{} problem(s):\n{}\nfirst problems: {:?}",
        problems.len(),
        problems.join("\n"),
        t.first_problems.lock().unwrap()
    );
    Ok(())
}
