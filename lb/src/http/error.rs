//! Fn's response shapes: JSON with `Content-Type: application/json; charset=utf-8`, errors as
//! `{"message":"..."}\n` with `Retry-After: 15` on a 503, and registry failures mapped to Fn's codes.

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use serde::Serialize;

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
        ApiError(match e {
            RegistryError::NotFound(Kind::App) | RegistryError::MissingParent(Kind::App) => {
                FnError::app_not_found()
            }
            RegistryError::NotFound(Kind::Fn) | RegistryError::MissingParent(Kind::Fn) => {
                FnError::fn_not_found()
            }
            RegistryError::NotFound(Kind::Trigger) | RegistryError::MissingParent(Kind::Trigger) => {
                FnError::trigger_not_found()
            }
            RegistryError::Conflict { message } => FnError::new(409, message, false),
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
