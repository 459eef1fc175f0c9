//! One hot container's life: iofs dir and watch, image check, create/attach/start, wait for the FDK
//! socket (bounded by the hot-start timeout, cut short if the container dies), then serve calls one
//! at a time from the idle stack with idle-timeout, freeze and eviction timers, and tear down.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use ferrofn_common::error::FnError;
use ferrofn_common::lock::LockExt;
use futures::StreamExt;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::AgentInner;
use super::resources::Reservation;
use super::slots::{Slot, SlotQueue, SlotReturn};
use crate::driver::{ContainerSpec, DriverError, LaunchTimings, LogChunk, LogStream};
use crate::fdk::FdkConn;
use crate::iofs::IofsDir;

/// Where the container's output goes right now.
enum Sink {
    /// Between calls: logged against the container, capped per stretch between two calls (a
    /// function that floods its output in the background gets no more than a call would).
    Container { cap: LogCap },
    /// During a call (and for [`LATE_OUTPUT_GRACE`] after it): logged against the call, capped.
    Call {
        call_id: String,
        cap: LogCap,
        ended: Option<Instant>,
    },
}

impl Sink {
    fn container() -> Self {
        Sink::Container {
            cap: LogCap::default(),
        }
    }
}

/// Fn's bounded log writer: the first `max` bytes of output (lines counted with their newline),
/// then one truncation notice, then nothing.
#[derive(Debug, Default)]
struct LogCap {
    written: usize,
    truncated: bool,
}

/// What [`LogCap::admit`] decides for one line.
#[derive(Debug, PartialEq, Eq)]
enum Admit {
    Log,
    /// The line passes the cap: log the truncation notice instead, once.
    Truncate,
    Drop,
}

impl LogCap {
    fn admit(&mut self, line_len: usize, max: usize) -> Admit {
        if self.truncated {
            return Admit::Drop;
        }
        if self.written + line_len > max {
            self.truncated = true;
            return Admit::Truncate;
        }
        self.written += line_len + 1;
        Admit::Log
    }
}

/// Docker delivers a container's output asynchronously, after the function may already have
/// answered; output that arrives this soon after a call ended is still the call's.
const LATE_OUTPUT_GRACE: Duration = Duration::from_millis(500);

/// State shared by the hot task, its log pump and the call holding its slot.
pub struct ContainerHandle {
    /// Engine id.
    pub id: String,
    /// Container name.
    pub name: String,
    /// App id (log field).
    pub app_id: String,
    /// Fn id (log field).
    pub fn_id: String,
    /// Launch timings, reported to the call that triggered the launch.
    pub timings: LaunchTimings,
    /// Nanoseconds from start until the socket was ready.
    pub init_ns: i64,
    died: CancellationToken,
    paused: tokio::sync::Mutex<bool>,
    sink: Mutex<Sink>,
    max_log: usize,
    inner: Arc<AgentInner>,
}

impl std::fmt::Debug for ContainerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContainerHandle")
            .field("id", &self.id)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl ContainerHandle {
    /// Routes the container's output to `call_id` until [`ContainerHandle::end_call`].
    pub fn begin_call(&self, call_id: &str) {
        *self.sink.lock_unpoisoned() = Sink::Call {
            call_id: call_id.to_string(),
            cap: LogCap::default(),
            ended: None,
        };
    }

    /// Routes output back to the container (after a short grace for late output).
    pub fn end_call(&self) {
        if let Sink::Call { ended, .. } = &mut *self.sink.lock_unpoisoned() {
            *ended = Some(Instant::now());
        }
    }

    /// False once the container died or the agent drains: it must not be offered again.
    pub fn can_serve_again(&self) -> bool {
        !self.died.is_cancelled() && !self.inner.shutdown.is_cancelled()
    }

    /// Unpauses the container if it was frozen (before a call).
    pub async fn thaw(&self) -> Result<(), DriverError> {
        let mut paused = self.paused.lock().await;
        if *paused {
            let t = Instant::now();
            self.inner.driver.unpause(&self.id).await?;
            *paused = false;
            crate::metrics::unpause(t.elapsed());
            debug!(container = %self.id, "unpaused");
        }
        Ok(())
    }

    /// Logs one line of output to the current sink, within its cap.
    fn log_line(&self, stream: &'static str, line: &[u8]) {
        let mut sink = self.sink.lock_unpoisoned();
        if let Sink::Call { ended: Some(at), .. } = &*sink
            && at.elapsed() > LATE_OUTPUT_GRACE
        {
            *sink = Sink::container();
        }
        let max = self.max_log;
        match &mut *sink {
            Sink::Container { cap } => match cap.admit(line.len(), max) {
                Admit::Log => {
                    let text = String::from_utf8_lossy(line);
                    debug!(target: "ferrofn_runner::function_log", container = %self.name, app_id = %self.app_id,
                           fn_id = %self.fn_id, stream, "{text}");
                }
                Admit::Truncate => {
                    debug!(target: "ferrofn_runner::function_log", container = %self.name, app_id = %self.app_id,
                           fn_id = %self.fn_id, stream,
                           "-----max log size {max} bytes exceeded between calls, truncating log-----");
                }
                Admit::Drop => {}
            },
            Sink::Call { call_id, cap, .. } => match cap.admit(line.len(), max) {
                Admit::Log => {
                    let text = String::from_utf8_lossy(line);
                    debug!(target: "ferrofn_runner::function_log", container = %self.name, app_id = %self.app_id,
                           fn_id = %self.fn_id, call_id = %call_id, stream, user_log = true, "{text}");
                }
                Admit::Truncate => {
                    debug!(target: "ferrofn_runner::function_log", container = %self.name, app_id = %self.app_id,
                           fn_id = %self.fn_id, call_id = %call_id, stream,
                           "-----max log size {max} bytes exceeded, truncating log-----");
                }
                Admit::Drop => {}
            },
        }
    }
}

