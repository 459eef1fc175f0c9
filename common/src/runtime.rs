//! The tokio runtime of the LB and the runner, and how many worker threads it gets.
//!
//! By default a node gets one worker per CPU it may run on (tokio's own default).
//! `FERROFN_WORKER_THREADS` (or tokio's `TOKIO_WORKER_THREADS`) sets another count. On a 2-vCPU
//! machine one worker per LB and runner instead of two was measured with `make bench`
//! (BENCHMARKS.md, round 3):
//! - less CPU per call of LB + runners in every pair of runs: a median of ~272 against ~349 us
//!   one afternoon, 362-407 against 437-459 us the next day;
//! - warm latency went either way: p50 0.1 ms lower one afternoon, 0.15-0.3 ms higher the next
//!   day (when the machine's own floor was ~50% slower);
//! - the compose partition test failed in 3 of 6 runs with one worker one afternoon (a call sent
//!   to the cut-off runner served elsewhere after 407-433 ms against a 350 ms limit), and passed
//!   15 of 16 runs the next day (the failure: 385 ms).
//!
//! So one worker is an operator's choice for small nodes that care more for CPU than for latency,
//! not the default.

/// tokio's own variable for the worker count, honoured when ferrofn's setting is left at 0.
pub const TOKIO_WORKER_THREADS: &str = "TOKIO_WORKER_THREADS";

/// Worker threads for a node: `configured` when > 0, else a valid `tokio_env` (tokio's
/// `TOKIO_WORKER_THREADS`), else one per CPU (`cpus`, at least one).
pub fn worker_threads(configured: usize, tokio_env: Option<&str>, cpus: usize) -> usize {
    if configured > 0 {
        return configured;
    }
    if let Some(n) = tokio_env
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|n| *n > 0)
    {
        return n;
    }
    cpus.max(1)
}

/// The multi-thread runtime of a node with [`worker_threads`] workers (timers and I/O enabled).
pub fn build(configured: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let env = std::env::var(TOKIO_WORKER_THREADS).ok();
    let workers = worker_threads(configured, env.as_deref(), cpus);
    let malloc = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
    tracing::info!(workers, cpus, glibc_tunables = %malloc, "tokio runtime");
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_per_cpu_unless_told() {
        assert_eq!(worker_threads(0, None, 2), 2);
        assert_eq!(worker_threads(0, None, 16), 16);
        assert_eq!(worker_threads(0, None, 0), 1);
        // tokio's variable when ferrofn's setting is 0; a bad or zero value is ignored.
        assert_eq!(worker_threads(0, Some("3"), 2), 3);
        assert_eq!(worker_threads(0, Some("0"), 8), 8);
        assert_eq!(worker_threads(0, Some("many"), 8), 8);
        // The setting wins over both.
        assert_eq!(worker_threads(1, Some("3"), 16), 1);
    }

    #[test]
    fn the_runtime_runs_with_one_worker() {
        let rt = build(1).unwrap();
        assert_eq!(rt.metrics().num_workers(), 1);
        assert_eq!(rt.block_on(async { tokio::spawn(async { 7 }).await.unwrap() }), 7);
    }
}
