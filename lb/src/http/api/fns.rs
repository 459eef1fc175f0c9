//! `/v2/fns`: create (defaults memory 128, timeout 30, idle 30), get, list (filters `app_id`,
//! `name`), partial PUT (merge), delete; every fn returned carries the
//! `fnproject.io/fn/invokeEndpoint` annotation the CLI needs to invoke it.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderMap, StatusCode};

use ferrofn_common::id::new_id;

use super::{list_query, ok_json, page_json, parse_object};
use crate::http::{ApiError, ApiPath, LbState, SharedState};
use crate::registry::models::{FN_INVOKE_ENDPOINT_ANNOTATION, Function};

/// Adds the invoke endpoint annotation.
pub fn annotate(st: &LbState, headers: &HeaderMap, mut f: Function) -> Function {
    let url = format!("{}/invoke/{}", st.public_base(headers), f.id);
    f.annotations.insert(
        FN_INVOKE_ENDPOINT_ANNOTATION.into(),
        serde_json::Value::String(url),
    );
    f
}

/// `POST /v2/fns`.
pub async fn create(
    State(st): State<SharedState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let mut f: Function = parse_object(&body)?;
    f.validate_create()?;
    // The app must exist (404 "App not found"), checked by the registry too.
    st.registry.get_app(f.app_id.clone()).await?;
    f.id = new_id();
    f.created_at = Default::default();
    f.updated_at = Default::default();
    f.set_defaults();
    let f = st.registry.create_fn(f).await?;
    Ok(ok_json(&annotate(&st, &headers, f)))
}

/// `GET /v2/fns/{fn_id}`.
pub async fn get(
    State(st): State<SharedState>,
    headers: HeaderMap,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let f = st.registry.get_fn(id).await?;
    Ok(ok_json(&annotate(&st, &headers, f)))
}

/// `GET /v2/fns`.
pub async fn list(
    State(st): State<SharedState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let page = st.registry.list_fns(list_query(&q)).await?;
    let items = page
        .items
        .into_iter()
        .map(|f| annotate(&st, &headers, f))
        .collect();
    Ok(page_json(items, page.next_cursor))
}

/// `PUT /v2/fns/{fn_id}`: a partial body merges (image and resources replace, config and
/// annotations merge); name and app are immutable.
pub async fn update(
    State(st): State<SharedState>,
    headers: HeaderMap,
    ApiPath(id): ApiPath<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let patch: Function = parse_object(&body)?;
    let mut f = st.registry.get_fn(id).await?;
    f.check_immutable(&patch)?;
    f.apply_patch(&patch);
    f.validate()?;
    let f = st.registry.update_fn(f).await?;
    Ok(ok_json(&annotate(&st, &headers, f)))
}

/// `DELETE /v2/fns/{fn_id}` (and the fn's triggers).
pub async fn delete(
    State(st): State<SharedState>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    st.registry.delete_fn(id).await?;
    Ok(StatusCode::NO_CONTENT)
}
