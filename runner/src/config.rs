//! The runner's settings: defaults < TOML file < environment (Fn's `FN_*` names where Fn has the
//! setting, `FERROFN_*` for ours) < flags, through the common layered loader.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use ferrofn_common::config::{
    BadSetting, ConfigError, EnvNames, EnvSource, Loaded, NodeFlags, check_listen_address, load_layers,
};
use ferrofn_common::telemetry::LogFormat;

/// Default `FN_FREEZE_IDLE_MSECS`. Fn pauses after 50 ms, so a call arriving 0.05-30 s after the
/// previous one pays a `docker unpause` first: measured here (debug build, calls 300 ms apart,
/// test `runner_pool::default_freeze_delay_spares_sparse_calls_the_unpause`) ~18 ms per warm call
/// with 50 ms against ~5 ms without the unpause. 3 s covers the common gaps of bursty and periodic
/// (1-2 s) callers, while a container idle for longer (what freezing is for: no CPU use while idle)
/// is still frozen soon after.
pub const DEFAULT_FREEZE_IDLE_MSECS: i64 = 3000;

/// Environment variables: Fn's names where Fn has the setting, `FERROFN_*` for ferrofn's own.
pub const ENV_NAMES: EnvNames = EnvNames {
    current: &[
        ("FN_GRPC_PORT", "grpc_port"),
        ("FN_PORT", "port"),
        ("FERROFN_LISTEN_ADDRESS", "listen_address"),
        ("FN_IOFS_PATH", "iofs_path"),
        ("FN_IOFS_DOCKER_PATH", "iofs_docker_path"),
        ("FN_MAX_TOTAL_MEMORY_BYTES", "max_total_memory_bytes"),
        ("FN_MAX_TOTAL_CPU_MCPUS", "max_total_cpu_mcpus"),
        ("FN_FREEZE_IDLE_MSECS", "freeze_idle_msecs"),
        ("FN_HOT_START_TIMEOUT_MSECS", "hot_start_timeout_msecs"),
        ("FN_HOT_POLL_MSECS", "hot_poll_msecs"),
        ("FERROFN_MAX_STARTING_CONTAINERS", "max_starting_containers"),
        ("FN_MAX_RESPONSE_SIZE", "max_response_size"),
        ("FN_MAX_HDR_RESPONSE_SIZE", "max_hdr_response_size"),
        ("FN_MAX_LOG_SIZE_BYTES", "max_log_size_bytes"),
        ("FN_DOCKER_NETWORKS", "docker_networks"),
        ("FN_MAX_PIDS", "max_pids"),
        ("FERROFN_WORKER_THREADS", "worker_threads"),
        ("FN_LOG_LEVEL", "log_level"),
        ("FN_LOG_FORMAT", "log_format"),
        ("FERROFN_STATUS_IMAGE", "status_image"),
        ("FERROFN_RUNNER_NAME", "runner_name"),
        ("FERROFN_PLAINTEXT", "plaintext"),
        ("FERROFN_DRAIN_GRACE_MSECS", "drain_grace_msecs"),
        ("FERROFN_TLS_CA", "tls.ca"),
        ("FERROFN_TLS_CERT", "tls.cert"),
        ("FERROFN_TLS_KEY", "tls.key"),
    ],
    // Names of earlier releases that looked like Fn's without being Fn's.
    deprecated: &[
        ("FN_LISTEN_ADDRESS", "FERROFN_LISTEN_ADDRESS"),
        ("FN_TLS_CA", "FERROFN_TLS_CA"),
        ("FN_TLS_CERT", "FERROFN_TLS_CERT"),
        ("FN_TLS_KEY", "FERROFN_TLS_KEY"),
    ],
};

/// The runner's mTLS files (`[tls]` in the settings file).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSettings {
    /// Cluster CA (clients must present a certificate it signed).
    pub ca: PathBuf,
    /// This runner's certificate chain.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
}

