//! The agent: turns an accepted call into a slot on a hot container. It keeps one [`SlotQueue`] per
//! slot key, decides launches (calls waiting beyond what starting containers will serve, and longer
//! than a launch takes; a slow start while a queue knows nothing of its hold time), reserves resources without blocking (evicting other functions' idle
//! containers when short; a call with nothing else to wait for is then NACKed with 503), and drains
//! on shutdown.

pub mod evictor;
pub mod hot;
pub mod resources;
pub mod slots;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferrofn_common::call::CallModel;
use ferrofn_common::error::FnError;
use ferrofn_common::lock::LockExt;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use crate::driver::{ContainerSpec, Driver};
use crate::fdk::FdkLimits;
use crate::iofs::{FN_LISTENER, IofsConfig};
pub use evictor::Evictor;
pub use resources::{Capacity, Resources};
pub use slots::{QueueStats, Slot, SlotKey, SlotQueue};

/// Assumed time from a launch decision to the container's first slot, until a queue has measured
/// its own (a warm image on a small host: 0.2-0.3 s, BENCHMARKS.md "cold").
const DEFAULT_LAUNCH_ESTIMATE: Duration = Duration::from_millis(250);

/// Containers a queue starts at once while none is busy and its hold time is unknown (the first of
/// its slow start, [`SlotQueue::should_launch`]): two rather than one, so that a pair of
/// concurrent calls is served as in Fn and one slow start does not hold up the whole queue, yet
/// few enough that a step of many calls does not make every start slow.
const INITIAL_LAUNCHES: usize = 2;

/// Settings of the agent (from the runner's configuration).
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Where iofs dirs are made.
    pub iofs: IofsConfig,
    /// Socket wait bound (`FN_HOT_START_TIMEOUT_MSECS`).
    pub hot_start_timeout: Duration,
    /// How often a waiting call reconsiders a launch (`FN_HOT_POLL_MSECS`).
    pub hot_poll: Duration,
    /// Containers starting at once, all queues together (`FERROFN_MAX_STARTING_CONTAINERS`).
    pub max_starting: usize,
    /// Idle time before `docker pause` (`FN_FREEZE_IDLE_MSECS`); `None` disables freezing.
    pub freeze_idle: Option<Duration>,
    /// Response caps.
    pub fdk_limits: FdkLimits,
    /// Per-call log cap (`FN_MAX_LOG_SIZE_BYTES`).
    pub max_log_bytes: usize,
    /// Resource pool.
    pub capacity: Capacity,
}

/// A call that passed admission: its container environment and slot key are fixed.
#[derive(Debug, Clone)]
pub struct PreparedCall {
    /// The call model (timestamps reset by the runner).
    pub model: CallModel,
    /// Which queue serves it.
    pub key: SlotKey,
    /// Container environment: the call's config plus `FN_LISTENER` and `FN_FORMAT`.
    pub env: BTreeMap<String, String>,
    /// Run the container without network.
    pub network_disabled: bool,
}

pub(crate) struct AgentInner {
    pub(crate) driver: Arc<dyn Driver>,
    pub(crate) cfg: AgentConfig,
    pub(crate) resources: Arc<Resources>,
    pub(crate) evictor: Evictor,
    pub(crate) queues: Mutex<HashMap<SlotKey, Arc<SlotQueue>>>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) tasks: TaskTracker,
    /// Containers starting now, all queues together.
    pub(crate) starting: Arc<AtomicUsize>,
}

/// The agent handle (cheap to clone).
#[derive(Clone)]
pub struct Agent {
    inner: Arc<AgentInner>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("cfg", &self.inner.cfg)
            .finish_non_exhaustive()
    }
}

impl Agent {
    /// An agent over `driver`.
    pub fn new(driver: Arc<dyn Driver>, cfg: AgentConfig) -> Agent {
        let resources = Resources::new(cfg.capacity);
        Agent {
            inner: Arc::new(AgentInner {
                driver,
                cfg,
                resources,
                evictor: Evictor::default(),
                queues: Mutex::new(HashMap::new()),
                shutdown: CancellationToken::new(),
                tasks: TaskTracker::new(),
                starting: Arc::new(AtomicUsize::new(0)),
            }),
        }
    }

    /// The driver.
    pub fn driver(&self) -> &Arc<dyn Driver> {
        &self.inner.driver
    }

