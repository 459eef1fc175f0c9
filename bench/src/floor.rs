//! The physical floor, measured by the tool itself on the local Docker engine: the function image
//! run directly with a runner's hardened container config, called over its unix socket exactly as
//! a runner calls it (warm latency, streaming echo), and the create + start + socket-ready cost of
//! a fresh container. Every container carries `ferrofn.bench=1` and this run's id, and is removed.

use bollard::{
    Docker,
    container::LogOutput,
    models::{ContainerCreateBody, HostConfig, HostConfigLogConfig, ResourcesUlimits},
    query_parameters::{
        AttachContainerOptionsBuilder, CreateContainerOptionsBuilder, ListContainersOptionsBuilder,
        RemoveContainerOptionsBuilder, StartContainerOptions,
    },
};
use bytes::Bytes;
use futures::StreamExt;
use notify::{RecursiveMode, Watcher};
use serde::{Deserialize, Serialize};
use std::{
    collections::{HashMap, VecDeque},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};
use tokio::sync::mpsc;

use crate::{
    client::{CallTemplate, ClientError, Conn, Endpoint, full_body},
    load::{self, CallTarget, SeqResult},
    progress::Progress,
    relay::RelayChain,
    stats::{CallCounts, Counted, ErrorTally, LatencySummary},
    stream::{self, BodyMode, StreamResult},
};

/// Every container this tool creates carries this label (`=1`).
pub const LABEL: &str = "ferrofn.bench";
/// ... and this one, with the id of the run that created it.
pub const RUN_LABEL: &str = "ferrofn.bench.run";
/// Where the iofs dir is mounted in the container, and the socket the FDK announces in it.
const IOFS_MOUNT: &str = "/tmp/iofs";
const SOCKET_NAME: &str = "lsnr.sock";
/// Byte relays the floor's warm calls also go through by default: as many extra processes as an
/// LB and a runner add to the path.
pub const DEFAULT_RELAYS: usize = 2;
/// Container output lines kept to explain a container that never became ready.
const KEPT_OUTPUT_LINES: usize = 20;

