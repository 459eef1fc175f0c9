//! The Docker driver: the only module that talks to the Docker engine (through bollard), and the only
//! one that sees bollard's errors (they leave it as [`EngineError`]s inside a [`DriverError`]).
//! Containers are created hardened as in runner-docker-fdk.md §2, labelled with this runner's name
//! and instance, and swept at start-up (leftovers of a crashed process) and at shutdown.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::models::{ContainerCreateBody, HostConfig, HostConfigLogConfig, ResourcesUlimits};
use bollard::query_parameters::{
    AttachContainerOptions, CreateContainerOptions, CreateImageOptions, ListContainersOptions,
    RemoveContainerOptions, StartContainerOptions, WaitContainerOptions,
};
use futures::StreamExt;
use tracing::{debug, info, warn};

use super::{
    ContainerSpec, Driver, DriverError, DriverFuture, EngineError, IOFS_CONTAINER_PATH, LABEL_MANAGED,
    LABEL_RUNNER, LogChunk, StartedContainer,
};

/// Label naming the process (one random id per start) that created a container.
pub const LABEL_INSTANCE: &str = "ferrofn.instance";

/// Docker's errors become [`EngineError`]s here, at the edge: the status code of the engine's
/// answer, and bollard's text unchanged (it reaches clients inside 500 / pull-failure messages).
impl From<bollard::errors::Error> for EngineError {
    fn from(e: bollard::errors::Error) -> Self {
        let status = match &e {
            bollard::errors::Error::DockerResponseServerError { status_code, .. } => Some(*status_code),
            _ => None,
        };
        EngineError {
            status,
            message: e.to_string(),
        }
    }
}

/// Container settings that come from the runner's configuration (not from the call).
#[derive(Debug, Clone)]
pub struct DockerDriverConfig {
    /// Value of the `ferrofn.runner` label: names this runner across restarts.
    pub runner_name: String,
    /// Value of the `ferrofn.instance` label: this process.
    pub instance_id: String,
    /// `FN_MAX_PIDS`.
    pub max_pids: i64,
    /// `FN_DOCKER_NETWORKS`: networks to attach containers to (round robin); empty = no network.
    pub networks: Vec<String>,
    /// Ulimits (nofile, memlock, sigpending, msgqueue), soft = hard.
    pub ulimits: Vec<(String, i64)>,
}

impl DockerDriverConfig {
    /// Fn's defaults for the limits, with the given runner name and instance id.
    pub fn new(runner_name: impl Into<String>, instance_id: impl Into<String>) -> Self {
        DockerDriverConfig {
            runner_name: runner_name.into(),
            instance_id: instance_id.into(),
            max_pids: 50,
            networks: Vec::new(),
            ulimits: vec![
                ("nofile".into(), 350),
                ("memlock".into(), 65536),
                ("sigpending".into(), 5000),
                ("msgqueue".into(), 819200),
            ],
        }
    }
}

/// [`Driver`] over a Docker engine.
pub struct DockerDriver {
    docker: Docker,
    cfg: DockerDriverConfig,
    next_network: AtomicUsize,
}

