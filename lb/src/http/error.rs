//! Fn's response shapes: JSON with `Content-Type: application/json; charset=utf-8`, errors as
//! `{"message":"..."}\n` with `Retry-After: 15` on a 503, and registry failures mapped to Fn's codes.

use axum::body::Body;
use axum::extract::{FromRequestParts, Path};
use axum::response::{IntoResponse, Response};
use http::request::Parts;
use http::{HeaderValue, StatusCode, header};
use serde::Serialize;
use serde::de::DeserializeOwned;

use ferrofn_common::error::FnError;

use crate::registry::{Kind, RegistryError};

/// Fn's JSON content type.
pub const JSON: &str = "application/json; charset=utf-8";

/// A JSON response; `newline` appends `\n` (Go's encoder does, gin's `c.JSON` does not).
pub fn json_response<T: Serialize>(status: StatusCode, body: &T, newline: bool) -> Response {
    match serde_json::to_string(body) {
        Ok(mut text) => {
            if newline {
                text.push('\n');
            }
            let mut r = Response::new(Body::from(text));
            *r.status_mut() = status;
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON));
            r
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot encode a JSON response");
            error_response(&FnError::internal())
        }
    }
}

/// Fn's error response.
pub fn error_response(err: &FnError) -> Response {
    let mut r = Response::new(Body::from(err.json_body()));
    *r.status_mut() = StatusCode::from_u16(err.code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON));
    if let Some(secs) = err.retry_after() {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    r
}

/// The 503 of a registry call while the database is down or too slow (the cause is in the log).
pub const REGISTRY_UNAVAILABLE: &str = "The registry database is unavailable: try again later";

/// An error a handler returns.
#[derive(Debug)]
pub struct ApiError(pub FnError);

impl From<FnError> for ApiError {
    fn from(e: FnError) -> Self {
        ApiError(e)
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        ApiError(match &e {
            RegistryError::NotFound(Kind::App) | RegistryError::MissingParent(Kind::App) => {
                FnError::app_not_found()
            }
            RegistryError::NotFound(Kind::Fn) | RegistryError::MissingParent(Kind::Fn) => {
                FnError::fn_not_found()
            }
            RegistryError::NotFound(Kind::Trigger) | RegistryError::MissingParent(Kind::Trigger) => {
                FnError::trigger_not_found()
            }
            RegistryError::Conflict { message } => FnError::new(409, *message, false),
            RegistryError::Unavailable { .. } => {
                tracing::warn!(error = %e, "registry unavailable");
                FnError::new(503, REGISTRY_UNAVAILABLE, false)
            }
            other => {
                tracing::error!(error = %other, "registry failure");
                FnError::internal()
            }
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        error_response(&self.0)
    }
}

/// axum's `Path` whose rejection is Fn's JSON error rather than axum's plain text: a path segment
/// that is not UTF-8 once percent-decoded (`/v2/apps/%FF`) is a 400 `{"message":"Invalid URL: ..."}`.
/// (Found by fuzz/fuzz_targets/api_paths.rs.)
#[derive(Debug)]
pub struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(ApiPath(value)),
            Err(rejection) => Err(ApiError(FnError::new(
                rejection.status().as_u16(),
                rejection.body_text(),
                true,
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::routing::get;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;

    #[tokio::test]
    async fn undecodable_path_segment_is_a_json_400() {
        async fn one(ApiPath(id): ApiPath<String>) -> String {
            id
        }
        async fn two(ApiPath((app, source)): ApiPath<(String, String)>) -> String {
            format!("{app}{source}")
        }
        let app = Router::new()
            .route("/v2/apps/{app_id}", get(one))
            .route("/t/{app}/{*source}", get(two));
        for uri in ["/v2/apps/%FF", "/t/%C3%28/x", "/t/a/%FF%FE"] {
            let req = http::Request::get(uri).body(Body::empty()).unwrap();
            let resp = app.clone().oneshot(req).await.unwrap();
            assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{uri}");
            assert_eq!(resp.headers()[header::CONTENT_TYPE], JSON, "{uri}");
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let msg = v["message"].as_str().unwrap();
            assert!(msg.starts_with("Invalid URL"), "{uri}: {msg}");
        }
        let req = http::Request::get("/v2/apps/%41pp").body(Body::empty()).unwrap();
        let body = app
            .oneshot(req)
            .await
            .unwrap()
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(&body[..], b"App");
    }
}
