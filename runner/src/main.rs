//! The `ferrofn-runner` binary: loads the layered settings, serves until SIGTERM/SIGINT (then drains),
//! and has `print-config`, `certs` and `probe` subcommands. The bound addresses are printed on stdout
//! (`grpc_addr=...`, `http_addr=...`) so that harnesses using port 0 can find them.
#![forbid(unsafe_code)]

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use ferrofn_common::certs::{CertsArgs, run_certs};
use ferrofn_common::config::EnvSource;
use ferrofn_common::shutdown::Shutdown;
use ferrofn_common::tls::{ClientTls, TlsFiles, connect_channel, runner_endpoint};
use ferrofn_proto::health::HealthCheckRequest;
use ferrofn_proto::health::health_check_response::ServingStatus;
use ferrofn_proto::health::health_client::HealthClient;
use ferrofn_runner::config::{Flags, RunnerSettings};

#[derive(Debug, Parser)]
#[command(
    name = "ferrofn-runner",
    version,
    about = "ferrofn pure runner (Fn-compatible)"
)]
struct Cli {
    /// TOML settings file.
    #[arg(long, global = true, env = "FERROFN_RUNNER_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    flags: Flags,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the effective settings as TOML and exit.
    PrintConfig,
    /// Generate a cluster CA and the LB / runner certificates.
    Certs(CertsArgs),
    /// Exit 0 if the runner at --addr reports grpc.health SERVING, 1 otherwise.
    Probe(ProbeArgs),
}

#[derive(Debug, Args)]
struct ProbeArgs {
    /// Runner address, host:port.
    #[arg(long, default_value = "127.0.0.1:9190")]
    addr: String,
    /// CA file (with --cert/--key: probe over mTLS; without: plaintext).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Client certificate.
    #[arg(long)]
    cert: Option<PathBuf>,
    /// Client key.
    #[arg(long)]
    key: Option<PathBuf>,
    /// Give up after this many milliseconds.
    #[arg(long, default_value_t = 3000)]
    timeout_ms: u64,
    /// Check `GET /health/ready` on the runner's HTTP port at HOST:PORT instead (the same verdict,
    /// plaintext, no client certificate: for a health check beside the runner, which must not hold
    /// the LB's key).
    #[arg(long, value_name = "HOST:PORT", conflicts_with_all = ["ca", "cert", "key"])]
    http: Option<String>,
}

async fn probe(args: &ProbeArgs) -> anyhow::Result<bool> {
    if let Some(addr) = &args.http {
        let limit = Duration::from_millis(args.timeout_ms);
        ferrofn_common::probe::http_ok(addr, "/health/ready", limit).await?;
        return Ok(true);
    }
    let tls = match (&args.ca, &args.cert, &args.key) {
        (Some(ca), Some(cert), Some(key)) => Some(ClientTls::new(TlsFiles::new(ca, cert, key))?),
        (None, None, None) => None,
        _ => anyhow::bail!("--ca, --cert and --key go together"),
    };
    let host = args
        .addr
        .rsplit_once(':')
        .map(|(h, _)| h)
        .unwrap_or(&args.addr)
        .trim_matches(['[', ']'])
        .to_string();
    let endpoint = runner_endpoint(&args.addr)?.connect_timeout(Duration::from_millis(args.timeout_ms));
    let check = async {
        let channel = connect_channel(endpoint, tls, &host).await?;
        let resp = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await?;
        anyhow::Ok(resp.into_inner().status == ServingStatus::Serving as i32)
    };
    tokio::time::timeout(Duration::from_millis(args.timeout_ms), check)
        .await
        .context("probe timed out")?
}

fn main() -> ExitCode {
    ferrofn_common::malloc::reexec_with_fixed_mmap_threshold();
    match run() {
        Ok(code) => code,
        Err(e) => ferrofn_common::exit::fail("ferrofn-runner", &e),
    }
}

fn run() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    ferrofn_common::tls::install_crypto_provider();
    let load = || RunnerSettings::load(cli.config.as_deref(), &EnvSource::process(), &cli.flags);
    match &cli.command {
        Some(Command::PrintConfig) => {
            let loaded = load()?;
            for d in loaded.deprecations() {
                eprintln!("ferrofn-runner: warning: {d}");
            }
            print!("{}", loaded.render());
            return Ok(ExitCode::SUCCESS);
        }
        Some(Command::Certs(args)) => {
            run_certs(args)?;
            return Ok(ExitCode::SUCCESS);
        }
        Some(Command::Probe(args)) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("tokio runtime")?;
            return Ok(match rt.block_on(probe(args)) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => {
                    eprintln!(
                        "runner at {} is not serving",
                        args.http.as_ref().unwrap_or(&args.addr)
                    );
                    ExitCode::FAILURE
                }
                Err(e) => {
                    eprintln!(
                        "ferrofn-runner: probe of {} failed: {}",
                        args.http.as_ref().unwrap_or(&args.addr),
                        ferrofn_common::exit::report(&e)
                    );
                    ExitCode::FAILURE
                }
            });
        }
        None => {}
    }
    let loaded = load()?;
    let settings = loaded.settings.clone();
    ferrofn_common::telemetry::init_tracing(settings.log_format, &settings.log_level);
    loaded.log_deprecations();
    ferrofn_common::telemetry::install_prometheus();
    let rt = ferrofn_common::runtime::build(settings.worker_threads).context("tokio runtime")?;
    rt.block_on(async move {
        let shutdown = Shutdown::new();
        shutdown.listen_for_signals();
        let runner = ferrofn_runner::start(&settings, shutdown.clone()).await?;
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "grpc_addr={}", runner.grpc_addr)?;
            writeln!(out, "http_addr={}", runner.http_addr)?;
            out.flush()?;
        }
        runner.task.await.context("runner task")?;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}
