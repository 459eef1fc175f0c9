//! Starting the LB: open the registry, build the pool and placer, start the health loop and serve
//! HTTP until shutdown (graceful: in-flight requests finish).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use ferrofn_common::shutdown::Shutdown;
use ferrofn_common::tls::{ClientTls, TlsFiles};

use crate::config::LbSettings;
use crate::http::auth::Tokens;
use crate::http::{LbState, router};
use crate::placer;
use crate::pool::{RunnerPool, health};
use crate::registry::{CachedRegistry, Registry, SqliteRegistry, cache, sqlite::db_path};

/// Why the LB could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The registry database.
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
    /// `FN_PLACER`.
    #[error(transparent)]
    Placer(#[from] placer::UnknownPlacer),
    /// mTLS files (use `--plaintext` for Fn runners).
    #[error("cannot load the LB's mTLS files (or use --plaintext for runners without mTLS): {0}")]
    Tls(#[source] ferrofn_common::tls::TlsError),
    /// A runner address.
    #[error(transparent)]
    Address(#[from] crate::pool::AddressError),
    /// An API token file.
    #[error(transparent)]
    Tokens(#[from] crate::http::auth::TokenFileError),
    /// Binding the HTTP port.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// A running LB.
#[derive(Debug)]
pub struct LbHandle {
    /// Where it listens.
    pub local_addr: SocketAddr,
    /// Triggers graceful shutdown.
    pub shutdown: Shutdown,
    /// The runner pool (SIGHUP reloads go here).
    pub pool: Arc<RunnerPool>,
    /// The shared state.
    pub state: Arc<LbState>,
    /// The server task.
    pub task: JoinHandle<()>,
}

impl LbHandle {
    /// Stops and waits for the server.
    pub async fn stop(self) {
        self.shutdown.trigger();
        let _ = self.task.await;
    }
}

/// Starts an LB with `settings`, stopping on `shutdown`.
pub async fn start(settings: &LbSettings, shutdown: Shutdown) -> Result<LbHandle, StartError> {
    ferrofn_common::tls::install_crypto_provider();
    ferrofn_common::telemetry::install_prometheus();
    let sqlite: Arc<dyn Registry> = Arc::new(SqliteRegistry::open(db_path(&settings.db_url))?);
    let registry: Arc<dyn Registry> = Arc::new(CachedRegistry::new(sqlite, cache::DEFAULT_TTL));
    let placer = placer::from_name(&settings.placer, settings.placer_load_factor)?;
    let tls = if settings.plaintext {
        tracing::warn!("runner connections are plaintext (--plaintext)");
        None
    } else {
        let files = TlsFiles::new(&settings.tls.ca, &settings.tls.cert, &settings.tls.key);
        let tls = ClientTls::new(files).map_err(StartError::Tls)?;
        Some(if settings.tls.server_name.is_empty() {
            tls
        } else {
            tls.with_server_name(&settings.tls.server_name)
        })
    };
    let pool = RunnerPool::new(&settings.runner_list(), tls, settings.channel_options())?;
    let state = Arc::new(LbState {
        registry,
        pool: pool.clone(),
        placer,
        placer_config: settings.placer_config(),
        public_url: Some(settings.public_lb_url.trim_end_matches('/').to_owned()).filter(|u| !u.is_empty()),
        max_request: settings.max_request_size,
        execution_headroom: Duration::from_millis(settings.execution_headroom_ms),
        response_head: usize::try_from(settings.response_head_bytes)
            .unwrap_or(usize::MAX)
            .max(1),
        sync_deadline_margin: Some(Duration::from_millis(settings.sync_deadline_margin_ms))
            .filter(|_| settings.sync_deadline_margin_ms > 0),
        api_tokens: Tokens::new(
            std::slice::from_ref(&settings.api_token),
            Some(&settings.api_tokens_file),
        )?,
        invoke_tokens: Tokens::new(
            std::slice::from_ref(&settings.invoke_token),
            Some(&settings.invoke_tokens_file),
        )?,
    });
    if state.api_tokens.is_empty() {
        tracing::warn!("the management API (/v2) is open: no token is configured");
    }
    let addr = format!("{}:{}", settings.listen_address, settings.port);
    let listener = TcpListener::bind(&addr)
        .await
        .map_err(|source| StartError::Bind {
            addr: addr.clone(),
            source,
        })?;
    let local_addr = listener
        .local_addr()
        .map_err(|source| StartError::Bind { addr, source })?;
    // Without TCP_NODELAY a streamed response waits on the client's delayed ACK (~40 ms per call).
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY on an accepted connection failed");
        }
    });

    // First probe before serving, so capabilities and dead runners are known from the start.
    health::probe_all(&pool, health::DEFAULT_PROBE_TIMEOUT.min(Duration::from_secs(1))).await;
    health::spawn_health_loop(
        pool.clone(),
        Duration::from_millis(settings.health_interval_ms.max(50)),
        health::DEFAULT_PROBE_TIMEOUT,
        shutdown.token(),
    );

    let app = router(state.clone());
    let stop = shutdown.clone();
    let task = tokio::spawn(async move {
        tracing::info!(%local_addr, "LB listening");
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "HTTP server failed");
        }
    });
    Ok(LbHandle {
        local_addr,
        shutdown,
        pool,
        state,
        task,
    })
}
