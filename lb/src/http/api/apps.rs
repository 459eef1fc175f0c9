//! `/v2/apps`: create, get, list (filter `name`), update (merge), delete (cascading to the app's
//! fns and triggers).

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::response::Response;
use bytes::Bytes;
use http::StatusCode;

use ferrofn_common::error::FnError;
use ferrofn_common::id::new_id;

use super::{list_query, ok_json, page_json, parse_object};
use crate::http::{ApiError, ApiPath, SharedState};
use crate::registry::models::App;

/// `POST /v2/apps`.
pub async fn create(State(st): State<SharedState>, body: Bytes) -> Result<Response, ApiError> {
    let mut app: App = parse_object(&body)?;
    app.validate_create()?;
    app.id = new_id();
    // The CLI sends zero times; whatever comes in is ignored.
    app.created_at = Default::default();
    app.updated_at = Default::default();
    app.set_defaults();
    let app = st.registry.create_app(app).await?;
    Ok(ok_json(&app))
}

/// `GET /v2/apps/{app_id}`.
pub async fn get(State(st): State<SharedState>, ApiPath(id): ApiPath<String>) -> Result<Response, ApiError> {
    let app = st.registry.get_app(id).await?;
    Ok(ok_json(&app))
}

/// `GET /v2/apps`.
pub async fn list(
    State(st): State<SharedState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let page = st.registry.list_apps(list_query(&q)).await?;
    Ok(page_json(page.items, page.next_cursor))
}

/// `PUT /v2/apps/{app_id}`: config and annotations merge (`""` deletes a key); the name is immutable.
pub async fn update(
    State(st): State<SharedState>,
    ApiPath(id): ApiPath<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let patch: App = parse_object(&body)?;
    let mut app = st.registry.get_app(id.clone()).await?;
    if !patch.id.is_empty() && patch.id != id {
        return Err(FnError::new(400, "App ID in path does not match ID in body", false).into());
    }
    if !patch.name.is_empty() && patch.name != app.name {
        return Err(FnError::new(409, "Could not update - name is immutable", false).into());
    }
    app.apply_patch(&patch);
    app.validate()?;
    let app = st.registry.update_app(app).await?;
    Ok(ok_json(&app))
}

/// `DELETE /v2/apps/{app_id}`.
pub async fn delete(
    State(st): State<SharedState>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    st.registry.delete_app(id).await?;
    Ok(StatusCode::NO_CONTENT)
}
