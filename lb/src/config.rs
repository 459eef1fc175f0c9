//! The LB's settings: defaults < TOML file < environment (Fn's `FN_*` names where Fn has the
//! setting) < flags, loaded through the common layered loader.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use ferrofn_common::config::{
    BadSetting, ConfigError, EnvNames, EnvSource, Loaded, NodeFlags, check_host_port, check_listen_address,
    load_layers,
};
use ferrofn_common::telemetry::LogFormat;

use crate::placer::PlacerConfig;
use crate::pool::ChannelOptions;

/// Environment variables: Fn's names where Fn has the setting, `FERROFN_*` for ferrofn's own.
pub const ENV_NAMES: EnvNames = EnvNames {
    current: &[
        ("FN_PORT", "port"),
        ("FERROFN_LISTEN_ADDRESS", "listen_address"),
        ("FN_RUNNER_ADDRESSES", "runner_addresses"),
        (
            "FERROFN_RUNNER_RESOLVE_INTERVAL_MSECS",
            "runner_resolve_interval_ms",
        ),
        ("FN_PLACER", "placer"),
        ("FERROFN_PLACER_LOAD_FACTOR", "placer_load_factor"),
        ("FERROFN_PLACER_TIMEOUT_MSECS", "placer_timeout_ms"),
        (
            "FERROFN_DETACHED_PLACER_TIMEOUT_MSECS",
            "detached_placer_timeout_ms",
        ),
        ("FERROFN_NO_RUNNER_WAIT_MSECS", "no_runner_wait_ms"),
        ("FN_MAX_REQUEST_SIZE", "max_request_size"),
        ("FN_PUBLIC_LB_URL", "public_lb_url"),
        ("FN_DB_URL", "db_url"),
        ("FERROFN_DB_MAX_CONNECTIONS", "db_max_connections"),
        ("FERROFN_DB_TIMEOUT_MSECS", "db_timeout_ms"),
        ("FERROFN_DB_VERSION_POLL_MSECS", "db_version_poll_ms"),
        ("FN_EXECUTION_HEADROOM", "execution_headroom_ms"),
        ("FERROFN_PLAINTEXT", "plaintext"),
        ("FERROFN_TLS_CA", "tls.ca"),
        ("FERROFN_TLS_CERT", "tls.cert"),
        ("FERROFN_TLS_KEY", "tls.key"),
        ("FERROFN_TLS_SERVER_NAME", "tls.server_name"),
        ("FERROFN_HEALTH_INTERVAL_MSECS", "health_interval_ms"),
        ("FERROFN_RESPONSE_HEAD_BYTES", "response_head_bytes"),
        ("FERROFN_ENGAGE_FRAME_BYTES", "engage_frame_bytes"),
        ("FERROFN_SYNC_DEADLINE_MARGIN_MSECS", "sync_deadline_margin_ms"),
        ("FERROFN_RUNNER_KEEPALIVE_MSECS", "runner_keepalive_ms"),
        (
            "FERROFN_RUNNER_KEEPALIVE_TIMEOUT_MSECS",
            "runner_keepalive_timeout_ms",
        ),
        ("FERROFN_RUNNER_ANSWER_TIMEOUT_MSECS", "runner_answer_timeout_ms"),
        (
            "FERROFN_RUNNER_TCP_USER_TIMEOUT_MSECS",
            "runner_tcp_user_timeout_ms",
        ),
        ("FERROFN_WORKER_THREADS", "worker_threads"),
        ("FN_LOG_LEVEL", "log_level"),
        ("FN_LOG_FORMAT", "log_format"),
        ("FERROFN_API_TOKEN", "api_token"),
        ("FERROFN_API_TOKENS_FILE", "api_tokens_file"),
        ("FERROFN_INVOKE_TOKEN", "invoke_token"),
        ("FERROFN_INVOKE_TOKENS_FILE", "invoke_tokens_file"),
        ("FERROFN_INSECURE_OPEN_API", "insecure_open_api"),
        ("FN_MAX_REQUEST_HEADER_SIZE", "max_request_header_size"),
        (
            "FN_REQUEST_HEADER_READ_TIMEOUT",
            "request_header_read_timeout_secs",
        ),
        ("FERROFN_MAX_CONNECTIONS", "max_connections"),
        (
            "FERROFN_REQUEST_BODY_IDLE_TIMEOUT_MSECS",
            "request_body_idle_timeout_ms",
        ),
        ("FERROFN_METRICS_ADDRESS", "metrics_address"),
    ],
    // Names of earlier releases that looked like Fn's without being Fn's.
    deprecated: &[
        ("FN_LISTEN_ADDRESS", "FERROFN_LISTEN_ADDRESS"),
        ("FN_PLACER_LOAD_FACTOR", "FERROFN_PLACER_LOAD_FACTOR"),
        ("FN_PLACER_TIMEOUT_MSECS", "FERROFN_PLACER_TIMEOUT_MSECS"),
        (
            "FN_DETACHED_PLACER_TIMEOUT_MSECS",
            "FERROFN_DETACHED_PLACER_TIMEOUT_MSECS",
        ),
        ("FN_RUNNER_PLAINTEXT", "FERROFN_PLAINTEXT"),
        ("FN_TLS_CA", "FERROFN_TLS_CA"),
        ("FN_TLS_CERT", "FERROFN_TLS_CERT"),
        ("FN_TLS_KEY", "FERROFN_TLS_KEY"),
        ("FN_TLS_SERVER_NAME", "FERROFN_TLS_SERVER_NAME"),
        ("FN_HEALTH_INTERVAL_MSECS", "FERROFN_HEALTH_INTERVAL_MSECS"),
        ("FN_RESPONSE_HEAD_BYTES", "FERROFN_RESPONSE_HEAD_BYTES"),
        (
            "FN_SYNC_DEADLINE_MARGIN_MSECS",
            "FERROFN_SYNC_DEADLINE_MARGIN_MSECS",
        ),
        ("FN_RUNNER_KEEPALIVE_MSECS", "FERROFN_RUNNER_KEEPALIVE_MSECS"),
        (
            "FN_RUNNER_KEEPALIVE_TIMEOUT_MSECS",
            "FERROFN_RUNNER_KEEPALIVE_TIMEOUT_MSECS",
        ),
    ],
};

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
    /// How often the host names of `runner_addresses` are looked up, ms: a name with several
    /// addresses (compose `--scale`, a Kubernetes headless Service) gives one runner per address;
    /// runners that appear join, those gone are drained out. 0 = never (names are resolved only by
    /// each connect, and each is one runner).
    pub runner_resolve_interval_ms: u64,
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
    /// How long a call waits while no runner is up before 503 "no runner is up", ms.
    pub no_runner_wait_ms: u64,
    /// Request body limit in bytes, 0 = unlimited (`FN_MAX_REQUEST_SIZE`).
    pub max_request_size: u64,
    /// Public base URL for the endpoint annotations ("" = the request's Host).
    pub public_lb_url: String,
    /// Registry database (Fn's `FN_DB_URL`): `sqlite3:///path` or a plain path (one LB), or
    /// `postgres://user:password@host:port/db?sslmode=disable` (shared by several LBs). Its password
    /// is shown as `<redacted>` by `print-config` and in logs.
    pub db_url: String,
    /// Postgres: connections in each LB's pool.
    pub db_max_connections: u64,
    /// Postgres: bound of one registry operation (waiting for a connection, connecting, the
    /// statements, retries of transient failures), ms; also the server-side statement timeout.
    /// Past it a management call answers 503.
    pub db_timeout_ms: u64,
    /// Postgres: how often the change feed also polls the registry version (a backstop for a lost
    /// notification), ms.
    pub db_version_poll_ms: u64,
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
    /// Largest Engage data frame towards ferrofn runners that advertise the `frames` capability
    /// (`FERROFN_ENGAGE_FRAME_BYTES`, 10240..=1048576; 10240 = Fn's frames everywhere). Fn runners
    /// always get 10 KiB frames.
    pub engage_frame_bytes: u64,
    /// Added to the fn timeout to bound a committed sync call on the LB, ms: a runner silent past
    /// it gets the call answered 504 (Fn has no bound). 0 = unbounded.
    pub sync_deadline_margin_ms: u64,
    /// HTTP/2 ping interval on runner connections, ms.
    pub runner_keepalive_ms: u64,
    /// How long a ping may go unanswered before the connection (and its calls) is dropped, ms.
    pub runner_keepalive_timeout_ms: u64,
    /// How long a ferrofn runner may take to answer an Engage stream (its response headers) once
    /// the TryCall left, ms: past it the call goes to another runner and this one is avoided until
    /// it answers again (a runner cut off the network is left within this, not after the keepalive
    /// verdict). 0 = off. Fn runners are never timed this way (they answer with their first message).
    pub runner_answer_timeout_ms: u64,
    /// `TCP_USER_TIMEOUT` of the runner connections, ms: data the LB sent and the runner's host
    /// left unacknowledged this long closes the connection (a runner cut off the network); a busy
    /// runner's kernel still acknowledges. 0 = the kernel's default (~15 minutes).
    pub runner_tcp_user_timeout_ms: u64,
    /// tokio worker threads (`FERROFN_WORKER_THREADS`); 0 = tokio's `TOKIO_WORKER_THREADS` if set,
    /// else one per CPU the process may use ([`ferrofn_common::runtime`]: 1 on a small node saves
    /// CPU per call but slowed failover in a partition test).
    pub worker_threads: usize,
    /// Default log level when `RUST_LOG` is unset.
    pub log_level: String,
    /// Log line format.
    pub log_format: LogFormat,
    /// A bearer token the management API (`/v2`) accepts ("" = none; see `api_tokens_file`).
    pub api_token: String,
    /// A file of tokens the management API accepts, one per line, re-read when it changes.
    pub api_tokens_file: PathBuf,
    /// A bearer token `/invoke` and `/t` require ("" and no file: they are open, as in Fn).
    pub invoke_token: String,
    /// A file of tokens for `/invoke` and `/t`, re-read when it changes.
    pub invoke_tokens_file: PathBuf,
    /// Serve `/v2` without a token on a non-loopback listener (anyone who reaches the port can
    /// register and run any image). Off: such a start is refused.
    pub insecure_open_api: bool,
    /// Bytes a request line and headers may take (`FN_MAX_REQUEST_HEADER_SIZE`; Fn: 1 MiB); more
    /// is answered 431.
    pub max_request_header_size: u64,
    /// Seconds a client has to send its request line and headers, on a new or a kept-alive
    /// connection (`FN_REQUEST_HEADER_READ_TIMEOUT`; Fn: none); then the connection is closed.
    pub request_header_read_timeout_secs: u64,
    /// Client connections served at once; more are closed at accept (0 = no limit).
    pub max_connections: u64,
    /// How long a request body may stall while the LB waits for it, ms (slowloris bodies): the
    /// call is answered 408 and the connection closed. Time the LB spends not reading (the
    /// function applying back-pressure) does not count. 0 = no bound.
    pub request_body_idle_timeout_ms: u64,
    /// `host:port` of a listener of its own for `/metrics` (and `/health/*`), without a token:
    /// keep it on a private address. Set, the main listener answers `/metrics` with 404.
    /// "" = `/metrics` on the main listener.
    pub metrics_address: String,
}