impl std::fmt::Debug for DockerDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerDriver")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl DockerDriver {
    /// Connects with the local defaults (`DOCKER_HOST` or `/var/run/docker.sock`) and negotiates the
    /// API version, so a 20.10 engine (API 1.41) is spoken to in its own version.
    pub async fn connect(cfg: DockerDriverConfig) -> Result<Self, DriverError> {
        let docker = Docker::connect_with_local_defaults()
            .map_err(|e| DriverError::Connect(e.into()))?
            .with_timeout(Duration::from_secs(60));
        let docker = docker
            .negotiate_version()
            .await
            .map_err(|e| DriverError::Negotiate(e.into()))?;
        Ok(DockerDriver {
            docker,
            cfg,
            next_network: AtomicUsize::new(0),
        })
    }

    /// The driver's configuration.
    pub fn config(&self) -> &DockerDriverConfig {
        &self.cfg
    }

    /// The container body of runner-docker-fdk.md §2 for `spec`.
    pub fn container_body(&self, spec: &ContainerSpec) -> ContainerCreateBody {
        let memory = (spec.memory_mb > 0).then(|| (spec.memory_mb as i64) * 1024 * 1024);
        let (cpu_quota, cpu_period) = if spec.cpus_milli > 0 {
            (Some(spec.cpus_milli as i64 * 100), Some(100_000))
        } else {
            (None, None)
        };
        // The rootfs is read-only, so /tmp is always a tmpfs; a size only when the call asks.
        let tmpfs_opts = if spec.tmpfs_size_mb > 0 {
            format!("size={}m", spec.tmpfs_size_mb)
        } else {
            String::new()
        };
        let network_mode = if spec.network_disabled || self.cfg.networks.is_empty() {
            "none".to_string()
        } else {
            let i = self.next_network.fetch_add(1, Ordering::Relaxed);
            self.cfg.networks[i % self.cfg.networks.len()].clone()
        };
        let host_config = HostConfig {
            binds: Some(vec![format!(
                "{}:{}",
                spec.iofs_docker_path.display(),
                IOFS_CONTAINER_PATH
            )]),
            tmpfs: Some(HashMap::from([("/tmp".to_string(), tmpfs_opts)])),
            memory,
            memory_swap: memory,
            memory_swappiness: Some(0),
            cpu_quota,
            cpu_period,
            pids_limit: Some(self.cfg.max_pids),
            ulimits: Some(
                self.cfg
                    .ulimits
                    .iter()
                    .map(|(name, v)| ResourcesUlimits {
                        name: Some(name.clone()),
                        soft: Some(*v),
                        hard: Some(*v),
                    })
                    .collect(),
            ),
            readonly_rootfs: Some(true),
            cap_drop: Some(vec!["all".to_string()]),
            security_opt: Some(vec!["no-new-privileges".to_string()]),
            init: Some(true),
            network_mode: Some(network_mode),
            // Output is read through attach and logged by the runner; the daemon keeps no copy
            // (Fn's "none" driver when the app has no syslog URL), so long-lived containers do not
            // fill the disk.
            log_config: Some(HostConfigLogConfig {
                typ: Some("none".to_string()),
                config: None,
            }),
            ..Default::default()
        };
        let labels = HashMap::from([
            (LABEL_MANAGED.to_string(), "true".to_string()),
            (LABEL_RUNNER.to_string(), self.cfg.runner_name.clone()),
            (LABEL_INSTANCE.to_string(), self.cfg.instance_id.clone()),
            ("ferrofn.app_id".to_string(), spec.app_id.clone()),
            ("ferrofn.fn_id".to_string(), spec.fn_id.clone()),
        ]);
        ContainerCreateBody {
            image: Some(spec.image.clone()),
            env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            user: Some("1000:1000".to_string()),
            labels: Some(labels),
            attach_stdin: Some(false),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            open_stdin: Some(false),
            tty: Some(false),
            host_config: Some(host_config),
            ..Default::default()
        }
    }

    async fn list_labelled(&self, filter: &str) -> Result<Vec<String>, DriverError> {
        let filters = HashMap::from([("label".to_string(), vec![filter.to_string()])]);
        let opts = ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        };
        let list =
            self.docker
                .list_containers(Some(opts))
                .await
                .map_err(|source| DriverError::ListContainers {
                    label: filter.to_string(),
                    source: source.into(),
                })?;
        Ok(list.into_iter().filter_map(|c| c.id).collect())
    }

    /// Removes only the containers of this process (shutdown).
    pub async fn remove_own(&self) -> Result<usize, DriverError> {
        let ids = self
            .list_labelled(&format!("{LABEL_INSTANCE}={}", self.cfg.instance_id))
            .await?;
        let mut n = 0;
        for id in ids {
            match self.remove_impl(&id).await {
                Ok(()) => n += 1,
                Err(e) => warn!(error = %e, "shutdown sweep"),
            }
        }
        Ok(n)
    }
}

fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }
    )
}

