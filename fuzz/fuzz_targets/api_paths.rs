//! The LB's HTTP front end in-process (lb/src/http): the whole router (v2 API, `/invoke`, `/t/...`,
//! health and metrics) over an empty in-memory SQLite registry and an empty runner pool, fed a few
//! requests whose method, path, query and body come from the fuzz input. Exercises route matching,
//! path and query extraction, list paging, body parsing, validation and the registry.
//! Invariants: no 500 from the management API (a bad request is the client's fault, a 4xx); every
//! `/v2` answer with a body is JSON; an object a POST created reads back unchanged by its ID.
#![no_main]

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use ferrofn_fuzz::{Input, runtime};
use ferrofn_lb::config::LbSettings;
use ferrofn_lb::http::auth::Tokens;
use ferrofn_lb::http::{LbState, MetricsOn, router};
use ferrofn_lb::placer::PlacerConfig;
use ferrofn_lb::pool::RunnerPool;
use ferrofn_lb::registry::Registry;
use ferrofn_lb::registry::sqlite::SqliteRegistry;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

const METHODS: [Method; 6] = [
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::PATCH,
    Method::HEAD,
];
const PREFIXES: [&str; 9] = [
    "/v2/apps",
    "/v2/fns",
    "/v2/triggers",
    "/v2/apps/",
    "/v2/fns/",
    "/v2/triggers/",
    "/t/",
    "/invoke/",
    "/",
];

fn state() -> Arc<LbState> {
    let settings = LbSettings::default();
    let registry: Arc<dyn Registry> = Arc::new(SqliteRegistry::open(":memory:").expect("in-memory SQLite"));
    let pool = RunnerPool::new(&[], None, settings.channel_options()).expect("empty pool");
    // No runners: a call fails placement at once instead of waiting for one.
    let quick = Duration::from_millis(1);
    Arc::new(LbState {
        registry,
        pool,
        placer: ferrofn_lb::placer::from_name("naive", 1.0).expect("naive placer"),
        placer_config: PlacerConfig {
            retry_delay: quick,
            timeout: quick,
            detached_timeout: quick,
            no_runner_wait: quick,
        },
        public_url: None,
        max_request: 1 << 20,
        frame_bytes: ferrofn_lb::engage::DEFAULT_FRAME_BYTES,
        execution_headroom: quick,
        response_head: 1024,
        sync_deadline_margin: Some(quick),
        // Open API (as an LB on loopback without tokens): the target fuzzes the routes behind it.
        api_tokens: Tokens::default(),
        invoke_tokens: Tokens::default(),
    })
}

async fn send(app: &axum::Router, method: Method, uri: &str, body: Vec<u8>) -> (StatusCode, Vec<u8>) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("host", "lb.test")
        .header("content-type", "application/json")
        .body(Body::from(body))
        .expect("request parts already checked");
    let resp = app.clone().oneshot(req).await.expect("the router is infallible");
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    (status, body)
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mut requests = Vec::new();
    for _ in 0..(1 + input.byte() % 4) {
        let method = METHODS[input.byte() as usize % METHODS.len()].clone();
        let prefix = PREFIXES[input.byte() as usize % PREFIXES.len()];
        let suffix = String::from_utf8_lossy(input.short()).into_owned();
        let uri = format!("{prefix}{suffix}");
        // The http crate refuses what no HTTP/1.1 server would hand over: skip it.
        if uri.parse::<http::Uri>().is_err() {
            continue;
        }
        let n = input.u16() as usize % 1024;
        requests.push((method, uri, input.take(n).to_vec()));
    }
    if requests.is_empty() {
        return;
    }
    runtime().block_on(async {
        let app = router(state(), MetricsOn::Main);
        for (method, uri, body) in requests {
            let api = uri.starts_with("/v2/");
            let (status, out) = send(&app, method.clone(), &uri, body).await;
            if !api {
                continue;
            }
            assert_ne!(
                status,
                StatusCode::INTERNAL_SERVER_ERROR,
                "{method} {uri}: 500 {}",
                String::from_utf8_lossy(&out)
            );
            if out.is_empty() || method == Method::HEAD {
                continue;
            }
            let json: serde_json::Value = serde_json::from_slice(&out).unwrap_or_else(|e| {
                panic!(
                    "{method} {uri}: {status} body is not JSON ({e}): {:?}",
                    String::from_utf8_lossy(&out)
                )
            });
            if method == Method::POST && status == StatusCode::OK {
                let id = json["id"]
                    .as_str()
                    .expect("a created object has an id")
                    .to_owned();
                let path = uri.split('?').next().unwrap_or_default().trim_end_matches('/');
                let (st, again) = send(&app, Method::GET, &format!("{path}/{id}"), Vec::new()).await;
                assert_eq!(st, StatusCode::OK, "GET {path}/{id} after its POST");
                let again: serde_json::Value = serde_json::from_slice(&again).expect("JSON");
                assert_eq!(again, json, "GET {path}/{id} differs from what the POST answered");
            }
        }
    });
});
