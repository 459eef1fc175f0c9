//! The load step: N clients start calling a **fresh** fn (one never called, so it has no
//! container anywhere) at the same instant, with no warm-up, and call back to back for a fixed
//! time. Every call counts from t = 0, the cold first calls included, so the figures show what a
//! burst of traffic on an idle fn sees: p50/p99/max over the whole step, the first call of each
//! client, and the latency per window (1 s by default). Optionally it counts the function
//! containers started during the step (engine events and a final listing, by label), to show
//! whether the runners start more containers than there are concurrent calls.

use bollard::{
    Docker,
    query_parameters::{EventsOptionsBuilder, ListContainersOptionsBuilder},
};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};
use tokio::task::JoinHandle;

use crate::{
    client::ClientError,
    load::CallTarget,
    progress::Progress,
    stats::{CallCounts, Counted, ErrorTally, LatencySummary},
};

/// The label of a function container naming the runner that started it.
pub const RUNNER_LABEL: &str = "ferrofn.runner";

/// The calls started within one window of the step.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StepWindow {
    /// Failures first: calls started in the window that failed.
    pub failed: u64,
    /// Calls started in the window that succeeded.
    pub ok: u64,
    /// Window start, seconds from the step's start.
    pub from_s: f64,
    /// Window end (exclusive).
    pub to_s: f64,
    /// Over the window's ok calls.
    pub latency: LatencySummary,
}

/// Function containers created during the step.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ContainerCount {
    /// The label that selects them (`key=value`, e.g. `ferrofn.fn_id=<fn id>`).
    pub label: String,
    /// Containers created from one second before the step's start to its end.
    pub started: u64,
    /// The same by the value of their `ferrofn.runner` label (`-` when absent).
    pub by_runner: BTreeMap<String, u64>,
}

/// Figures of a load step.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StepResult {
    /// Failures first: a step with a failed call is not a valid figure. There is no warm-up.
    #[serde(flatten)]
    pub calls: CallCounts,
    pub clients: usize,
    pub duration_s: f64,
    /// From the common start to the end of the last client's last call.
    pub elapsed_s: f64,
    /// Ok calls per second over `elapsed_s`.
    pub ok_calls_per_s: f64,
    /// Every ok call from t = 0, the cold first calls included.
    pub latency: LatencySummary,
    /// The first call of each client: the calls that found no container.
    pub first_calls: LatencySummary,
    pub window_s: f64,
    /// Calls by the window they started in.
    pub windows: Vec<StepWindow>,
    pub connects: u64,
    /// Function containers started during the step (with `--containers-label`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub containers: Option<ContainerCount>,
}

impl Counted for StepResult {
    fn failed(&self) -> u64 {
        self.calls.failed
    }
}

/// One call of the step: when it started (from the step's start), how it went, and whether it
/// was its client's first.
#[derive(Debug, Clone)]
pub struct StepCall {
    pub at: Duration,
    pub outcome: Result<Duration, String>,
    pub first: bool,
}

