//! Latency statistics: nearest-rank percentiles over the raw samples (every sample is kept and
//! sorted, so figures are exact, not histogram-bucketed), a tally of failures by cause, and the
//! call counts every figure carries ([`CallCounts`]): a figure with a failed call is invalid.

use serde::{Deserialize, Serialize};
use std::{collections::BTreeMap, time::Duration};

use crate::units::ms;

/// The nearest-rank `p`-th percentile (0 < p <= 100) of `sorted` (ascending): the smallest sample
/// such that at least `p`% of the samples are <= it. `None` for no samples.
pub fn percentile<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p.clamp(0.0, 100.0) / 100.0 * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// The latency figures of one series of calls, in milliseconds over the successful calls only:
/// a failed call's latency says nothing about the happy path. The failures themselves are in the
/// figure's [`CallCounts`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Latencies summarised: the successful measured calls (warm-up excluded).
    pub samples: u64,
    pub min_ms: f64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl LatencySummary {
    /// Summarises `samples` (sorted in place).
    pub fn from_samples(samples: &mut [Duration]) -> Self {
        samples.sort_unstable();
        let pick = |p: f64| percentile(samples, p).map(ms).unwrap_or(0.0);
        let mean_ms = if samples.is_empty() {
            0.0
        } else {
            samples.iter().map(|d| ms(*d)).sum::<f64>() / samples.len() as f64
        };
        LatencySummary {
            samples: samples.len() as u64,
            min_ms: samples.first().copied().map(ms).unwrap_or(0.0),
            mean_ms,
            p50_ms: pick(50.0),
            p90_ms: pick(90.0),
            p99_ms: pick(99.0),
            max_ms: samples.last().copied().map(ms).unwrap_or(0.0),
        }
    }
}

/// Failures by cause: `"503"`, `"transport"`, ...; a BTreeMap so the JSON and tables are stable.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ErrorTally(pub BTreeMap<String, u64>);

impl ErrorTally {
    /// Counts one failure of kind `cause`.
    pub fn add(&mut self, cause: impl Into<String>) {
        *self.0.entry(cause.into()).or_default() += 1;
    }

    /// Adds all of `other`'s counts.
    pub fn merge(&mut self, other: &ErrorTally) {
        for (cause, n) in &other.0 {
            *self.0.entry(cause.clone()).or_default() += n;
        }
    }

    /// Total failures.
    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }
}

/// How the calls behind one figure went. Every scenario result starts with these fields
/// (`#[serde(flatten)]` as its first field), so the JSON, like the tables, shows the failures
/// before the figures.
///
/// A figure is **valid** only if none of its calls failed, warm-up calls included: a latency or a
/// throughput measured while the path under test was failing calls is not a measurement of that
/// path, and no PASS/FAIL verdict is drawn from it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallCounts {
    /// `false` as soon as one call failed.
    pub valid: bool,
    /// Every failed call: measured and warm-up.
    pub failed: u64,
    /// The failed measured calls by cause: the HTTP status (`"503"`), a transport error
    /// (`"connect"`, `"transport"`), or for a transfer, a wrong body (`"body mismatch"`,
    /// `"body length"`).
    pub failures: ErrorTally,
    /// The failed warm-up calls by cause. They are not measured, but they count in `failed`.
    pub warmup_failures: ErrorTally,
    /// Measured calls made: `ok` plus the measured failures (warm-up excluded).
    pub attempted: u64,
    /// Measured calls that succeeded: the calls latencies and throughputs are computed from.
    pub ok: u64,
}

impl Default for CallCounts {
    /// No calls, so no failures.
    fn default() -> Self {
        CallCounts::new(0, ErrorTally::default(), ErrorTally::default())
    }
}

impl CallCounts {
    /// The counts of `ok` successful measured calls, the measured `failures` and the
    /// `warmup_failures`.
    pub fn new(ok: u64, failures: ErrorTally, warmup_failures: ErrorTally) -> Self {
        let failed = failures.total() + warmup_failures.total();
        CallCounts {
            valid: failed == 0,
            failed,
            attempted: ok + failures.total(),
            ok,
            failures,
            warmup_failures,
        }
    }

    /// `"0"`, or `"5 (503x3, transportx1, warm-up 503x1)"`.
    pub fn describe_failed(&self) -> String {
        describe_failed(self.failed, &self.failures, &self.warmup_failures)
    }
}

