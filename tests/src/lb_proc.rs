//! Harness for the LB: start `ferrofn-lb` in-process on 127.0.0.1:0 with a registry of either
//! [`Backend`] (a SQLite file in a temp dir, or a fresh database on the test process's throwaway
//! Postgres), or on a given database URL (to test restarts), and a small HTTP/1.1 client for the
//! tests.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http::{HeaderMap, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tempfile::TempDir;

use ferrofn_common::shutdown::Shutdown;
use ferrofn_lb::{LbHandle, LbSettings};

use crate::pg_server::PgServer;

/// Where a test LB keeps its registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file in a temp dir.
    Sqlite,
    /// A fresh database on the test process's throwaway Postgres ([`PgServer::shared`]).
    Postgres,
}

/// A registry database for test LBs: its `FN_DB_URL`, kept until dropped (a SQLite temp dir; a
/// Postgres database lives as long as the shared server).
#[derive(Debug)]
pub struct TestDb {
    /// `sqlite3:///...` or `postgres://...`.
    pub url: String,
    _dir: Option<TempDir>,
}

impl TestDb {
    /// A new empty database of `backend`.
    pub async fn new(backend: Backend) -> Result<Self> {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().context("temp dir for the LB database")?;
                Ok(Self {
                    url: format!("sqlite3://{}", dir.path().join("fn.db").display()),
                    _dir: Some(dir),
                })
            }
            Backend::Postgres => {
                let pg = PgServer::shared().await?;
                let db = pg.create_database().await?;
                Ok(Self {
                    url: pg.url(&db),
                    _dir: None,
                })
            }
        }
    }
}

/// A running in-process LB.
#[derive(Debug)]
pub struct LbProc {
    /// The running server.
    pub handle: LbHandle,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    /// Its `FN_DB_URL`.
    pub db_url: String,
    db: Option<TestDb>,
}

/// Settings for a test LB: loopback, free port, plaintext, no runners, fast probes, the given
/// database URL.
pub fn test_settings(db_url: &str) -> LbSettings {
    LbSettings {
        listen_address: "127.0.0.1".into(),
        port: 0,
        plaintext: true,
        db_url: db_url.to_owned(),
        health_interval_ms: 200,
        ..LbSettings::default()
    }
}

impl LbProc {
    /// Starts an LB with a fresh SQLite database; `tune` adjusts the settings first.
    pub async fn start(tune: impl FnOnce(&mut LbSettings)) -> Result<Self> {
        Self::start_on(Backend::Sqlite, tune).await
    }

    /// Starts an LB with a fresh database of `backend`.
    pub async fn start_on(backend: Backend, tune: impl FnOnce(&mut LbSettings)) -> Result<Self> {
        let db = TestDb::new(backend).await?;
        let mut me = Self::start_with_url(&db.url, tune).await?;
        me.db = Some(db);
        Ok(me)
    }

    /// Starts an LB on an existing (or new) database.
    pub async fn start_with_url(db_url: &str, tune: impl FnOnce(&mut LbSettings)) -> Result<Self> {
        Self::start_full(db_url, None, tune).await
    }

    /// Starts an LB with a fresh SQLite database that looks runner names up with `resolver`
    /// (a test's own "DNS": a name with several addresses needs no `/etc/hosts` entry).
    pub async fn start_resolving(
        resolver: std::sync::Arc<dyn ferrofn_lb::pool::Resolve>,
        tune: impl FnOnce(&mut LbSettings),
    ) -> Result<Self> {
        let db = TestDb::new(Backend::Sqlite).await?;
        let mut me = Self::start_full(&db.url, Some(resolver), tune).await?;
        me.db = Some(db);
        Ok(me)
    }

