//! The runner pool: the configured runners (`FN_RUNNER_ADDRESSES`, in order), each with its channel,
//! health state (up / down / draining), in-flight count and learnt capabilities. The placer sees a
//! snapshot; the health loop and failed Engage opens move runners between states.
//!
//! Membership: each configured entry gives one member, except a host name with several addresses
//! (looked up by [`resolve`] every interval), which gives one member per address. A member that
//! leaves (SIGHUP, or its address gone from DNS) is taken out of placement at once; its in-flight
//! calls keep it alive until they finish, then it is dropped ([`RunnerPool::reap`]).

pub mod channel;
pub mod conn;
pub mod health;
pub mod resolve;

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use ferrofn_common::lock::LockExt;

use ferrofn_common::lock::RwLockExt;
use ferrofn_common::tls::ClientTls;
use ferrofn_proto::runner_protocol_client::RunnerProtocolClient;

pub use channel::{AddressError, ChannelOptions, RunnerConn};
pub use resolve::{Member, Resolve, SystemResolver};

use crate::placer::Candidate;
use crate::placer::hash::member_key;

/// Health of one runner as the LB sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunnerState {
    /// Answering (or not yet probed: runners start optimistic, like Fn's static pool).
    Up = 0,
    /// Unreachable, or its status check failed.
    Down = 1,
    /// Its gRPC health says NOT_SERVING: finishing in-flight calls, takes no new ones.
    Draining = 2,
}

impl RunnerState {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => RunnerState::Down,
            2 => RunnerState::Draining,
            _ => RunnerState::Up,
        }
    }

    /// Label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            RunnerState::Up => "up",
            RunnerState::Down => "down",
            RunnerState::Draining => "draining",
        }
    }
}

/// The origin of [`Runner`]'s last-heard times.
static EPOCH: std::sync::LazyLock<std::time::Instant> = std::sync::LazyLock::new(std::time::Instant::now);

fn since_epoch_ms() -> u64 {
    EPOCH.elapsed().as_millis() as u64
}

/// One runner of the pool.
#[derive(Debug)]
pub struct Runner {
    addr: String,
    /// The name its certificate is verified against (the entry's host).
    verify: String,
    /// The entry of `FN_RUNNER_ADDRESSES` it comes from.
    entry: String,
    /// [`member_key`] of `addr`.
    ident: u64,
    /// Probed at least once (a member that joins is down until its first probe).
    probed: AtomicBool,
    channel: RunnerConn,
    state: AtomicU8,
    in_flight: AtomicU64,
    accept_ack: AtomicBool,
    large_frames: AtomicBool,
    /// Set when an Engage stream went unanswered past the answer timeout; cleared by the next
    /// answered stream or a passed health probe. An Up runner so marked is tried only when no
    /// other runner is up and answering.
    unanswered: AtomicBool,
    answer_timeout: Option<std::time::Duration>,
    /// When the LB last heard from the runner (any Engage message, an answered stream or probe),
    /// in ms since [`EPOCH`].
    heard_ms: AtomicU64,
    /// Shared with the pool: woken whenever a call ends (for the shutdown drain).
    call_ended: Arc<tokio::sync::Notify>,
}

/// Counts one in-flight call on a runner until dropped.
#[derive(Debug)]
pub struct InFlight(Arc<Runner>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.call_ended.notify_waiters();
    }
}

impl Runner {
    fn new(
        member: &Member,
        entry: &str,
        channel: RunnerConn,
        initial: RunnerState,
        opts: &ChannelOptions,
        call_ended: Arc<tokio::sync::Notify>,
    ) -> Self {
        Self {
            addr: member.key.clone(),
            verify: member.verify.clone(),
            entry: entry.to_owned(),
            ident: member_key(&member.key),
            probed: AtomicBool::new(false),
            channel,
            state: AtomicU8::new(initial as u8),
            in_flight: AtomicU64::new(0),
            accept_ack: AtomicBool::new(false),
            large_frames: AtomicBool::new(false),
            unanswered: AtomicBool::new(false),
            answer_timeout: opts.answer_timeout,
            heard_ms: AtomicU64::new(since_epoch_ms()),
            call_ended,
        }
    }

    /// `host:port` as configured, or `ip:port` for a member found through a name with several
    /// addresses.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The entry of `FN_RUNNER_ADDRESSES` this member comes from.
    pub fn entry(&self) -> &str {
        &self.entry
    }