/// Every runner setting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunnerSettings {
    /// Address both listeners bind (`FN_LISTEN_ADDRESS`).
    pub listen_address: String,
    /// gRPC port (`FN_GRPC_PORT`); 0 picks a free port (printed on stdout).
    pub grpc_port: u16,
    /// HTTP port for `/metrics` (`FN_PORT`); 0 picks a free port.
    pub port: u16,
    /// Parent dir of the per-container iofs dirs ("" = the OS temp dir).
    pub iofs_path: String,
    /// The same dir as the Docker daemon sees it ("" = same as `iofs_path`).
    pub iofs_docker_path: String,
    /// Memory pool clamp in bytes (0 = what the host has).
    pub max_total_memory_bytes: u64,
    /// CPU pool clamp in milli-CPUs (0 = what the host has).
    pub max_total_cpu_mcpus: u64,
    /// Idle time before `docker pause`; negative disables freezing.
    pub freeze_idle_msecs: i64,
    /// Bound on container start -> FDK socket ready.
    pub hot_start_timeout_msecs: u64,
    /// How often a call waiting for a slot reconsiders a launch (Fn's hot poll).
    pub hot_poll_msecs: u64,
    /// Containers starting at once on this runner, all functions together (0 = no limit). A burst
    /// of calls then waits for the first containers instead of starting one per call at once, which
    /// on a small host makes every start slow enough to miss the hot-start timeout.
    pub max_starting_containers: u64,
    /// Response body cap in bytes (0 = unlimited).
    pub max_response_size: u64,
    /// Response header cap in bytes (0 = 10 MiB, Go's default).
    pub max_hdr_response_size: u64,
    /// Log cap in bytes: per call, and per stretch of output between two calls.
    pub max_log_size_bytes: u64,
    /// Networks for function containers, whitespace or comma separated ("" = no network).
    pub docker_networks: String,
    /// pids limit of each container.
    pub max_pids: i64,
    /// The status image ("" = Status reports counters only).
    pub status_image: String,
    /// Names this runner on its containers' `ferrofn.runner` label ("" = `<hostname>-<grpc port>`).
    pub runner_name: String,
    /// Serve plaintext h2c instead of mTLS (Fn LBs, trusted networks).
    pub plaintext: bool,
    /// How long a drain waits for in-flight calls.
    pub drain_grace_msecs: u64,
    /// tokio worker threads (`FERROFN_WORKER_THREADS`); 0 = tokio's `TOKIO_WORKER_THREADS` if set,
    /// else one per CPU the process may use ([`ferrofn_common::runtime`]: 1 on a small node saves
    /// CPU per call but slowed failover in a partition test).
    pub worker_threads: usize,
    /// Default log level when `RUST_LOG` is unset.
    pub log_level: String,
    /// Log line format.
    pub log_format: LogFormat,
    /// mTLS files.
    pub tls: TlsSettings,
}

impl Default for RunnerSettings {
    fn default() -> Self {
        RunnerSettings {
            listen_address: "0.0.0.0".into(),
            grpc_port: 9190,
            port: 8080,
            iofs_path: String::new(),
            iofs_docker_path: String::new(),
            max_total_memory_bytes: 0,
            max_total_cpu_mcpus: 0,
            freeze_idle_msecs: DEFAULT_FREEZE_IDLE_MSECS,
            hot_start_timeout_msecs: 5000,
            hot_poll_msecs: 200,
            max_starting_containers: 8,
            max_response_size: 0,
            max_hdr_response_size: 0,
            max_log_size_bytes: 1024 * 1024,
            docker_networks: String::new(),
            max_pids: 50,
            status_image: String::new(),
            runner_name: String::new(),
            plaintext: false,
            drain_grace_msecs: 30_000,
            worker_threads: 0,
            log_level: "info".into(),
            log_format: LogFormat::Human,
            tls: TlsSettings::default(),
        }
    }
}

impl RunnerSettings {
    /// Loads the layers and checks the values (the same check in `print-config` and at start).
    pub fn load(file: Option<&Path>, env: &EnvSource, flags: &Flags) -> Result<Loaded<Self>, ConfigError> {
        load_layers(file, env, &ENV_NAMES, flags)?.check(Self::check)
    }

    /// Values their types cannot check.
    pub fn check(&self) -> Result<(), BadSetting> {
        check_listen_address("listen_address", &self.listen_address)?;
        for (field, v) in [
            ("hot_start_timeout_msecs", self.hot_start_timeout_msecs),
            ("hot_poll_msecs", self.hot_poll_msecs),
        ] {
            if v == 0 {
                return Err(BadSetting::new(field, "must be more than 0 ms"));
            }
        }
        if self.max_pids < 0 {
            return Err(BadSetting::new("max_pids", "must be 0 (no limit) or more"));
        }
        if !self.plaintext {
            for (field, path) in [
                ("tls.ca", &self.tls.ca),
                ("tls.cert", &self.tls.cert),
                ("tls.key", &self.tls.key),
            ] {
                if path.as_os_str().is_empty() {
                    return Err(BadSetting::new(
                        field,
                        "mTLS needs the CA, certificate and key files (--tls-ca, --tls-cert, --tls-key or \
                         FERROFN_TLS_*); or serve plaintext with --plaintext / FERROFN_PLAINTEXT=1",
                    ));
                }
            }
        }
        Ok(())
    }

    /// `freeze_idle_msecs` as an option (negative = never freeze).
    pub fn freeze_idle(&self) -> Option<Duration> {
        u64::try_from(self.freeze_idle_msecs)
            .ok()
            .map(Duration::from_millis)
    }

    /// The configured networks.
    pub fn networks(&self) -> Vec<String> {
        self.docker_networks
            .split(|c: char| c.is_whitespace() || c == ',')
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    }

    /// iofs parent dir.
    pub fn iofs_root(&self) -> PathBuf {
        if self.iofs_path.is_empty() {
            std::env::temp_dir()
        } else {
            PathBuf::from(&self.iofs_path)
        }
    }