    async fn start_full(
        db_url: &str,
        resolver: Option<std::sync::Arc<dyn ferrofn_lb::pool::Resolve>>,
        tune: impl FnOnce(&mut LbSettings),
    ) -> Result<Self> {
        let mut settings = test_settings(db_url);
        tune(&mut settings);
        let handle = match resolver {
            Some(r) => ferrofn_lb::start_with_resolver(&settings, Shutdown::new(), r).await,
            None => ferrofn_lb::start(&settings, Shutdown::new()).await,
        }
        .context("starting the LB")?;
        let base = format!("http://{}", handle.local_addr);
        Ok(Self {
            handle,
            base,
            db_url: db_url.to_owned(),
            db: None,
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.handle.local_addr
    }

    /// `base + path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Stops it (graceful), handing back its database if it owns one (to start another LB on it).
    pub async fn stop(self) -> Option<TestDb> {
        self.handle.stop().await;
        self.db
    }
}

/// A response read in full.
#[derive(Debug, Clone)]
pub struct Resp {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl Resp {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header's value as text ("" if missing).
    pub fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    }
}

/// Sends one HTTP/1.1 request and reads the whole response.
pub async fn request(
    method: &str,
    url: &str,
    headers: &BTreeMap<&str, &str>,
    body: impl Into<Bytes>,
) -> Result<Resp> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut req = Request::builder()
        .method(Method::from_bytes(method.as_bytes())?)
        .uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(body.into()))?;
    let resp = client
        .request(req)
        .await
        .with_context(|| format!("{method} {url}"))?;
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .with_context(|| format!("reading the body of {method} {url}"))?
        .to_bytes();
    Ok(Resp {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    })
}

/// `request` with a JSON body (or none) and the CLI's `Content-Type: application/json`.
pub async fn json(method: &str, url: &str, body: Option<serde_json::Value>) -> Result<Resp> {
    let headers = BTreeMap::from([("content-type", "application/json")]);
    let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
    request(method, url, &headers, body).await
}

/// Registers app `app` and a fn in it through the v2 API of the LB at `base` (e.g.
/// `http://127.0.0.1:8080`); `fn_body` is the fn's JSON without `app_id`. Returns (app, fn).
pub async fn register(
    base: &str,
    app: &str,
    mut fn_body: serde_json::Value,
) -> Result<(serde_json::Value, serde_json::Value)> {
    let a = json(
        "POST",
        &format!("{base}/v2/apps"),
        Some(serde_json::json!({"name": app})),
    )
    .await?;
    anyhow::ensure!(a.status == 200, "POST /v2/apps: {} {}", a.status, a.text());
    let a = a.json();
    fn_body["app_id"] = a["id"].clone();
    let f = json("POST", &format!("{base}/v2/fns"), Some(fn_body)).await?;
    anyhow::ensure!(f.status == 200, "POST /v2/fns: {} {}", f.status, f.text());
    Ok((a, f.json()))
}

/// A scripted gRPC runner for LB tests: speaks Fn's Engage protocol (optionally ferrofn's accept
/// ack), answers Status and (optionally) `grpc.health.v1`, and records what the LB sent.
pub mod fake_runner {
    use std::collections::HashMap;
    use std::net::SocketAddr;
    use std::pin::Pin;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::{Arc, Mutex};

    use anyhow::{Context, Result};
    use futures::Stream;
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;
    use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
    use tonic::{Request, Response, Status, Streaming};

    use ferrofn_common::tls::ReloadingServerTls;
    use ferrofn_proto::health::health_check_response::ServingStatus;
    use ferrofn_proto::health::health_server::{Health, HealthServer};
    use ferrofn_proto::health::{HealthCheckRequest, HealthCheckResponse};
    use ferrofn_proto::runner_protocol_server::{RunnerProtocol, RunnerProtocolServer};
    use ferrofn_proto::{
        CallFinished, CallResultStart, ClientMsg, ConfigMsg, ConfigStatus, DataFrame, HttpHeader,
        HttpRespMeta, LogRequestMsg, LogResponseMsg, RunnerMsg, RunnerStatus, TryCall, call_result_start,
        client_msg, runner_msg,
    };

