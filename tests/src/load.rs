//! Load-test support (issue 10): a small HTTP/1.1 load generator (N clients, each on ONE keep-alive
//! connection, recording every call's start, end and outcome), Prometheus text parsing for the
//! runners' counters, and a socket-level view of the LB's connections to a runner (from
//! `/proc/net/tcp`), which shows a reconnect even when no metric counts it; and [`ProcCluster`], an
//! LB and runners as processes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bollard::Docker;
use bytes::Bytes;
use ferrofn_common::certs::{ClusterCertOptions, generate_cluster};
use ferrofn_common::tls::TlsFiles;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tempfile::TempDir;

use crate::lb_proc::LbBinary;
use crate::runner_proc::{RunnerProc, eventually, unique_name};

/// Failure descriptions kept per client (status and body, or the transport error).
const FAILURES_KEPT: usize = 5;

/// What the load generator sends.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// The LB's HTTP address.
    pub addr: SocketAddr,
    /// Request path, e.g. `/invoke/<fn_id>`.
    pub path: String,
    /// Request body (sent with `Content-Type: application/json`).
    pub body: Bytes,
    /// Concurrent clients, each with its own keep-alive connection.
    pub clients: usize,
    /// A call unanswered after this counts as a transport error (and its connection is replaced).
    pub request_timeout: Duration,
    /// Client `i` starts `i x stagger` after the first, so that clients of equal-length calls do not
    /// all start their calls at the same instant (zero: all at once).
    pub stagger: Duration,
}

/// One call as a client saw it.
#[derive(Debug, Clone, Copy)]
pub struct CallRecord {
    /// Which client made it.
    pub client: usize,
    /// When the request was handed to the connection.
    pub start: Instant,
    /// When the response body was read in full (or the error came).
    pub end: Instant,
    /// The status, or None for a transport error (connect, reset, timeout, cut body).
    pub status: Option<u16>,
}

impl CallRecord {
    /// The call's latency.
    pub fn latency(&self) -> Duration {
        self.end - self.start
    }

    /// True for a 200.
    pub fn ok(&self) -> bool {
        self.status == Some(200)
    }
}

#[derive(Debug, Default)]
struct ClientLog {
    calls: Vec<CallRecord>,
    failures: Vec<String>,
    reconnects: u64,
}

/// A running load.
#[derive(Debug)]
pub struct LoadRun {
    stop: Arc<AtomicBool>,
    started_calls: Arc<AtomicU64>,
    clients: Vec<tokio::task::JoinHandle<ClientLog>>,
    /// When the clients were started.
    pub started: Instant,
}

/// Everything a load run recorded.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Every finished call, all clients.
    pub calls: Vec<CallRecord>,
    /// The first failures of each client: `"<status> <body>"` or `"transport: <error>"`.
    pub failures: Vec<String>,
    /// Connections a client had to open again after the server closed its keep-alive connection
    /// between calls (a transport error on a call is counted as a failure, not here).
    pub reconnects: u64,
}

/// Counts over a set of calls.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    /// Calls.
    pub calls: u64,
    /// 200s.
    pub ok: u64,
    /// Calls by status.
    pub by_status: BTreeMap<u16, u64>,
    /// Transport errors.
    pub transport_errors: u64,
    /// Median latency of the 200s.
    pub p50: Duration,
    /// 99th percentile latency of the 200s.
    pub p99: Duration,
    /// Slowest 200.
    pub max: Duration,
}

impl Summary {
    /// Calls that did not answer 200 (other statuses and transport errors).
    pub fn failures(&self) -> u64 {
        self.calls - self.ok
    }

    /// Summarises `calls`.
    pub fn of<'a>(calls: impl IntoIterator<Item = &'a CallRecord>) -> Self {
        let mut s = Summary::default();
        let mut lat = Vec::new();
        for c in calls {
            s.calls += 1;
            match c.status {
                Some(code) => *s.by_status.entry(code).or_default() += 1,
                None => s.transport_errors += 1,
            }
            if c.ok() {
                s.ok += 1;
                lat.push(c.latency());
            }
        }
        lat.sort_unstable();
        let pct = |p: usize| {
            lat.get((lat.len() * p / 100).min(lat.len().saturating_sub(1)))
                .copied()
                .unwrap_or_default()
        };
        s.p50 = pct(50);
        s.p99 = pct(99);
        s.max = lat.last().copied().unwrap_or_default();
        s
    }
}

impl LoadReport {
    /// Summary of every call.
    pub fn summary(&self) -> Summary {
        Summary::of(&self.calls)
    }

