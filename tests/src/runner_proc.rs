//! Harness for the runner: starts the `ferrofn-runner` binary (built first if stale) on 127.0.0.1 with
//! port 0, plaintext, a temp iofs dir and a unique `ferrofn.runner` label; reads the bound addresses
//! from its stdout; kills it on drop. Also a small Engage client and Docker look-ups by label.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bollard::Docker;
use bollard::models::ContainerSummary;
use bollard::query_parameters::ListContainersOptions;
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use ferrofn_proto::runner_protocol_client::RunnerProtocolClient;
use ferrofn_proto::{
    CallFinished, ClientMsg, DataFrame, HttpHeader, MAX_DATA_CHUNK, TryCall, call_result_start, client_msg,
    runner_msg,
};

use crate::images::{binary_path, ensure_binary, workspace_root};

/// Where test runners listen unless a test asks otherwise.
const LOOPBACK: &str = "127.0.0.1";

/// Label carrying the runner's name on its containers.
pub const RUNNER_LABEL: &str = "ferrofn.runner";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A running `ferrofn-runner` process.
#[derive(Debug)]
pub struct RunnerProc {
    child: Child,
    /// gRPC address.
    pub grpc_addr: SocketAddr,
    /// `/metrics` address.
    pub http_addr: SocketAddr,
    /// Its `ferrofn.runner` label value.
    pub name: String,
    /// Its stderr (logs) file.
    pub log_path: PathBuf,
    dir: Option<TempDir>,
    /// Set by [`RunnerProc::kill`]: the containers stay for the restart to sweep.
    keep_containers: bool,
}

/// Makes sure the runner binary is built from the current sources.
pub async fn ensure_runner_binary() -> Result<PathBuf> {
    let root = workspace_root();
    ensure_binary(
        "ferrofn-runner",
        &[
            root.join("runner/src"),
            root.join("common/src"),
            root.join("proto"),
        ],
    )
    .await?;
    Ok(binary_path("ferrofn-runner"))
}

