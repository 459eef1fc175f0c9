//! The agent: turns an accepted call into a slot on a hot container. It keeps one [`SlotQueue`] per
//! slot key, decides launches (waiters > idle + starting), reserves resources without blocking
//! (evicting other functions' idle containers when short, else 503), and drains on shutdown.

pub mod evictor;
pub mod hot;
pub mod resources;
pub mod slots;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferrofn_common::call::CallModel;
use ferrofn_common::error::FnError;
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

/// Settings of the agent (from the runner's configuration).
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Where iofs dirs are made.
    pub iofs: IofsConfig,
    /// Socket wait bound (`FN_HOT_START_TIMEOUT_MSECS`).
    pub hot_start_timeout: Duration,
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
        let mut queues = self.inner.queues.lock().expect("queues lock");
        // Unused queues are dropped here rather than by a timer: their containers are all gone.
        if queues.len() > 64 {
            queues.retain(|_, q| !q.is_unused());
        }
        queues
            .entry(key.clone())
            .or_insert_with(|| SlotQueue::new(key.clone()))
            .clone()
    }

    /// Counts summed over every queue (for the `ferrofn_runner_containers{state}` gauges).
    pub fn totals(&self) -> QueueStats {
        let queues = self.inner.queues.lock().expect("queues lock");
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
        self.inner
            .queues
            .lock()
            .expect("queues lock")
            .get(key)
            .map(|q| q.stats())
    }

    /// Waits for a slot for `call`: an idle container (most recent first), or a new one. Errors: 503
    /// when there is no room (nothing evictable) or the agent is shutting down; the launch's own error
    /// (init timeout 504, init failure 502, ...) when the container this call launched fails.
    pub async fn get_slot(&self, call: &PreparedCall) -> Result<Slot, FnError> {
        if self.inner.shutdown.is_cancelled() {
            return Err(FnError::server_busy());
        }
        let queue = self.queue_for(&call.key);
        let mut changed = queue.subscribe();
        let mut waiter = queue.add_waiter();
        let mut launches = FuturesUnordered::new();
        loop {
            changed.borrow_and_update();
            match queue.next(&mut waiter) {
                slots::Next::Take(mut slot) => {
                    if let Err(e) = slot.container.thaw().await {
                        tracing::warn!(error = %e, "unpause failed, destroying the container");
                        slot.release(false);
                        waiter.rejoin();
                        continue;
                    }
                    slot.launched_for_this_call = slot.launched_for_this_call && !launches.is_empty();
                    return Ok(slot);
                }
                slots::Next::Launch => match self.launch(&queue, call).await {
                    Ok(rx) => launches.push(rx),
                    // A container this call launched earlier is still starting: wait for it rather
                    // than fail because a second one (asked for by a transient count) does not fit.
                    Err(_) if !launches.is_empty() => queue.launch_aborted(),
                    Err(e) => {
                        // Leave the queue before waking the others, so none of them counts this
                        // call as a waiter and launches on its behalf.
                        drop(waiter);
                        queue.launch_aborted();
                        return Err(e);
                    }
                },
                slots::Next::Wait => {}
            }
            if self.inner.shutdown.is_cancelled() {
                return Err(FnError::server_busy());
            }
            tokio::select! {
                r = changed.changed() => { if r.is_err() { return Err(FnError::internal()); } }
                Some(r) = launches.next(), if !launches.is_empty() => {
                    if let Ok(Err(e)) = r { return Err(e); }
                }
                _ = self.inner.shutdown.cancelled() => return Err(FnError::server_busy()),
            }
        }
    }

    /// Reserves resources (evicting if needed) and spawns the hot container task.
    async fn launch(
        &self,
        queue: &Arc<SlotQueue>,
        call: &PreparedCall,
    ) -> Result<oneshot::Receiver<Result<(), FnError>>, FnError> {
        let m = &call.model;
        let memory = m.memory + u64::from(m.tmpfs_size);
        let reservation = match self.inner.resources.try_reserve(memory, m.cpus.0) {
            Ok(r) => r,
            Err(short) => {
                if !self.inner.evictor.evict_for(&call.key, short).await {
                    crate::metrics::nack("no capacity");
                    return Err(FnError::server_busy());
                }
                self.inner.resources.try_reserve(memory, m.cpus.0).map_err(|_| {
                    crate::metrics::nack("no capacity after eviction");
                    FnError::server_busy()
                })?
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