impl Default for LbSettings {
    fn default() -> Self {
        let p = PlacerConfig::default();
        Self {
            listen_address: "0.0.0.0".into(),
            port: 8080,
            runner_addresses: Vec::new(),
            runner_resolve_interval_ms: crate::pool::resolve::DEFAULT_INTERVAL.as_millis() as u64,
            placer: "naive".into(),
            placer_load_factor: crate::placer::bounded::DEFAULT_LOAD_FACTOR,
            placer_timeout_ms: p.timeout.as_millis() as u64,
            detached_placer_timeout_ms: p.detached_timeout.as_millis() as u64,
            placer_retry_delay_ms: p.retry_delay.as_millis() as u64,
            no_runner_wait_ms: p.no_runner_wait.as_millis() as u64,
            max_request_size: 0,
            public_lb_url: String::new(),
            db_url: "sqlite3://./data/fn.db".into(),
            db_max_connections: 8,
            db_timeout_ms: 5000,
            db_version_poll_ms: 1000,
            execution_headroom_ms: 360_000,
            plaintext: false,
            tls: TlsSettings::default(),
            health_interval_ms: crate::pool::health::DEFAULT_INTERVAL.as_millis() as u64,
            response_head_bytes: crate::engage::HEAD_BUFFER as u64,
            engage_frame_bytes: crate::engage::DEFAULT_FRAME_BYTES as u64,
            sync_deadline_margin_ms: crate::engage::DEFAULT_SYNC_DEADLINE_MARGIN.as_millis() as u64,
            runner_keepalive_ms: ChannelOptions::default().keepalive_interval.as_millis() as u64,
            runner_keepalive_timeout_ms: ChannelOptions::default().keepalive_timeout.as_millis() as u64,
            runner_answer_timeout_ms: ChannelOptions::default()
                .answer_timeout
                .map_or(0, |d| d.as_millis() as u64),
            runner_tcp_user_timeout_ms: ChannelOptions::default()
                .tcp_user_timeout
                .map_or(0, |d| d.as_millis() as u64),
            worker_threads: 0,
            log_level: "info".into(),
            log_format: LogFormat::Human,
            api_token: String::new(),
            api_tokens_file: PathBuf::new(),
            invoke_token: String::new(),
            invoke_tokens_file: PathBuf::new(),
            insecure_open_api: false,
            max_request_header_size: 64 * 1024,
            request_header_read_timeout_secs: 10,
            max_connections: 10_000,
            request_body_idle_timeout_ms: 10_000,
            metrics_address: String::new(),
        }
    }
}

