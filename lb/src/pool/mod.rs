//! The runner pool: the configured runners (`FN_RUNNER_ADDRESSES`, in order), each with its channel,
//! health state (up / down / draining), in-flight count and learnt capabilities. The placer sees a
//! snapshot; the health loop and failed Engage opens move runners between states.

pub mod channel;
pub mod health;

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use tonic::transport::Channel;

use ferrofn_common::lock::RwLockExt;
use ferrofn_common::tls::ClientTls;
use ferrofn_proto::runner_protocol_client::RunnerProtocolClient;

pub use channel::{AddressError, ChannelOptions};

use crate::placer::Candidate;

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
    channel: Channel,
    state: AtomicU8,
    in_flight: AtomicU64,
    accept_ack: AtomicBool,
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
        addr: String,
        channel: Channel,
        opts: &ChannelOptions,
        call_ended: Arc<tokio::sync::Notify>,
    ) -> Self {
        Self {
            addr,
            channel,
            state: AtomicU8::new(RunnerState::Up as u8),
            in_flight: AtomicU64::new(0),
            accept_ack: AtomicBool::new(false),
            unanswered: AtomicBool::new(false),
            answer_timeout: opts.answer_timeout,
            heard_ms: AtomicU64::new(since_epoch_ms()),
            call_ended,
        }
    }

    /// `host:port` as configured.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// A gRPC client on the runner's channel (cheap).
    pub fn client(&self) -> RunnerProtocolClient<Channel> {
        RunnerProtocolClient::new(self.channel.clone())
    }

    /// The channel (for the health client).
    pub fn channel(&self) -> Channel {
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

/// The pool.
#[derive(Debug)]
pub struct RunnerPool {
    runners: RwLock<Arc<Vec<Arc<Runner>>>>,
    tls: Option<ClientTls>,
    opts: ChannelOptions,
    call_ended: Arc<tokio::sync::Notify>,
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
    /// A pool over `addrs`; `tls: None` = plaintext.
    pub fn new(
        addrs: &[String],
        tls: Option<ClientTls>,
        opts: ChannelOptions,
    ) -> Result<Arc<Self>, AddressError> {
        let pool = Arc::new(Self {
            runners: RwLock::new(Arc::new(Vec::new())),
            tls,
            opts,
            call_ended: Arc::new(tokio::sync::Notify::new()),
        });
        pool.set_addresses(addrs)?;
        Ok(pool)
    }

    /// Replaces the runner list (SIGHUP). Runners that stay keep their channel, state and counters.
    pub fn set_addresses(&self, addrs: &[String]) -> Result<(), AddressError> {
        let current = self.runners();
        let mut next = Vec::with_capacity(addrs.len());
        for addr in addrs {
            match current.iter().find(|r| &r.addr == addr) {
                Some(r) => next.push(r.clone()),
                None => {
                    let ch = channel::runner_channel(addr, self.tls.clone(), self.opts)?;
                    next.push(Arc::new(Runner::new(
                        addr.clone(),
                        ch,
                        &self.opts,
                        self.call_ended.clone(),
                    )));
                }
            }
        }
        tracing::info!(runners = ?addrs, "runner pool set");
        *self.runners.write_unpoisoned() = Arc::new(next);
        Ok(())
    }

    /// The runners in configuration order.
    pub fn runners(&self) -> Arc<Vec<Arc<Runner>>> {
        self.runners.read_unpoisoned().clone()
    }

    /// What the placer sees: every runner with its eligibility and load. Up runners are eligible,
    /// except one that left a stream unanswered while another up runner answers.
    pub fn snapshot(&self) -> Vec<(Candidate, Arc<Runner>)> {
        let runners = self.runners();
        let up = |r: &Runner| r.state() == RunnerState::Up;
        let some_answer = runners.iter().any(|r| up(r) && !r.is_unanswered());
        runners
            .iter()
            .map(|r| {
                (
                    Candidate {
                        eligible: up(r) && !(some_answer && r.is_unanswered()),
                        load: r.in_flight(),
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

    /// Calls in flight on all runners.
    pub fn in_flight(&self) -> u64 {
        self.runners().iter().map(|r| r.in_flight()).sum()
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
                load: 1
            }
        );
        assert_eq!(
            snap[1].0,
            Candidate {
                eligible: false,
                load: 0
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
}
