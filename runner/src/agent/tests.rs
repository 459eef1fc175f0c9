//! Agent logic against a fake driver whose "containers" are in-process FDK servers on the real iofs
//! socket path (phony socket + symlink, as FDKs do), so launch, reuse, eviction, idle timeout,
//! freezing and init failures are exercised without Docker.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

use super::*;
use crate::driver::{DriverError, DriverFuture, LogChunk, StartedContainer};
use crate::fdk::{FdkBody, FdkRequest};

#[derive(Default)]
struct FakeDriver {
    started: AtomicUsize,
    removed: AtomicUsize,
    paused: AtomicUsize,
    unpaused: AtomicUsize,
    live: Mutex<HashMap<String, CancellationToken>>,
    /// While set and not cancelled, starts wait for it (the test decides when containers are up).
    start_gate: Mutex<Option<CancellationToken>>,
}

impl FakeDriver {
    fn live(&self) -> usize {
        self.live.lock().unwrap().len()
    }

    /// Holds every start from now until the returned token is cancelled.
    fn hold_starts(&self) -> CancellationToken {
        let gate = CancellationToken::new();
        *self.start_gate.lock().unwrap() = Some(gate.clone());
        gate
    }
}

/// The fake FDK: echoes the body with the call id prefixed.
async fn fdk_server(listener: tokio::net::UnixListener, stop: CancellationToken) {
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r { Ok((s, _)) => s, Err(_) => return },
            _ = stop.cancelled() => return,
        };
        let stop = stop.clone();
        tokio::spawn(async move {
            let svc = service_fn(|req: hyper::Request<Incoming>| async move {
                let id = req
                    .headers()
                    .get("fn-call-id")
                    .map(|v| v.to_str().unwrap().to_string())
                    .unwrap_or_default();
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let mut out = format!("{id}:").into_bytes();
                out.extend_from_slice(&body);
                Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(out))))
            });
            let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
            tokio::select! { _ = conn => {}, _ = stop.cancelled() => {} }
        });
    }
}

impl Driver for FakeDriver {
    fn ensure_image<'a>(&'a self, image: &'a str) -> DriverFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            if image == "missing" {
                return Err(DriverError::ImageStillMissing { image: image.into() });
            }
            Ok(())
        })
    }
    fn start<'a>(
        &'a self,
        spec: &'a ContainerSpec,
    ) -> DriverFuture<'a, Result<StartedContainer, DriverError>> {
        Box::pin(async move {
            let n = self.started.fetch_add(1, Ordering::SeqCst);
            let gate = self.start_gate.lock().unwrap().clone();
            if let Some(gate) = gate {
                gate.cancelled().await;
            }
            let id = format!("fake{n}");
            let stop = CancellationToken::new();
            self.live.lock().unwrap().insert(id.clone(), stop.clone());
            let dir = spec.iofs_docker_path.clone();
            match spec.image.as_str() {
                "hang" => {}
                "exit" => stop.cancel(),
                _ => {
                    let l = tokio::net::UnixListener::bind(dir.join("phonylsnr.sock")).unwrap();
                    std::os::unix::fs::symlink("phonylsnr.sock", dir.join("lsnr.sock")).unwrap();
                    tokio::spawn(fdk_server(l, stop));
                }
            }
            let logs = futures::stream::iter(vec![LogChunk::Stderr(Bytes::from_static(
                b"hello from the fake\n",
            ))]);
            Ok(StartedContainer {
                id,
                logs: Box::pin(logs),
            })
        })
    }
    fn wait<'a>(&'a self, id: &'a str) -> DriverFuture<'a, Result<i64, DriverError>> {
        Box::pin(async move {
            let t = self.live.lock().unwrap().get(id).cloned();
            if let Some(t) = t {
                t.cancelled().await;
            }
            Ok(0)
        })
    }
    fn pause<'a>(&'a self, _id: &'a str) -> DriverFuture<'a, Result<(), DriverError>> {
        self.paused.fetch_add(1, Ordering::SeqCst);
        Box::pin(async { Ok(()) })
    }
    fn unpause<'a>(&'a self, _id: &'a str) -> DriverFuture<'a, Result<(), DriverError>> {
        self.unpaused.fetch_add(1, Ordering::SeqCst);
        Box::pin(async { Ok(()) })
    }
    fn remove<'a>(&'a self, id: &'a str) -> DriverFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            if let Some(t) = self.live.lock().unwrap().remove(id) {
                t.cancel();
                self.removed.fetch_add(1, Ordering::SeqCst);
            }
            Ok(())
        })
    }
    fn sweep(&self) -> DriverFuture<'_, Result<usize, DriverError>> {
        Box::pin(async { Ok(0) })
    }
    fn sweep_own(&self) -> DriverFuture<'_, Result<usize, DriverError>> {
        Box::pin(async { Ok(0) })
    }
    fn ping(&self) -> DriverFuture<'_, bool> {
        Box::pin(async { true })
    }
}