impl DockerDriver {
    async fn ensure_image_impl(&self, image: &str) -> Result<(), DriverError> {
        match self.docker.inspect_image(image).await {
            Ok(_) => return Ok(()),
            Err(e) if is_not_found(&e) => {}
            Err(source) => {
                return Err(DriverError::InspectImage {
                    image: image.to_string(),
                    source: source.into(),
                });
            }
        }
        info!(image, "image missing, pulling");
        let opts = CreateImageOptions {
            from_image: Some(image.to_string()),
            ..Default::default()
        };
        let mut pull = self.docker.create_image(Some(opts), None, None);
        while let Some(item) = pull.next().await {
            item.map_err(|source| DriverError::PullImage {
                image: image.to_string(),
                source: source.into(),
            })?;
        }
        match self.docker.inspect_image(image).await {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Err(DriverError::ImageStillMissing {
                image: image.to_string(),
            }),
            Err(source) => Err(DriverError::InspectImage {
                image: image.to_string(),
                source: source.into(),
            }),
        }
    }

    async fn start_impl(&self, spec: &ContainerSpec) -> Result<StartedContainer, DriverError> {
        let body = self.container_body(spec);
        let opts = CreateContainerOptions {
            name: Some(spec.name.clone()),
            ..Default::default()
        };
        let created = self
            .docker
            .create_container(Some(opts), body)
            .await
            .map_err(|source| DriverError::CreateContainer {
                name: spec.name.clone(),
                image: spec.image.clone(),
                source: source.into(),
            })?;
        let id = created.id;
        // Attach before start so that no early output (an init failure's message) is lost.
        let attach_opts = AttachContainerOptions {
            stdout: true,
            stderr: true,
            stream: true,
            logs: false,
            ..Default::default()
        };
        let attached = match self.docker.attach_container(&id, Some(attach_opts)).await {
            Ok(a) => a,
            Err(source) => {
                let _ = self.remove_impl(&id).await;
                return Err(DriverError::AttachContainer {
                    name: spec.name.clone(),
                    image: spec.image.clone(),
                    source: source.into(),
                });
            }
        };
        if let Err(source) = self
            .docker
            .start_container(&id, None::<StartContainerOptions>)
            .await
        {
            let _ = self.remove_impl(&id).await;
            return Err(DriverError::StartContainer {
                name: spec.name.clone(),
                image: spec.image.clone(),
                source: source.into(),
            });
        }
        debug!(container = %id, image = %spec.image, "container started");
        let logs = attached
            .output
            .take_while(|r| futures::future::ready(r.is_ok()))
            .filter_map(|r| {
                futures::future::ready(match r {
                    Ok(LogOutput::StdOut { message }) | Ok(LogOutput::Console { message }) => {
                        Some(LogChunk::Stdout(message))
                    }
                    Ok(LogOutput::StdErr { message }) => Some(LogChunk::Stderr(message)),
                    _ => None,
                })
            });
        Ok(StartedContainer {
            id,
            logs: Box::pin(logs),
        })
    }

    async fn wait_impl(&self, id: &str) -> Result<i64, DriverError> {
        let opts = WaitContainerOptions {
            condition: "not-running".to_string(),
        };
        let mut stream = self.docker.wait_container(id, Some(opts));
        match stream.next().await {
            Some(Ok(resp)) => Ok(resp.status_code),
            // bollard reports a non-zero exit as an error carrying the code.
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => Ok(code),
            Some(Err(source)) => Err(DriverError::WaitContainer {
                id: id.to_string(),
                source: source.into(),
            }),
            None => Err(DriverError::WaitEnded { id: id.to_string() }),
        }
    }

    async fn pause_impl(&self, id: &str) -> Result<(), DriverError> {
        self.docker
            .pause_container(id)
            .await
            .map_err(|source| DriverError::PauseContainer {
                id: id.to_string(),
                source: source.into(),
            })
    }

    async fn unpause_impl(&self, id: &str) -> Result<(), DriverError> {
        self.docker
            .unpause_container(id)
            .await
            .map_err(|source| DriverError::UnpauseContainer {
                id: id.to_string(),
                source: source.into(),
            })
    }

