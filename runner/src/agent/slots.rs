//! Per-function slot queues: a LIFO stack of idle hot containers, a FIFO of waiting calls (a
//! returned slot goes straight to the oldest one), the counts and timings behind the launch
//! decision, and the [`Slot`] lease a call holds on one container (one call at a time). Taking and
//! withdrawing an idle slot happen under the queue lock, so exactly one side wins.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferrofn_common::call::CallModel;
use ferrofn_common::lock::LockExt;
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

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
    /// The idle-entry token under which the container task knows this slot.
    pub(crate) token: u64,
    /// When a call started using the slot (for the queue's mean hold time).
    pub(crate) held_since: Option<Instant>,
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

    /// Ends the lease: the container goes to the longest-waiting call of its queue, or back on top of
    /// the idle stack, at once; or it is destroyed when `keep` is false (or it died, or the agent is
    /// draining).
    pub fn release(mut self, keep: bool) {
        self.container.end_call();
        if let Some(since) = self.held_since.take() {
            self.queue.record_hold(since.elapsed());
        }
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
                token,
                held_since: None,
            };
            // Tell the container task first: the next call may hand the slot back at once.
            let _ = done.send(SlotReturn::Reoffered { token, done: next_rx });
            self.queue.offer(slot, true);
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

struct WaiterEntry {
    id: u64,
    tx: oneshot::Sender<Slot>,
}

#[derive(Default)]
struct QueueState {
    idle: Vec<IdleEntry>,
    /// Calls waiting for a slot, oldest first: a returned slot goes to the front one directly.
    waiters: VecDeque<WaiterEntry>,
    starting: usize,
    busy: usize,
    /// Mean time a call holds a slot (moving average), once a call has returned one.
    hold: Option<Duration>,
    /// Mean time from a launch decision to the container's first slot (moving average).
    launch: Option<Duration>,
    /// No launch before this instant: the last one found no room on the node.
    blocked_until: Option<Instant>,
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

impl QueueStats {
    /// The container counts under their state names (the `state` label of the pool gauges).
    pub fn containers_by_state(&self) -> [(&'static str, usize); 3] {
        [
            ("idle", self.idle),
            ("busy", self.busy),
            ("starting", self.starting),
        ]
    }
}

/// What the launch decision needs besides the queue's own state.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LaunchPolicy {
    /// Containers starting at once on the node, all queues together.
    pub max_starting: usize,
    /// Assumed launch time until this queue has measured one.
    pub default_launch: Duration,
}

/// One function's queue.
pub struct SlotQueue {
    key: SlotKey,
    state: Mutex<QueueState>,
    /// Containers starting on the node (shared by every queue of the agent).
    node_starting: Arc<AtomicUsize>,
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

/// A fresh idle-entry token (also used for waiter ids).
pub(crate) fn next_token() -> u64 {
    NEXT_TOKEN.fetch_add(1, Ordering::Relaxed)
}

/// Weight of the newest sample in the moving averages.
fn ewma(old: Option<Duration>, sample: Duration) -> Duration {
    match old {
        None => sample,
        Some(o) => (o * 7 + sample) / 8,
    }
}

impl SlotQueue {
    /// An empty queue with its own count of starting containers.
    pub fn new(key: SlotKey) -> Arc<Self> {
        Self::with_node(key, Arc::new(AtomicUsize::new(0)))
    }

    /// An empty queue sharing the node's count of starting containers.
    pub(crate) fn with_node(key: SlotKey, node_starting: Arc<AtomicUsize>) -> Arc<Self> {
        Arc::new(SlotQueue {
            key,
            state: Mutex::new(QueueState::default()),
            node_starting,
        })
    }

    /// The queue's key.
    pub fn key(&self) -> &SlotKey {
        &self.key
    }

    /// Current counts.
    pub fn stats(&self) -> QueueStats {
        let s = self.state.lock_unpoisoned();
        QueueStats {
            idle: s.idle.len(),
            waiting: s.waiters.len(),
            starting: s.starting,
            busy: s.busy,
        }
    }

    /// Registers a call: it gets the most recently idled slot at once if there is one (then nobody
    /// else is waiting), else it joins the back of the waiters.
    pub(crate) fn join(self: &Arc<Self>) -> Waiter {
        let (tx, rx) = oneshot::channel();
        let id = next_token();
        let mut s = self.state.lock_unpoisoned();
        if let Some(e) = s.idle.pop() {
            s.busy += 1;
            // The receiver is alive: this cannot fail.
            let _ = tx.send(e.slot);
        } else {
            s.waiters.push_back(WaiterEntry { id, tx });
        }
        drop(s);
        Waiter {
            queue: self.clone(),
            id,
            rx,
        }
    }