struct Fixture {
    _tmp: tempfile::TempDir,
    driver: Arc<FakeDriver>,
    agent: Agent,
}

fn fixture(memory_mb: u64, freeze: Option<Duration>) -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let driver = Arc::new(FakeDriver::default());
    let cfg = AgentConfig {
        iofs: IofsConfig {
            root: tmp.path().to_path_buf(),
            docker_root: None,
            prefix: crate::iofs::dir_prefix("test"),
        },
        hot_start_timeout: Duration::from_millis(500),
        hot_poll: Duration::from_millis(50),
        max_starting: 8,
        freeze_idle: freeze,
        fdk_limits: FdkLimits::default(),
        max_log_bytes: 1024,
        capacity: Capacity {
            memory_mb,
            cpu_milli: 4000,
        },
    };
    let agent = Agent::new(driver.clone(), cfg);
    Fixture {
        _tmp: tmp,
        driver,
        agent,
    }
}

fn call(fn_id: &str, image: &str, memory: u64, idle: i32) -> PreparedCall {
    let json = format!(
        r#"{{"id":"{}","app_id":"app","fn_id":"{fn_id}","image":"{image}","memory":{memory},"timeout":30,"idle_timeout":{idle}}}"#,
        ferrofn_common::id::new_id()
    );
    let agent_less = CallModel::from_json(&json).unwrap();
    let mut env = agent_less.config.clone();
    env.insert("FN_LISTENER".into(), FN_LISTENER.into());
    let key = SlotKey::for_call(&agent_less, &env);
    PreparedCall {
        model: agent_less,
        key,
        env,
        network_disabled: false,
    }
}

async fn invoke(slot: &mut Slot, body: &'static str) -> String {
    let req = FdkRequest {
        call_id: "c1".into(),
        deadline: "2030-01-01T00:00:00Z".into(),
        headers: vec![],
        body: FdkBody::Full(Bytes::from_static(body.as_bytes())),
    };
    let mut resp = slot.fdk().call(req).await.unwrap();
    let mut out = Vec::new();
    while let Some(c) = resp.next_chunk().await.unwrap() {
        out.extend_from_slice(&c);
    }
    String::from_utf8(out).unwrap()
}

/// Polls `cond` every 10 ms for at most 5 s.
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn sequential_calls_reuse_one_container() {
    let f = fixture(1024, None);
    let c = call("f1", "echo", 128, 30);
    for _ in 0..5 {
        let mut slot = f.agent.get_slot(&c).await.unwrap();
        assert_eq!(invoke(&mut slot, "hi").await, "c1:hi");
        slot.release(true);
    }
    assert_eq!(f.driver.started.load(Ordering::SeqCst), 1);
    assert_eq!(f.agent.resources().used().0, 128);
    f.agent.shutdown();
    f.agent.wait_drained().await;
    assert_eq!(f.driver.live(), 0);
    assert_eq!(f.agent.resources().used(), (0, 0));
}

#[tokio::test]
async fn concurrent_calls_get_their_own_containers() {
    let f = fixture(1024, None);
    let c = call("f1", "echo", 64, 30);
    let mut slots = Vec::new();
    for _ in 0..4 {
        slots.push(f.agent.get_slot(&c).await.unwrap());
    }
    assert_eq!(f.driver.started.load(Ordering::SeqCst), 4);
    let ids: std::collections::HashSet<_> = slots.iter().map(|s| s.container().id.clone()).collect();
    assert_eq!(ids.len(), 4);
    for s in slots {
        s.release(true);
    }
    assert_eq!(f.agent.queue_stats(&c.key).unwrap().idle, 4);
    // LIFO: the next call gets the most recently idled container, and no new one starts.
    let s = f.agent.get_slot(&c).await.unwrap();
    assert_eq!(f.driver.started.load(Ordering::SeqCst), 4);
    drop(s);
    eventually("dropped slot destroys its container", || {
        f.driver.removed.load(Ordering::SeqCst) == 1
    })
    .await;
    f.agent.shutdown();
    f.agent.wait_drained().await;
    assert_eq!(f.driver.live(), 0);
}

