//! The `ferrofn-lb` binary: loads the layered settings, serves until SIGTERM/SIGINT, re-reads the
//! runner list on SIGHUP; `print-config` and `certs` subcommands.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio::signal::unix::{SignalKind, signal};

use ferrofn_common::certs::{CertsArgs, run_certs};
use ferrofn_common::config::EnvSource;
use ferrofn_common::shutdown::Shutdown;
use ferrofn_lb::config::{Flags, LbSettings};

/// How long SIGTERM waits for detached calls still running (Fn's longest fn timeout is 300 s).
const DRAIN_LIMIT: std::time::Duration = std::time::Duration::from_secs(330);

#[derive(Debug, Parser)]
#[command(name = "ferrofn-lb", version, about = "ferrofn LB node (Fn-compatible)")]
struct Cli {
    /// TOML settings file.
    #[arg(long, global = true, env = "FERROFN_LB_CONFIG")]
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
    /// Health check for compose / Kubernetes: exit 0 when `GET /health/live` answers 200 (with
    /// `--ready`: `GET /health/ready`, the registry answers and a runner is up).
    Probe {
        /// `host:port` of the LB (default: 127.0.0.1 and the configured port).
        #[arg(long)]
        addr: Option<String>,
        /// Check readiness instead of liveness.
        #[arg(long)]
        ready: bool,
        /// Give up after this many milliseconds.
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
}

fn main() -> ExitCode {
    ferrofn_common::malloc::reexec_with_fixed_mmap_threshold();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => ferrofn_common::exit::fail("ferrofn-lb", &e),
    }
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let load = || LbSettings::load(cli.config.as_deref(), &EnvSource::process(), &cli.flags);
    match &cli.command {
        Some(Command::PrintConfig) => {
            let loaded = load()?;
            for d in loaded.deprecations() {
                eprintln!("ferrofn-lb: warning: {d}");
            }
            // Tokens and the database password are secrets: print-config says whether a token is
            // set and shows the database URL without its password.
            let mut shown = loaded.clone();
            shown.settings = loaded.settings.redacted();
            print!("{}", shown.render());
            return Ok(());
        }
        Some(Command::Certs(args)) => return run_certs(args),
        Some(Command::Probe {
            addr,
            ready,
            timeout_ms,
        }) => {
            let addr = match addr {
                Some(a) => a.clone(),
                None => format!("127.0.0.1:{}", load()?.settings.port),
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let limit = std::time::Duration::from_millis(*timeout_ms);
            let path = if *ready { "/health/ready" } else { "/health/live" };
            return rt.block_on(ferrofn_common::probe::http_ok(&addr, path, limit));
        }
        None => {}
    }
    let loaded = load()?;
    let settings = loaded.settings.clone();
    ferrofn_common::telemetry::init_tracing(settings.log_format, &settings.log_level);
    loaded.log_deprecations();
    let rt = ferrofn_common::runtime::build(settings.worker_threads).context("tokio runtime")?;
    rt.block_on(async move {
        let shutdown = Shutdown::new();
        shutdown.listen_for_signals();
        let lb = ferrofn_lb::start(&settings, shutdown.clone()).await?;
        let mut hup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
        let pool = lb.pool.clone();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = hup.recv() => match load() {
                    // The file (and the environment of the process, which cannot change) again.
                    Ok(s) => {
                        if let Err(e) = pool.set_addresses(&s.settings.runner_list()) {
                            tracing::error!(error = %e, "SIGHUP: keeping the old runner list");
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "SIGHUP: cannot re-read the settings"),
                },
            }
        }
        lb.task.await.context("server task")?;
        // HTTP is closed; detached calls may still be running on runners: let them finish.
        let left = lb.pool.drain(DRAIN_LIMIT).await;
        if left > 0 {
            tracing::warn!(calls = left, "stopping with calls still in flight");
        }
        tracing::info!("LB stopped");
        anyhow::Ok(())
    })
}
