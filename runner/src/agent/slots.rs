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
            self.queue.offer(slot, self.token);
            return;
        }
        self.queue.retired_after_call(self.token);
        let _ = done.send(SlotReturn::Retired);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(done) = self.done.take() {
            self.container.end_call();
            self.queue.retired_after_call(self.token);
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
    /// The calls holding a slot now (the slot's token) and since when: until a call has returned
    /// its slot, the oldest one's age is all that is known of the hold time.
    leases: Vec<(u64, Instant)>,
    /// Mean time a call holds a slot (moving average), once a call has returned one.
    hold: Option<Duration>,
    /// Mean time from a launch decision to the container's first slot (moving average).
    launch: Option<Duration>,
    /// No launch before this instant: the last one found no room on the node.
    blocked_until: Option<Instant>,
    /// The last launch failed (the container did not start or never became ready) and none has
    /// succeeded since: slow start is off, each waiting call gets a launch of its own.
    launch_failed: bool,
}

impl QueueState {
    fn end_lease(&mut self, token: u64) {
        if let Some(pos) = self.leases.iter().position(|(t, _)| *t == token) {
            self.leases.swap_remove(pos);
        }
    }
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
    /// Containers one queue starts at once while it has none busy and knows nothing of its hold
    /// time (the start of its slow start, see [`SlotQueue::should_launch`]).
    pub initial_launches: usize,
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
            s.leases.push((e.token, Instant::now()));
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
    /// raised. Only calls that no starting container will serve ("uncovered") count, and the node
    /// has at most `max_starting` containers starting. Then:
    ///
    /// - nothing busy nor starting: launch (the first call of a queue, or all its containers died);
    /// - the hold time known (a call returned a slot): launch when the last uncovered waiter would
    ///   wait longer for a container to come back (uncovered x mean hold / busy, or / starting when
    ///   none is busy yet) than for a launch;
    /// - the hold time unknown ("slow start"): with none busy, at most `initial_launches` start at
    ///   once, however many calls wait; once some are busy, the oldest busy call's age is what is
    ///   known of the hold: launch when it exceeds a launch (a call that had launched when that one
    ///   started would be served by now: the function is slow, each waiter gets a container), or
    ///   when the rule above applied to that age says so, then with no more starting than are
    ///   busy (weaker evidence: the queue's containers at most double per launch round);
    /// - after a failed launch, until one succeeds, no slow start: with none busy each uncovered
    ///   waiter launches its own (Fn's rule), so that every call of a function that cannot start
    ///   gets its own start's error instead of waiting behind two starts at a time.
    ///
    /// Fn launched one container per uncovered waiter while the hold was unknown: at a step from
    /// zero every call started its own, all starts slowed each other down (16 concurrent starts on 2
    /// cores took 1.4 s, one alone 0.2 s), and the step ended with a container per call even for a
    /// 5 ms function. Under slow start a fast function is served by the first containers as soon as
    /// they are up (its first returned call makes the hold known and the wait rule then decides),
    /// while a slow one gets more containers as soon as its busy calls have outlived what a launch
    /// would cost, without waiting for any of them to end. Containers that are slow to start are no
    /// reason for more starts: they would only slow each other down further.
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
        let launch = s.launch.unwrap_or(policy.default_launch);
        // The wait of the last uncovered waiter if `servers` containers serve the queue in turn.
        let wait = |hold: Duration, servers: usize| {
            hold.saturating_mul(u32::try_from(uncovered).unwrap_or(u32::MAX)) / servers.max(1) as u32
        };
        let needed = match (s.busy, s.starting, s.hold) {
            (0, 0, _) => true,
            (0, starting, Some(hold)) => wait(hold, starting) > launch,
            // After a failed launch each waiter launches its own, as in Fn (each call then gets
            // its own start's answer, e.g. the 504 of a function that never becomes ready,
            // rather than waiting behind two starts at a time until its wait ends in a 503).
            (0, starting, None) => starting < policy.initial_launches || s.launch_failed,
            (busy, _, Some(hold)) => wait(hold, busy) > launch,
            (busy, starting, None) => {
                let oldest = s.leases.iter().map(|(_, since)| *since).min();
                // (No record of a busy call cannot happen; should it, Fn's rule: launch.)
                let age = oldest.map_or(Duration::MAX, |t| now.saturating_duration_since(t));
                age > launch || (starting < policy.initial_launches.max(busy) && wait(age, busy) > launch)
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

    /// A launch succeeded after `took`: its first slot goes to the oldest waiter or the idle stack in
    /// the same step, so no waiter sees neither a starting nor an idle container between.
    pub(crate) fn launch_ended(&self, first: Slot, took: Duration) {
        let mut s = self.state.lock_unpoisoned();
        s.starting = s.starting.saturating_sub(1);
        self.node_starting.fetch_sub(1, Ordering::AcqRel);
        s.launch = Some(ewma(s.launch, took));
        s.blocked_until = None;
        s.launch_failed = false;
        Self::offer_locked(&mut s, first, None);
    }

    /// A launch failed. The call that made it (`launcher`, a [`Waiter::id`]) gets that failure as its
    /// answer, so it leaves the waiters in the same step: otherwise, until its task runs, other
    /// waiters would count it as uncovered and launch for it too.
    pub(crate) fn launch_failed(&self, launcher: u64) {
        let mut s = self.state.lock_unpoisoned();
        s.starting = s.starting.saturating_sub(1);
        self.node_starting.fetch_sub(1, Ordering::AcqRel);
        s.launch_failed = true;
        if let Some(pos) = s.waiters.iter().position(|w| w.id == launcher) {
            s.waiters.remove(pos);
        }
    }

    /// Hands `slot` to the oldest waiter, else pushes it on the idle stack. `ended` is the token of
    /// the lease that just ended when a call returned the slot (it was counted busy), `None` for a
    /// new container.
    fn offer_locked(s: &mut QueueState, mut slot: Slot, ended: Option<u64>) {
        if let Some(token) = ended {
            s.end_lease(token);
        }
        while let Some(w) = s.waiters.pop_front() {
            let token = slot.token;
            match w.tx.send(slot) {
                Ok(()) => {
                    if ended.is_none() {
                        s.busy += 1;
                    }
                    s.leases.push((token, Instant::now()));
                    return;
                }
                // That waiter is leaving (its guard removes nothing now): try the next one.
                Err(back) => slot = back,
            }
        }
        if ended.is_some() {
            s.busy = s.busy.saturating_sub(1);
        }
        s.idle.push(IdleEntry {
            token: slot.token,
            slot,
        });
    }

    /// Offers a slot a call returned (`ended`: the token it held the slot under).
    pub(crate) fn offer(&self, slot: Slot, ended: u64) {
        let mut s = self.state.lock_unpoisoned();
        Self::offer_locked(&mut s, slot, Some(ended));
    }

    /// Adds a call's slot hold time to the queue's moving average.
    pub(crate) fn record_hold(&self, held: Duration) {
        let mut s = self.state.lock_unpoisoned();
        s.hold = Some(ewma(s.hold, held));
    }

    /// A call returned its slot (leased under `token`) and the container will not be offered again.
    pub(crate) fn retired_after_call(&self, token: u64) {
        let mut s = self.state.lock_unpoisoned();
        s.busy = s.busy.saturating_sub(1);
        s.end_lease(token);
    }

    /// Number of calls holding a slot by the lease records (equal to the busy count).
    #[cfg(test)]
    pub(crate) fn leases(&self) -> usize {
        self.state.lock_unpoisoned().leases.len()
    }

    /// True once a call has returned a slot (the queue knows its mean hold time).
    #[cfg(test)]
    pub(crate) fn knows_hold(&self) -> bool {
        self.state.lock_unpoisoned().hold.is_some()
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
    /// This call's place in the queue (for [`SlotQueue::launch_failed`]).
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

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
        initial_launches: 2,
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
        let wa = (a.join(), a.join());
        let _wb = b.join();
        assert!(a.should_launch(now, policy));
        assert!(a.should_launch(now, policy));
        assert!(!b.should_launch(now, policy), "two starting on the node already");
        a.launch_failed(wa.0.id());
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

    /// Sets a queue's state as containers coming up and calls starting would (a [`Slot`] needs a
    /// running container task).
    fn set(q: &SlotQueue, f: impl FnOnce(&mut QueueState)) {
        f(&mut q.state.lock().unwrap());
    }

    /// `n` containers came up and each took the oldest waiter's call at `at`.
    fn up(q: &SlotQueue, n: usize, at: Instant) {
        set(q, |s| {
            for _ in 0..n {
                s.starting -= 1;
                s.busy += 1;
                s.waiters.pop_front();
                s.leases.push((next_token(), at));
            }
        });
        q.node_starting.fetch_sub(n, Ordering::AcqRel);
    }

    fn launches(q: &SlotQueue, now: Instant) -> usize {
        std::iter::from_fn(|| q.should_launch(now, POLICY).then_some(())).count()
    }

    #[test]
    fn slow_start_launches_two_for_a_step_then_waits_for_evidence() {
        let q = SlotQueue::new(SlotKey(vec![4]));
        let now = Instant::now();
        let _waiters: Vec<_> = (0..16).map(|_| q.join()).collect();
        assert!(
            q.should_launch_new_call(now, POLICY),
            "the first call launches at once"
        );
        assert_eq!(launches(&q, now), 1, "one more, then the 14 others wait");
        assert_eq!(
            launches(&q, now + Duration::from_secs(5)),
            0,
            "slow starts are no reason for more starts"
        );
        set(&q, |s| s.launch = Some(Duration::from_millis(200)));
        up(&q, 1, now);
        // 15 waiting, 1 starting: 14 uncovered behind one busy call of unknown hold.
        assert_eq!(
            launches(&q, now + Duration::from_millis(10)),
            0,
            "10 ms x 14 < 200 ms"
        );
        // That call returns after 5 ms: the wait rule decides from now on (5 ms x 14 < 200 ms).
        set(&q, |s| {
            s.leases.clear();
            s.hold = Some(Duration::from_millis(5));
        });
        assert_eq!(launches(&q, now + Duration::from_secs(10)), 0);
        up(&q, 1, now);
        assert_eq!(
            launches(&q, now + Duration::from_secs(10)),
            0,
            "two serve the 16 calls"
        );
        set(&q, |s| s.hold = Some(Duration::from_millis(50)));
        assert!(
            q.should_launch(now, POLICY),
            "50 ms x 14 / 2 > 200 ms: the wait rule launches as before"
        );
    }

    #[test]
    fn after_a_failed_launch_each_waiter_launches_its_own() {
        let q = SlotQueue::new(SlotKey(vec![6]));
        let now = Instant::now();
        let waiters: Vec<_> = (0..6).map(|_| q.join()).collect();
        assert_eq!(launches(&q, now), 2, "slow start");
        // Both starts fail (e.g. the function never becomes ready): their two calls get the error
        // and leave the queue with it, before their tasks run; the four others each launch now,
        // instead of two at a time, and nobody launches for the two that are leaving.
        q.launch_failed(waiters[0].id());
        q.launch_failed(waiters[1].id());
        assert_eq!(q.stats().waiting, 4);
        assert_eq!(launches(&q, now), 4);
        // One of them comes up: slow start again for what comes next.
        set(&q, |s| s.launch_failed = false);
        let _more: Vec<_> = (0..4).map(|_| q.join()).collect();
        assert_eq!(
            launches(&q, now),
            0,
            "slow start again: four starting, no more before evidence"
        );
    }

    #[test]
    fn slow_start_grows_while_the_first_calls_have_not_returned() {
        let q = SlotQueue::new(SlotKey(vec![5]));
        let now = Instant::now();
        let _waiters: Vec<_> = (0..16).map(|_| q.join()).collect();
        assert_eq!(launches(&q, now), 2);
        set(&q, |s| s.launch = Some(Duration::from_millis(200)));
        up(&q, 1, now);
        // The call has held its slot for 20 ms: at least 20 ms x 14 > 200 ms of waiting for it.
        assert_eq!(
            launches(&q, now + Duration::from_millis(20)),
            1,
            "no more starting than busy (or 2)"
        );
        up(&q, 2, now);
        // 3 busy, 10 uncovered, none starting: 3 more at most, while the estimate says so.
        assert_eq!(launches(&q, now + Duration::from_millis(70)), 3);
    }

    #[test]
    fn a_slow_function_gets_containers_before_any_call_returns() {
        let q = SlotQueue::new(SlotKey(vec![6]));
        let now = Instant::now();
        let _waiters: Vec<_> = (0..8).map(|_| q.join()).collect();
        assert_eq!(launches(&q, now), 2);
        up(&q, 2, now);
        // 6 uncovered behind 2 calls of unknown hold, launch estimate 250 ms (the default).
        assert_eq!(
            launches(&q, now + Duration::from_millis(50)),
            0,
            "50 x 6 / 2 < 250 ms"
        );
        assert_eq!(
            launches(&q, now + Duration::from_millis(110)),
            2,
            "110 x 6 / 2 > 250 ms: as many as are busy"
        );
        up(&q, 2, now + Duration::from_millis(110));
        // 4 busy, 4 uncovered: 200 x 4 / 4 < 250 ms, but then the oldest call outlives a launch.
        assert_eq!(launches(&q, now + Duration::from_millis(200)), 0);
        assert_eq!(
            launches(&q, now + Duration::from_millis(260)),
            4,
            "one per waiter left"
        );
        up(&q, 4, now + Duration::from_millis(260));
        assert_eq!(q.stats().busy, 8);
        assert_eq!(q.stats().waiting, 0);
        assert!(q.state.lock().unwrap().hold.is_none(), "no call returned");
    }

    #[test]
    fn a_call_running_longer_than_a_launch_launches_for_every_waiter() {
        let q = SlotQueue::new(SlotKey(vec![9]));
        let now = Instant::now();
        let _waiters: Vec<_> = (0..8).map(|_| q.join()).collect();
        assert_eq!(launches(&q, now), 2);
        up(&q, 1, now);
        // One busy, one starting, six uncovered: a launch (250 ms) would have served them by now.
        assert_eq!(launches(&q, now + Duration::from_millis(260)), 6);
        assert_eq!(q.stats().starting, 7);
    }

    #[test]
    fn a_step_on_a_queue_with_a_known_hold_and_no_container() {
        let q = SlotQueue::new(SlotKey(vec![7]));
        let now = Instant::now();
        set(&q, |s| {
            s.hold = Some(Duration::from_millis(5));
            s.launch = Some(Duration::from_millis(200));
        });
        let _waiters: Vec<_> = (0..16).map(|_| q.join()).collect();
        // 5 ms x 15 / 1 starting < 200 ms: the one starting container serves them faster.
        assert_eq!(launches(&q, now), 1);
        set(&q, |s| s.hold = Some(Duration::from_millis(100)));
        // 100 ms calls: 100 x 15 / 1, 100 x 14 / 2, ... 100 x 11 / 5 > 200 ms > 100 x 10 / 6.
        assert_eq!(launches(&q, now), 5);
    }

    #[test]
    fn a_queue_whose_containers_died_launches_again() {
        let q = SlotQueue::new(SlotKey(vec![8]));
        let now = Instant::now();
        set(&q, |s| s.hold = Some(Duration::from_millis(5)));
        let waiters: Vec<_> = (0..4).map(|_| q.join()).collect();
        assert_eq!(launches(&q, now), 1);
        // That launch failed: nothing busy nor starting, the next waiter launches at once.
        q.launch_failed(waiters[0].id());
        assert_eq!(launches(&q, now), 1);
    }
}
