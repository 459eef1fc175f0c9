//! The streaming scenario: POST a generated body of a given size, read the echo and verify it byte
//! for byte, timing both directions. Neither side is ever held in memory, so the size is bounded
//! only by the path under test. A transfer that fails (an error status, a broken connection, a
//! wrong body) is counted by cause like a failed call, and the rates are medians over the
//! verified transfers only.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

use crate::{
    client::{CallTemplate, ClientError, Conn, Endpoint},
    pattern::{ECHO_PREFIX, EchoCheck, PatternBody},
    progress::Progress,
    stats::{CallCounts, Counted, ErrorTally, median},
    units::mb_per_s,
};

/// What the request body looks like and what comes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BodyMode {
    /// `{"responseSize":N}` then N pattern bytes: the test function reads the whole body, then
    /// streams N pattern bytes back. Upload then download, which Fn's protocol allows (a function
    /// may not answer before it has the whole request).
    Sized,
    /// `{"echoBody":true}` then the pattern: the test function streams the body back as it
    /// arrives (full duplex). Works on the bare FDK socket; Fn's runner rejects it (502 "function
    /// invoked write before receiving entire request") once the body outgrows its buffers.
    Echo,
    /// Only the pattern, expected back unchanged: for a function that echoes any body as is.
    Raw,
}

impl BodyMode {
    /// The bytes sent before the `size` pattern bytes.
    pub fn request_prefix(self, size: u64) -> Bytes {
        match self {
            BodyMode::Sized => Bytes::from(format!(r#"{{"responseSize":{size}}}"#)),
            BodyMode::Echo => Bytes::from_static(ECHO_PREFIX),
            BodyMode::Raw => Bytes::new(),
        }
    }

    /// The bytes expected before the `size` pattern bytes of the response.
    pub fn response_prefix(self) -> Bytes {
        match self {
            BodyMode::Echo => Bytes::from_static(ECHO_PREFIX),
            BodyMode::Sized | BodyMode::Raw => Bytes::new(),
        }
    }
}

/// One transfer that got an answer (a transfer whose connection broke is only counted).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamRun {
    pub status: u16,
    pub sent_bytes: u64,
    pub received_bytes: u64,
    /// Request body bytes / time until the last of them was handed to the connection.
    pub up_mb_s: f64,
    /// Response body bytes / time from its first to its last byte.
    pub down_mb_s: f64,
    /// Pattern bytes / whole round trip: the figure compared with the floor.
    pub round_trip_mb_s: f64,
    pub elapsed_s: f64,
    /// 2xx, the expected number of bytes back, and every byte as expected.
    pub verified: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_mismatch: Option<u64>,
}

impl StreamRun {
    /// Why the transfer failed, as a failure cause: the status when not 2xx, else `"body
    /// mismatch"` (a byte differs) or `"body length"` (more or fewer bytes than sent); `None` for
    /// a verified transfer.
    pub fn failure(&self) -> Option<String> {
        if self.verified {
            None
        } else if !(200..300).contains(&self.status) {
            Some(self.status.to_string())
        } else if self.first_mismatch.is_some() {
            Some("body mismatch".into())
        } else {
            Some("body length".into())
        }
    }
}

/// Figures over all transfers: medians of the verified ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamResult {
    /// Failures first: transfers attempted, verified (`ok`) and failed by cause.
    #[serde(flatten)]
    pub calls: CallCounts,
    /// Pattern bytes per transfer (the echo prefix, if any, comes on top).
    pub size_bytes: u64,
    pub body_mode: BodyMode,
    pub up_mb_s: f64,
    pub down_mb_s: f64,
    pub round_trip_mb_s: f64,
    /// Every transfer that got an answer, verified or not.
    pub runs: Vec<StreamRun>,
}

impl Counted for StreamResult {
    fn failed(&self) -> u64 {
        self.calls.failed
    }
}

