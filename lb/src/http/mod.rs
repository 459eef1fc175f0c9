//! The LB's HTTP front (axum): Fn's v2 management API, `/invoke/{fn_id}`, `/t/{app}/{source}`,
//! `GET /`, `/version`, `/health/live`, `/health/ready`, `/metrics`; Fn's JSON errors for unknown paths and methods, and the
//! `FN_MAX_REQUEST_SIZE` check on every route.

pub mod api;
pub mod auth;
pub mod error;
pub mod invoke;
pub mod trigger;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use http::{HeaderMap, StatusCode, header};

use ferrofn_common::error::FnError;

use crate::placer::{Placer, PlacerConfig};
use crate::pool::RunnerPool;
use crate::registry::Registry;

pub use error::{ApiError, ApiPath, error_response, json_response};

/// The version `GET /version` reports: the Fn server version ferrofn is compatible with.
pub const FN_COMPAT_VERSION: &str = "0.3.753";

/// Everything the handlers share.
#[derive(Debug)]
pub struct LbState {
    /// Apps, fns, triggers (through the read-through cache).
    pub registry: Arc<dyn Registry>,
    /// The runners.
    pub pool: Arc<RunnerPool>,
    /// `FN_PLACER`.
    pub placer: Arc<dyn Placer>,
    /// Placer timing.
    pub placer_config: PlacerConfig,
    /// `FN_PUBLIC_LB_URL` (no trailing slash), else the request's Host is used.
    pub public_url: Option<String>,
    /// `FN_MAX_REQUEST_SIZE` (0 = unlimited).
    pub max_request: u64,
    /// Data frame size towards runners with the `frames` capability.
    pub frame_bytes: usize,
    /// `FN_EXECUTION_HEADROOM` for detached calls' stream deadline.
    pub execution_headroom: Duration,
    /// Response head buffered before streaming, with accept-ack runners.
    pub response_head: usize,
    /// Added to the fn timeout to bound a committed sync call (504 past it); `None`: unbounded.
    pub sync_deadline_margin: Option<Duration>,
    /// Tokens the management API requires (empty: open).
    pub api_tokens: auth::Tokens,
    /// Tokens `/invoke` and `/t` require (empty: open).
    pub invoke_tokens: auth::Tokens,
}

/// Shared state handle.
pub type SharedState = Arc<LbState>;

impl LbState {
    /// The public base URL for annotations: `FN_PUBLIC_LB_URL`, else `http://<Host>`.
    pub fn public_base(&self, headers: &HeaderMap) -> String {
        if let Some(u) = &self.public_url {
            return u.trim_end_matches('/').to_owned();
        }
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("localhost");
        format!("http://{host}")
    }
}

/// The full request URL as Fn puts it in the call model (scheme and host filled in).
pub fn full_url(headers: &HeaderMap, uri: &http::Uri) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
        .unwrap_or("localhost");
    let pq = uri.path_and_query().map_or("/", |p| p.as_str());
    format!("http://{host}{pq}")
}

async fn root() -> Response {
    json_response(
        StatusCode::OK,
        &serde_json::json!({"goto": "https://github.com/fnproject/fn", "hello": "world!"}),
        false,
    )
}

async fn version() -> Response {
    json_response(
        StatusCode::OK,
        &serde_json::json!({"version": FN_COMPAT_VERSION, "ferrofn": env!("CARGO_PKG_VERSION")}),
        false,
    )
}

/// Liveness: the process serves HTTP. Never depends on runners or the database, so that an
/// orchestrator does not restart an LB for a problem a restart cannot fix.
async fn live() -> Response {
    json_response(StatusCode::OK, &serde_json::json!({"status": "live"}), false)
}

/// Budget of the registry check of `/health/ready`.
const READY_DB_TIMEOUT: Duration = Duration::from_secs(2);

/// Readiness: the registry answers and at least one runner is up. 503 with the reasons otherwise,
/// so that a load balancer in front sends calls to another LB.
async fn ready(State(st): State<SharedState>) -> Response {
    let registry = match tokio::time::timeout(READY_DB_TIMEOUT, st.registry.ping()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(ferrofn_common::exit::one_line(&e)),
        Err(_) => Err(format!("no answer within {READY_DB_TIMEOUT:?}")),
    };
    let runners = st.pool.runners();
    let up = runners
        .iter()
        .filter(|r| r.state() == crate::pool::RunnerState::Up)
        .count();
    let ready = registry.is_ok() && up > 0;
    let body = serde_json::json!({
        "status": if ready { "ready" } else { "not ready" },
        "registry": registry.err().unwrap_or_else(|| "ok".into()),
        "runners_up": up,
        "runners_configured": runners.len(),
    });
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(code, &body, false)
}

/// The router of the separate metrics listener (`FERROFN_METRICS_ADDRESS`): `/metrics` and the
/// health endpoints, no token (keep that listener on a private address).
pub fn metrics_router(state: SharedState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .fallback(not_found)
        .with_state(state)
}

async fn metrics() -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        ferrofn_common::telemetry::render_metrics(),
    )
        .into_response()
}

async fn not_found(req: Request) -> Response {
    error_response(&FnError::path_not_found(req.method().as_str(), req.uri().path()))
}

async fn method_not_allowed(req: Request) -> Response {
    error_response(&FnError::method_not_allowed(
        req.method().as_str(),
        req.uri().path(),
    ))
}

/// `FN_MAX_REQUEST_SIZE` on every route: a declared length over the limit is refused at once.
/// (Bodies of unknown length are counted while read: see `engage::read_limited`.)
async fn size_limit(State(st): State<SharedState>, req: Request, next: Next) -> Response {
    if st.max_request > 0 {
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if let Some(n) = declared.filter(|n| *n > st.max_request) {
            return error_response(&FnError::request_too_large(n, st.max_request));
        }
    }
    next.run(req).await
}

/// Counts requests by method and status.
async fn count_requests(req: Request, next: Next) -> Response {
    let method = req.method().as_str().to_owned();
    let resp = next.run(req).await;
    metrics::counter!("lb_http_requests_total", "method" => method, "status" => resp.status().as_u16().to_string())
        .increment(1);
    resp
}

/// Where `/metrics` is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsOn {
    /// On the main listener, with everything else (the default).
    Main,
    /// On a listener of its own ([`metrics_router`]); the main one answers 404.
    Separate,
}

/// The LB router.
pub fn router(state: SharedState, metrics_on: MetricsOn) -> Router {
    let base = Router::new()
        .route("/", get(root))
        .route("/version", get(version))
        .route("/health/live", get(live))
        .route("/health/ready", get(ready));
    let base = match metrics_on {
        MetricsOn::Main => base.route("/metrics", get(metrics)),
        MetricsOn::Separate => base,
    };
    base.merge(api::routes())
        .route("/invoke/{fn_id}", any(invoke::invoke))
        .route("/t/{app_name}", any(trigger::trigger_root))
        .route("/t/{app_name}/{*source}", any(trigger::trigger))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), size_limit))
        .layer(middleware::from_fn_with_state(state.clone(), auth::require_token))
        .layer(middleware::from_fn(count_requests))
        .with_state(state)
}
