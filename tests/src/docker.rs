//! Access to the local Docker engine for tests and tools: connect through `DOCKER_HOST` (or the
//! default unix socket), wait for the engine to answer, negotiate the API version (the 20.10 engine
//! rejects bollard's default 1.53), and remove test containers even when a test fails.

use anyhow::{Context, Result, bail};
use bollard::{
    Docker,
    query_parameters::{ListContainersOptionsBuilder, RemoveContainerOptionsBuilder},
};
use std::{
    collections::HashMap,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

/// How long [`connect`] waits for an engine that is still starting.
pub const ENGINE_WAIT: Duration = Duration::from_secs(60);

/// Pause between connection attempts while the engine does not answer.
const RETRY_INTERVAL: Duration = Duration::from_millis(500);

/// The engine address in use, for error messages.
fn engine_address() -> String {
    std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".to_owned())
}

async fn try_connect() -> Result<Docker> {
    let docker = Docker::connect_with_defaults().context("creating the Docker client")?;
    docker.ping().await.context("pinging the engine")?;
    docker
        .negotiate_version()
        .await
        .context("negotiating the Docker API version")
}

/// Connects to the local engine, waiting up to [`ENGINE_WAIT`] for it to answer. A missing engine
/// is an error, never a reason to skip.
pub async fn connect() -> Result<Docker> {
    connect_within(ENGINE_WAIT).await
}

/// [`connect`] with an explicit bound on the wait.
pub async fn connect_within(wait: Duration) -> Result<Docker> {
    let started = Instant::now();
    loop {
        // No event tells us when dockerd comes up, so poll with a bounded deadline.
        match try_connect().await {
            Ok(docker) => return Ok(docker),
            Err(e) if started.elapsed() >= wait => {
                bail!(
                    "the Docker engine at {} did not answer within {wait:?}: {e:#}",
                    engine_address()
                )
            }
            Err(e) => tracing::debug!(error = %format!("{e:#}"), "Docker engine not ready yet"),
        }
        tokio::time::sleep(RETRY_INTERVAL).await;
    }
}

/// Force-removes a container (and its anonymous volumes); a container already gone is fine.
pub async fn remove_container(docker: &Docker, id: &str) -> Result<()> {
    let options = RemoveContainerOptionsBuilder::default()
        .force(true)
        .v(true)
        .build();
    match docker.remove_container(id, Some(options)).await {
        Ok(()) => Ok(()),
        Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing container {id}")),
    }
}

/// Removes containers carrying `label` (`key=value`) that were created more than `min_age` ago:
/// leftovers of test runs that were killed before their guards ran. Younger ones may belong to a
/// run in progress and are left alone. Returns how many were removed.
pub async fn remove_stale_containers(docker: &Docker, label: &str, min_age: Duration) -> Result<usize> {
    let filters = HashMap::from([("label", vec![label])]);
    let options = ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filters)
        .build();
    let containers = docker
        .list_containers(Some(options))
        .await
        .with_context(|| format!("listing containers labelled {label}"))?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64;
    let mut removed = 0;
    for container in containers {
        let (Some(id), Some(created)) = (container.id, container.created) else {
            continue;
        };
        if now - created >= min_age.as_secs() as i64 {
            remove_container(docker, &id).await?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Owns a container for the length of a test: dropping it force-removes the container, also when
/// the test panics. Prefer [`ContainerGuard::remove`] on the success path to see errors.
pub struct ContainerGuard {
    id: Option<String>,
}

impl ContainerGuard {
    /// Takes ownership of container `id`.
    pub fn new(id: impl Into<String>) -> Self {
        ContainerGuard { id: Some(id.into()) }
    }

    /// The container id.
    pub fn id(&self) -> &str {
        self.id.as_deref().unwrap_or_default()
    }

    /// Removes the container now, reporting failures.
    pub async fn remove(mut self, docker: &Docker) -> Result<()> {
        match self.id.take() {
            Some(id) => remove_container(docker, &id).await,
            None => Ok(()),
        }
    }
}

impl Drop for ContainerGuard {
    fn drop(&mut self) {
        let Some(id) = self.id.take() else {
            return;
        };
        // Drop cannot await, and the test's runtime may be gone or single-threaded, so the removal
        // runs on its own thread and runtime with a fresh client.
        let removal = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("building a runtime for container cleanup")?;
            runtime.block_on(async {
                let docker = connect_within(Duration::from_secs(10)).await?;
                remove_container(&docker, &id).await
            })
        });
        match removal.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("container cleanup failed: {e:#}"),
            Err(_) => eprintln!("container cleanup thread panicked"),
        }
    }
}