    /// Summary of the calls that ended in `[from, to)`.
    pub fn ended_within(&self, from: Instant, to: Instant) -> Summary {
        Summary::of(self.calls.iter().filter(|c| c.end >= from && c.end < to))
    }
}

async fn connect(addr: SocketAddr) -> Result<SendRequest<Full<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

async fn one_call(sender: &mut SendRequest<Full<Bytes>>, cfg: &LoadConfig) -> Result<(u16, Bytes)> {
    let req = hyper::Request::post(cfg.path.as_str())
        .header(hyper::header::HOST, cfg.addr.to_string())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(cfg.body.clone()))?;
    let resp = sender.send_request(req).await.context("request")?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .context("response body")?
        .to_bytes();
    Ok((status, body))
}

fn fail(log: &mut ClientLog, what: String) {
    if log.failures.len() < FAILURES_KEPT {
        log.failures.push(what);
    }
}

async fn client(idx: usize, cfg: LoadConfig, stop: Arc<AtomicBool>, started: Arc<AtomicU64>) -> ClientLog {
    let mut log = ClientLog::default();
    let mut sender: Option<SendRequest<Full<Bytes>>> = None;
    // Load shaping (see LoadConfig::stagger), not a wait for an event.
    tokio::time::sleep(cfg.stagger * idx as u32).await;
    while !stop.load(Ordering::SeqCst) {
        // Keep-alive: the same connection for every call, unless the server closed it.
        if let Some(s) = sender.as_mut()
            && s.ready().await.is_err()
        {
            sender = None;
            log.reconnects += 1;
        }
        if sender.is_none() {
            let t = Instant::now();
            match tokio::time::timeout(cfg.request_timeout, connect(cfg.addr)).await {
                Ok(Ok(s)) => sender = Some(s),
                Ok(Err(e)) => {
                    log.calls.push(CallRecord {
                        client: idx,
                        start: t,
                        end: Instant::now(),
                        status: None,
                    });
                    fail(&mut log, format!("transport: connect: {e:#}"));
                    // Do not spin on a refused port.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                Err(_) => {
                    log.calls.push(CallRecord {
                        client: idx,
                        start: t,
                        end: Instant::now(),
                        status: None,
                    });
                    fail(&mut log, "transport: connect timed out".into());
                    continue;
                }
            }
        }
        let s = sender.as_mut().expect("connected above");
        started.fetch_add(1, Ordering::SeqCst);
        let start = Instant::now();
        let r = tokio::time::timeout(cfg.request_timeout, one_call(s, &cfg)).await;
        let end = Instant::now();
        let status = match r {
            Ok(Ok((status, body))) => {
                if status != 200 {
                    let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
                    fail(&mut log, format!("{status} {text}"));
                }
                Some(status)
            }
            Ok(Err(e)) => {
                fail(&mut log, format!("transport: {e:#}"));
                sender = None;
                None
            }
            Err(_) => {
                fail(
                    &mut log,
                    format!("transport: no answer within {:?}", cfg.request_timeout),
                );
                sender = None;
                None
            }
        };
        log.calls.push(CallRecord {
            client: idx,
            start,
            end,
            status,
        });
    }
    log
}

impl LoadRun {
    /// Starts `cfg.clients` clients; each calls in a loop until [`LoadRun::stop`].
    pub fn start(cfg: &LoadConfig) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let started_calls = Arc::new(AtomicU64::new(0));
        let clients = (0..cfg.clients)
            .map(|i| tokio::spawn(client(i, cfg.clone(), stop.clone(), started_calls.clone())))
            .collect();
        LoadRun {
            stop,
            started_calls,
            clients,
            started: Instant::now(),
        }
    }

    /// Calls started so far (all clients).
    pub fn calls_started(&self) -> u64 {
        self.started_calls.load(Ordering::SeqCst)
    }

    /// Stops starting calls, waits up to `limit` for the calls in flight to end, and returns what
    /// every client recorded. Clients still busy after `limit` are aborted (an error).
    pub async fn stop(self, limit: Duration) -> Result<LoadReport> {
        self.stop.store(true, Ordering::SeqCst);
        let mut report = LoadReport::default();
        let deadline = tokio::time::Instant::now() + limit;
        let mut stuck = 0;
        for mut h in self.clients {
            match tokio::time::timeout_at(deadline, &mut h).await {
                Ok(Ok(log)) => {
                    report.calls.extend(log.calls);
                    report.failures.extend(log.failures);
                    report.reconnects += log.reconnects;
                }
                Ok(Err(e)) => bail!("a load client panicked: {e}"),
                Err(_) => {
                    h.abort();
                    stuck += 1;
                }
            }
        }
        if stuck > 0 {
            bail!("{stuck} load client(s) still had a call in flight {limit:?} after the stop");
        }
        report.calls.sort_by_key(|c| c.start);
        Ok(report)
    }
}

