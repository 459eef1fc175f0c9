//! The cold-start scenario through Fn's v2 API: register fresh fns (a unique name and a unique
//! config value each, so each needs a new slot and container), time the first call of each, and
//! delete every fn (and the app, if this run created it) afterwards, also when a step fails.

use bytes::Bytes;
use http::Method;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::{
    client::{BaseUrl, CallTemplate, ClientError, Conn, full_body},
    progress::Progress,
    stats::{CallCounts, Counted, ErrorTally, LatencySummary},
};

/// A failure of the v2 API side of the scenario.
#[derive(Debug, thiserror::Error)]
pub enum ColdError {
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The API answered a non-success status.
    #[error("{what}: {method} {path} answered {status}: {body}")]
    Api {
        what: &'static str,
        method: Method,
        path: String,
        status: u16,
        body: String,
    },
    /// The API answered something that is not the expected JSON.
    #[error("{what}: unexpected answer from {path}: {body}")]
    Decode {
        what: &'static str,
        path: String,
        body: String,
    },
}

/// What to create.
#[derive(Debug, Clone)]
pub struct ColdOptions {
    pub app: String,
    pub image: String,
    pub n: usize,
    /// Fn memory (MB); the server default when `None`.
    pub memory: Option<u64>,
    /// Fn idle timeout (s), so the bench's containers go away soon; server default when `None`.
    pub idle_timeout: Option<u64>,
    /// The body of the first call.
    pub body: Bytes,
}

/// Figures of a cold run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ColdResult {
    /// Failures first: first calls attempted, ok and failed by cause (one per fresh fn).
    #[serde(flatten)]
    pub calls: CallCounts,
    pub image: String,
    /// First-call latency of each fresh fn that answered 2xx.
    pub latency: LatencySummary,
    /// `POST /v2/fns` latency (informational).
    pub create_fn: LatencySummary,
    /// Fns deleted afterwards (should equal the number created).
    pub deleted: usize,
}

impl Counted for ColdResult {
    fn failed(&self) -> u64 {
        self.calls.failed
    }
}

/// A tiny v2 API client on one keep-alive connection.
struct Api {
    base: BaseUrl,
    conn: Conn,
}

impl Api {
    async fn request(
        &mut self,
        what: &'static str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Vec<u8>, Duration), ColdError> {
        let path = self.base.path(path);
        let mut template = CallTemplate::post(self.base.authority.clone(), path.clone());
        template.method = method.clone();
        let body = body.map(|v| v.to_string()).unwrap_or_default();
        let (outcome, bytes) = self.conn.call_collect(template.request(full_body(body))).await?;
        if !outcome.ok() {
            return Err(ColdError::Api {
                what,
                method,
                path,
                status: outcome.status,
                body: String::from_utf8_lossy(&bytes).into_owned(),
            });
        }
        Ok((outcome.status, bytes, outcome.elapsed))
    }

    async fn json(
        &mut self,
        what: &'static str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(Value, Duration), ColdError> {
        let (_, bytes, elapsed) = self.request(what, method, path, body).await?;
        let value = serde_json::from_slice(&bytes).map_err(|_| ColdError::Decode {
            what,
            path: path.to_owned(),
            body: String::from_utf8_lossy(&bytes).into_owned(),
        })?;
        Ok((value, elapsed))
    }

    /// The app's id, creating it if needed; `true` if this call created it.
    async fn ensure_app(&mut self, name: &str) -> Result<(String, bool), ColdError> {
        let (list, _) = self
            .json(
                "looking up the app",
                Method::GET,
                &format!("/v2/apps?name={name}"),
                None,
            )
            .await?;
        if let Some(id) = list["items"]
            .as_array()
            .and_then(|items| items.iter().find(|a| a["name"] == name))
            .and_then(|a| a["id"].as_str())
        {
            return Ok((id.to_owned(), false));
        }
        let (app, _) = self
            .json(
                "creating the app",
                Method::POST,
                "/v2/apps",
                Some(json!({ "name": name })),
            )
            .await?;
        let id = id_of(&app, "creating the app", "/v2/apps")?;
        Ok((id, true))
    }
}

fn id_of(value: &Value, what: &'static str, path: &str) -> Result<String, ColdError> {
    value["id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| ColdError::Decode {
            what,
            path: path.to_owned(),
            body: value.to_string(),
        })
}