#[tokio::test]
async fn full_node_waits_for_own_busy_containers_nacks_others_then_evicts() {
    let f = fixture(256, None);
    let a = call("fa", "echo", 128, 30);
    let s1 = f.agent.get_slot(&a).await.unwrap();
    let s2 = f.agent.get_slot(&a).await.unwrap();
    // Both busy, same function, no room for a third: the call waits for one of them (Fn NACKs
    // only the call that nothing but a launch could serve).
    let third = {
        let (agent, a) = (f.agent.clone(), a.clone());
        tokio::spawn(async move { agent.get_slot(&a).await })
    };
    eventually("the third call waits", || {
        f.agent.queue_stats(&a.key).unwrap().waiting == 1
    })
    .await;
    let b = call("fb", "echo", 128, 30);
    let e = f.agent.get_slot(&b).await.unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (503, "Timed out - server too busy"),
        "a function with no container and no room is NACKed at once (busy ones are not evictable)"
    );
    let s1_id = s1.container().id.clone();
    s1.release(true);
    let s3 = third.await.unwrap().unwrap();
    assert_eq!(
        s3.container().id,
        s1_id,
        "the returned slot went to the waiting call"
    );
    assert_eq!(f.driver.started.load(Ordering::SeqCst), 2, "no third container");
    s2.release(true);
    s3.release(true);
    // fa's containers are idle now: fb evicts one of them.
    let mut sb = f.agent.get_slot(&b).await.unwrap();
    assert_eq!(invoke(&mut sb, "b").await, "c1:b");
    assert_eq!(f.driver.removed.load(Ordering::SeqCst), 1);
    assert_eq!(f.agent.queue_stats(&a.key).unwrap().idle, 1);
    sb.release(true);
    // Impossible sizes are a 400 at admission.
    let big = CallModel::from_json(r#"{"id":"x","image":"echo","memory":512}"#).unwrap();
    assert_eq!(f.agent.prepare(big, "").unwrap_err().code(), 400);
    f.agent.shutdown();
    f.agent.wait_drained().await;
}

#[tokio::test]
async fn a_waiter_that_leaves_passes_its_slot_on() {
    let f = fixture(128, None);
    let a = call("fa", "echo", 128, 30);
    let s1 = f.agent.get_slot(&a).await.unwrap();
    let spawn_waiter = || {
        let (agent, a) = (f.agent.clone(), a.clone());
        tokio::spawn(async move { agent.get_slot(&a).await })
    };
    let w1 = spawn_waiter();
    eventually("first waiter queued", || {
        f.agent.queue_stats(&a.key).unwrap().waiting == 1
    })
    .await;
    let w2 = spawn_waiter();
    eventually("second waiter queued", || {
        f.agent.queue_stats(&a.key).unwrap().waiting == 2
    })
    .await;
    // The first waiter goes away (its LB cancelled the call): the slot must reach the second.
    w1.abort();
    let _ = w1.await;
    s1.release(true);
    let s2 = w2.await.unwrap().unwrap();
    assert_eq!(f.driver.started.load(Ordering::SeqCst), 1);
    assert_eq!(f.driver.removed.load(Ordering::SeqCst), 0, "nothing destroyed");
    s2.release(true);
    assert_eq!(f.agent.queue_stats(&a.key).unwrap().idle, 1);
    f.agent.shutdown();
    f.agent.wait_drained().await;
    assert_eq!(f.driver.live(), 0);
}

#[tokio::test]
async fn a_call_waiting_longer_than_its_timeout_is_nacked() {
    let f = fixture(128, None);
    let mut a = call("fa", "echo", 128, 30);
    a.model.timeout = 1;
    let s1 = f.agent.get_slot(&a).await.unwrap();
    let t = std::time::Instant::now();
    let e = f.agent.get_slot(&a).await.unwrap_err();
    assert_eq!(e.code(), 503);
    assert!(t.elapsed() >= Duration::from_secs(1));
    s1.release(true);
    f.agent.shutdown();
    f.agent.wait_drained().await;
}

#[tokio::test]
async fn idle_timeout_removes_container() {
    let f = fixture(1024, None);
    let c = call("f1", "echo", 64, 1);
    let slot = f.agent.get_slot(&c).await.unwrap();
    slot.release(true);
    let t = std::time::Instant::now();
    eventually("idle container removed", || {
        f.driver.removed.load(Ordering::SeqCst) == 1
    })
    .await;
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "removed too early: {:?}",
        t.elapsed()
    );
    eventually("resources released", || f.agent.resources().used() == (0, 0)).await;
}