/// Drains stdout and stderr together (so neither blocks the other) and splits them into lines.
async fn pump_logs(handle: Arc<ContainerHandle>, mut logs: LogStream) {
    let mut out = BytesMut::new();
    let mut err = BytesMut::new();
    while let Some(chunk) = logs.next().await {
        let (buf, name, data): (&mut BytesMut, &'static str, Bytes) = match chunk {
            LogChunk::Stdout(b) => (&mut out, "stdout", b),
            LogChunk::Stderr(b) => (&mut err, "stderr", b),
        };
        buf.extend_from_slice(&data);
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line = buf.split_to(pos + 1);
            handle.log_line(name, &line[..pos]);
        }
        if buf.len() > 64 * 1024 {
            let line = buf.split();
            handle.log_line(name, &line);
        }
    }
    for (buf, name) in [(out, "stdout"), (err, "stderr")] {
        if !buf.is_empty() {
            handle.log_line(name, &buf);
        }
    }
}

/// Everything a launch needs from the call that triggered it.
pub(crate) struct LaunchRequest {
    pub queue: Arc<SlotQueue>,
    pub spec: ContainerSpec,
    pub idle_timeout: Duration,
    pub reservation: Reservation,
    /// The triggering waiter hears how the launch ended: its error, or `Ok` once its container is
    /// offered to the queue.
    pub init_tx: oneshot::Sender<Result<(), FnError>>,
    /// The token of the first idle entry: the triggering waiter recognises its container by it.
    pub first_token: u64,
    /// When the launch was decided (for the queue's mean launch time).
    pub decided_at: Instant,
    /// The waiter whose call made this launch ([`SlotQueue::launch_failed`]).
    pub launcher: u64,
}

/// The Fn error a call sees when its launch failed in the driver: a failed pull is the registry's
/// 4xx (else 502) as Fn reports it, an image gone again right after its pull a 503 (try elsewhere),
/// anything else a 500 naming the Docker operation that failed.
fn driver_error(e: &DriverError) -> FnError {
    match e {
        // `pull_failed` keeps a 4xx and turns anything else (or no status at all) into 502.
        DriverError::PullImage { image, source } => {
            FnError::pull_failed(source.status.unwrap_or(502), image, &source.to_string())
        }
        DriverError::ImageStillMissing { .. } => FnError::server_busy(),
        other => FnError::new(500, other.to_string(), false),
    }
}

