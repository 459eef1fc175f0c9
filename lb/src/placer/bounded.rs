//! Bounded-load consistent hashing (`FN_PLACER=ch-bounded`): a function stays on its `ch` home runner
//! while that runner's in-flight load stays within `c x mean` (counting the new call); otherwise the
//! call spills to the next runner on the ring (the `ch` order: Fn's ring walk, or the rendezvous
//! order of members found through DNS) that is within the bound. This keeps containers warm
//! without letting one popular function pile onto a single runner.

use super::ch::ring;
use super::{Candidate, Placer};

/// Default load factor `c`.
pub const DEFAULT_LOAD_FACTOR: f64 = 1.25;

/// `FN_PLACER=ch-bounded` with load factor `c` (>= 1).
#[derive(Debug, Clone, Copy)]
pub struct BoundedPlacer {
    c: f64,
}

impl BoundedPlacer {
    /// A placer with load factor `c`; values below 1 are raised to 1 (a bound under the mean is
    /// unsatisfiable).
    pub fn new(c: f64) -> Self {
        Self {
            c: if c.is_finite() {
                c.max(1.0)
            } else {
                DEFAULT_LOAD_FACTOR
            },
        }
    }

    /// The load factor.
    pub fn load_factor(&self) -> f64 {
        self.c
    }
}

impl Default for BoundedPlacer {
    fn default() -> Self {
        Self::new(DEFAULT_LOAD_FACTOR)
    }
}

/// The largest in-flight load a runner may reach by taking one more call:
/// `ceil(c * (total eligible load + 1) / eligible count)`. 0 when nothing is eligible.
pub fn capacity(c: f64, runners: &[Candidate]) -> u64 {
    let (count, total) = runners
        .iter()
        .filter(|r| r.eligible)
        .fold((0_u64, 0_u64), |(n, t), r| (n + 1, t + r.load));
    if count == 0 {
        return 0;
    }
    let mean = (total + 1) as f64 / count as f64;
    (c * mean).ceil() as u64
}

/// The pass order: the eligible runners of `fn_id`'s ring walk whose load stays within the bound
/// (ring order, home first when it qualifies), then the over-bound ones in ring order, so that a
/// pass still tries everyone if the lighter runners refuse.
pub fn bounded_order(c: f64, fn_id: &str, runners: &[Candidate]) -> Vec<usize> {
    let cap = capacity(c, runners);
    let ring: Vec<usize> = ring(fn_id, runners)
        .into_iter()
        .filter(|&i| runners[i].eligible)
        .collect();
    let (mut within, over): (Vec<usize>, Vec<usize>) = ring.into_iter().partition(|&i| runners[i].load < cap);
    within.extend(over);
    within
}

impl Placer for BoundedPlacer {
    fn name(&self) -> &'static str {
        "ch-bounded"
    }

    fn pass_order(&self, fn_id: &str, runners: &[Candidate]) -> Vec<usize> {
        bounded_order(self.c, fn_id, runners)
    }
}

#[cfg(test)]
mod tests {
    use super::super::ch::home;
    use super::*;

    fn even(n: usize, load: u64) -> Vec<Candidate> {
        vec![
            Candidate {
                eligible: true,
                load,
                key: None
            };
            n
        ]
    }

    #[test]
    fn every_fn_stays_home_under_even_load() {
        for n in [1, 2, 3, 5, 10] {
            for load in [0, 1, 4, 50] {
                let runners = even(n, load);
                for f in 0..200 {
                    let fn_id = format!("01FN{f:022}");
                    let order = bounded_order(DEFAULT_LOAD_FACTOR, &fn_id, &runners);
                    assert_eq!(order[0], home(&fn_id, n), "{fn_id} n={n} load={load}");
                    assert_eq!(order.len(), n);
                }
            }
        }
    }

    #[test]
    fn overloaded_home_spills_to_next_on_ring() {
        let fn_id = "myfn"; // home 3 of 4
        let mut runners = even(4, 2);
        runners[3].load = 10;
        let order = bounded_order(1.25, fn_id, &runners);
        assert_eq!(order, vec![0, 1, 2, 3]);
        runners[0].load = 10;
        assert_eq!(bounded_order(1.25, fn_id, &runners), vec![1, 2, 3, 0]);
    }

    /// Small deterministic generator (xorshift64*), so the simulation is repeatable.
    struct Rng(u64);
    impl Rng {
        fn next_f64(&mut self) -> f64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    /// Result of one simulated run: (worst excess of the chosen runner's load over the bound at
    /// placement time, calls placed at home, calls).
    fn simulate(placer: &dyn Placer, c: f64) -> (i64, usize, usize) {
        let runners = 6;
        let fns: Vec<String> = (0..40).map(|i| format!("01FNSIM{i:019}")).collect();
        // Zipf-ish popularity, s = 1.1: the first function gets about a fifth of the calls.
        let weights: Vec<f64> = (1..=fns.len()).map(|k| 1.0 / (k as f64).powf(1.1)).collect();
        let total: f64 = weights.iter().sum();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut loads = vec![
            Candidate {
                eligible: true,
                load: 0,
                key: None
            };
            runners
        ];
        let mut ends: Vec<(u64, usize)> = Vec::new(); // (end step, runner)
        let (mut worst, mut at_home, mut calls) = (i64::MIN, 0, 0);
        for step in 0..20_000_u64 {
            ends.retain(|&(end, r)| {
                if end <= step {
                    loads[r].load -= 1;
                    false
                } else {
                    true
                }
            });
            let mut pick = rng.next_f64() * total;
            let f = weights.iter().position(|w| {
                pick -= w;
                pick <= 0.0
            });
            let fn_id = &fns[f.unwrap_or(fns.len() - 1)];
            let bound = capacity(c, &loads) as i64;
            let r = placer.pass_order(fn_id, &loads)[0];
            loads[r].load += 1;
            calls += 1;
            if r == home(fn_id, runners) {
                at_home += 1;
            }
            // The bound holds at placement time; loads shift later as calls end.
            worst = worst.max(loads[r].load as i64 - bound);
            // Each call runs 30..90 steps: about 60 calls in flight, 10 per runner.
            ends.push((step + 30 + (rng.next_f64() * 60.0) as u64, r));
        }
        (worst, at_home, calls)
    }

    #[test]
    fn skewed_load_stays_within_c_times_mean() {
        let c = 1.25;
        let (worst, at_home, calls) = simulate(&BoundedPlacer::new(c), c);
        assert!(worst <= 0, "max load exceeded ceil(c x mean) by {worst}");
        assert!(
            at_home * 2 > calls,
            "most calls should still go home: {at_home}/{calls}"
        );
        // The same workload on plain ch does break the bound, so the test can tell them apart.
        let (ch_worst, ch_home, _) = simulate(&super::super::ch::ChPlacer, c);
        assert!(ch_worst > 0, "plain ch should exceed the bound under skew");
        assert_eq!(ch_home, calls);
    }

    #[test]
    fn load_factor_below_one_is_raised() {
        assert_eq!(BoundedPlacer::new(0.5).load_factor(), 1.0);
        assert_eq!(BoundedPlacer::new(f64::NAN).load_factor(), DEFAULT_LOAD_FACTOR);
    }
}
