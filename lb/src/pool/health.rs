//! The health loop: every interval each runner is probed with `Status` (Fn's RPC; a failed status
//! image marks it down) and `grpc.health.v1` (NOT_SERVING marks it draining; UNIMPLEMENTED, as on an
//! Fn runner, is ignored). Capabilities come from `RunnerStatus.customStatus`.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::Code;

use ferrofn_proto::RunnerStatus;
use ferrofn_proto::health::HealthCheckRequest;
use ferrofn_proto::health::health_check_response::ServingStatus;
use ferrofn_proto::health::health_client::HealthClient;

use super::{Runner, RunnerPool, RunnerState};

use ferrofn_proto::ext::{ACCEPT_ACK, CAPABILITIES_KEY, CAPABILITY_ACCEPT_ACK};

/// Default probe period.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(2);
/// Default budget of one probe RPC.
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// True when a Status reply lists `capability` in its capability list.
pub fn advertises(status: &RunnerStatus, capability: &str) -> bool {
    status
        .custom_status
        .get(CAPABILITIES_KEY)
        .is_some_and(|caps| caps.split(',').any(|c| c.trim() == capability))
}

/// True when a Status reply advertises the accept-ack capability (either the capability list or a
/// `ferrofn-accept-ack` key set to `1`/`true`).
pub fn advertises_accept_ack(status: &RunnerStatus) -> bool {
    let listed = advertises(status, CAPABILITY_ACCEPT_ACK);
    let flag = status
        .custom_status
        .get(ACCEPT_ACK)
        .is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    listed || flag
}

/// The state a probe result implies: `status` is the Status RPC result, `health` the gRPC health
/// result (`None` when not asked).
pub fn judge(
    status: &Result<RunnerStatus, Code>,
    health: Option<Result<ServingStatus, Code>>,
) -> RunnerState {
    match status {
        Ok(s) if s.failed => RunnerState::Down,
        Ok(_) | Err(Code::Unimplemented) => match health {
            Some(Ok(ServingStatus::NotServing)) => RunnerState::Draining,
            // A runner without Status must at least answer health.
            Some(Err(_)) | None if status.is_err() => RunnerState::Down,
            _ => RunnerState::Up,
        },
        Err(_) => RunnerState::Down,
    }
}

async fn health_check(r: &Runner, timeout: Duration) -> Result<ServingStatus, Code> {
    let mut client = HealthClient::new(r.channel());
    for service in ["", ferrofn_proto::SERVICE_NAME] {
        let mut req = tonic::Request::new(HealthCheckRequest {
            service: service.into(),
        });
        req.set_timeout(timeout);
        match within(timeout, client.check(req)).await {
            Ok(resp) => {
                return Ok(
                    ServingStatus::try_from(resp.into_inner().status).unwrap_or(ServingStatus::Unknown)
                );
            }
            Err(s) if s.code() == Code::NotFound => continue,
            Err(s) => return Err(s.code()),
        }
    }
    Err(Code::NotFound)
}

/// Why a probe gave the state it gave, for the log line of a state change.
fn probe_reason(
    status: &Result<RunnerStatus, tonic::Status>,
    health: Option<&Result<ServingStatus, Code>>,
) -> String {
    match (status, health) {
        (Ok(s), _) if s.failed => "the Status RPC reports a failed status check (status image)".into(),
        (Err(e), _) if e.code() != Code::Unimplemented => {
            format!("Status RPC failed: {}", ferrofn_common::exit::grpc_status(e))
        }
        (_, Some(Ok(ServingStatus::NotServing))) => "grpc.health answers NOT_SERVING (draining)".into(),
        (_, Some(Err(code))) => format!("no Status RPC and grpc.health failed ({code:?})"),
        _ => "probe answered".into(),
    }
}