/// `clients` clients, each on its own keep-alive connection (opened before the start, which makes
/// no call), start together with no warm-up and call back to back for `duration`.
pub async fn step(
    target: &CallTarget,
    clients: usize,
    duration: Duration,
    window: Duration,
    progress: &Progress,
) -> Result<StepResult, ClientError> {
    let clients = clients.max(1);
    let conns = crate::load::open_all(target, clients).await?;
    let barrier = Arc::new(tokio::sync::Barrier::new(clients + 1));
    let (start_tx, start_rx) = tokio::sync::watch::channel(None::<Instant>);
    let mut tasks = Vec::with_capacity(clients);
    for mut conn in conns {
        let target = target.clone();
        let barrier = barrier.clone();
        let mut start_rx = start_rx.clone();
        let progress = progress.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let started = match start_rx.wait_for(Option::is_some).await {
                Ok(started) => started.unwrap_or_else(Instant::now),
                Err(_) => Instant::now(),
            };
            let mut calls = Vec::new();
            loop {
                let at = started.elapsed();
                if at >= duration {
                    break;
                }
                let outcome = target.call(&mut conn).await;
                progress.record(outcome.is_ok());
                calls.push(StepCall {
                    at,
                    outcome,
                    first: calls.is_empty(),
                });
            }
            (calls, conn.connects)
        }));
    }
    barrier.wait().await;
    let started = Instant::now();
    let _ = start_tx.send(Some(started));
    let mut calls = Vec::new();
    let mut connects = 0;
    let mut panicked = 0;
    for task in tasks {
        match task.await {
            Ok((c, n)) => {
                calls.extend(c);
                connects += n;
            }
            // A panicking client would be a bug in this tool; count it rather than lose the run.
            Err(_) => panicked += 1,
        }
    }
    let elapsed = started.elapsed();
    let mut result = summarize(&calls, clients, duration, window, elapsed);
    if panicked > 0 {
        let mut failures = result.calls.failures.clone();
        for _ in 0..panicked {
            failures.add("client-panic");
        }
        result.calls = CallCounts::new(result.calls.ok, failures, ErrorTally::default());
    }
    result.connects = connects;
    Ok(result)
}

/// The step's figures from its calls.
pub fn summarize(
    calls: &[StepCall],
    clients: usize,
    duration: Duration,
    window: Duration,
    elapsed: Duration,
) -> StepResult {
    let window = if window.is_zero() {
        duration.max(Duration::from_millis(1))
    } else {
        window
    };
    let n_windows = (duration.as_secs_f64() / window.as_secs_f64()).ceil().max(1.0) as usize;
    let mut per_window: Vec<(Vec<Duration>, u64)> = vec![(Vec::new(), 0); n_windows];
    let mut samples = Vec::new();
    let mut first = Vec::new();
    let mut failures = ErrorTally::default();
    for call in calls {
        let w = ((call.at.as_secs_f64() / window.as_secs_f64()) as usize).min(n_windows - 1);
        match &call.outcome {
            Ok(latency) => {
                samples.push(*latency);
                per_window[w].0.push(*latency);
                if call.first {
                    first.push(*latency);
                }
            }
            Err(cause) => {
                failures.add(cause);
                per_window[w].1 += 1;
            }
        }
    }
    let windows = per_window
        .into_iter()
        .enumerate()
        .map(|(i, (mut ok, failed))| StepWindow {
            failed,
            ok: ok.len() as u64,
            from_s: i as f64 * window.as_secs_f64(),
            to_s: ((i + 1) as f64 * window.as_secs_f64())
                .min(duration.as_secs_f64().max(window.as_secs_f64())),
            latency: LatencySummary::from_samples(&mut ok),
        })
        .collect();
    let calls = CallCounts::new(samples.len() as u64, failures, ErrorTally::default());
    let elapsed_s = elapsed.as_secs_f64();
    StepResult {
        ok_calls_per_s: calls.ok as f64 / elapsed_s.max(1e-9),
        calls,
        clients,
        duration_s: duration.as_secs_f64(),
        elapsed_s,
        latency: LatencySummary::from_samples(&mut samples),
        first_calls: LatencySummary::from_samples(&mut first),
        window_s: window.as_secs_f64(),
        windows,
        connects: 0,
        containers: None,
    }
}

