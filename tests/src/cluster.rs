//! The docker-compose clusters of `deploy/` for integration tests: images built from the current
//! binaries by `deploy/images.sh` (and `deploy/images-ha.sh`), started by `deploy/up.sh` under a
//! unique compose project on a free loopback port (so it never meets `make demo`), driven through
//! the v2 API and the docker CLI, and removed by `deploy/down.sh` (explicitly with
//! [`Cluster::down`], which also checks that nothing is left, or on drop).
//!
//! Two kinds ([`Kind`]): `docker-compose.yml` (one LB published, runner-1..3) and the HA cluster of
//! `docker-compose.ha.yml` (Postgres, lb-1 and lb-2 behind nginx, which alone is published, and one
//! `runner` service scaled to three replicas); the same scripts drive both (`FERROFN_HA=1`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use tokio::sync::{OnceCell, Semaphore, SemaphorePermit};

use crate::images::{FnImage, ensure_image, image_tag, workspace_root};
use crate::lb_proc::{Resp, free_port, request};

/// The runner services of `deploy/docker-compose.yml` (also their certificate and DNS names).
pub const RUNNERS: [&str; 3] = ["runner-1", "runner-2", "runner-3"];
/// The runners' gRPC port on the cluster network.
pub const RUNNER_GRPC_PORT: u16 = 9190;
/// The runners' `/metrics` port on the cluster network.
pub const RUNNER_METRICS_PORT: u16 = 8080;
/// The HTTP port of every node on the cluster network (LBs: the API and `/metrics`; runners:
/// `/metrics` and `/health`).
pub const NODE_HTTP_PORT: u16 = 8080;
/// Bound on `deploy/up.sh` reaching a healthy cluster.
pub const UP_WAIT: Duration = Duration::from_secs(120);

/// One cluster per test process at a time: each has four nodes and the machine has two cores.
static SLOT: Semaphore = Semaphore::const_new(1);
/// `deploy/images.sh` once per test process.
static IMAGES: OnceCell<()> = OnceCell::const_new();
/// `deploy/images-ha.sh` once per test process.
static HA_IMAGES: OnceCell<()> = OnceCell::const_new();
static NEXT: AtomicU32 = AtomicU32::new(0);

/// Builds `ferrofn/lb` and `ferrofn/runner` from the current sources (cargo build, then
/// `deploy/images.sh`) and the function images, once per process.
pub async fn ensure_cluster_images() -> Result<()> {
    IMAGES
        .get_or_try_init(|| async {
            let script = workspace_root().join("deploy/images.sh");
            let mut cmd = tokio::process::Command::new("bash");
            cmd.arg(&script)
                .current_dir(workspace_root())
                .env("FERROFN_IMAGE_TAG", image_tag());
            run(cmd, "deploy/images.sh").await?;
            let docker = crate::docker::connect().await?;
            for which in [FnImage::Hello, FnImage::Testfn] {
                ensure_image(&docker, which).await?;
            }
            anyhow::Ok(())
        })
        .await
        .map(|_| ())
}

/// Builds the HA cluster's `ferrofn/postgres` and `ferrofn/nginx` from the host's Debian packages
/// (`deploy/images-ha.sh`), once per process.
pub async fn ensure_ha_images() -> Result<()> {
    HA_IMAGES
        .get_or_try_init(|| async {
            let mut cmd = tokio::process::Command::new("bash");
            cmd.arg(workspace_root().join("deploy/images-ha.sh"))
                .current_dir(workspace_root())
                .env("FERROFN_IMAGE_TAG", image_tag());
            run(cmd, "deploy/images-ha.sh").await.map(|_| ())
        })
        .await
        .map(|_| ())
}

