//! `/v2/triggers`: create (type `http`, source starting with `/`), get, list (filters `app_id`,
//! `fn_id`, `name`), PUT (merge), delete; every trigger returned carries the
//! `fnproject.io/trigger/httpEndpoint` annotation (`<public url>/t/<app><source>`).

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderMap, StatusCode};

use ferrofn_common::error::FnError;
use ferrofn_common::id::new_id;

use super::{list_query, ok_json, page_json, parse_object};
use crate::http::{ApiError, ApiPath, LbState, SharedState};
use crate::registry::models::{TRIGGER_HTTP_ENDPOINT_ANNOTATION, Trigger};

/// Adds the HTTP endpoint annotation (needs the app's name).
async fn annotate(st: &LbState, headers: &HeaderMap, mut t: Trigger) -> Result<Trigger, ApiError> {
    let app = st.registry.get_app(t.app_id.clone()).await?;
    let url = format!("{}/t/{}{}", st.public_base(headers), app.name, t.source);
    t.annotations.insert(
        TRIGGER_HTTP_ENDPOINT_ANNOTATION.into(),
        serde_json::Value::String(url),
    );
    Ok(t)
}

fn check_source(t: &Trigger) -> Result<(), FnError> {
    if !t.source.starts_with('/') {
        return Err(FnError::new(400, "Missing Trigger Source Prefix '/'", false));
    }
    Ok(())
}

/// `POST /v2/triggers`.
pub async fn create(
    State(st): State<SharedState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let mut t: Trigger = parse_object(&body)?;
    t.validate_create()?;
    check_source(&t)?;
    st.registry.get_app(t.app_id.clone()).await?;
    let f = st.registry.get_fn(t.fn_id.clone()).await?;
    if f.app_id != t.app_id {
        return Err(FnError::new(400, "Trigger's fn and app must match", false).into());
    }
    t.id = new_id();
    t.created_at = Default::default();
    t.updated_at = Default::default();
    t.set_defaults();
    let t = st.registry.create_trigger(t).await?;
    Ok(ok_json(&annotate(&st, &headers, t).await?))
}

/// `GET /v2/triggers/{trigger_id}`.
pub async fn get(
    State(st): State<SharedState>,
    headers: HeaderMap,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let t = st.registry.get_trigger(id).await?;
    Ok(ok_json(&annotate(&st, &headers, t).await?))
}

/// `GET /v2/triggers`.
pub async fn list(
    State(st): State<SharedState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let page = st.registry.list_triggers(list_query(&q)).await?;
    let mut items = Vec::with_capacity(page.items.len());
    for t in page.items {
        items.push(annotate(&st, &headers, t).await?);
    }
    Ok(page_json(items, page.next_cursor))
}

/// `PUT /v2/triggers/{trigger_id}`: annotations merge; other non-empty fields replace.
pub async fn update(
    State(st): State<SharedState>,
    headers: HeaderMap,
    ApiPath(id): ApiPath<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let patch: Trigger = parse_object(&body)?;
    let mut t = st.registry.get_trigger(id.clone()).await?;
    if !patch.id.is_empty() && patch.id != id {
        return Err(FnError::new(400, "Trigger ID in path does not match ID in body", false).into());
    }
    if !patch.trigger_type.is_empty() && patch.trigger_type != t.trigger_type {
        return Err(FnError::new(400, "Trigger type cannot be changed", false).into());
    }
    t.apply_patch(&patch);
    t.validate()?;
    check_source(&t)?;
    let t = st.registry.update_trigger(t).await?;
    Ok(ok_json(&annotate(&st, &headers, t).await?))
}

/// `DELETE /v2/triggers/{trigger_id}`.
pub async fn delete(
    State(st): State<SharedState>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    st.registry.delete_trigger(id).await?;
    Ok(StatusCode::NO_CONTENT)
}