    /// The runner's name for container labels.
    pub fn effective_runner_name(&self) -> String {
        if !self.runner_name.is_empty() {
            return self.runner_name.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default();
        format!(
            "{}-{}",
            if host.is_empty() { "runner" } else { &host },
            self.grpc_port
        )
    }
}

/// Command-line flags that override settings (only those given).
#[derive(Debug, Clone, Default, Serialize, clap::Args)]
pub struct Flags {
    /// Listen address, plaintext, `--tls-*`: the same flags as the LB's.
    #[command(flatten)]
    #[serde(flatten)]
    pub node: NodeFlags,
    /// gRPC port (0 = any free port, printed on stdout).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_port: Option<u16>,
    /// HTTP port of `/metrics` (0 = any free port).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Parent dir of the iofs dirs.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iofs_path: Option<String>,
    /// The status image.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_image: Option<String>,
    /// Name of this runner on its containers' labels.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runner_name: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrofn_common::config::{Source, TlsFlags};

    fn env<const N: usize>(pairs: [(&str, &str); N]) -> EnvSource {
        EnvSource::from_pairs(pairs)
    }

    #[test]
    fn defaults_env_and_flags() {
        let d = RunnerSettings::load(None, &env([("FERROFN_PLAINTEXT", "1")]), &Flags::default())
            .unwrap()
            .settings;
        assert_eq!(
            d,
            RunnerSettings {
                plaintext: true,
                ..RunnerSettings::default()
            }
        );
        assert_eq!(d.freeze_idle(), Some(Duration::from_millis(3000)));
        let e = env([
            ("FN_GRPC_PORT", "9200"),
            ("FN_FREEZE_IDLE_MSECS", "-1"),
            ("FN_DOCKER_NETWORKS", "a b,c"),
            ("FERROFN_PLAINTEXT", "1"),
            ("FN_MAX_TOTAL_MEMORY_BYTES", "268435456"),
        ]);
        let flags = Flags {
            grpc_port: Some(0),
            status_image: Some("st:1".into()),
            ..Flags::default()
        };
        let s = RunnerSettings::load(None, &e, &flags).unwrap().settings;
        assert_eq!(s.grpc_port, 0, "flags beat the environment");
        assert_eq!(s.freeze_idle(), None);
        assert_eq!(s.networks(), vec!["a", "b", "c"]);
        assert!(s.plaintext);
        assert_eq!(s.max_total_memory_bytes, 256 << 20);
        assert_eq!(s.status_image, "st:1");
        let e = RunnerSettings::load(None, &env([("FN_MAX_PIDS", "lots")]), &Flags::default()).unwrap_err();
        assert!(e.to_string().contains("FN_MAX_PIDS"), "{e}");
    }

    #[test]
    fn mtls_without_files_is_refused_when_read() {
        let e = RunnerSettings::load(None, &env([]), &Flags::default()).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("tls.ca") && text.contains("--plaintext"), "{text}");
        let e = RunnerSettings::load(
            None,
            &env([("FERROFN_LISTEN_ADDRESS", "here"), ("FERROFN_PLAINTEXT", "1")]),
            &Flags::default(),
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("listen_address (from environment variable FERROFN_LISTEN_ADDRESS)"),
            "{e}"
        );
    }

    #[test]
    fn tls_files_by_flag_new_name_or_old_name() {
        let flags = Flags {
            node: NodeFlags {
                tls: TlsFlags {
                    ca: Some("ca.pem".into()),
                    cert: Some("r.pem".into()),
                    key: Some("r-key.pem".into()),
                },
                ..NodeFlags::default()
            },
            ..Flags::default()
        };
        let l = RunnerSettings::load(None, &env([]), &flags).unwrap();
        assert_eq!(l.settings.tls.ca, PathBuf::from("ca.pem"));
        assert_eq!(l.source("tls.cert"), Source::Flag("--tls-cert".into()));
        let l = RunnerSettings::load(
            None,
            &env([("FN_TLS_CA", "a"), ("FERROFN_TLS_CERT", "b"), ("FN_TLS_KEY", "c")]),
            &Flags::default(),
        )
        .unwrap();
        assert_eq!(
            (
                l.settings.tls.ca.to_str(),
                l.settings.tls.cert.to_str(),
                l.settings.tls.key.to_str()
            ),
            (Some("a"), Some("b"), Some("c"))
        );
        assert_eq!(l.deprecations().len(), 2, "{:?}", l.deprecations());
    }

    #[test]
    fn the_reference_settings_file_loads() {
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config/runner.toml");
        let l = RunnerSettings::load(Some(&file), &env([]), &Flags::default()).unwrap();
        assert_eq!(
            l.settings.tls.cert,
            PathBuf::from("/etc/ferrofn/certs/runner.pem")
        );
        assert_eq!(l.source("tls.cert"), Source::File(file.clone()));
    }
}
