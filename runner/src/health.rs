//! The runner's `grpc.health.v1` status ("" and `RunnerProtocol`): SERVING once started,
//! NOT_SERVING while Docker does not answer ([`watch_docker`]) and for good from the start of a
//! drain ([`set_not_serving`]).
//!
//! Below both of its users: [`crate::service`] sets the first status and starts the watch,
//! [`crate::drain`] (which the service calls on shutdown) ends it; this module calls neither.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::server::{HealthReporter, HealthService};
use tracing::{info, warn};

use crate::driver::Driver;

/// Sets the status of the whole server and of `RunnerProtocol` together.
pub(crate) async fn set_health(reporter: &HealthReporter, status: ServingStatus) {
    reporter.set_service_status("", status).await;
    reporter
        .set_service_status(ferrofn_proto::SERVICE_NAME, status)
        .await;
}

/// `GET /health/ready` on the HTTP port: 200 while the gRPC health is SERVING (Docker reachable,
/// not draining), 503 otherwise: the same verdict as the gRPC health an LB probes, for a health
/// check next to the runner that holds no client certificate.
pub(crate) async fn ready_answer(
    health: &HealthService,
) -> (http::StatusCode, axum::Json<serde_json::Value>) {
    use ferrofn_proto::health::HealthCheckRequest;
    use ferrofn_proto::health::health_server::Health;
    let req = tonic::Request::new(HealthCheckRequest {
        service: String::new(),
    });
    let serving = health
        .check(req)
        .await
        .is_ok_and(|r| r.into_inner().status == ServingStatus::Serving as i32);
    if serving {
        (
            http::StatusCode::OK,
            axum::Json(serde_json::json!({"status": "ready"})),
        )
    } else {
        (
            http::StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({"message": "not serving: Docker unreachable or draining"})),
        )
    }
}

/// Marks the runner NOT_SERVING (drain).
pub(crate) async fn set_not_serving(reporter: &HealthReporter) {
    set_health(reporter, ServingStatus::NotServing).await;
}

/// Keeps grpc health in step with Docker: NOT_SERVING while the engine does not answer, SERVING
/// again when it does. Ends when the drain starts (the drain owns the status from then on).
pub(crate) async fn watch_docker(
    reporter: HealthReporter,
    driver: Arc<dyn Driver>,
    draining: CancellationToken,
    interval: Duration,
) {
    let mut last = true;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = draining.cancelled() => return,
        }
        let ok = driver.ping().await;
        if ok != last && !draining.is_cancelled() {
            if ok {
                info!("Docker reachable again: SERVING");
            } else {
                warn!("Docker unreachable: NOT_SERVING");
            }
            set_health(
                &reporter,
                if ok {
                    ServingStatus::Serving
                } else {
                    ServingStatus::NotServing
                },
            )
            .await;
            last = ok;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::driver::fake::PingOnlyDriver;
    use ferrofn_proto::health::HealthCheckRequest;
    use ferrofn_proto::health::health_server::Health;
    use tonic::Request;

    async fn status(svc: &HealthService) -> i32 {
        svc.check(Request::new(HealthCheckRequest {
            service: String::new(),
        }))
        .await
        .unwrap()
        .into_inner()
        .status
    }

    async fn until(svc: &HealthService, want: ServingStatus) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while status(svc).await != want as i32 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "health never became {want:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn health_follows_docker_and_stops_at_drain() {
        let (reporter, _server) = tonic_health::server::health_reporter();
        set_health(&reporter, ServingStatus::Serving).await;
        let svc = HealthService::from_health_reporter(reporter.clone());
        let driver = Arc::new(PingOnlyDriver::up());
        let draining = CancellationToken::new();
        let task = tokio::spawn(watch_docker(
            reporter.clone(),
            driver.clone(),
            draining.clone(),
            Duration::from_millis(10),
        ));
        driver.engine_up.store(false, Ordering::SeqCst);
        until(&svc, ServingStatus::NotServing).await;
        driver.engine_up.store(true, Ordering::SeqCst);
        until(&svc, ServingStatus::Serving).await;
        draining.cancel();
        task.await.unwrap();
        set_not_serving(&reporter).await;
        assert_eq!(status(&svc).await, ServingStatus::NotServing as i32);
    }
}
