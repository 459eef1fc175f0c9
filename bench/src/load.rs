//! The call-latency scenarios, against any HTTP/1.1 endpoint (the LB's `/invoke/{id}` or a
//! function's `POST /call` for the floor): sequential warm calls on one keep-alive connection,
//! the same spaced by an idle gap, and N concurrent clients for a fixed time.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

use crate::{
    client::{CallTemplate, ClientError, Conn, Endpoint, full_body},
    progress::Progress,
    stats::{ErrorTally, LatencySummary},
};

/// What a scenario calls: where, with which request head, and which body.
#[derive(Debug, Clone)]
pub struct CallTarget {
    pub endpoint: Endpoint,
    pub template: CallTemplate,
    pub body: Bytes,
}

impl CallTarget {
    /// Makes one call on `conn`; the outcome is either a latency (2xx) or an error cause.
    async fn call(&self, conn: &mut Conn) -> Result<Duration, String> {
        let req = self.template.request(full_body(self.body.clone()));
        match conn.call(req, |_| {}).await {
            Ok(outcome) if outcome.ok() => Ok(outcome.elapsed),
            Ok(outcome) => Err(outcome.status.to_string()),
            Err(e) => {
                tracing::debug!(error = %e, "call failed");
                Err(match e {
                    ClientError::Connect { .. } => "connect",
                    _ => "transport",
                }
                .to_owned())
            }
        }
    }
}

/// Figures of a sequential (`seq`) or spaced (`sparse`) run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SeqResult {
    /// Idle time between the end of one call and the start of the next (`sparse` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gap_ms: Option<u64>,
    pub warmup: usize,
    pub latency: LatencySummary,
    pub errors: ErrorTally,
    /// Connections opened (1 when keep-alive held throughout).
    pub connects: u64,
    pub elapsed_s: f64,
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
    for _ in 0..warmup {
        let _ = target.call(&mut conn).await;
    }
    let started = Instant::now();
    let mut samples = Vec::with_capacity(n);
    let mut errors = ErrorTally::default();
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
                errors.add(cause);
                false
            }
        };
        progress.record(ok);
    }
    Ok(SeqResult {
        gap_ms: gap.map(|g| g.as_millis() as u64),
        warmup,
        latency: LatencySummary::from_samples(&mut samples, errors.total()),
        errors,
        connects: conn.connects,
        elapsed_s: started.elapsed().as_secs_f64(),
    })
}