/// `runs` transfers of `size` bytes on one keep-alive connection (reopened after a broken
/// transfer).
pub async fn stream(
    endpoint: &Endpoint,
    template: &CallTemplate,
    size: u64,
    mode: BodyMode,
    runs: usize,
    progress: &Progress,
) -> Result<StreamResult, ClientError> {
    let mut conn = Conn::open(endpoint.clone()).await?;
    let mut results = Vec::with_capacity(runs);
    let mut failures = ErrorTally::default();
    for _ in 0..runs.max(1) {
        match transfer(&mut conn, template, size, mode).await {
            Ok(run) => {
                if let Some(cause) = run.failure() {
                    failures.add(cause);
                }
                progress.record(run.verified);
                results.push(run);
            }
            Err(e) => {
                tracing::debug!(error = %e, "transfer failed");
                failures.add(e.cause());
                progress.record(false);
            }
        }
    }
    let verified: Vec<&StreamRun> = results.iter().filter(|r| r.verified).collect();
    let pick = |f: fn(&StreamRun) -> f64| median(&verified.iter().map(|r| f(r)).collect::<Vec<_>>());
    Ok(StreamResult {
        calls: CallCounts::new(verified.len() as u64, failures, ErrorTally::default()),
        size_bytes: size,
        body_mode: mode,
        up_mb_s: pick(|r| r.up_mb_s),
        down_mb_s: pick(|r| r.down_mb_s),
        round_trip_mb_s: pick(|r| r.round_trip_mb_s),
        runs: results,
    })
}