    /// The resource tracker.
    pub fn resources(&self) -> &Arc<Resources> {
        &self.inner.resources
    }

    /// Admission: resource sanity (400 when the call could never fit), environment and slot key.
    /// `slot_hash_id` is the TryCall's hex key (empty = compute ours).
    pub fn prepare(&self, model: CallModel, slot_hash_id: &str) -> Result<PreparedCall, FnError> {
        let memory = model.memory + u64::from(model.tmpfs_size);
        if !self.inner.resources.is_possible(memory, model.cpus.0) {
            return Err(FnError::resource_too_big());
        }
        let mut env = model.config.clone();
        env.insert("FN_LISTENER".into(), FN_LISTENER.into());
        env.insert("FN_FORMAT".into(), "http-stream".into());
        let key = if slot_hash_id.is_empty() {
            SlotKey::for_call(&model, &env)
        } else {
            let bytes = hex::decode(slot_hash_id)
                .map_err(|e| FnError::new(0, format!("invalid slot_hash_id {slot_hash_id:?}: {e}"), false))?;
            SlotKey(bytes)
        };
        Ok(PreparedCall {
            model,
            key,
            env,
            network_disabled: false,
        })
    }

    fn queue_for(&self, key: &SlotKey) -> Arc<SlotQueue> {
        let mut queues = self.inner.queues.lock_unpoisoned();
        // Unused queues are dropped here rather than by a timer: their containers are all gone.
        if queues.len() > 64 {
            queues.retain(|_, q| !q.is_unused());
        }
        queues
            .entry(key.clone())
            .or_insert_with(|| SlotQueue::with_node(key.clone(), self.inner.starting.clone()))
            .clone()
    }

    /// Counts summed over every queue (for the `ferrofn_runner_containers{state}` gauges).
    pub fn totals(&self) -> QueueStats {
        let queues = self.inner.queues.lock_unpoisoned();
        queues
            .values()
            .map(|q| q.stats())
            .fold(QueueStats::default(), |a, b| QueueStats {
                idle: a.idle + b.idle,
                waiting: a.waiting + b.waiting,
                starting: a.starting + b.starting,
                busy: a.busy + b.busy,
            })
    }

    /// Stats of the queue for `key`, if it exists.
    pub fn queue_stats(&self, key: &SlotKey) -> Option<QueueStats> {
        self.inner.queues.lock_unpoisoned().get(key).map(|q| q.stats())
    }

