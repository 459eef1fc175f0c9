//! The streaming scenario: POST a generated body of a given size, read the echo and verify it byte
//! for byte, timing both directions. Neither side is ever held in memory, so the size is bounded
//! only by the path under test.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

use crate::{
    client::{CallTemplate, ClientError, Conn, Endpoint},
    pattern::{ECHO_PREFIX, EchoCheck, PatternBody},
    progress::Progress,
    stats::median,
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

/// One transfer.
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

/// Figures over all transfers (medians).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamResult {
    /// Pattern bytes per transfer (the echo prefix, if any, comes on top).
    pub size_bytes: u64,
    pub body_mode: BodyMode,
    pub up_mb_s: f64,
    pub down_mb_s: f64,
    pub round_trip_mb_s: f64,
    /// Every transfer verified.
    pub verified: bool,
    pub runs: Vec<StreamRun>,
}

/// `runs` transfers of `size` bytes on one keep-alive connection.
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
    for _ in 0..runs.max(1) {
        let run = transfer(&mut conn, template, size, mode).await?;
        progress.record(run.verified);
        results.push(run);
    }
    let pick = |f: fn(&StreamRun) -> f64| median(&results.iter().map(f).collect::<Vec<_>>());
    Ok(StreamResult {
        size_bytes: size,
        body_mode: mode,
        up_mb_s: pick(|r| r.up_mb_s),
        down_mb_s: pick(|r| r.down_mb_s),
        round_trip_mb_s: pick(|r| r.round_trip_mb_s),
        verified: results.iter().all(|r| r.verified),
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
        assert!(r.verified, "{r:?}");
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
        assert!(r.verified, "{r:?}");
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
        assert!(!r.verified);
        assert_eq!(r.runs[0].first_mismatch, Some(3));
        assert_eq!(r.runs[0].received_bytes, 100_000);
    }
}
