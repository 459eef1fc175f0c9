//! The runner's Engage handler in-process (runner/src/engage.rs `engage` with the real agent): the
//! LB's side of one stream is a sequence of client messages made from the fuzz input (TryCalls with
//! a template or raw call JSON, data frames with or without `eof`, in any order), framed as gRPC and
//! cut at arbitrary points. The agent runs "containers" through a fake driver: `echo` serves an FDK
//! that answers `<call id>:<body>`, `fail` answers 502, `hang` never opens its socket, `missing`
//! has no image.
//! Invariants (the Engage contract, engage-protocol.md): a stream that does not open with a
//! TryCall gets one error status and nothing else; otherwise the runner sends at most one empty
//! accept-ack frame (only when asked), then at most one ResultStart, data frames of at most 10 KiB
//! only after it, and exactly one CallFinished, last; a successful call had a ResultStart; an `echo`
//! call that succeeds answers exactly the body the LB sent up to its `eof` frame; the in-flight
//! counter is back to 0 when the stream ends.
#![no_main]

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use ferrofn_fuzz::{Input, grpc_frame, runtime, split_body};
use ferrofn_proto::{ClientMsg, DataFrame, MAX_DATA_CHUNK, TryCall, client_msg, runner_msg};
use ferrofn_runner::agent::{Agent, AgentConfig, Capacity};
use ferrofn_runner::driver::{ContainerSpec, Driver, DriverError, DriverFuture, LogChunk, StartedContainer};
use ferrofn_runner::engage::{Counters, EngageContext, StreamMeta, engage};
use ferrofn_runner::fdk::FdkLimits;
use ferrofn_runner::iofs::{IofsConfig, dir_prefix};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use libfuzzer_sys::fuzz_target;
use tokio_util::sync::CancellationToken;
use tonic::codec::{Codec, Streaming};
use tonic_prost::ProstCodec;

/// Containers as in-process FDK servers on the real iofs socket path (phony socket + symlink).
#[derive(Default)]
struct FakeDriver {
    live: Mutex<std::collections::HashMap<String, CancellationToken>>,
    next: std::sync::atomic::AtomicUsize,
}

async fn fdk_server(listener: tokio::net::UnixListener, stop: CancellationToken, fail: bool) {
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r { Ok((s, _)) => s, Err(_) => return },
            _ = stop.cancelled() => return,
        };
        let stop = stop.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: hyper::Request<Incoming>| async move {
                let id = req
                    .headers()
                    .get("fn-call-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                let body = req
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let mut out = format!("{id}:").into_bytes();
                out.extend_from_slice(&body);
                let mut resp = hyper::Response::new(Full::new(Bytes::from(out)));
                if fail {
                    *resp.status_mut() = hyper::StatusCode::BAD_GATEWAY;
                }
                Ok::<_, std::convert::Infallible>(resp)
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
            let id = format!("fake{}", self.next.fetch_add(1, Ordering::SeqCst));
            let stop = CancellationToken::new();
            self.live.lock().unwrap().insert(id.clone(), stop.clone());
            let dir = spec.iofs_docker_path.clone();
            if spec.image != "hang" {
                let l = tokio::net::UnixListener::bind(dir.join("phonylsnr.sock")).expect("bind fake FDK");
                std::os::unix::fs::symlink("phonylsnr.sock", dir.join("lsnr.sock")).expect("symlink");
                tokio::spawn(fdk_server(l, stop, spec.image == "fail"));
            }
            let logs = futures::stream::iter(vec![LogChunk::Stderr(Bytes::from_static(b"fake\n"))]);
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
    fn pause<'a>(&'a self, _: &'a str) -> DriverFuture<'a, Result<(), DriverError>> {
        Box::pin(async { Ok(()) })
    }
    fn unpause<'a>(&'a self, _: &'a str) -> DriverFuture<'a, Result<(), DriverError>> {
        Box::pin(async { Ok(()) })
    }
    fn remove<'a>(&'a self, id: &'a str) -> DriverFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            if let Some(t) = self.live.lock().unwrap().remove(id) {
                t.cancel();
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
    _dir: tempfile::TempDir,
    ctx: EngageContext,
}

/// One agent for the process: hot containers of earlier inputs stay idle and are reused, as on a
/// real runner.
fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let cfg = AgentConfig {
            iofs: IofsConfig {
                root: dir.path().to_path_buf(),
                docker_root: None,
                prefix: dir_prefix("fuzz"),
            },
            hot_start_timeout: Duration::from_millis(50),
            hot_poll: Duration::from_millis(10),
            max_starting: 4,
            freeze_idle: None,
            fdk_limits: FdkLimits::default(),
            max_log_bytes: 1024,
            capacity: Capacity {
                memory_mb: 1024,
                cpu_milli: 4000,
            },
        };
        let _guard = runtime().enter();
        let agent = Agent::new(Arc::new(FakeDriver::default()), cfg);
        Fixture {
            _dir: dir,
            ctx: EngageContext {
                agent,
                status_image: Some("status".into()),
                counters: Arc::new(Counters::default()),
                draining: CancellationToken::new(),
            },
        }
    })
}