    /// Waits for a slot for `call`: an idle container (most recent first), a busy one of the same
    /// function when it comes back (oldest waiter first), or a new one when the launch decision of
    /// [`SlotQueue::should_launch`] says so (re-made every `hot_poll`). Errors, all before the call
    /// holds a slot: 503 (Fn's NACK) when a launch finds no room on the node (nothing evictable) and
    /// no container of this function is busy or starting that could serve the call instead, when
    /// the wait outlasts the call's timeout, or when the agent shuts down; the launch's own error
    /// (init timeout 504, init failure 502, ...) when the container this call launched fails.
    pub async fn get_slot(&self, call: &PreparedCall) -> Result<Slot, FnError> {
        if self.inner.shutdown.is_cancelled() {
            return Err(FnError::server_busy());
        }
        let queue = self.queue_for(&call.key);
        let cfg = &self.inner.cfg;
        let policy = slots::LaunchPolicy {
            max_starting: cfg.max_starting,
            default_launch: DEFAULT_LAUNCH_ESTIMATE,
            initial_launches: INITIAL_LAUNCHES,
        };
        let wait_limit = Duration::from_secs(u64::try_from(call.model.timeout).unwrap_or(0).max(1));
        let give_up = tokio::time::Instant::now() + wait_limit;
        let mut waiter = queue.join();
        let mut launches = FuturesUnordered::new();
        let mut first_try = true;
        let mut poll = tokio::time::interval(cfg.hot_poll);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                mut slot = waiter.slot() => {
                    if let Err(e) = slot.container.thaw().await {
                        tracing::warn!(error = %e, "unpause failed, destroying the container");
                        slot.release(false);
                        waiter = queue.join();
                        continue;
                    }
                    slot.launched_for_this_call = slot.launched_for_this_call && !launches.is_empty();
                    slot.held_since = Some(Instant::now());
                    return Ok(slot);
                }
                _ = self.inner.shutdown.cancelled() => return Err(FnError::server_busy()),
                Some(r) = launches.next(), if !launches.is_empty() => {
                    // A launch this call made failed: Fn gives that error to the call that asked.
                    if let Ok(Err(e)) = r {
                        return Err(e);
                    }
                    continue;
                }
                _ = tokio::time::sleep_until(give_up) => {
                    crate::metrics::nack("slot wait timeout");
                    return Err(FnError::server_busy());
                }
                _ = poll.tick() => {}
            }
            // One launch at a time per call. The decision counts calls, not who asks, so a call
            // whose launch is still starting could otherwise launch again for another waiter; if
            // its first launch then failed, it would leave with that error while its second went
            // on for nobody, and the waiter it was meant for would launch once more. Waiters
            // without a launch of their own are never fewer than the uncovered ones.
            if !launches.is_empty() {
                continue;
            }
            let now = Instant::now();
            let launch = if first_try {
                first_try = false;
                queue.should_launch_new_call(now, policy)
            } else {
                queue.should_launch(now, policy)
            };
            if !launch {
                continue;
            }
            match self.launch(&queue, call, waiter.id()).await {
                Ok(rx) => launches.push(rx),
                Err(e) => {
                    queue.launch_aborted(Instant::now() + cfg.hot_poll);
                    // No room for another container. A call that a busy or starting container of
                    // its function will serve keeps waiting for it; only a call that nothing could
                    // serve but a launch is NACKed (Fn: the call whose launch failed).
                    if launches.is_empty() && !queue.containers_coming() {
                        crate::metrics::nack("no capacity");
                        // Leave the queue before answering, so no other waiter counts this call.
                        drop(waiter);
                        return Err(e);
                    }
                }
            }
        }
    }

    /// Reserves resources (evicting if needed) and spawns the hot container task. Fails with 503
    /// when there is no room (nothing evictable).
    async fn launch(
        &self,
        queue: &Arc<SlotQueue>,
        call: &PreparedCall,
        launcher: u64,
    ) -> Result<oneshot::Receiver<Result<(), FnError>>, FnError> {
        let decided_at = Instant::now();
        let m = &call.model;
        let memory = m.memory + u64::from(m.tmpfs_size);
        let reservation = match self.inner.resources.try_reserve(memory, m.cpus.0) {
            Ok(r) => r,
            Err(short) => {
                if !self.inner.evictor.evict_for(&call.key, short).await {
                    return Err(FnError::server_busy());
                }
                self.inner
                    .resources
                    .try_reserve(memory, m.cpus.0)
                    .map_err(|_| FnError::server_busy())?
            }
        };
        let spec = ContainerSpec {
            name: format!("ferrofn-{}", ferrofn_common::id::new_id().to_ascii_lowercase()),
            image: m.image.clone(),
            env: call.env.clone(),
            memory_mb: m.memory,
            cpus_milli: m.cpus.0,
            tmpfs_size_mb: m.tmpfs_size,
            iofs_docker_path: Default::default(),
            network_disabled: call.network_disabled,
            app_id: m.app_id.clone(),
            fn_id: m.fn_id.clone(),
        };
        let (init_tx, init_rx) = oneshot::channel();
        let idle = Duration::from_secs(u64::try_from(m.idle_timeout).unwrap_or(0).max(1));
        debug!(queue = %call.key.short(), image = %m.image, "launching a container");
        let req = hot::LaunchRequest {
            queue: queue.clone(),
            spec,
            idle_timeout: idle,
            reservation,
            init_tx,
            first_token: slots::next_token(),
            decided_at,
            launcher,
        };
        self.inner.tasks.spawn(hot::run(self.inner.clone(), req));
        Ok(init_rx)
    }

    /// Starts draining: no new slots; idle containers leave; busy ones leave after their call.
    pub fn shutdown(&self) {
        self.inner.shutdown.cancel();
        self.inner.tasks.close();
    }

    /// True once [`Agent::shutdown`] was called.
    pub fn is_shutting_down(&self) -> bool {
        self.inner.shutdown.is_cancelled()
    }

    /// Waits until every container task has ended (after [`Agent::shutdown`]).
    pub async fn wait_drained(&self) {
        self.inner.tasks.wait().await;
    }

    /// Number of live container tasks.
    pub fn containers(&self) -> usize {
        self.inner.tasks.len()
    }
}

#[cfg(test)]
mod tests;