impl LbSettings {
    /// Loads the layers and checks the values (the same check in `print-config` and at start).
    pub fn load(file: Option<&Path>, env: &EnvSource, flags: &Flags) -> Result<Loaded<Self>, ConfigError> {
        load_layers(file, env, &ENV_NAMES, flags)?.check(Self::check)
    }

    /// The runner addresses, one per entry (a TOML entry may itself hold a comma list).
    pub fn runner_list(&self) -> Vec<String> {
        self.runner_addresses
            .iter()
            .flat_map(|a| crate::pool::parse_addresses(a))
            .collect()
    }

    /// Values their types cannot check: addresses, names, URLs, non-zero periods.
    pub fn check(&self) -> Result<(), BadSetting> {
        check_listen_address("listen_address", &self.listen_address)?;
        for addr in self.runner_list() {
            check_host_port("runner_addresses", &addr)?;
        }
        if !self.metrics_address.is_empty() {
            check_host_port("metrics_address", &self.metrics_address)?;
        }
        crate::placer::from_name(&self.placer, self.placer_load_factor)
            .map_err(|e| BadSetting::new("placer", e.to_string()))?;
        if !(self.placer_load_factor.is_finite() && self.placer_load_factor >= 1.0) {
            return Err(BadSetting::new(
                "placer_load_factor",
                format!("{} is not a load factor (a number >= 1)", self.placer_load_factor),
            ));
        }
        crate::registry::DbUrl::parse(&self.db_url).map_err(|m| BadSetting::new("db_url", m))?;
        let url = &self.public_lb_url;
        if !(url.is_empty() || url.starts_with("http://") || url.starts_with("https://")) {
            return Err(BadSetting::new(
                "public_lb_url",
                format!("{url:?} is not an http:// or https:// URL"),
            ));
        }
        let loopback = self
            .listen_address
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
        if !loopback
            && !self.insecure_open_api
            && self.api_token.trim().is_empty()
            && self.api_tokens_file.as_os_str().is_empty()
        {
            return Err(BadSetting::new(
                "api_token",
                format!(
                    "the LB listens on {} but the management API (/v2) has no token: anyone reaching the port could \
                     register and run any image. Set FERROFN_API_TOKEN or FERROFN_API_TOKENS_FILE (clients send \
                     Authorization: Bearer <token>; the fn CLI sends its context's token), listen on loopback, or \
                     accept an open API with --insecure-open-api",
                    self.listen_address
                ),
            ));
        }
        for (field, v) in [
            ("health_interval_ms", self.health_interval_ms),
            ("runner_keepalive_ms", self.runner_keepalive_ms),
            ("runner_keepalive_timeout_ms", self.runner_keepalive_timeout_ms),
            ("placer_timeout_ms", self.placer_timeout_ms),
            ("detached_placer_timeout_ms", self.detached_placer_timeout_ms),
            ("db_max_connections", self.db_max_connections),
            ("db_timeout_ms", self.db_timeout_ms),
            ("db_version_poll_ms", self.db_version_poll_ms),
            (
                "request_header_read_timeout_secs",
                self.request_header_read_timeout_secs,
            ),
        ] {
            if v == 0 {
                return Err(BadSetting::new(field, "must be more than 0"));
            }
        }
        if self.max_request_header_size < 8192 {
            return Err(BadSetting::new(
                "max_request_header_size",
                "must be at least 8192 bytes (a request line and the usual headers)",
            ));
        }
        Ok(())
    }