/// A unique runner name for this test process.
pub fn unique_name(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

impl RunnerProc {
    /// Starts a runner named `name` with extra environment `env` (e.g. `FN_MAX_RESPONSE_SIZE`) and
    /// extra arguments.
    pub async fn start_named(name: &str, env: &[(&str, &str)], args: &[&str]) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("ffr")
            .tempdir()
            .context("temp dir")?;
        Self::start_in(dir, name, env, args, true, 0, LOOPBACK).await
    }

    /// Starts a runner serving mTLS (`args` must carry `--tls-ca/--tls-cert/--tls-key`).
    pub async fn start_tls(name: &str, env: &[(&str, &str)], args: &[&str]) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("ffr")
            .tempdir()
            .context("temp dir")?;
        Self::start_in(dir, name, env, args, false, 0, LOOPBACK).await
    }

    /// Starts a runner with a fresh unique name.
    pub async fn start(env: &[(&str, &str)]) -> Result<Self> {
        Self::start_named(&unique_name("rt"), env, &[]).await
    }

    /// Starts a plaintext runner with a fresh unique name whose listeners bind `listen_address`
    /// (e.g. the Docker bridge's gateway, to check what a function container can reach).
    pub async fn start_on(listen_address: &str, env: &[(&str, &str)]) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("ffr")
            .tempdir()
            .context("temp dir")?;
        Self::start_in(dir, &unique_name("rt"), env, &[], true, 0, listen_address).await
    }

    #[allow(clippy::too_many_arguments)]
    async fn start_in(
        dir: TempDir,
        name: &str,
        env: &[(&str, &str)],
        args: &[&str],
        plaintext: bool,
        grpc_port: u16,
        listen_address: &str,
    ) -> Result<Self> {
        let bin = ensure_runner_binary().await?;
        let iofs = dir.path().join("iofs");
        let log_path = dir.path().join("runner.log");
        let log = std::fs::File::create(&log_path).context("runner log file")?;
        let mut cmd = Command::new(&bin);
        let grpc_port = grpc_port.to_string();
        cmd.args([
            "--listen-address",
            listen_address,
            "--grpc-port",
            grpc_port.as_str(),
            "--port",
            "0",
        ])
        .args(if plaintext { &["--plaintext"][..] } else { &[][..] })
        .arg("--runner-name")
        .arg(name)
        .arg("--iofs-path")
        .arg(&iofs)
        .args(args)
        .env("RUST_LOG", "info,ferrofn_runner=debug")
        // Plain log lines, so tests can search them.
        .env("NO_COLOR", "1")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        let stdout = child.stdout.take().context("runner stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let (mut grpc, mut http) = (None, None);
        let read = async {
            while let Some(line) = lines.next_line().await? {
                if let Some(a) = line.strip_prefix("grpc_addr=") {
                    grpc = Some(a.parse::<SocketAddr>()?);
                } else if let Some(a) = line.strip_prefix("http_addr=") {
                    http = Some(a.parse::<SocketAddr>()?);
                }
                if grpc.is_some() && http.is_some() {
                    return anyhow::Ok(());
                }
            }
            bail!("runner exited before printing its addresses")
        };
        let started = tokio::time::timeout(Duration::from_secs(60), read).await;
        let logs = || std::fs::read_to_string(&log_path).unwrap_or_default();
        match started {
            Ok(Ok(())) => {}
            Ok(Err(e)) => bail!("{e}; runner log:\n{}", logs()),
            Err(_) => bail!("runner did not start within 60 s; log:\n{}", logs()),
        }
        // Keep draining stdout so the runner never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(RunnerProc {
            child,
            grpc_addr: grpc.expect("set"),
            http_addr: http.expect("set"),
            name: name.to_string(),
            log_path,
            dir: Some(dir),
            keep_containers: false,
        })
    }

    /// The runner's log so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The iofs parent dir.
    pub fn iofs_dir(&self) -> PathBuf {
        self.dir.as_ref().expect("dir until kill").path().join("iofs")
    }

    /// A plaintext gRPC client.
    pub async fn client(&self) -> Result<RunnerProtocolClient<Channel>> {
        let ch = Channel::from_shared(format!("http://{}", self.grpc_addr))?
            .connect()
            .await?;
        Ok(RunnerProtocolClient::new(ch))
    }

    /// A channel (for the health client).
    pub async fn channel(&self) -> Result<Channel> {
        Ok(Channel::from_shared(format!("http://{}", self.grpc_addr))?
            .connect()
            .await?)
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// Sends SIGTERM (drain).
    pub fn sigterm(&self) -> Result<()> {
        let status = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status()?;
        if !status.success() {
            bail!("kill -TERM failed");
        }
        Ok(())
    }

    /// Waits for the process to exit, within `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> Result<std::process::ExitStatus> {
        tokio::time::timeout(limit, self.child.wait())
            .await
            .context("runner did not exit in time")?
            .context("wait")
    }

    /// SIGKILLs the process and waits for it; keeps the temp dir for a restart.
    pub async fn kill(mut self) -> Result<TempDir> {
        self.child.start_kill()?;
        self.child.wait().await?;
        self.keep_containers = true;
        Ok(self.dir.take().expect("dir until kill"))
    }

    /// Restarts a runner of the same name in `dir` (after [`RunnerProc::kill`]).
    pub async fn restart(dir: TempDir, name: &str, env: &[(&str, &str)]) -> Result<Self> {
        Self::start_in(dir, name, env, &[], true, 0, LOOPBACK).await
    }

    /// Restarts an mTLS runner of the same name in `dir` (after [`RunnerProc::kill`]) on the given
    /// gRPC port, e.g. its old one, so that an LB with a static runner list finds it again.
    pub async fn restart_tls(
        dir: TempDir,
        name: &str,
        env: &[(&str, &str)],
        args: &[&str],
        grpc_port: u16,
    ) -> Result<Self> {
        Self::start_in(dir, name, env, args, false, grpc_port, LOOPBACK).await
    }

    /// The end of every runner test: drains the runner with SIGTERM and checks that it exits 0 and
    /// leaves neither a container nor an iofs dir behind (leftover containers are still removed).
    pub async fn drain_and_check(mut self, docker: &Docker) -> Result<()> {
        self.sigterm()?;
        let status = self.wait_exit(Duration::from_secs(60)).await?;
        let iofs_left: Vec<_> = std::fs::read_dir(self.iofs_dir())
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        let left = containers_of(docker, &self.name).await?;
        if !left.is_empty() {
            remove_containers_of(docker, &self.name).await?;
        }
        if !status.success() {
            bail!("runner exit status {status}; log:\n{}", self.logs());
        }
        if !left.is_empty() {
            bail!("containers left after drain: {left:?}");
        }
        if !iofs_left.is_empty() {
            bail!("iofs dirs left behind: {iofs_left:?}");
        }
        // Removing a container's iofs dir must not leave the watcher complaining (issue 14).
        let noise = self
            .logs()
            .lines()
            .filter(|l| l.contains("unable to remove watch descriptor"))
            .count();
        if noise > 0 {
            bail!("{noise} 'unable to remove watch descriptor' lines in the runner log");
        }
        Ok(())
    }
}