    /// What the runner does with a call.
    #[derive(Debug, Clone)]
    pub struct Behaviour {
        /// Refuse every call with Fn's 503 NACK.
        pub nack: bool,
        /// Fail committed calls with (code, message, user error).
        pub error: Option<(i32, String, bool)>,
        /// Response status and headers (the body echoes the request unless `body` is set).
        pub status: i32,
        /// Response headers.
        pub headers: Vec<(String, String)>,
        /// Fixed response body (None = echo the request body).
        pub body: Option<Vec<u8>>,
        /// Advertise and honour the accept-ack capability.
        pub accept_ack: bool,
        /// Advertise the `frames` capability (data frames larger than 10 KiB).
        pub large_frames: bool,
        /// Status RPC reports `failed`.
        pub status_failed: bool,
        /// gRPC health answer; None = no health service (UNIMPLEMENTED, like an Fn runner).
        pub health: Option<ServingStatus>,
        /// Never answer; count the call as cancelled when the LB drops the stream.
        pub hang: bool,
        /// Keep no request bytes (count them only), for large-body tests.
        pub discard: bool,
        /// Answer with this many bytes of the `a..z` pattern, generated frame by frame.
        pub response_size: Option<usize>,
        /// Time the "function" runs after the body is in (a detached call has already been acked).
        pub run_ms: u64,
        /// After the body, end the stream cleanly without CallFinished (a broken runner).
        pub end_without_finish: bool,
        /// Never answer an Engage stream (no response headers: a runner cut off or stalled), while
        /// the Status and health RPCs still answer.
        pub silent: bool,
    }

    impl Default for Behaviour {
        fn default() -> Self {
            Self {
                nack: false,
                error: None,
                status: 200,
                headers: vec![("Content-Type".into(), "text/plain".into())],
                body: None,
                accept_ack: false,
                large_frames: false,
                status_failed: false,
                health: None,
                hang: false,
                discard: false,
                response_size: None,
                run_ms: 0,
                end_without_finish: false,
                silent: false,
            }
        }
    }

    /// One Engage as the runner saw it.
    #[derive(Debug, Clone, Default)]
    pub struct Seen {
        /// The TryCall.
        pub try_call: TryCall,
        /// Data frames, in order.
        pub frames: Vec<DataFrame>,
        /// gRPC metadata keys and values (ASCII ones).
        pub metadata: HashMap<String, String>,
        /// Frames that arrived before the runner sent its ack (ack mode).
        pub frames_before_ack: Option<usize>,
    }

    /// Shared state of a fake runner.
    #[derive(Debug, Default)]
    pub struct Shared {
        /// Current behaviour (tests may change it).
        pub behaviour: Mutex<Behaviour>,
        /// Calls seen.
        pub seen: Mutex<Vec<Seen>>,
        /// Engage streams opened.
        pub engaged: AtomicU32,
        /// Hanging calls whose stream the LB dropped.
        pub cancelled: AtomicU32,
        /// Request body bytes received (all calls).
        pub bytes_in: std::sync::atomic::AtomicU64,
        /// Calls that ran to a successful CallFinished, sent while the LB still listened.
        pub completed: AtomicU32,
    }

    impl Shared {
        fn behaviour(&self) -> Behaviour {
            self.behaviour.lock().unwrap().clone()
        }
    }

    #[derive(Debug, Clone)]
    struct Svc(Arc<Shared>);

    type Out = Pin<Box<dyn Stream<Item = Result<RunnerMsg, Status>> + Send>>;

    fn finished(success: bool, code: i32, msg: &str, user: bool) -> RunnerMsg {
        RunnerMsg {
            body: Some(runner_msg::Body::Finished(CallFinished {
                success,
                error_code: code,
                error_str: msg.into(),
                error_user: user,
                ..CallFinished::default()
            })),
        }
    }

