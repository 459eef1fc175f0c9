//! Fn's consistent-hash placer: the home runner is `jump(siphash(fn_id), len)` over the configured list,
//! then the following runners in list order (wrapping). Down runners are skipped but keep their slot
//! on the ring, so an outage does not move every other function.

use super::hash::{fn_key_hash, jump};
use super::{Candidate, Placer};

/// `FN_PLACER=ch`.
#[derive(Debug, Default, Clone, Copy)]
pub struct ChPlacer;

/// The home index of `fn_id` among `len` runners.
pub fn home(fn_id: &str, len: usize) -> usize {
    jump(fn_key_hash(fn_id.as_bytes()), len)
}

/// The ring walk from `fn_id`'s home: `i, i+1, ... (mod len)`.
pub fn ch_order(fn_id: &str, len: usize) -> Vec<usize> {
    if len == 0 {
        return Vec::new();
    }
    let start = home(fn_id, len);
    (0..len).map(|k| (start + k) % len).collect()
}

impl Placer for ChPlacer {
    fn name(&self) -> &'static str {
        "ch"
    }

    fn pass_order(&self, fn_id: &str, runners: &[Candidate]) -> Vec<usize> {
        ch_order(fn_id, runners.len())
            .into_iter()
            .filter(|&i| runners[i].eligible)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_starts_at_go_jump_and_wraps() {
        // jump(siphash("01ARZ3NDEKTSV4RRFFQ69G5FAV"), 3) == 2 (engage-protocol.md §3.2).
        assert_eq!(ch_order("01ARZ3NDEKTSV4RRFFQ69G5FAV", 3), vec![2, 0, 1]);
        assert_eq!(ch_order("myfn", 4), vec![3, 0, 1, 2]);
        assert_eq!(ch_order("01F0000000000000000000000A", 10)[0], 5);
    }

    #[test]
    fn down_runner_keeps_its_ring_slot() {
        let c = |eligible| Candidate { eligible, load: 0 };
        // home of "myfn" among 4 is 3; with 3 down the call falls through to 0, and others keep home.
        let runners = [c(true), c(true), c(true), c(false)];
        assert_eq!(ChPlacer.pass_order("myfn", &runners), vec![0, 1, 2]);
        assert_eq!(ChPlacer.pass_order("01ARZ3NDEKTSV4RRFFQ69G5FAV", &runners)[0], 2);
    }
}
