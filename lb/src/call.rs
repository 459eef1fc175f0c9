//! HTTP request + fn + app -> the call model sent in `TryCall.models_call_json`: Fn's config merge
//! and `FN_*` variables, annotations, headers (as received for invoke, renamed for HTTP triggers),
//! the full request URL and method; and [`run_call`], the one call path behind the invoke and
//! trigger routes: build the model, place it with the retry loop, record the outcome.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use axum::body::Body;
use http::HeaderMap;
use tokio::sync::Mutex;
use tracing::Instrument;

use ferrofn_common::call::{CallModel, TYPE_DETACHED, TYPE_SYNC};
use ferrofn_common::datetime::DateTime;
use ferrofn_common::error::FnError;

use crate::engage::{BodyState, CallResponse, EngageCall, try_runner};
use crate::http::SharedState;
use crate::placer::{DEFAULT_DETACHED_PLACER_TIMEOUT, PlaceError, place};
use crate::registry::models::{App, Function};

/// Headers that never travel to a function (Go's hop-by-hop list).
pub const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "trailers",
    "transfer-encoding",
    "upgrade",
];

/// Go's `CanonicalMIMEHeaderKey`: `content-type` -> `Content-Type`. Names with characters Go would
/// not canonicalise (spaces, non-token bytes) are returned unchanged.
pub fn canonical_header(name: &str) -> String {
    let valid = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !valid {
        return name.to_owned();
    }
    let mut upper = true;
    name.chars()
        .map(|c| {
            let out = if upper {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            };
            upper = c == '-';
            out
        })
        .collect()
}

/// The request headers as Go's server keeps them: canonical names, every value, no `Host`.
pub fn headers_as_received(headers: &HeaderMap) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in headers {
        if name == http::header::HOST {
            continue;
        }
        out.entry(canonical_header(name.as_str()))
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    out
}

/// The headers an HTTP trigger passes: hop-by-hop removed, every name other than `Content-Type`
/// renamed to `Fn-Http-H-<Name>`, plus `Fn-Http-Method`, `Fn-Http-Request-Url` and
/// `Fn-Intent: httprequest`.
pub fn trigger_headers(headers: &HeaderMap, method: &str, url: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, values) in headers_as_received(headers) {
        if HOP_BY_HOP.contains(&name.to_ascii_lowercase().as_str()) {
            continue;
        }
        let key = if name == "Content-Type" {
            name
        } else {
            format!("Fn-Http-H-{name}")
        };
        out.entry(key).or_default().extend(values);
    }
    out.insert("Fn-Http-Method".into(), vec![method.to_owned()]);
    out.insert("Fn-Http-Request-Url".into(), vec![url.to_owned()]);
    out.insert("Fn-Intent".into(), vec!["httprequest".into()]);
    out
}

/// What the HTTP front knows about the request.
#[derive(Debug, Clone)]
pub struct CallRequest {
    /// The call ID (also the `Fn-Call-Id` response header).
    pub id: String,
    /// Request method.
    pub method: String,
    /// Full request URL (scheme and host filled in).
    pub url: String,
    /// Headers for the function (see [`headers_as_received`] / [`trigger_headers`]).
    pub headers: BTreeMap<String, Vec<String>>,
    /// `Fn-Invoke-Type: detached` on an invoke.
    pub detached: bool,
    /// Trigger ID ("" for invokes).
    pub trigger_id: String,
}

/// Builds the call model as Fn's LB does (`FromHTTPFnRequest` + `call.Start`): status `running`,
/// `started_at` set, config = app config overridden by fn config plus `FN_MEMORY`, `FN_TYPE`
/// (`sync` even for detached calls, as Fn), `FN_FN_ID` and `FN_APP_ID`.
pub fn build_call(req: CallRequest, app: &App, f: &Function) -> CallModel {
    let memory = f.memory_mb();
    let mut config = app.config.clone();
    config.extend(f.config.iter().map(|(k, v)| (k.clone(), v.clone())));
    config.insert("FN_MEMORY".into(), memory.to_string());
    config.insert("FN_TYPE".into(), TYPE_SYNC.into());
    config.insert("FN_FN_ID".into(), f.id.clone());
    config.insert("FN_APP_ID".into(), app.id.clone());
    let mut annotations = app.annotations.clone();
    annotations.extend(f.annotations.iter().map(|(k, v)| (k.clone(), v.clone())));
    let now = DateTime::now();
    CallModel {
        id: req.id,
        status: "running".into(),
        image: f.image.clone(),
        call_type: if req.detached { TYPE_DETACHED } else { TYPE_SYNC }.into(),
        url: req.url,
        method: req.method,
        timeout: f.timeout_secs(),
        idle_timeout: f.idle_timeout_secs(),
        memory,
        config,
        annotations,
        headers: req.headers,
        syslog_url: app.syslog_url.clone().unwrap_or_default(),
        created_at: now,
        started_at: now,
        app_id: app.id.clone(),
        app_name: app.name.clone(),
        trigger_id: req.trigger_id,
        fn_id: f.id.clone(),
        ..CallModel::default()
    }
}

