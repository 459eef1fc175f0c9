//! Latency statistics: nearest-rank percentiles over the raw samples (every sample is kept and
//! sorted, so figures are exact, not histogram-bucketed) and a tally of failures by cause.

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

/// The figures of one series of calls. Latencies are in milliseconds over the successful calls;
/// failed calls are only counted (their latency says nothing about the happy path).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Successful calls measured (warm-up excluded).
    pub calls: u64,
    /// Failed calls: non-2xx answers and transport errors.
    pub errors: u64,
    pub min_ms: f64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl LatencySummary {
    /// Summarises `samples` (sorted in place).
    pub fn from_samples(samples: &mut [Duration], errors: u64) -> Self {
        samples.sort_unstable();
        let pick = |p: f64| percentile(samples, p).map(ms).unwrap_or(0.0);
        let mean_ms = if samples.is_empty() {
            0.0
        } else {
            samples.iter().map(|d| ms(*d)).sum::<f64>() / samples.len() as f64
        };
        LatencySummary {
            calls: samples.len() as u64,
            errors,
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

    /// `"503x3, transportx1"`, or `"-"` for none.
    pub fn describe(&self) -> String {
        if self.0.is_empty() {
            return "-".into();
        }
        self.0
            .iter()
            .map(|(cause, n)| format!("{cause}x{n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
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
        let s = LatencySummary::from_samples(&mut samples, 2);
        assert_eq!(s.calls, 5);
        assert_eq!(s.errors, 2);
        assert_eq!(s.min_ms, 1.0);
        assert_eq!(s.p50_ms, 3.0);
        assert_eq!(s.p99_ms, 5.0);
        assert_eq!(s.max_ms, 5.0);
        assert!((s.mean_ms - 3.0).abs() < 1e-9);
        let empty = LatencySummary::from_samples(&mut [], 3);
        assert_eq!(empty.calls, 0);
        assert_eq!(empty.p50_ms, 0.0);
    }

    #[test]
    fn tally_and_median() {
        let mut t = ErrorTally::default();
        assert_eq!(t.describe(), "-");
        t.add("503");
        t.add("503");
        t.add("transport");
        let mut u = ErrorTally::default();
        u.add("503");
        t.merge(&u);
        assert_eq!(t.total(), 4);
        assert_eq!(t.describe(), "503x3, transportx1");
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }
}
