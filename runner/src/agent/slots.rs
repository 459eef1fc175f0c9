//! Per-function slot queues: a LIFO stack of idle hot containers, the waiter and starting counts
//! behind the launch decision, and the [`Slot`] lease a call holds on one container (one call at a
//! time). Taking and withdrawing an idle slot happen under the queue lock, so exactly one side wins.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ferrofn_common::call::CallModel;
use sha2::{Digest, Sha256};
use tokio::sync::{oneshot, watch};

use super::hot::ContainerHandle;
use crate::fdk::FdkConn;

/// Identity of a slot queue: calls with equal keys may share containers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SlotKey(pub Vec<u8>);

impl SlotKey {
    /// sha256 over the fields of runner-docker-fdk.md §1.2, in that order, NUL separated; `env` is the
    /// container's final environment.
    pub fn for_call(call: &CallModel, env: &BTreeMap<String, String>) -> SlotKey {
        let mut h = Sha256::new();
        for s in [&call.app_id, &call.syslog_url, &call.fn_id, &call.image] {
            h.update(s.as_bytes());
            h.update([0]);
        }
        h.update((call.timeout as u32).to_le_bytes());
        h.update((call.idle_timeout as u32).to_le_bytes());
        h.update(call.tmpfs_size.to_le_bytes());
        h.update(call.memory.to_le_bytes());
        h.update(call.cpus.0.to_le_bytes());
        h.update([0]);
        for (k, v) in env {
            h.update(k.as_bytes());
            h.update([0]);
            h.update(v.as_bytes());
            h.update([0]);
        }
        h.update([0]);
        for (k, v) in &call.annotations {
            h.update(k.as_bytes());
            h.update([0]);
            h.update(serde_json::to_string(v).unwrap_or_default().as_bytes());
            h.update([0]);
        }
        SlotKey(h.finalize().to_vec())
    }

    /// Short hex form for logs.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..self.0.len().min(6)])
    }
}

/// What the container task hears when its slot's call is over.
#[derive(Debug)]
pub enum SlotReturn {
    /// The slot is idle again under a new token (re-offered synchronously by [`Slot::release`], so
    /// that a caller's next call finds it).
    Reoffered {
        /// Token of the new idle entry.
        token: u64,
        /// Where the next call's return arrives.
        done: oneshot::Receiver<SlotReturn>,
    },
    /// The container must go (an error of §3.7, an abandoned call, death or shutdown).
    Retired,
}

/// A call's exclusive lease on one hot container. Dropping it without [`Slot::release`] destroys the
/// container (the safe default when a call is abandoned half way).
#[derive(Debug)]
pub struct Slot {
    pub(crate) container: Arc<ContainerHandle>,
    pub(crate) queue: Arc<SlotQueue>,
    pub(crate) fdk: Option<FdkConn>,
    pub(crate) done: Option<oneshot::Sender<SlotReturn>>,
    /// Set for the call that triggered this container's launch (its timings go in CallFinished).
    pub(crate) launched_for_this_call: bool,
}

impl Slot {
    /// The container serving the call.
    pub fn container(&self) -> &Arc<ContainerHandle> {
        &self.container
    }

    /// The FDK connection of the container.
    pub fn fdk(&mut self) -> &mut FdkConn {
        self.fdk.as_mut().expect("fdk present until release")
    }

    /// True if this call's get_slot launched the container.
    pub fn launched_for_this_call(&self) -> bool {
        self.launched_for_this_call
    }

    /// Ends the lease: the container goes back on top of its queue's idle stack at once, or is
    /// destroyed when `keep` is false (or it died, or the agent is draining).
    pub fn release(mut self, keep: bool) {
        self.container.end_call();
        let Some(done) = self.done.take() else { return };
        if keep
            && self.container.can_serve_again()
            && let Some(fdk) = self.fdk.take()
        {
            let token = next_token();
            let (next_tx, next_rx) = oneshot::channel();
            let slot = Slot {
                container: self.container.clone(),
                queue: self.queue.clone(),
                fdk: Some(fdk),
                done: Some(next_tx),
                launched_for_this_call: false,
            };
            self.queue.offer(token, slot);
            let _ = done.send(SlotReturn::Reoffered { token, done: next_rx });
            return;
        }
        self.queue.retired_after_call();
        let _ = done.send(SlotReturn::Retired);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(done) = self.done.take() {
            self.container.end_call();
            self.queue.retired_after_call();
            let _ = done.send(SlotReturn::Retired);
        }
    }
}