/// A value no other fn has, so the fn's config (and thus its slot) is new.
fn nonce(i: usize) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("{:x}-{nanos:x}-{i}", std::process::id())
}

/// The fn created for call `i`.
pub fn fn_body(app_id: &str, opts: &ColdOptions, i: usize) -> Value {
    let unique = nonce(i);
    let mut body = json!({
        "app_id": app_id,
        "name": format!("bench-cold-{unique}"),
        "image": opts.image,
        "config": { "FERROFN_BENCH_NONCE": unique },
    });
    if let Some(memory) = opts.memory {
        body["memory"] = json!(memory);
    }
    if let Some(idle) = opts.idle_timeout {
        body["idle_timeout"] = json!(idle);
    }
    body
}

/// Runs the scenario: `api` is the v2 API base URL, `invoke` the base URL calls go to.
pub async fn cold(
    api: &BaseUrl,
    invoke: &BaseUrl,
    opts: &ColdOptions,
    progress: &Progress,
) -> Result<ColdResult, ColdError> {
    let mut api = Api {
        base: api.clone(),
        conn: Conn::open(api.endpoint.clone()).await?,
    };
    let (app_id, created_app) = api.ensure_app(&opts.app).await?;
    let mut fn_ids = Vec::new();
    let outcome = first_calls(&mut api, invoke, &app_id, opts, progress, &mut fn_ids).await;

    // Clean up whatever happened above.
    let mut deleted = 0;
    for id in &fn_ids {
        match api
            .request("deleting a fn", Method::DELETE, &format!("/v2/fns/{id}"), None)
            .await
        {
            Ok(_) => deleted += 1,
            Err(e) => tracing::warn!(fn_id = %id, error = %e, "could not delete a bench fn"),
        }
    }
    if created_app
        && let Err(e) = api
            .request(
                "deleting the app",
                Method::DELETE,
                &format!("/v2/apps/{app_id}"),
                None,
            )
            .await
    {
        tracing::warn!(app_id = %app_id, error = %e, "could not delete the bench app");
    }
    let (calls, latency, create_fn) = outcome?;
    Ok(ColdResult {
        calls,
        image: opts.image.clone(),
        latency,
        create_fn,
        deleted,
    })
}

