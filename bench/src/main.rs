//! `ferrofn-bench`: command-line front of the measurement tool. Each subcommand runs one scenario
//! (or `all` of them plus the floor), samples the watched processes' memory around it, prints the
//! tables on stdout and optionally writes the JSON report.
//!
//! Exit status: 0 when every scenario ran and every figure is valid; 1 when a scenario could not
//! run (what finished is still reported); 3 when a figure has failed calls (INVALID), unless
//! `--allow-failures` is given; 2 for a usage error (clap's).
#![forbid(unsafe_code)]

use anyhow::{Context, Result};
use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use ferrofn_bench::{
    client::{BaseUrl, CallTemplate, Endpoint},
    cold::{self, ColdOptions},
    cpu::{self, ContainerCpu, CpuFigure},
    floor::{self, FloorOptions, Launcher},
    load::{self, CallTarget},
    progress::Progress,
    relay,
    report::{Report, TargetInfo},
    rss::{RssTarget, RssWatch},
    sim::{self, SimOptions},
    stats::Counted,
    step::{self, ContainerWatch},
    stream::{self, BodyMode},
    targets,
    units::{parse_duration, parse_size},
};
use std::{path::PathBuf, time::Duration};

const DEFAULT_BODY: &str = r#"{"echoContent":"x"}"#;

/// The exit status of a run with a figure that has failed calls.
const EXIT_INVALID: i32 = 3;

#[derive(Parser)]
#[command(
    name = "ferrofn-bench",
    version,
    about = "Measure an Fn-style LB against the physical floor"
)]
struct Cli {
    /// Also write the report as JSON to this file.
    #[arg(long, global = true, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Sample VmRSS/VmHWM of this process during each scenario: LABEL=PID or PID (repeatable).
    #[arg(long = "rss-pid", global = true, value_name = "LABEL=PID")]
    rss_pid: Vec<RssTarget>,
    /// During `conc`, also measure the cgroup CPU of the running containers with this label
    /// (`key=value`, e.g. `ferrofn.runner=NAME` for one runner's function containers; repeatable).
    #[arg(long = "fn-cpu-label", global = true, value_name = "KEY=VALUE")]
    fn_cpu_label: Vec<String>,
    /// Exit 0 even when figures have failed calls (for exploration). The figures are still
    /// marked INVALID and give no PASS/FAIL; without this flag such a run exits with status 3.
    #[arg(long, global = true)]
    allow_failures: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Sequential warm calls on one keep-alive connection.
    Seq(SeqArgs),
    /// Calls spaced by an idle gap on one keep-alive connection.
    Sparse(SparseArgs),
    /// Concurrent clients, each on its own keep-alive connection, for a fixed time.
    Conc(ConcArgs),
    /// First calls of freshly registered fns (created and deleted through the v2 API).
    Cold(ColdArgs),
    /// Stream a large body through the function and back.
    Stream(StreamArgs),
    /// The physical floor: the function image run and called directly on the local engine.
    Floor(FloorArgs),
    /// floor + seq + sparse + conc + stream (+ cold with --api-url), with the contract's checks.
    All(AllArgs),
    /// Placement simulator: the LB's placers on a simulated pool under Zipf traffic (no cluster).
    Sim(SimArgs),
    /// Load step: N clients start at once on a fresh fn (no warm-up), every call counted from t=0.
    Step(StepArgs),
    /// The TARGETS table of a `make bench` run, from the JSON reports in a results directory.
    Targets(TargetsArgs),
    /// A byte relay on loopback (the floor runs its warm calls through a chain of these): prints
    /// the address it bound, then copies bytes both ways to `--to` until killed.
    Relay(RelayArgs),
}

#[derive(Args)]
struct RelayArgs {
    /// Where each connection is relayed: `tcp:HOST:PORT` or `unix:PATH`.
    #[arg(long, value_parser = relay::parse_endpoint)]
    to: Endpoint,
    /// Where to listen (loopback).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
}