/// Runs a command to completion; its stdout, or an error quoting its stderr.
async fn run(mut cmd: tokio::process::Command, what: &str) -> Result<String> {
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    let out = cmd.output().await.with_context(|| format!("cannot run {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `docker <args>`: its stdout.
pub async fn docker(args: &[&str]) -> Result<String> {
    let mut cmd = tokio::process::Command::new("docker");
    cmd.args(args);
    run(cmd, &format!("docker {}", args.join(" "))).await
}

/// Which compose cluster of `deploy/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `docker-compose.yml`: one LB (published, SQLite), runner-1..3.
    Single,
    /// `docker-compose.ha.yml`: Postgres, lb-1 and lb-2 behind nginx (published), `runner` x3.
    Ha,
}

/// The LB services of the HA cluster.
pub const HA_LBS: [&str; 2] = ["lb-1", "lb-2"];
/// The runner replicas of the HA cluster (`--scale runner=N`).
pub const HA_RUNNERS: usize = 3;

/// A compose cluster of this test.
#[derive(Debug)]
pub struct Cluster {
    /// Which one.
    pub kind: Kind,
    /// Compose project name; prefixes its containers, network, volumes and runner labels.
    pub project: String,
    /// Loopback port of the LB's HTTP API (the HA cluster: nginx's, in front of both LBs).
    pub port: u16,
    /// The runners' iofs dir on the host.
    pub iofs_dir: PathBuf,
    /// Bearer token of the LB's management API (the LB listens on 0.0.0.0 in its container, so
    /// it refuses to start without one).
    pub api_token: String,
    /// The HA cluster's Postgres password.
    pub db_password: String,
    removed: bool,
    _slot: SemaphorePermit<'static>,
}

/// The `/metrics` text of the node at `ip:port` on the cluster network (bounded at 5 s).
async fn node_metrics(ip: &str, port: u16) -> Result<String> {
    let url = format!("http://{ip}:{port}/metrics");
    let r = tokio::time::timeout(
        Duration::from_secs(5),
        request("GET", &url, &BTreeMap::new(), Bytes::new()),
    )
    .await
    .with_context(|| format!("GET {url} timed out"))??;
    if r.status != 200 {
        bail!("GET {url}: {}", r.status);
    }
    Ok(r.text())
}

impl Cluster {
    /// Builds the images if needed, starts a new cluster and waits until its three runners are
    /// healthy and its LB answers.
    pub async fn up() -> Result<Self> {
        Self::start(Kind::Single).await
    }

    /// Builds the images if needed (the HA ones too), starts a new HA cluster and waits until
    /// Postgres, both LBs and the three runner replicas are healthy and nginx answers.
    pub async fn up_ha() -> Result<Self> {
        Self::start(Kind::Ha).await
    }

    async fn start(kind: Kind) -> Result<Self> {
        let slot = SLOT.acquire().await.context("cluster slot")?;
        ensure_cluster_images().await?;
        if kind == Kind::Ha {
            ensure_ha_images().await?;
        }
        let project = format!(
            "fft{}x{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let cluster = Cluster {
            kind,
            db_password: format!("{:032x}", rand::random::<u128>()),
            iofs_dir: std::env::temp_dir().join(format!("{project}-iofs")),
            api_token: format!("{project}-{:016x}", rand::random::<u64>()),
            project,
            port: free_port()?,
            removed: false,
            _slot: slot,
        };
        // From here on, drop removes whatever part of the cluster exists.
        let mut cmd = cluster.script("up.sh");
        cmd.env("FERROFN_WAIT_SECS", UP_WAIT.as_secs().to_string());
        run(cmd, &format!("deploy/up.sh for {}", cluster.project)).await?;
        Ok(cluster)
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        let ha = self.kind == Kind::Ha;
        vec![
            ("FERROFN_IMAGE_TAG", image_tag().to_owned()),
            ("FERROFN_API_TOKEN", self.api_token.clone()),
            ("FERROFN_CLUSTER", self.project.clone()),
            ("FERROFN_PORT", self.port.to_string()),
            ("FERROFN_BIND", "127.0.0.1".to_owned()),
            ("FERROFN_IOFS_DIR", self.iofs_dir.display().to_string()),
            ("FERROFN_HA", if ha { "1" } else { "0" }.to_owned()),
            ("FERROFN_RUNNERS", HA_RUNNERS.to_string()),
            ("FERROFN_DB_PASSWORD", self.db_password.clone()),
        ]
    }

    fn script(&self, name: &str) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new("bash");
        cmd.arg(workspace_root().join("deploy").join(name))
            .current_dir(workspace_root())
            .envs(self.env());
        cmd
    }

    /// `deploy/compose.sh <args>` for this cluster: compose's stdout.
    pub async fn compose(&self, args: &[&str]) -> Result<String> {
        let mut cmd = self.script("compose.sh");
        cmd.args(args);
        run(cmd, &format!("compose {} ({})", args.join(" "), self.project)).await
    }

    /// The container ids of a compose service (several for the HA cluster's `runner`).
    pub async fn containers(&self, service: &str) -> Result<Vec<String>> {
        let out = self.compose(&["ps", "-q", service]).await?;
        Ok(out.split_whitespace().map(str::to_owned).collect())
    }

    /// The container id of a compose service.
    pub async fn container(&self, service: &str) -> Result<String> {
        let mut ids = self.containers(service).await?;
        match ids.len() {
            0 => bail!("cluster {} has no container for service {service}", self.project),
            1 => Ok(ids.remove(0)),
            n => bail!("cluster {}: service {service} has {n} containers", self.project),
        }
    }

    /// The cluster network's name.
    pub fn network(&self) -> String {
        format!("{}_cluster", self.project)
    }

    /// A URL on the LB.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// `ferrofn.runner` label value of a runner service's function containers.
    pub fn runner_label(&self, service: &str) -> String {
        format!("{}-{service}", self.project)
    }

    /// A management API request (`/v2/...`) with the cluster's token; `body` as JSON.
    pub async fn api(&self, method: &str, path: &str, body: Option<serde_json::Value>) -> Result<Resp> {
        let auth = format!("Bearer {}", self.api_token);
        let headers = BTreeMap::from([
            ("content-type", "application/json"),
            ("authorization", auth.as_str()),
        ]);
        let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        request(method, &self.url(path), &headers, body).await
    }

    /// Creates (or finds) app `app` and creates (or finds) fn `name` with `image`, `timeout` s and
    /// 128 MB, through the v2 API; returns the fn id.
    pub async fn register(&self, app: &str, name: &str, image: &str, timeout: u32) -> Result<String> {
        let r = self
            .api("POST", "/v2/apps", Some(serde_json::json!({ "name": app })))
            .await?;
        let app_id = match r.status {
            200 => r.json()["id"].as_str().unwrap_or_default().to_owned(),
            409 => {
                let l = self.api("GET", &format!("/v2/apps?name={app}"), None).await?;
                l.json()["items"][0]["id"].as_str().unwrap_or_default().to_owned()
            }
            s => bail!("POST /v2/apps {app}: {s} {}", r.text()),
        };
        if app_id.is_empty() {
            bail!("no id for app {app}");
        }
        let r = self
            .api(
                "POST",
                "/v2/fns",
                Some(serde_json::json!({
                "app_id": app_id, "name": name, "image": image, "memory": 128, "timeout": timeout,
                })),
            )
            .await?;
        let fn_id = match r.status {
            200 => r.json()["id"].as_str().unwrap_or_default().to_owned(),
            409 => {
                let l = self
                    .api("GET", &format!("/v2/fns?app_id={app_id}&name={name}"), None)
                    .await?;
                l.json()["items"][0]["id"].as_str().unwrap_or_default().to_owned()
            }
            s => bail!("POST /v2/fns {name}: {s} {}", r.text()),
        };
        if fn_id.is_empty() {
            bail!("no id for fn {name}");
        }
        Ok(fn_id)
    }

    /// `POST /invoke/<fn_id>` with `body`.
    pub async fn invoke(&self, fn_id: &str, body: impl Into<Bytes>) -> Result<Resp> {
        request(
            "POST",
            &self.url(&format!("/invoke/{fn_id}")),
            &BTreeMap::new(),
            body,
        )
        .await
    }

    /// A service container's address on the cluster network (reachable from the host: it is
    /// this test's own bridge network).
    pub async fn ip(&self, service: &str) -> Result<String> {
        let id = self.container(service).await?;
        container_ip(&id)
            .await
            .with_context(|| format!("the address of {service}"))
    }

    /// A node's `/metrics` text, fetched from the host on its address on the cluster network
    /// (`port` 8080 for LBs and runners alike; nothing of it is published).
    pub async fn metrics_of(&self, container: &str) -> Result<String> {
        node_metrics(&container_ip(container).await?, NODE_HTTP_PORT).await
    }

    /// A management API request (`/v2/...`, the cluster's token) sent to one LB service directly on
    /// the cluster network, bypassing nginx (the HA cluster's `lb-1` / `lb-2`).
    pub async fn api_on(
        &self,
        service: &str,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<Resp> {
        let ip = self.ip(service).await?;
        let auth = format!("Bearer {}", self.api_token);
        let headers = BTreeMap::from([
            ("content-type", "application/json"),
            ("authorization", auth.as_str()),
        ]);
        let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        request(
            method,
            &format!("http://{ip}:{NODE_HTTP_PORT}{path}"),
            &headers,
            body,
        )
        .await
    }

    /// `POST /invoke/<fn_id>` on one LB service directly, bypassing nginx.
    pub async fn invoke_on(&self, service: &str, fn_id: &str, body: impl Into<Bytes>) -> Result<Resp> {
        let ip = self.ip(service).await?;
        request(
            "POST",
            &format!("http://{ip}:{NODE_HTTP_PORT}/invoke/{fn_id}"),
            &BTreeMap::new(),
            body,
        )
        .await
    }

    /// Calls a runner has served since it started (`ferrofn_runner_calls_total{outcome="ok"}`),
    /// read from its `/metrics`: the LB's responses do not say which runner served a call. A call
    /// the LB gave up on there (`canceled`: answered too late, placed elsewhere) is not counted.
    pub async fn runner_calls(&self, service: &str) -> Result<u64> {
        let text = node_metrics(&self.ip(service).await?, RUNNER_METRICS_PORT).await?;
        Ok(crate::load::metric_sum(&text, "ferrofn_runner_calls_total", &[("outcome", "ok")]) as u64)
    }

    /// The sum of metric `name` (all label sets) on a runner's `/metrics`.
    pub async fn runner_metric(&self, service: &str, name: &str) -> Result<f64> {
        let text = node_metrics(&self.ip(service).await?, RUNNER_METRICS_PORT).await?;
        Ok(crate::load::metric_sum(&text, name, &[]))
    }

    /// The LB's `/metrics` (Prometheus text).
    pub async fn lb_metrics(&self) -> Result<String> {
        let r = request("GET", &self.url("/metrics"), &BTreeMap::new(), Bytes::new()).await?;
        if r.status != 200 {
            bail!("GET /metrics on the LB: {}", r.status);
        }
        Ok(r.text())
    }

    /// The state the LB reports for a runner (`lb_runner_up{runner, state} == 1`): `up`, `down` or
    /// `draining`; `None` before the LB has probed it.
    pub async fn lb_runner_state(&self, service: &str) -> Result<Option<String>> {
        Ok(lb_runner_state(
            &self.lb_metrics().await?,
            &format!("{service}:{RUNNER_GRPC_PORT}"),
        ))
    }

    /// Waits until the LB reports `state` for the runner.
    pub async fn wait_lb_state(&self, service: &str, state: &str, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            let last = match self.lb_runner_state(service).await {
                Ok(s) if s.as_deref() == Some(state) => return Ok(()),
                Ok(s) => s,
                Err(e) => Some(format!("error: {e:#}")),
            };
            if Instant::now() >= deadline {
                bail!("the LB did not report {service} {state} within {limit:?} (last: {last:?})");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until a service's Docker health check reports `healthy`.
    pub async fn wait_healthy(&self, service: &str, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            let id = self.container(service).await?;
            let last = docker(&[
                "inspect",
                "--format",
                "{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}",
                &id,
            ])
            .await
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|e| format!("{e:#}"));
            if last == "healthy" {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("{service} not healthy within {limit:?} (last: {last})");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Waits until the LB answers `GET /version`.
    pub async fn wait_lb(&self, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            let r = request("GET", &self.url("/version"), &BTreeMap::new(), Bytes::new()).await;
            if matches!(&r, Ok(r) if r.status == 200) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("the LB did not answer GET /version within {limit:?}: {r:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// What of this cluster exists: compose containers, function containers of its runners,
    /// networks, volumes, the iofs dir. Empty after [`Cluster::down`].
    pub async fn leftovers(&self) -> Result<Vec<String>> {
        let project = format!("label=com.docker.compose.project={}", self.project);
        let mut found = Vec::new();
        for (kind, args) in [
            ("container", vec!["ps", "-aq", "--filter", project.as_str()]),
            (
                "network",
                vec!["network", "ls", "-q", "--filter", project.as_str()],
            ),
            ("volume", vec!["volume", "ls", "-q", "--filter", project.as_str()]),
        ] {
            for id in docker(&args).await?.split_whitespace() {
                found.push(format!("{kind} {id}"));
            }
        }
        if self.kind == Kind::Single {
            for service in RUNNERS {
                let label = format!("label=ferrofn.runner={}", self.runner_label(service));
                for id in docker(&["ps", "-aq", "--filter", &label])
                    .await?
                    .split_whitespace()
                {
                    found.push(format!("function container {id} of {service}"));
                }
            }
        }
        // Any runner's function container bind-mounting a dir of this cluster's iofs dir (the HA
        // runners' labels name their container ids, which are gone after down).
        for id in self.function_containers().await? {
            let line = format!("function container {id} (iofs)");
            if !found.iter().any(|f| f.contains(id.as_str())) {
                found.push(line);
            }
        }
        if self.iofs_dir.exists() {
            found.push(format!("iofs dir {}", self.iofs_dir.display()));
        }
        Ok(found)
    }

    /// Function containers (any state) that bind-mount a dir of this cluster's iofs dir: every
    /// container a runner of this cluster started, whatever the runner's name.
    pub async fn function_containers(&self) -> Result<Vec<String>> {
        let prefix = format!("{}/", self.iofs_dir.display());
        let mut found = Vec::new();
        let managed = docker(&["ps", "-aq", "--filter", "label=ferrofn.managed=true"]).await?;
        for id in managed.split_whitespace() {
            // A container removed meanwhile (a runner cleaning up) is not a leftover.
            let Ok(mounts) = docker(&[
                "inspect",
                "--format",
                "{{range .Mounts}}{{println .Source}}{{end}}",
                id,
            ])
            .await
            else {
                continue;
            };
            if mounts.lines().any(|m| m.starts_with(&prefix)) {
                found.push(id.to_owned());
            }
        }
        Ok(found)
    }

    /// The last `tail` log lines of every service (for failure messages).
    pub async fn logs(&self, tail: usize) -> String {
        let mut cmd = self.script("compose.sh");
        cmd.args(["logs", "--no-color", "--timestamps", "--tail", &tail.to_string()]);
        match cmd.stdin(Stdio::null()).output().await {
            Ok(out) => String::from_utf8_lossy(&out.stdout).into_owned(),
            Err(e) => format!("(cannot read the logs: {e})"),
        }
    }

    /// Removes the cluster with `deploy/down.sh` and checks that nothing of it is left.
    pub async fn down(mut self) -> Result<()> {
        self.removed = true;
        run(
            self.script("down.sh"),
            &format!("deploy/down.sh for {}", self.project),
        )
        .await?;
        let left = self.leftovers().await?;
        if !left.is_empty() {
            bail!(
                "after deploy/down.sh, cluster {} still has: {left:?}",
                self.project
            );
        }
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        // A failed or panicking test: show what the nodes said, then remove the cluster anyway
        // (blocking is fine in a test's drop).
        let logs = std::process::Command::new("bash")
            .arg(workspace_root().join("deploy/compose.sh"))
            .args(["logs", "--no-color", "--timestamps", "--tail", "40"])
            .current_dir(workspace_root())
            .envs(self.env())
            .stdin(Stdio::null())
            .output();
        if let Ok(out) = logs {
            eprintln!(
                "cluster {} dropped without down(); last log lines:\n{}",
                self.project,
                String::from_utf8_lossy(&out.stdout)
            );
        }
        let status = std::process::Command::new("bash")
            .arg(workspace_root().join("deploy/down.sh"))
            .current_dir(workspace_root())
            .envs(self.env())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .status();
        if !matches!(status, Ok(s) if s.success()) {
            eprintln!(
                "cluster {}: deploy/down.sh failed on drop: {status:?}",
                self.project
            );
        }
    }
}

/// A container's address on its (first) network; reachable from the host, since the clusters'
/// networks are bridges of this engine.
pub async fn container_ip(id: &str) -> Result<String> {
    let out = docker(&[
        "inspect",
        "--format",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
        id,
    ])
    .await?;
    out.split_whitespace()
        .next()
        .map(str::to_owned)
        .with_context(|| format!("container {id} has no address on a network"))
}

/// The `state` label of the `lb_runner_up` sample set to 1 for runner `addr`.
pub fn lb_runner_state(text: &str, addr: &str) -> Option<String> {
    let runner = format!("runner=\"{addr}\"");
    text.lines()
        .filter(|l| l.starts_with("lb_runner_up{") && l.contains(&runner))
        .filter(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) == Some(1.0))
        .find_map(|l| {
            let rest = &l[l.find("state=\"")? + 7..];
            Some(rest[..rest.find('"')?].to_owned())
        })
}

/// One call of a [`Load`].
#[derive(Debug, Clone)]
pub struct Outcome {
    /// When it was sent, from the start of the load.
    pub sent: Duration,
    /// How long it took to answer (or to fail).
    pub took: Duration,
    /// The status, if an answer came.
    pub status: Option<u16>,
    /// The body (or the transport error).
    pub body: String,
}

impl Outcome {
    /// 200 with the expected body prefix.
    pub fn ok(&self) -> bool {
        self.status == Some(200)
    }
}

/// Bounded steady load: `workers` tasks each sending one call after the other until stopped or
/// until `max_calls` calls have been sent in all.
#[derive(Debug)]
pub struct Load {
    started: Instant,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<Vec<Outcome>>>,
}

impl Load {
    /// Starts the load on `url` (POST `body`, each call bounded by `call_timeout`).
    pub fn start(url: String, body: Bytes, workers: usize, max_calls: usize, call_timeout: Duration) -> Self {
        let started = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicUsize::new(0));
        let sent = Arc::new(AtomicUsize::new(0));
        let tasks = (0..workers)
            .map(|_| {
                let (url, body, stop, done, sent) = (
                    url.clone(),
                    body.clone(),
                    stop.clone(),
                    done.clone(),
                    sent.clone(),
                );
                tokio::spawn(async move {
                    let mut out = Vec::new();
                    while !stop.load(Ordering::Relaxed) && sent.fetch_add(1, Ordering::Relaxed) < max_calls {
                        let t = Instant::now();
                        let r = tokio::time::timeout(
                            call_timeout,
                            request("POST", &url, &BTreeMap::new(), body.clone()),
                        )
                        .await;
                        let (status, body) = match r {
                            Ok(Ok(r)) => (Some(r.status), r.text()),
                            Ok(Err(e)) => (None, format!("transport error: {e:#}")),
                            Err(_) => (None, format!("no answer within {call_timeout:?}")),
                        };
                        out.push(Outcome {
                            sent: t - started,
                            took: t.elapsed(),
                            status,
                            body,
                        });
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    out
                })
            })
            .collect();
        Load {
            started,
            stop,
            done,
            tasks,
        }
    }

    /// Calls answered (or failed) so far.
    pub fn done(&self) -> usize {
        self.done.load(Ordering::Relaxed)
    }

    /// Time since the load started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Waits until `n` more calls have completed (bounded).
    pub async fn wait_calls(&self, n: usize, limit: Duration) -> Result<()> {
        let target = self.done() + n;
        let deadline = Instant::now() + limit;
        while self.done() < target {
            if Instant::now() >= deadline {
                bail!("load: fewer than {n} calls completed within {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Stops sending, waits for the calls in flight and returns every outcome, in send order.
    pub async fn finish(self) -> Result<Vec<Outcome>> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for t in self.tasks {
            all.extend(t.await.context("load task panicked")?);
        }
        all.sort_by_key(|o| o.sent);
        Ok(all)
    }
}

/// A short description of the failed calls, for assertion messages.
pub fn describe_failures(outcomes: &[Outcome]) -> String {
    let failed: Vec<String> = outcomes
        .iter()
        .filter(|o| !o.ok())
        .take(10)
        .map(|o| {
            format!(
                "at {:?} took {:?}: {:?} {}",
                o.sent,
                o.took,
                o.status,
                o.body.chars().take(200).collect::<String>()
            )
        })
        .collect();
    format!(
        "{} of {} calls failed; first: {failed:#?}",
        outcomes.iter().filter(|o| !o.ok()).count(),
        outcomes.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_parsing() {
        let text = "# TYPE ferrofn_runner_calls_total counter\n\
                    ferrofn_runner_calls_total{outcome=\"ok\"} 7\n\
                    ferrofn_runner_calls_total{outcome=\"error\"} 2\n\
                    ferrofn_runner_calls_total_other 100\n\
                    lb_runner_up{runner=\"runner-1:9190\",state=\"down\"} 0\n\
                    lb_runner_up{runner=\"runner-1:9190\",state=\"up\"} 1\n\
                    lb_runner_up{state=\"down\",runner=\"runner-2:9190\"} 1\n";
        assert_eq!(
            crate::load::metric_sum(text, "ferrofn_runner_calls_total", &[]),
            9.0
        );
        assert_eq!(crate::load::metric_sum(text, "missing_total", &[]), 0.0);
        assert_eq!(lb_runner_state(text, "runner-1:9190").as_deref(), Some("up"));
        assert_eq!(lb_runner_state(text, "runner-2:9190").as_deref(), Some("down"));
        assert_eq!(lb_runner_state(text, "runner-3:9190"), None);
    }
}
