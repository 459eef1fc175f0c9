//! A placement simulator: Zipf traffic over many fns, placed by the LB's real placer code
//! (`ferrofn_lb::placer`) on a simulated pool of runners, each holding an LRU of warm containers.
//! It shows what each placer does to warm-hit ratio, cold starts and load balance, deterministically.
//!
//! The model, per runner: at most `capacity` containers. A call to a fn with an idle container on
//! the chosen runner is a warm hit; otherwise the runner starts a container (a cold start), evicting
//! its least recently used idle container when full. When every container is busy the runner NACKs
//! (as a full ferrofn or Fn runner does) and the call goes to the next runner of the placer's order.
//! A call keeps its container busy for its duration (exponential, plus the cold start when cold);
//! the placers see each runner's in-flight calls as its load, as the LB's pool reports them.
//!
//! With several LBs in front of the same runners, each call goes to one LB (uniformly at random,
//! as an ingress spreading connections would), and that LB places it on its own view: the calls it
//! placed itself that are still in flight. The runners' containers, busy slots and NACKs are shared.

use std::{cmp::Reverse, collections::BinaryHeap, fmt::Write as _};

use ferrofn_lb::placer::{Candidate, bounded, ch, hash, naive};
use serde::{Deserialize, Serialize};

/// The placers the simulator runs (the LB's `FN_PLACER` names).
pub const PLACERS: [&str; 3] = ["naive", "ch", "ch-bounded"];

/// A bad simulator parameter.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("unknown placer {0:?}: expected naive, ch or ch-bounded")]
    Placer(String),
    #[error("invalid simulation parameter {name}: {why}")]
    Param { name: &'static str, why: &'static str },
}

/// The simulation's parameters (all exposed as `ferrofn-bench sim` flags).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimOptions {
    /// Distinct fns; fn k (1-based) is called with probability proportional to 1/k^zipf_s.
    pub functions: usize,
    pub zipf_s: f64,
    pub runners: usize,
    /// Containers per runner (warm or busy).
    pub capacity: usize,
    /// Calls simulated (after `warmup_calls`, which fill the caches and are not counted).
    pub calls: usize,
    pub warmup_calls: usize,
    /// Mean arrival rate over the whole pool (Poisson arrivals).
    pub rate_per_s: f64,
    /// Mean call duration (exponential).
    pub mean_duration_ms: f64,
    /// Added to a call's duration when it starts a container.
    pub cold_start_ms: f64,
    /// `ch-bounded`'s load factor c.
    pub load_factor: f64,
    pub seed: u64,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            functions: 1000,
            zipf_s: 1.0,
            runners: 8,
            capacity: 32,
            calls: 200_000,
            warmup_calls: 20_000,
            rate_per_s: 400.0,
            mean_duration_ms: 100.0,
            cold_start_ms: 200.0,
            load_factor: bounded::DEFAULT_LOAD_FACTOR,
            seed: 42,
        }
    }
}

impl SimOptions {
    fn validate(&self) -> Result<(), SimError> {
        let bad = |name, why| Err(SimError::Param { name, why });
        if self.functions == 0 {
            return bad("functions", "must be at least 1");
        }
        if self.runners == 0 {
            return bad("runners", "must be at least 1");
        }
        if self.capacity == 0 {
            return bad("capacity", "must be at least 1");
        }
        if !(self.zipf_s.is_finite() && self.zipf_s >= 0.0) {
            return bad("zipf_s", "must be a finite number >= 0");
        }
        if !(self.rate_per_s.is_finite() && self.rate_per_s > 0.0) {
            return bad("rate_per_s", "must be > 0");
        }
        if !(self.mean_duration_ms.is_finite() && self.mean_duration_ms > 0.0) {
            return bad("mean_duration_ms", "must be > 0");
        }
        if !(self.cold_start_ms.is_finite() && self.cold_start_ms >= 0.0) {
            return bad("cold_start_ms", "must be >= 0");
        }
        Ok(())
    }
}