/// A failure of the floor measurement, one variant per step.
#[derive(Debug, thiserror::Error)]
pub enum FloorError {
    #[error("cannot connect to the Docker engine")]
    Connect(#[source] bollard::errors::Error),
    #[error("cannot negotiate the Docker API version")]
    Negotiate(#[source] bollard::errors::Error),
    #[error(
        "cannot inspect image {image} on the local engine (is it built? `cargo run -p ferrofn-tests --bin ferrofn-images`)"
    )]
    Image {
        image: String,
        source: bollard::errors::Error,
    },
    #[error("cannot prepare the iofs dir {path}")]
    Iofs { path: PathBuf, source: std::io::Error },
    #[error("cannot watch the iofs dir {path}")]
    Watch { path: PathBuf, source: notify::Error },
    #[error("creating a container from {image} failed")]
    Create {
        image: String,
        source: bollard::errors::Error,
    },
    #[error("attaching to container {id} failed")]
    Attach {
        id: String,
        source: bollard::errors::Error,
    },
    #[error("starting container {id} failed")]
    Start {
        id: String,
        source: bollard::errors::Error,
    },
    #[error("container {id} did not create {socket} within {waited:?}; its output: {output}")]
    NotReady {
        id: String,
        socket: PathBuf,
        waited: Duration,
        output: String,
    },
    #[error("listing bench containers failed")]
    List(#[source] bollard::errors::Error),
    #[error("removing container {id} failed")]
    Remove {
        id: String,
        source: bollard::errors::Error,
    },
    #[error("starting the byte relays in front of the function's socket failed")]
    Relays(#[source] std::io::Error),
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// What to measure.
#[derive(Debug, Clone)]
pub struct FloorOptions {
    pub image: String,
    /// Measured warm calls.
    pub n: usize,
    pub warmup: usize,
    /// Body of the warm calls.
    pub body: Bytes,
    /// Calls of the sparse floor (the `sparse` pattern on the socket); 0 skips it.
    pub sparse_n: usize,
    /// Idle time between sparse calls.
    pub sparse_gap: Duration,
    pub stream_size: u64,
    pub stream_runs: usize,
    /// Must match the LB stream's mode for the two to be compared.
    pub stream_mode: BodyMode,
    /// Fresh containers for the startup floor.
    pub startup_runs: usize,
    /// Bound on the wait for the socket.
    pub ready_timeout: Duration,
    /// Container memory limit (MB), like a fn's `memory`.
    pub memory_mb: u64,
    /// Byte relays (own processes) to also time the warm calls through; 0 skips that figure.
    pub relays: usize,
}

/// One fresh container, step by step (milliseconds).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StartupRun {
    pub create_ms: f64,
    pub attach_ms: f64,
    pub start_ms: f64,
    /// From `start` returning to `lsnr.sock` appearing.
    pub ready_ms: f64,
    /// Create through socket-ready.
    pub total_ms: f64,
    /// Connect + the first `POST /call` once ready (0 when it failed).
    pub first_call_ms: f64,
    /// `total_ms + first_call_ms`: what a cold call cannot go below (0 when the call failed).
    pub cold_ms: f64,
    /// Why the first call failed (its status, or `"connect"` / `"transport"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_call_failure: Option<String>,
}

/// The startup floor over several fresh containers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StartupFloor {
    /// Failures first: the first calls, one per fresh container.
    #[serde(flatten)]
    pub calls: CallCounts,
    /// The engine steps, over every run.
    pub create: LatencySummary,
    pub start: LatencySummary,
    pub ready: LatencySummary,
    pub total: LatencySummary,
    /// The first call and the cold floor, over the runs whose first call succeeded.
    pub first_call: LatencySummary,
    pub cold: LatencySummary,
    pub runs: Vec<StartupRun>,
}

impl StartupFloor {
    /// Summarises the runs; a run whose first call failed counts as a failed call and has no
    /// first-call or cold figure.
    pub fn from_runs(runs: Vec<StartupRun>) -> Self {
        let summary = |f: fn(&StartupRun) -> f64, only_ok: bool| {
            let mut samples: Vec<Duration> = runs
                .iter()
                .filter(|r| !only_ok || r.first_call_failure.is_none())
                .map(|r| Duration::from_secs_f64(f(r).max(0.0) / 1e3))
                .collect();
            LatencySummary::from_samples(&mut samples)
        };
        let mut failures = ErrorTally::default();
        for cause in runs.iter().filter_map(|r| r.first_call_failure.as_ref()) {
            failures.add(cause.clone());
        }
        let ok = runs.len() as u64 - failures.total();
        StartupFloor {
            calls: CallCounts::new(ok, failures, ErrorTally::default()),
            create: summary(|r| r.create_ms, false),
            start: summary(|r| r.start_ms, false),
            ready: summary(|r| r.ready_ms, false),
            total: summary(|r| r.total_ms, false),
            first_call: summary(|r| r.first_call_ms, true),
            cold: summary(|r| r.cold_ms, true),
            runs,
        }
    }
}

/// The floor figures. A floor with a failed call anywhere (warm, sparse, streaming or first
/// calls) is invalid as a whole: every ratio of the contract is taken against it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FloorResult {
    /// `false` when any of the floor's figures has a failed call.
    pub valid: bool,
    /// Failed calls over all of the floor's figures.
    pub failed: u64,
    pub image: String,
    /// Warm `POST /call` over the unix socket, one keep-alive connection.
    pub call: SeqResult,
    /// The same spaced by an idle gap (`sparse`'s pattern): the function's and the machine's
    /// own wake-up cost after idle, which the LB path pays too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sparse: Option<SeqResult>,
    /// The function container's cgroup CPU per warm call (engine stats; absent if unreadable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_cpu_us_per_call: Option<f64>,
    /// Streaming over the unix socket.
    pub stream: StreamResult,
    pub startup: StartupFloor,
    /// The warm calls again, through byte relays ([`crate::relay`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relayed: Option<RelayedFloor>,
}

/// The floor's warm calls through a chain of byte relays, each its own process: what that many
/// extra processes cost on the path before anything is parsed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RelayedFloor {
    /// Relay processes between the client and the function's socket.
    pub relays: usize,
    pub call: SeqResult,
}

