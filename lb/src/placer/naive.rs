//! Fn's naive placer: each pass starts at a pseudo-random offset (the wall clock's nanoseconds within
//! the second) and tries every runner once, in list order.

use std::time::{SystemTime, UNIX_EPOCH};

use super::{Candidate, Placer};

/// Fn's default placer.
#[derive(Debug, Default, Clone, Copy)]
pub struct NaivePlacer;

/// The order of one pass over `len` runners for a given nanosecond offset: `idx += 1` then
/// `idx % len`, exactly as Fn.
pub fn naive_order(nanos: u64, len: usize) -> Vec<usize> {
    if len == 0 {
        return Vec::new();
    }
    let mut idx = nanos;
    (0..len)
        .map(|_| {
            idx = idx.wrapping_add(1);
            (idx % len as u64) as usize
        })
        .collect()
}

impl Placer for NaivePlacer {
    fn name(&self) -> &'static str {
        "naive"
    }

    fn pass_order(&self, _fn_id: &str, runners: &[Candidate]) -> Vec<usize> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::from(d.subsec_nanos()))
            .unwrap_or(0);
        naive_order(nanos, runners.len())
            .into_iter()
            .filter(|&i| runners[i].eligible)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_runner_once_per_pass() {
        for len in 1..9 {
            for nanos in [0, 1, 7, 999_999_999, 123_456_789] {
                let mut order = naive_order(nanos, len);
                assert_eq!(order[0], ((nanos + 1) % len as u64) as usize);
                order.sort_unstable();
                assert_eq!(order, (0..len).collect::<Vec<_>>());
            }
        }
        assert!(naive_order(5, 0).is_empty());
    }

    #[test]
    fn skips_ineligible_runners() {
        let c = |eligible| Candidate {
            eligible,
            load: 0,
            key: None,
        };
        let runners = [c(true), c(false), c(true), c(true)];
        let mut order = NaivePlacer.pass_order("f", &runners);
        order.sort_unstable();
        assert_eq!(order, vec![0, 2, 3]);
    }
}
