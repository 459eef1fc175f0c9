//! Fn's v2 management API (`/v2/apps`, `/v2/fns`, `/v2/triggers`) exactly as the Fn CLI uses it:
//! create = POST 200, get/list = 200, update = PUT 200 with merge semantics, delete = 204; list pages
//! `{"items":[...],"next_cursor":"..."}`; the server-made endpoint annotations on fns and triggers.

pub mod apps;
pub mod fns;
pub mod triggers;

use std::collections::HashMap;

use axum::Router;
use axum::routing::get;
use bytes::Bytes;
use serde::de::DeserializeOwned;

use ferrofn_common::error::FnError;

use super::SharedState;
use crate::registry::ListQuery;
use crate::registry::models::{Annotations, FN_INVOKE_ENDPOINT_ANNOTATION, TRIGGER_HTTP_ENDPOINT_ANNOTATION};

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

/// Parses a JSON body; Fn answers 400 "Invalid JSON" for anything unparsable.
pub fn parse_body<T: DeserializeOwned>(body: &Bytes) -> Result<T, FnError> {
    serde_json::from_slice(body).map_err(|e| {
        tracing::debug!(error = %e, "invalid JSON body");
        FnError::invalid_json()
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

/// Drops the annotations the server makes itself, so an object echoed back by the CLI does not
/// store them (they are recomputed on every response).
pub fn strip_server_annotations(a: &mut Annotations) {
    a.remove(FN_INVOKE_ENDPOINT_ANNOTATION);
    a.remove(TRIGGER_HTTP_ENDPOINT_ANNOTATION);
}