impl FloorResult {
    /// The floor of `image` from its parts, with its overall validity.
    pub fn new(
        image: String,
        call: SeqResult,
        sparse: Option<SeqResult>,
        call_cpu_us_per_call: Option<f64>,
        stream: StreamResult,
        startup: StartupFloor,
    ) -> Self {
        let failed = call.calls.failed
            + sparse.as_ref().map_or(0, |s| s.calls.failed)
            + stream.calls.failed
            + startup.calls.failed;
        FloorResult {
            valid: failed == 0,
            failed,
            image,
            call,
            sparse,
            call_cpu_us_per_call,
            stream,
            startup,
            relayed: None,
        }
    }

    /// Adds the figure through relays (its failed calls count against the floor's validity).
    #[must_use]
    pub fn with_relayed(mut self, relayed: Option<RelayedFloor>) -> Self {
        if let Some(r) = &relayed {
            self.failed += r.call.calls.failed;
            self.valid = self.failed == 0;
        }
        self.relayed = relayed;
        self
    }
}

impl Counted for FloorResult {
    fn failed(&self) -> u64 {
        self.failed
    }
}

/// Launches and removes bench containers on one engine.
pub struct Launcher {
    docker: Docker,
    run_id: String,
    next: AtomicUsize,
}

/// A started container whose socket is ready; [`Launcher::remove`] it when done.
pub struct Hot {
    pub id: String,
    pub socket: PathBuf,
    /// The bind-mounted dir; dropped (deleted) after the container is removed.
    iofs: tempfile::TempDir,
    output: Arc<Mutex<VecDeque<String>>>,
}

impl Launcher {
    /// Connects to the local engine (`DOCKER_HOST` or the default socket) in its API version.
    pub async fn connect() -> Result<Self, FloorError> {
        let docker = Docker::connect_with_local_defaults()
            .map_err(FloorError::Connect)?
            .with_timeout(Duration::from_secs(60));
        let docker = docker.negotiate_version().await.map_err(FloorError::Negotiate)?;
        let run_id = format!(
            "{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis()
        );
        Ok(Launcher {
            docker,
            run_id,
            next: AtomicUsize::new(0),
        })
    }

    /// The id in this run's [`RUN_LABEL`].
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// Fails clearly if the image is missing (nothing can be pulled here).
    pub async fn check_image(&self, image: &str) -> Result<(), FloorError> {
        self.docker
            .inspect_image(image)
            .await
            .map(|_| ())
            .map_err(|source| FloorError::Image {
                image: image.to_owned(),
                source,
            })
    }

    /// The container a runner would create for `image` (runner-docker-fdk.md §2), bench-labelled.
    pub fn container_body(&self, image: &str, memory_mb: u64, iofs: &Path) -> ContainerCreateBody {
        let memory = (memory_mb > 0).then(|| memory_mb as i64 * 1024 * 1024);
        let ulimits = [
            ("nofile", 350),
            ("memlock", 65536),
            ("sigpending", 5000),
            ("msgqueue", 819_200),
        ]
        .into_iter()
        .map(|(name, v)| ResourcesUlimits {
            name: Some(name.into()),
            soft: Some(v),
            hard: Some(v),
        })
        .collect();
        let host_config = HostConfig {
            binds: Some(vec![format!("{}:{IOFS_MOUNT}", iofs.display())]),
            tmpfs: Some(HashMap::from([("/tmp".to_owned(), String::new())])),
            memory,
            memory_swap: memory,
            pids_limit: Some(50),
            ulimits: Some(ulimits),
            readonly_rootfs: Some(true),
            cap_drop: Some(vec!["ALL".into()]),
            security_opt: Some(vec!["no-new-privileges".into()]),
            init: Some(true),
            network_mode: Some("none".into()),
            log_config: Some(HostConfigLogConfig {
                typ: Some("none".into()),
                config: None,
            }),
            ..Default::default()
        };
        let env = [
            format!("FN_LISTENER=unix:{IOFS_MOUNT}/{SOCKET_NAME}"),
            "FN_FORMAT=http-stream".into(),
            format!("FN_MEMORY={memory_mb}"),
            "FN_TYPE=sync".into(),
            "FN_APP_ID=bench".into(),
            "FN_FN_ID=bench".into(),
        ];
        ContainerCreateBody {
            image: Some(image.to_owned()),
            user: Some("1000:1000".into()),
            env: Some(env.to_vec()),
            labels: Some(HashMap::from([
                (LABEL.to_owned(), "1".to_owned()),
                (RUN_LABEL.to_owned(), self.run_id.clone()),
            ])),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            open_stdin: Some(false),
            tty: Some(false),
            host_config: Some(host_config),
            ..Default::default()
        }
    }