#[derive(Args)]
struct StepArgs {
    #[command(flatten)]
    target: TargetArgs,
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// How long the clients call (e.g. 10s).
    #[arg(long, default_value = "10s", value_parser = duration_arg)]
    duration: Duration,
    /// Width of the per-window latency figures.
    #[arg(long, default_value = "1s", value_parser = duration_arg)]
    window: Duration,
    /// Count the containers carrying this label that are created during the step, e.g.
    /// `ferrofn.fn_id=<fn id>` for a ferrofn fn's function containers (local engine).
    #[arg(long, value_name = "KEY=VALUE")]
    containers_label: Option<String>,
}

#[derive(Args)]
struct TargetsArgs {
    /// The directory the run wrote its `<name>.json` reports (and `<name>.skipped` reasons) into.
    #[arg(long, default_value = "bench-results")]
    results: PathBuf,
}

#[derive(Args)]
struct SimArgs {
    /// Distinct fns.
    #[arg(long, default_value_t = 1000)]
    functions: usize,
    /// Zipf exponent of the fns' popularity (0 = uniform).
    #[arg(long, default_value_t = 1.0)]
    zipf_s: f64,
    #[arg(long, default_value_t = 8)]
    runners: usize,
    /// Containers (warm or busy) each runner can hold.
    #[arg(long, default_value_t = 32)]
    capacity: usize,
    /// Counted calls.
    #[arg(long, default_value_t = 200_000)]
    calls: usize,
    /// Uncounted calls first, to fill the runners.
    #[arg(long, default_value_t = 20_000)]
    warmup_calls: usize,
    /// Mean arrival rate over the pool (calls/s, Poisson).
    #[arg(long, default_value_t = 400.0)]
    rate: f64,
    /// Mean call duration (ms, exponential).
    #[arg(long, default_value_t = 100.0)]
    duration_ms: f64,
    /// Extra duration of a call that starts a container (ms).
    #[arg(long, default_value_t = 200.0)]
    cold_start_ms: f64,
    /// ch-bounded's load factor c.
    #[arg(long, default_value_t = 1.25)]
    load_factor: f64,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Placers to compare (comma-separated).
    #[arg(long, default_value = "naive,ch,ch-bounded", value_delimiter = ',')]
    placers: Vec<String>,
    /// LB counts to compare (comma-separated): each LB places on its own view of the runners.
    #[arg(long, default_value = "1,2,4", value_delimiter = ',')]
    lbs: Vec<usize>,
}

/// Where calls go.
#[derive(Args, Clone)]
struct TargetArgs {
    /// Base URL of the LB (Fn or ferrofn).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// The fn to invoke (`POST /invoke/{fn_id}`).
    #[arg(long)]
    fn_id: String,
    /// Body of each call.
    #[arg(long, default_value = DEFAULT_BODY)]
    body: String,
}

#[derive(Args)]
struct SeqArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Measured calls.
    #[arg(long, default_value_t = 1000)]
    n: usize,
    /// Unmeasured calls first.
    #[arg(long, default_value_t = 20)]
    warmup: usize,
}

#[derive(Args)]
struct SparseArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Idle time between the end of a call and the start of the next.
    #[arg(long, default_value_t = 200)]
    gap_ms: u64,
    #[arg(long, default_value_t = 50)]
    n: usize,
    #[arg(long, default_value_t = 5)]
    warmup: usize,
}

#[derive(Args)]
struct ConcArgs {
    #[command(flatten)]
    target: TargetArgs,
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// How long the clients call (e.g. 10s, 500ms, 1m).
    #[arg(long, default_value = "10s", value_parser = duration_arg)]
    duration: Duration,
    /// Unmeasured calls per client before the common start.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
}