    /// True once a health probe ran on it.
    pub fn probed(&self) -> bool {
        self.probed.load(Ordering::Acquire)
    }

    fn set_probed(&self) {
        self.probed.store(true, Ordering::Release);
    }

    /// A gRPC client on the runner's connection (cheap).
    pub fn client(&self) -> RunnerProtocolClient<RunnerConn> {
        RunnerProtocolClient::new(self.channel.clone())
    }

    /// The connection (for the health client).
    pub fn channel(&self) -> RunnerConn {
        self.channel.clone()
    }

    /// Current health.
    pub fn state(&self) -> RunnerState {
        RunnerState::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Sets the health, logging changes with `why` (the probe result or the connect error).
    pub fn set_state(&self, s: RunnerState, why: &str) {
        let old = RunnerState::from_u8(self.state.swap(s as u8, Ordering::AcqRel));
        if old != s {
            tracing::info!(runner = %self.addr, from = old.as_str(), to = s.as_str(), why, "runner state changed");
        }
        for st in [RunnerState::Up, RunnerState::Down, RunnerState::Draining] {
            metrics::gauge!("lb_runner_up", "runner" => self.addr.clone(), "state" => st.as_str())
                .set(if st == s { 1.0 } else { 0.0 });
        }
    }

    /// Calls in flight from this LB.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Starts counting a call; the count drops with the guard.
    pub fn begin_call(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    /// True when the runner's Status advertised the accept-acknowledgement capability.
    pub fn supports_accept_ack(&self) -> bool {
        self.accept_ack.load(Ordering::Acquire)
    }

    /// Records the capability (from the health loop, or a test).
    pub fn set_accept_ack(&self, yes: bool) {
        self.accept_ack.store(yes, Ordering::Release);
    }

    /// True when the runner's Status advertised frames larger than 10 KiB (with accept-ack).
    pub fn supports_large_frames(&self) -> bool {
        self.large_frames.load(Ordering::Acquire) && self.supports_accept_ack()
    }

    /// Records the capability (from the health loop, or a test).
    pub fn set_large_frames(&self, yes: bool) {
        self.large_frames.store(yes, Ordering::Release);
    }

    /// The bound on an accept-ack runner's answer to an Engage stream ([`ChannelOptions`]).
    pub fn answer_timeout(&self) -> Option<std::time::Duration> {
        self.answer_timeout
    }

    /// Records an Engage stream left unanswered past the answer timeout.
    pub fn mark_unanswered(&self) {
        if !self.unanswered.swap(true, Ordering::AcqRel) {
            tracing::warn!(runner = %self.addr, "runner did not answer an Engage stream in time: avoided until it answers again");
            metrics::gauge!("lb_runner_unanswered", "runner" => self.addr.clone()).set(1.0);
        }
    }

    /// Records that the runner sent something (cheap: one store).
    pub fn heard(&self) {
        self.heard_ms.store(since_epoch_ms(), Ordering::Relaxed);
    }

    /// How long the runner has been silent on every stream and probe.
    pub fn quiet_for(&self) -> std::time::Duration {
        let last = self.heard_ms.load(Ordering::Relaxed);
        std::time::Duration::from_millis(since_epoch_ms().saturating_sub(last))
    }

    /// Records an answer (an Engage stream opened, or a health probe passed).
    pub fn mark_answered(&self) {
        self.heard();
        if self.unanswered.load(Ordering::Acquire) && self.unanswered.swap(false, Ordering::AcqRel) {
            tracing::info!(runner = %self.addr, "runner answers again");
            metrics::gauge!("lb_runner_unanswered", "runner" => self.addr.clone()).set(0.0);
        }
    }

    /// True while marked by [`Runner::mark_unanswered`].
    pub fn is_unanswered(&self) -> bool {
        self.unanswered.load(Ordering::Acquire)
    }
}

/// One entry of `FN_RUNNER_ADDRESSES` and the members it gives.
#[derive(Debug, Clone)]
struct Entry {
    /// As configured.
    addr: String,
    kind: resolve::EntryKind,
    /// The members last known (the entry itself until a lookup found several addresses).
    members: Vec<Member>,
    /// The last lookup failed (logged once per failing streak).
    failing: bool,
}

impl Entry {
    fn new(addr: &str) -> Self {
        Self {
            addr: addr.to_owned(),
            kind: resolve::classify(addr),
            members: vec![Member::configured(addr)],
            failing: false,
        }
    }
}

/// The members in placement order and how the placer identifies them.
#[derive(Debug, Default)]
struct Members {
    list: Arc<Vec<Arc<Runner>>>,
    /// Some member was found through DNS: the placers see each member's stable identity
    /// ([`Candidate::key`]) rather than its position.
    keyed: bool,
}

/// Membership bookkeeping (changed by SIGHUP, lookups and the reaper; never held across an await).
#[derive(Debug, Default)]
struct Book {
    entries: Vec<Entry>,
    /// Members taken out of placement whose in-flight calls have not all finished.
    leaving: Vec<Arc<Runner>>,
}

/// The pool.
#[derive(Debug)]
pub struct RunnerPool {
    members: RwLock<Members>,
    book: Mutex<Book>,
    tls: Option<ClientTls>,
    opts: ChannelOptions,
    call_ended: Arc<tokio::sync::Notify>,
    /// Wakes the membership loop (a SIGHUP changed the entries).
    changed: tokio::sync::Notify,
}

/// Splits `FN_RUNNER_ADDRESSES` on commas (entries trimmed; empty entries dropped).
pub fn parse_addresses(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

impl RunnerPool {
    /// A pool over `addrs`; `tls: None` = plaintext. Every entry is one member until a lookup
    /// ([`RunnerPool::resolve`]) finds a name with several addresses.
    pub fn new(
        addrs: &[String],
        tls: Option<ClientTls>,
        opts: ChannelOptions,
    ) -> Result<Arc<Self>, AddressError> {
        let pool = Arc::new(Self {
            members: RwLock::new(Members::default()),
            book: Mutex::new(Book::default()),
            tls,
            opts,
            call_ended: Arc::new(tokio::sync::Notify::new()),
            changed: tokio::sync::Notify::new(),
        });
        pool.set_addresses(addrs)?;
        Ok(pool)
    }

    /// Replaces the runner list (SIGHUP). Runners that stay keep their channel, state and counters;
    /// an entry that stays keeps the members its last lookup found; runners that go are drained out.
    pub fn set_addresses(&self, addrs: &[String]) -> Result<(), AddressError> {
        let mut book = self.book.lock_unpoisoned();
        let entries: Vec<Entry> = addrs
            .iter()
            .map(|a| {
                book.entries
                    .iter()
                    .find(|e| &e.addr == a)
                    .cloned()
                    .unwrap_or_else(|| Entry::new(a))
            })
            .collect();
        self.publish(&mut book, entries)?;
        tracing::info!(runners = ?addrs, "runner pool set");
        drop(book);
        self.changed.notify_one();
        Ok(())
    }

    /// Makes `entries` the pool: the members they give, deduplicated by identity, in entry order.
    /// Members that stay keep their runner; new ones join (down until probed, except in the first
    /// list, which starts optimistic); members that go leave placement and wait in `leaving` for
    /// their in-flight calls. Nothing changes on error.
    fn publish(&self, book: &mut Book, entries: Vec<Entry>) -> Result<(), AddressError> {
        let current = self.runners();
        let first = current.is_empty() && book.leaving.is_empty() && book.entries.is_empty();
        let mut next: Vec<Arc<Runner>> = Vec::new();
        let mut joined: Vec<Arc<Runner>> = Vec::new();
        let mut rejoined: Vec<Arc<Runner>> = Vec::new();
        let mut keyed = false;
        for entry in &entries {
            for m in &entry.members {
                if next.iter().any(|r| r.addr == m.key) {
                    continue;
                }
                keyed |= m.expanded;
                let same = |r: &&Arc<Runner>| r.addr == m.key && r.verify == m.verify;
                if let Some(r) = current.iter().find(same) {
                    next.push(r.clone());
                } else if let Some(r) = book.leaving.iter().find(same) {
                    rejoined.push(r.clone());
                    next.push(r.clone());
                } else {
                    let ch = channel::dial_channel(&m.dial, &m.verify, self.tls.clone(), self.opts)?;
                    let initial = if first { RunnerState::Up } else { RunnerState::Down };
                    let r = Arc::new(Runner::new(
                        m,
                        &entry.addr,
                        ch,
                        initial,
                        &self.opts,
                        self.call_ended.clone(),
                    ));
                    joined.push(r.clone());
                    next.push(r);
                }
            }
        }
        book.leaving
            .retain(|r| !rejoined.iter().any(|j| Arc::ptr_eq(r, j)));
        for r in current.iter().filter(|r| !next.iter().any(|n| Arc::ptr_eq(n, r))) {
            let in_flight = r.in_flight();
            tracing::info!(
                runner = %r.addr, entry = %r.entry, in_flight,
                "runner left the pool: no new calls; its in-flight calls finish"
            );
            metrics::counter!("lb_runner_leaves_total").increment(1);
            book.leaving.push(r.clone());
        }
        for r in &joined {
            if !first {
                tracing::info!(runner = %r.addr, entry = %r.entry, verify = %r.verify, "runner joined the pool");
                metrics::counter!("lb_runner_joins_total").increment(1);
            }
        }
        for r in &rejoined {
            tracing::info!(runner = %r.addr, entry = %r.entry, "runner joined the pool again before its calls finished");
            metrics::counter!("lb_runner_joins_total").increment(1);
        }
        book.entries = entries;
        metrics::gauge!("lb_runner_members").set(next.len() as f64);
        *self.members.write_unpoisoned() = Members {
            list: Arc::new(next),
            keyed,
        };
        self.reap_locked(book);
        Ok(())
    }

    /// Looks every name entry up once (concurrently, each bounded by `timeout`) and applies what
    /// changed. A failed or empty lookup keeps the entry's members as they were.
    pub async fn resolve(&self, resolver: &dyn Resolve, timeout: Duration) {
        let names: Vec<(String, String, u16)> = {
            let book = self.book.lock_unpoisoned();
            book.entries
                .iter()
                .filter_map(|e| match &e.kind {
                    resolve::EntryKind::Name { host, port } => Some((e.addr.clone(), host.clone(), *port)),
                    resolve::EntryKind::Literal => None,
                })
                .collect()
        };
        if names.is_empty() {
            return;
        }
        let results = futures::future::join_all(names.iter().map(|(addr, host, port)| async move {
            let found = match tokio::time::timeout(timeout, resolver.lookup(host, *port)).await {
                Ok(Ok(list)) if !list.is_empty() => Ok(list),
                Ok(Ok(_)) => Err("the name has no address".to_owned()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no answer within {timeout:?}")),
            };
            (addr, host, found)
        }))
        .await;
        let mut book = self.book.lock_unpoisoned();
        let mut entries = book.entries.clone();
        let mut changed = false;
        for (addr, host, found) in results {
            // A SIGHUP may have removed the entry meanwhile.
            let Some(entry) = entries.iter_mut().find(|e| &e.addr == addr) else {
                continue;
            };
            match found {
                Ok(list) => {
                    if entry.failing {
                        tracing::info!(entry = %addr, "runner name resolves again");
                        entry.failing = false;
                    }
                    let members = Member::from_lookup(addr, host, &list);
                    if members != entry.members {
                        tracing::info!(
                            entry = %addr,
                            members = ?members.iter().map(|m| m.key.as_str()).collect::<Vec<_>>(),
                            "runner name resolved to new members"
                        );
                        entry.members = members;
                        changed = true;
                    }
                }
                Err(why) => {
                    metrics::counter!("lb_runner_resolve_failures_total").increment(1);
                    if entry.failing {
                        tracing::debug!(entry = %addr, error = %why, "runner name lookup failed again");
                    } else {
                        tracing::warn!(
                            entry = %addr, error = %why,
                            members = entry.members.len(),
                            "runner name lookup failed: keeping its last known members"
                        );
                        entry.failing = true;
                    }
                }
            }
        }
        if changed {
            if let Err(e) = self.publish(&mut book, entries) {
                tracing::error!(error = %e, "cannot apply the runners found: keeping the pool as it was");
            }
        } else {
            // Only the failing flags changed.
            book.entries = entries;
        }
    }

    /// Drops the members that left and have no call in flight any more.
    pub fn reap(&self) {
        self.reap_locked(&mut self.book.lock_unpoisoned());
    }

    fn reap_locked(&self, book: &mut Book) {
        book.leaving.retain(|r| {
            if r.in_flight() > 0 {
                return true;
            }
            tracing::info!(runner = %r.addr, entry = %r.entry, "runner removed: its calls finished");
            for st in [RunnerState::Up, RunnerState::Down, RunnerState::Draining] {
                metrics::gauge!("lb_runner_up", "runner" => r.addr.clone(), "state" => st.as_str()).set(0.0);
            }
            false
        });
        metrics::gauge!("lb_runner_leaving").set(book.leaving.len() as f64);
    }

    /// Members out of placement whose calls are still running.
    pub fn leaving(&self) -> Vec<Arc<Runner>> {
        self.book.lock_unpoisoned().leaving.clone()
    }

    /// The membership loop: every `interval` (`None`: never; names are then only resolved by each
    /// connect) the name entries are looked up; members that joined are probed at once; members
    /// that left are dropped when their last call ends. Runs until `stop`.
    pub fn spawn_membership_loop(
        self: &Arc<Self>,
        resolver: Arc<dyn Resolve>,
        interval: Option<Duration>,
        probe_timeout: Duration,
        stop: tokio_util::sync::CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let pool = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval.unwrap_or(Duration::from_secs(3600)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.reset();
            loop {
                let ended = pool.call_ended.notified();
                tokio::pin!(ended);
                ended.as_mut().enable();
                let draining = !pool.book.lock_unpoisoned().leaving.is_empty();
                let lookup = tokio::select! {
                    () = stop.cancelled() => return,
                    _ = tick.tick() => interval.is_some(),
                    () = pool.changed.notified() => {
                        // New entries: probe them now, look their names up now.
                        health::probe_new(&pool, probe_timeout).await;
                        interval.is_some()
                    }
                    () = ended, if draining => false,
                };
                if lookup {
                    pool.resolve(&*resolver, resolve::LOOKUP_TIMEOUT).await;
                    health::probe_new(&pool, probe_timeout).await;
                }
                pool.reap();
            }
        })
    }

    /// The runners in placement order (configuration order; the members of a name in address
    /// order at its place).
    pub fn runners(&self) -> Arc<Vec<Arc<Runner>>> {
        self.members.read_unpoisoned().list.clone()
    }

    /// What the placer sees: every runner with its eligibility and load. Up runners are eligible,
    /// except one that left a stream unanswered while another up runner answers.
    pub fn snapshot(&self) -> Vec<(Candidate, Arc<Runner>)> {
        let (runners, keyed) = {
            let m = self.members.read_unpoisoned();
            (m.list.clone(), m.keyed)
        };
        let up = |r: &Runner| r.state() == RunnerState::Up;
        let some_answer = runners.iter().any(|r| up(r) && !r.is_unanswered());
        runners
            .iter()
            .map(|r| {
                (
                    Candidate {
                        eligible: up(r) && !(some_answer && r.is_unanswered()),
                        load: r.in_flight(),
                        key: keyed.then_some(r.ident),
                    },
                    r.clone(),
                )
            })
            .collect()
    }

    /// True when a runner other than `not` is up and answering (somewhere else to place a call
    /// that `not` leaves unanswered).
    pub fn answering_alternative(&self, not: &Runner) -> bool {
        self.runners()
            .iter()
            .any(|r| !std::ptr::eq(&**r, not) && r.state() == RunnerState::Up && !r.is_unanswered())
    }

    /// Calls in flight on all runners, those leaving the pool included.
    pub fn in_flight(&self) -> u64 {
        let leaving: u64 = self.leaving().iter().map(|r| r.in_flight()).sum();
        self.runners().iter().map(|r| r.in_flight()).sum::<u64>() + leaving
    }

    /// Waits until no call is in flight (including detached calls still running after their 202),
    /// or `limit` passes. Returns the calls still in flight.
    pub async fn drain(&self, limit: std::time::Duration) -> u64 {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let ended = self.call_ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            if self.in_flight() == 0 {
                return 0;
            }
            tokio::select! {
                () = ended => {}
                () = tokio::time::sleep_until(deadline) => return self.in_flight(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_split_and_trim() {
        assert_eq!(parse_addresses("a:1, b:2,,c:3 "), vec!["a:1", "b:2", "c:3"]);
        assert!(parse_addresses("").is_empty());
    }

    #[tokio::test]
    async fn snapshot_reflects_state_and_load_and_reload_keeps_runners() {
        let addrs: Vec<String> = vec!["127.0.0.1:1".into(), "localhost:2".into()];
        let pool = RunnerPool::new(&addrs, None, ChannelOptions::default()).unwrap();
        let rs = pool.runners();
        rs[1].set_state(RunnerState::Draining, "test");
        let guard = rs[0].begin_call();
        let snap = pool.snapshot();
        assert_eq!(
            snap[0].0,
            Candidate {
                eligible: true,
                load: 1,
                key: None
            }
        );
        assert_eq!(
            snap[1].0,
            Candidate {
                eligible: false,
                load: 0,
                key: None
            }
        );
        drop(guard);
        assert_eq!(rs[0].in_flight(), 0);
        pool.set_addresses(&["localhost:2".into(), "127.0.0.1:3".into()])
            .unwrap();
        let after = pool.runners();
        assert!(Arc::ptr_eq(&after[0], &rs[1]), "kept runner keeps its state");
        assert_eq!(after[0].state(), RunnerState::Draining);
        assert_eq!(after[1].addr(), "127.0.0.1:3");
        after[1].set_accept_ack(true);
        assert!(after[1].supports_accept_ack());
    }

    #[tokio::test]
    async fn drain_waits_for_in_flight_calls() {
        let pool = RunnerPool::new(&["127.0.0.1:1".into()], None, ChannelOptions::default()).unwrap();
        assert_eq!(pool.drain(std::time::Duration::from_secs(1)).await, 0);
        let guard = pool.runners()[0].begin_call();
        let waiter = {
            let pool = pool.clone();
            tokio::spawn(async move { pool.drain(std::time::Duration::from_secs(10)).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(guard);
        assert_eq!(waiter.await.unwrap(), 0);
        let _guard = pool.runners()[0].begin_call();
        assert_eq!(
            pool.drain(std::time::Duration::from_millis(20)).await,
            1,
            "gives up at the limit"
        );
    }

    /// A resolver whose answers the test sets; counts its lookups.
    #[derive(Debug, Default)]
    struct FakeDns {
        answers: Mutex<std::collections::HashMap<String, Option<Vec<std::net::SocketAddr>>>>,
        lookups: AtomicU64,
    }

    impl FakeDns {
        /// `host` answers `ips` (with the port asked); `None` = the lookup fails.
        fn set(&self, host: &str, ips: Option<&[&str]>) {
            let v = ips.map(|ips| {
                ips.iter()
                    .map(|ip| std::net::SocketAddr::new(ip.parse().unwrap(), 0))
                    .collect()
            });
            self.answers.lock().unwrap().insert(host.into(), v);
        }
    }

    impl Resolve for FakeDns {
        fn lookup<'a>(
            &'a self,
            host: &'a str,
            port: u16,
        ) -> futures::future::BoxFuture<'a, std::io::Result<Vec<std::net::SocketAddr>>> {
            self.lookups.fetch_add(1, Ordering::SeqCst);
            let answer = self.answers.lock().unwrap().get(host).cloned();
            Box::pin(async move {
                match answer {
                    Some(Some(list)) => Ok(list
                        .into_iter()
                        .map(|mut a| {
                            a.set_port(port);
                            a
                        })
                        .collect()),
                    Some(None) => Err(std::io::Error::other("SERVFAIL")),
                    None => Err(std::io::Error::new(std::io::ErrorKind::NotFound, "NXDOMAIN")),
                }
            })
        }
    }

    const T: Duration = Duration::from_secs(1);

    fn addrs(pool: &RunnerPool) -> Vec<String> {
        pool.runners().iter().map(|r| r.addr().to_owned()).collect()
    }

    #[tokio::test]
    async fn a_name_with_several_addresses_gives_one_runner_per_address() {
        let dns = FakeDns::default();
        let pool = RunnerPool::new(
            &["10.9.9.9:9190".into(), "runners:9190".into()],
            None,
            ChannelOptions::default(),
        )
        .unwrap();
        // Before any lookup: the name is one runner, dialled by name; positions identify runners.
        assert_eq!(addrs(&pool), vec!["10.9.9.9:9190", "runners:9190"]);
        assert!(pool.snapshot().iter().all(|(c, _)| c.key.is_none()));

        dns.set("runners", Some(&["10.0.0.3", "10.0.0.2"]));
        pool.resolve(&dns, T).await;
        assert_eq!(
            dns.lookups.load(Ordering::SeqCst),
            1,
            "the literal IP is never looked up"
        );
        assert_eq!(
            addrs(&pool),
            vec!["10.9.9.9:9190", "10.0.0.2:9190", "10.0.0.3:9190"]
        );
        let rs = pool.runners();
        assert_eq!(
            rs[1].verify, "runners",
            "dialled by IP, verified against the name"
        );
        assert_eq!(rs[1].entry(), "runners:9190");
        assert_eq!(rs[0].verify, "10.9.9.9");
        // Joiners wait for their first probe; the placer sees stable identities now.
        assert_eq!(rs[1].state(), RunnerState::Down);
        assert!(!rs[1].probed());
        let snap = pool.snapshot();
        assert!(snap.iter().all(|(c, _)| c.key.is_some()));
        assert_eq!(snap[1].0.key, Some(member_key("10.0.0.2:9190")));
        // The name runner left (nothing in flight: removed at once).
        assert!(pool.leaving().is_empty());

        // A third address joins; the others stay the same runners.
        dns.set("runners", Some(&["10.0.0.2", "10.0.0.3", "10.0.0.4"]));
        pool.resolve(&dns, T).await;
        let after = pool.runners();
        assert_eq!(after.len(), 4);
        assert!(Arc::ptr_eq(&after[1], &rs[1]) && Arc::ptr_eq(&after[2], &rs[2]));
        assert!(Arc::ptr_eq(&after[0], &rs[0]));
        assert_eq!(after[3].addr(), "10.0.0.4:9190");
    }

    #[tokio::test]
    async fn a_vanished_runner_takes_no_new_calls_and_goes_when_its_calls_end() {
        let dns = FakeDns::default();
        dns.set("runners", Some(&["10.0.0.1", "10.0.0.2", "10.0.0.3"]));
        let pool = RunnerPool::new(&["runners:9190".into()], None, ChannelOptions::default()).unwrap();
        pool.resolve(&dns, T).await;
        let gone = pool.runners()[1].clone();
        assert_eq!(gone.addr(), "10.0.0.2:9190");
        let call = gone.begin_call();
        dns.set("runners", Some(&["10.0.0.1", "10.0.0.3"]));
        pool.resolve(&dns, T).await;
        assert_eq!(addrs(&pool), vec!["10.0.0.1:9190", "10.0.0.3:9190"]);
        assert!(
            pool.snapshot().iter().all(|(_, r)| !Arc::ptr_eq(r, &gone)),
            "out of placement"
        );
        assert_eq!(pool.leaving().len(), 1, "kept while its call runs");
        assert_eq!(pool.in_flight(), 1, "its call still counts (shutdown drain)");
        let waiter = {
            let pool = pool.clone();
            tokio::spawn(async move { pool.drain(Duration::from_secs(10)).await })
        };
        pool.reap();
        assert_eq!(pool.leaving().len(), 1);
        tokio::task::yield_now().await;
        assert!(
            !waiter.is_finished(),
            "the drain waits for the leaving runner's call"
        );
        drop(call);
        assert_eq!(waiter.await.unwrap(), 0);
        pool.reap();
        assert!(pool.leaving().is_empty(), "dropped once its call ended");
        assert_eq!(Arc::strong_count(&gone), 1, "nothing else holds it");

        // Back before its calls end: the same runner (state, channel) joins again.
        let back = pool.runners()[1].clone();
        let call = back.begin_call();
        dns.set("runners", Some(&["10.0.0.1", "10.0.0.2"]));
        pool.resolve(&dns, T).await;
        assert_eq!(pool.leaving().len(), 1);
        dns.set("runners", Some(&["10.0.0.1", "10.0.0.2", "10.0.0.3"]));
        pool.resolve(&dns, T).await;
        assert!(pool.leaving().is_empty());
        assert!(Arc::ptr_eq(&pool.runners()[2], &back));
        drop(call);
    }

    #[tokio::test]
    async fn a_failed_lookup_keeps_the_last_known_runners() {
        #[derive(Debug)]
        struct Never;
        impl Resolve for Never {
            fn lookup<'a>(
                &'a self,
                _: &'a str,
                _: u16,
            ) -> futures::future::BoxFuture<'a, std::io::Result<Vec<std::net::SocketAddr>>> {
                Box::pin(std::future::pending())
            }
        }
        let dns = FakeDns::default();
        dns.set("runners", Some(&["10.0.0.1", "10.0.0.2"]));
        let pool = RunnerPool::new(&["runners:9190".into()], None, ChannelOptions::default()).unwrap();
        pool.resolve(&dns, T).await;
        let before = pool.runners();
        assert_eq!(before.len(), 2);
        for answer in [None, Some(&[][..])] {
            dns.set("runners", answer);
            pool.resolve(&dns, T).await;
            let now = pool.runners();
            assert_eq!(now.len(), 2, "{answer:?}");
            assert!(now.iter().zip(before.iter()).all(|(a, b)| Arc::ptr_eq(a, b)));
        }
        dns.answers.lock().unwrap().clear(); // NXDOMAIN
        pool.resolve(&dns, T).await;
        assert_eq!(pool.runners().len(), 2);
        pool.resolve(&Never, Duration::from_millis(20)).await;
        assert_eq!(pool.runners().len(), 2, "a resolver that does not answer");
        assert!(pool.book.lock_unpoisoned().entries[0].failing);
        // It resolves again.
        dns.set("runners", Some(&["10.0.0.2", "10.0.0.1"]));
        pool.resolve(&dns, T).await;
        assert!(!pool.book.lock_unpoisoned().entries[0].failing);
        assert!(Arc::ptr_eq(&pool.runners()[0], &before[0]));
    }

    #[tokio::test]
    async fn one_address_is_dialled_by_name_and_sighup_keeps_what_lookups_found() {
        let dns = FakeDns::default();
        // Dual stack: one runner, not two; dialled by name as before (a restart with a new IP is
        // found by the next connect).
        dns.set("runner", Some(&["::1", "127.0.0.1"]));
        dns.set("runners", Some(&["10.0.0.1", "10.0.0.2"]));
        let pool = RunnerPool::new(
            &["runner:9190".into(), "runners:9190".into()],
            None,
            ChannelOptions::default(),
        )
        .unwrap();
        let named = pool.runners()[0].clone();
        pool.resolve(&dns, T).await;
        assert_eq!(
            addrs(&pool),
            vec!["runner:9190", "10.0.0.1:9190", "10.0.0.2:9190"]
        );
        assert!(Arc::ptr_eq(&pool.runners()[0], &named), "unchanged");
        // Both in one pool: everyone is identified by address for the placer.
        assert!(pool.snapshot().iter().all(|(c, _)| c.key.is_some()));
        // SIGHUP adding an entry keeps the members the lookup found.
        let kept = pool.runners();
        pool.set_addresses(&["runners:9190".into(), "10.5.5.5:1".into()])
            .unwrap();
        assert_eq!(addrs(&pool), vec!["10.0.0.1:9190", "10.0.0.2:9190", "10.5.5.5:1"]);
        assert!(Arc::ptr_eq(&pool.runners()[0], &kept[1]));
        // Down to one address: the name again, dialled by name.
        dns.set("runners", Some(&["10.0.0.2"]));
        pool.resolve(&dns, T).await;
        assert_eq!(addrs(&pool), vec!["runners:9190", "10.5.5.5:1"]);
        assert!(
            pool.snapshot().iter().all(|(c, _)| c.key.is_none()),
            "positions again"
        );
    }

    /// Polls `cond` every 5 ms; fails after 10 s.
    async fn until(cond: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(std::time::Instant::now() < deadline, "timed out");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn the_membership_loop_follows_dns_and_reaps_when_calls_end() {
        let dns = Arc::new(FakeDns::default());
        dns.set("runners", Some(&["10.0.0.1", "10.0.0.2"]));
        let pool = RunnerPool::new(&["runners:9190".into()], None, ChannelOptions::default()).unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        let task = pool.spawn_membership_loop(
            dns.clone(),
            Some(Duration::from_millis(20)),
            Duration::from_millis(50),
            stop.clone(),
        );
        until(|| pool.runners().len() == 2).await;
        // Joiners get probed at once (nobody listens on 10.0.0.x:9190 here: down, but probed).
        until(|| pool.runners().iter().all(|r| r.probed())).await;
        let call = pool.runners()[0].begin_call();
        dns.set("runners", Some(&["10.0.0.2", "10.0.0.3"]));
        until(|| addrs(&pool) == ["10.0.0.2:9190", "10.0.0.3:9190"]).await;
        assert_eq!(pool.leaving().len(), 1);
        drop(call);
        until(|| pool.leaving().is_empty()).await;
        stop.cancel();
        task.await.unwrap();
    }
}