    /// Creates, attaches and starts a container and waits for its socket, timing each step.
    pub async fn launch(
        &self,
        image: &str,
        memory_mb: u64,
        ready_timeout: Duration,
    ) -> Result<(Hot, StartupRun), FloorError> {
        let iofs = tempfile::Builder::new()
            .prefix("iofs")
            .tempdir()
            .map_err(|source| FloorError::Iofs {
                path: std::env::temp_dir(),
                source,
            })?;
        // uid 1000 must create its socket here; the umask would strip the bits from mkdir.
        std::fs::set_permissions(iofs.path(), std::fs::Permissions::from_mode(0o777)).map_err(|source| {
            FloorError::Iofs {
                path: iofs.path().to_owned(),
                source,
            }
        })?;
        let socket = iofs.path().join(SOCKET_NAME);
        // Armed before the container exists, so the socket's creation cannot be missed.
        let (tx, mut events) = mpsc::unbounded_channel();
        let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
            let _ = tx.send(ev);
        })
        .map_err(|source| FloorError::Watch {
            path: iofs.path().to_owned(),
            source,
        })?;
        watcher
            .watch(iofs.path(), RecursiveMode::NonRecursive)
            .map_err(|source| FloorError::Watch {
                path: iofs.path().to_owned(),
                source,
            })?;

        let name = format!(
            "ferrofn-bench-{}-{}",
            self.run_id,
            self.next.fetch_add(1, Ordering::Relaxed)
        );
        let body = self.container_body(image, memory_mb, iofs.path());
        let t0 = Instant::now();
        let id = self
            .docker
            .create_container(
                Some(CreateContainerOptionsBuilder::default().name(&name).build()),
                body,
            )
            .await
            .map_err(|source| FloorError::Create {
                image: image.to_owned(),
                source,
            })?
            .id;
        let t_created = Instant::now();
        let hot = Hot {
            id: id.clone(),
            socket: socket.clone(),
            iofs,
            output: Arc::default(),
        };
        let (t_attached, t_started) = match self.attach_and_start(&hot).await {
            Ok(times) => times,
            Err(e) => {
                let _ = self.remove(hot).await;
                return Err(e);
            }
        };
        let ready = tokio::time::timeout(ready_timeout, wait_for_socket(&socket, &mut events)).await;
        // Taken before the watcher is dropped: stopping its thread is not part of the startup.
        let t_ready = Instant::now();
        drop(watcher);
        if !matches!(ready, Ok(true)) {
            let output = hot
                .output
                .lock()
                .map(|lines| lines.iter().cloned().collect::<Vec<_>>().join(" | "))
                .unwrap_or_default();
            let _ = self.remove(hot).await;
            return Err(FloorError::NotReady {
                id,
                socket,
                waited: ready_timeout,
                output: if output.is_empty() {
                    "(none)".into()
                } else {
                    output
                },
            });
        }
        let ms = |a: Instant, b: Instant| crate::units::ms(b.saturating_duration_since(a));
        let run = StartupRun {
            create_ms: ms(t0, t_created),
            attach_ms: ms(t_created, t_attached),
            start_ms: ms(t_attached, t_started),
            ready_ms: ms(t_started, t_ready),
            total_ms: ms(t0, t_ready),
            ..Default::default()
        };
        Ok((hot, run))
    }

    /// Attaches before start (as a runner does, so no early output is lost), then starts; returns
    /// when each step was done.
    async fn attach_and_start(&self, hot: &Hot) -> Result<(Instant, Instant), FloorError> {
        let attach = AttachContainerOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .stream(true)
            .logs(false)
            .build();
        let attached = self
            .docker
            .attach_container(&hot.id, Some(attach))
            .await
            .map_err(|source| FloorError::Attach {
                id: hot.id.clone(),
                source,
            })?;
        let attached_at = Instant::now();
        let output = hot.output.clone();
        let mut stream = attached.output;
        tokio::spawn(async move {
            while let Some(Ok(item)) = stream.next().await {
                let (LogOutput::StdOut { message } | LogOutput::StdErr { message }) = item else {
                    continue;
                };
                if let Ok(mut lines) = output.lock() {
                    lines.extend(String::from_utf8_lossy(&message).lines().map(str::to_owned));
                    while lines.len() > KEPT_OUTPUT_LINES {
                        lines.pop_front();
                    }
                }
            }
        });
        self.docker
            .start_container(&hot.id, None::<StartContainerOptions>)
            .await
            .map_err(|source| FloorError::Start {
                id: hot.id.clone(),
                source,
            })?;
        Ok((attached_at, Instant::now()))
    }

    /// Force-removes a container, then deletes its iofs dir.
    pub async fn remove(&self, hot: Hot) -> Result<(), FloorError> {
        let result = self.remove_id(&hot.id).await;
        drop(hot.iofs);
        result
    }

    async fn remove_id(&self, id: &str) -> Result<(), FloorError> {
        let options = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        match self.docker.remove_container(id, Some(options)).await {
            Ok(()) | Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => {
                Ok(())
            }
            Err(source) => Err(FloorError::Remove {
                id: id.to_owned(),
                source,
            }),
        }
    }

    /// Removes every container of this run still present (after an error or an interrupt).
    pub async fn sweep(&self) -> Result<usize, FloorError> {
        let label = format!("{RUN_LABEL}={}", self.run_id);
        let filters = HashMap::from([("label", vec![label.as_str()])]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let list = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(FloorError::List)?;
        let mut removed = 0;
        for id in list.into_iter().filter_map(|c| c.id) {
            self.remove_id(&id).await?;
            removed += 1;
        }
        Ok(removed)
    }
}

