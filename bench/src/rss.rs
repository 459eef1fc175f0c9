//! Memory of the processes under test (`--rss-pid lb=1234`): VmRSS sampled from `/proc` before a
//! scenario (idle), every few milliseconds during it (peak), after it, and VmHWM at the end.

use serde::{Deserialize, Serialize};
use std::{
    str::FromStr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};
use tokio::task::JoinHandle;

/// How often VmRSS is read during a scenario.
const SAMPLE_EVERY: Duration = Duration::from_millis(20);

/// A process to watch: `label=pid`, or a bare pid (labelled by its `comm`).
#[derive(Debug, Clone, PartialEq)]
pub struct RssTarget {
    pub label: String,
    pub pid: u32,
}

impl FromStr for RssTarget {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (label, pid) = match s.split_once('=') {
            Some((label, pid)) => (Some(label.trim().to_owned()), pid),
            None => (None, s),
        };
        let pid: u32 = pid
            .trim()
            .parse()
            .map_err(|_| format!("--rss-pid {s:?}: expected PID or LABEL=PID"))?;
        let label = label.filter(|l| !l.is_empty()).unwrap_or_else(|| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .map(|c| c.trim().to_owned())
                .unwrap_or_else(|_| format!("pid{pid}"))
        });
        Ok(RssTarget { label, pid })
    }
}

/// `VmRSS` and `VmHWM` (KiB) from a `/proc/PID/status` text.
pub fn parse_status(status: &str) -> (Option<u64>, Option<u64>) {
    let field = |name: &str| {
        status.lines().find_map(|line| {
            let rest = line.strip_prefix(name)?.strip_prefix(':')?;
            rest.trim().trim_end_matches("kB").trim().parse().ok()
        })
    };
    (field("VmRSS"), field("VmHWM"))
}

fn read(pid: u32) -> (Option<u64>, Option<u64>) {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map(|s| parse_status(&s))
        .unwrap_or((None, None))
}

/// One process's memory over one scenario (KiB; `None` when the process could not be read).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RssFigure {
    /// `false` when calls failed during the scenario: the peak is then not the peak of the load
    /// the scenario was meant to put on the process.
    pub valid: bool,
    /// The scenario's failed calls (warm-up included).
    pub failed: u64,
    pub label: String,
    pub pid: u32,
    pub scenario: String,
    pub idle_kib: Option<u64>,
    pub peak_kib: Option<u64>,
    pub after_kib: Option<u64>,
    pub hwm_kib: Option<u64>,
}

/// Samples the targets for the length of one scenario.
pub struct RssWatch {
    scenario: String,
    targets: Vec<(RssTarget, Option<u64>, Arc<AtomicU64>)>,
    sampler: Option<JoinHandle<()>>,
}

impl RssWatch {
    /// Takes the idle sample and starts sampling peaks (nothing to do for no targets).
    pub fn start(scenario: &str, targets: &[RssTarget]) -> Self {
        let targets: Vec<_> = targets
            .iter()
            .map(|t| {
                let idle = read(t.pid).0;
                (t.clone(), idle, Arc::new(AtomicU64::new(idle.unwrap_or(0))))
            })
            .collect();
        let sampler = (!targets.is_empty()).then(|| {
            let peaks: Vec<(u32, Arc<AtomicU64>)> =
                targets.iter().map(|(t, _, peak)| (t.pid, peak.clone())).collect();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(SAMPLE_EVERY);
                loop {
                    tick.tick().await;
                    for (pid, peak) in &peaks {
                        if let Some(rss) = read(*pid).0 {
                            peak.fetch_max(rss, Ordering::Relaxed);
                        }
                    }
                }
            })
        });
        RssWatch {
            scenario: scenario.to_owned(),
            targets,
            sampler,
        }
    }

    /// Stops sampling and returns one figure per target, for a scenario whose calls had `failed`
    /// failures.
    pub fn finish(mut self, failed: u64) -> Vec<RssFigure> {
        if let Some(task) = self.sampler.take() {
            task.abort();
        }
        self.targets
            .iter()
            .map(|(t, idle, peak)| {
                let (after, hwm) = read(t.pid);
                let peak = peak.load(Ordering::Relaxed).max(after.unwrap_or(0));
                RssFigure {
                    valid: failed == 0,
                    failed,
                    label: t.label.clone(),
                    pid: t.pid,
                    scenario: self.scenario.clone(),
                    idle_kib: *idle,
                    peak_kib: (peak > 0).then_some(peak),
                    after_kib: after,
                    hwm_kib: hwm,
                }
            })
            .collect()
    }
}

impl Drop for RssWatch {
    fn drop(&mut self) {
        if let Some(task) = self.sampler.take() {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_status() {
        let text = "Name:\tferrofn-lb\nVmPeak:\t  20000 kB\nVmHWM:\t    9000 kB\nVmRSS:\t    8123 kB\n";
        assert_eq!(parse_status(text), (Some(8123), Some(9000)));
        assert_eq!(parse_status("Name: x\n"), (None, None));
    }

    #[test]
    fn parses_targets() {
        assert_eq!(
            "lb=1234".parse::<RssTarget>().unwrap(),
            RssTarget {
                label: "lb".into(),
                pid: 1234
            }
        );
        let me = std::process::id();
        let bare: RssTarget = me.to_string().parse().unwrap();
        assert_eq!(bare.pid, me);
        assert!(!bare.label.is_empty());
        assert!("lb=abc".parse::<RssTarget>().is_err());
    }

    #[tokio::test]
    async fn samples_this_process() {
        let me: RssTarget = format!("self={}", std::process::id()).parse().unwrap();
        let watch = RssWatch::start("unit", std::slice::from_ref(&me));
        let figures = watch.finish(0);
        assert_eq!(figures.len(), 1);
        let f = &figures[0];
        assert_eq!(f.scenario, "unit");
        assert!(f.valid);
        assert!(f.idle_kib.unwrap() > 0);
        assert!(f.peak_kib.unwrap() >= f.idle_kib.unwrap().min(f.after_kib.unwrap()));
        assert!(f.hwm_kib.unwrap() >= f.after_kib.unwrap());
        let during_failures = RssWatch::start("unit", std::slice::from_ref(&me)).finish(2);
        assert!(!during_failures[0].valid);
        assert_eq!(during_failures[0].failed, 2);
    }
}