    /// Whether a waiting call should launch one more container now; if so the starting counts are
    /// raised. A launch is made when calls wait that no starting container will serve, the node has
    /// fewer than `max_starting` starting, and either no container of this queue is busy (none will
    /// come back), nothing is known yet of how long calls hold a slot (Fn's rule: one container per
    /// uncovered waiter), or the last uncovered waiter would wait longer for a busy container to come
    /// back (uncovered x mean hold / busy) than for a launch.
    pub(crate) fn should_launch(&self, now: Instant, policy: LaunchPolicy) -> bool {
        self.decide_launch(now, policy, true)
    }

    /// [`SlotQueue::should_launch`] for a call that just arrived: the block after a launch that
    /// found no room does not apply to it, so that each new call tries once (evicting idle
    /// containers if that makes room) and is NACKed at once if it fails, as in Fn, rather than
    /// waiting for the block to end.
    pub(crate) fn should_launch_new_call(&self, now: Instant, policy: LaunchPolicy) -> bool {
        self.decide_launch(now, policy, false)
    }

    fn decide_launch(&self, now: Instant, policy: LaunchPolicy, respect_block: bool) -> bool {
        let mut s = self.state.lock_unpoisoned();
        if respect_block && s.blocked_until.is_some_and(|t| now < t) {
            return false;
        }
        let uncovered = s.waiters.len().saturating_sub(s.starting);
        if uncovered == 0 {
            return false;
        }
        let needed = match (s.busy, s.hold) {
            (0, _) | (_, None) => true,
            (busy, Some(hold)) => {
                let wait = hold.saturating_mul(uncovered as u32) / busy as u32;
                wait > s.launch.unwrap_or(policy.default_launch)
            }
        };
        if !needed {
            return false;
        }
        let reserved = self
            .node_starting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < policy.max_starting).then_some(n + 1)
            });
        if reserved.is_err() {
            return false;
        }
        s.starting += 1;
        true
    }

    /// A launch decided by [`SlotQueue::should_launch`] did not happen (no room on the node).
    /// Waiters of this queue do not try again before `retry_at`.
    pub(crate) fn launch_aborted(&self, retry_at: Instant) {
        let mut s = self.state.lock_unpoisoned();
        s.starting = s.starting.saturating_sub(1);
        s.blocked_until = Some(retry_at);
        self.node_starting.fetch_sub(1, Ordering::AcqRel);
    }

    /// True while a container of this queue is busy or starting: a waiting call will be served
    /// without a launch of its own.
    pub(crate) fn containers_coming(&self) -> bool {
        let s = self.state.lock_unpoisoned();
        s.busy > 0 || s.starting > 0
    }

    /// A launch ended after `took`: on success its first slot goes to the oldest waiter or the idle
    /// stack in the same step, so no waiter sees neither a starting nor an idle container between.
    pub(crate) fn launch_ended(&self, first: Option<Slot>, took: Duration) {
        let mut s = self.state.lock_unpoisoned();
        s.starting = s.starting.saturating_sub(1);
        self.node_starting.fetch_sub(1, Ordering::AcqRel);
        if let Some(slot) = first {
            s.launch = Some(ewma(s.launch, took));
            s.blocked_until = None;
            Self::offer_locked(&mut s, slot, false);
        }
    }

    /// Hands `slot` to the oldest waiter, else pushes it on the idle stack. `busy` says whether the
    /// slot was counted busy (a call returned it) or is new (a launch).
    fn offer_locked(s: &mut QueueState, mut slot: Slot, busy: bool) {
        while let Some(w) = s.waiters.pop_front() {
            match w.tx.send(slot) {
                Ok(()) => {
                    if !busy {
                        s.busy += 1;
                    }
                    return;
                }
                // That waiter is leaving (its guard removes nothing now): try the next one.
                Err(back) => slot = back,
            }
        }
        if busy {
            s.busy = s.busy.saturating_sub(1);
        }
        s.idle.push(IdleEntry {
            token: slot.token,
            slot,
        });
    }

    /// Offers a slot a call returned (`busy`) or never used.
    pub(crate) fn offer(&self, slot: Slot, busy: bool) {
        let mut s = self.state.lock_unpoisoned();
        Self::offer_locked(&mut s, slot, busy);
    }

    /// Adds a call's slot hold time to the queue's moving average.
    pub(crate) fn record_hold(&self, held: Duration) {
        let mut s = self.state.lock_unpoisoned();
        s.hold = Some(ewma(s.hold, held));
    }

    /// A call returned its slot and the container will not be offered again.
    pub(crate) fn retired_after_call(&self) {
        let mut s = self.state.lock_unpoisoned();
        s.busy = s.busy.saturating_sub(1);
    }

    /// The container takes its own idle slot back (idle timeout, eviction, shutdown). False means a
    /// call already took it.
    pub(crate) fn withdraw(&self, token: u64) -> bool {
        let mut s = self.state.lock_unpoisoned();
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
        self.state.lock_unpoisoned().idle.iter().any(|e| e.token == token)
    }

    /// True while the container `id` sits idle in the queue.
    pub(crate) fn is_container_idle(&self, id: &str) -> bool {
        self.state
            .lock_unpoisoned()
            .idle
            .iter()
            .any(|e| e.slot.container.id == id)
    }

    /// True when nothing uses the queue (it may be dropped from the map).
    pub(crate) fn is_unused(&self) -> bool {
        let s = self.state.lock_unpoisoned();
        s.idle.is_empty() && s.waiters.is_empty() && s.starting == 0 && s.busy == 0
    }
}