/// `true` once `lsnr.sock` exists and is a socket (the FDK creates it last, as a symlink to its
/// bound phony socket); `false` if the watch ends first.
async fn wait_for_socket(
    socket: &Path,
    events: &mut mpsc::UnboundedReceiver<notify::Result<notify::Event>>,
) -> bool {
    use std::os::unix::fs::FileTypeExt;
    let is_ready = || std::fs::metadata(socket).is_ok_and(|m| m.file_type().is_socket());
    if is_ready() {
        return true;
    }
    while let Some(event) = events.recv().await {
        let names_socket = event.is_ok_and(|ev| ev.paths.iter().any(|p| p.ends_with(SOCKET_NAME)));
        if names_socket && is_ready() {
            return true;
        }
    }
    false
}

/// Connect + one call on a fresh connection to `socket`: the first call a runner makes to a new
/// container. Its failure cause when it fails.
async fn first_call(socket: &Path, body: &Bytes) -> Result<Duration, String> {
    let started = Instant::now();
    let mut conn = Conn::open(Endpoint::Unix(socket.to_owned()))
        .await
        .map_err(|e| e.cause().to_owned())?;
    match conn
        .call(CallTemplate::fdk_call().request(full_body(body.clone())), |_| {})
        .await
    {
        Ok(out) if out.ok() => Ok(started.elapsed()),
        Ok(out) => Err(out.status.to_string()),
        Err(e) => Err(e.cause().to_owned()),
    }
}

/// Runs the whole floor: a hot container for calls and streaming, then the startup runs.
pub async fn measure(launcher: &Launcher, opts: &FloorOptions) -> Result<FloorResult, FloorError> {
    launcher.check_image(&opts.image).await?;
    let (hot, _) = launcher
        .launch(&opts.image, opts.memory_mb, opts.ready_timeout)
        .await?;
    let hot_result = measure_hot(launcher, &hot, opts).await;
    let removed = launcher.remove(hot).await;
    let (call, call_cpu_us_per_call, sparse, stream, relayed) = hot_result?;
    removed?;

    let (progress, line) = Progress::start("floor startup", Some(opts.startup_runs as u64));
    let mut runs = Vec::with_capacity(opts.startup_runs);
    for _ in 0..opts.startup_runs {
        let (hot, mut run) = launcher
            .launch(&opts.image, opts.memory_mb, opts.ready_timeout)
            .await?;
        let first = first_call(&hot.socket, &opts.body).await;
        launcher.remove(hot).await?;
        match first {
            Ok(took) => {
                run.first_call_ms = crate::units::ms(took);
                run.cold_ms = run.total_ms + run.first_call_ms;
            }
            Err(cause) => {
                tracing::debug!(%cause, "first call to a fresh floor container failed");
                run.first_call_failure = Some(cause);
            }
        }
        progress.record(run.first_call_failure.is_none());
        runs.push(run);
    }
    line.finish();
    Ok(FloorResult::new(
        opts.image.clone(),
        call,
        sparse,
        call_cpu_us_per_call,
        stream,
        StartupFloor::from_runs(runs),
    )
    .with_relayed(relayed))
}

