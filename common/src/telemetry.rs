//! Logging and metrics set-up shared by both binaries: a `tracing` subscriber (human or JSON lines,
//! filtered by `RUST_LOG`) and one process-wide Prometheus recorder whose text exposition the
//! binaries serve on `/metrics`.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

/// How log lines look.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One readable line per event (for terminals).
    #[default]
    Human,
    /// One JSON object per line (for log collectors).
    Json,
}

/// Installs the global `tracing` subscriber writing to stderr. The filter comes from `RUST_LOG`
/// (e.g. `info,ferrofn_runner=debug`); without it, or if it does not parse, `default_level` is used.
/// A second call (or a subscriber set by someone else, e.g. a test harness) is a no-op.
pub fn init_tracing(format: LogFormat, default_level: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(default_level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal: a log collected from a pipe or a file stays plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
    if result.is_err() {
        tracing::debug!("a tracing subscriber was already installed");
    }
}

/// Bucket upper bounds (seconds) for every histogram named `*_seconds`: from sub-millisecond
/// (placement, warm dispatch) to minutes (cold starts under load, long functions).
pub const LATENCY_BUCKETS_SECONDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Histogram samples are folded into buckets by upkeep; without it they pile up between scrapes.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide Prometheus recorder behind the `metrics` macros (once; later calls
/// return the same handle). Histograms named `*_seconds` get [`LATENCY_BUCKETS_SECONDS`], others
/// render as summaries. If another recorder is already installed, a detached handle is returned (it
/// renders nothing recorded through the macros) and a warning is logged.
pub fn install_prometheus() -> PrometheusHandle {
    PROMETHEUS
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), LATENCY_BUCKETS_SECONDS)
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
            }
            spawn_upkeep(handle.clone());
            handle
        })
        .clone()
}

fn spawn_upkeep(handle: PrometheusHandle) {
    let run = {
        let handle = handle.clone();
        async move {
            let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
            loop {
                tick.tick().await;
                handle.run_upkeep();
            }
        }
    };
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => {
            rt.spawn(run);
        }
        // Installed before (or without) a runtime: a plain thread does the upkeep.
        Err(_) => {
            let spawned = std::thread::Builder::new()
                .name("prometheus-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::park_timeout(UPKEEP_INTERVAL);
                        handle.run_upkeep();
                    }
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "cannot start the metrics upkeep thread");
            }
        }
    }
}

/// The Prometheus text exposition of everything recorded so far (installs the recorder if needed).
pub fn render_metrics() -> String {
    let handle = install_prometheus();
    // Fold pending histogram samples in, so a scrape sees everything recorded before it.
    handle.run_upkeep();
    handle.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_format_parses_from_cli_and_config() {
        use clap::ValueEnum;
        assert_eq!(LogFormat::from_str("json", true).unwrap(), LogFormat::Json);
        assert_eq!(LogFormat::from_str("human", true).unwrap(), LogFormat::Human);
        let v: LogFormat = serde_json::from_str("\"json\"").unwrap();
        assert_eq!(v, LogFormat::Json);
        assert_eq!(serde_json::to_string(&LogFormat::Human).unwrap(), "\"human\"");
    }

    #[test]
    fn init_tracing_installs_once_and_a_second_call_changes_nothing() {
        use tracing::Level;
        // Without RUST_LOG the level comes from the argument; with it, only the install is checked.
        let levels_from_args = std::env::var_os("RUST_LOG").is_none();
        init_tracing(LogFormat::Json, "info");
        assert!(
            tracing::dispatcher::has_been_set(),
            "a global subscriber is installed"
        );
        if levels_from_args {
            assert!(tracing::enabled!(Level::INFO) && !tracing::enabled!(Level::DEBUG));
        }
        // Neither panics nor replaces the first subscriber, whose filter stays in force.
        init_tracing(LogFormat::Human, "trace");
        if levels_from_args {
            assert!(tracing::enabled!(Level::INFO), "INFO still logged");
            assert!(
                !tracing::enabled!(Level::DEBUG),
                "the second call replaced the first subscriber"
            );
        }
    }

    #[test]
    fn metrics_render_counters_and_second_histograms() {
        let a = install_prometheus();
        let b = install_prometheus();
        metrics::counter!("ferrofn_test_calls_total", "outcome" => "ok").increment(3);
        metrics::histogram!("ferrofn_test_latency_seconds").record(0.003);
        let text = render_metrics();
        assert_eq!(a.render(), b.render(), "one shared recorder");
        assert!(
            text.contains("ferrofn_test_calls_total{outcome=\"ok\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("ferrofn_test_latency_seconds_bucket{le=\"0.005\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("ferrofn_test_latency_seconds_bucket{le=\"0.0025\"} 0"),
            "{text}"
        );
    }
}
