//! Tiny local servers for the unit tests: real HTTP/1.1 over a unix socket, so that scenarios run
//! their whole client path and their counts can be checked exactly.

use bytes::Bytes;
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

use crate::client::Endpoint;
use crate::stats::{CallCounts, ErrorTally, LatencySummary};

/// A latency summary of 100 samples with the given p50 and p99 (the rest derived from them).
pub fn latency(p50: f64, p99: f64) -> LatencySummary {
    LatencySummary {
        samples: 100,
        min_ms: p50 / 2.0,
        mean_ms: p50,
        p50_ms: p50,
        p90_ms: p50,
        p99_ms: p99,
        max_ms: p99 * 2.0,
    }
}

/// Counts of `ok` calls and no failure.
pub fn clean(ok: u64) -> CallCounts {
    CallCounts::new(ok, ErrorTally::default(), ErrorTally::default())
}

/// Serves on a unix socket and echoes each body; every `fail_every`-th call (counted over all
/// connections, from 1) answers 503 instead of 200. `u64::MAX` never fails. The counter is the
/// number of calls served so far.
pub async fn flaky_server(fail_every: u64) -> (tempfile::TempDir, Endpoint, Arc<AtomicU64>) {
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
                        let body: Bytes = req.into_body().collect().await.unwrap().to_bytes();
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

/// The top-level keys of `value`'s JSON object in the order they are written (`serde_json::Value`
/// sorts them).
pub fn json_keys(value: &impl serde::Serialize) -> Vec<String> {
    use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
    struct Keys;
    impl<'de> Visitor<'de> for Keys {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Vec<String>, A::Error> {
            let mut keys = Vec::new();
            while let Some((key, IgnoredAny)) = map.next_entry::<String, IgnoredAny>()? {
                keys.push(key);
            }
            Ok(keys)
        }
    }
    let json = serde_json::to_string(value).unwrap();
    serde_json::Deserializer::from_str(&json)
        .deserialize_map(Keys)
        .unwrap()
}