/// Runs one hot container from launch to teardown.
pub(crate) async fn run(inner: Arc<AgentInner>, req: LaunchRequest) {
    let LaunchRequest {
        queue,
        spec,
        idle_timeout,
        reservation,
        init_tx,
        first_token,
        decided_at,
        launcher,
    } = req;
    let gone = CancellationToken::new();
    let t_prep = Instant::now();
    let mut iofs = match IofsDir::create(&inner.cfg.iofs) {
        Ok(d) => d,
        Err(e) => {
            warn!(error = %e, "iofs");
            queue.launch_failed(launcher);
            let _ = init_tx.send(Err(FnError::new(500, e.to_string(), false)));
            return;
        }
    };
    let mut spec = spec;
    spec.iofs_docker_path = iofs.docker_path().to_path_buf();

    let ctr_prep_ns = t_prep.elapsed().as_nanos() as i64;
    let t_image = Instant::now();
    if let Err(e) = inner.driver.ensure_image(&spec.image).await {
        warn!(error = %e, image = %spec.image, "image not available");
        iofs.remove();
        queue.launch_failed(launcher);
        let _ = init_tx.send(Err(driver_error(&e)));
        return;
    }
    let image_pull_wait_ns = t_image.elapsed().as_nanos() as i64;
    let t_create = Instant::now();
    let started = match inner.driver.start(&spec).await {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "container start failed");
            iofs.remove();
            queue.launch_failed(launcher);
            let _ = init_tx.send(Err(driver_error(&e)));
            return;
        }
    };
    let ctr_create_ns = t_create.elapsed().as_nanos() as i64;
    crate::metrics::container_started();
    info!(container = %started.id, name = %spec.name, image = %spec.image, app_id = %spec.app_id, fn_id = %spec.fn_id,
          "container started");

    // The container's death ends everything, whenever it happens.
    let died = CancellationToken::new();
    {
        let inner = inner.clone();
        let id = started.id.clone();
        let died = died.clone();
        tokio::spawn(async move {
            match inner.driver.wait(&id).await {
                Ok(137) => info!(container = %id, "container exited with 137 (killed or out of memory)"),
                Ok(code) => info!(container = %id, code, "container exited"),
                Err(e) => debug!(container = %id, error = %e, "wait ended"),
            }
            died.cancel();
        });
    }

    let t_init = Instant::now();
    let ready = tokio::select! {
        r = tokio::time::timeout(inner.cfg.hot_start_timeout, iofs.wait_ready()) => match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => { warn!(container = %started.id, error = %e, "bad function socket"); Err(FnError::init_failed()) }
            Err(_) => Err(FnError::init_timeout()),
        },
        _ = died.cancelled() => Err(FnError::init_failed()),
        _ = inner.shutdown.cancelled() => Err(FnError::server_busy()),
    };
    let init_ns = t_init.elapsed().as_nanos() as i64;

    let handle = Arc::new(ContainerHandle {
        id: started.id.clone(),
        name: spec.name.clone(),
        app_id: spec.app_id.clone(),
        fn_id: spec.fn_id.clone(),
        timings: LaunchTimings {
            image_pull_wait_ns,
            ctr_prep_ns,
            ctr_create_ns,
        },
        init_ns,
        died: died.clone(),
        paused: tokio::sync::Mutex::new(false),
        sink: Mutex::new(Sink::container()),
        max_log: inner.cfg.max_log_bytes,
        inner: inner.clone(),
    });
    let pump = tokio::spawn(pump_logs(handle.clone(), started.logs));

    match ready {
        Err(e) => {
            info!(container = %started.id, error = %e.message(), "container init failed");
            queue.launch_failed(launcher);
            let _ = init_tx.send(Err(e));
        }
        Ok(()) => {
            let conn = FdkConn::new(iofs.socket_path(), inner.cfg.fdk_limits);
            serve(
                &inner,
                &queue,
                &handle,
                conn,
                idle_timeout,
                &died,
                &gone,
                &reservation,
                first_token,
                decided_at,
                init_tx,
            )
            .await;
        }
    }

    // Teardown, in order: the container, its iofs dir, then the resources and the eviction waiters.
    // A frozen container is thawed first so that the kill reaches it on any engine version.
    let _ = handle.thaw().await;
    if let Err(e) = inner.driver.remove(&started.id).await {
        warn!(container = %started.id, error = %e, "remove failed");
    }
    crate::metrics::container_removed();
    pump.abort();
    iofs.remove();
    drop(reservation);
    gone.cancel();
    debug!(container = %started.id, "container torn down");
}

