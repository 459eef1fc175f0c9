//! The LB's settings: defaults < TOML file < environment (Fn's `FN_*` names where Fn has the
//! setting) < flags, loaded through the common layered loader.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use ferrofn_common::config::{ConfigError, EnvSource, load};
use ferrofn_common::telemetry::LogFormat;

use crate::placer::PlacerConfig;
use crate::pool::ChannelOptions;

/// Environment variable -> settings field.
pub const ENV_MAP: &[(&str, &str)] = &[
    ("FN_PORT", "port"),
    ("FN_LISTEN_ADDRESS", "listen_address"),
    ("FN_RUNNER_ADDRESSES", "runner_addresses"),
    ("FN_PLACER", "placer"),
    ("FN_PLACER_LOAD_FACTOR", "placer_load_factor"),
    ("FN_PLACER_TIMEOUT_MSECS", "placer_timeout_ms"),
    ("FN_DETACHED_PLACER_TIMEOUT_MSECS", "detached_placer_timeout_ms"),
    ("FN_MAX_REQUEST_SIZE", "max_request_size"),
    ("FN_PUBLIC_LB_URL", "public_lb_url"),
    ("FN_DB_URL", "db_url"),
    ("FN_EXECUTION_HEADROOM", "execution_headroom_ms"),
    ("FN_RUNNER_PLAINTEXT", "plaintext"),
    // The runner's name for the same choice, so one variable switches a whole cluster.
    ("FERROFN_PLAINTEXT", "plaintext"),
    ("FN_TLS_CA", "tls.ca"),
    ("FN_TLS_CERT", "tls.cert"),
    ("FN_TLS_KEY", "tls.key"),
    ("FN_TLS_SERVER_NAME", "tls.server_name"),
    ("FN_HEALTH_INTERVAL_MSECS", "health_interval_ms"),
    ("FN_RESPONSE_HEAD_BYTES", "response_head_bytes"),
    ("FN_SYNC_DEADLINE_MARGIN_MSECS", "sync_deadline_margin_ms"),
    ("FN_RUNNER_KEEPALIVE_MSECS", "runner_keepalive_ms"),
    ("FN_RUNNER_KEEPALIVE_TIMEOUT_MSECS", "runner_keepalive_timeout_ms"),
    ("FN_LOG_LEVEL", "log_level"),
    ("FN_LOG_FORMAT", "log_format"),
];

/// mTLS client files (the LB's certificate and the cluster CA).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSettings {
    /// Cluster CA (trust anchor for runners).
    pub ca: PathBuf,
    /// The LB's client certificate chain.
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
    /// Name runners' certificates must carry, if not the host dialled ("" = the host).
    pub server_name: String,
}

impl Default for TlsSettings {
    fn default() -> Self {
        let f = ferrofn_common::tls::TlsFiles::lb_in(Path::new("certs"));
        Self {
            ca: f.ca,
            cert: f.cert,
            key: f.key,
            server_name: String::new(),
        }
    }
}

/// Every LB setting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LbSettings {
    /// Listen address (`FN_LISTEN_ADDRESS`).
    pub listen_address: String,
    /// HTTP port (`FN_PORT`); 0 picks a free port.
    pub port: u16,
    /// Runner `host:port` list, in placement order (`FN_RUNNER_ADDRESSES`).
    pub runner_addresses: Vec<String>,
    /// `naive`, `ch` or `ch-bounded` (`FN_PLACER`).
    pub placer: String,
    /// `ch-bounded` load factor `c`.
    pub placer_load_factor: f64,
    /// Placement budget of a sync call, ms (Fn: 360 s).
    pub placer_timeout_ms: u64,
    /// Placement budget of a detached call, ms (Fn: 30 s).
    pub detached_placer_timeout_ms: u64,
    /// Pause between placement passes, ms (Fn: 10).
    pub placer_retry_delay_ms: u64,
    /// Request body limit in bytes, 0 = unlimited (`FN_MAX_REQUEST_SIZE`).
    pub max_request_size: u64,
    /// Public base URL for the endpoint annotations ("" = the request's Host).
    pub public_lb_url: String,
    /// Registry database: `sqlite3:///path` (as Fn's `FN_DB_URL`) or a plain path.
    pub db_url: String,
    /// Extra stream deadline of detached calls, ms (`FN_EXECUTION_HEADROOM`).
    pub execution_headroom_ms: u64,
    /// Plaintext h2c to runners (Fn runners, trusted networks). Off = mTLS.
    pub plaintext: bool,
    /// mTLS files.
    pub tls: TlsSettings,
    /// Runner probe period, ms.
    pub health_interval_ms: u64,
    /// With accept-ack runners: response bytes held before streaming starts. A call failing within
    /// them gets its exact error status; after them a late failure aborts the body. Set it above
    /// the runners' `FN_MAX_RESPONSE_SIZE` to get Fn's 502 for every oversized response.
    pub response_head_bytes: u64,
    /// Added to the fn timeout to bound a committed sync call on the LB, ms: a runner silent past
    /// it gets the call answered 504 (Fn has no bound). 0 = unbounded.
    pub sync_deadline_margin_ms: u64,
    /// HTTP/2 ping interval on runner connections, ms.
    pub runner_keepalive_ms: u64,
    /// How long a ping may go unanswered before the connection (and its calls) is dropped, ms.
    pub runner_keepalive_timeout_ms: u64,
    /// Default log level when `RUST_LOG` is unset.
    pub log_level: String,
    /// Log line format.
    pub log_format: LogFormat,
}

