//! The call-latency scenarios, against any HTTP/1.1 endpoint (the LB's `/invoke/{id}` or a
//! function's `POST /call` for the floor): sequential warm calls on one keep-alive connection,
//! the same spaced by an idle gap, and N concurrent clients for a fixed time.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use crate::{
    client::{CallTemplate, ClientError, Conn, Endpoint, full_body},
    progress::Progress,
    stats::{CallCounts, Counted, ErrorTally, LatencySummary},
};

/// What a scenario calls: where, with which request head, and which body.
#[derive(Debug, Clone)]
pub struct CallTarget {
    pub endpoint: Endpoint,
    pub template: CallTemplate,
    pub body: Bytes,
}

impl CallTarget {
    /// Makes one call on `conn`; the outcome is either a latency (2xx) or a failure cause: the
    /// HTTP status, or `"connect"` / `"transport"`.
    pub(crate) async fn call(&self, conn: &mut Conn) -> Result<Duration, String> {
        let req = self.template.request(full_body(self.body.clone()));
        // The start of the answer, to say why a call failed (the LB's error message).
        let mut head = Vec::new();
        let keep = |chunk: &[u8]| {
            let room = FAILURE_BODY_BYTES.saturating_sub(head.len());
            head.extend_from_slice(&chunk[..chunk.len().min(room)]);
        };
        match conn.call(req, keep).await {
            Ok(outcome) if outcome.ok() => Ok(outcome.elapsed),
            Ok(outcome) => {
                report_failure(outcome.status, &head);
                Err(outcome.status.to_string())
            }
            Err(e) => {
                tracing::debug!(error = %e, "call failed");
                Err(e.cause().to_owned())
            }
        }
    }

    /// `n` unmeasured calls; their failures, by cause.
    async fn warm_up(&self, conn: &mut Conn, n: usize) -> ErrorTally {
        let mut failures = ErrorTally::default();
        for _ in 0..n {
            if let Err(cause) = self.call(conn).await {
                failures.add(cause);
            }
        }
        failures
    }
}

/// How much of a failed call's answer is kept to say why it failed.
const FAILURE_BODY_BYTES: usize = 300;
/// Failed calls whose answer is printed (on stderr) per process: enough to see the causes.
const FAILURES_PRINTED: u64 = 10;

/// Prints a failed call's status and the start of its answer on stderr (the first
/// [`FAILURES_PRINTED`] of the process): the tally only has the status.
fn report_failure(status: u16, head: &[u8]) {
    static PRINTED: AtomicU64 = AtomicU64::new(0);
    let n = PRINTED.fetch_add(1, Ordering::Relaxed);
    if n < FAILURES_PRINTED {
        let at = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let body = String::from_utf8_lossy(head);
        eprintln!("failed call at {at}: status {status}: {}", body.trim());
    } else if n == FAILURES_PRINTED {
        eprintln!("(further failed calls are only counted)");
    }
}

/// Figures of a sequential (`seq`) or spaced (`sparse`) run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SeqResult {
    /// Failures first: a run with a failed call is not a valid figure.
    #[serde(flatten)]
    pub calls: CallCounts,
    /// Idle time between the end of one call and the start of the next (`sparse` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gap_ms: Option<u64>,
    pub warmup: usize,
    /// Over the successful measured calls.
    pub latency: LatencySummary,
    /// Connections opened (1 when keep-alive held throughout).
    pub connects: u64,
    pub elapsed_s: f64,
}

impl Counted for SeqResult {
    fn failed(&self) -> u64 {
        self.calls.failed
    }
}