enum Idle {
    /// The call returned the slot and it is idle again under a new token.
    Reoffered(u64, oneshot::Receiver<SlotReturn>),
    /// The container leaves (retired by its call, timeout, eviction, shutdown, death).
    Leave(&'static str),
}

#[allow(clippy::too_many_arguments)]
async fn serve(
    inner: &Arc<AgentInner>,
    queue: &Arc<SlotQueue>,
    handle: &Arc<ContainerHandle>,
    conn: FdkConn,
    idle_timeout: Duration,
    died: &CancellationToken,
    gone: &CancellationToken,
    reservation: &Reservation,
    first_token: u64,
    decided_at: Instant,
    init_tx: oneshot::Sender<Result<(), FnError>>,
) {
    let (done_tx, done_rx) = oneshot::channel();
    let slot = Slot {
        container: handle.clone(),
        queue: queue.clone(),
        fdk: Some(conn),
        done: Some(done_tx),
        launched_for_this_call: true,
        token: first_token,
        held_since: None,
    };
    queue.launch_ended(slot, decided_at.elapsed());
    // The call that launched it may launch again (its slot may have gone to an older waiter).
    let _ = init_tx.send(Ok(()));
    let (mut token, mut done_rx) = (first_token, done_rx);
    // Once fired, eviction stays pending: a container taken just before it leaves at its next idle.
    let evict = CancellationToken::new();
    inner.evictor.register(
        handle.id.clone(),
        queue.clone(),
        reservation.memory_mb(),
        reservation.cpu_milli(),
        evict.clone(),
        gone.clone(),
    );
    loop {
        let outcome = idle_wait(inner, queue, handle, token, done_rx, idle_timeout, died, &evict).await;
        match outcome {
            Idle::Reoffered(t, rx) => (token, done_rx) = (t, rx),
            Idle::Leave(why) => {
                info!(container = %handle.id, reason = why, "container leaving");
                break;
            }
        }
    }
    inner.evictor.unregister(&handle.id);
}

#[allow(clippy::too_many_arguments)]
async fn idle_wait(
    inner: &Arc<AgentInner>,
    queue: &Arc<SlotQueue>,
    handle: &Arc<ContainerHandle>,
    token: u64,
    mut done_rx: oneshot::Receiver<SlotReturn>,
    idle_timeout: Duration,
    died: &CancellationToken,
    evict: &CancellationToken,
) -> Idle {
    let idle_deadline = tokio::time::Instant::now() + idle_timeout;
    let freeze_at = inner.cfg.freeze_idle.map(|d| tokio::time::Instant::now() + d);
    let mut frozen = false;
    // Once a call holds the slot, only its return (or drop) matters.
    let mut taken = false;
    loop {
        let leave: &'static str = tokio::select! {
            r = &mut done_rx => {
                return match r {
                    Ok(SlotReturn::Reoffered { token, done }) => Idle::Reoffered(token, done),
                    Ok(SlotReturn::Retired) | Err(_) => Idle::Leave("retired after its call"),
                };
            }
            _ = async { tokio::time::sleep_until(freeze_at.expect("guarded")).await }, if !taken && !frozen && freeze_at.is_some() => {
                frozen = true;
                let mut paused = handle.paused.lock().await;
                // Pause only while the slot is still idle; a call that took it meanwhile thaws after us.
                if queue.is_idle(token) {
                    match inner.driver.pause(&handle.id).await {
                        Ok(()) => { *paused = true; debug!(container = %handle.id, "paused"); }
                        Err(e) => { warn!(error = %e, "pause failed"); drop(paused); if queue.withdraw(token) { return Idle::Leave("pause failed"); } }
                    }
                }
                continue;
            }
            _ = tokio::time::sleep_until(idle_deadline), if !taken => "idle timeout",
            _ = evict.cancelled(), if !taken => "evicted",
            _ = inner.shutdown.cancelled(), if !taken => "shutdown",
            _ = died.cancelled(), if !taken => "container exited",
        };
        if queue.withdraw(token) {
            return Idle::Leave(leave);
        }
        taken = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::EngineError;

    fn engine(status: Option<u16>, message: &str) -> EngineError {
        EngineError {
            status,
            message: message.to_string(),
        }
    }

    #[test]
    fn the_log_cap_logs_up_to_its_size_then_one_notice_then_nothing() {
        let mut cap = LogCap::default();
        // 10-byte lines take 11 bytes each (newline included).
        assert_eq!(cap.admit(10, 30), Admit::Log);
        assert_eq!(cap.admit(10, 30), Admit::Log);
        assert_eq!(cap.admit(10, 30), Admit::Truncate, "22 + 10 > 30");
        assert_eq!(cap.admit(0, 30), Admit::Drop);
        assert_eq!(cap.admit(1, 30), Admit::Drop);
        // A line longer than the cap on its own is never logged.
        let mut cap = LogCap::default();
        assert_eq!(cap.admit(31, 30), Admit::Truncate);
        assert_eq!(cap.admit(1, 30), Admit::Drop);
    }

    #[test]
    fn launch_failures_map_to_fn_errors() {
        let denied = driver_error(&DriverError::PullImage {
            image: "reg/fn:1".into(),
            source: engine(Some(401), "Docker responded with status code 401: unauthorized"),
        });
        assert_eq!(denied.code(), 401);
        assert_eq!(
            denied.message(),
            "Failed to pull image 'reg/fn:1': Docker responded with status code 401: unauthorized"
        );
        assert!(denied.is_user_error());
        for status in [Some(500), None] {
            let e = driver_error(&DriverError::PullImage {
                image: "reg/fn:1".into(),
                source: engine(status, "registry down"),
            });
            assert_eq!(
                (e.code(), e.message()),
                (502, "Failed to pull image 'reg/fn:1': registry down")
            );
        }
        let missing = driver_error(&DriverError::ImageStillMissing { image: "fn:1".into() });
        assert_eq!(missing, FnError::server_busy());
        let create = driver_error(&DriverError::CreateContainer {
            name: "ferrofn-x".into(),
            image: "fn:1".into(),
            source: engine(Some(409), "Docker responded with status code 409: name in use"),
        });
        assert_eq!(create.code(), 500);
        assert_eq!(
            create.message(),
            "cannot create container ferrofn-x from image fn:1: Docker responded with status code 409: name in use"
        );
        assert!(!create.is_user_error());
    }
}