    /// The settings as `print-config` and logs may show them: tokens as `<set>`, the database
    /// password as `<redacted>`.
    pub fn redacted(&self) -> Self {
        let mut shown = self.clone();
        for t in [&mut shown.api_token, &mut shown.invoke_token] {
            if !t.is_empty() {
                *t = "<set>".into();
            }
        }
        shown.db_url = crate::registry::redact_db_url(&self.db_url);
        shown
    }

    /// Postgres pool and timeout settings.
    pub fn pg_options(&self) -> crate::registry::postgres::PgOptions {
        crate::registry::postgres::PgOptions {
            max_connections: usize::try_from(self.db_max_connections).unwrap_or(usize::MAX),
            timeout: Duration::from_millis(self.db_timeout_ms),
        }
    }

    /// Runner connection tuning.
    pub fn channel_options(&self) -> ChannelOptions {
        ChannelOptions {
            keepalive_interval: Duration::from_millis(self.runner_keepalive_ms),
            keepalive_timeout: Duration::from_millis(self.runner_keepalive_timeout_ms),
            answer_timeout: (self.runner_answer_timeout_ms > 0)
                .then(|| Duration::from_millis(self.runner_answer_timeout_ms)),
            tcp_user_timeout: (self.runner_tcp_user_timeout_ms > 0)
                .then(|| Duration::from_millis(self.runner_tcp_user_timeout_ms)),
            ..ChannelOptions::default()
        }
    }

