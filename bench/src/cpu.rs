//! CPU spent per call: the watched processes' user + system time from `/proc/PID/stat`, and the
//! function containers' cgroup CPU from the engine's one-shot stats, read before and after a
//! scenario and divided by the calls it made.

use bollard::{Docker, query_parameters::ListContainersOptionsBuilder, query_parameters::StatsOptions};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

use crate::rss::RssTarget;

/// `USER_HZ`: the unit of the times in `/proc/PID/stat`. The kernel exports it as 100 on every
/// architecture it supports for this tool (x86_64 and aarch64), independent of `CONFIG_HZ`.
const USER_HZ: f64 = 100.0;

/// utime + stime (ticks) from a `/proc/PID/stat` line. The command name may hold spaces and
/// parentheses, so the fields are counted from the last `)`.
pub fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(3) ppid(4) ... utime(14) stime(15); `rest` starts at field 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// CPU seconds used so far by a process (all its threads), `None` when it cannot be read.
pub fn process_cpu_s(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(parse_stat_ticks(&stat)? as f64 / USER_HZ)
}

/// One process's (or a group of containers') CPU over one scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CpuFigure {
    /// `false` when calls failed during the scenario: a failed call costs a different amount of
    /// CPU than a served one, so the per-call figure is not the served calls' cost.
    pub valid: bool,
    /// The scenario's failed calls (warm-up included).
    pub failed: u64,
    pub label: String,
    pub scenario: String,
    /// CPU time used during the scenario.
    pub cpu_ms: f64,
    /// Calls the scenario made (successes and failures, warm-up included): the divisor.
    pub calls: u64,
    pub cpu_us_per_call: f64,
}

impl CpuFigure {
    /// `cpu_ms` spent over `calls` calls of which `failed` failed.
    pub fn new(label: &str, scenario: &str, cpu_ms: f64, calls: u64, failed: u64) -> Self {
        CpuFigure {
            valid: failed == 0,
            failed,
            label: label.to_owned(),
            scenario: scenario.to_owned(),
            cpu_ms,
            calls,
            cpu_us_per_call: if calls > 0 {
                cpu_ms * 1e3 / calls as f64
            } else {
                0.0
            },
        }
    }
}

/// The processes' CPU seconds now (one entry per target, `None` if unreadable).
pub fn snapshot(targets: &[RssTarget]) -> Vec<Option<f64>> {
    targets.iter().map(|t| process_cpu_s(t.pid)).collect()
}

/// Figures for the processes between two snapshots, over `calls` calls of which `failed` failed.
pub fn process_figures(
    targets: &[RssTarget],
    before: &[Option<f64>],
    after: &[Option<f64>],
    scenario: &str,
    calls: u64,
    failed: u64,
) -> Vec<CpuFigure> {
    targets
        .iter()
        .zip(before.iter().zip(after))
        .filter_map(|(t, (b, a))| {
            let used = (*a)? - (*b)?;
            Some(CpuFigure::new(&t.label, scenario, used * 1e3, calls, failed))
        })
        .collect()
}

/// A failure reading the containers' CPU.
#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    #[error("cannot connect to the Docker engine")]
    Connect(#[source] bollard::errors::Error),
    #[error("listing containers labelled {label} failed")]
    List {
        label: String,
        source: bollard::errors::Error,
    },
}

/// The cgroup CPU of the running containers carrying a label (`key=value`), e.g. the function
/// containers of one runner (`ferrofn.runner=NAME`).
pub struct ContainerCpu {
    docker: Docker,
    label: String,
}

