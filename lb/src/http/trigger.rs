//! `/t/{app}/{source...}`: the HTTP trigger route. Request headers are renamed (`Fn-Http-H-*`, plus
//! `Fn-Http-Method`, `Fn-Http-Request-Url`, `Fn-Intent`); the response keeps only `Content-Type`,
//! `Fn-Call-Id` and the `Fn-Http-H-X` headers (as `X`), with the status taken from the service error
//! or the function's `Fn-Http-Status`.

use axum::extract::{Request, State};
use axum::response::Response;
use http::{HeaderName, HeaderValue, StatusCode};

use ferrofn_common::error::FnError;
use ferrofn_common::id::new_id;

use super::invoke::with_call_id;
use super::{ApiError, ApiPath, SharedState, error_response, full_url};
use crate::call::run_call;
use crate::call::{CallRequest, trigger_headers};
use crate::engage::CallResponse;
use crate::registry::models::TRIGGER_TYPE_HTTP;

/// Fn's `triggerResponseWriter` mapping of a successful call.
pub fn map_trigger_response(resp: CallResponse) -> Response {
    let mut status = resp.status;
    let mut out = Response::new(resp.body);
    let mut fn_status = None;
    for (k, v) in &resp.headers {
        let lower = k.to_ascii_lowercase();
        let target = if lower == "content-type" || lower == "fn-call-id" {
            Some(k.as_str())
        } else if let Some(rest) = k.get(10..).filter(|_| lower.starts_with("fn-http-h-")) {
            Some(rest)
        } else {
            if lower == "fn-http-status" {
                fn_status = v.trim().parse::<u16>().ok().filter(|s| (100..=999).contains(s));
            }
            None
        };
        let Some(name) = target else { continue };
        if let (Ok(n), Ok(val)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(v)) {
            out.headers_mut().append(n, val);
        }
    }
    if status < 400 {
        status = fn_status.unwrap_or(200);
    }
    *out.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    out
}

async fn trigger_inner(
    st: &SharedState,
    app_name: String,
    source: String,
    req: Request,
    call_id: &str,
) -> Result<Response, FnError> {
    let reg = |e| ApiError::from(e).0;
    let app = st.registry.app_by_name(app_name).await.map_err(reg)?;
    let t = st
        .registry
        .trigger_by_source(app.id.clone(), TRIGGER_TYPE_HTTP.into(), source)
        .await
        .map_err(reg)?;
    let f = st.registry.get_fn(t.fn_id.clone()).await.map_err(reg)?;
    let (parts, body) = req.into_parts();
    let url = full_url(&parts.headers, &parts.uri);
    let creq = CallRequest {
        id: call_id.to_owned(),
        method: parts.method.as_str().to_owned(),
        headers: trigger_headers(&parts.headers, parts.method.as_str(), &url),
        url,
        detached: false,
        trigger_id: t.id.clone(),
    };
    let resp = run_call(st, creq, &app, &f, body, &parts.headers).await?;
    Ok(map_trigger_response(resp))
}

async fn handle(st: SharedState, app_name: String, source: String, req: Request) -> Response {
    let call_id = new_id();
    let resp = match trigger_inner(&st, app_name, source, req, &call_id).await {
        Ok(r) => r,
        Err(e) => error_response(&e),
    };
    with_call_id(resp, &call_id)
}

/// `ANY /t/{app_name}`: source `/`.
pub async fn trigger_root(
    State(st): State<SharedState>,
    ApiPath(app_name): ApiPath<String>,
    req: Request,
) -> Response {
    handle(st, app_name, "/".into(), req).await
}

/// `ANY /t/{app_name}/{*source}`: the source keeps its leading `/`.
pub async fn trigger(
    State(st): State<SharedState>,
    ApiPath((app_name, source)): ApiPath<(String, String)>,
    req: Request,
) -> Response {
    handle(st, app_name, format!("/{source}"), req).await
}

#[cfg(test)]
mod tests {
    use axum::body::Body;

    use super::*;

    fn resp(status: u16, headers: &[(&str, &str)]) -> Response {
        map_trigger_response(CallResponse {
            status,
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            body: Body::empty(),
        })
    }

    #[test]
    fn keeps_only_content_type_call_id_and_renamed_headers() {
        let r = resp(
            200,
            &[
                ("Content-Type", "text/plain"),
                ("Fn-Call-Id", "01X"),
                ("Fn-Http-H-X-Custom", "v"),
                ("Fn-Fdk-Version", "fdk-go/1"),
                ("Content-Length", "5"),
                ("Fn-Http-Status", "201"),
            ],
        );
        assert_eq!(r.status(), 201);
        assert_eq!(r.headers()["content-type"], "text/plain");
        assert_eq!(r.headers()["fn-call-id"], "01X");
        assert_eq!(r.headers()["x-custom"], "v");
        assert!(r.headers().get("fn-fdk-version").is_none());
        assert!(r.headers().get("content-length").is_none());
        assert!(r.headers().get("fn-http-status").is_none());
    }

    #[test]
    fn status_rules() {
        assert_eq!(resp(200, &[]).status(), 200);
        assert_eq!(resp(200, &[("Fn-Http-Status", "nope")]).status(), 200);
        assert_eq!(resp(200, &[("Fn-Http-Status", "0")]).status(), 200);
        assert_eq!(resp(502, &[("Fn-Http-Status", "201")]).status(), 502);
    }
}