    /// The period of the runner name lookups (`None`: off).
    pub fn resolve_interval(&self) -> Option<Duration> {
        (self.runner_resolve_interval_ms > 0).then(|| Duration::from_millis(self.runner_resolve_interval_ms))
    }

    /// The placer timing.
    pub fn placer_config(&self) -> PlacerConfig {
        PlacerConfig {
            retry_delay: Duration::from_millis(self.placer_retry_delay_ms),
            timeout: Duration::from_millis(self.placer_timeout_ms),
            detached_timeout: Duration::from_millis(self.detached_placer_timeout_ms),
            no_runner_wait: Duration::from_millis(self.no_runner_wait_ms),
        }
    }
}

/// Command-line flags that override settings (only those given).
#[derive(Debug, Clone, Default, Serialize, clap::Args)]
pub struct Flags {
    /// Listen address, plaintext, `--tls-*`: the same flags as the runner's.
    #[command(flatten)]
    #[serde(flatten)]
    pub node: NodeFlags,
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
    /// Registry database (sqlite3:///path, a path, or postgres://user:password@host:port/db).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub db_url: Option<String>,
    /// Request body limit in bytes.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_request_size: Option<u64>,
    /// Public base URL for endpoint annotations.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_lb_url: Option<String>,
    /// File of management API tokens (one per line, re-read when it changes).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_tokens_file: Option<PathBuf>,
    /// Serve /v2 without a token on a non-loopback listener (anyone reaching the port can
    /// register and run any image).
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub insecure_open_api: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrofn_common::config::{Source, TlsFlags};

    /// `pairs` plus an API token (the default listener is 0.0.0.0, which needs one).
    fn env<const N: usize>(pairs: [(&str, &str); N]) -> EnvSource {
        EnvSource::from_pairs([("FERROFN_API_TOKEN", "t")].into_iter().chain(pairs))
    }

    fn load_env<const N: usize>(pairs: [(&str, &str); N]) -> Result<LbSettings, ConfigError> {
        LbSettings::load(None, &env(pairs), &Flags::default()).map(|l| l.settings)
    }