#[derive(Args)]
struct ColdArgs {
    /// Base URL of the v2 API.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    api_url: String,
    /// Base URL for the invocations (default: the API URL).
    #[arg(long)]
    url: Option<String>,
    /// App the fns are created in (created, and deleted after, if missing).
    #[arg(long, default_value = "ferrofn-bench")]
    app: String,
    #[arg(long, default_value = "ferrofn/testfn:latest")]
    image: String,
    /// Fresh fns (one first call each).
    #[arg(long, default_value_t = 10)]
    n: usize,
    /// Fn memory in MB (server default if unset).
    #[arg(long)]
    memory: Option<u64>,
    /// Fn idle timeout in seconds, so the bench's containers go soon (server default if unset).
    #[arg(long)]
    idle_timeout: Option<u64>,
    #[arg(long, default_value = DEFAULT_BODY)]
    body: String,
}

#[derive(Args)]
struct StreamArgs {
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    #[arg(long)]
    fn_id: String,
    /// Pattern bytes per transfer (e.g. 64MiB, 10MB).
    #[arg(long, default_value = "64MiB", value_parser = size_arg)]
    size: u64,
    /// `sized`: {"responseSize":N} + N bytes up, N bytes back (test function; Fn-safe);
    /// `echo`: {"echoBody":true} + bytes, streamed back while arriving (bare FDK only);
    /// `raw`: only the bytes, for a function that echoes any body as is.
    #[arg(long, value_enum, default_value_t = BodyMode::Sized)]
    body_mode: BodyMode,
    /// Transfers (the median is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
}

#[derive(Args)]
struct FloorArgs {
    /// The function image (built by `cargo run -p ferrofn-tests --bin ferrofn-images`).
    #[arg(long, default_value = "ferrofn/testfn:latest")]
    image: String,
    /// Measured warm calls over the unix socket.
    #[arg(long, default_value_t = 1000)]
    n: usize,
    #[arg(long, default_value_t = 20)]
    warmup: usize,
    #[arg(long, default_value = DEFAULT_BODY)]
    body: String,
    /// Sparse floor: calls spaced by `--gap-ms` idle (0 skips it).
    #[arg(long, default_value_t = 50)]
    sparse_n: usize,
    #[arg(long, default_value_t = 200)]
    gap_ms: u64,
    /// Streaming echo size.
    #[arg(long, default_value = "64MiB", value_parser = size_arg)]
    size: u64,
    /// Streaming transfers.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Streaming body mode (see `stream --help`).
    #[arg(long, value_enum, default_value_t = BodyMode::Sized)]
    body_mode: BodyMode,
    /// Fresh containers for the create + start + ready floor.
    #[arg(long, default_value_t = 5)]
    startup_runs: usize,
    /// Bound on the wait for the function's socket.
    #[arg(long, default_value = "10s", value_parser = duration_arg)]
    ready_timeout: Duration,
    /// Container memory limit in MB (Fn's default fn memory).
    #[arg(long, default_value_t = 128)]
    memory: u64,
    /// Also time the warm calls through this many byte relays, each its own process (0 skips).
    #[arg(long, default_value_t = floor::DEFAULT_RELAYS)]
    relays: usize,
}

