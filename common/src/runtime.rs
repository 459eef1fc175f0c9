//! The tokio runtime of the LB and the runner, and how many worker threads it gets.
//!
//! By default a node gets one worker per CPU it may run on (tokio's own default).
//! `FERROFN_WORKER_THREADS` (or tokio's `TOKIO_WORKER_THREADS`) sets another count. Fewer workers
//! trade failover latency for CPU, as measured with `make bench` on a 2-vCPU machine
//! (BENCHMARKS.md, round 3 continued):
//! - one worker per LB and runner instead of two cut the CPU per call of LB + runners from a
//!   median of ~348 us to ~272 us, and raised calls/s at 16 clients;
//! - but in the compose cluster's network-partition test, a call sent to the cut-off runner then
//!   took 407-433 ms to be served elsewhere in 3 of 6 runs (the test's limit: 350 ms), against
//!   218-295 ms in 3 of 3 runs with two workers.
//!
//! So one worker is an operator's choice for small nodes, not the default.

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
    tracing::info!(workers, cpus, "tokio runtime");
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