    fn data(d: &[u8]) -> RunnerMsg {
        RunnerMsg {
            body: Some(runner_msg::Body::Data(DataFrame {
                data: bytes::Bytes::copy_from_slice(d),
                eof: false,
            })),
        }
    }

    fn start(status: i32, headers: &[(String, String)]) -> RunnerMsg {
        RunnerMsg {
            body: Some(runner_msg::Body::ResultStart(CallResultStart {
                meta: Some(call_result_start::Meta::Http(HttpRespMeta {
                    status_code: status,
                    headers: headers
                        .iter()
                        .map(|(k, v)| HttpHeader {
                            key: k.clone(),
                            value: v.clone(),
                        })
                        .collect(),
                })),
            })),
        }
    }

    async fn run_call(
        shared: Arc<Shared>,
        mut inbound: Streaming<ClientMsg>,
        tx: mpsc::Sender<Result<RunnerMsg, Status>>,
        mut seen: Seen,
    ) {
        let b = shared.behaviour();
        let Ok(Some(ClientMsg {
            body: Some(client_msg::Body::Try(t)),
        })) = inbound.message().await
        else {
            return;
        };
        seen.try_call = t.clone();
        let idx = {
            let mut all = shared.seen.lock().unwrap();
            all.push(seen);
            all.len() - 1
        };
        let record = |f: &dyn Fn(&mut Seen)| f(&mut shared.seen.lock().unwrap()[idx]);
        if b.nack {
            let _ = tx
                .send(Ok(finished(false, 503, "Timed out - server too busy", false)))
                .await;
            return;
        }
        let ack_mode =
            b.accept_ack && t.extensions.get("ferrofn-accept-ack").map(String::as_str) == Some("1");
        let model: serde_json::Value = serde_json::from_str(&t.models_call_json).unwrap_or_default();
        let detached = model["type"] == "detached";
        // Frames read before the ack (an LB sends a small body inline, behind the TryCall).
        let mut early = Vec::new();
        if ack_mode {
            // Read what the LB sends in the first 50 ms, so an eager LB's frames are seen.
            let until = tokio::time::Instant::now() + std::time::Duration::from_millis(50);
            while let Ok(m) = tokio::time::timeout_at(until, inbound.message()).await {
                match m {
                    Ok(Some(ClientMsg {
                        body: Some(client_msg::Body::Data(d)),
                    })) => early.push(d),
                    _ => return,
                }
                if early.last().is_some_and(|d| d.eof) {
                    break;
                }
            }
            let n = early.len();
            record(&|s| s.frames_before_ack = Some(n));
            // As the ferrofn runner: a detached call's 202 result start is its ack.
            let ack = if detached {
                start(202, &b.headers)
            } else {
                data(&[])
            };
            let _ = tx.send(Ok(ack)).await;
        } else if detached {
            // As Fn's runner: the 202 goes out once the call has a slot, before its input is read.
            let _ = tx.send(Ok(start(202, &b.headers))).await;
        }
        let mut body = Vec::new();
        let mut early = early.into_iter();
        loop {
            let next = match early.next() {
                Some(d) => Ok(Some(ClientMsg {
                    body: Some(client_msg::Body::Data(d)),
                })),
                None => inbound.message().await,
            };
            match next {
                Ok(Some(ClientMsg {
                    body: Some(client_msg::Body::Data(d)),
                })) => {
                    shared.bytes_in.fetch_add(d.data.len() as u64, Ordering::SeqCst);
                    let eof = d.eof;
                    if !b.discard {
                        body.extend_from_slice(&d.data);
                        record(&|s| s.frames.push(d.clone()));
                    }
                    if eof {
                        break;
                    }
                }
                _ => return,
            }
        }
        if b.end_without_finish {
            return;
        }
        if b.hang {
            tx.closed().await;
            shared.cancelled.fetch_add(1, Ordering::SeqCst);
            return;
        }
        if let Some((code, msg, user)) = &b.error {
            let _ = tx.send(Ok(finished(false, *code, msg, *user))).await;
            return;
        }
        if detached {
            tokio::time::sleep(std::time::Duration::from_millis(b.run_ms)).await;
            if tx.send(Ok(finished(true, 0, "", false))).await.is_ok() && !tx.is_closed() {
                shared.completed.fetch_add(1, Ordering::SeqCst);
            }
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(b.run_ms)).await;
        let _ = tx.send(Ok(start(b.status, &b.headers))).await;
        if let Some(n) = b.response_size {
            let mut sent = 0;
            while sent < n {
                let len = (n - sent).min(ferrofn_proto::MAX_DATA_CHUNK);
                let chunk: Vec<u8> = (sent..sent + len).map(|i| b'a' + (i % 26) as u8).collect();
                if tx.send(Ok(data(&chunk))).await.is_err() {
                    return;
                }
                sent += len;
            }
            let _ = tx.send(Ok(finished(true, 0, "", false))).await;
            return;
        }
        let out = b.body.clone().unwrap_or(body);
        for c in out.chunks(ferrofn_proto::MAX_DATA_CHUNK) {
            if tx.send(Ok(data(c))).await.is_err() {
                return;
            }
        }
        let _ = tx.send(Ok(finished(true, 0, "", false))).await;
    }