#[derive(Args)]
struct AllArgs {
    #[command(flatten)]
    target: TargetArgs,
    #[arg(long, default_value = "ferrofn/testfn:latest")]
    image: String,
    /// Sequential calls (also the floor's).
    #[arg(long, default_value_t = 1000)]
    seq_n: usize,
    #[arg(long, default_value_t = 20)]
    warmup: usize,
    #[arg(long, default_value_t = 200)]
    gap_ms: u64,
    #[arg(long, default_value_t = 50)]
    sparse_n: usize,
    #[arg(long, default_value_t = 16)]
    clients: usize,
    #[arg(long, default_value = "10s", value_parser = duration_arg)]
    duration: Duration,
    #[arg(long, default_value = "64MiB", value_parser = size_arg)]
    size: u64,
    #[arg(long, default_value_t = 3)]
    stream_runs: usize,
    /// Streaming body mode, for both the floor and the LB (see `stream --help`).
    #[arg(long, value_enum, default_value_t = BodyMode::Sized)]
    body_mode: BodyMode,
    #[arg(long, default_value_t = 5)]
    startup_runs: usize,
    #[arg(long, default_value = "10s", value_parser = duration_arg)]
    ready_timeout: Duration,
    #[arg(long, default_value_t = 128)]
    memory: u64,
    /// Also time the floor's warm calls through this many byte relays (0 skips).
    #[arg(long, default_value_t = floor::DEFAULT_RELAYS)]
    relays: usize,
    /// Also run `cold` against this v2 API URL.
    #[arg(long)]
    api_url: Option<String>,
    #[arg(long, default_value = "ferrofn-bench")]
    app: String,
    #[arg(long, default_value_t = 10)]
    cold_n: usize,
    #[arg(long)]
    idle_timeout: Option<u64>,
}

fn duration_arg(s: &str) -> Result<Duration, String> {
    parse_duration(s).map_err(|e| e.to_string())
}

fn size_arg(s: &str) -> Result<u64, String> {
    parse_size(s).map_err(|e| e.to_string())
}

impl TargetArgs {
    fn call_target(&self) -> Result<CallTarget> {
        let base = BaseUrl::parse(&self.url)?;
        Ok(CallTarget {
            endpoint: base.endpoint.clone(),
            template: CallTemplate::post(
                base.authority.clone(),
                base.path(&format!("/invoke/{}", self.fn_id)),
            ),
            body: Bytes::from(self.body.clone()),
        })
    }

    fn info(&self) -> TargetInfo {
        TargetInfo {
            url: self.url.clone(),
            fn_id: Some(self.fn_id.clone()),
        }
    }
}

/// Runs `scenario` with memory sampling, appending the figures to the report (marked with the
/// scenario's failed calls).
async fn watched<T: Counted>(
    report: &mut Report,
    rss: &[RssTarget],
    name: &str,
    scenario: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    let watch = RssWatch::start(name, rss);
    let result = scenario.await;
    let failed = result.as_ref().map_or(0, Counted::failed);
    report.rss.extend(watch.finish(failed));
    result.with_context(|| format!("scenario {name}"))
}

async fn seq(report: &mut Report, rss: &[RssTarget], t: &TargetArgs, n: usize, warmup: usize) -> Result<()> {
    let target = t.call_target()?;
    let (progress, line) = Progress::start("seq", Some(n as u64));
    let result = watched(report, rss, "seq", async {
        Ok(load::sequential(&target, n, warmup, None, &progress).await?)
    })
    .await?;
    line.finish();
    report.seq = Some(result);
    Ok(())
}