    #[test]
    fn defaults_env_and_flags() {
        let e = env([
            ("FN_PORT", "9000"),
            ("FN_RUNNER_ADDRESSES", "r1:9190,r2:9190"),
            ("FN_PLACER", "ch"),
            ("FN_MAX_REQUEST_SIZE", "6291456"),
        ]);
        let flags = Flags {
            placer: Some("ch-bounded".into()),
            ..Flags::default()
        };
        let s = LbSettings::load(None, &e, &flags).unwrap().settings;
        assert_eq!(s.port, 9000);
        assert_eq!(s.runner_addresses, vec!["r1:9190", "r2:9190"]);
        assert_eq!(s.placer, "ch-bounded", "flags win over env");
        assert_eq!(s.max_request_size, 6_291_456);
        assert!(!s.plaintext, "mTLS by default");
        assert_eq!(s.placer_config().timeout, Duration::from_secs(360));
        assert_eq!(s.placer_config().detached_timeout, Duration::from_secs(30));
        let d = load_env([]).unwrap();
        assert_eq!(
            d,
            LbSettings {
                api_token: "t".into(),
                ..LbSettings::default()
            }
        );
        assert_eq!(d.port, 8080);
        assert_eq!(d.placer, "naive");
        assert!(load_env([("FERROFN_PLAINTEXT", "1")]).unwrap().plaintext);
        assert_eq!(d.sync_deadline_margin_ms, 30_000);
        assert_eq!(d.channel_options().keepalive_interval, Duration::from_secs(5));
        assert_eq!(d.channel_options().keepalive_timeout, Duration::from_secs(5));
        assert_eq!(d.channel_options().tcp_user_timeout, Some(Duration::from_secs(2)));
        let t = load_env([("FERROFN_RUNNER_TCP_USER_TIMEOUT_MSECS", "750")]).unwrap();
        assert_eq!(
            t.channel_options().tcp_user_timeout,
            Some(Duration::from_millis(750))
        );
        let off = load_env([("FERROFN_RUNNER_TCP_USER_TIMEOUT_MSECS", "0")]).unwrap();
        assert_eq!(off.channel_options().tcp_user_timeout, None);
        assert_eq!(d.resolve_interval(), Some(Duration::from_secs(5)));
        let r = load_env([("FERROFN_RUNNER_RESOLVE_INTERVAL_MSECS", "750")]).unwrap();
        assert_eq!(r.resolve_interval(), Some(Duration::from_millis(750)));
        let off = load_env([("FERROFN_RUNNER_RESOLVE_INTERVAL_MSECS", "0")]).unwrap();
        assert_eq!(off.resolve_interval(), None, "0 = never look names up");
    }

    #[test]
    fn old_names_still_work_with_a_notice() {
        let l = LbSettings::load(
            None,
            &env([("FN_TLS_CA", "old-ca.pem"), ("FN_RUNNER_PLAINTEXT", "true")]),
            &Flags::default(),
        )
        .unwrap();
        assert_eq!(l.settings.tls.ca, PathBuf::from("old-ca.pem"));
        assert!(l.settings.plaintext);
        assert_eq!(l.deprecations().len(), 2, "{:?}", l.deprecations());
        assert_eq!(l.source("tls.ca"), Source::Env("FN_TLS_CA".into()));
        // Every deprecated name points at a current one.
        for (old, new) in ENV_NAMES.deprecated {
            assert!(ENV_NAMES.current.iter().any(|(n, _)| n == new), "{old} -> {new}");
            assert!(new.starts_with("FERROFN_"), "{new}");
        }
    }

    #[test]
    fn the_lb_takes_the_runners_tls_flags() {
        let flags = Flags {
            node: NodeFlags {
                tls: TlsFlags {
                    ca: Some("ca.pem".into()),
                    cert: Some("lb.pem".into()),
                    key: Some("lb-key.pem".into()),
                },
                listen_address: Some("127.0.0.1".into()),
                plaintext: None,
            },
            ..Flags::default()
        };
        let l = LbSettings::load(None, &env([]), &flags).unwrap();
        assert_eq!(l.settings.tls.cert, PathBuf::from("lb.pem"));
        assert_eq!(l.settings.tls.key, PathBuf::from("lb-key.pem"));
        assert_eq!(l.settings.listen_address, "127.0.0.1");
        assert_eq!(l.source("tls.key"), Source::Flag("--tls-key".into()));
    }