fn describe_failed(failed: u64, failures: &ErrorTally, warmup_failures: &ErrorTally) -> String {
    if failed == 0 {
        return "0".into();
    }
    let causes: Vec<String> = failures
        .0
        .iter()
        .map(|(cause, n)| format!("{cause}x{n}"))
        .chain(
            warmup_failures
                .0
                .iter()
                .map(|(cause, n)| format!("warm-up {cause}x{n}")),
        )
        .collect();
    if causes.is_empty() {
        failed.to_string()
    } else {
        format!("{failed} ({})", causes.join(", "))
    }
}

/// A result made of calls.
pub trait Counted {
    /// Its failed calls (warm-up included); any makes the result and what is derived from it
    /// (CPU and memory figures, contract checks) invalid.
    fn failed(&self) -> u64;
}

/// What stands in for PASS/FAIL when a check rests on figures with `failed` calls.
pub fn invalid_verdict(failed: u64) -> String {
    format!(
        "INVALID ({failed} failed call{})",
        if failed == 1 { "" } else { "s" }
    )
}

/// The median of a few figures (e.g. per-run MB/s), `0.0` for none.
pub fn median(values: &[f64]) -> f64 {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let data: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&data, 50.0), Some(50));
        assert_eq!(percentile(&data, 90.0), Some(90));
        assert_eq!(percentile(&data, 99.0), Some(99));
        assert_eq!(percentile(&data, 100.0), Some(100));
        assert_eq!(percentile(&data, 0.0), Some(1));
        // Ten samples: p99 is the largest, p50 the fifth.
        let ten: Vec<u32> = (1..=10).collect();
        assert_eq!(percentile(&ten, 99.0), Some(10));
        assert_eq!(percentile(&ten, 50.0), Some(5));
        assert_eq!(percentile(&ten, 51.0), Some(6));
        assert_eq!(percentile(&[7u32], 50.0), Some(7));
        assert_eq!(percentile::<u32>(&[], 50.0), None);
    }

    #[test]
    fn summary_sorts_and_counts() {
        let mut samples: Vec<Duration> = [5, 1, 4, 2, 3]
            .iter()
            .map(|n| Duration::from_millis(*n))
            .collect();
        let s = LatencySummary::from_samples(&mut samples);
        assert_eq!(s.samples, 5);
        assert_eq!(s.min_ms, 1.0);
        assert_eq!(s.p50_ms, 3.0);
        assert_eq!(s.p99_ms, 5.0);
        assert_eq!(s.max_ms, 5.0);
        assert!((s.mean_ms - 3.0).abs() < 1e-9);
        let empty = LatencySummary::from_samples(&mut []);
        assert_eq!(empty.samples, 0);
        assert_eq!(empty.p50_ms, 0.0);
    }

    #[test]
    fn tally_and_median() {
        let mut t = ErrorTally::default();
        assert_eq!(t.total(), 0);
        t.add("503");
        t.add("503");
        t.add("transport");
        let mut u = ErrorTally::default();
        u.add("503");
        t.merge(&u);
        assert_eq!(t.total(), 4);
        assert_eq!(
            t.0,
            BTreeMap::from([("503".to_owned(), 3), ("transport".to_owned(), 1)])
        );
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }

    #[test]
    fn counts_put_every_failure_in_failed_and_invalidate() {
        let clean = CallCounts::new(10, ErrorTally::default(), ErrorTally::default());
        assert!(clean.valid);
        assert_eq!((clean.failed, clean.attempted, clean.ok), (0, 10, 10));
        assert_eq!(clean.describe_failed(), "0");
        assert_eq!(
            CallCounts::default(),
            CallCounts::new(0, ErrorTally::default(), ErrorTally::default())
        );
        assert!(CallCounts::default().valid);

        let mut measured = ErrorTally::default();
        measured.add("503");
        measured.add("transport");
        let bad = CallCounts::new(8, measured.clone(), ErrorTally::default());
        assert!(!bad.valid);
        assert_eq!((bad.failed, bad.attempted, bad.ok), (2, 10, 8));
        assert_eq!(bad.describe_failed(), "2 (503x1, transportx1)");

        // A failed warm-up call is not measured (attempted and ok stay the measured window's)
        // but it invalidates the figure all the same.
        let mut warmup = ErrorTally::default();
        warmup.add("502");
        let warm = CallCounts::new(10, ErrorTally::default(), warmup.clone());
        assert!(!warm.valid);
        assert_eq!((warm.failed, warm.attempted, warm.ok), (1, 10, 10));
        assert_eq!(warm.describe_failed(), "1 (warm-up 502x1)");
        let both = CallCounts::new(8, measured, warmup);
        assert_eq!(both.describe_failed(), "3 (503x1, transportx1, warm-up 502x1)");

        assert_eq!(invalid_verdict(1), "INVALID (1 failed call)");
        assert_eq!(invalid_verdict(4), "INVALID (4 failed calls)");
    }
}
