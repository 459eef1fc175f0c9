//! The runner's Prometheus metrics (through the `metrics` facade; rendered on `/metrics` by the
//! recorder the binary installs). Names are prefixed `ferrofn_runner_`.
//!
//! A leaf of the crate: it takes plain names and numbers and imports no other module, so the
//! agent, the driver, engage and the service all record into it without any of them depending on
//! each other through it.

use std::time::Duration;

/// A call ended; `outcome` is `ok`, `nack`, `canceled` (the LB reset the stream) or the error's HTTP
/// code.
pub fn call_finished(outcome: &str, elapsed: Duration) {
    metrics::counter!("ferrofn_runner_calls_total", "outcome" => outcome.to_string()).increment(1);
    metrics::histogram!("ferrofn_runner_call_duration_seconds", "outcome" => outcome.to_string())
        .record(elapsed.as_secs_f64());
}

/// A NACK (503) was decided, with why.
pub fn nack(reason: &'static str) {
    metrics::counter!("ferrofn_runner_nacks_total", "reason" => reason).increment(1);
}

/// A container was started (a cold start).
pub fn container_started() {
    metrics::counter!("ferrofn_runner_cold_starts_total").increment(1);
    metrics::gauge!("ferrofn_runner_containers").increment(1.0);
}

/// A container was removed.
pub fn container_removed() {
    metrics::gauge!("ferrofn_runner_containers").decrement(1.0);
}

/// Idle containers evicted to make room.
pub fn evictions(n: u64) {
    metrics::counter!("ferrofn_runner_evictions_total").increment(n);
}

/// A frozen container was thawed for a call, and how long that took.
pub fn unpause(elapsed: Duration) {
    metrics::histogram!("ferrofn_runner_unpause_seconds").record(elapsed.as_secs_f64());
}

/// One Docker API operation (create+attach+start is `start`) finished, successfully or not.
pub fn docker_op(op: &'static str, elapsed: Duration, ok: bool) {
    let result = if ok { "ok" } else { "error" };
    metrics::histogram!("ferrofn_runner_docker_op_seconds", "op" => op, "result" => result)
        .record(elapsed.as_secs_f64());
}

/// Engage streams now running.
pub fn inflight(n: i64) {
    metrics::gauge!("ferrofn_runner_inflight_calls").set(n as f64);
}

/// Containers by state (`(state, count)`) and calls waiting for one, summed over the agent's queues
/// (set before a scrape).
pub fn pool(containers_by_state: &[(&'static str, usize)], waiting: usize) {
    for &(state, n) in containers_by_state {
        metrics::gauge!("ferrofn_runner_containers_by_state", "state" => state).set(n as f64);
    }
    metrics::gauge!("ferrofn_runner_waiting_calls").set(waiting as f64);
}

/// A TryCall arrived (with NACKs, the ratio TryCalls per served call shows retry traffic).
pub fn try_call() {
    metrics::counter!("ferrofn_runner_trycalls_total").increment(1);
}

/// An LB kept an Engage stream open past the drain limit after its call ended (the runner reset it).
pub fn stream_drain_timeout() {
    metrics::counter!("ferrofn_runner_stream_drain_timeouts_total").increment(1);
}

/// The gRPC server accepted a connection (an LB that loses its connection reconnects: this grows).
pub fn grpc_connection() {
    metrics::counter!("ferrofn_runner_grpc_connections_total").increment(1);
}