    #[tonic::async_trait]
    impl RunnerProtocol for Svc {
        type EngageStream = Out;
        type StreamLogsStream = Pin<Box<dyn Stream<Item = Result<LogResponseMsg, Status>> + Send>>;

        async fn engage(&self, req: Request<Streaming<ClientMsg>>) -> Result<Response<Out>, Status> {
            self.0.engaged.fetch_add(1, Ordering::SeqCst);
            if self.0.behaviour().silent {
                std::future::pending::<()>().await;
            }
            let mut seen = Seen::default();
            for kv in req.metadata().iter() {
                if let tonic::metadata::KeyAndValueRef::Ascii(k, v) = kv {
                    seen.metadata
                        .insert(k.as_str().to_owned(), v.to_str().unwrap_or_default().to_owned());
                }
            }
            let (tx, rx) = mpsc::channel(4);
            tokio::spawn(run_call(self.0.clone(), req.into_inner(), tx, seen));
            Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
        }

        async fn status(&self, _req: Request<()>) -> Result<Response<RunnerStatus>, Status> {
            let b = self.0.behaviour();
            let mut st = RunnerStatus {
                failed: b.status_failed,
                ..RunnerStatus::default()
            };
            if b.accept_ack {
                let caps = if b.large_frames {
                    "accept-ack,frames"
                } else {
                    "accept-ack"
                };
                st.custom_status
                    .insert("ferrofn-capabilities".into(), caps.into());
            }
            Ok(Response::new(st))
        }

        async fn configure_runner(&self, _req: Request<ConfigMsg>) -> Result<Response<ConfigStatus>, Status> {
            Ok(Response::new(ConfigStatus {}))
        }

        async fn stream_logs(
            &self,
            _req: Request<Streaming<LogRequestMsg>>,
        ) -> Result<Response<Self::StreamLogsStream>, Status> {
            Err(Status::unimplemented("no logs"))
        }

        async fn status2(&self, req: Request<prost_types::Struct>) -> Result<Response<RunnerStatus>, Status> {
            let _ = req;
            self.status(Request::new(())).await
        }
    }

    #[derive(Debug, Clone)]
    struct HealthSvc(Arc<Shared>);

    #[tonic::async_trait]
    impl Health for HealthSvc {
        type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

        async fn check(
            &self,
            _req: Request<HealthCheckRequest>,
        ) -> Result<Response<HealthCheckResponse>, Status> {
            match self.0.behaviour().health {
                Some(s) => Ok(Response::new(HealthCheckResponse { status: s as i32 })),
                None => Err(Status::unimplemented("no health service")),
            }
        }

        async fn watch(
            &self,
            _req: Request<HealthCheckRequest>,
        ) -> Result<Response<Self::WatchStream>, Status> {
            Err(Status::unimplemented("no watch"))
        }
    }

