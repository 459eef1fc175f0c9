//! Eviction of idle containers of *other* functions when a launch finds no room: idle containers
//! register here; a launch short of memory/CPU picks, oldest first, idle containers whose sum covers
//! the shortfall, fires them only if it can be covered in full, and waits until they are gone.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferrofn_common::lock::LockExt;
use tokio_util::sync::CancellationToken;

use super::resources::Shortfall;
use super::slots::{SlotKey, SlotQueue};

/// How long a launch waits for its victims to release their resources.
const EVICTION_WAIT: Duration = Duration::from_secs(10);

struct Entry {
    container: String,
    queue: Arc<SlotQueue>,
    memory_mb: u64,
    cpu_milli: u64,
    evict: CancellationToken,
    gone: CancellationToken,
}

/// Registry of evictable containers (each checked for idleness when a launch needs room).
#[derive(Default)]
pub struct Evictor {
    entries: Mutex<Vec<Entry>>,
}

impl std::fmt::Debug for Evictor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Evictor")
            .field("entries", &self.entries.lock_unpoisoned().len())
            .finish()
    }
}

impl Evictor {
    /// Registers a container for its whole life. Zero-sized containers are never evictable.
    pub(crate) fn register(
        &self,
        container: String,
        queue: Arc<SlotQueue>,
        memory_mb: u64,
        cpu_milli: u64,
        evict: CancellationToken,
        gone: CancellationToken,
    ) {
        if memory_mb == 0 && cpu_milli == 0 {
            return;
        }
        self.entries.lock_unpoisoned().push(Entry {
            container,
            queue,
            memory_mb,
            cpu_milli,
            evict,
            gone,
        });
    }

    /// Removes a registration (the container is leaving).
    pub(crate) fn unregister(&self, container: &str) {
        self.entries
            .lock_unpoisoned()
            .retain(|e| e.container != container);
    }

    /// Evicts idle containers not in `requester` until `need` is covered; waits for them to be gone.
    /// Returns false (evicting nothing) when the idle containers cannot cover the need.
    pub(crate) async fn evict_for(&self, requester: &SlotKey, need: Shortfall) -> bool {
        let victims: Vec<CancellationToken> = {
            let entries = self.entries.lock_unpoisoned();
            let (mut mem, mut cpu) = (0u64, 0u64);
            let mut chosen = Vec::new();
            for e in entries.iter() {
                if mem >= need.memory_mb && cpu >= need.cpu_milli {
                    break;
                }
                if e.queue.key() == requester
                    || !e.queue.is_container_idle(&e.container)
                    || e.evict.is_cancelled()
                {
                    continue;
                }
                mem += e.memory_mb;
                cpu += e.cpu_milli;
                chosen.push(e);
            }
            if mem < need.memory_mb || cpu < need.cpu_milli {
                return false;
            }
            chosen
                .into_iter()
                .map(|e| {
                    e.evict.cancel();
                    e.gone.clone()
                })
                .collect()
        };
        tracing::info!(
            victims = victims.len(),
            need_mb = need.memory_mb,
            need_mcpu = need.cpu_milli,
            "evicting idle containers"
        );
        crate::metrics::evictions(victims.len() as u64);
        let all_gone = futures::future::join_all(victims.iter().map(|g| g.cancelled()));
        tokio::time::timeout(EVICTION_WAIT, all_gone).await.is_ok()
    }
}