/// One placer's outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimResult {
    pub placer: String,
    /// LBs placing on the same runners, each on its own load view.
    pub lbs: usize,
    /// Counted calls each LB received from the ingress.
    pub calls_per_lb: Vec<u64>,
    /// Counted calls (warm-up excluded).
    pub calls: u64,
    pub warm_hits: u64,
    pub cold_starts: u64,
    /// Calls every runner NACKed (the LB would retry them after its retry delay).
    pub rejected: u64,
    /// NACKs before a call was placed (each is one wasted Engage round trip on the LB).
    pub nacks: u64,
    /// Idle containers evicted to make room.
    pub evictions: u64,
    pub warm_hit_ratio: f64,
    /// Time-averaged in-flight calls of each runner (all LBs' calls: the runner's true load).
    pub mean_load: Vec<f64>,
    /// Busiest runner's time-averaged load over the runners' mean (1.0 = perfectly even).
    pub max_over_mean_load: f64,
    /// The most calls any runner had in flight at once.
    pub peak_in_flight: u64,
    /// Placed calls that took their runner past ch-bounded's bound computed on the runners' true
    /// loads, `ceil(c x mean)` (counting the new call): what one LB seeing every call keeps to.
    pub over_bound: u64,
    /// Distinct runners each of the 10 busiest fns ran on (counted calls).
    pub top_fn_spread: Vec<usize>,
}

/// The whole simulation: parameters and one result per placer and LB count.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimReport {
    pub options: SimOptions,
    /// The LB counts simulated.
    pub lbs: Vec<usize>,
    /// Placer by placer, each with its LB counts in `lbs` order.
    pub results: Vec<SimResult>,
    /// How many fns change home runner under `ch` when one runner leaves or joins.
    #[serde(default)]
    pub churn: Vec<Churn>,
}

/// The fns whose `ch` home runner changes when one of the runners leaves or one joins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Churn {
    /// `positions`: Fn's jump hash over list positions (configured runners); `addresses`:
    /// rendezvous hashing on the runners' addresses (runners found through DNS).
    pub ranking: String,
    /// Runners before the change.
    pub runners: usize,
    /// Mean fraction of fns that move when one runner leaves, over each runner leaving in turn.
    pub leave: f64,
    /// Mean fraction of fns that move when one runner joins, over each place in the address order
    /// it can take.
    pub join: f64,
}

/// The home (an index into the list) of a fn among runners listed by address.
type HomeFn = fn(&str, &[String]) -> usize;

/// [`Churn`] of both rankings for `functions` fns over `runners` runners, listed in address order
/// as the LB lists the members of a name.
pub fn churn(functions: usize, runners: usize) -> Vec<Churn> {
    let ids = fn_ids(functions);
    let addr = |i: usize| format!("10.{}.{}.1:9190", i / 256, i % 256);
    // Sorts just before addr(p): a joiner at place p.
    let joiner = |p: usize| format!("10.{}.{}.0:9190", p / 256, p % 256);
    let all: Vec<String> = (0..runners).map(addr).collect();
    let rankings: [(&str, HomeFn); 2] = [
        ("positions", |f, list| ch::home(f, list.len())),
        ("addresses", |f, list| {
            let keys: Vec<u64> = list.iter().map(|a| hash::member_key(a)).collect();
            ch::rendezvous_order(f, &keys)[0]
        }),
    ];
    rankings
        .iter()
        .map(|(name, home)| {
            let homes = |list: &[String]| -> Vec<String> {
                ids.iter().map(|f| list[home(f, list)].clone()).collect()
            };
            let moved = |a: &[String], b: &[String]| {
                a.iter().zip(b).filter(|(x, y)| x != y).count() as f64 / functions.max(1) as f64
            };
            let before = homes(&all);
            let leave = (0..runners)
                .map(|gone| {
                    let rest: Vec<String> = all
                        .iter()
                        .enumerate()
                        .filter(|&(i, _)| i != gone)
                        .map(|(_, a)| a.clone())
                        .collect();
                    if rest.is_empty() {
                        1.0
                    } else {
                        moved(&before, &homes(&rest))
                    }
                })
                .sum::<f64>()
                / runners.max(1) as f64;
            let join = (0..=runners)
                .map(|p| {
                    let mut more = all.clone();
                    more.insert(p, joiner(p));
                    moved(&before, &homes(&more))
                })
                .sum::<f64>()
                / (runners + 1) as f64;
            Churn {
                ranking: (*name).to_owned(),
                runners,
                leave,
                join,
            }
        })
        .collect()
}

/// xorshift64* (deterministic for a seed, on every platform).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        // splitmix64 of the seed, so that 0 and small seeds give a good non-zero state.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)) | 1)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Exponential with this mean.
    fn exp(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.unit()).ln()
    }
}

