//! The tokio runtime of the LB and the runner, and how many worker threads it gets.
//!
//! By default a node uses half the CPUs it may run on, at least one: one worker on the 2-vCPU
//! machines the benchmarks run on. A call crosses several processes on the same machine (client,
//! LB, runner, function), each wanting a CPU at once; a second worker per process mostly adds
//! hand-offs between threads (wake-ups, work stealing) for the same work. Measured with `make
//! bench` on 2 vCPUs (BENCHMARKS.md, "Round 3, continued" and "Round 3, end"): one worker per LB
//! and runner instead of two cut the CPU per call of LB + runners from a median of ~349 us to
//! ~272 us and raised calls/s at 16 clients. Larger nodes keep several workers;
//! `FERROFN_WORKER_THREADS` (or tokio's own `TOKIO_WORKER_THREADS`) sets the count.
//!
//! One worker was the default once before and was taken back because a call sent to a runner
//! just cut off the network took 407-433 ms to be served elsewhere in 3 of 6 runs of the compose
//! partition test (limit 350 ms). Calls waiting on a runner now all leave it at the first verdict
//! on its silence (lb `engage::judged_silent`), and 13 runs with one worker stayed within
//! 119-326 ms.

/// tokio's own variable for the worker count, honoured when ferrofn's setting is left at 0.
pub const TOKIO_WORKER_THREADS: &str = "TOKIO_WORKER_THREADS";

/// Worker threads for a node: `configured` when > 0, else a valid `tokio_env` (tokio's
/// `TOKIO_WORKER_THREADS`), else half of `cpus`, at least one.
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
    (cpus / 2).max(1)
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
    fn half_the_cpus_unless_told() {
        assert_eq!(worker_threads(0, None, 2), 1);
        assert_eq!(worker_threads(0, None, 1), 1);
        assert_eq!(worker_threads(0, None, 0), 1);
        assert_eq!(worker_threads(0, None, 3), 1);
        assert_eq!(worker_threads(0, None, 16), 8);
        // tokio's variable when ferrofn's setting is 0; a bad or zero value is ignored.
        assert_eq!(worker_threads(0, Some("3"), 2), 3);
        assert_eq!(worker_threads(0, Some("0"), 8), 4);
        assert_eq!(worker_threads(0, Some("many"), 8), 4);
        // The setting wins over both.
        assert_eq!(worker_threads(2, Some("3"), 16), 2);
    }

    #[test]
    fn the_runtime_runs_with_one_worker() {
        let rt = build(1).unwrap();
        assert_eq!(rt.metrics().num_workers(), 1);
        assert_eq!(rt.block_on(async { tokio::spawn(async { 7 }).await.unwrap() }), 7);
    }
}