async fn measure_hot(
    launcher: &Launcher,
    hot: &Hot,
    opts: &FloorOptions,
) -> Result<
    (
        SeqResult,
        Option<f64>,
        Option<SeqResult>,
        StreamResult,
        Option<RelayedFloor>,
    ),
    FloorError,
> {
    let endpoint = Endpoint::Unix(hot.socket.clone());
    let target = CallTarget {
        endpoint: endpoint.clone(),
        template: CallTemplate::fdk_call(),
        body: opts.body.clone(),
    };
    let (progress, line) = Progress::start("floor calls", Some(opts.n as u64));
    // The warm-up calls run inside the CPU window too, so they are counted in the divisor.
    let cpu_before = crate::cpu::container_cpu_ns(&launcher.docker, &hot.id).await;
    let call = load::sequential(&target, opts.n, opts.warmup, None, &progress).await?;
    let cpu_after = crate::cpu::container_cpu_ns(&launcher.docker, &hot.id).await;
    line.finish();
    let made = call.calls.attempted as usize + call.warmup;
    let cpu = match (cpu_before, cpu_after) {
        (Some(b), Some(a)) if made > 0 => Some(a.saturating_sub(b) as f64 / 1e3 / made as f64),
        _ => None,
    };
    let relayed = if opts.relays > 0 {
        let chain = RelayChain::start(opts.relays, endpoint.clone())
            .await
            .map_err(FloorError::Relays)?;
        let through = CallTarget {
            endpoint: chain.entry.clone(),
            template: CallTemplate::fdk_call(),
            body: opts.body.clone(),
        };
        let (progress, line) = Progress::start("floor calls via relays", Some(opts.n as u64));
        let call = load::sequential(&through, opts.n, opts.warmup, None, &progress).await?;
        line.finish();
        Some(RelayedFloor {
            relays: chain.hops(),
            call,
        })
    } else {
        None
    };
    let sparse = if opts.sparse_n > 0 {
        let (progress, line) = Progress::start("floor sparse", Some(opts.sparse_n as u64));
        let warmup = opts.warmup.min(5);
        let r = load::sequential(&target, opts.sparse_n, warmup, Some(opts.sparse_gap), &progress).await?;
        line.finish();
        Some(r)
    } else {
        None
    };
    let (progress, line) = Progress::start("floor stream", Some(opts.stream_runs as u64));
    let stream = stream::stream(
        &endpoint,
        &CallTemplate::fdk_call(),
        opts.stream_size,
        opts.stream_mode,
        opts.stream_runs,
        &progress,
    )
    .await?;
    line.finish();
    Ok((call, cpu, sparse, stream, relayed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{stream::StreamRun, test_support::flaky_server};

    fn run(total_ms: f64, first_call: Result<f64, &str>) -> StartupRun {
        let (first_call_ms, first_call_failure) = match first_call {
            Ok(ms) => (ms, None),
            Err(cause) => (0.0, Some(cause.to_owned())),
        };
        StartupRun {
            total_ms,
            first_call_ms,
            cold_ms: if first_call_failure.is_none() {
                total_ms + first_call_ms
            } else {
                0.0
            },
            first_call_failure,
            ..Default::default()
        }
    }

    #[test]
    fn startup_counts_failed_first_calls_and_leaves_them_out_of_the_cold_floor() {
        let clean = StartupFloor::from_runs(vec![run(200.0, Ok(2.0)), run(210.0, Ok(1.0))]);
        assert!(clean.calls.valid);
        assert_eq!((clean.calls.attempted, clean.calls.ok), (2, 2));
        assert_eq!(clean.cold.samples, 2);

        let s = StartupFloor::from_runs(vec![
            run(200.0, Ok(2.0)),
            run(300.0, Err("502")),
            run(220.0, Ok(1.0)),
        ]);
        assert!(!s.calls.valid);
        assert_eq!((s.calls.attempted, s.calls.ok, s.calls.failed), (3, 2, 1));
        assert_eq!(s.calls.failures.0.get("502"), Some(&1));
        // The engine steps count every run; the first call and cold floor only the good ones.
        assert_eq!(s.total.samples, 3);
        assert_eq!((s.first_call.samples, s.cold.samples), (2, 2));
        assert!((s.cold.max_ms - 221.0).abs() < 1e-3, "{}", s.cold.max_ms);
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["valid"], false);
        assert_eq!(v["runs"][1]["first_call_failure"], "502");
        assert!(v["runs"][0].get("first_call_failure").is_none());
    }

    #[tokio::test]
    async fn first_call_reports_its_failure_cause() {
        let (_dir, endpoint, _) = flaky_server(2).await;
        let Endpoint::Unix(socket) = endpoint else {
            unreachable!()
        };
        let body = Bytes::from_static(b"{}");
        assert!(first_call(&socket, &body).await.is_ok());
        assert_eq!(first_call(&socket, &body).await, Err("503".to_owned()));
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            first_call(&dir.path().join("none"), &body).await,
            Err("connect".to_owned())
        );
    }

    /// A floor part with `failed` failed calls.
    fn seq_with(failed: u64) -> SeqResult {
        let mut failures = ErrorTally::default();
        for _ in 0..failed {
            failures.add("503");
        }
        SeqResult {
            calls: CallCounts::new(10, failures, ErrorTally::default()),
            ..Default::default()
        }
    }

    fn stream_with(failed: u64) -> StreamResult {
        let mut failures = ErrorTally::default();
        for _ in 0..failed {
            failures.add("transport");
        }
        StreamResult {
            calls: CallCounts::new(1, failures, ErrorTally::default()),
            size_bytes: 1,
            body_mode: BodyMode::Sized,
            up_mb_s: 1.0,
            down_mb_s: 1.0,
            round_trip_mb_s: 1.0,
            runs: Vec::<StreamRun>::new(),
        }
    }

    #[test]
    fn a_floor_with_any_failed_call_is_invalid() {
        let startup = || StartupFloor::from_runs(vec![run(200.0, Ok(2.0))]);
        let clean = FloorResult::new(
            "i".into(),
            seq_with(0),
            Some(seq_with(0)),
            None,
            stream_with(0),
            startup(),
        );
        assert!(clean.valid);
        assert_eq!(clean.failed(), 0);
        let bad = FloorResult::new(
            "i".into(),
            seq_with(0),
            Some(seq_with(2)),
            None,
            stream_with(1),
            startup(),
        );
        assert!(!bad.valid);
        assert_eq!(bad.failed(), 3);
        let first = FloorResult::new(
            "i".into(),
            seq_with(0),
            None,
            None,
            stream_with(0),
            StartupFloor::from_runs(vec![run(200.0, Err("transport"))]),
        );
        assert_eq!((first.valid, first.failed), (false, 1));
        assert_eq!(crate::test_support::json_keys(&bad)[..2], ["valid", "failed"]);
        // The calls through relays count too.
        let relayed = clean.with_relayed(Some(RelayedFloor {
            relays: 2,
            call: seq_with(4),
        }));
        assert_eq!((relayed.valid, relayed.failed), (false, 4));
    }

    #[tokio::test]
    async fn socket_wait_sees_a_symlinked_socket() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join(SOCKET_NAME);
        let (tx, mut events) = mpsc::unbounded_channel();
        let mut watcher = notify::recommended_watcher(move |ev| {
            let _ = tx.send(ev);
        })
        .unwrap();
        watcher.watch(dir.path(), RecursiveMode::NonRecursive).unwrap();
        let d = dir.path().to_owned();
        let fdk = tokio::spawn(async move {
            let listener = tokio::net::UnixListener::bind(d.join("phonylsnr.sock")).unwrap();
            std::os::unix::fs::symlink("phonylsnr.sock", d.join(SOCKET_NAME)).unwrap();
            listener
        });
        let ready = tokio::time::timeout(Duration::from_secs(5), wait_for_socket(&socket, &mut events))
            .await
            .unwrap();
        assert!(ready);
        drop(fdk.await.unwrap());
    }
}