    async fn remove_impl(&self, id: &str) -> Result<(), DriverError> {
        let opts = RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        match self.docker.remove_container(id, Some(opts)).await {
            Ok(()) => Ok(()),
            // Already gone (removed by a concurrent sweep): the goal is reached.
            Err(e) if is_not_found(&e) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 409,
                message,
            }) if message.contains("already in progress") => Ok(()),
            Err(source) => Err(DriverError::RemoveContainer {
                id: id.to_string(),
                source: source.into(),
            }),
        }
    }

    async fn sweep_impl(&self) -> Result<usize, DriverError> {
        let ids = self
            .list_labelled(&format!("{LABEL_RUNNER}={}", self.cfg.runner_name))
            .await?;
        let mut n = 0;
        for id in ids {
            match self.remove_impl(&id).await {
                Ok(()) => n += 1,
                Err(e) => warn!(error = %e, "sweep of leftover container failed"),
            }
        }
        if n > 0 {
            info!(removed = n, runner = %self.cfg.runner_name, "removed leftover containers");
        }
        Ok(n)
    }
}

/// Runs one Docker operation and records its latency (`ferrofn_runner_docker_op_seconds{op}`).
async fn timed<T>(
    op: &'static str,
    call: impl std::future::Future<Output = Result<T, DriverError>>,
) -> Result<T, DriverError> {
    let started = std::time::Instant::now();
    let result = call.await;
    crate::metrics::docker_op(op, started.elapsed(), result.is_ok());
    result
}

impl Driver for DockerDriver {
    fn ensure_image<'a>(&'a self, image: &'a str) -> DriverFuture<'a, Result<(), DriverError>> {
        Box::pin(timed("ensure_image", self.ensure_image_impl(image)))
    }
    fn start<'a>(
        &'a self,
        spec: &'a ContainerSpec,
    ) -> DriverFuture<'a, Result<StartedContainer, DriverError>> {
        Box::pin(timed("start", self.start_impl(spec)))
    }
    // Not timed: it lasts as long as the container lives.
    fn wait<'a>(&'a self, id: &'a str) -> DriverFuture<'a, Result<i64, DriverError>> {
        Box::pin(self.wait_impl(id))
    }
    fn pause<'a>(&'a self, id: &'a str) -> DriverFuture<'a, Result<(), DriverError>> {
        Box::pin(timed("pause", self.pause_impl(id)))
    }
    fn unpause<'a>(&'a self, id: &'a str) -> DriverFuture<'a, Result<(), DriverError>> {
        Box::pin(timed("unpause", self.unpause_impl(id)))
    }
    fn remove<'a>(&'a self, id: &'a str) -> DriverFuture<'a, Result<(), DriverError>> {
        Box::pin(timed("remove", self.remove_impl(id)))
    }
    fn sweep(&self) -> DriverFuture<'_, Result<usize, DriverError>> {
        Box::pin(self.sweep_impl())
    }
    fn sweep_own(&self) -> DriverFuture<'_, Result<usize, DriverError>> {
        Box::pin(self.remove_own())
    }
    fn ping(&self) -> DriverFuture<'_, bool> {
        Box::pin(async move { self.docker.ping().await.is_ok() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_errors_keep_the_status_and_bollards_text() {
        let answered = bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            message: "manifest unknown".into(),
        };
        let text = answered.to_string();
        let e = EngineError::from(answered);
        assert_eq!(e.status, Some(404));
        assert_eq!(e.message, text);
        assert_eq!(
            e.to_string(),
            "Docker responded with status code 404: manifest unknown"
        );

        let unanswered = bollard::errors::Error::RequestTimeoutError;
        let text = unanswered.to_string();
        let e = EngineError::from(unanswered);
        assert_eq!((e.status, e.message), (None, text));
    }

    #[test]
    fn driver_errors_name_the_operation_and_its_object() {
        let e = DriverError::PauseContainer {
            id: "abc".into(),
            source: bollard::errors::Error::DockerResponseServerError {
                status_code: 409,
                message: "container abc is not running".into(),
            }
            .into(),
        };
        assert_eq!(
            e.to_string(),
            "cannot pause container abc: Docker responded with status code 409: container abc is not running"
        );
        assert!(std::error::Error::source(&e).is_some());
    }
}
