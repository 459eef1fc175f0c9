//! Fn's v2 management API (`/v2/apps`, `/v2/fns`, `/v2/triggers`) exactly as the Fn CLI uses it:
//! create = POST 200, get/list = 200, update = PUT 200 with merge semantics, delete = 204; list pages
//! `{"items":[...],"next_cursor":"..."}`; the server-made endpoint annotations on fns and triggers.

pub mod apps;
pub mod fns;
pub mod triggers;

use std::collections::HashMap;

use axum::Router;
use axum::response::Response;
use axum::routing::get;
use bytes::Bytes;
use http::StatusCode;
use serde::Serialize;
use serde::de::DeserializeOwned;

use ferrofn_common::error::FnError;

use super::{SharedState, json_response};
use crate::registry::ListQuery;
use crate::registry::models::{
    Annotations, App, FN_INVOKE_ENDPOINT_ANNOTATION, Function, ListResponse,
    TRIGGER_HTTP_ENDPOINT_ANNOTATION, Trigger,
};

/// The API routes.
pub fn routes() -> Router<SharedState> {
    Router::new()
        .route("/v2/apps", get(apps::list).post(apps::create))
        .route(
            "/v2/apps/{app_id}",
            get(apps::get).put(apps::update).delete(apps::delete),
        )
        .route("/v2/fns", get(fns::list).post(fns::create))
        .route(
            "/v2/fns/{fn_id}",
            get(fns::get).put(fns::update).delete(fns::delete),
        )
        .route("/v2/triggers", get(triggers::list).post(triggers::create))
        .route(
            "/v2/triggers/{trigger_id}",
            get(triggers::get).put(triggers::update).delete(triggers::delete),
        )
}

/// An app, fn or trigger as the create and PUT handlers read it.
pub trait ApiObject: DeserializeOwned {
    /// Its annotations.
    fn annotations_mut(&mut self) -> &mut Annotations;
}

impl ApiObject for App {
    fn annotations_mut(&mut self) -> &mut Annotations {
        &mut self.annotations
    }
}

impl ApiObject for Function {
    fn annotations_mut(&mut self) -> &mut Annotations {
        &mut self.annotations
    }
}

impl ApiObject for Trigger {
    fn annotations_mut(&mut self) -> &mut Annotations {
        &mut self.annotations
    }
}

/// Parses a create or PUT body (Fn answers 400 "Invalid JSON" for anything unparsable) and drops
/// the annotations the server makes itself, so an object echoed back by the CLI does not store
/// them (they are recomputed on every response).
pub fn parse_object<T: ApiObject>(body: &Bytes) -> Result<T, FnError> {
    let mut object: T = serde_json::from_slice(body).map_err(|e| {
        tracing::debug!(error = %e, "invalid JSON body");
        FnError::invalid_json()
    })?;
    let annotations = object.annotations_mut();
    annotations.remove(FN_INVOKE_ENDPOINT_ANNOTATION);
    annotations.remove(TRIGGER_HTTP_ENDPOINT_ANNOTATION);
    Ok(object)
}

/// A 200 with `body` as JSON and no trailing newline: the API's answers come from gin's `c.JSON`,
/// unlike Fn's error bodies (Go's encoder, with a newline).
pub fn ok_json<T: Serialize>(body: &T) -> Response {
    json_response(StatusCode::OK, body, false)
}

/// A 200 list page: `{"items":[...],"next_cursor":"..."}`, the cursor left out on the last page.
pub fn page_json<T: Serialize>(items: Vec<T>, next_cursor: Option<String>) -> Response {
    ok_json(&ListResponse {
        items,
        next_cursor: next_cursor.unwrap_or_default(),
    })
}

/// Filters and paging from the query string.
pub fn list_query(q: &HashMap<String, String>) -> ListQuery {
    let s = |k: &str| q.get(k).filter(|v| !v.is_empty()).cloned();
    ListQuery {
        cursor: s("cursor"),
        per_page: q.get("per_page").and_then(|v| v.parse().ok()).unwrap_or(0),
        name: s("name"),
        app_id: s("app_id"),
        fn_id: s("fn_id"),
    }
}