/// `n` calls one after the other on one keep-alive connection, after `warmup` unmeasured calls,
/// each call started `gap` after the previous one ended.
pub async fn sequential(
    target: &CallTarget,
    n: usize,
    warmup: usize,
    gap: Option<Duration>,
    progress: &Progress,
) -> Result<SeqResult, ClientError> {
    let mut conn = Conn::open(target.endpoint.clone()).await?;
    let warmup_failures = target.warm_up(&mut conn, warmup).await;
    let started = Instant::now();
    let mut samples = Vec::with_capacity(n);
    let mut failures = ErrorTally::default();
    for i in 0..n {
        if let Some(gap) = gap.filter(|_| i > 0 || warmup > 0) {
            tokio::time::sleep(gap).await;
        }
        let ok = match target.call(&mut conn).await {
            Ok(latency) => {
                samples.push(latency);
                true
            }
            Err(cause) => {
                failures.add(cause);
                false
            }
        };
        progress.record(ok);
    }
    Ok(SeqResult {
        calls: CallCounts::new(samples.len() as u64, failures, warmup_failures),
        gap_ms: gap.map(|g| g.as_millis() as u64),
        warmup,
        latency: LatencySummary::from_samples(&mut samples),
        connects: conn.connects,
        elapsed_s: started.elapsed().as_secs_f64(),
    })
}

/// Figures of a concurrent (`conc`) run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConcResult {
    /// Failures first: a run with a failed call is not a valid figure.
    #[serde(flatten)]
    pub calls: CallCounts,
    pub clients: usize,
    /// Unmeasured calls each client made before the common start.
    pub warmup: usize,
    pub duration_s: f64,
    /// From the common start to the end of the last client's last call.
    pub elapsed_s: f64,
    /// The throughput: successful calls (`ok`) per second over `elapsed_s`.
    pub ok_calls_per_s: f64,
    /// Calls made, failed ones included (`attempted`), per second over `elapsed_s`: how fast the
    /// clients went, not what was served.
    pub attempted_calls_per_s: f64,
    /// Over the successful measured calls.
    pub latency: LatencySummary,
    pub connects: u64,
}

impl Counted for ConcResult {
    fn failed(&self) -> u64 {
        self.calls.failed
    }
}

/// What one concurrent client brings back.
struct ClientRun {
    samples: Vec<Duration>,
    failures: ErrorTally,
    warmup_failures: ErrorTally,
    connects: u64,
}

/// Opens `n` keep-alive connections to `target` before a scenario starts, so that an unreachable
/// target fails the scenario, not its figures.
pub(crate) async fn open_all(target: &CallTarget, n: usize) -> Result<Vec<Conn>, ClientError> {
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        conns.push(Conn::open(target.endpoint.clone()).await?);
    }
    Ok(conns)
}