/// A W3C `traceparent` for the call: the client's if it sent a valid one, else a new root.
pub fn traceparent(headers: &HeaderMap) -> String {
    if let Some(tp) = headers.get("traceparent").and_then(|v| v.to_str().ok()) {
        let parts: Vec<&str> = tp.split('-').collect();
        if parts.len() == 4 && parts[1].len() == 32 && parts[2].len() == 16 {
            return tp.to_owned();
        }
    }
    format!(
        "00-{:032x}-{:016x}-01",
        rand::random::<u128>().max(1),
        rand::random::<u64>().max(1)
    )
}

/// The request body's length from its `Content-Length` (hyper holds the body to it); `None` for a
/// chunked body or an unreadable value.
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    if headers.contains_key(http::header::TRANSFER_ENCODING) {
        return None;
    }
    headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Places and runs a built call; the response is the function's, or Fn's error JSON.
pub async fn run_call(
    st: &SharedState,
    req: CallRequest,
    app: &App,
    f: &Function,
    body: Body,
    request_headers: &HeaderMap,
) -> Result<CallResponse, FnError> {
    let started = Instant::now();
    let detached = req.detached;
    let call_id = req.id.clone();
    // Streamed or buffered: decided per attempt by the engage module (`engage::body_mode`).
    let body_state = BodyState::Stream(body);
    let model = build_call(req, app, f);
    let fn_timeout = Duration::from_secs(u64::try_from(f.timeout_secs()).unwrap_or(30));
    let call = EngageCall {
        call_id,
        model_json: model.to_json(),
        detached,
        detached_deadline: DEFAULT_DETACHED_PLACER_TIMEOUT + fn_timeout + st.execution_headroom,
        sync_deadline: st.sync_deadline_margin.map(|m| fn_timeout + m),
        traceparent: Some(traceparent(request_headers)),
        body: std::sync::Arc::new(Mutex::new(body_state)),
        declared_len: declared_length(request_headers),
        max_request: st.max_request,
        frame_bytes: st.frame_bytes,
        head_limit: st.response_head,
        pool: st.pool.clone(),
    };
    let pool = st.pool.clone();
    let result = place(
        &*st.placer,
        &st.placer_config,
        detached,
        &f.id,
        || pool.snapshot(),
        |runner| {
            tracing::debug!(runner = %runner.addr(), "trying runner");
            try_runner(runner, &call)
        },
    )
    .instrument(tracing::info_span!("call", call_id = %call.call_id, fn_id = %f.id, detached))
    .await;
    let (outcome, result) = match result {
        Ok((resp, attempts)) => {
            metrics::histogram!("lb_placer_attempts").record(f64::from(attempts));
            ("completed", Ok(resp))
        }
        Err(PlaceError::NoRunners) => {
            tracing::warn!(fn_id = %f.id, "no runner configured: answering 503");
            ("no_runner", Err(FnError::no_runner(0)))
        }
        Err(PlaceError::NoneUp { configured }) => {
            tracing::warn!(fn_id = %f.id, configured, "no runner up: none of the configured runners is up; answering 503");
            ("no_runner", Err(FnError::no_runner(configured)))
        }
        Err(PlaceError::TimedOut { attempts, .. }) => {
            tracing::warn!(fn_id = %f.id, attempts, "no runner took the call within the placer timeout");
            ("server_busy", Err(FnError::server_busy()))
        }
        Err(PlaceError::Failed(e)) => (if e.code() == 504 { "timeouts" } else { "errors" }, Err(e)),
    };
    metrics::counter!("lb_calls_total", "outcome" => outcome).increment(1);
    metrics::histogram!("lb_call_latency_seconds", "call_status" => outcome)
        .record(started.elapsed().as_secs_f64());
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_names_like_go() {
        assert_eq!(canonical_header("content-type"), "Content-Type");
        assert_eq!(canonical_header("fn-invoke-type"), "Fn-Invoke-Type");
        assert_eq!(canonical_header("X-FOO-bar"), "X-Foo-Bar");
        assert_eq!(canonical_header("etag"), "Etag");
        assert_eq!(canonical_header("bad header"), "bad header");
    }

    fn headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("host", "lb:8080".parse().unwrap());
        h.insert("content-type", "application/json".parse().unwrap());
        h.insert("connection", "keep-alive".parse().unwrap());
        h.append("x-multi", "a".parse().unwrap());
        h.append("x-multi", "b".parse().unwrap());
        h
    }

    #[test]
    fn declared_length_only_for_unchunked_bodies() {
        let mut h = headers();
        assert_eq!(declared_length(&h), None);
        h.insert("content-length", "25".parse().unwrap());
        assert_eq!(declared_length(&h), Some(25));
        h.insert("transfer-encoding", "chunked".parse().unwrap());
        assert_eq!(declared_length(&h), None);
        h.remove("transfer-encoding");
        h.insert("content-length", "-1".parse().unwrap());
        assert_eq!(declared_length(&h), None);
    }

    #[test]
    fn invoke_keeps_headers_as_received_without_host() {
        let out = headers_as_received(&headers());
        assert_eq!(out["Content-Type"], vec!["application/json"]);
        assert_eq!(out["X-Multi"], vec!["a", "b"]);
        assert_eq!(out["Connection"], vec!["keep-alive"]);
        assert!(!out.contains_key("Host"));
    }

    #[test]
    fn trigger_renames_and_adds_fn_headers() {
        let out = trigger_headers(&headers(), "PUT", "http://lb:8080/t/app/x?q=1");
        assert_eq!(out["Content-Type"], vec!["application/json"]);
        assert_eq!(out["Fn-Http-H-X-Multi"], vec!["a", "b"]);
        assert!(!out.keys().any(|k| k.contains("Connection")));
        assert_eq!(out["Fn-Http-Method"], vec!["PUT"]);
        assert_eq!(out["Fn-Http-Request-Url"], vec!["http://lb:8080/t/app/x?q=1"]);
        assert_eq!(out["Fn-Intent"], vec!["httprequest"]);
    }

    #[test]
    fn call_model_merges_config_and_sets_fn_vars() {
        let mut app = App {
            id: "01APP".into(),
            name: "myapp".into(),
            ..App::default()
        };
        app.config.insert("A".into(), "1".into());
        app.config.insert("B".into(), "app".into());
        app.annotations.insert("x/a".into(), serde_json::json!("app"));
        let mut f = Function {
            id: "01FN".into(),
            name: "f".into(),
            app_id: "01APP".into(),
            image: "fnproject/hello:0.0.1".into(),
            ..Function::default()
        };
        f.config.insert("B".into(), "2".into());
        f.annotations.insert("x/a".into(), serde_json::json!("fn"));
        let req = CallRequest {
            id: "01CALL".into(),
            method: "POST".into(),
            url: "http://127.0.0.1:8080/invoke/01FN".into(),
            headers: BTreeMap::from([("Fn-Invoke-Type".into(), vec!["detached".into()])]),
            detached: true,
            trigger_id: String::new(),
        };
        let call = build_call(req, &app, &f);
        assert_eq!(call.config["A"], "1");
        assert_eq!(call.config["B"], "2");
        assert_eq!(call.config["FN_MEMORY"], "128");
        assert_eq!(
            call.config["FN_TYPE"], "sync",
            "Fn keeps sync even for detached calls"
        );
        assert_eq!(call.config["FN_FN_ID"], "01FN");
        assert_eq!(call.config["FN_APP_ID"], "01APP");
        assert_eq!(call.annotations["x/a"], serde_json::json!("fn"));
        assert_eq!(call.call_type, "detached");
        assert_eq!((call.timeout, call.idle_timeout, call.memory), (30, 30, 128));
        assert_eq!(call.status, "running");
        assert!(!call.started_at.is_zero());
        let json: serde_json::Value = serde_json::from_str(&call.to_json()).unwrap();
        assert_eq!(json["app_name"], "myapp");
        assert_eq!(json["trigger_id"], "");
        assert!(json.get("cpus").is_none());
    }

    #[test]
    fn traceparent_kept_or_made() {
        let mut h = HeaderMap::new();
        let made = traceparent(&h);
        let p: Vec<&str> = made.split('-').collect();
        assert_eq!((p.len(), p[0], p[1].len(), p[2].len()), (4, "00", 32, 16));
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        h.insert("traceparent", tp.parse().unwrap());
        assert_eq!(traceparent(&h), tp);
    }
}