/// Figures of a concurrent (`conc`) run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConcResult {
    pub clients: usize,
    pub duration_s: f64,
    /// From the common start to the end of the last client's last call.
    pub elapsed_s: f64,
    /// Successful calls per second over `elapsed_s`.
    pub throughput_per_s: f64,
    pub latency: LatencySummary,
    pub errors: ErrorTally,
    pub connects: u64,
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
    // Open every connection first so an unreachable target fails the scenario, not the figures.
    let mut conns = Vec::with_capacity(clients);
    for _ in 0..clients {
        conns.push(Conn::open(target.endpoint.clone()).await?);
    }
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(clients + 1));
    let (start_tx, start_rx) = tokio::sync::watch::channel(None::<Instant>);
    let mut tasks = Vec::with_capacity(clients);
    for mut conn in conns {
        let target = target.clone();
        let barrier = barrier.clone();
        let mut start_rx = start_rx.clone();
        let progress = progress.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..warmup {
                let _ = target.call(&mut conn).await;
            }
            barrier.wait().await;
            let started = match start_rx.wait_for(Option::is_some).await {
                Ok(started) => started.unwrap_or_else(Instant::now),
                Err(_) => Instant::now(),
            };
            let mut samples = Vec::new();
            let mut errors = ErrorTally::default();
            while started.elapsed() < duration {
                match target.call(&mut conn).await {
                    Ok(latency) => {
                        samples.push(latency);
                        progress.record(true);
                    }
                    Err(cause) => {
                        errors.add(cause);
                        progress.record(false);
                    }
                }
            }
            (samples, errors, conn.connects)
        }));
    }
    barrier.wait().await;
    let started = Instant::now();
    let _ = start_tx.send(Some(started));
    let mut samples = Vec::new();
    let mut errors = ErrorTally::default();
    let mut connects = 0;
    for task in tasks {
        // A panicking client would be a bug in this tool; count it rather than lose the run.
        match task.await {
            Ok((s, e, c)) => {
                samples.extend(s);
                errors.merge(&e);
                connects += c;
            }
            Err(_) => errors.add("client-panic"),
        }
    }
    let elapsed = started.elapsed();
    let ok = samples.len() as f64;
    Ok(ConcResult {
        clients,
        duration_s: duration.as_secs_f64(),
        elapsed_s: elapsed.as_secs_f64(),
        throughput_per_s: ok / elapsed.as_secs_f64().max(1e-9),
        latency: LatencySummary::from_samples(&mut samples, errors.total()),
        errors,
        connects,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};
    use hyper::{Request, Response, server::conn::http1, service::service_fn};
    use hyper_util::rt::TokioIo;
    use std::{
        convert::Infallible,
        sync::{
            Arc,
            atomic::{AtomicU64, Ordering},
        },
    };

    /// Serves on a unix socket; every `fail_every`-th call answers 503.
    async fn server(fail_every: u64) -> (tempfile::TempDir, Endpoint, Arc<AtomicU64>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let count = Arc::new(AtomicU64::new(0));
        let served = count.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let served = served.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let n = served.fetch_add(1, Ordering::SeqCst) + 1;
                        async move {
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let mut resp = Response::new(Full::new(body));
                            if n.is_multiple_of(fail_every) {
                                *resp.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
                            }
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        (dir, Endpoint::Unix(path), count)
    }

    fn target(endpoint: Endpoint) -> CallTarget {
        CallTarget {
            endpoint,
            template: CallTemplate::post("localhost", "/invoke/f"),
            body: Bytes::from_static(b"{}"),
        }
    }

    #[tokio::test]
    async fn sequential_counts_warmup_errors_and_keeps_one_connection() {
        let (_dir, endpoint, served) = server(10).await;
        let (progress, line) = Progress::start("unit-seq", Some(40));
        let r = sequential(&target(endpoint), 40, 5, None, &progress)
            .await
            .unwrap();
        line.finish();
        // 45 calls in all; every 10th fails: calls 10, 20, 30, 40 fall in the measured 6..=45.
        assert_eq!(served.load(Ordering::SeqCst), 45);
        assert_eq!(r.latency.calls, 36);
        assert_eq!(r.errors.0.get("503"), Some(&4));
        assert_eq!(r.latency.errors, 4);
        assert_eq!(r.connects, 1);
        assert!(r.latency.p50_ms > 0.0 && r.latency.p50_ms <= r.latency.p99_ms);
    }

    #[tokio::test]
    async fn sparse_waits_the_gap() {
        let (_dir, endpoint, _) = server(u64::MAX).await;
        let (progress, _line) = Progress::start("unit-sparse", Some(3));
        let gap = Duration::from_millis(30);
        let r = sequential(&target(endpoint), 3, 1, Some(gap), &progress)
            .await
            .unwrap();
        assert_eq!(r.gap_ms, Some(30));
        assert!(r.elapsed_s >= 0.09, "{}", r.elapsed_s);
        assert_eq!(r.latency.calls, 3);
    }

    #[tokio::test]
    async fn concurrent_clients_use_one_connection_each() {
        let (_dir, endpoint, served) = server(u64::MAX).await;
        let (progress, _line) = Progress::start("unit-conc", None);
        let r = concurrent(&target(endpoint), 4, Duration::from_millis(200), 2, &progress)
            .await
            .unwrap();
        assert_eq!(r.clients, 4);
        assert_eq!(r.connects, 4);
        assert!(r.latency.calls > 4);
        assert_eq!(served.load(Ordering::SeqCst), r.latency.calls + 8);
        assert!(r.throughput_per_s > 0.0);
        assert!(r.elapsed_s >= 0.2);
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
    }
}
