//! The gRPC face of the runner: the `RunnerProtocol` impl (Engage -> [`crate::engage`], Status /
//! Status2 -> [`crate::status`], ConfigureRunner answers OK with an empty `ConfigStatus` as Fn's
//! runner does without a configuration function, StreamLogs UNIMPLEMENTED), `grpc.health.v1` and
//! reflection on the same port, the `/metrics` HTTP listener, and [`start`], which wires it all up.
//!
//! The service sits on top: it calls [`crate::health`] (the grpc health status and the Docker
//! watch) and, on shutdown, [`crate::drain`], which sets NOT_SERVING through `health` itself;
//! nothing below calls back into the service.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ferrofn_common::shutdown::Shutdown;
use ferrofn_common::tls::{ReloadingServerTls, TlsFiles};
use ferrofn_proto::runner_protocol_server::{RunnerProtocol, RunnerProtocolServer};
use ferrofn_proto::{
    ClientMsg, ConfigMsg, ConfigStatus, LogRequestMsg, LogResponseMsg, RunnerMsg, RunnerStatus,
};
use futures::StreamExt;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tonic_health::ServingStatus;
use tracing::{info, warn};

use crate::agent::{Agent, AgentConfig, Capacity};
use crate::config::RunnerSettings;
use crate::driver::{DockerDriver, DockerDriverConfig, Driver};
use crate::engage::{Counters, EngageContext};
use crate::fdk::FdkLimits;
use crate::health::set_health;
use crate::iofs::IofsConfig;
use crate::status::{StatusChecker, struct_to_json};

/// How often the health loop pings Docker.
const HEALTH_INTERVAL: Duration = Duration::from_secs(2);

/// The `RunnerProtocol` service.
#[derive(Debug, Clone)]
pub struct RunnerService {
    ctx: EngageContext,
    status: Arc<StatusChecker>,
}

impl RunnerService {
    /// A service over `ctx`, answering Status with `status`.
    pub fn new(ctx: EngageContext, status: Arc<StatusChecker>) -> Self {
        RunnerService { ctx, status }
    }
}

#[tonic::async_trait]
impl RunnerProtocol for RunnerService {
    type EngageStream = ReceiverStream<Result<RunnerMsg, Status>>;
    type StreamLogsStream = ReceiverStream<Result<LogResponseMsg, Status>>;