/// Connects to Docker, makes sure the testfn image exists, and starts a runner with `env`.
pub async fn start_with_testfn(env: &[(&str, &str)]) -> Result<(Docker, RunnerProc)> {
    let docker = crate::docker::connect().await?;
    crate::images::ensure_image(&docker, crate::images::FnImage::Testfn).await?;
    let runner = RunnerProc::start(env).await?;
    Ok((docker, runner))
}

impl Drop for RunnerProc {
    /// A test that failed half way never drained its runner: kill it and remove its containers, so
    /// that no failure leaks containers. Runs on its own thread (Drop cannot await).
    fn drop(&mut self) {
        if self.keep_containers {
            return;
        }
        let running = matches!(self.child.try_wait(), Ok(None));
        if running {
            let _ = self.child.start_kill();
        }
        let name = self.name.clone();
        let cleanup = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            rt.block_on(async move {
                let Ok(docker) = crate::docker::connect().await else {
                    return;
                };
                // The killed process may still be creating a container: look twice.
                for _ in 0..2 {
                    match remove_containers_of(&docker, &name).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => eprintln!("runner {name}: removed {n} leftover container(s)"),
                    }
                }
            });
        });
        let _ = cleanup.join();
    }
}

/// Containers (running or not) carrying `ferrofn.runner=<name>`.
pub async fn containers_of(docker: &Docker, name: &str) -> Result<Vec<ContainerSummary>> {
    let filters = HashMap::from([("label".to_string(), vec![format!("{RUNNER_LABEL}={name}")])]);
    let opts = ListContainersOptions {
        all: true,
        filters: Some(filters),
        ..Default::default()
    };
    Ok(docker.list_containers(Some(opts)).await?)
}

/// Force-removes every container of runner `name` (test cleanup). Returns how many.
pub async fn remove_containers_of(docker: &Docker, name: &str) -> Result<usize> {
    let list = containers_of(docker, name).await?;
    for c in &list {
        if let Some(id) = &c.id {
            crate::docker::remove_container(docker, id).await?;
        }
    }
    Ok(list.len())
}