/// Zipf sampler over `n` ranks by inverse CDF.
struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    fn new(n: usize, s: f64) -> Self {
        let mut acc = 0.0;
        let mut cdf: Vec<f64> = (1..=n)
            .map(|k| {
                acc += 1.0 / (k as f64).powf(s);
                acc
            })
            .collect();
        for c in &mut cdf {
            *c /= acc;
        }
        Zipf { cdf }
    }

    fn sample(&self, rng: &mut Rng) -> usize {
        let u = rng.unit();
        self.cdf.partition_point(|&c| c <= u).min(self.cdf.len() - 1)
    }
}

#[derive(Debug, Clone, Copy)]
struct Container {
    func: usize,
    busy_until: f64,
    last_used: f64,
}

/// One simulated runner.
#[derive(Default)]
struct Runner {
    containers: Vec<Container>,
    /// End times of the calls in flight (min-heap).
    in_flight: BinaryHeap<Reverse<u64>>,
    /// Integral of in-flight over time (call-ms), for the time-averaged load.
    load_area: f64,
    last_t: f64,
    peak: u64,
}

impl Runner {
    /// Moves the clock to `t`, ending the calls that finished.
    fn advance(&mut self, t: f64) {
        while let Some(&Reverse(end)) = self.in_flight.peek() {
            let end = f64::from_bits(end);
            if end > t {
                break;
            }
            self.load_area += self.in_flight.len() as f64 * (end - self.last_t);
            self.last_t = end;
            self.in_flight.pop();
        }
        self.load_area += self.in_flight.len() as f64 * (t - self.last_t);
        self.last_t = t;
    }

    fn load(&self) -> u64 {
        self.in_flight.len() as u64
    }

    /// Tries to run a call of `func` at `now`: `None` is a NACK (every container busy).
    fn admit(&mut self, func: usize, now: f64, capacity: usize) -> Option<Admit> {
        let idle = |c: &Container| c.busy_until <= now;
        if let Some(i) = self.containers.iter().position(|c| c.func == func && idle(c)) {
            return Some(Admit::Warm(i));
        }
        if self.containers.len() < capacity {
            self.containers.push(Container {
                func,
                busy_until: now,
                last_used: now,
            });
            return Some(Admit::Cold {
                slot: self.containers.len() - 1,
                evicted: false,
            });
        }
        let lru = self
            .containers
            .iter()
            .enumerate()
            .filter(|(_, c)| idle(c))
            .min_by(|a, b| a.1.last_used.total_cmp(&b.1.last_used))
            .map(|(i, _)| i)?;
        self.containers[lru] = Container {
            func,
            busy_until: now,
            last_used: now,
        };
        Some(Admit::Cold {
            slot: lru,
            evicted: true,
        })
    }

    fn occupy(&mut self, slot: usize, now: f64, end: f64) {
        let c = &mut self.containers[slot];
        c.busy_until = end;
        c.last_used = now;
        // Non-negative finite floats order like their bit patterns.
        self.in_flight.push(Reverse(end.to_bits()));
        self.peak = self.peak.max(self.in_flight.len() as u64);
    }
}

enum Admit {
    Warm(usize),
    Cold { slot: usize, evicted: bool },
}

/// One LB's load view: the calls it placed that are still in flight, per runner (the LB's pool
/// counts its own Engage streams; it knows nothing of the other LBs' calls).
struct LbView {
    /// End times of this LB's calls in flight, per runner (min-heaps).
    in_flight: Vec<BinaryHeap<Reverse<u64>>>,
}

impl LbView {
    fn new(runners: usize) -> Self {
        LbView {
            in_flight: (0..runners).map(|_| BinaryHeap::new()).collect(),
        }
    }

    /// Forgets the calls that ended by `t`.
    fn advance(&mut self, t: f64) {
        for heap in &mut self.in_flight {
            while heap.peek().is_some_and(|&Reverse(end)| f64::from_bits(end) <= t) {
                heap.pop();
            }
        }
    }

    fn load(&self, runner: usize) -> u64 {
        self.in_flight[runner].len() as u64
    }

    fn candidates(&self) -> Vec<Candidate> {
        (0..self.in_flight.len())
            .map(|i| Candidate {
                eligible: true,
                load: self.load(i),
                key: None,
            })
            .collect()
    }