    /// A running fake runner.
    #[derive(Debug)]
    pub struct FakeRunner {
        /// `127.0.0.1:<port>`.
        pub addr: SocketAddr,
        /// Its state.
        pub shared: Arc<Shared>,
        stop: Arc<tokio::sync::Notify>,
    }

    impl FakeRunner {
        /// Starts a plaintext fake runner.
        pub async fn start(b: Behaviour) -> Result<Self> {
            Self::start_tls(b, None).await
        }

        /// Starts a fake runner, with mTLS when `tls` is given.
        pub async fn start_tls(b: Behaviour, tls: Option<ReloadingServerTls>) -> Result<Self> {
            Self::start_at("127.0.0.1:0".parse()?, b, tls).await
        }

        /// Starts a fake runner listening on `at` (e.g. another loopback address, on a port
        /// several runners share as the replicas of one service do).
        pub async fn start_at(at: SocketAddr, b: Behaviour, tls: Option<ReloadingServerTls>) -> Result<Self> {
            let shared = Arc::new(Shared {
                behaviour: Mutex::new(b),
                ..Shared::default()
            });
            let listener = TcpListener::bind(at).await.context("bind fake runner")?;
            let addr = listener.local_addr()?;
            let stop = Arc::new(tokio::sync::Notify::new());
            let router = tonic::transport::Server::builder()
                .add_service(RunnerProtocolServer::new(Svc(shared.clone())))
                .add_service(HealthServer::new(HealthSvc(shared.clone())));
            let s = stop.clone();
            let stopped = async move { s.notified().await };
            match tls {
                None => {
                    tokio::spawn(
                        router.serve_with_incoming_shutdown(TcpListenerStream::new(listener), stopped),
                    );
                }
                Some(tls) => {
                    tokio::spawn(router.serve_with_incoming_shutdown(tls.incoming(listener), stopped));
                }
            }
            Ok(Self { addr, shared, stop })
        }

        /// `host:port` for `FN_RUNNER_ADDRESSES`.
        pub fn address(&self) -> String {
            self.addr.to_string()
        }

        /// Changes the behaviour.
        pub fn set(&self, f: impl FnOnce(&mut Behaviour)) {
            f(&mut self.shared.behaviour.lock().unwrap());
        }

        /// Calls seen so far.
        pub fn seen(&self) -> Vec<Seen> {
            self.shared.seen.lock().unwrap().clone()
        }

        /// Engage streams opened so far.
        pub fn engaged(&self) -> u32 {
            self.shared.engaged.load(Ordering::SeqCst)
        }

        /// Stops serving.
        pub fn stop(&self) {
            self.stop.notify_one();
        }
    }

    impl Drop for FakeRunner {
        fn drop(&mut self) {
            self.stop.notify_one();
        }
    }
}

/// `method url` with a JSON body that must answer 200: its JSON.
pub async fn ok(method: &str, url: String, body: Option<serde_json::Value>) -> serde_json::Value {
    let r = json(method, &url, body).await.unwrap();
    assert_eq!(r.status, 200, "{method} {url}: {}", r.text());
    r.json()
}

/// `POST /invoke/<fn_id>` with `{"n": 1}` on the LB at `base` (`http://host:port`).
pub async fn invoke_fn(base: &str, fn_id: &str) -> Resp {
    json(
        "POST",
        &format!("{base}/invoke/{fn_id}"),
        Some(serde_json::json!({"n": 1})),
    )
    .await
    .unwrap()
}