const IMAGES: [&str; 6] = ["echo", "echo", "fail", "hang", "missing", "status"];

fn template(input: &mut Input<'_>, id: &str) -> String {
    let image = IMAGES[input.byte() as usize % IMAGES.len()];
    let memory = [64, 128, 0, 4096][input.byte() as usize % 4];
    let timeout = [1, 0, 1][input.byte() as usize % 3];
    format!(
        r#"{{"id":"{id}","app_id":"app","fn_id":"fn-{image}","image":"{image}","memory":{memory},"timeout":{timeout},"idle_timeout":30,"type":"sync"}}"#
    )
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let flags = input.byte();
    let want_ack = flags & 1 != 0;
    let mut sent = Vec::new();
    let mut body_to_eof: Option<Vec<u8>> = None;
    let mut body = Vec::new();
    let mut first_is_try = None;
    let mut echo_call = None;
    for i in 0..(input.byte() % 12) {
        let op = input.byte();
        let m = match op % 5 {
            0 | 1 => {
                let id = format!("01FUZZCALL{i:02}");
                let json = if op % 5 == 0 {
                    template(&mut input, &id)
                } else {
                    String::from_utf8_lossy(input.short()).into_owned()
                };
                let mut extensions = std::collections::HashMap::new();
                if want_ack {
                    extensions.insert(
                        ferrofn_proto::ext::ACCEPT_ACK.to_owned(),
                        ferrofn_proto::ext::ON.to_owned(),
                    );
                }
                if first_is_try.is_none() && op % 5 == 0 && json.contains("\"image\":\"echo\"") {
                    echo_call = Some(id);
                }
                client_msg::Body::Try(TryCall {
                    models_call_json: json,
                    slot_hash_id: String::new(),
                    extensions,
                })
            }
            2 | 3 => {
                let eof = op % 5 == 3;
                let data = Bytes::copy_from_slice(input.short());
                if body_to_eof.is_none() && first_is_try == Some(true) {
                    body.extend_from_slice(&data);
                    if eof {
                        body_to_eof = Some(body.clone());
                    }
                }
                client_msg::Body::Data(DataFrame { data, eof })
            }
            _ => continue,
        };
        first_is_try.get_or_insert(matches!(m, client_msg::Body::Try(_)));
        sent.push(ClientMsg { body: Some(m) });
    }
    let cuts: Vec<u16> = (0..(input.byte() % 8)).map(|_| input.u16()).collect();
    let wire: Vec<u8> = sent.iter().flat_map(grpc_frame).collect();
    let fx = fixture();
    let out = runtime().block_on(async {
        let decoder = Codec::decoder(&mut ProstCodec::<ClientMsg, ClientMsg>::default());
        let inbound = Streaming::new_request(decoder, split_body(wire, &cuts), None, None);
        let (mut rx, _answered) = engage(fx.ctx.clone(), inbound, StreamMeta::default());
        tokio::time::timeout(Duration::from_secs(20), async {
            let mut out = Vec::new();
            while let Some(m) = rx.recv().await {
                out.push(m);
            }
            out
        })
        .await
        .expect("the Engage stream did not end")
    });
    assert_eq!(
        fx.ctx.counters.inflight.load(Ordering::SeqCst),
        0,
        "in-flight counter not back to 0"
    );

    if first_is_try != Some(true) {
        assert_eq!(out.len(), 1, "a stream without a TryCall: {out:?}");
        assert!(out[0].is_err(), "a stream without a TryCall must fail: {out:?}");
        return;
    }
    let msgs: Vec<runner_msg::Body> = out
        .into_iter()
        .map(|m| {
            m.expect("no error status after a TryCall")
                .body
                .expect("a message has a body")
        })
        .collect();
    let (last, before) = msgs.split_last().expect("at least CallFinished");
    let runner_msg::Body::Finished(finished) = last else {
        panic!("the last message is not CallFinished: {msgs:?}")
    };
    let mut started = false;
    let mut acked = false;
    let mut answer = Vec::new();
    for m in before {
        match m {
            runner_msg::Body::Finished(_) => panic!("CallFinished twice: {msgs:?}"),
            runner_msg::Body::ResultStart(_) => {
                assert!(!started, "ResultStart twice: {msgs:?}");
                started = true;
            }
            runner_msg::Body::Data(d) if !started => {
                assert!(
                    want_ack && !acked && d.data.is_empty() && !d.eof,
                    "data before ResultStart: {msgs:?}"
                );
                acked = true;
            }
            runner_msg::Body::Data(d) => {
                assert!(
                    d.data.len() <= MAX_DATA_CHUNK,
                    "a {}-byte data frame",
                    d.data.len()
                );
                answer.extend_from_slice(&d.data);
            }
        }
    }
    if finished.success {
        assert!(started, "success without ResultStart: {msgs:?}");
        if let (Some(id), Some(body)) = (&echo_call, &body_to_eof) {
            let mut want = format!("{id}:").into_bytes();
            want.extend_from_slice(body);
            assert_eq!(answer, want, "echo answered something else than the body sent");
        }
    }
});