async fn transfer(
    conn: &mut Conn,
    template: &CallTemplate,
    size: u64,
    mode: BodyMode,
) -> Result<StreamRun, ClientError> {
    let prefix = mode.request_prefix(size);
    let body = PatternBody::new(prefix.clone(), size);
    let sent_bytes = prefix.len() as u64 + size;
    let request_done = body.finished();
    let req = template.request(http_body_util::BodyExt::boxed_unsync(body));
    let expected_prefix = mode.response_prefix();
    let expected_bytes = expected_prefix.len() as u64 + size;
    let mut check = EchoCheck::new(expected_prefix);
    let mut first_byte = None;
    let started = Instant::now();
    let outcome = conn
        .call(req, |chunk| {
            first_byte.get_or_insert_with(Instant::now);
            check.feed(chunk);
        })
        .await?;
    let ended = started + outcome.elapsed;
    let up = request_done
        .get()
        .map_or(outcome.elapsed, |t| t.duration_since(started));
    let down = first_byte.map_or(Duration::ZERO, |t| ended.saturating_duration_since(t));
    let verified = outcome.ok() && outcome.body_bytes == expected_bytes && check.first_mismatch.is_none();
    Ok(StreamRun {
        status: outcome.status,
        sent_bytes,
        received_bytes: outcome.body_bytes,
        up_mb_s: mb_per_s(sent_bytes, up),
        // One frame (a buffered answer) has no measurable spread: use the whole call then.
        down_mb_s: mb_per_s(
            outcome.body_bytes,
            if down.is_zero() { outcome.elapsed } else { down },
        ),
        round_trip_mb_s: mb_per_s(size, outcome.elapsed),
        elapsed_s: outcome.elapsed.as_secs_f64(),
        verified,
        first_mismatch: check.first_mismatch,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use hyper::{Request, Response, server::conn::http1, service::service_fn};
    use hyper_util::rt::TokioIo;
    use std::convert::Infallible;

    /// An echo server on a unix socket that streams the body back, optionally corrupting it.
    async fn echo_server(corrupt: bool) -> (tempfile::TempDir, Endpoint) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("echo.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| async move {
                        let body = req.into_body().map_frame(move |f| {
                            f.map_data(|d: Bytes| {
                                if corrupt && d.len() > 3 {
                                    let mut v = d.to_vec();
                                    v[3] = b'!';
                                    Bytes::from(v)
                                } else {
                                    d
                                }
                            })
                        });
                        Ok::<_, Infallible>(Response::new(body))
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        (dir, Endpoint::Unix(path))
    }

    #[tokio::test]
    async fn streams_and_verifies_an_echo() {
        let (_dir, endpoint) = echo_server(false).await;
        let (progress, _line) = Progress::start("unit-stream", Some(2));
        let size = 8 * 1024 * 1024 + 3;
        let r = stream(
            &endpoint,
            &CallTemplate::fdk_call(),
            size,
            BodyMode::Echo,
            2,
            &progress,
        )
        .await
        .unwrap();
        assert!(r.calls.valid, "{r:?}");
        assert_eq!((r.calls.attempted, r.calls.ok, r.calls.failed), (2, 2, 0));
        assert_eq!(r.runs.len(), 2);
        assert_eq!(r.runs[0].received_bytes, size + ECHO_PREFIX.len() as u64);
        assert!(r.round_trip_mb_s > 0.0 && r.up_mb_s > 0.0 && r.down_mb_s > 0.0);
    }

    /// Behaves like the test function's `responseSize` knob: reads the whole body, then answers
    /// that many pattern bytes.
    async fn sized_server() -> (tempfile::TempDir, Endpoint) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sized.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| async move {
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let mut knobs =
                            serde_json::Deserializer::from_slice(&body).into_iter::<serde_json::Value>();
                        let n = knobs.next().unwrap().unwrap()["responseSize"].as_u64().unwrap();
                        assert_eq!(body.len() as u64, knobs.byte_offset() as u64 + n);
                        Ok::<_, Infallible>(Response::new(PatternBody::new(Bytes::new(), n)))
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        (dir, Endpoint::Unix(path))
    }

    #[tokio::test]
    async fn sized_mode_uploads_then_downloads() {
        let (_dir, endpoint) = sized_server().await;
        let (progress, _line) = Progress::start("unit-stream-sized", Some(1));
        let size = 3 * 1024 * 1024 + 5;
        let r = stream(
            &endpoint,
            &CallTemplate::fdk_call(),
            size,
            BodyMode::Sized,
            1,
            &progress,
        )
        .await
        .unwrap();
        assert!(r.calls.valid, "{r:?}");
        assert_eq!(r.runs[0].received_bytes, size);
        assert_eq!(
            r.runs[0].sent_bytes,
            size + format!(r#"{{"responseSize":{size}}}"#).len() as u64
        );
    }

    #[tokio::test]
    async fn detects_a_corrupted_echo() {
        let (_dir, endpoint) = echo_server(true).await;
        let (progress, _line) = Progress::start("unit-stream-bad", Some(1));
        let r = stream(
            &endpoint,
            &CallTemplate::fdk_call(),
            100_000,
            BodyMode::Raw,
            1,
            &progress,
        )
        .await
        .unwrap();
        assert!(!r.runs[0].verified);
        assert_eq!(r.runs[0].first_mismatch, Some(3));
        assert_eq!(r.runs[0].received_bytes, 100_000);
        // A 200 with a wrong body is a failed transfer: counted, and no rate from it.
        assert!(!r.calls.valid);
        assert_eq!((r.calls.attempted, r.calls.ok, r.calls.failed), (1, 0, 1));
        assert_eq!(r.calls.failures.0.get("body mismatch"), Some(&1));
        assert_eq!(r.round_trip_mb_s, 0.0);
        assert_eq!(r.failed(), 1);
    }

    #[tokio::test]
    async fn counts_failed_transfers_by_status() {
        // Echoes whole bodies, and answers every 2nd call 503.
        let (_dir, endpoint, served) = crate::test_support::flaky_server(2).await;
        let (progress, _line) = Progress::start("unit-stream-503", Some(4));
        let r = stream(
            &endpoint,
            &CallTemplate::fdk_call(),
            100_000,
            BodyMode::Raw,
            4,
            &progress,
        )
        .await
        .unwrap();
        assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 4);
        assert!(!r.calls.valid);
        assert_eq!((r.calls.attempted, r.calls.ok, r.calls.failed), (4, 2, 2));
        assert_eq!(r.calls.failures.0.get("503"), Some(&2));
        assert_eq!(r.runs.len(), 4);
        assert_eq!(r.runs[1].failure().as_deref(), Some("503"));
        // The rates are the verified transfers' medians.
        let mut ok: Vec<f64> = r
            .runs
            .iter()
            .filter(|x| x.verified)
            .map(|x| x.round_trip_mb_s)
            .collect();
        ok.sort_by(f64::total_cmp);
        assert_eq!(r.round_trip_mb_s, (ok[0] + ok[1]) / 2.0);
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["valid"], false);
        assert_eq!(v["failures"]["503"], 2);
        assert!(v.get("verified").is_none());
    }

    #[tokio::test]
    async fn a_broken_transfer_is_counted_and_the_next_one_reconnects() {
        use tokio::io::AsyncReadExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broken.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            // The first connection dies once the request has started to arrive.
            let (mut first, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = first.read(&mut buf).await;
            drop(first);
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let svc = service_fn(|req: Request<hyper::body::Incoming>| async move {
                        Ok::<_, Infallible>(Response::new(req.into_body()))
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        let (progress, _line) = Progress::start("unit-stream-broken", Some(2));
        let r = stream(
            &Endpoint::Unix(path),
            &CallTemplate::fdk_call(),
            100_000,
            BodyMode::Raw,
            2,
            &progress,
        )
        .await
        .unwrap();
        assert!(!r.calls.valid);
        assert_eq!((r.calls.attempted, r.calls.ok, r.calls.failed), (2, 1, 1));
        assert_eq!(r.calls.failures.0.get("transport"), Some(&1));
        // Only the transfer that got an answer has a run.
        assert_eq!(r.runs.len(), 1);
        assert!(r.runs[0].verified);
        assert!(r.round_trip_mb_s > 0.0);
    }
}