/// Polls `cond` every 50 ms until it holds or `limit` passes.
pub async fn eventually<F, Fut>(what: &str, limit: Duration, mut cond: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if cond().await {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("timed out after {limit:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A call left open: its response stream and its request sender. Dropping both is a client cancel
/// (the request side half-closes, then HTTP/2 resets the stream: RST_STREAM CANCEL).
pub struct OpenCall {
    /// The runner's messages.
    pub responses: tonic::Streaming<ferrofn_proto::RunnerMsg>,
    /// The request side; kept open (never half-closed) as Fn's LB does while the call runs.
    pub requests: mpsc::Sender<ClientMsg>,
}

/// Opens an Engage stream: TryCall `call_json` (with `extensions`), then `body` as one eof frame,
/// and leaves both sides open.
pub async fn open_call(
    client: &mut RunnerProtocolClient<Channel>,
    call_json: String,
    body: &[u8],
    extensions: HashMap<String, String>,
) -> Result<OpenCall> {
    let (tx, rx) = mpsc::channel(4);
    tx.send(ClientMsg {
        body: Some(client_msg::Body::Try(TryCall {
            models_call_json: call_json,
            slot_hash_id: String::new(),
            extensions,
        })),
    })
    .await?;
    tx.send(ClientMsg {
        body: Some(client_msg::Body::Data(DataFrame {
            data: bytes::Bytes::copy_from_slice(body),
            eof: true,
        })),
    })
    .await?;
    let responses = client
        .engage(tonic::Request::new(ReceiverStream::new(rx)))
        .await
        .context("opening the Engage stream")?
        .into_inner();
    Ok(OpenCall {
        responses,
        requests: tx,
    })
}

/// What an Engage exchange produced.
#[derive(Debug, Default)]
pub struct EngageResult {
    /// ResultStart status, if one came.
    pub status: Option<i32>,
    /// ResultStart headers.
    pub headers: Vec<HttpHeader>,
    /// Number of ResultStart messages (must be <= 1).
    pub result_starts: usize,
    /// Body bytes.
    pub body: Vec<u8>,
    /// Number of data frames (zero-length ones included).
    pub frames: usize,
    /// Zero-length data frames before the ResultStart (accept acks).
    pub acks: usize,
    /// Largest data frame.
    pub max_frame: usize,
    /// The CallFinished.
    pub finished: Option<CallFinished>,
    /// The gRPC status if the stream ended in an error.
    pub error: Option<tonic::Status>,
    /// Messages after CallFinished (must be 0).
    pub after_finished: usize,
}

impl EngageResult {
    /// Header value(s) by case-insensitive name.
    pub fn header(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|h| h.key.eq_ignore_ascii_case(name))
            .map(|h| h.value.clone())
            .collect()
    }

    /// The CallFinished, or a panic naming what came instead.
    pub fn finished(&self) -> &CallFinished {
        self.finished
            .as_ref()
            .unwrap_or_else(|| panic!("no CallFinished: {self:?}"))
    }
}

/// How to drive one Engage.
#[derive(Debug, Clone, Default)]
pub struct EngageOpts {
    /// TryCall extensions.
    pub extensions: HashMap<String, String>,
    /// Send the eof frame only after a first runner message arrived (premature-write tests).
    pub hold_eof_until_reply: bool,
    /// Send the eof frame only after the ResultStart arrived (full-duplex tests: the function must
    /// answer while the request is still open).
    pub hold_eof_until_result_start: bool,
    /// gRPC metadata on the Engage request (e.g. `traceparent`, `fn_request_id`).
    pub metadata: Vec<(&'static str, String)>,
}

/// Sends a TryCall with `call_json` and the body in 10 KiB frames (the last one with eof), and reads
/// the runner's answer to the end.
pub async fn engage(
    client: &mut RunnerProtocolClient<Channel>,
    call_json: &str,
    body: &[u8],
    opts: EngageOpts,
) -> Result<EngageResult> {
    let (tx, rx) = mpsc::channel::<ClientMsg>(8);
    let try_call = TryCall {
        models_call_json: call_json.to_string(),
        slot_hash_id: String::new(),
        extensions: opts.extensions.clone(),
    };
    tx.send(ClientMsg {
        body: Some(client_msg::Body::Try(try_call)),
    })
    .await?;
    let frames: Vec<Vec<u8>> = body.chunks(MAX_DATA_CHUNK).map(<[u8]>::to_vec).collect();
    let (eof_tx, eof_rx) = tokio::sync::oneshot::channel::<()>();
    let hold = opts.hold_eof_until_reply || opts.hold_eof_until_result_start;
    let sender = tokio::spawn(async move {
        for f in frames {
            if tx
                .send(ClientMsg {
                    body: Some(client_msg::Body::Data(DataFrame {
                        data: f.into(),
                        eof: false,
                    })),
                })
                .await
                .is_err()
            {
                return tx;
            }
        }
        if hold {
            let _ = eof_rx.await;
        }
        let _ = tx
            .send(ClientMsg {
                body: Some(client_msg::Body::Data(DataFrame {
                    data: bytes::Bytes::new(),
                    eof: true,
                })),
            })
            .await;
        // Like Fn's LB, never half-close: hand the sender back so the stream stays open.
        tx
    });
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    for (k, v) in &opts.metadata {
        request.metadata_mut().insert(*k, v.parse()?);
    }
    let mut stream = client.engage(request).await?.into_inner();
    let mut r = EngageResult::default();
    let mut eof_tx = Some(eof_tx);
    loop {
        let m = match stream.message().await {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(status) => {
                r.error = Some(status);
                break;
            }
        };
        let release =
            !opts.hold_eof_until_result_start || matches!(m.body, Some(runner_msg::Body::ResultStart(_)));
        if release && let Some(t) = eof_tx.take() {
            let _ = t.send(());
        }
        if r.finished.is_some() {
            r.after_finished += 1;
            continue;
        }
        match m.body {
            Some(runner_msg::Body::ResultStart(s)) => {
                r.result_starts += 1;
                if let Some(call_result_start::Meta::Http(h)) = s.meta {
                    r.status = Some(h.status_code);
                    r.headers = h.headers;
                }
            }
            Some(runner_msg::Body::Data(d)) => {
                r.frames += 1;
                r.max_frame = r.max_frame.max(d.data.len());
                if d.data.is_empty() && r.result_starts == 0 {
                    r.acks += 1;
                }
                r.body.extend_from_slice(&d.data);
            }
            Some(runner_msg::Body::Finished(f)) => r.finished = Some(f),
            None => {}
        }
    }
    drop(eof_tx);
    let _held_open = sender.await;
    Ok(r)
}

/// A call model JSON for `image` with Fn's defaults (timeout 30, idle 30, memory 128), `config` as the
/// container env, and `headers`.
pub fn call_json(
    image: &str,
    fn_id: &str,
    config: &[(&str, &str)],
    tune: impl FnOnce(&mut serde_json::Value),
) -> String {
    let id = ferrofn_common::id::new_id();
    let mut cfg: serde_json::Map<String, serde_json::Value> = config
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string())))
        .collect();
    cfg.insert("FN_APP_ID".into(), "01APPTEST0000000000000000".into());
    cfg.insert("FN_FN_ID".into(), fn_id.into());
    cfg.insert("FN_MEMORY".into(), "128".into());
    cfg.insert("FN_TYPE".into(), "sync".into());
    let mut v = serde_json::json!({
        "id": id, "status": "running", "image": image, "type": "sync",
        "url": format!("http://127.0.0.1:8080/invoke/{fn_id}"), "method": "POST",
        "timeout": 30, "idle_timeout": 30, "memory": 128,
        "config": cfg,
        "headers": {"Content-Type": ["application/json"], "Fn-Invoke-Type": ["sync"]},
        "completed_at": "0001-01-01T00:00:00.000Z", "created_at": "2026-11-28T06:35:10.245Z",
        "started_at": "0001-01-01T00:00:00.000Z",
        "app_id": "01APPTEST0000000000000000", "app_name": "myapp", "trigger_id": "", "fn_id": fn_id,
    });
    tune(&mut v);
    v.to_string()
}