/// `rpc`, failed with DEADLINE_EXCEEDED past `timeout`. The runner honours the `grpc-timeout` a
/// request carries, but one that is cut off never sees it, and the LB's runner connection does not
/// enforce it (tonic's `Channel` did): without this bound a probe of a silent runner would last
/// until the keepalive closes the connection, and hold up the probes of every other runner.
async fn within<T>(
    timeout: Duration,
    rpc: impl std::future::Future<Output = Result<T, tonic::Status>>,
) -> Result<T, tonic::Status> {
    tokio::time::timeout(timeout, rpc).await.unwrap_or_else(|_| {
        Err(tonic::Status::deadline_exceeded(format!(
            "no answer within {timeout:?}"
        )))
    })
}

/// Probes one runner and applies the result.
pub async fn probe(r: &Runner, timeout: Duration) -> RunnerState {
    let mut client = r.client();
    let mut req = tonic::Request::new(());
    req.set_timeout(timeout);
    #[allow(deprecated)] // Fn marks Status deprecated, yet it is the RPC every Fn runner answers.
    let status = within(timeout, client.status(req))
        .await
        .map(tonic::Response::into_inner);
    if let Ok(s) = &status {
        r.set_accept_ack(advertises_accept_ack(s));
        r.set_large_frames(advertises(s, ferrofn_proto::ext::CAPABILITY_FRAMES));
        // It answered on the same connection the Engage streams use.
        r.mark_answered();
    }
    let health = match &status {
        Ok(s) if s.failed => None,
        Ok(_) => Some(health_check(r, timeout).await),
        Err(e) if e.code() == Code::Unimplemented => Some(health_check(r, timeout).await),
        Err(_) => None,
    };
    let codes = status.clone().map_err(|e| e.code());
    let state = judge(&codes, health);
    if let Err(e) = &status {
        tracing::debug!(runner = %r.addr(), code = ?e.code(), "runner status probe failed");
    }
    r.set_state(state, &probe_reason(&status, health.as_ref()));
    r.set_probed();
    state
}

/// Probes every runner once, concurrently.
pub async fn probe_all(pool: &RunnerPool, timeout: Duration) {
    let runners = pool.runners();
    futures::future::join_all(runners.iter().map(|r| probe(r, timeout))).await;
}

/// Probes the runners never probed yet (members that just joined), concurrently.
pub async fn probe_new(pool: &RunnerPool, timeout: Duration) {
    let runners = pool.runners();
    futures::future::join_all(runners.iter().filter(|r| !r.probed()).map(|r| probe(r, timeout))).await;
}

/// Runs the probe loop until `stop` is cancelled.
pub fn spawn_health_loop(
    pool: Arc<RunnerPool>,
    interval: Duration,
    timeout: Duration,
    stop: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => probe_all(&pool, timeout).await,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(failed: bool) -> RunnerStatus {
        RunnerStatus {
            failed,
            ..RunnerStatus::default()
        }
    }

    #[test]
    fn judging_probes() {
        use ServingStatus::*;
        assert_eq!(judge(&Ok(st(false)), Some(Ok(Serving))), RunnerState::Up);
        // An Fn runner has no grpc.health: still up.
        assert_eq!(
            judge(&Ok(st(false)), Some(Err(Code::Unimplemented))),
            RunnerState::Up
        );
        assert_eq!(judge(&Ok(st(false)), Some(Ok(NotServing))), RunnerState::Draining);
        assert_eq!(judge(&Ok(st(true)), None), RunnerState::Down);
        assert_eq!(judge(&Err(Code::Unavailable), None), RunnerState::Down);
        assert_eq!(
            judge(&Err(Code::Unimplemented), Some(Ok(Serving))),
            RunnerState::Up
        );
        assert_eq!(
            judge(&Err(Code::Unimplemented), Some(Err(Code::Unavailable))),
            RunnerState::Down
        );
    }

    #[test]
    fn capability_detection() {
        let mut s = RunnerStatus::default();
        assert!(!advertises_accept_ack(&s));
        s.custom_status
            .insert(CAPABILITIES_KEY.into(), "foo, accept-ack".into());
        assert!(advertises_accept_ack(&s));
        let mut s = RunnerStatus::default();
        s.custom_status.insert("ferrofn-accept-ack".into(), "1".into());
        assert!(advertises_accept_ack(&s));
    }
}
