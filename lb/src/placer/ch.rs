//! Fn's consistent-hash placer: the home runner is `jump(siphash(fn_id), len)` over the configured list,
//! then the following runners in list order (wrapping). Down runners are skipped but keep their slot
//! on the ring, so an outage does not move every other function.
//!
//! When the pool holds runners found through DNS (their [`Candidate::key`] is set), positions are not
//! stable (members come and go anywhere in the list), so the order is rendezvous hashing on the
//! members' identities instead: each function ranks the members by a keyed hash of (fn, member) and
//! tries them best first. A member that leaves moves only the functions whose home it was (spread
//! over the others), one that joins takes only the functions that now rank it first: about 1/n
//! either way, and every LB computes the same order.

use super::hash::{fn_key_hash, jump, rendezvous_score};
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

/// The rendezvous order of `fn_id` over members of identities `keys`: indexes by descending score
/// (ties, which need equal keys, by index).
pub fn rendezvous_order(fn_id: &str, keys: &[u64]) -> Vec<usize> {
    let h = fn_key_hash(fn_id.as_bytes());
    let mut scored: Vec<(u64, usize)> = keys
        .iter()
        .enumerate()
        .map(|(i, &k)| (rendezvous_score(h, k), i))
        .collect();
    scored.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    scored.into_iter().map(|(_, i)| i).collect()
}

/// The full preference order of `fn_id` over `runners` (eligible or not): rendezvous over the
/// members' keys when every runner has one, else Fn's ring walk over the list positions.
pub fn ring(fn_id: &str, runners: &[Candidate]) -> Vec<usize> {
    let keys: Option<Vec<u64>> = runners.iter().map(|r| r.key).collect();
    match keys {
        Some(keys) if !keys.is_empty() => rendezvous_order(fn_id, &keys),
        _ => ch_order(fn_id, runners.len()),
    }
}

