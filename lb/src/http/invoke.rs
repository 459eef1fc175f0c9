//! `/invoke/{fn_id}` (any method): look up the fn and its app, build the call, place it, answer with
//! the function's status, headers and body plus `Fn-Call-Id`; `Fn-Invoke-Type: detached` answers
//! 202 once a runner acknowledged the call. A thin front over [`crate::call::run_call`], as the
//! trigger route is.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use http::{HeaderName, HeaderValue, StatusCode, header};

use ferrofn_common::error::FnError;
use ferrofn_common::id::new_id;

use super::{ApiPath, SharedState, error_response, full_url};
use crate::call::{CallRequest, headers_as_received, run_call};
use crate::engage::CallResponse;

/// `Fn-Call-Id`.
pub const FN_CALL_ID: &str = "fn-call-id";

/// Sets `Fn-Call-Id` on a response.
pub fn with_call_id(mut resp: Response, call_id: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(call_id) {
        resp.headers_mut().insert(HeaderName::from_static(FN_CALL_ID), v);
    }
    resp
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
pub async fn invoke(
    State(st): State<SharedState>,
    ApiPath(fn_id): ApiPath<String>,
    req: Request,
) -> Response {
    let call_id = new_id();
    let resp = match invoke_inner(&st, fn_id, req, &call_id).await {
        Ok(r) => r,
        Err(e) => error_response(&e),
    };
    with_call_id(resp, &call_id)
}
