//! What both ferrofn nodes share.
//!
//! - [`call`]: the call model (`models_call_json` on the wire), serde-compatible with Fn;
//! - [`models`]: Fn's app / fn / trigger models (the v2 API);
//! - [`datetime`], [`id`]: Fn's millisecond RFC 3339 times and 26-character sortable call IDs;
//! - [`error`]: the error table (HTTP code + message) both nodes answer with;
//! - [`frames`]: 10 KiB chunking of Engage data frames;
//! - [`config`]: layered settings (defaults < TOML file < environment < flags);
//! - [`tls`], [`certs`]: rustls mTLS configs that reload their PEM files, and cluster certificate
//!   generation;
//! - [`telemetry`], [`shutdown`]: tracing and Prometheus set-up, and the shutdown signal;
//! - [`lock`]: the one policy for poisoned std locks (take the guard anyway), as two small traits.
#![forbid(unsafe_code)]

pub mod call;
pub mod certs;
pub mod config;
pub mod datetime;
pub mod error;
pub mod frames;
pub mod id;
pub mod lock;
pub mod models;
pub mod shutdown;
pub mod telemetry;
pub mod tls;