/// `GET http://<addr>/metrics` as text.
pub async fn scrape(addr: SocketAddr) -> Result<String> {
    let url = format!("http://{addr}/metrics");
    let r = crate::lb_proc::request("GET", &url, &BTreeMap::new(), Bytes::new()).await?;
    if r.status != 200 {
        bail!("GET {url}: {}", r.status);
    }
    Ok(r.text())
}

/// The series name and label text of a sample line (`name{labels} value`).
fn sample(line: &str) -> Option<(&str, &str, f64)> {
    if line.starts_with('#') {
        return None;
    }
    let (series, value) = line.rsplit_once(' ')?;
    let (name, labels) = series.split_once('{').unwrap_or((series, ""));
    Some((name, labels, value.trim().parse().ok()?))
}

/// Sum of the samples of `name` whose labels include every `labels` pair (0 when absent).
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter_map(sample)
        .filter(|(n, l, _)| *n == name && labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
        .map(|(_, _, v)| v)
        .sum()
}

/// Whether the text has at least one sample of `name`.
pub fn has_metric(text: &str, name: &str) -> bool {
    text.lines().filter_map(sample).any(|(n, _, _)| n == name)
}

/// TryCalls received (issue 10; to be added to the runner).
pub const TRYCALLS: &str = "ferrofn_runner_trycalls_total";
/// NACKs sent, by reason.
pub const NACKS: &str = "ferrofn_runner_nacks_total";
/// HTTP/2 connections the gRPC server accepted (issue 10; to be added to the runner).
pub const GRPC_CONNECTIONS: &str = "ferrofn_runner_grpc_connections_total";
/// Calls by outcome (a NACK is `outcome="nack"`).
pub const CALLS: &str = "ferrofn_runner_calls_total";

/// The counters of one runner at one instant. A counter the runner does not expose (yet) is None.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunnerCounters {
    /// `ferrofn_runner_trycalls_total`, if exposed.
    pub trycalls: Option<f64>,
    /// `ferrofn_runner_nacks_total`, all reasons.
    pub nacks: f64,
    /// `ferrofn_runner_grpc_connections_total`, if exposed.
    pub grpc_connections: Option<f64>,
    /// `ferrofn_runner_calls_total`, all outcomes: one per TryCall that reached the end of its
    /// stream handler, so a stand-in for TryCalls on a runner without the counter.
    pub calls: f64,
}

impl RunnerCounters {
    /// Reads them from a runner's `/metrics`.
    pub async fn read(http_addr: SocketAddr) -> Result<Self> {
        let text = scrape(http_addr).await?;
        Ok(Self::parse(&text))
    }

    /// Reads them from `/metrics` text.
    pub fn parse(text: &str) -> Self {
        let opt = |name| has_metric(text, name).then(|| metric_sum(text, name, &[]));
        RunnerCounters {
            trycalls: opt(TRYCALLS),
            nacks: metric_sum(text, NACKS, &[]),
            grpc_connections: opt(GRPC_CONNECTIONS),
            calls: metric_sum(text, CALLS, &[]),
        }
    }

    /// TryCalls: the counter when exposed, else the calls counter (see [`RunnerCounters::calls`]).
    pub fn trycalls_or_calls(&self) -> f64 {
        self.trycalls.unwrap_or(self.calls)
    }
}

/// Client-side ports of the ESTABLISHED TCP connections to `server` in this network namespace
/// (`/proc/net/tcp`, IPv4 only). Each port is one connection some local process (the LB) opened.
pub fn client_ports_to(server: SocketAddr) -> Result<BTreeSet<u16>> {
    let SocketAddr::V4(server) = server else {
        bail!("IPv4 addresses only: {server}");
    };
    let table = std::fs::read_to_string("/proc/net/tcp").context("reading /proc/net/tcp")?;
    let parse = |s: &str| -> Option<(Ipv4Addr, u16)> {
        let (ip, port) = s.split_once(':')?;
        // The address is the u32 in host (little-endian) order; the port is plain hex.
        let ip = Ipv4Addr::from(u32::from_str_radix(ip, 16).ok()?.to_le_bytes());
        Some((ip, u16::from_str_radix(port, 16).ok()?))
    };
    Ok(table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (local, remote, state) = (parse(f.get(1)?)?, parse(f.get(2)?)?, *f.get(3)?);
            (state == "01" && remote == (*server.ip(), server.port())).then_some(local.1)
        })
        .collect())
}