impl Placer for ChPlacer {
    fn name(&self) -> &'static str {
        "ch"
    }

    fn pass_order(&self, fn_id: &str, runners: &[Candidate]) -> Vec<usize> {
        ring(fn_id, runners)
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
        let c = |eligible| Candidate {
            eligible,
            load: 0,
            key: None,
        };
        // home of "myfn" among 4 is 3; with 3 down the call falls through to 0, and others keep home.
        let runners = [c(true), c(true), c(true), c(false)];
        assert_eq!(ChPlacer.pass_order("myfn", &runners), vec![0, 1, 2]);
        assert_eq!(ChPlacer.pass_order("01ARZ3NDEKTSV4RRFFQ69G5FAV", &runners)[0], 2);
    }

    use super::super::hash::member_key;
    use std::collections::HashMap;

    fn keyed(addrs: &[String]) -> Vec<Candidate> {
        addrs
            .iter()
            .map(|a| Candidate {
                eligible: true,
                load: 0,
                key: Some(member_key(a)),
            })
            .collect()
    }

    fn fns(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("01FNMOVE{i:018}")).collect()
    }

    /// The home member (by address) of each fn.
    fn homes(fns: &[String], addrs: &[String], place: impl Fn(&str) -> usize) -> Vec<String> {
        fns.iter().map(|f| addrs[place(f)].clone()).collect()
    }

    fn moved(a: &[String], b: &[String]) -> usize {
        a.iter().zip(b).filter(|(x, y)| x != y).count()
    }

    /// Members found through DNS come and go anywhere in the (address-sorted) list: with their
    /// identities as keys, one of 8 leaving moves only its own fns (about 1/8), one joining takes
    /// about 1/9; Fn's positional ring over the same sorted list would move about half.
    #[test]
    fn keyed_members_move_few_fns_when_one_leaves_or_joins() {
        let n_fns = 20_000;
        let fns = fns(n_fns);
        let eight: Vec<String> = (1..=8).map(|i| format!("10.0.0.{}:9190", i * 10)).collect();
        let before_ring = keyed(&eight);
        let before = homes(&fns, &eight, |f| ring(f, &before_ring)[0]);
        // Every member is someone's home, evenly enough.
        let mut per: HashMap<&str, usize> = HashMap::new();
        for h in &before {
            *per.entry(h).or_default() += 1;
        }
        assert_eq!(per.len(), 8);
        assert!(per.values().all(|&c| c > n_fns / 8 * 8 / 10), "{per:?}");

        // 10.0.0.30 leaves (third of eight, so positions after it shift).
        let seven: Vec<String> = eight.iter().filter(|a| *a != "10.0.0.30:9190").cloned().collect();
        let after_ring = keyed(&seven);
        let after = homes(&fns, &seven, |f| ring(f, &after_ring)[0]);
        let leave = moved(&before, &after);
        for (b, a) in before.iter().zip(&after) {
            assert!(
                b == a || b == "10.0.0.30:9190",
                "only the leaver's fns move: {b} -> {a}"
            );
        }
        // Its fns spread over the others, not onto one neighbour.
        let mut took: HashMap<&str, usize> = HashMap::new();
        for (b, a) in before.iter().zip(&after) {
            if b != a {
                *took.entry(a).or_default() += 1;
            }
        }
        assert_eq!(took.len(), 7, "{took:?}");

        // 10.0.0.45 joins (in the middle of the sorted list).
        let mut nine = eight.clone();
        nine.push("10.0.0.45:9190".into());
        nine.sort();
        let nine_ring = keyed(&nine);
        let joined = homes(&fns, &nine, |f| ring(f, &nine_ring)[0]);
        let join = moved(&before, &joined);
        for (b, a) in before.iter().zip(&joined) {
            assert!(
                b == a || a == "10.0.0.45:9190",
                "fns move only to the newcomer: {b} -> {a}"
            );
        }

        // Fn's positional ring over the same sorted lists, for comparison.
        let pos_before = homes(&fns, &eight, |f| home(f, 8));
        let pos_leave = moved(&pos_before, &homes(&fns, &seven, |f| home(f, 7)));
        let pos_join = moved(&pos_before, &homes(&fns, &nine, |f| home(f, 9)));

        let frac = |m: usize| m as f64 / n_fns as f64;
        println!(
            "fns moved, {n_fns} fns over 8 runners: one leaves {:.4} (ideal 1/8 = 0.1250), one joins {:.4} \
             (ideal 1/9 = 0.1111); Fn's positional ring over the sorted list: leave {:.4}, join {:.4}",
            frac(leave),
            frac(join),
            frac(pos_leave),
            frac(pos_join)
        );
        assert!(
            frac(leave) <= 2.0 / 8.0 && frac(leave) >= 0.5 / 8.0,
            "leave {}",
            frac(leave)
        );
        assert!(
            frac(join) <= 2.0 / 9.0 && frac(join) >= 0.5 / 9.0,
            "join {}",
            frac(join)
        );
        assert!(
            frac(pos_leave) > 2.0 / 8.0,
            "positional ring moves more: {}",
            frac(pos_leave)
        );
    }

    #[test]
    fn keyed_order_is_a_stable_preference_list() {
        let addrs: Vec<String> = (1..=5).map(|i| format!("10.1.0.{i}:9190")).collect();
        let mut runners = keyed(&addrs);
        let order = ChPlacer.pass_order("myfn", &runners);
        let mut all = order.clone();
        all.sort_unstable();
        assert_eq!(all, vec![0, 1, 2, 3, 4], "every runner once");
        // The home down: the next in the same preference order, the rest unchanged.
        runners[order[0]].eligible = false;
        assert_eq!(ChPlacer.pass_order("myfn", &runners), order[1..].to_vec());
        // The same members listed in another order give the same runners in the same order.
        let mut reversed = addrs.clone();
        reversed.reverse();
        let rev = ChPlacer.pass_order("myfn", &keyed(&reversed));
        let by_addr = |o: &[usize], a: &[String]| o.iter().map(|&i| a[i].clone()).collect::<Vec<_>>();
        assert_eq!(by_addr(&rev, &reversed), by_addr(&order, &addrs));
        // Unkeyed (configured) runners keep Fn's placement.
        let c = Candidate::new(true, 0);
        assert_eq!(ChPlacer.pass_order("myfn", &[c; 4]), vec![3, 0, 1, 2]);
    }
}