    async fn engage(
        &self,
        request: Request<Streaming<ClientMsg>>,
    ) -> Result<Response<Self::EngageStream>, Status> {
        let meta = crate::engage::StreamMeta::from_metadata(request.metadata());
        let (rx, answered) = crate::engage::engage(self.ctx.clone(), request.into_inner(), meta);
        // The headers wait only for what the call knows without waiting (its ack when a slot is
        // free): then they leave in one write with it.
        let _ = answered.await;
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn status(&self, _request: Request<()>) -> Result<Response<RunnerStatus>, Status> {
        Ok(Response::new(self.status.status("{}".to_string()).await))
    }

    /// ferrofn has no configuration function: like Fn's runner without one, the message is logged
    /// and acknowledged, so an LB that sends it does not take the runner for a broken one.
    async fn configure_runner(&self, request: Request<ConfigMsg>) -> Result<Response<ConfigStatus>, Status> {
        // Keys only: the values may be credentials.
        let keys: Vec<&String> = request.get_ref().config.keys().collect();
        warn!(
            ?keys,
            "ConfigureRunner received but no configuration function is set; ignored"
        );
        Ok(Response::new(ConfigStatus {}))
    }

    async fn stream_logs(
        &self,
        _request: Request<Streaming<LogRequestMsg>>,
    ) -> Result<Response<Self::StreamLogsStream>, Status> {
        Err(Status::unimplemented(
            "StreamLogs is not supported by ferrofn-runner (logs go to tracing)",
        ))
    }

    async fn status2(&self, request: Request<prost_types::Struct>) -> Result<Response<RunnerStatus>, Status> {
        Ok(Response::new(
            self.status.status(struct_to_json(request.get_ref())).await,
        ))
    }
}

/// A failure to start the runner.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Docker is not reachable.
    #[error(transparent)]
    Docker(#[from] crate::driver::DriverError),
    /// A listener could not be bound.
    #[error("cannot bind {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    /// mTLS is on but files are missing.
    #[error(
        "mTLS needs --tls-ca, --tls-cert and --tls-key (FERROFN_TLS_CA / FERROFN_TLS_CERT / FERROFN_TLS_KEY), or --plaintext"
    )]
    TlsFilesMissing,
    /// The TLS files are unusable.
    #[error("cannot load the TLS files: {0}")]
    Tls(#[source] ferrofn_common::tls::TlsError),
    /// Reflection could not be built.
    #[error("cannot build gRPC reflection: {0}")]
    Reflection(#[source] tonic_reflection::server::Error),
}

/// A running runner.
#[derive(Debug)]
pub struct RunningRunner {
    /// Where gRPC listens.
    pub grpc_addr: SocketAddr,
    /// Where `/metrics` listens.
    pub http_addr: SocketAddr,
    /// The agent (for in-process tests).
    pub agent: Agent,
    /// Ends after the drain, when both servers have stopped.
    pub task: JoinHandle<()>,
}

/// HTTP/2 receive window per Engage stream, explicit rather than hyper's server default (1 MiB):
/// streamed request bodies measured faster with it (BENCHMARKS.md, "Round 2"); the LB's channel
/// sets the same.
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
/// HTTP/2 receive window per connection (one LB connection carries all its calls).
const CONNECTION_WINDOW: u32 = 8 * 1024 * 1024;

/// Streams one LB connection may carry at once. Calls waiting for a slot are cheap on the runner
/// (no container, a few KiB of state), and a limit below the LB's concurrency would park calls in
/// the LB's HTTP/2 layer, invisible to both sides' metrics and deadlines; memory, not this, bounds
/// what runs.
const MAX_CONCURRENT_STREAMS: u32 = 4096;
/// Server-side HTTP/2 pings: a dead LB's streams (and the slots its calls wait for) are released
/// within interval + timeout. The LB pings every 5 s on its own.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// h2's limit on streams reset by the runner's own HTTP/2 layer (protocol errors) is kept at its
/// default on purpose: in normal operation the runner resets nothing (every Engage stream is read
/// to its end, see `engage::drain_inbound`), so it only stops hostile or broken peers.
const MAX_LOCAL_ERROR_RESETS: usize = 1024;
/// Streams the LB may reset before the runner has accepted them, per connection, before the
/// runner ends the connection (GOAWAY `too_many_resets`; h2's default is 20, a guard against rapid
/// reset). A ferrofn LB resets every stream a runner leaves unanswered past its answer timeout:
/// on a runner too loaded to accept its streams for that long (256 clients on 3 debug-build
/// runners on 2 vCPUs), dozens at once. With 20 the runner then dropped the LB's connection and
/// the calls it was running failed with 502 (load test, `load_three_runners_mtls`). The peer is
/// an authenticated LB, and `MAX_CONCURRENT_STREAMS` still bounds what it can open.
const MAX_PENDING_ACCEPT_RESETS: usize = 1024;
/// Largest gRPC message taken from an LB (tonic's default, as grpc-go's on Fn's runner): data frames
/// are at most 10 KiB, and a TryCall's call JSON carries the request headers and the fn's config. A
/// larger message is refused by its length prefix, before it is read, and its stream ends with
/// OUT_OF_RANGE (`engage::run_stream`).
pub const MAX_MESSAGE_SIZE: usize = 4 * 1024 * 1024;

/// The gRPC services on one port: `RunnerProtocol`, `grpc.health.v1` and reflection (v1).
pub fn grpc_router(
    service: RunnerService,
    health: tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
) -> Result<tonic::transport::server::Router, StartError> {
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(ferrofn_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(StartError::Reflection)?;
    Ok(tonic::transport::Server::builder()
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .http2_max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS))
        .http2_max_pending_accept_reset_streams(Some(MAX_PENDING_ACCEPT_RESETS))
        .add_service(health)
        .add_service(reflection)
        .add_service(RunnerProtocolServer::new(service).max_decoding_message_size(MAX_MESSAGE_SIZE)))
}