/// A failure counting containers.
#[derive(Debug, thiserror::Error)]
pub enum ContainerCountError {
    #[error("cannot connect to the Docker engine")]
    Connect(#[source] bollard::errors::Error),
    #[error("listing containers labelled {label} failed")]
    List {
        label: String,
        source: bollard::errors::Error,
    },
    #[error("{0:?} is not a KEY=VALUE label")]
    BadLabel(String),
}

/// Counts the containers carrying a label that are created while it runs: it follows the engine's
/// `create` events from one second before its start (the engine replays the recent ones, so a
/// subscription that lands late misses nothing), and at the end adds any such container the
/// engine lists as created since then.
pub struct ContainerWatch {
    docker: Docker,
    label: String,
    since: SystemTime,
    /// Container id -> its runner label, from the events.
    seen: Arc<Mutex<HashMap<String, String>>>,
    task: JoinHandle<()>,
}

impl ContainerWatch {
    pub async fn start(label: &str) -> Result<Self, ContainerCountError> {
        if !label.contains('=') {
            return Err(ContainerCountError::BadLabel(label.to_owned()));
        }
        let docker = Docker::connect_with_local_defaults()
            .map_err(ContainerCountError::Connect)?
            .negotiate_version()
            .await
            .map_err(ContainerCountError::Connect)?;
        let since = SystemTime::now() - Duration::from_secs(1);
        let filters = HashMap::from([
            ("type", vec!["container"]),
            ("event", vec!["create"]),
            ("label", vec![label]),
        ]);
        let options = EventsOptionsBuilder::new()
            .since(&unix_time(since))
            .filters(&filters)
            .build();
        let seen = Arc::new(Mutex::new(HashMap::new()));
        let task = {
            let docker = docker.clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut events = docker.events(Some(options));
                while let Some(event) = events.next().await {
                    let Ok(event) = event else {
                        tracing::debug!("engine event stream ended with an error");
                        break;
                    };
                    let Some(actor) = event.actor else { continue };
                    let Some(id) = actor.id else { continue };
                    let runner = actor
                        .attributes
                        .and_then(|a| a.get(RUNNER_LABEL).cloned())
                        .unwrap_or_else(|| "-".into());
                    if let Ok(mut seen) = seen.lock() {
                        seen.insert(id, runner);
                    }
                }
            })
        };
        Ok(ContainerWatch {
            docker,
            label: label.to_owned(),
            since,
            seen,
            task,
        })
    }

    /// Stops following the events (after a short grace for the last ones to arrive) and counts.
    pub async fn finish(self) -> Result<ContainerCount, ContainerCountError> {
        tokio::time::sleep(Duration::from_millis(500)).await;
        self.task.abort();
        let mut by_id: HashMap<String, String> = self.seen.lock().map(|s| s.clone()).unwrap_or_default();
        let filters = HashMap::from([("label", vec![self.label.as_str()])]);
        let list = self
            .docker
            .list_containers(Some(
                ListContainersOptionsBuilder::default()
                    .all(true)
                    .filters(&filters)
                    .build(),
            ))
            .await
            .map_err(|source| ContainerCountError::List {
                label: self.label.clone(),
                source,
            })?;
        let since_s = self
            .since
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs() as i64;
        for c in list {
            let (Some(id), Some(created)) = (c.id, c.created) else {
                continue;
            };
            if created < since_s {
                continue;
            }
            let runner = c
                .labels
                .and_then(|l| l.get(RUNNER_LABEL).cloned())
                .unwrap_or_else(|| "-".into());
            by_id.entry(id).or_insert(runner);
        }
        Ok(count(&self.label, by_id.into_values()))
    }
}

/// The count of containers from their runner labels.
pub fn count(label: &str, runners: impl IntoIterator<Item = String>) -> ContainerCount {
    let mut by_runner = BTreeMap::new();
    let mut started = 0;
    for runner in runners {
        started += 1;
        *by_runner.entry(runner).or_insert(0) += 1;
    }
    ContainerCount {
        label: label.to_owned(),
        started,
        by_runner,
    }
}