async fn sparse(
    report: &mut Report,
    rss: &[RssTarget],
    t: &TargetArgs,
    gap_ms: u64,
    n: usize,
    warmup: usize,
) -> Result<()> {
    let target = t.call_target()?;
    let (progress, line) = Progress::start("sparse", Some(n as u64));
    let gap = Some(Duration::from_millis(gap_ms));
    let result = watched(report, rss, "sparse", async {
        Ok(load::sequential(&target, n, warmup, gap, &progress).await?)
    })
    .await?;
    line.finish();
    report.sparse = Some(result);
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn conc(
    report: &mut Report,
    rss: &[RssTarget],
    fn_cpu_labels: &[String],
    t: &TargetArgs,
    clients: usize,
    duration: Duration,
    warmup: usize,
) -> Result<()> {
    let target = t.call_target()?;
    let mut groups = Vec::new();
    for label in fn_cpu_labels {
        groups.push(ContainerCpu::connect(label).await?);
    }
    let mut groups_before = Vec::new();
    for g in &groups {
        groups_before.push(g.snapshot().await?);
    }
    let procs_before = cpu::snapshot(rss);
    let (progress, line) = Progress::start("conc", None);
    let result = watched(report, rss, "conc", async {
        Ok(load::concurrent(&target, clients, duration, warmup, &progress).await?)
    })
    .await?;
    line.finish();
    let procs_after = cpu::snapshot(rss);
    // Every call the LB saw: measured ones, failures, and each client's warm-up calls.
    let calls = result.calls.attempted + (result.clients * result.warmup) as u64;
    let failed = result.failed();
    report.cpu.extend(cpu::process_figures(
        rss,
        &procs_before,
        &procs_after,
        "conc",
        calls,
        failed,
    ));
    for (g, before) in groups.iter().zip(&groups_before) {
        let after = g.snapshot().await?;
        let used = cpu::containers_delta_ms(before, &after);
        report.cpu.push(CpuFigure::new(
            &format!("fn {}", g.label()),
            "conc",
            used,
            calls,
            failed,
        ));
    }
    report.conc = Some(result);
    Ok(())
}

async fn stream_scenario(
    report: &mut Report,
    rss: &[RssTarget],
    url: &str,
    fn_id: &str,
    size: u64,
    mode: BodyMode,
    runs: usize,
) -> Result<()> {
    let base = BaseUrl::parse(url)?;
    let mut template = CallTemplate::post(base.authority.clone(), base.path(&format!("/invoke/{fn_id}")));
    if mode == BodyMode::Raw {
        template.content_type = Some(http::HeaderValue::from_static("application/octet-stream"));
    }
    let (progress, line) = Progress::start("stream", Some(runs as u64));
    let result = watched(report, rss, "stream", async {
        Ok(stream::stream(&base.endpoint, &template, size, mode, runs, &progress).await?)
    })
    .await?;
    line.finish();
    report.stream = Some(result);
    Ok(())
}

async fn cold_scenario(
    report: &mut Report,
    rss: &[RssTarget],
    api_url: &str,
    url: Option<&str>,
    opts: ColdOptions,
) -> Result<()> {
    let api = BaseUrl::parse(api_url)?;
    let invoke = BaseUrl::parse(url.unwrap_or(api_url))?;
    let (progress, line) = Progress::start("cold", Some(opts.n as u64));
    let result = watched(report, rss, "cold", async {
        Ok(cold::cold(&api, &invoke, &opts, &progress).await?)
    })
    .await?;
    line.finish();
    report.cold = Some(result);
    Ok(())
}

async fn step_scenario(report: &mut Report, rss: &[RssTarget], a: &StepArgs) -> Result<()> {
    let target = a.target.call_target()?;
    let containers = match &a.containers_label {
        Some(label) => Some(ContainerWatch::start(label).await?),
        None => None,
    };
    let (progress, line) = Progress::start("step", None);
    let mut result = watched(report, rss, "step", async {
        Ok(step::step(&target, a.clients, a.duration, a.window, &progress).await?)
    })
    .await?;
    line.finish();
    if let Some(watch) = containers {
        result.containers = Some(watch.finish().await?);
    }
    report.step = Some(result);
    Ok(())
}

/// Runs the floor, then always sweeps this run's containers (also after an error or Ctrl-C).
async fn floor_scenario(report: &mut Report, rss: &[RssTarget], opts: FloorOptions) -> Result<()> {
    let launcher = Launcher::connect().await?;
    let measured = tokio::select! {
        r = watched(report, rss, "floor", async { Ok(floor::measure(&launcher, &opts).await?) }) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    match launcher.sweep().await {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            removed = n,
            run = launcher.run_id(),
            "removed leftover bench containers"
        ),
        Err(e) => eprintln!(
            "warning: cleaning up bench containers failed: {:#}",
            anyhow::Error::from(e)
        ),
    }
    report.floor = Some(measured?);
    Ok(())
}

async fn run(cli: &Cli, report: &mut Report) -> Result<()> {
    let rss = &cli.rss_pid;
    match &cli.command {
        Command::Seq(a) => seq(report, rss, &a.target, a.n, a.warmup).await,
        Command::Sparse(a) => sparse(report, rss, &a.target, a.gap_ms, a.n, a.warmup).await,
        Command::Conc(a) => {
            conc(
                report,
                rss,
                &cli.fn_cpu_label,
                &a.target,
                a.clients,
                a.duration,
                a.warmup,
            )
            .await
        }
        Command::Sim(a) => {
            let opts = SimOptions {
                functions: a.functions,
                zipf_s: a.zipf_s,
                runners: a.runners,
                capacity: a.capacity,
                calls: a.calls,
                warmup_calls: a.warmup_calls,
                rate_per_s: a.rate,
                mean_duration_ms: a.duration_ms,
                cold_start_ms: a.cold_start_ms,
                load_factor: a.load_factor,
                seed: a.seed,
            };
            let placers: Vec<&str> = a.placers.iter().map(|p| p.trim()).collect();
            report.sim = Some(sim::run(&opts, &placers, &a.lbs)?);
            Ok(())
        }
        Command::Cold(a) => {
            let opts = ColdOptions {
                app: a.app.clone(),
                image: a.image.clone(),
                n: a.n,
                memory: a.memory,
                idle_timeout: a.idle_timeout,
                body: Bytes::from(a.body.clone()),
            };
            cold_scenario(report, rss, &a.api_url, a.url.as_deref(), opts).await
        }
        Command::Stream(a) => {
            stream_scenario(report, rss, &a.url, &a.fn_id, a.size, a.body_mode, a.runs).await
        }
        Command::Step(a) => step_scenario(report, rss, a).await,
        // Handled in `main`: it reads results instead of measuring.
        Command::Targets(_) | Command::Relay(_) => Ok(()),
        Command::Floor(a) => {
            let opts = FloorOptions {
                image: a.image.clone(),
                n: a.n,
                warmup: a.warmup,
                body: Bytes::from(a.body.clone()),
                sparse_n: a.sparse_n,
                sparse_gap: Duration::from_millis(a.gap_ms),
                stream_size: a.size,
                stream_runs: a.runs,
                stream_mode: a.body_mode,
                startup_runs: a.startup_runs,
                ready_timeout: a.ready_timeout,
                memory_mb: a.memory,
                relays: a.relays,
            };
            floor_scenario(report, rss, opts).await
        }
        Command::All(a) => {
            let opts = FloorOptions {
                image: a.image.clone(),
                n: a.seq_n,
                warmup: a.warmup,
                body: Bytes::from(a.target.body.clone()),
                sparse_n: a.sparse_n,
                sparse_gap: Duration::from_millis(a.gap_ms),
                stream_size: a.size,
                stream_runs: a.stream_runs,
                stream_mode: a.body_mode,
                startup_runs: a.startup_runs,
                ready_timeout: a.ready_timeout,
                memory_mb: a.memory,
                relays: a.relays,
            };
            floor_scenario(report, rss, opts).await?;
            let t = &a.target;
            seq(report, rss, t, a.seq_n, a.warmup).await?;
            sparse(report, rss, t, a.gap_ms, a.sparse_n, a.warmup.min(5)).await?;
            conc(report, rss, &cli.fn_cpu_label, t, a.clients, a.duration, 2).await?;
            stream_scenario(report, rss, &t.url, &t.fn_id, a.size, a.body_mode, a.stream_runs).await?;
            if let Some(api_url) = &a.api_url {
                let opts = ColdOptions {
                    app: a.app.clone(),
                    image: a.image.clone(),
                    n: a.cold_n,
                    memory: Some(a.memory),
                    idle_timeout: a.idle_timeout,
                    body: Bytes::from(t.body.clone()),
                };
                cold_scenario(report, rss, api_url, Some(&t.url), opts).await?;
            }
            Ok(())
        }
    }
}

fn target_info(command: &Command) -> Option<TargetInfo> {
    match command {
        Command::Seq(a) => Some(a.target.info()),
        Command::Sparse(a) => Some(a.target.info()),
        Command::Conc(a) => Some(a.target.info()),
        Command::Step(a) => Some(a.target.info()),
        Command::All(a) => Some(a.target.info()),
        Command::Stream(a) => Some(TargetInfo {
            url: a.url.clone(),
            fn_id: Some(a.fn_id.clone()),
        }),
        Command::Cold(a) => Some(TargetInfo {
            url: a.url.clone().unwrap_or_else(|| a.api_url.clone()),
            fn_id: None,
        }),
        Command::Floor(_) | Command::Sim(_) | Command::Targets(_) | Command::Relay(_) => None,
    }
}

/// The exit status: a scenario that could not run wins, then invalid figures (unless allowed).
fn exit_status(scenario_failed: bool, figures_valid: bool, allow_failures: bool) -> i32 {
    if scenario_failed {
        1
    } else if !figures_valid && !allow_failures {
        EXIT_INVALID
    } else {
        0
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let cli = Cli::parse();
    if let Command::Relay(a) = &cli.command {
        let listener = tokio::net::TcpListener::bind(&a.listen)
            .await
            .with_context(|| format!("binding {}", a.listen))?;
        // The first line is the address: whoever started the relay waits for it.
        println!("{}", listener.local_addr()?);
        std::io::Write::flush(&mut std::io::stdout())?;
        relay::serve(listener, a.to.clone()).await?;
        return Ok(());
    }
    if let Command::Targets(a) = &cli.command {
        let table = targets::from_dir(&a.results);
        print!("{}", table.render());
        if let Some(path) = &cli.json {
            let json = serde_json::to_string_pretty(&table)?;
            std::fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))?;
            eprintln!("targets written to {}", path.display());
        }
        return match exit_status(false, table.valid, cli.allow_failures) {
            0 => Ok(()),
            code => std::process::exit(code),
        };
    }
    let mut report = Report::new(target_info(&cli.command));
    let outcome = run(&cli, &mut report).await;
    // Whatever finished is reported, also when a later scenario failed.
    report.derive();
    print!("{}", report.render());
    if let Some(path) = &cli.json {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))?;
        eprintln!("report written to {}", path.display());
    }
    if let Err(e) = &outcome {
        eprintln!("error: {e:#}");
    }
    if !report.valid {
        let figures: Vec<String> = report
            .invalid_figures
            .iter()
            .map(|f| format!("{} ({} failed)", f.figure, f.failed))
            .collect();
        eprintln!(
            "{}: {} failed call(s); INVALID figures: {}",
            if cli.allow_failures {
                "warning (--allow-failures)"
            } else {
                "error"
            },
            report.failed_calls,
            figures.join(", ")
        );
    }
    match exit_status(outcome.is_err(), report.valid, cli.allow_failures) {
        0 => Ok(()),
        code => std::process::exit(code),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_figures_fail_the_run_unless_allowed() {
        assert_eq!(exit_status(false, true, false), 0);
        assert_eq!(exit_status(false, false, false), EXIT_INVALID);
        assert_eq!(exit_status(false, false, true), 0);
        assert_eq!(exit_status(true, true, false), 1);
        assert_eq!(exit_status(true, false, true), 1);
    }

    #[test]
    fn allow_failures_is_a_global_flag() {
        let cli = Cli::try_parse_from(["ferrofn-bench", "seq", "--fn-id", "f", "--allow-failures"]).unwrap();
        assert!(cli.allow_failures);
        let cli = Cli::try_parse_from(["ferrofn-bench", "--allow-failures", "all", "--fn-id", "f"]).unwrap();
        assert!(cli.allow_failures);
        let cli = Cli::try_parse_from(["ferrofn-bench", "conc", "--fn-id", "f"]).unwrap();
        assert!(!cli.allow_failures);
    }
}