async fn first_calls(
    api: &mut Api,
    invoke: &BaseUrl,
    app_id: &str,
    opts: &ColdOptions,
    progress: &Progress,
    fn_ids: &mut Vec<String>,
) -> Result<(CallCounts, LatencySummary, LatencySummary), ColdError> {
    let mut calls = Conn::open(invoke.endpoint.clone()).await?;
    let mut latencies = Vec::with_capacity(opts.n);
    let mut creates = Vec::with_capacity(opts.n);
    let mut failures = ErrorTally::default();
    for i in 0..opts.n {
        let (created, took) = api
            .json(
                "creating a fn",
                Method::POST,
                "/v2/fns",
                Some(fn_body(app_id, opts, i)),
            )
            .await?;
        creates.push(took);
        let id = id_of(&created, "creating a fn", "/v2/fns")?;
        fn_ids.push(id.clone());
        let template = CallTemplate::post(invoke.authority.clone(), invoke.path(&format!("/invoke/{id}")));
        let ok = match calls
            .call(template.request(full_body(opts.body.clone())), |_| {})
            .await
        {
            Ok(out) if out.ok() => {
                latencies.push(out.elapsed);
                true
            }
            Ok(out) => {
                failures.add(out.status.to_string());
                false
            }
            Err(e) => {
                tracing::debug!(error = %e, "cold call failed");
                failures.add(e.cause());
                false
            }
        };
        progress.record(ok);
    }
    Ok((
        CallCounts::new(latencies.len() as u64, failures, ErrorTally::default()),
        LatencySummary::from_samples(&mut latencies),
        LatencySummary::from_samples(&mut creates),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Endpoint;
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

    /// Just enough of Fn's v2 API and `/invoke` on a unix socket: the first call of every
    /// `fail_every`-th created fn answers 503. Counts the fns deleted.
    async fn fake_fn_server(fail_every: u64) -> (tempfile::TempDir, BaseUrl, Arc<AtomicU64>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let created = Arc::new(AtomicU64::new(0));
        let deleted = Arc::new(AtomicU64::new(0));
        let deleted_seen = deleted.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (created, deleted) = (created.clone(), deleted.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let (created, deleted) = (created.clone(), deleted.clone());
                        async move {
                            let method = req.method().clone();
                            let path = req.uri().path().to_owned();
                            let _ = req.into_body().collect().await;
                            let (status, body) = match (method.as_str(), path.as_str()) {
                                ("GET", "/v2/apps") => (200, r#"{"items":[]}"#.to_owned()),
                                ("POST", "/v2/apps") => (200, r#"{"id":"app1"}"#.to_owned()),
                                ("POST", "/v2/fns") => {
                                    let n = created.fetch_add(1, Ordering::SeqCst) + 1;
                                    (200, format!(r#"{{"id":"fn{n}"}}"#))
                                }
                                ("POST", p) if p.starts_with("/invoke/fn") => {
                                    let n: u64 = p["/invoke/fn".len()..].parse().unwrap();
                                    if n.is_multiple_of(fail_every) {
                                        (503, r#"{"message":"busy"}"#.to_owned())
                                    } else {
                                        (200, "{}".to_owned())
                                    }
                                }
                                ("DELETE", p) => {
                                    if p.starts_with("/v2/fns/") {
                                        deleted.fetch_add(1, Ordering::SeqCst);
                                    }
                                    (204, String::new())
                                }
                                _ => (404, String::new()),
                            };
                            let mut resp = Response::new(Full::new(Bytes::from(body)));
                            *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        let base = BaseUrl {
            endpoint: Endpoint::Unix(path),
            authority: "localhost".into(),
            prefix: String::new(),
        };
        (dir, base, deleted_seen)
    }

    fn options(n: usize) -> ColdOptions {
        ColdOptions {
            app: "bench".into(),
            image: "ferrofn/testfn:latest".into(),
            n,
            memory: None,
            idle_timeout: Some(1),
            body: Bytes::from_static(b"{}"),
        }
    }

    #[tokio::test]
    async fn counts_failed_first_calls() {
        let (_dir, base, deleted) = fake_fn_server(3).await;
        let (progress, _line) = Progress::start("unit-cold", Some(6));
        let r = cold(&base, &base, &options(6), &progress).await.unwrap();
        // Fns 3 and 6 answer their first call 503.
        assert!(!r.calls.valid);
        assert_eq!((r.calls.attempted, r.calls.ok, r.calls.failed), (6, 4, 2));
        assert_eq!(r.calls.failures.0.get("503"), Some(&2));
        assert_eq!(r.failed(), 2);
        assert_eq!(r.latency.samples, 4);
        assert_eq!(r.create_fn.samples, 6);
        assert_eq!((r.deleted, deleted.load(Ordering::SeqCst)), (6, 6));
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["valid"], false);
        assert_eq!(v["failures"]["503"], 2);
    }

    #[tokio::test]
    async fn a_clean_cold_run_is_valid() {
        let (_dir, base, _) = fake_fn_server(u64::MAX).await;
        let (progress, _line) = Progress::start("unit-cold-clean", Some(3));
        let r = cold(&base, &base, &options(3), &progress).await.unwrap();
        assert!(r.calls.valid);
        assert_eq!((r.calls.attempted, r.calls.ok, r.calls.failed), (3, 3, 0));
        assert_eq!(r.deleted, 3);
    }

    #[test]
    fn fresh_fns_differ_in_name_and_config() {
        let opts = ColdOptions {
            app: "a".into(),
            image: "ferrofn/testfn:latest".into(),
            n: 2,
            memory: Some(64),
            idle_timeout: None,
            body: Bytes::new(),
        };
        let a = fn_body("app1", &opts, 0);
        let b = fn_body("app1", &opts, 1);
        assert_ne!(a["name"], b["name"]);
        assert_ne!(
            a["config"]["FERROFN_BENCH_NONCE"],
            b["config"]["FERROFN_BENCH_NONCE"]
        );
        assert_eq!(a["app_id"], "app1");
        assert_eq!(a["image"], "ferrofn/testfn:latest");
        assert_eq!(a["memory"], 64);
        assert!(a.get("idle_timeout").is_none());
    }
}