/// A time as the engine's API takes it: `seconds.nanoseconds` since the epoch.
fn unix_time(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    format!("{}.{:09}", d.as_secs(), d.subsec_nanos())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        client::CallTemplate,
        test_support::{flaky_server, json_keys},
    };
    use bytes::Bytes;
    use std::sync::atomic::Ordering;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn call(at_ms: u64, outcome: Result<u64, &str>, first: bool) -> StepCall {
        StepCall {
            at: ms(at_ms),
            outcome: outcome.map(ms).map_err(str::to_owned),
            first,
        }
    }

    #[test]
    fn summary_counts_from_t0_by_window() {
        // Two clients over 3 s in 1 s windows: each first call is slow (cold), one call fails.
        let calls = vec![
            call(0, Ok(900), true),
            call(0, Ok(1200), true),
            call(900, Ok(2), false),
            call(1200, Ok(3), false),
            call(1500, Err("503"), false),
            call(2100, Ok(2), false),
            call(2999, Ok(4), false),
        ];
        let r = summarize(&calls, 2, ms(3000), ms(1000), ms(3100));
        assert_eq!((r.calls.attempted, r.calls.ok, r.calls.failed), (7, 6, 1));
        assert!(!r.calls.valid);
        assert_eq!(r.calls.failures.0.get("503"), Some(&1));
        assert_eq!(r.latency.samples, 6);
        assert_eq!(r.latency.max_ms, 1200.0);
        assert_eq!(r.first_calls.samples, 2);
        assert_eq!(r.first_calls.p50_ms, 900.0);
        assert_eq!(r.windows.len(), 3);
        let w: Vec<(u64, u64)> = r.windows.iter().map(|w| (w.ok, w.failed)).collect();
        assert_eq!(w, [(3, 0), (1, 1), (2, 0)]);
        assert_eq!(r.windows[0].latency.max_ms, 1200.0);
        assert_eq!((r.windows[2].from_s, r.windows[2].to_s), (2.0, 3.0));
        assert!((r.ok_calls_per_s - 6.0 / 3.1).abs() < 1e-9);
        // Failures first in the JSON, as every figure.
        assert_eq!(json_keys(&r)[..3], ["valid", "failed", "failures"]);
        let v = serde_json::to_value(&r).unwrap();
        assert!(v.get("containers").is_none());
        assert_eq!(serde_json::from_value::<StepResult>(v).unwrap(), r);
    }

    #[test]
    fn a_partial_last_window_and_late_calls_stay_in_range() {
        let calls = vec![
            call(0, Ok(1), true),
            call(2400, Ok(1), false),
            call(9999, Ok(1), false),
        ];
        let r = summarize(&calls, 1, ms(2500), ms(1000), ms(2500));
        assert_eq!(r.windows.len(), 3);
        assert_eq!(r.windows[2].ok, 2);
        assert_eq!(r.windows[2].to_s, 2.5);
        // A zero window is the whole step.
        let whole = summarize(&calls, 1, ms(2500), Duration::ZERO, ms(2500));
        assert_eq!(whole.windows.len(), 1);
        assert_eq!(whole.windows[0].ok, 3);
    }

    #[test]
    fn counts_containers_by_runner() {
        let c = count(
            "ferrofn.fn_id=F",
            ["r1", "r2", "r1", "-"].into_iter().map(String::from),
        );
        assert_eq!(c.started, 4);
        assert_eq!(c.by_runner.get("r1"), Some(&2));
        assert_eq!(c.by_runner.get("-"), Some(&1));
        assert_eq!(unix_time(UNIX_EPOCH + Duration::new(5, 7)), "5.000000007");
    }

    #[tokio::test]
    async fn step_calls_from_t0_without_warmup() {
        let (_dir, endpoint, served) = flaky_server(7).await;
        let target = CallTarget {
            endpoint,
            template: CallTemplate::post("localhost", "/invoke/f"),
            body: Bytes::from_static(b"{}"),
        };
        let (progress, _line) = Progress::start("unit-step", None);
        let r = step(&target, 3, ms(300), ms(100), &progress).await.unwrap();
        let served = served.load(Ordering::SeqCst);
        // No warm-up: every call served is a measured one.
        assert_eq!(r.calls.attempted, served);
        assert_eq!(r.calls.failed, served / 7);
        // Each client's first call is among the first served (the 7th is the first to fail).
        assert_eq!(r.first_calls.samples, 3);
        assert_eq!(r.connects, 3);
        assert_eq!(r.windows.len(), 3);
        assert_eq!(r.windows.iter().map(|w| w.ok + w.failed).sum::<u64>(), served);
        assert_eq!(r.clients, 3);
    }
}