/// Samples [`client_ports_to`] for several servers every 50 ms in the background.
#[derive(Debug)]
pub struct ConnWatch {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<BTreeSet<u16>>>,
}

impl ConnWatch {
    /// Starts sampling the connections to each of `servers`.
    pub fn start(servers: Vec<SocketAddr>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut seen = vec![BTreeSet::new(); servers.len()];
            loop {
                for (i, s) in servers.iter().enumerate() {
                    if let Ok(ports) = client_ports_to(*s) {
                        seen[i].extend(ports);
                    }
                }
                if flag.load(Ordering::SeqCst) {
                    return seen;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        ConnWatch { stop, task }
    }

    /// Stops; per server, every client port seen (one per connection).
    pub async fn stop(self) -> Vec<BTreeSet<u16>> {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap_or_default()
    }
}

/// The `FERROFN_LOAD_SECS` setting (measured seconds per load scenario), else `default`.
pub fn load_secs(default: u64) -> u64 {
    std::env::var("FERROFN_LOAD_SECS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|s| *s > 0)
        .unwrap_or(default)
}

/// Lines of `log` containing `needle`.
pub fn count_lines(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

/// The last `n` lines of `log`.
pub fn tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A cluster of processes for load tests: `n` real `ferrofn-runner`s (plaintext, or mTLS with
/// certificates generated here) and the real `ferrofn-lb` binary in front of them (`naive` placer,
/// probes every 200 ms), with one testfn fn registered. Dropping it kills every process and removes
/// the runners' containers (the harness types do); [`ProcCluster::finish`] drains and checks instead.
#[derive(Debug)]
pub struct ProcCluster {
    /// The engine.
    pub docker: Docker,
    /// The runners, in the LB's `FN_RUNNER_ADDRESSES` order.
    pub runners: Vec<RunnerProc>,
    /// The environment every runner was started with (for a restart).
    pub runner_env: Vec<(String, String)>,
    /// The LB.
    pub lb: LbBinary,
    /// mTLS between LB and runners.
    pub tls: bool,
    /// The registered fn.
    pub fn_id: String,
    _certs: Option<TempDir>,
    _db: TempDir,
}

/// Bound on cluster steps that should happen promptly.
const CLUSTER_PROMPT: Duration = Duration::from_secs(30);

impl ProcCluster {
    /// Starts `n` runners with `runner_env` and an LB with `lb_env` (on top of the runner list, the
    /// database, 200 ms probes and the TLS files), and registers app `load` with fn `f` (`fn_body`
    /// without `app_id`, e.g. `{"name": "f", "image": ..., "memory": 64}`).
    pub async fn start(
        n: usize,
        tls: bool,
        runner_env: &[(&str, &str)],
        lb_env: &[(&str, &str)],
        fn_body: serde_json::Value,
    ) -> Result<Self> {
        let docker = crate::docker::connect().await?;
        crate::images::ensure_image(&docker, crate::images::FnImage::Testfn).await?;
        let names: Vec<String> = (0..n).map(|i| format!("r{i}")).collect();
        let certs = if tls {
            ferrofn_common::tls::install_crypto_provider();
            let dir = tempfile::tempdir()?;
            let opts = ClusterCertOptions {
                runner_names: names.clone(),
                ..Default::default()
            };
            generate_cluster(dir.path(), &opts).context("generating the cluster certificates")?;
            Some(dir)
        } else {
            None
        };
        let mut runners = Vec::new();
        for cert_name in &names {
            let name = unique_name(&format!("load{cert_name}"));
            let r = match &certs {
                None => RunnerProc::start_named(&name, runner_env, &[]).await?,
                Some(dir) => {
                    let f = TlsFiles::runner_in(dir.path(), cert_name);
                    let (ca, cert, key) = (
                        f.ca.display().to_string(),
                        f.cert.display().to_string(),
                        f.key.display().to_string(),
                    );
                    let args = ["--tls-ca", &ca, "--tls-cert", &cert, "--tls-key", &key];
                    RunnerProc::start_tls(&name, runner_env, &args).await?
                }
            };
            runners.push(r);
        }
        let db = tempfile::tempdir()?;
        let db_url = format!("sqlite3://{}", db.path().join("fn.db").display());
        let addrs = runners
            .iter()
            .map(|r| r.grpc_addr.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let mut env: Vec<(&str, String)> = vec![
            ("FN_RUNNER_ADDRESSES", addrs),
            ("FN_DB_URL", db_url),
            ("FERROFN_HEALTH_INTERVAL_MSECS", "200".into()),
            ("NO_COLOR", "1".into()),
        ];
        let mut args = Vec::new();
        match &certs {
            None => args.push("--plaintext"),
            Some(dir) => {
                let f = TlsFiles::lb_in(dir.path());
                env.push(("FERROFN_TLS_CA", f.ca.display().to_string()));
                env.push(("FERROFN_TLS_CERT", f.cert.display().to_string()));
                env.push(("FERROFN_TLS_KEY", f.key.display().to_string()));
            }
        }
        env.extend(lb_env.iter().map(|(k, v)| (*k, v.to_string())));
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let lb = LbBinary::start(&args, &env).await?;
        let (_app, f) = crate::lb_proc::register(&lb.url(""), "load", fn_body).await?;
        let fn_id = f["id"].as_str().context("fn id")?.to_string();
        let cluster = ProcCluster {
            docker,
            runners,
            runner_env: runner_env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            lb,
            tls,
            fn_id,
            _certs: certs,
            _db: db,
        };
        for r in &cluster.runners {
            cluster.wait_runner(r.grpc_addr, "up").await?;
        }
        Ok(cluster)
    }

    /// The LB's log so far.
    pub fn lb_log(&self) -> String {
        self.lb.stderr.lock().unwrap().clone()
    }

    /// `/invoke/<fn_id>`.
    pub fn invoke_path(&self) -> String {
        format!("/invoke/{}", self.fn_id)
    }

    /// Waits until the LB reports runner `addr` in `state` (`up`, `down`).
    pub async fn wait_runner(&self, addr: SocketAddr, state: &str) -> Result<()> {
        let addr = addr.to_string();
        let labels = [("runner", addr.as_str()), ("state", state)];
        eventually(
            &format!("LB sees runner {addr} {state}"),
            CLUSTER_PROMPT,
            || async {
                let text = scrape(self.lb.addr).await.unwrap_or_default();
                metric_sum(&text, "lb_runner_up", &labels) == 1.0
            },
        )
        .await
        .with_context(|| format!("LB log:\n{}", tail(&self.lb_log(), 40)))
    }

    /// Every runner's counters now.
    pub async fn counters(&self) -> Result<Vec<RunnerCounters>> {
        let mut all = Vec::new();
        for r in &self.runners {
            all.push(RunnerCounters::read(r.http_addr).await?);
        }
        Ok(all)
    }

    /// LB->runner TCP connections open now (client ports), per runner.
    pub fn sockets(&self) -> Result<Vec<BTreeSet<u16>>> {
        self.runners
            .iter()
            .map(|r| client_ports_to(r.grpc_addr))
            .collect()
    }

    /// Stops the LB (SIGTERM, must exit 0), then drains every runner and checks it left no container.
    pub async fn finish(mut self) -> Result<()> {
        self.lb.signal("TERM")?;
        let status = tokio::time::timeout(CLUSTER_PROMPT, self.lb.child.wait())
            .await
            .context("LB did not exit after SIGTERM")??;
        let mut errors = Vec::new();
        for r in self.runners.drain(..) {
            if let Err(e) = r.drain_and_check(&self.docker).await {
                errors.push(format!("{e:#}"));
            }
        }
        if !status.success() {
            bail!("LB exit {status}");
        }
        if !errors.is_empty() {
            bail!("runner drain: {errors:?}");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_sum_and_presence() {
        let text = "# TYPE x counter\nferrofn_runner_nacks_total{reason=\"no capacity\"} 3\n\
                    ferrofn_runner_nacks_total{reason=\"draining\"} 2\nferrofn_runner_calls_total{outcome=\"ok\"} 7\n";
        assert_eq!(metric_sum(text, NACKS, &[]), 5.0);
        assert_eq!(metric_sum(text, NACKS, &[("reason", "draining")]), 2.0);
        assert!(has_metric(text, CALLS));
        let c = RunnerCounters::parse(text);
        assert_eq!(c.trycalls, None);
        assert_eq!(c.grpc_connections, None);
        assert_eq!(c.trycalls_or_calls(), 7.0);
    }

    #[test]
    fn summary_percentiles() {
        let t = Instant::now();
        let calls: Vec<CallRecord> = (1..=100u64)
            .map(|i| CallRecord {
                client: 0,
                start: t,
                end: t + Duration::from_millis(i),
                status: Some(if i == 100 { 503 } else { 200 }),
            })
            .collect();
        let s = Summary::of(&calls);
        assert_eq!((s.calls, s.ok, s.failures()), (100, 99, 1));
        assert_eq!(s.p50, Duration::from_millis(50));
        assert_eq!(s.max, Duration::from_millis(99));
    }
}