/// `clients` concurrent clients, each on its own keep-alive connection, calling back to back for
/// `duration` (each first makes `warmup` unmeasured calls; all start measuring together).
pub async fn concurrent(
    target: &CallTarget,
    clients: usize,
    duration: Duration,
    warmup: usize,
    progress: &Progress,
) -> Result<ConcResult, ClientError> {
    let clients = clients.max(1);
    let conns = open_all(target, clients).await?;
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(clients + 1));
    let (start_tx, start_rx) = tokio::sync::watch::channel(None::<Instant>);
    let mut tasks = Vec::with_capacity(clients);
    for mut conn in conns {
        let target = target.clone();
        let barrier = barrier.clone();
        let mut start_rx = start_rx.clone();
        let progress = progress.clone();
        tasks.push(tokio::spawn(async move {
            let warmup_failures = target.warm_up(&mut conn, warmup).await;
            barrier.wait().await;
            let started = match start_rx.wait_for(Option::is_some).await {
                Ok(started) => started.unwrap_or_else(Instant::now),
                Err(_) => Instant::now(),
            };
            let mut samples = Vec::new();
            let mut failures = ErrorTally::default();
            while started.elapsed() < duration {
                match target.call(&mut conn).await {
                    Ok(latency) => {
                        samples.push(latency);
                        progress.record(true);
                    }
                    Err(cause) => {
                        failures.add(cause);
                        progress.record(false);
                    }
                }
            }
            ClientRun {
                samples,
                failures,
                warmup_failures,
                connects: conn.connects,
            }
        }));
    }
    barrier.wait().await;
    let started = Instant::now();
    let _ = start_tx.send(Some(started));
    let mut samples = Vec::new();
    let mut failures = ErrorTally::default();
    let mut warmup_failures = ErrorTally::default();
    let mut connects = 0;
    for task in tasks {
        // A panicking client would be a bug in this tool; count it rather than lose the run.
        match task.await {
            Ok(run) => {
                samples.extend(run.samples);
                failures.merge(&run.failures);
                warmup_failures.merge(&run.warmup_failures);
                connects += run.connects;
            }
            Err(_) => failures.add("client-panic"),
        }
    }
    let elapsed_s = started.elapsed().as_secs_f64();
    let calls = CallCounts::new(samples.len() as u64, failures, warmup_failures);
    let per_s = |n: u64| n as f64 / elapsed_s.max(1e-9);
    Ok(ConcResult {
        clients,
        warmup,
        duration_s: duration.as_secs_f64(),
        elapsed_s,
        ok_calls_per_s: per_s(calls.ok),
        attempted_calls_per_s: per_s(calls.attempted),
        latency: LatencySummary::from_samples(&mut samples),
        connects,
        calls,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{flaky_server, json_keys};
    use std::sync::atomic::Ordering;

    fn target(endpoint: Endpoint) -> CallTarget {
        CallTarget {
            endpoint,
            template: CallTemplate::post("localhost", "/invoke/f"),
            body: Bytes::from_static(b"{}"),
        }
    }

    #[tokio::test]
    async fn sequential_counts_failed_calls_and_keeps_one_connection() {
        let (_dir, endpoint, served) = flaky_server(10).await;
        let (progress, line) = Progress::start("unit-seq", Some(40));
        let r = sequential(&target(endpoint), 40, 5, None, &progress)
            .await
            .unwrap();
        line.finish();
        // 45 calls in all; every 10th fails: calls 10, 20, 30, 40 fall in the measured 6..=45.
        assert_eq!(served.load(Ordering::SeqCst), 45);
        assert_eq!(r.calls.attempted, 40);
        assert_eq!(r.calls.ok, 36);
        assert_eq!(r.calls.failed, 4);
        assert_eq!(r.calls.failures.0.get("503"), Some(&4));
        assert!(r.calls.warmup_failures.0.is_empty());
        assert!(!r.calls.valid);
        assert_eq!(r.failed(), 4);
        // Latency is over the successful calls only.
        assert_eq!(r.latency.samples, 36);
        assert_eq!(r.connects, 1);
        assert!(r.latency.p50_ms > 0.0 && r.latency.p50_ms <= r.latency.p99_ms);
        // The JSON says it first.
        assert_eq!(json_keys(&r)[..3], ["valid", "failed", "failures"]);
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["valid"], false);
        assert_eq!(v["failed"], 4);
        assert_eq!(v["failures"]["503"], 4);
        assert_eq!(serde_json::from_value::<SeqResult>(v).unwrap(), r);
    }

    #[tokio::test]
    async fn a_failed_warmup_call_invalidates_the_figure() {
        let (_dir, endpoint, served) = flaky_server(3).await;
        let (progress, _line) = Progress::start("unit-seq-warmup", Some(10));
        let r = sequential(&target(endpoint), 10, 5, None, &progress)
            .await
            .unwrap();
        // Calls 1..=5 warm up (3 fails), 6..=15 are measured (6, 9, 12, 15 fail).
        assert_eq!(served.load(Ordering::SeqCst), 15);
        assert_eq!(r.calls.warmup_failures.0.get("503"), Some(&1));
        assert_eq!(r.calls.failures.0.get("503"), Some(&4));
        assert_eq!((r.calls.attempted, r.calls.ok, r.calls.failed), (10, 6, 5));
        assert!(!r.calls.valid);
        assert_eq!(r.calls.describe_failed(), "5 (503x4, warm-up 503x1)");
    }

    #[tokio::test]
    async fn a_clean_sequential_run_is_valid() {
        let (_dir, endpoint, _) = flaky_server(u64::MAX).await;
        let (progress, _line) = Progress::start("unit-seq-clean", Some(20));
        let r = sequential(&target(endpoint), 20, 2, None, &progress)
            .await
            .unwrap();
        assert!(r.calls.valid);
        assert_eq!((r.calls.attempted, r.calls.ok, r.calls.failed), (20, 20, 0));
        assert_eq!(r.latency.samples, 20);
        assert_eq!(r.failed(), 0);
    }

    #[tokio::test]
    async fn sparse_waits_the_gap() {
        let (_dir, endpoint, _) = flaky_server(u64::MAX).await;
        let (progress, _line) = Progress::start("unit-sparse", Some(3));
        let gap = Duration::from_millis(30);
        let r = sequential(&target(endpoint), 3, 1, Some(gap), &progress)
            .await
            .unwrap();
        assert_eq!(r.gap_ms, Some(30));
        assert!(r.elapsed_s >= 0.09, "{}", r.elapsed_s);
        assert_eq!(r.calls.ok, 3);
        assert!(r.calls.valid);
    }

    #[tokio::test]
    async fn concurrent_clients_use_one_connection_each() {
        let (_dir, endpoint, served) = flaky_server(u64::MAX).await;
        let (progress, _line) = Progress::start("unit-conc", None);
        let r = concurrent(&target(endpoint), 4, Duration::from_millis(200), 2, &progress)
            .await
            .unwrap();
        assert_eq!(r.clients, 4);
        assert_eq!(r.warmup, 2);
        assert_eq!(r.connects, 4);
        assert!(r.calls.valid);
        assert_eq!(r.calls.failed, 0);
        assert!(r.calls.ok > 4);
        assert_eq!(r.calls.attempted, r.calls.ok);
        assert_eq!(served.load(Ordering::SeqCst), r.calls.attempted + 8);
        assert!(r.ok_calls_per_s > 0.0);
        assert_eq!(r.ok_calls_per_s, r.attempted_calls_per_s);
        assert!(r.elapsed_s >= 0.2);
    }

    #[tokio::test]
    async fn concurrent_throughput_counts_only_ok_calls() {
        let (_dir, endpoint, served) = flaky_server(5).await;
        let (progress, _line) = Progress::start("unit-conc-failing", None);
        let r = concurrent(&target(endpoint), 4, Duration::from_millis(200), 2, &progress)
            .await
            .unwrap();
        let served = served.load(Ordering::SeqCst);
        // The 8 warm-up calls are served before the common start: call 5 is one of them and
        // fails; of the measured calls 9..=served, every multiple of 5 fails.
        assert_eq!(r.calls.warmup_failures.0.get("503"), Some(&1));
        assert_eq!(served, r.calls.attempted + 8);
        assert_eq!(r.calls.failed, served / 5);
        assert_eq!(r.calls.failures.total(), served / 5 - 1);
        assert_eq!(r.calls.ok + r.calls.failures.total(), r.calls.attempted);
        assert!(!r.calls.valid);
        assert_eq!(r.latency.samples, r.calls.ok);
        // Throughput is the successful calls; the attempted rate is reported under its own name.
        let per_s = |n: u64| n as f64 / r.elapsed_s;
        assert!((r.ok_calls_per_s - per_s(r.calls.ok)).abs() < 1e-6);
        assert!((r.attempted_calls_per_s - per_s(r.calls.attempted)).abs() < 1e-6);
        assert!(r.ok_calls_per_s < r.attempted_calls_per_s);
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["valid"], false);
        assert_eq!(v["failed"], served / 5);
        assert!(v.get("throughput_per_s").is_none());
    }

    #[tokio::test]
    async fn unreachable_target_fails_fast() {
        let dir = tempfile::tempdir().unwrap();
        let (progress, _line) = Progress::start("unit-none", None);
        let err = sequential(
            &target(Endpoint::Unix(dir.path().join("none"))),
            1,
            0,
            None,
            &progress,
        )
        .await
        .unwrap_err();
        assert!(matches!(err, ClientError::Connect { .. }), "{err}");
        assert_eq!(err.cause(), "connect");
    }
}
