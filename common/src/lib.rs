//! What both ferrofn nodes share.
//!
//! - [`call`]: the call model (`models_call_json` on the wire), serde-compatible with Fn;
//! - [`datetime`], [`id`]: Fn's millisecond RFC 3339 times and 26-character sortable call IDs;
//! - [`error`]: the error table (HTTP code + message) both nodes answer with;
//! - [`frames`]: 10 KiB chunking of Engage data frames;
//! - [`config`]: layered settings (defaults < TOML file < environment < flags);
//! - [`tls`], [`certs`], [`tls_files`]: rustls mTLS configs that reload their PEM files, cluster
//!   certificate generation, and where a node's PEM files are (which both use);
//! - [`telemetry`], [`shutdown`]: tracing and Prometheus set-up, and the shutdown signal;
//! - [`lock`]: the one policy for poisoned std locks (take the guard anyway), as two small traits;
//! - [`exit`]: how both binaries report an error and which exit code they use.
#![forbid(unsafe_code)]

pub mod call;
pub mod certs;
pub mod config;
pub mod datetime;
pub mod error;
pub mod exit;
pub mod frames;
pub mod id;
pub mod lock;
pub mod malloc;
pub mod probe;
pub mod runtime;
pub mod shutdown;
pub mod telemetry;
pub mod tls;
pub mod tls_db;
pub mod tls_files;
