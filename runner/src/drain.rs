//! Graceful drain on SIGTERM: health NOT_SERVING, new TryCalls NACKed, in-flight calls finish within a
//! grace period, every container of this process is removed; then the servers may stop.
//!
//! [`crate::service`] calls [`drain`] on shutdown; the drain reaches down to [`crate::health`],
//! [`crate::agent`] and [`crate::engage`]'s counters, never back up to the service.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic_health::server::HealthReporter;
use tracing::{info, warn};

use crate::agent::Agent;
use crate::engage::Counters;

/// How often the drain looks at the in-flight count (there is no event for "count reached 0").
const POLL: Duration = Duration::from_millis(50);

/// Runs the drain. Returns when every container is gone (or the grace period ran out, in which case
/// the remaining containers are force-removed anyway).
pub async fn drain(
    agent: &Agent,
    counters: &Counters,
    draining: &CancellationToken,
    reporter: &HealthReporter,
    grace: Duration,
) {
    info!("draining: NOT_SERVING, new calls are NACKed");
    draining.cancel();
    crate::health::set_not_serving(reporter).await;
    let deadline = tokio::time::Instant::now() + grace;
    while counters.inflight.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(POLL).await;
    }
    let left = counters.inflight.load(Ordering::SeqCst);
    if left > 0 {
        warn!(calls = left, "grace period over with calls still running");
    }
    agent.shutdown();
    if tokio::time::timeout_at(
        deadline.max(tokio::time::Instant::now() + Duration::from_secs(5)),
        agent.wait_drained(),
    )
    .await
    .is_err()
    {
        warn!("containers still tearing down after the grace period");
    }
    match agent.driver().sweep_own().await {
        Ok(0) => {}
        Ok(n) => info!(removed = n, "removed remaining containers"),
        Err(e) => warn!(error = %e, "final container sweep failed"),
    }
    info!("drain complete");
}
