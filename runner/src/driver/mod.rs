//! The container driver seam: everything the agent needs from a container engine, as one trait.
//! [`docker::DockerDriver`] is the real implementation (the only code that talks to Docker); unit
//! tests of the agent plug in a fake that serves the FDK socket in-process.

pub mod docker;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;

use bytes::Bytes;
use futures::Stream;

pub use docker::{DockerDriver, DockerDriverConfig, DriverError};

/// Path of the iofs directory inside every function container.
pub const IOFS_CONTAINER_PATH: &str = "/tmp/iofs";
/// Label carried by every container this runner creates: `ferrofn.runner=<instance id>`.
pub const LABEL_RUNNER: &str = "ferrofn.runner";
/// Label marking a container as managed by some ferrofn runner.
pub const LABEL_MANAGED: &str = "ferrofn.managed";

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