/// Waits (bounded) until the LB's probes have found the accept-ack capability of every runner.
pub async fn wait_accept_ack(runners: &[Arc<ferrofn_lb::pool::Runner>]) -> Result<()> {
    for _ in 0..250 {
        if runners.iter().all(|r| r.supports_accept_ack()) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    anyhow::bail!("the LB's probes did not find the accept-ack capability of every runner")
}

/// A `ferrofn-lb` process (plaintext to runners) on the registry `db_url` over `runner`, probing
/// every 200 ms; `env` adds settings.
pub async fn lb_on_registry(db_url: &str, runner: &str, env: &[(&str, &str)]) -> LbBinary {
    let mut all = vec![
        ("FN_DB_URL", db_url),
        ("FN_RUNNER_ADDRESSES", runner),
        ("FERROFN_HEALTH_INTERVAL_MSECS", "200"),
    ];
    all.extend_from_slice(env);
    LbBinary::start(&["--plaintext"], &all).await.unwrap()
}

/// The `ferrofn-lb` binary as a child process (for CLI, signal and reload tests).
#[derive(Debug)]
pub struct LbBinary {
    /// The child.
    pub child: tokio::process::Child,
    /// `127.0.0.1:<port>`.
    pub addr: SocketAddr,
    /// Its stderr, collected in the background.
    pub stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

/// The `ferrofn-lb` binary, built if missing or stale.
pub async fn lb_binary() -> Result<PathBuf> {
    let root = crate::images::workspace_root();
    crate::images::ensure_binary(
        "ferrofn-lb",
        &[root.join("lb/src"), root.join("common/src"), root.join("proto")],
    )
    .await
}

/// A free loopback port (bound then released; a small race is acceptable in tests).
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

impl LbBinary {
    /// Starts the binary with `args` and `env` (plus `FN_PORT=0` / `FERROFN_LISTEN_ADDRESS` on loopback)
    /// and waits until it logs the address it listens on.
    pub async fn start(args: &[&str], env: &[(&str, &str)]) -> Result<Self> {
        use tokio::io::AsyncReadExt;
        let bin = lb_binary().await?;
        let mut cmd = tokio::process::Command::new(bin);
        cmd.args(args)
            // Port 0: the LB binds a free port itself and logs it (no window in which another
            // socket can take a port picked here, as a probe-bound port could be).
            .env("FN_PORT", "0")
            .env("FERROFN_LISTEN_ADDRESS", "127.0.0.1")
            .env_remove("RUST_LOG")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().context("spawning ferrofn-lb")?;
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        if let Some(mut pipe) = child.stderr.take() {
            let sink = stderr.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            });
        }
        // The address it bound, from its "LB listening local_addr=..." line.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let bound = stderr.lock().unwrap().lines().find_map(|l| {
                let rest = l.split("LB listening").nth(1)?;
                rest.split("local_addr=")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse::<SocketAddr>()
                    .ok()
            });
            if let Some(addr) = bound {
                return Ok(Self { child, addr, stderr });
            }
            if let Some(status) = child.try_wait()? {
                anyhow::bail!("ferrofn-lb exited early ({status}): {}", stderr.lock().unwrap());
            }
            if std::time::Instant::now() > deadline {
                anyhow::bail!(
                    "ferrofn-lb did not log its address within 20 s: {}",
                    stderr.lock().unwrap()
                );
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// `http://addr + path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The child's peak resident memory (`VmHWM`) in bytes.
    pub fn peak_rss(&self) -> Result<u64> {
        let pid = self.child.id().context("child already exited")?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let kb = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .context("no VmHWM in /proc/<pid>/status")?;
        Ok(kb * 1024)
    }

    /// SIGKILLs this child and waits until it has exited: from then on its sockets are closed (a
    /// signal sent is not yet a process gone).
    pub async fn kill_and_reap(&mut self) -> Result<()> {
        self.child.start_kill()?;
        self.child.wait().await?;
        Ok(())
    }

    /// Sends a signal (`HUP`, `TERM`) to this child only.
    pub fn signal(&self, name: &str) -> Result<()> {
        let pid = self.child.id().context("child already exited")?;
        let status = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(pid.to_string())
            .status()?;
        anyhow::ensure!(status.success(), "kill -{name} {pid} failed");
        Ok(())
    }
}