/// A call waiting in a queue. Dropping it leaves the queue; a slot handed to it meanwhile goes on to
/// the next waiter (or back to the idle stack) rather than being lost.
pub(crate) struct Waiter {
    queue: Arc<SlotQueue>,
    id: u64,
    rx: oneshot::Receiver<Slot>,
}

impl Waiter {
    /// Waits for the slot handed to this call.
    pub(crate) async fn slot(&mut self) -> Slot {
        match (&mut self.rx).await {
            Ok(slot) => slot,
            // The sender lives in the queue until it sends; the queue outlives the waiter.
            Err(_) => std::future::pending().await,
        }
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        {
            let mut s = self.queue.state.lock_unpoisoned();
            if let Some(pos) = s.waiters.iter().position(|w| w.id == self.id) {
                s.waiters.remove(pos);
            }
        }
        if let Ok(slot) = self.rx.try_recv() {
            // Handed over just before this call left: never used, it goes on to the next call
            // under a new token, so that the container's idle timers start afresh.
            slot.release(true);
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

    const POLICY: LaunchPolicy = LaunchPolicy {
        max_starting: 8,
        default_launch: Duration::from_millis(250),
    };

    #[test]
    fn launch_decision_counts_waiters_and_starting() {
        let q = SlotQueue::new(SlotKey(vec![1]));
        let now = Instant::now();
        let w1 = q.join();
        assert!(q.should_launch(now, POLICY), "nothing to wait for: launch");
        assert!(
            !q.should_launch(now, POLICY),
            "one waiter, one starting: no second launch"
        );
        let w2 = q.join();
        assert!(q.should_launch(now, POLICY));
        assert_eq!(
            q.stats(),
            QueueStats {
                idle: 0,
                waiting: 2,
                starting: 2,
                busy: 0
            }
        );
        assert_eq!(
            q.stats().containers_by_state(),
            [("idle", 0), ("busy", 0), ("starting", 2)]
        );
        q.launch_aborted(now + Duration::from_millis(200));
        assert!(
            !q.should_launch(now, POLICY),
            "no launch retried before the block ends"
        );
        assert!(q.should_launch(now + Duration::from_millis(200), POLICY));
        drop((w1, w2));
        assert_eq!(q.stats().waiting, 0);
        assert_eq!(q.stats().starting, 2);
    }

    #[test]
    fn node_wide_cap_on_starting_containers() {
        let node = Arc::new(AtomicUsize::new(0));
        let policy = LaunchPolicy {
            max_starting: 2,
            ..POLICY
        };
        let a = SlotQueue::with_node(SlotKey(vec![1]), node.clone());
        let b = SlotQueue::with_node(SlotKey(vec![2]), node.clone());
        let now = Instant::now();
        let _wa = (a.join(), a.join());
        let _wb = b.join();
        assert!(a.should_launch(now, policy));
        assert!(a.should_launch(now, policy));
        assert!(!b.should_launch(now, policy), "two starting on the node already");
        a.launch_ended(None, Duration::from_millis(300));
        assert!(b.should_launch(now, policy), "room again after a launch ended");
        assert_eq!(node.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_new_call_tries_a_launch_despite_the_block() {
        let q = SlotQueue::new(SlotKey(vec![3]));
        let now = Instant::now();
        let w1 = q.join();
        assert!(q.should_launch(now, POLICY));
        q.launch_aborted(now + Duration::from_millis(200));
        assert!(!q.should_launch(now, POLICY), "waiters respect the block");
        let w2 = q.join();
        assert!(
            q.should_launch_new_call(now, POLICY),
            "a new call tries once, so that it can be NACKed at once"
        );
        q.launch_aborted(now + Duration::from_millis(200));
        drop((w1, w2));
    }

    #[test]
    fn no_launch_when_a_busy_container_comes_back_sooner() {
        let q = SlotQueue::new(SlotKey(vec![1]));
        let now = Instant::now();
        {
            let mut s = q.state.lock().unwrap();
            s.busy = 4;
            s.hold = Some(Duration::from_millis(2));
            s.launch = Some(Duration::from_millis(300));
        }
        let waiters: Vec<_> = (0..100).map(|_| q.join()).collect();
        // 100 uncovered waiters x 2 ms / 4 busy = 50 ms < 300 ms launch: wait for the busy ones.
        assert!(!q.should_launch(now, POLICY));
        q.state.lock().unwrap().hold = Some(Duration::from_millis(20));
        // 100 x 20 ms / 4 = 500 ms > 300 ms: a launch pays off.
        assert!(q.should_launch(now, POLICY));
        drop(waiters);
    }
}