struct IdleEntry {
    token: u64,
    slot: Slot,
}

#[derive(Default)]
struct QueueState {
    idle: Vec<IdleEntry>,
    waiting: usize,
    starting: usize,
    busy: usize,
}

/// Counts of one queue, for metrics, tests and the launch decision.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Idle containers.
    pub idle: usize,
    /// Calls waiting for a slot.
    pub waiting: usize,
    /// Containers being launched.
    pub starting: usize,
    /// Containers serving a call.
    pub busy: usize,
}

/// What a waiter should do after looking at the queue.
pub(crate) enum Next {
    /// A slot was taken.
    Take(Slot),
    /// Launch one more container (the starting count is already raised).
    Launch,
    /// Wait for a change.
    Wait,
}

/// One function's queue.
pub struct SlotQueue {
    key: SlotKey,
    state: Mutex<QueueState>,
    changed: watch::Sender<u64>,
}

impl std::fmt::Debug for SlotQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlotQueue")
            .field("key", &self.key.short())
            .field("stats", &self.stats())
            .finish()
    }
}

static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);

/// A fresh idle-entry token.
pub(crate) fn next_token() -> u64 {
    NEXT_TOKEN.fetch_add(1, Ordering::Relaxed)
}

impl SlotQueue {
    /// An empty queue.
    pub fn new(key: SlotKey) -> Arc<Self> {
        Arc::new(SlotQueue {
            key,
            state: Mutex::new(QueueState::default()),
            changed: watch::channel(0).0,
        })
    }

    /// The queue's key.
    pub fn key(&self) -> &SlotKey {
        &self.key
    }

    /// Current counts.
    pub fn stats(&self) -> QueueStats {
        let s = self.state.lock().expect("queue lock");
        QueueStats {
            idle: s.idle.len(),
            waiting: s.waiting,
            starting: s.starting,
            busy: s.busy,
        }
    }

    /// A receiver that changes whenever a slot is offered or a launch ends.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    /// Registers a waiter; the guard unregisters it.
    pub(crate) fn add_waiter(self: &Arc<Self>) -> WaiterGuard {
        self.state.lock().expect("queue lock").waiting += 1;
        WaiterGuard {
            queue: self.clone(),
            counted: true,
        }
    }

    /// Takes the most recently idled slot, or decides to launch (`waiting > idle + starting`). A
    /// waiter that takes a slot stops counting as waiting in the same step, so that no other waiter
    /// woken by the same change launches a container on its behalf.
    pub(crate) fn next(&self, waiter: &mut WaiterGuard) -> Next {
        let mut s = self.state.lock().expect("queue lock");
        if waiter.counted
            && let Some(e) = s.idle.pop()
        {
            s.busy += 1;
            s.waiting = s.waiting.saturating_sub(1);
            waiter.counted = false;
            return Next::Take(e.slot);
        }
        if s.waiting > s.starting {
            s.starting += 1;
            return Next::Launch;
        }
        Next::Wait
    }

    /// A launch the waiter decided on did not happen (no capacity).
    pub(crate) fn launch_aborted(&self) {
        let mut s = self.state.lock().expect("queue lock");
        s.starting = s.starting.saturating_sub(1);
        drop(s);
        self.bump();
    }

    /// A launch ended: on success its first slot is offered in the same step, so no waiter sees
    /// neither a starting nor an idle container in between.
    pub(crate) fn launch_ended(&self, first: Option<(u64, Slot)>) {
        let mut s = self.state.lock().expect("queue lock");
        s.starting = s.starting.saturating_sub(1);
        if let Some((token, slot)) = first {
            s.idle.push(IdleEntry { token, slot });
        }
        drop(s);
        self.bump();
    }

    /// Offers an idle slot (after a call).
    pub(crate) fn offer(&self, token: u64, slot: Slot) {
        let mut s = self.state.lock().expect("queue lock");
        s.busy = s.busy.saturating_sub(1);
        s.idle.push(IdleEntry { token, slot });
        drop(s);
        self.bump();
    }