    #[test]
    fn bad_values_are_refused_when_read() {
        let cases: &[(&str, &str, &str)] = &[
            ("FN_PLACER", "foo", "placer (from environment variable FN_PLACER)"),
            ("FN_RUNNER_ADDRESSES", "garbage", "runner_addresses"),
            ("FN_RUNNER_ADDRESSES", "r1:9190,r2", "\"r2\" is not host:port"),
            ("FERROFN_LISTEN_ADDRESS", "nowhere", "listen_address"),
            ("FN_DB_URL", "mysql://u@h/db", "db_url"),
            (
                "FN_DB_URL",
                "postgres://u:pw@h/db?sslmode=verify-ca",
                "need sslrootcert",
            ),
            ("FERROFN_DB_TIMEOUT_MSECS", "0", "db_timeout_ms"),
            ("FN_PUBLIC_LB_URL", "lb.example.com", "public_lb_url"),
            ("FERROFN_PLACER_LOAD_FACTOR", "0.5", "placer_load_factor"),
            ("FERROFN_RUNNER_KEEPALIVE_MSECS", "0", "runner_keepalive_ms"),
        ];
        for (name, value, expect) in cases {
            let e = load_env([(*name, *value)]).unwrap_err().to_string();
            assert!(e.contains(expect), "{name}={value}: {e}");
        }
        let flags = Flags {
            placer: Some("foo".into()),
            ..Flags::default()
        };
        let e = LbSettings::load(None, &env([]), &flags).unwrap_err().to_string();
        assert!(e.contains("flag --placer"), "{e}");
    }

    #[test]
    fn postgres_settings_and_their_secrets() {
        let l = LbSettings::load(
            None,
            &env([
                (
                    "FN_DB_URL",
                    "postgres://fn:hunter2@db.internal:5432/fnreg?sslmode=disable",
                ),
                ("FERROFN_DB_MAX_CONNECTIONS", "4"),
                ("FERROFN_DB_TIMEOUT_MSECS", "2500"),
            ]),
            &Flags::default(),
        )
        .unwrap();
        let o = l.settings.pg_options();
        assert_eq!((o.max_connections, o.timeout), (4, Duration::from_millis(2500)));
        let mut shown = l.clone();
        shown.settings = l.settings.redacted();
        let text = shown.render();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(!text.contains("\"t\""), "the API token is a secret too: {text}");
        assert!(
            text.contains(
                "db_url = \"postgres://fn:<redacted>@db.internal:5432/fnreg?sslmode=disable\"  # environment variable FN_DB_URL"
            ),
            "{text}"
        );
        // The same error text for a bad URL whatever the password.
        let e = load_env([("FN_DB_URL", "postgres://fn:hunter2@db/fnreg?sslmode=verify-full")])
            .unwrap_err()
            .to_string();
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn an_open_api_needs_loopback_or_the_explicit_flag() {
        let open = |pairs: &[(&str, &str)], flags: &Flags| {
            LbSettings::load(None, &EnvSource::from_pairs(pairs.iter().copied()), flags).map(|l| l.settings)
        };
        let e = open(&[], &Flags::default()).unwrap_err().to_string();
        assert!(
            e.contains("invalid setting api_token") && e.contains("0.0.0.0"),
            "{e}"
        );
        assert!(open(&[("FERROFN_LISTEN_ADDRESS", "127.0.0.1")], &Flags::default()).is_ok());
        assert!(open(&[("FERROFN_LISTEN_ADDRESS", "::1")], &Flags::default()).is_ok());
        assert!(
            open(
                &[("FERROFN_API_TOKENS_FILE", "/etc/ferrofn/api-tokens")],
                &Flags::default()
            )
            .is_ok()
        );
        let insecure = Flags {
            insecure_open_api: true,
            ..Flags::default()
        };
        assert!(open(&[], &insecure).is_ok());
        assert!(open(&[("FERROFN_INSECURE_OPEN_API", "1")], &Flags::default()).is_ok());
    }

    #[test]
    fn the_reference_settings_file_loads() {
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config/lb.toml");
        let l = LbSettings::load(
            Some(&file),
            &EnvSource::from_pairs::<[(&str, &str); 0], _, _>([]),
            &Flags::default(),
        )
        .unwrap();
        assert_eq!(l.settings.listen_address, "127.0.0.1");
        assert_eq!(
            l.source("tls.ca"),
            ferrofn_common::config::Source::File(file.clone())
        );
    }
}
