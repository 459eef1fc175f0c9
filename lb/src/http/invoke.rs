//! `/invoke/{fn_id}` (any method): look up the fn and its app, build the call, place it, answer with
//! the function's status, headers and body plus `Fn-Call-Id`; `Fn-Invoke-Type: detached` answers
//! 202 once a runner acknowledged the call. Also the call runner shared with the trigger route.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::response::Response;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use tokio::sync::Mutex;
use tracing::Instrument;

use ferrofn_common::error::FnError;
use ferrofn_common::id::new_id;
use ferrofn_common::models::{App, Function};

use super::{SharedState, error_response, full_url};
use crate::call::{CallRequest, build_call, headers_as_received};
use crate::engage::{BodyState, CallResponse, EngageCall, read_limited, try_runner};
use crate::placer::{DEFAULT_DETACHED_PLACER_TIMEOUT, PlaceError, place};

/// `Fn-Call-Id`.
pub const FN_CALL_ID: &str = "fn-call-id";

/// Sets `Fn-Call-Id` on a response.
pub fn with_call_id(mut resp: Response, call_id: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(call_id) {
        resp.headers_mut().insert(HeaderName::from_static(FN_CALL_ID), v);
    }
    resp
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
    // Ferrofn runners let the LB stream the body; Fn runners need it buffered for replay.
    let body_state = if st.pool.all_support_accept_ack() {
        BodyState::Stream(body)
    } else {
        BodyState::Buffered(read_limited(body, st.max_request).await?)
    };
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
        max_request: st.max_request,
        head_limit: st.response_head,
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
            ("server_busy", Err(FnError::server_busy()))
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

/// Turns a call response into the HTTP response (headers passed through untouched).
pub fn passthrough(resp: CallResponse) -> Response {
    let mut out = Response::new(resp.body);
    *out.status_mut() = StatusCode::from_u16(resp.status).unwrap_or(StatusCode::OK);
    for (k, v) in resp.headers {
        let (Ok(name), Ok(value)) = (HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_str(&v)) else {
            continue;
        };
        // Length and framing are ours to set.
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING || name == header::CONNECTION {
            continue;
        }
        out.headers_mut().append(name, value);
    }
    out
}

async fn invoke_inner(
    st: &SharedState,
    fn_id: String,
    req: Request,
    call_id: &str,
) -> Result<Response, FnError> {
    let f = st
        .registry
        .get_fn(fn_id)
        .await
        .map_err(|e| super::ApiError::from(e).0)?;
    let app = st
        .registry
        .get_app(f.app_id.clone())
        .await
        .map_err(|e| super::ApiError::from(e).0)?;
    let (parts, body) = req.into_parts();
    let detached = parts
        .headers
        .get("fn-invoke-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("detached"));
    let creq = CallRequest {
        id: call_id.to_owned(),
        method: parts.method.as_str().to_owned(),
        url: full_url(&parts.headers, &parts.uri),
        headers: headers_as_received(&parts.headers),
        detached,
        trigger_id: String::new(),
    };
    let resp = run_call(st, creq, &app, &f, body, &parts.headers).await?;
    let mut out = passthrough(resp);
    if detached {
        *out.body_mut() = Body::empty();
    }
    Ok(out)
}

/// `ANY /invoke/{fn_id}`.
pub async fn invoke(State(st): State<SharedState>, Path(fn_id): Path<String>, req: Request) -> Response {
    let call_id = new_id();
    let resp = match invoke_inner(&st, fn_id, req, &call_id).await {
        Ok(r) => r,
        Err(e) => error_response(&e),
    };
    with_call_id(resp, &call_id)
}

#[cfg(test)]
mod tests {
    use super::*;

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