    /// A call returned its slot and the container will not be offered again.
    pub(crate) fn retired_after_call(&self) {
        let mut s = self.state.lock().expect("queue lock");
        s.busy = s.busy.saturating_sub(1);
    }

    /// The container takes its own idle slot back (idle timeout, eviction, shutdown). False means a
    /// call already took it.
    pub(crate) fn withdraw(&self, token: u64) -> bool {
        let mut s = self.state.lock().expect("queue lock");
        let Some(pos) = s.idle.iter().position(|e| e.token == token) else {
            return false;
        };
        let mut slot = s.idle.remove(pos).slot;
        drop(s);
        // The container task itself withdrew it: nobody needs to hear about it.
        slot.done = None;
        true
    }

    /// True while the slot with `token` is idle in the queue.
    pub(crate) fn is_idle(&self, token: u64) -> bool {
        self.state
            .lock()
            .expect("queue lock")
            .idle
            .iter()
            .any(|e| e.token == token)
    }

    /// True while the container `id` sits idle in the queue.
    pub(crate) fn is_container_idle(&self, id: &str) -> bool {
        self.state
            .lock()
            .expect("queue lock")
            .idle
            .iter()
            .any(|e| e.slot.container.id == id)
    }

    /// True when nothing uses the queue (it may be dropped from the map).
    pub(crate) fn is_unused(&self) -> bool {
        let s = self.state.lock().expect("queue lock");
        s.idle.is_empty() && s.waiting == 0 && s.starting == 0 && s.busy == 0
    }
}

/// Unregisters a waiter on drop (the call got a slot, failed, or was cancelled).
pub(crate) struct WaiterGuard {
    queue: Arc<SlotQueue>,
    counted: bool,
}

impl WaiterGuard {
    /// Counts the call as waiting again (the slot it took was unusable).
    pub(crate) fn rejoin(&mut self) {
        if !self.counted {
            self.queue.state.lock().expect("queue lock").waiting += 1;
            self.counted = true;
        }
    }
}

impl Drop for WaiterGuard {
    fn drop(&mut self) {
        if self.counted {
            let mut s = self.queue.state.lock().expect("queue lock");
            s.waiting = s.waiting.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call() -> CallModel {
        CallModel::from_json(r#"{"id":"x","app_id":"a","fn_id":"f","image":"img:1","memory":128,"timeout":30,"idle_timeout":30,"config":{"A":"1"}}"#)
            .unwrap()
    }

    #[test]
    fn key_depends_on_listed_fields_only() {
        let c = call();
        let env = c.config.clone();
        let k = SlotKey::for_call(&c, &env);
        assert_eq!(k.0.len(), 32);
        let mut c2 = c.clone();
        c2.id = "other".into();
        c2.headers.insert("X".into(), vec!["1".into()]);
        c2.method = "PUT".into();
        assert_eq!(
            SlotKey::for_call(&c2, &env),
            k,
            "id, headers, method are not part of the key"
        );
        let mut c3 = c.clone();
        c3.memory = 256;
        assert_ne!(SlotKey::for_call(&c3, &env), k);
        let mut env2 = env.clone();
        env2.insert("B".into(), "2".into());
        assert_ne!(SlotKey::for_call(&c, &env2), k);
        let mut c4 = c.clone();
        c4.annotations.insert("k".into(), serde_json::json!({"a":1}));
        assert_ne!(SlotKey::for_call(&c4, &env), k);
    }

    #[test]
    fn launch_decision_counts_waiters_and_starting() {
        let q = SlotQueue::new(SlotKey(vec![1]));
        let mut w1 = q.add_waiter();
        assert!(matches!(q.next(&mut w1), Next::Launch));
        assert!(
            matches!(q.next(&mut w1), Next::Wait),
            "one waiter, one starting: no second launch"
        );
        let mut w2 = q.add_waiter();
        assert!(matches!(q.next(&mut w2), Next::Launch));
        assert_eq!(
            q.stats(),
            QueueStats {
                idle: 0,
                waiting: 2,
                starting: 2,
                busy: 0
            }
        );
        q.launch_aborted();
        drop((w1, w2));
        assert_eq!(q.stats().waiting, 0);
        assert_eq!(q.stats().starting, 1);
    }
}
