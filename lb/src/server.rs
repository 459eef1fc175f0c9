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
use crate::http::{LbState, MetricsOn, metrics_router, router};
use crate::placer;
use crate::pool::{Resolve, RunnerPool, SystemResolver, health, resolve};
use crate::registry::{CachedRegistry, DbUrl, PostgresRegistry, Registry, SqliteRegistry, cache, postgres};

/// Limits on client connections (hostile or broken clients must not exhaust the LB).
#[derive(Debug, Clone, Copy)]
struct ConnLimits {
    /// Request line + headers, bytes (431 beyond).
    header_bytes: usize,
    /// Time to send a request head (slowloris: the connection is closed after it).
    header_timeout: Duration,
    /// Connections served at once (more are closed at accept).
    connections: usize,
    /// Longest stall of a request body while the LB waits for it (`None`: unbounded).
    body_idle: Option<Duration>,
}

/// The accept loop: HTTP/1.1 (and h2c) per connection with the header limits, a cap on open
/// connections, TCP_NODELAY, and a graceful stop (in-flight requests finish).
async fn serve(listener: TcpListener, app: axum::Router, limits: ConnLimits, stop: Shutdown) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::service::TowerToHyperService;

    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.header_bytes.max(8192));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(
        limits.connections.min(tokio::sync::Semaphore::MAX_PERMITS),
    ));
    loop {
        let (tcp, peer) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics::counter!("lb_connections_refused_total").increment(1);
            tracing::debug!(%peer, "connection limit reached: closing a new connection");
            drop(tcp);
            continue;
        };
        // Without TCP_NODELAY a streamed response waits on the client's delayed ACK (~40 ms per call).
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY on an accepted connection failed");
        }
        let svc = tower::ServiceBuilder::new()
            .option_layer(
                limits
                    .body_idle
                    .map(tower_http::timeout::RequestBodyTimeoutLayer::new),
            )
            .service(app.clone());
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(tcp), TowerToHyperService::new(svc))
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "client connection ended with an error");
            }
            drop(slot);
        });
    }
    graceful.shutdown().await;
}

/// Why the LB could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The registry database.
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
    /// `FN_DB_URL` (checked with the settings; here for a caller that skipped the check).
    #[error("invalid database URL {url}: {message}")]
    DbUrl {
        /// The URL, password redacted.
        url: String,
        /// What is wrong.
        message: String,
    },
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
    /// Where `/metrics` has a listener of its own (`FERROFN_METRICS_ADDRESS`).
    pub metrics_addr: Option<SocketAddr>,
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

/// Opens the store `FN_DB_URL` names behind the invocation cache; over Postgres, also starts the
/// change feed that clears the cache when another LB writes.
async fn open_registry(settings: &LbSettings, shutdown: &Shutdown) -> Result<Arc<dyn Registry>, StartError> {
    let shown = crate::registry::redact_db_url(&settings.db_url);
    let url = DbUrl::parse(&settings.db_url).map_err(|message| StartError::DbUrl {
        url: shown.clone(),
        message,
    })?;
    Ok(match url {
        DbUrl::Sqlite(path) => {
            let store = SqliteRegistry::open(&path)?;
            tracing::info!(db = %path.display(), "registry: SQLite");
            Arc::new(CachedRegistry::new(Arc::new(store), cache::DEFAULT_TTL))
        }
        DbUrl::Postgres(config) => {
            let options = settings.pg_options();
            let store = PostgresRegistry::connect(*config, options, shown).await?;
            let cached = CachedRegistry::new(Arc::new(store.clone()), cache::FEED_TTL);
            let feed = postgres::changes::Feed {
                config: store.config().clone(),
                tls: store.tls(),
                poll: Duration::from_millis(settings.db_version_poll_ms),
                timeout: options.timeout,
                writer: store.writer(),
                cache: cached.clone(),
            };
            postgres::changes::spawn(feed, shutdown.token());
            Arc::new(cached)
        }
    })
}

/// Starts an LB with `settings`, stopping on `shutdown`.
pub async fn start(settings: &LbSettings, shutdown: Shutdown) -> Result<LbHandle, StartError> {
    start_with_resolver(settings, shutdown, Arc::new(SystemResolver)).await
}

/// [`start`], looking runner names up with `resolver` rather than the system's resolver (tests:
/// a name with several addresses needs `/etc/hosts` or a DNS server otherwise).
pub async fn start_with_resolver(
    settings: &LbSettings,
    shutdown: Shutdown,
    resolver: Arc<dyn Resolve>,
) -> Result<LbHandle, StartError> {
    ferrofn_common::tls::install_crypto_provider();
    ferrofn_common::telemetry::install_prometheus();
    let registry = open_registry(settings, &shutdown).await?;
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
        frame_bytes: usize::try_from(settings.engage_frame_bytes)
            .unwrap_or(usize::MAX)
            .clamp(ferrofn_proto::MAX_DATA_CHUNK, ferrofn_proto::ext::MAX_FRAME_BYTES),
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
    // Names with several addresses become one runner per address before the first call.
    let resolve_interval = settings.resolve_interval();
    if resolve_interval.is_some() {
        pool.resolve(&*resolver, resolve::LOOKUP_TIMEOUT).await;
    }
    // First probe before serving, so capabilities and dead runners are known from the start.
    let first_probe = health::DEFAULT_PROBE_TIMEOUT.min(Duration::from_secs(1));
    health::probe_all(&pool, first_probe).await;
    pool.spawn_membership_loop(resolver, resolve_interval, first_probe, shutdown.token());
    health::spawn_health_loop(
        pool.clone(),
        Duration::from_millis(settings.health_interval_ms.max(50)),
        health::DEFAULT_PROBE_TIMEOUT,
        shutdown.token(),
    );

    let metrics_listener = if settings.metrics_address.is_empty() {
        None
    } else {
        let addr = &settings.metrics_address;
        let l = TcpListener::bind(addr).await.map_err(|source| StartError::Bind {
            addr: addr.clone(),
            source,
        })?;
        let local = l.local_addr().map_err(|source| StartError::Bind {
            addr: addr.clone(),
            source,
        })?;
        Some((l, local))
    };
    let metrics_addr = metrics_listener.as_ref().map(|(_, a)| *a);
    let app = router(
        state.clone(),
        if metrics_addr.is_some() {
            MetricsOn::Separate
        } else {
            MetricsOn::Main
        },
    );
    if let Some((l, local)) = metrics_listener {
        let app = metrics_router(state.clone());
        let stop = shutdown.clone();
        tokio::spawn(async move {
            tracing::info!(local_addr = %local, "LB metrics listening");
            let served = axum::serve(l, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
            if let Err(e) = served {
                tracing::warn!(error = %e, "metrics listener failed");
            }
        });
    }
    let limits = ConnLimits {
        header_bytes: usize::try_from(settings.max_request_header_size).unwrap_or(usize::MAX),
        header_timeout: Duration::from_secs(settings.request_header_read_timeout_secs),
        connections: usize::try_from(settings.max_connections).unwrap_or(usize::MAX),
        body_idle: Some(Duration::from_millis(settings.request_body_idle_timeout_ms))
            .filter(|d| !d.is_zero()),
    };
    let stop = shutdown.clone();
    let task = tokio::spawn(async move {
        tracing::info!(%local_addr, "LB listening");
        serve(listener, app, limits, stop).await;
    });
    Ok(LbHandle {
        local_addr,
        shutdown,
        pool,
        state,
        metrics_addr,
        task,
    })
}