#[tokio::test]
async fn freeze_pauses_idle_and_take_unpauses() {
    let f = fixture(1024, Some(Duration::from_millis(50)));
    let c = call("f1", "echo", 64, 30);
    let slot = f.agent.get_slot(&c).await.unwrap();
    slot.release(true);
    eventually("paused", || f.driver.paused.load(Ordering::SeqCst) == 1).await;
    let mut slot = f.agent.get_slot(&c).await.unwrap();
    assert_eq!(f.driver.unpaused.load(Ordering::SeqCst), 1);
    assert_eq!(invoke(&mut slot, "x").await, "c1:x");
    slot.release(true);
    f.agent.shutdown();
    f.agent.wait_drained().await;
}

#[tokio::test]
async fn init_failures_reach_the_caller() {
    let f = fixture(1024, None);
    let e = f.agent.get_slot(&call("f1", "hang", 64, 30)).await.unwrap_err();
    assert_eq!(e.code(), 504, "{}", e.message());
    assert!(e.message().starts_with("Container initialization timed out"));
    let e = f.agent.get_slot(&call("f2", "exit", 64, 30)).await.unwrap_err();
    assert_eq!(e.code(), 502, "{}", e.message());
    let e = f
        .agent
        .get_slot(&call("f3", "missing", 64, 30))
        .await
        .unwrap_err();
    assert_eq!(e.code(), 503);
    eventually("failed containers removed", || f.driver.live() == 0).await;
    eventually("resources released", || f.agent.resources().used() == (0, 0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_of_a_function_that_never_starts_gets_the_init_timeout() {
    // 10 calls at once of a function that never becomes ready (init timeout 500 ms), each allowed
    // to wait 2 s for a slot. Slow start launches 2; once those fail, each waiting call launches
    // its own (as in Fn), so every call gets the 504 of a start. Two at a time (5 rounds, 2.5 s)
    // would leave the last calls to end their wait with a 503 instead.
    let f = fixture(4096, None);
    let mut c = call("f1", "hang", 64, 30);
    c.model.timeout = 2;
    let calls: Vec<_> = (0..10)
        .map(|_| {
            let (agent, c) = (f.agent.clone(), c.clone());
            tokio::spawn(async move { agent.get_slot(&c).await.map(drop) })
        })
        .collect();
    for r in futures::future::join_all(calls).await {
        let e = r.unwrap().unwrap_err();
        assert_eq!(e.code(), 504, "{}", e.message());
    }
    // One start per call: a call whose start failed leaves the queue in the same step, so no other
    // waiter launches for it.
    assert_eq!(f.driver.started.load(Ordering::SeqCst), 10, "starts for 10 calls");
    eventually("failed containers removed", || f.driver.live() == 0).await;
}

#[tokio::test]
async fn shutdown_refuses_new_calls_and_lets_busy_finish() {
    let f = fixture(1024, None);
    let c = call("f1", "echo", 64, 30);
    let mut busy = f.agent.get_slot(&c).await.unwrap();
    f.agent.shutdown();
    assert_eq!(f.agent.get_slot(&c).await.unwrap_err().code(), 503);
    assert_eq!(invoke(&mut busy, "late").await, "c1:late");
    assert_eq!(f.driver.live(), 1);
    busy.release(true);
    f.agent.wait_drained().await;
    assert_eq!(f.driver.live(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_waiters_launch_exactly_one_container_each() {
    for _ in 0..5 {
        let f = fixture(4096, None);
        let c = call("f1", "echo", 64, 30);
        let waiters: Vec<_> = (0..6)
            .map(|_| {
                let (agent, c) = (f.agent.clone(), c.clone());
                tokio::spawn(async move { agent.get_slot(&c).await.unwrap() })
            })
            .collect();
        let mut slots = Vec::new();
        for w in waiters {
            slots.push(w.await.unwrap());
        }
        assert_eq!(
            f.driver.started.load(Ordering::SeqCst),
            6,
            "one container per concurrent call, no extra"
        );
        drop(slots);
        f.agent.shutdown();
        f.agent.wait_drained().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_of_calls_starts_few_containers_and_serves_every_call() {
    let f = fixture(4096, None);
    let gate = f.driver.hold_starts();
    let c = call("f1", "echo", 64, 30);
    let calls: Vec<_> = (0..16)
        .map(|_| {
            let (agent, c) = (f.agent.clone(), c.clone());
            tokio::spawn(async move {
                let mut slot = agent.get_slot(&c).await.unwrap();
                let out = invoke(&mut slot, "x").await;
                slot.release(true);
                out
            })
        })
        .collect();
    let queue = f.agent.queue_for(&c.key);
    let stats = || queue.stats();
    eventually("16 calls wait, two containers start", || {
        stats().waiting == 16 && f.driver.started.load(Ordering::SeqCst) == 2
    })
    .await;
    // Four poll rounds (50 ms) while the two start: nothing known of the hold, no more launches.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        stats(),
        QueueStats {
            idle: 0,
            waiting: 16,
            starting: 2,
            busy: 0
        }
    );
    assert_eq!(f.driver.started.load(Ordering::SeqCst), 2);
    gate.cancel();
    for call in calls {
        assert_eq!(call.await.unwrap(), "c1:x");
    }
    let started = f.driver.started.load(Ordering::SeqCst);
    // The first calls return in about a millisecond: the wait rule then sees the two containers
    // serve the queue long before a launch would. A slow machine may show a call running longer
    // than 1/14 of a launch before it returns: one slow-start round more, no more than doubling.
    assert!(
        (2..=4).contains(&started),
        "{started} containers for 16 calls of a fast function"
    );
    // A launch decided while calls still waited may come up after the last one was served.
    eventually("every container is idle", || stats().idle == started).await;
    assert_eq!(queue.leases(), 0);
    f.agent.shutdown();
    f.agent.wait_drained().await;
    assert_eq!(f.driver.live(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_function_gets_containers_before_any_call_returns() {
    let f = fixture(4096, None);
    let gate = f.driver.hold_starts();
    let c = call("f1", "echo", 64, 30);
    // The calls hold their slots until the end of the test: a function slower than all of this.
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let (agent, c) = (f.agent.clone(), c.clone());
            tokio::spawn(async move { agent.get_slot(&c).await.unwrap() })
        })
        .collect();
    let queue = f.agent.queue_for(&c.key);
    eventually("8 calls wait, two containers start", || {
        queue.stats().waiting == 8 && f.driver.started.load(Ordering::SeqCst) == 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(f.driver.started.load(Ordering::SeqCst), 2, "no launch per waiter");
    // The two come up (a launch took over 150 ms) and take two calls; the other six get
    // containers once those calls have run long enough, while none of them has returned.
    gate.cancel();
    let mut slots = Vec::new();
    for call in calls {
        slots.push(call.await.unwrap());
    }
    assert!(!queue.knows_hold(), "served before any call returned its slot");
    assert_eq!(
        f.driver.started.load(Ordering::SeqCst),
        8,
        "one container per concurrent call, no extra"
    );
    let ids: std::collections::HashSet<_> = slots.iter().map(|s| s.container().id.clone()).collect();
    assert_eq!(ids.len(), 8);
    assert_eq!(queue.leases(), 8);
    for s in slots {
        s.release(true);
    }
    assert_eq!(queue.stats().idle, 8);
    assert_eq!(queue.leases(), 0);
    f.agent.shutdown();
    f.agent.wait_drained().await;
    assert_eq!(f.driver.live(), 0);
}

#[test]
fn prepare_sets_fdk_env_and_honours_the_lb_slot_key() {
    let f = fixture(1024, None);
    let model = CallModel::from_json(r#"{"id":"x","image":"echo","memory":64,"config":{"A":"1"}}"#).unwrap();
    let p = f.agent.prepare(model.clone(), "").unwrap();
    assert_eq!(
        p.env.get("FN_LISTENER").map(String::as_str),
        Some("unix:/tmp/iofs/lsnr.sock")
    );
    assert_eq!(p.env.get("FN_FORMAT").map(String::as_str), Some("http-stream"));
    assert_eq!(p.env.get("A").map(String::as_str), Some("1"));
    assert_eq!(p.key.0.len(), 32, "our own sha256 key");
    let p = f.agent.prepare(model.clone(), "abcd01").unwrap();
    assert_eq!(
        p.key,
        SlotKey(vec![0xab, 0xcd, 0x01]),
        "a non-empty slot_hash_id is used verbatim"
    );
    let e = f.agent.prepare(model, "zz").unwrap_err();
    assert_eq!(e.code(), 0, "a bad hex key is not an API error, as in Fn");
}
