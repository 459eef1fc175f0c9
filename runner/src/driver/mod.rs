//! The container driver seam: everything the agent needs from a container engine, as one trait,
//! and its error, [`DriverError`], which carries no engine client type: callers match on which
//! operation failed and on the engine's status code, never on Docker's own errors.
//! [`docker::DockerDriver`] is the real implementation (the only code that talks to Docker); unit
//! tests of the agent plug in a fake that serves the FDK socket in-process.

pub mod docker;
#[cfg(test)]
pub(crate) mod fake;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;

use bytes::Bytes;
use futures::Stream;

pub use docker::{DockerDriver, DockerDriverConfig};

/// Path of the iofs directory inside every function container.
pub const IOFS_CONTAINER_PATH: &str = "/tmp/iofs";
/// Label carried by every container this runner creates: `ferrofn.runner=<instance id>`.
pub const LABEL_RUNNER: &str = "ferrofn.runner";
/// Label marking a container as managed by some ferrofn runner.
pub const LABEL_MANAGED: &str = "ferrofn.managed";

/// What the engine said when one of its operations failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct EngineError {
    /// HTTP status of the engine's answer (404 no such image or container, 409 conflict, a
    /// registry's 4xx relayed during a pull, 5xx); `None` when the engine gave no answer
    /// (unreachable, timed out, unreadable answer).
    pub status: Option<u16>,
    /// The engine client's description, with the engine's own message.
    pub message: String,
}

/// A failed driver operation: one variant per operation, naming what it was done on, with the
/// engine's answer as the source.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The engine could not be reached at all.
    #[error("cannot connect to the Docker engine: {0}")]
    Connect(#[source] EngineError),
    /// API version negotiation failed.
    #[error("cannot negotiate the Docker API version: {0}")]
    Negotiate(#[source] EngineError),
    /// `docker inspect <image>` failed for another reason than "no such image".
    #[error("cannot inspect image {image}: {source}")]
    InspectImage { image: String, source: EngineError },
    /// The image is missing and pulling it failed (a registry's 4xx is in `source.status`).
    #[error("image {image} is not present and pulling it failed: {source}")]
    PullImage { image: String, source: EngineError },
    /// The image is still missing after a successful pull.
    #[error("image {image} is still missing after pulling it")]
    ImageStillMissing { image: String },
    /// `docker create` failed.
    #[error("cannot create container {name} from image {image}: {source}")]
    CreateContainer {
        name: String,
        image: String,
        source: EngineError,
    },
    /// `docker attach` failed.
    #[error("cannot attach to container {name} (image {image}): {source}")]
    AttachContainer {
        name: String,
        image: String,
        source: EngineError,
    },
    /// `docker start` failed.
    #[error("cannot start container {name} (image {image}): {source}")]
    StartContainer {
        name: String,
        image: String,
        source: EngineError,
    },
    /// `docker wait` failed (not a non-zero exit, which is a normal result).
    #[error("cannot wait for container {id}: {source}")]
    WaitContainer { id: String, source: EngineError },
    /// `docker wait` ended without reporting an exit.
    #[error("docker wait on container {id} ended without an exit status")]
    WaitEnded { id: String },
    /// `docker pause` failed.
    #[error("cannot pause container {id}: {source}")]
    PauseContainer { id: String, source: EngineError },
    /// `docker unpause` failed.
    #[error("cannot unpause container {id}: {source}")]
    UnpauseContainer { id: String, source: EngineError },
    /// `docker rm -f -v` failed.
    #[error("cannot remove container {id}: {source}")]
    RemoveContainer { id: String, source: EngineError },
    /// Listing this runner's containers failed.
    #[error("cannot list containers labelled {label}: {source}")]
    ListContainers { label: String, source: EngineError },
}

/// Everything needed to create one hot function container.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    /// Container name (a fresh call-style id).
    pub name: String,
    /// Image reference as stored on the fn.
    pub image: String,
    /// `KEY=VALUE` environment of the container, already complete (`FN_LISTENER`, `FN_FORMAT`, ...).
    pub env: BTreeMap<String, String>,
    /// Memory limit in MB (0 = no limit).
    pub memory_mb: u64,
    /// CPU limit in milli-CPUs (0 = no limit).
    pub cpus_milli: u64,
    /// tmpfs size for `/tmp` in MB (0 = docker default size).
    pub tmpfs_size_mb: u32,
    /// The iofs directory as the Docker daemon sees it (bound at `/tmp/iofs`).
    pub iofs_docker_path: PathBuf,
    /// Run without any network (status calls behind a missing barrier file).
    pub network_disabled: bool,
    /// App / fn ids, for labels.
    pub app_id: String,
    /// Fn id, for labels.
    pub fn_id: String,
}

/// One chunk of container output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogChunk {
    /// From the container's stdout.
    Stdout(Bytes),
    /// From the container's stderr.
    Stderr(Bytes),
}

/// The container's multiplexed stdout/stderr, for as long as it runs.
pub type LogStream = Pin<Box<dyn Stream<Item = LogChunk> + Send>>;

/// A container that has been created, attached and started.
pub struct StartedContainer {
    /// Engine id of the container.
    pub id: String,
    /// Output stream, attached before start so nothing is lost.
    pub logs: LogStream,
}

impl std::fmt::Debug for StartedContainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StartedContainer")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Timings of [`Driver::ensure_image`] + [`Driver::start`], reported in CallFinished / RunnerStatus.
#[derive(Debug, Clone, Copy, Default)]
pub struct LaunchTimings {
    /// Nanoseconds spent inspecting (and pulling) the image.
    pub image_pull_wait_ns: i64,
    /// Nanoseconds spent preparing the container (iofs dir and its watch).
    pub ctr_prep_ns: i64,
    /// Nanoseconds spent creating, attaching and starting the container.
    pub ctr_create_ns: i64,
}

/// Boxed future returned by [`Driver`] methods (the trait is used as `Arc<dyn Driver>`).
pub type DriverFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the agent needs from a container engine. Implementations must be cheap to share (`Arc`).
pub trait Driver: Send + Sync + 'static {
    /// Makes sure `image` exists locally: inspect, and pull only when it is missing.
    fn ensure_image<'a>(&'a self, image: &'a str) -> DriverFuture<'a, Result<(), DriverError>>;

    /// Creates the container, attaches to its output, then starts it.
    fn start<'a>(
        &'a self,
        spec: &'a ContainerSpec,
    ) -> DriverFuture<'a, Result<StartedContainer, DriverError>>;

    /// Resolves when the container has stopped, with its exit code.
    fn wait<'a>(&'a self, id: &'a str) -> DriverFuture<'a, Result<i64, DriverError>>;

    /// Freezes the container (`docker pause`).
    fn pause<'a>(&'a self, id: &'a str) -> DriverFuture<'a, Result<(), DriverError>>;

    /// Thaws the container (`docker unpause`).
    fn unpause<'a>(&'a self, id: &'a str) -> DriverFuture<'a, Result<(), DriverError>>;

    /// Removes the container and its anonymous volumes, killing it if needed.
    fn remove<'a>(&'a self, id: &'a str) -> DriverFuture<'a, Result<(), DriverError>>;

    /// Removes every container left over by an earlier process of this runner (start-up).
    /// Returns how many were removed.
    fn sweep(&self) -> DriverFuture<'_, Result<usize, DriverError>>;

    /// Removes every container created by this process (shutdown). Returns how many were removed.
    fn sweep_own(&self) -> DriverFuture<'_, Result<usize, DriverError>>;

    /// True when the engine answers.
    fn ping(&self) -> DriverFuture<'_, bool>;
}