/// Starts the runner: Docker (with the start-up sweep), agent, gRPC and HTTP listeners. On
/// `shutdown` it drains (see [`crate::drain`]) and then stops both servers.
pub async fn start(settings: &RunnerSettings, shutdown: Shutdown) -> Result<RunningRunner, StartError> {
    let runner_name = settings.effective_runner_name();
    let instance = ferrofn_common::id::new_id().to_ascii_lowercase();
    let mut dcfg = DockerDriverConfig::new(runner_name.clone(), instance.clone());
    dcfg.max_pids = settings.max_pids;
    dcfg.networks = settings.networks();
    let driver = Arc::new(DockerDriver::connect(dcfg).await?);
    driver.sweep().await?;
    let driver: Arc<dyn Driver> = driver;

    let capacity = Capacity::detect(settings.max_total_memory_bytes, settings.max_total_cpu_mcpus);
    let agent_cfg = AgentConfig {
        iofs: IofsConfig {
            root: settings.iofs_root(),
            docker_root: (!settings.iofs_docker_path.is_empty())
                .then(|| PathBuf::from(&settings.iofs_docker_path)),
            prefix: crate::iofs::dir_prefix(&runner_name),
        },
        hot_start_timeout: Duration::from_millis(settings.hot_start_timeout_msecs),
        hot_poll: Duration::from_millis(settings.hot_poll_msecs.max(1)),
        max_starting: match settings.max_starting_containers {
            0 => usize::MAX,
            n => usize::try_from(n).unwrap_or(usize::MAX),
        },
        freeze_idle: settings.freeze_idle(),
        fdk_limits: FdkLimits {
            max_body: settings.max_response_size,
            max_header: settings.max_hdr_response_size as usize,
        },
        max_log_bytes: settings.max_log_size_bytes as usize,
        capacity,
    };
    // The containers of a crashed earlier process are gone (swept above): so are their socket dirs.
    let stale_dirs = crate::iofs::sweep_leftovers(&agent_cfg.iofs);
    if stale_dirs > 0 {
        tracing::info!(removed = stale_dirs, runner = %runner_name, "removed leftover iofs dirs");
    }
    let agent = Agent::new(driver.clone(), agent_cfg);
    let counters = Arc::new(Counters::default());
    let draining = CancellationToken::new();
    let status_image = (!settings.status_image.is_empty()).then(|| settings.status_image.clone());
    let ctx = EngageContext {
        agent: agent.clone(),
        status_image: status_image.clone(),
        counters: counters.clone(),
        draining: draining.clone(),
    };
    let status = Arc::new(StatusChecker::new(agent.clone(), status_image, counters.clone()));
    let service = RunnerService::new(ctx, status);

    let (reporter, health_service) = tonic_health::server::health_reporter();
    set_health(&reporter, ServingStatus::Serving).await;
    tokio::spawn(crate::health::watch_docker(
        reporter.clone(),
        driver.clone(),
        draining.clone(),
        HEALTH_INTERVAL,
    ));

    let grpc_bind = format!("{}:{}", settings.listen_address, settings.grpc_port);
    let grpc_listener = TcpListener::bind(&grpc_bind)
        .await
        .map_err(|source| StartError::Bind {
            addr: grpc_bind.clone(),
            source,
        })?;
    let grpc_addr = grpc_listener.local_addr().map_err(|source| StartError::Bind {
        addr: grpc_bind,
        source,
    })?;
    let http_bind = format!("{}:{}", settings.listen_address, settings.port);
    let http_listener = TcpListener::bind(&http_bind)
        .await
        .map_err(|source| StartError::Bind {
            addr: http_bind.clone(),
            source,
        })?;
    let http_addr = http_listener.local_addr().map_err(|source| StartError::Bind {
        addr: http_bind,
        source,
    })?;

    let stop_servers = CancellationToken::new();
    let router = grpc_router(service, health_service)?;
    let grpc_task = if settings.plaintext {
        warn!(%grpc_addr, "serving PLAINTEXT gRPC: any client can run functions here (use mTLS outside trusted networks)");
        let stop = stop_servers.clone();
        tokio::spawn(async move {
            // Without TCP_NODELAY small response frames wait for delayed ACKs (tens of ms per call).
            let incoming = tonic::transport::server::TcpIncoming::from(grpc_listener)
                .with_nodelay(Some(true))
                .inspect(|c| {
                    if c.is_ok() {
                        crate::metrics::grpc_connection();
                    }
                });
            if let Err(e) = router
                .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
                .await
            {
                warn!(error = %e, "gRPC server failed");
            }
        })
    } else {
        if settings.tls.ca.as_os_str().is_empty()
            || settings.tls.cert.as_os_str().is_empty()
            || settings.tls.key.as_os_str().is_empty()
        {
            return Err(StartError::TlsFilesMissing);
        }
        let tls = ReloadingServerTls::new(TlsFiles::new(
            &settings.tls.ca,
            &settings.tls.cert,
            &settings.tls.key,
        ))
        .map_err(StartError::Tls)?;
        info!(%grpc_addr, "serving gRPC over mTLS");
        let stop = stop_servers.clone();
        tokio::spawn(async move {
            let incoming = tls.incoming(grpc_listener).inspect(|c| {
                if c.is_ok() {
                    crate::metrics::grpc_connection();
                }
            });
            if let Err(e) = router
                .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
                .await
            {
                warn!(error = %e, "gRPC server failed");
            }
        })
    };
    let http_task = {
        let stop = stop_servers.clone();
        let app = axum::Router::new()
            .route("/metrics", {
                let agent = agent.clone();
                axum::routing::get(move || {
                    let agent = agent.clone();
                    async move {
                        let totals = agent.totals();
                        crate::metrics::pool(&totals.containers_by_state(), totals.waiting);
                        ferrofn_common::telemetry::render_metrics()
                    }
                })
            })
            .route(
                "/version",
                axum::routing::get(|| async { format!("{{\"version\":\"{}\"}}", env!("CARGO_PKG_VERSION")) }),
            )
            .route(
                "/health/live",
                axum::routing::get(|| async { axum::Json(serde_json::json!({"status": "live"})) }),
            )
            .route("/health/ready", {
                let health = Arc::new(tonic_health::server::HealthService::from_health_reporter(
                    reporter.clone(),
                ));
                axum::routing::get(move || {
                    let health = health.clone();
                    async move { crate::health::ready_answer(&health).await }
                })
            });
        tokio::spawn(async move {
            let served = axum::serve(http_listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
            if let Err(e) = served {
                warn!(error = %e, "metrics server failed");
            }
        })
    };
    info!(%grpc_addr, %http_addr, runner = %runner_name, instance = %instance, "runner started");

    let task = {
        let agent = agent.clone();
        let grace = Duration::from_millis(settings.drain_grace_msecs);
        tokio::spawn(async move {
            shutdown.cancelled().await;
            crate::drain::drain(&agent, &counters, &draining, &reporter, grace).await;
            stop_servers.cancel();
            let _ = grpc_task.await;
            let _ = http_task.await;
            info!("runner stopped");
        })
    };
    Ok(RunningRunner {
        grpc_addr,
        http_addr,
        agent,
        task,
    })
}

#[cfg(test)]
mod tests {
    use ferrofn_proto::health::HealthCheckRequest;

    use super::*;
    use crate::driver::fake::PingOnlyDriver;

    /// The gRPC router over a driver that starts no container, serving on a loopback port.
    struct TestServer {
        addr: SocketAddr,
        stop: CancellationToken,
        server: JoinHandle<Result<(), tonic::transport::Error>>,
        _tmp: tempfile::TempDir,
    }

    impl TestServer {
        async fn channel(&self) -> tonic::transport::Channel {
            tonic::transport::Channel::from_shared(format!("http://{}", self.addr))
                .unwrap()
                .connect()
                .await
                .unwrap()
        }

        async fn stop(self) {
            self.stop.cancel();
            self.server.await.unwrap().unwrap();
        }
    }

    async fn test_server() -> TestServer {
        let tmp = tempfile::tempdir().unwrap();
        let driver: Arc<dyn Driver> = Arc::new(PingOnlyDriver::up());
        let cfg = AgentConfig {
            iofs: IofsConfig {
                root: tmp.path().to_path_buf(),
                docker_root: None,
                prefix: crate::iofs::dir_prefix("test"),
            },
            hot_start_timeout: Duration::from_secs(1),
            hot_poll: Duration::from_millis(200),
            max_starting: 8,
            freeze_idle: None,
            fdk_limits: FdkLimits::default(),
            max_log_bytes: 1024,
            capacity: Capacity {
                memory_mb: 1024,
                cpu_milli: 1000,
            },
        };
        let agent = Agent::new(driver, cfg);
        let counters = Arc::new(Counters::default());
        let ctx = EngageContext {
            agent: agent.clone(),
            status_image: None,
            counters: counters.clone(),
            draining: CancellationToken::new(),
        };
        let service = RunnerService::new(ctx, Arc::new(StatusChecker::new(agent, None, counters)));
        let (reporter, health) = tonic_health::server::health_reporter();
        set_health(&reporter, ServingStatus::Serving).await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let router = grpc_router(service, health).unwrap();
        let server = tokio::spawn(router.serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener),
            stop.clone().cancelled_owned(),
        ));
        TestServer {
            addr,
            stop,
            server,
            _tmp: tmp,
        }
    }

    #[tokio::test]
    async fn one_port_serves_runner_protocol_health_and_reflection() {
        use tonic_reflection::pb::v1::ServerReflectionRequest;
        use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

        let server = test_server().await;
        let channel = server.channel().await;

        let mut reflection = ServerReflectionClient::new(channel.clone());
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut answers = reflection
            .server_reflection_info(tokio_stream::iter(vec![req]))
            .await
            .unwrap()
            .into_inner();
        let answer = answers.message().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
            panic!("unexpected reflection answer {answer:?}");
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        assert!(names.contains(&"RunnerProtocol".to_string()), "{names:?}");
        assert!(names.contains(&"grpc.health.v1.Health".to_string()), "{names:?}");

        let mut client = ferrofn_proto::runner_protocol_client::RunnerProtocolClient::new(channel.clone());
        #[allow(deprecated)]
        let status = client.status(()).await.unwrap().into_inner();
        assert_eq!(
            status
                .custom_status
                .get(ferrofn_proto::ext::CAPABILITIES_KEY)
                .map(String::as_str),
            Some("accept-ack,frames")
        );
        let config = ferrofn_proto::ConfigMsg {
            config: [("some".to_string(), "setting".to_string())].into(),
        };
        let answer = client.configure_runner(config).await.unwrap().into_inner();
        assert_eq!(answer, ferrofn_proto::ConfigStatus {});
        let e = client
            .stream_logs(tokio_stream::iter(Vec::<ferrofn_proto::LogRequestMsg>::new()))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unimplemented);
        let mut h = ferrofn_proto::health::health_client::HealthClient::new(channel);
        let s = h
            .check(HealthCheckRequest {
                service: "RunnerProtocol".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(s.status, ServingStatus::Serving as i32);
        server.stop().await;
    }

    /// A message over the gRPC size limit ends its stream with OUT_OF_RANGE (it used to end with an
    /// empty OK stream), is refused by its length prefix, and leaves the connection serving.
    #[tokio::test]
    async fn a_try_call_over_the_size_limit_ends_the_stream_with_out_of_range() {
        let server = test_server().await;
        let mut client =
            ferrofn_proto::runner_protocol_client::RunnerProtocolClient::new(server.channel().await);
        let huge = ferrofn_proto::ClientMsg {
            body: Some(ferrofn_proto::client_msg::Body::Try(ferrofn_proto::TryCall {
                models_call_json: "x".repeat(5 << 20),
                ..Default::default()
            })),
        };
        let mut answers = client
            .engage(tokio_stream::iter(vec![huge]))
            .await
            .unwrap()
            .into_inner();
        let status = answers
            .message()
            .await
            .expect_err("a status, not an empty OK stream");
        assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");
        assert!(
            status.message().contains("message length too large"),
            "{status:?}"
        );
        #[allow(deprecated)]
        let served = client.status(()).await;
        assert!(served.is_ok(), "the connection still serves: {served:?}");
        server.stop().await;
    }
}