impl ContainerCpu {
    pub async fn connect(label: &str) -> Result<Self, CpuError> {
        let docker = Docker::connect_with_local_defaults()
            .map_err(CpuError::Connect)?
            .negotiate_version()
            .await
            .map_err(CpuError::Connect)?;
        Ok(ContainerCpu {
            docker,
            label: label.to_owned(),
        })
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    /// Total CPU (ns) of each matching container, by id.
    pub async fn snapshot(&self) -> Result<HashMap<String, u64>, CpuError> {
        let filters = HashMap::from([("label".to_owned(), vec![self.label.clone()])]);
        let list = self
            .docker
            .list_containers(Some(
                ListContainersOptionsBuilder::default().filters(&filters).build(),
            ))
            .await
            .map_err(|source| CpuError::List {
                label: self.label.clone(),
                source,
            })?;
        let mut out = HashMap::new();
        for c in list {
            let Some(id) = c.id else { continue };
            let options = StatsOptions {
                stream: false,
                one_shot: true,
            };
            // A container that went away between the list and the stats simply has no figure.
            if let Some(Ok(stats)) = self.docker.stats(&id, Some(options)).next().await
                && let Some(ns) = container_ns(&stats)
            {
                out.insert(id, ns);
            }
        }
        Ok(out)
    }
}

fn container_ns(stats: &bollard::models::ContainerStatsResponse) -> Option<u64> {
    stats.cpu_stats.as_ref()?.cpu_usage.as_ref()?.total_usage
}

/// CPU (ms) the containers used between two snapshots; a container that appeared in between
/// counts from zero (it started during the scenario).
pub fn containers_delta_ms(before: &HashMap<String, u64>, after: &HashMap<String, u64>) -> f64 {
    after
        .iter()
        .map(|(id, &ns)| ns.saturating_sub(before.get(id).copied().unwrap_or(0)))
        .sum::<u64>() as f64
        / 1e6
}

/// One container's total CPU (ns) now.
pub async fn container_cpu_ns(docker: &Docker, id: &str) -> Option<u64> {
    let options = StatsOptions {
        stream: false,
        one_shot: true,
    };
    match docker.stats(id, Some(options)).next().await {
        Some(Ok(stats)) => container_ns(&stats),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_awkward_names() {
        let line = "1234 (ferro fn) lb)) S 1 1234 1234 0 -1 4194560 500 0 0 0 250 75 0 0 20 0 9 0 100 \
                    1000000 2000 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(parse_stat_ticks(line), Some(325));
        assert_eq!(parse_stat_ticks("garbage"), None);
        assert_eq!(parse_stat_ticks("1 (x) S 1 2"), None);
    }

    #[test]
    fn this_process_uses_cpu() {
        let me = std::process::id();
        let before = process_cpu_s(me).unwrap();
        let started = std::time::Instant::now();
        let mut x = 0_u64;
        while started.elapsed() < std::time::Duration::from_millis(60) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let after = process_cpu_s(me).unwrap();
        assert!(after >= before + 0.02, "{before} -> {after}");
    }

    #[test]
    fn figures_per_call_and_container_deltas() {
        let f = CpuFigure::new("lb", "conc", 500.0, 1000, 0);
        assert_eq!(f.cpu_us_per_call, 500.0);
        assert!(f.valid);
        assert_eq!(CpuFigure::new("lb", "conc", 5.0, 0, 0).cpu_us_per_call, 0.0);
        let targets = vec![RssTarget {
            label: "lb".into(),
            pid: 1,
        }];
        let figs = process_figures(&targets, &[Some(1.0)], &[Some(1.5)], "conc", 100, 3);
        assert_eq!(figs[0].cpu_ms, 500.0);
        assert!(!figs[0].valid);
        assert_eq!(figs[0].failed, 3);
        assert!(process_figures(&targets, &[None], &[Some(1.5)], "conc", 100, 0).is_empty());
        let before = HashMap::from([("a".to_owned(), 1_000_000), ("gone".to_owned(), 5)]);
        let after = HashMap::from([("a".to_owned(), 3_000_000), ("new".to_owned(), 1_000_000)]);
        assert_eq!(containers_delta_ms(&before, &after), 3.0);
    }
}