    fn placed(&mut self, runner: usize, end: f64) {
        self.in_flight[runner].push(Reverse(end.to_bits()));
    }
}

/// The fn ids: 26 characters, like the ULIDs the registry hands out.
pub fn fn_ids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("01SIMFN{i:019}")).collect()
}

/// The order in which `placer` tries the runners, through the LB's own functions.
fn order(placer: &str, c: f64, fn_id: &str, runners: &[Candidate], rng: &mut Rng) -> Vec<usize> {
    match placer {
        // The LB seeds naive with the clock's sub-second nanoseconds: a random start.
        "naive" => naive::naive_order(rng.next_u64() % 1_000_000_000, runners.len()),
        "ch" => ch::ch_order(fn_id, runners.len()),
        _ => bounded::bounded_order(c, fn_id, runners),
    }
}

/// Simulates one placer behind `lbs` LBs. The traffic (fns, arrival times, durations) and the
/// LB each call goes to depend only on the seed, so every placer sees the same calls.
pub fn simulate(opts: &SimOptions, placer: &str, lbs: usize) -> Result<SimResult, SimError> {
    simulate_observed(opts, placer, lbs, &mut |_, _| {})
}

/// [`simulate`], calling `observe` with the runners and the LBs' views after each call.
fn simulate_observed(
    opts: &SimOptions,
    placer: &str,
    lbs: usize,
    observe: &mut dyn FnMut(&[Runner], &[LbView]),
) -> Result<SimResult, SimError> {
    opts.validate()?;
    if !PLACERS.contains(&placer) {
        return Err(SimError::Placer(placer.to_owned()));
    }
    if lbs == 0 {
        return Err(SimError::Param {
            name: "lbs",
            why: "must be at least 1",
        });
    }
    let ids = fn_ids(opts.functions);
    let zipf = Zipf::new(opts.functions, opts.zipf_s);
    let mut traffic = Rng::new(opts.seed);
    // The naive placer's randomness is separate, so traffic stays identical across placers.
    let mut choice = Rng::new(opts.seed ^ 0x5eed);
    // So is the ingress's choice of LB, so that the LB count changes neither.
    let mut ingress = Rng::new(opts.seed ^ 0x1b5);
    let mut runners: Vec<Runner> = (0..opts.runners).map(|_| Runner::default()).collect();
    let mut views: Vec<LbView> = (0..lbs).map(|_| LbView::new(opts.runners)).collect();
    let mut spread = vec![0_u64; opts.functions];
    let mut calls_per_fn = vec![0_u64; opts.functions];
    let mut r = SimResult {
        placer: placer.to_owned(),
        lbs,
        calls_per_lb: vec![0; lbs],
        calls: 0,
        warm_hits: 0,
        cold_starts: 0,
        rejected: 0,
        nacks: 0,
        evictions: 0,
        warm_hit_ratio: 0.0,
        mean_load: Vec::new(),
        max_over_mean_load: 0.0,
        peak_in_flight: 0,
        over_bound: 0,
        top_fn_spread: Vec::new(),
    };
    let mean_gap_ms = 1000.0 / opts.rate_per_s;
    let mut now = 0.0;
    let mut measured_from = 0.0;
    for i in 0..opts.warmup_calls + opts.calls {
        now += traffic.exp(mean_gap_ms);
        let func = zipf.sample(&mut traffic);
        let duration = traffic.exp(opts.mean_duration_ms);
        let counted = i >= opts.warmup_calls;
        if i == opts.warmup_calls {
            measured_from = now;
            for runner in &mut runners {
                runner.advance(now);
                runner.load_area = 0.0;
                runner.peak = runner.load();
            }
        }
        for runner in &mut runners {
            runner.advance(now);
        }
        let lb = (ingress.next_u64() % lbs as u64) as usize;
        let view = &mut views[lb];
        view.advance(now);
        let candidates = view.candidates();
        // ch-bounded's bound over the runners' true loads (every LB's calls), the bound one LB keeps.
        let true_cap = bounded::capacity(
            opts.load_factor,
            &runners
                .iter()
                .map(|x| Candidate {
                    eligible: true,
                    load: x.load(),
                    key: None,
                })
                .collect::<Vec<_>>(),
        );
        let mut placed = false;
        for idx in order(placer, opts.load_factor, &ids[func], &candidates, &mut choice) {
            let runner = &mut runners[idx];
            let over_bound = runner.load() >= true_cap;
            let Some(admit) = runner.admit(func, now, opts.capacity) else {
                if counted {
                    r.nacks += 1;
                }
                continue;
            };
            let (slot, end) = match admit {
                Admit::Warm(slot) => {
                    if counted {
                        r.warm_hits += 1;
                    }
                    (slot, now + duration)
                }
                Admit::Cold { slot, evicted } => {
                    if counted {
                        r.cold_starts += 1;
                        r.evictions += u64::from(evicted);
                    }
                    (slot, now + opts.cold_start_ms + duration)
                }
            };
            runner.occupy(slot, now, end);
            view.placed(idx, end);
            if counted {
                spread[func] |= 1 << idx.min(63);
                r.over_bound += u64::from(over_bound);
            }
            placed = true;
            break;
        }
        for view in &mut views {
            view.advance(now);
        }
        observe(&runners, &views);
        if counted {
            r.calls += 1;
            r.calls_per_lb[lb] += 1;
            calls_per_fn[func] += 1;
            r.rejected += u64::from(!placed);
        }
    }
    for runner in &mut runners {
        runner.advance(now);
    }
    let span = (now - measured_from).max(f64::MIN_POSITIVE);
    r.mean_load = runners.iter().map(|x| x.load_area / span).collect();
    let mean = r.mean_load.iter().sum::<f64>() / r.mean_load.len() as f64;
    let max = r.mean_load.iter().copied().fold(0.0, f64::max);
    r.max_over_mean_load = if mean > 0.0 { max / mean } else { 1.0 };
    r.peak_in_flight = runners.iter().map(|x| x.peak).max().unwrap_or(0);
    r.warm_hit_ratio = if r.calls > 0 {
        r.warm_hits as f64 / r.calls as f64
    } else {
        0.0
    };
    let mut busiest: Vec<usize> = (0..opts.functions).collect();
    busiest.sort_by_key(|&f| Reverse(calls_per_fn[f]));
    r.top_fn_spread = busiest
        .iter()
        .take(10)
        .map(|&f| spread[f].count_ones() as usize)
        .collect();
    Ok(r)
}