impl Default for LbSettings {
    fn default() -> Self {
        let p = PlacerConfig::default();
        Self {
            listen_address: "0.0.0.0".into(),
            port: 8080,
            runner_addresses: Vec::new(),
            placer: "naive".into(),
            placer_load_factor: crate::placer::bounded::DEFAULT_LOAD_FACTOR,
            placer_timeout_ms: p.timeout.as_millis() as u64,
            detached_placer_timeout_ms: p.detached_timeout.as_millis() as u64,
            placer_retry_delay_ms: p.retry_delay.as_millis() as u64,
            max_request_size: 0,
            public_lb_url: String::new(),
            db_url: "sqlite3://./data/fn.db".into(),
            execution_headroom_ms: 360_000,
            plaintext: false,
            tls: TlsSettings::default(),
            health_interval_ms: crate::pool::health::DEFAULT_INTERVAL.as_millis() as u64,
            response_head_bytes: crate::engage::HEAD_BUFFER as u64,
            sync_deadline_margin_ms: crate::engage::DEFAULT_SYNC_DEADLINE_MARGIN.as_millis() as u64,
            runner_keepalive_ms: ChannelOptions::default().keepalive_interval.as_millis() as u64,
            runner_keepalive_timeout_ms: ChannelOptions::default().keepalive_timeout.as_millis() as u64,
            log_level: "info".into(),
            log_format: LogFormat::Human,
        }
    }
}

impl LbSettings {
    /// Loads the layers.
    pub fn load(file: Option<&Path>, env: &EnvSource, flags: &Flags) -> Result<Self, ConfigError> {
        load(file, env, ENV_MAP, flags)
    }

    /// Runner connection tuning.
    pub fn channel_options(&self) -> ChannelOptions {
        ChannelOptions {
            keepalive_interval: Duration::from_millis(self.runner_keepalive_ms.max(1)),
            keepalive_timeout: Duration::from_millis(self.runner_keepalive_timeout_ms.max(1)),
            ..ChannelOptions::default()
        }
    }

    /// The placer timing.
    pub fn placer_config(&self) -> PlacerConfig {
        PlacerConfig {
            retry_delay: Duration::from_millis(self.placer_retry_delay_ms),
            timeout: Duration::from_millis(self.placer_timeout_ms),
            detached_timeout: Duration::from_millis(self.detached_placer_timeout_ms),
        }
    }
}

/// Command-line flags that override settings (only those given).
#[derive(Debug, Clone, Default, Serialize, clap::Args)]
pub struct Flags {
    /// Listen address.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen_address: Option<String>,
    /// HTTP port.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Runner addresses (comma-separated host:port).
    #[arg(long, value_delimiter = ',')]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runner_addresses: Option<Vec<String>>,
    /// Placer: naive, ch or ch-bounded.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub placer: Option<String>,
    /// Registry database (sqlite3:///path or a path).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub db_url: Option<String>,
    /// Talk to runners in plaintext (Fn runners, trusted networks).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plaintext: Option<bool>,
    /// Request body limit in bytes.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_request_size: Option<u64>,
    /// Public base URL for endpoint annotations.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_lb_url: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_env_and_flags() {
        let env = EnvSource::from_pairs([
            ("FN_PORT", "9000"),
            ("FN_RUNNER_ADDRESSES", "r1:9190,r2:9190"),
            ("FN_PLACER", "ch"),
            ("FN_MAX_REQUEST_SIZE", "6291456"),
        ]);
        let s = LbSettings::load(
            None,
            &env,
            &Flags {
                placer: Some("ch-bounded".into()),
                ..Flags::default()
            },
        )
        .unwrap();
        assert_eq!(s.port, 9000);
        assert_eq!(s.runner_addresses, vec!["r1:9190", "r2:9190"]);
        assert_eq!(s.placer, "ch-bounded", "flags win over env");
        assert_eq!(s.max_request_size, 6_291_456);
        assert!(!s.plaintext, "mTLS by default");
        assert_eq!(s.placer_config().timeout, Duration::from_secs(360));
        assert_eq!(s.placer_config().detached_timeout, Duration::from_secs(30));
        let d = LbSettings::load(
            None,
            &EnvSource::from_pairs::<[(&str, &str); 0], _, _>([]),
            &Flags::default(),
        )
        .unwrap();
        assert_eq!(d.port, 8080);
        assert_eq!(d.placer, "naive");
        let p = LbSettings::load(
            None,
            &EnvSource::from_pairs([("FERROFN_PLAINTEXT", "1")]),
            &Flags::default(),
        )
        .unwrap();
        assert!(p.plaintext, "FERROFN_PLAINTEXT, as on the runner");
        assert_eq!(d.sync_deadline_margin_ms, 30_000);
        assert_eq!(d.channel_options().keepalive_interval, Duration::from_secs(5));
        assert_eq!(d.channel_options().keepalive_timeout, Duration::from_secs(5));
    }
}