/// Simulates each of `placers` behind each of `lbs` LB counts, on the same traffic.
pub fn run(opts: &SimOptions, placers: &[&str], lbs: &[usize]) -> Result<SimReport, SimError> {
    let results = placers
        .iter()
        .flat_map(|p| lbs.iter().map(move |&n| simulate(opts, p, n)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(SimReport {
        options: opts.clone(),
        lbs: lbs.to_vec(),
        results,
        churn: churn(opts.functions, opts.runners),
    })
}

impl SimReport {
    /// The report as a plain-text table.
    pub fn render(&self) -> String {
        let o = &self.options;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "placement simulation: {} fns (Zipf s={}), {} runners x {} containers, {} calls \
             ({} warm-up) at {}/s, mean duration {} ms, cold start {} ms, c={}, seed {}",
            o.functions,
            o.zipf_s,
            o.runners,
            o.capacity,
            o.calls,
            o.warmup_calls,
            o.rate_per_s,
            o.mean_duration_ms,
            o.cold_start_ms,
            o.load_factor,
            o.seed
        );
        if self.lbs.iter().any(|&n| n > 1) {
            let _ = writeln!(
                out,
                "several LBs: each call goes to one LB at random; each LB places on its own view \
                 (its own calls in flight); the loads below are the runners' true loads"
            );
        }
        let header = [
            "placer",
            "LBs",
            "warm hit",
            "cold starts",
            "evictions",
            "nacks",
            "rejected",
            "max/mean load",
            "mean load",
            "peak in flight",
            "over c bound",
            "top-10 fn runners",
        ];
        let rows: Vec<Vec<String>> = self
            .results
            .iter()
            .map(|r| {
                let mean = r.mean_load.iter().sum::<f64>() / r.mean_load.len().max(1) as f64;
                vec![
                    r.placer.clone(),
                    r.lbs.to_string(),
                    format!("{:.1}%", r.warm_hit_ratio * 100.0),
                    r.cold_starts.to_string(),
                    r.evictions.to_string(),
                    r.nacks.to_string(),
                    r.rejected.to_string(),
                    format!("{:.2}", r.max_over_mean_load),
                    format!("{mean:.1}"),
                    r.peak_in_flight.to_string(),
                    format!("{:.2}%", r.over_bound as f64 * 100.0 / r.calls.max(1) as f64),
                    r.top_fn_spread
                        .iter()
                        .map(|n| n.to_string())
                        .collect::<Vec<_>>()
                        .join(","),
                ]
            })
            .collect();
        let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.len());
            }
        }
        let line = |cells: Vec<String>| {
            let padded: Vec<String> = cells
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            format!("  {}\n", padded.join("  ").trim_end())
        };
        out.push_str(&line(header.iter().map(|h| h.to_string()).collect()));
        out.push_str(&line(widths.iter().map(|w| "-".repeat(*w)).collect()));
        for row in rows {
            out.push_str(&line(row));
        }
        for c in &self.churn {
            let what = match c.ranking.as_str() {
                "positions" => "Fn's jump over list positions (configured runners)",
                _ => "rendezvous on addresses (runners found through DNS)",
            };
            let _ = writeln!(
                out,
                "ch, {what}: fns moving home when one of {} runners leaves {:.1}% (ideal {:.1}%), \
                 when one joins {:.1}% (ideal {:.1}%)",
                c.runners,
                c.leave * 100.0,
                100.0 / c.runners.max(1) as f64,
                c.join * 100.0,
                100.0 / (c.runners + 1) as f64
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Small enough for a debug-build unit test, large enough to show the effects.
    fn small() -> SimOptions {
        SimOptions {
            calls: 20_000,
            warmup_calls: 5_000,
            ..SimOptions::default()
        }
    }

    fn by_placer(report: &SimReport, p: &str) -> SimResult {
        report.results.iter().find(|r| r.placer == p).unwrap().clone()
    }

    #[test]
    fn ch_keeps_more_calls_warm_than_naive_on_zipf() {
        let report = run(&small(), &PLACERS, &[1]).unwrap();
        let naive = by_placer(&report, "naive");
        let ch = by_placer(&report, "ch");
        let bounded = by_placer(&report, "ch-bounded");
        assert!(
            ch.warm_hit_ratio > naive.warm_hit_ratio + 0.05,
            "ch {:.3} vs naive {:.3}",
            ch.warm_hit_ratio,
            naive.warm_hit_ratio
        );
        assert!(ch.cold_starts < naive.cold_starts);
        // Bounded loads still keep most of ch's locality.
        assert!(bounded.warm_hit_ratio > naive.warm_hit_ratio);
        for r in &report.results {
            assert_eq!(r.calls, 20_000);
            assert_eq!(r.warm_hits + r.cold_starts + r.rejected, r.calls, "{r:?}");
            assert_eq!(r.mean_load.len(), 8);
        }
        // naive spreads the busiest fn over every runner; ch keeps it on few.
        assert_eq!(naive.top_fn_spread[0], 8);
        assert!(ch.top_fn_spread[0] <= 3, "{:?}", ch.top_fn_spread);
    }

    #[test]
    fn bounded_load_is_no_less_even_than_ch() {
        let report = run(&small(), &["ch", "ch-bounded"], &[1]).unwrap();
        let ch = by_placer(&report, "ch");
        let bounded = by_placer(&report, "ch-bounded");
        assert!(
            bounded.max_over_mean_load <= ch.max_over_mean_load,
            "bounded {:.3} vs ch {:.3}",
            bounded.max_over_mean_load,
            ch.max_over_mean_load
        );
        // With Zipf traffic the busiest fn's home runner is clearly overloaded under ch.
        assert!(ch.max_over_mean_load > 1.3, "{:.3}", ch.max_over_mean_load);
    }

    #[test]
    fn same_seed_same_result_other_seed_other_traffic() {
        let opts = SimOptions {
            calls: 3_000,
            warmup_calls: 500,
            ..SimOptions::default()
        };
        let a = simulate(&opts, "naive", 1).unwrap();
        assert_eq!(a, simulate(&opts, "naive", 1).unwrap());
        let b = simulate(&SimOptions { seed: 7, ..opts }, "naive", 1).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn a_pool_that_holds_everything_is_all_warm_after_warmup() {
        // Capacity for every fn (and its concurrency) on every runner: after the warm-up, only
        // concurrent calls to the same fn on one runner can still be cold.
        let opts = SimOptions {
            functions: 20,
            capacity: 200,
            calls: 5_000,
            warmup_calls: 5_000,
            ..SimOptions::default()
        };
        let r = simulate(&opts, "ch", 1).unwrap();
        assert!(r.warm_hit_ratio > 0.99, "{r:?}");
        assert_eq!(r.evictions, 0);
        assert_eq!(r.rejected, 0);
    }

    #[test]
    fn a_saturated_pool_nacks_and_rejects() {
        let opts = SimOptions {
            runners: 2,
            capacity: 2,
            rate_per_s: 1000.0,
            calls: 2_000,
            warmup_calls: 100,
            ..SimOptions::default()
        };
        let r = simulate(&opts, "ch-bounded", 1).unwrap();
        assert!(r.nacks > 0 && r.rejected > 0, "{r:?}");
        assert!(r.peak_in_flight <= 2);
    }

    #[test]
    fn zipf_favours_low_ranks() {
        let z = Zipf::new(1000, 1.0);
        let mut rng = Rng::new(1);
        let mut counts = vec![0_u32; 1000];
        for _ in 0..100_000 {
            counts[z.sample(&mut rng)] += 1;
        }
        // P(rank 1) = 1 / H(1000) ~ 13.4%.
        assert!((12_500..14_300).contains(&counts[0]), "{}", counts[0]);
        assert!(counts[0] > counts[1] && counts[1] > counts[9] && counts[9] > counts[999]);
        let uniform = Zipf::new(4, 0.0);
        assert!((0..1000).all(|_| uniform.sample(&mut rng) < 4));
    }

    #[test]
    fn rejects_bad_parameters() {
        assert!(matches!(
            simulate(&SimOptions::default(), "random", 1),
            Err(SimError::Placer(_))
        ));
        let zero = SimOptions {
            runners: 0,
            ..SimOptions::default()
        };
        assert!(matches!(
            simulate(&zero, "ch", 1),
            Err(SimError::Param { name: "runners", .. })
        ));
    }

    #[test]
    fn rendezvous_on_addresses_moves_about_one_nth_of_the_fns() {
        let c = churn(2000, 8);
        let (pos, addr) = (&c[0], &c[1]);
        assert_eq!(
            (pos.ranking.as_str(), addr.ranking.as_str()),
            ("positions", "addresses")
        );
        assert!(addr.leave > 0.5 / 8.0 && addr.leave < 1.5 / 8.0, "{addr:?}");
        assert!(addr.join > 0.5 / 9.0 && addr.join < 1.5 / 9.0, "{addr:?}");
        assert!(pos.leave > 2.0 * addr.leave, "positions move more: {pos:?}");
    }

    #[test]
    fn renders_a_row_per_placer_and_lb_count() {
        let opts = SimOptions {
            calls: 500,
            warmup_calls: 100,
            ..SimOptions::default()
        };
        let report = run(&opts, &PLACERS, &[1, 2, 4]).unwrap();
        assert_eq!(report.results.len(), 9);
        let text = report.render();
        for p in PLACERS {
            for n in [1, 2, 4] {
                let row = text.lines().any(|l| {
                    let cells: Vec<&str> = l.split_whitespace().collect();
                    cells.len() > 2 && cells[0] == p && cells[1] == n.to_string()
                });
                assert!(row, "no row for {p} with {n} LBs:\n{text}");
            }
        }
        assert!(text.contains("max/mean load") && text.contains("several LBs"));
        assert!(
            text.contains("rendezvous on addresses (runners found through DNS): fns moving home"),
            "{text}"
        );
        let single = run(&opts, &PLACERS, &[1]).unwrap().render();
        assert!(!single.contains("several LBs"), "{single}");
    }

    /// The figures the simulator gave for `small()` before it modelled several LBs (one view:
    /// the runners' own loads). One LB on its own view must give exactly these.
    #[test]
    fn one_lb_gives_the_single_lb_figures() {
        // placer, warm hits, cold starts, evictions, nacks, rejected, peak, max/mean load
        let before = [
            ("naive", 5379, 14621, 14621, 0, 0, 30, 1.0497750491559539),
            ("ch", 9486, 10514, 10511, 255, 0, 32, 2.300409268635871),
            ("ch-bounded", 8896, 11104, 11104, 0, 0, 19, 1.2233951991712844),
        ];
        for (placer, warm, cold, evictions, nacks, rejected, peak, max_over_mean) in before {
            let r = simulate(&small(), placer, 1).unwrap();
            let got = (r.warm_hits, r.cold_starts, r.evictions, r.nacks, r.rejected);
            assert_eq!(got, (warm, cold, evictions, nacks, rejected), "{placer}");
            assert_eq!(r.peak_in_flight, peak, "{placer}");
            assert_eq!(
                r.max_over_mean_load.to_bits(),
                f64::to_bits(max_over_mean),
                "{placer}"
            );
            assert_eq!(r.calls_per_lb, vec![20_000]);
        }
    }

    /// Every figure but the LB fields, to compare runs behind different LB counts.
    fn figures(r: &SimResult) -> SimResult {
        SimResult {
            lbs: 0,
            calls_per_lb: Vec::new(),
            ..r.clone()
        }
    }

    #[test]
    fn load_blind_placers_do_not_care_how_many_lbs_there_are() {
        // naive (a random start) and ch (the ring from the fn id) never read the loads, so each LB
        // picks what a single LB would: same homes, same warm hits, same balance.
        for placer in ["naive", "ch"] {
            let one = simulate(&small(), placer, 1).unwrap();
            for lbs in [2, 4] {
                let several = simulate(&small(), placer, lbs).unwrap();
                assert_eq!(figures(&several), figures(&one), "{placer} with {lbs} LBs");
            }
        }
    }

    #[test]
    fn bounded_with_several_lbs_bounds_each_view_not_the_runners() {
        let one = simulate(&small(), "ch-bounded", 1).unwrap();
        let four = simulate(&small(), "ch-bounded", 4).unwrap();
        // The LBs see different loads, so they place differently (no bound is asserted on the
        // true load: each LB keeps only its own share within c x its own mean).
        assert_ne!(figures(&four), figures(&one));
        assert_eq!(four.calls, one.calls);
        // One LB sees every call: a runner within the bound always exists, so it only goes past
        // the bound after a NACK from every runner within it.
        assert!(one.over_bound <= one.nacks, "{one:?}");
    }

    #[test]
    fn views_add_up_to_the_runners_and_every_call_is_counted_once() {
        let saturated = SimOptions {
            runners: 3,
            capacity: 2,
            rate_per_s: 1000.0,
            calls: 3_000,
            warmup_calls: 200,
            ..SimOptions::default()
        };
        for opts in [small(), saturated] {
            for placer in PLACERS {
                for lbs in [1, 2, 4] {
                    let mut steps = 0_usize;
                    let r = simulate_observed(&opts, placer, lbs, &mut |runners, views| {
                        steps += 1;
                        assert_eq!(views.len(), lbs);
                        for (i, runner) in runners.iter().enumerate() {
                            let seen: u64 = views.iter().map(|v| v.load(i)).sum();
                            assert_eq!(seen, runner.load(), "{placer} {lbs} LBs runner {i}");
                        }
                    })
                    .unwrap();
                    assert_eq!(steps, opts.warmup_calls + opts.calls);
                    assert_eq!(r.calls, opts.calls as u64);
                    assert_eq!(r.warm_hits + r.cold_starts + r.rejected, r.calls, "{r:?}");
                    assert_eq!(r.calls_per_lb.len(), lbs);
                    assert_eq!(r.calls_per_lb.iter().sum::<u64>(), r.calls);
                    // Uniform spread: each LB within 10% of its share.
                    let share = r.calls as f64 / lbs as f64;
                    for &n in &r.calls_per_lb {
                        assert!((n as f64 - share).abs() < 0.1 * share, "{:?}", r.calls_per_lb);
                    }
                }
            }
        }
    }

    #[test]
    fn several_lbs_are_deterministic_for_a_seed() {
        let opts = SimOptions {
            calls: 3_000,
            warmup_calls: 500,
            ..SimOptions::default()
        };
        let a = simulate(&opts, "ch-bounded", 4).unwrap();
        assert_eq!(a, simulate(&opts, "ch-bounded", 4).unwrap());
        let b = simulate(&SimOptions { seed: 7, ..opts }, "ch-bounded", 4).unwrap();
        assert_ne!(a, b);
        assert!(matches!(
            simulate(&opts, "ch", 0),
            Err(SimError::Param { name: "lbs", .. })
        ));
    }
}
