//! rustls mTLS between ferrofn nodes: TLS 1.3 only, ALPN `h2`, ring provider, client certificates
//! required and checked against the cluster CA. Both sides re-read their PEM files when they change,
//! so certificates rotate without a restart; an invalid new set is ignored and the last good one kept.

use std::fmt;
use std::future::Future;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, Once, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::Stream;
use hyper_util::rt::TokioIo;
use rustls::client::ClientConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use rustls::{RootCertStore, version::TLS13};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_util::either::Either;
use tonic::codegen::Service;
use tonic::transport::{Channel, Endpoint, Uri};
use tracing::{debug, info, warn};

/// The files a config is built from (defined with their names in [`crate::tls_files`]).
pub use crate::tls_files::TlsFiles;

/// ALPN protocol both sides offer: gRPC is HTTP/2 only.
const ALPN_H2: &[u8] = b"h2";

/// The server looks at its files at most this often (on accept), so a busy listener does not
/// `stat` three files per connection.
const RELOAD_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// A client that opens TCP and never finishes the handshake is dropped after this long.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepted TLS connections waiting for the server to pick them up.
const ACCEPT_QUEUE: usize = 64;

/// An accepted, handshaken server-side connection. tonic implements `Connected` for it, so
/// handlers see the client chain through `request.peer_certs()`.
pub type TlsConn = tokio_rustls::server::TlsStream<TcpStream>;

/// What a client connection is: plaintext h2c (Fn interop) or TLS.
pub type ClientConn = Either<TcpStream, tokio_rustls::client::TlsStream<TcpStream>>;

/// Why TLS material could not be loaded or a TLS connection could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} file {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot parse PEM in {what} file {path}: {source}")]
    Pem {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("no certificate in {what} file {path}")]
    NoCertificate { what: &'static str, path: PathBuf },
    #[error("no private key in key file {path}")]
    NoKey { path: PathBuf },
    #[error("bad CA certificate in {path}: {source}")]
    BadCa {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("cannot build the client-certificate verifier from CA {path}: {source}")]
    ClientVerifier {
        path: PathBuf,
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
    #[error("certificate {cert} and key {key} are not a usable pair: {source}")]
    CertKey {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("TLS 1.3 is not available from the ring provider: {0}")]
    Protocol(#[source] rustls::Error),
    #[error("{name:?} is not a valid TLS server name (DNS name or IP address)")]
    ServerName { name: String },
    #[error("cannot build the server-certificate verifier from CA {path}: {source}")]
    ServerVerifier {
        path: PathBuf,
        #[source]
        source: rustls::client::VerifierBuilderError,
    },
    #[error("sslmode=verify-ca and verify-full need sslrootcert=<PEM file of the trusted CAs>")]
    NoDbRoots,
}

/// Installs rustls' ring provider as the process default. tonic's own TLS paths call
/// `ServerConfig::builder()`, which panics if no (or more than one) provider is compiled in and none
/// is installed; call this first thing in `main`. Idempotent.
pub fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if rustls::crypto::ring::default_provider()
            .install_default()
            .is_err()
        {
            // Someone installed one before us; ferrofn's own configs pass ring explicitly anyway.
            debug!("a rustls crypto provider was already installed");
        }
    });
}

/// The ring provider, passed explicitly to every config ferrofn builds so that the result does not
/// depend on what the process default is.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// Reading the files, for the reloading configs below.
impl TlsFiles {
    /// Identity of the three files; any write, replace (rename) or re-link changes it.
    fn fingerprint(&self) -> Fingerprint {
        Fingerprint([
            FileStamp::of(&self.ca),
            FileStamp::of(&self.cert),
            FileStamp::of(&self.key),
        ])
    }

    fn load_roots(&self) -> Result<RootCertStore, TlsError> {
        let cas = read_certs("CA", &self.ca)?;
        let mut roots = RootCertStore::empty();
        for ca in cas {
            roots.add(ca).map_err(|source| TlsError::BadCa {
                path: self.ca.clone(),
                source,
            })?;
        }
        Ok(roots)
    }

    fn load_identity(&self) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
        Ok((read_certs("certificate", &self.cert)?, read_key(&self.key)?))
    }
}

fn read_file(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

pub(crate) fn read_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_file(what, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            what,
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            what,
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read_file("key", path)?;
    match PrivateKeyDer::from_pem_slice(&pem) {
        Ok(key) => Ok(key),
        Err(rustls_pki_types::pem::Error::NoItemsFound) => Err(TlsError::NoKey {
            path: path.to_owned(),
        }),
        Err(source) => Err(TlsError::Pem {
            what: "key",
            path: path.to_owned(),
            source,
        }),
    }
}

/// `stat` identity of one file; `None` when it cannot be read (missing while being replaced).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileStamp {
    fn of(path: &Path) -> Option<Self> {
        // `metadata` follows symlinks, so a Kubernetes-style `..data` symlink swap is seen too.
        let m = std::fs::metadata(path).ok()?;
        Some(Self {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint([Option<FileStamp>; 3]);

/// A config plus the file fingerprint it (or the last failed attempt) was loaded from.
struct Loaded<C> {
    config: Arc<C>,
    fingerprint: Fingerprint,
    checked_at: Instant,
}

impl<C> Loaded<C> {
    fn new(files: &TlsFiles, load: impl Fn(&TlsFiles) -> Result<C, TlsError>) -> Result<Self, TlsError> {
        // Fingerprint first: a write racing with the load then shows up as a change next time.
        let fingerprint = files.fingerprint();
        Ok(Self {
            config: Arc::new(load(files)?),
            fingerprint,
            checked_at: Instant::now(),
        })
    }

    /// Reloads if the files changed since the last attempt. Returns whether the config changed.
    fn refresh(
        &mut self,
        side: &str,
        files: &TlsFiles,
        load: impl Fn(&TlsFiles) -> Result<C, TlsError>,
    ) -> Result<bool, TlsError> {
        self.checked_at = Instant::now();
        let fingerprint = files.fingerprint();
        if fingerprint == self.fingerprint {
            return Ok(false);
        }
        // Remember the attempt even if it fails: the files must change again (e.g. the key written
        // after the cert) before another try, so a bad set warns once rather than every second.
        self.fingerprint = fingerprint;
        match load(files) {
            Ok(config) => {
                self.config = Arc::new(config);
                info!(side, cert = %files.cert.display(), "reloaded TLS certificates");
                Ok(true)
            }
            Err(e) => {
                warn!(side, error = %e, "TLS files changed but are invalid; keeping the previous certificates");
                Err(e)
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave a half-written `Loaded` (fields are replaced
    // whole), so a poisoned lock is still usable.
    crate::lock::LockExt::lock_unpoisoned(m)
}

fn server_config(files: &TlsFiles) -> Result<ServerConfig, TlsError> {
    let roots = files.load_roots()?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|source| TlsError::ClientVerifier {
            path: files.ca.clone(),
            source,
        })?;
    let (chain, key) = files.load_identity()?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&TLS13])
        .map_err(TlsError::Protocol)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|source| TlsError::CertKey {
            cert: files.cert.clone(),
            key: files.key.clone(),
            source,
        })?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

fn client_config(files: &TlsFiles) -> Result<ClientConfig, TlsError> {
    let roots = files.load_roots()?;
    let (chain, key) = files.load_identity()?;
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&TLS13])
        .map_err(TlsError::Protocol)?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|source| TlsError::CertKey {
            cert: files.cert.clone(),
            key: files.key.clone(),
            source,
        })?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

/// Server-side mTLS that follows its PEM files. Cheap to clone (shared state).
#[derive(Clone)]
pub struct ReloadingServerTls {
    files: Arc<TlsFiles>,
    state: Arc<Mutex<Loaded<ServerConfig>>>,
    handshake_timeout: Duration,
}

impl fmt::Debug for ReloadingServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadingServerTls")
            .field("files", &self.files)
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

impl ReloadingServerTls {
    /// Loads the files now; fails if they are not a valid set (a node must not start without TLS).
    pub fn new(files: TlsFiles) -> Result<Self, TlsError> {
        let state = Loaded::new(&files, server_config)?;
        Ok(Self {
            files: Arc::new(files),
            state: Arc::new(Mutex::new(state)),
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        })
    }

    /// How long a client may take to complete its handshake.
    #[must_use]
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// The config for the next connection; re-reads the files if they changed (checked at most once
    /// per second).
    pub fn current_config(&self) -> Arc<ServerConfig> {
        let mut state = lock(&self.state);
        if state.checked_at.elapsed() >= RELOAD_CHECK_INTERVAL {
            // A failure is logged inside and the previous config stays.
            let _ = state.refresh("server", &self.files, server_config);
        }
        state.config.clone()
    }

    /// Checks the files now, ignoring the once-a-second limit (e.g. on SIGHUP). `Ok(true)` when new
    /// certificates were loaded, `Ok(false)` when nothing changed, `Err` when the changed files are
    /// invalid (the previous certificates stay in use).
    pub fn reload_now(&self) -> Result<bool, TlsError> {
        lock(&self.state).refresh("server", &self.files, server_config)
    }

    /// A tokio-rustls acceptor with the current config.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current_config())
    }

    /// Accepts TCP connections from `listener` and yields those whose TLS handshake succeeds, for
    /// `tonic::transport::Server::builder()...serve_with_incoming(..)`. Handshakes run in their own
    /// tasks, so a slow or bad client does not hold up others; failed ones are logged and skipped.
    /// Dropping the stream stops accepting and closes the listener. Call inside a tokio runtime.
    pub fn incoming(self, listener: TcpListener) -> TlsIncoming {
        let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
        tokio::spawn(self.accept_loop(listener, tx));
        TlsIncoming { rx }
    }

    async fn accept_loop(self, listener: TcpListener, tx: mpsc::Sender<TlsConn>) {
        loop {
            let accepted = tokio::select! {
                () = tx.closed() => break,
                accepted = listener.accept() => accepted,
            };
            let (tcp, peer) = match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    // Out of file descriptors and the like: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // tonic ignores its own tcp_nodelay setting with serve_with_incoming.
            if let Err(e) = tcp.set_nodelay(true) {
                debug!(%peer, error = %e, "cannot set TCP_NODELAY");
            }
            let acceptor = self.acceptor();
            let tx = tx.clone();
            let timeout = self.handshake_timeout;
            tokio::spawn(async move {
                match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(conn)) => {
                        // Only fails when the server is gone; the connection is then just dropped.
                        let _ = tx.send(conn).await;
                    }
                    // A peer that closes before its hello is a TCP check (a load balancer's or an
                    // orchestrator's probe), not a failed client.
                    Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                        debug!(%peer, error = %e, "connection closed before the TLS handshake");
                    }
                    Ok(Err(e)) => warn!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => warn!(%peer, ?timeout, "TLS handshake timed out"),
                }
            });
        }
        debug!("TLS listener closed");
    }
}

/// Stream of accepted TLS connections (see [`ReloadingServerTls::incoming`]). It never yields an
/// error: failed handshakes are logged and skipped.
#[derive(Debug)]
pub struct TlsIncoming {
    rx: mpsc::Receiver<TlsConn>,
}

impl Stream for TlsIncoming {
    type Item = Result<TlsConn, io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx).map(|conn| conn.map(Ok))
    }
}

/// Client-side mTLS config that re-reads its files (checked on every connect) when they change.
/// Cheap to clone (shared state).
#[derive(Clone)]
pub struct ClientTls {
    files: Arc<TlsFiles>,
    server_name: Option<Arc<str>>,
    state: Arc<Mutex<Loaded<ClientConfig>>>,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("files", &self.files)
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// Loads the files now; fails if they are not a valid set.
    pub fn new(files: TlsFiles) -> Result<Self, TlsError> {
        let state = Loaded::new(&files, client_config)?;
        Ok(Self {
            files: Arc::new(files),
            server_name: None,
            state: Arc::new(Mutex::new(state)),
        })
    }

    /// Verify every server against this name instead of the host of the address dialled (e.g. when
    /// runners are reached by IP but their certificates name a DNS name).
    #[must_use]
    pub fn with_server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into().into());
        self
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// The current rustls config (re-read first if the files changed; on invalid files the previous
    /// config stays and a warning is logged).
    pub fn rustls_config(&self) -> Arc<ClientConfig> {
        let mut state = lock(&self.state);
        let _ = state.refresh("client", &self.files, client_config);
        state.config.clone()
    }

    /// The name the server's certificate must carry when dialling `host` (a host, `host:port`,
    /// `[v6]:port` or a URI authority): the override if set, else the host.
    pub fn server_name_for(&self, host: &str) -> Result<ServerName<'static>, TlsError> {
        let name = self.server_name.as_deref().unwrap_or(host);
        let name = strip_port(name);
        ServerName::try_from(name.to_owned()).map_err(|_| TlsError::ServerName {
            name: name.to_owned(),
        })
    }

    /// Runs the client handshake on an established TCP stream.
    pub async fn handshake(
        &self,
        tcp: TcpStream,
        host: &str,
    ) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let name = self.server_name_for(host).map_err(io::Error::other)?;
        TlsConnector::from(self.rustls_config()).connect(name, tcp).await
    }
}

/// `host:port` → `host`, `[::1]:port` / `[::1]` → `::1`; a bare IPv6 address is left alone.
fn strip_port(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}

/// A `tower::Service<Uri>` (for `Endpoint::connect_with_connector`, and the LB's runner
/// connections): TCP to the URI's host and port, then (unless plaintext) a TLS 1.3 handshake with
/// the client certificate. The URI must use `http://` (tonic would refuse `https://` with a custom
/// connector); TLS is layered here.
#[derive(Clone, Debug)]
pub struct RunnerConnector {
    tls: Option<ClientTls>,
    /// Server name to verify instead of the URI host (a [`ClientTls::with_server_name`] still wins).
    host: Option<Arc<str>>,
    /// `TCP_USER_TIMEOUT` of the sockets it makes (`None`: the kernel's default).
    user_timeout: Option<Duration>,
}

impl RunnerConnector {
    /// `None` = plaintext h2c, for Fn runners and trusted networks.
    pub fn new(tls: Option<ClientTls>) -> Self {
        Self {
            tls,
            host: None,
            user_timeout: None,
        }
    }

    /// Sets `TCP_USER_TIMEOUT` on every socket it makes: data sent and left unacknowledged by the
    /// peer's host this long makes the kernel close the connection. The peer's kernel
    /// acknowledges however busy the process behind it is, so this tells a peer cut off the
    /// network (or a host that is gone) from one that is only slow, without any traffic of its
    /// own. `None` (or zero) keeps the kernel's default (retransmissions for ~15 minutes).
    #[must_use]
    pub fn with_tcp_user_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.user_timeout = timeout.filter(|t| !t.is_zero());
        self
    }

    /// Verify the server certificate against `host` rather than the URI's host.
    #[must_use]
    pub fn with_host(mut self, host: &str) -> Self {
        self.host = Some(host.into());
        self
    }
}

impl Service<Uri> for RunnerConnector {
    type Response = TokioIo<ClientConn>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send + 'static>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let tls = self.tls.clone();
        let host_override = self.host.clone();
        let user_timeout = self.user_timeout;
        let connecting = async move {
            let host = uri
                .host()
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("no host in {uri}")))?;
            let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
            let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
                Some("https") => 443,
                _ => 80,
            });
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            if let Some(t) = user_timeout {
                socket2::SockRef::from(&tcp).set_tcp_user_timeout(Some(t))?;
            }
            match tls {
                None => Ok(TokioIo::new(Either::Left(tcp))),
                Some(tls) => {
                    let name = host_override.as_deref().unwrap_or(&host);
                    let conn = tls.handshake(tcp, name).await?;
                    Ok(TokioIo::new(Either::Right(conn)))
                }
            }
        };
        Box::pin(async move {
            connecting
                .await
                .map_err(|e: io::Error| io::Error::new(e.kind(), ConnectFailed(e)))
        })
    }
}

/// The error of a connection attempt to a runner (TCP connect, name resolution, TLS handshake), as
/// opposed to the loss of an established connection: a client can tell the two apart by finding
/// this type in an error's source chain.
#[derive(Debug, thiserror::Error)]
#[error("connecting to the runner failed: {0}")]
pub struct ConnectFailed(#[source] pub io::Error);

/// True when `err`'s source chain holds a [`ConnectFailed`] or a connect timeout.
pub fn is_connect_failure(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(err);
    while let Some(e) = cause {
        if e.is::<ConnectFailed>() {
            return true;
        }
        if let Some(io) = e.downcast_ref::<io::Error>() {
            // io::Error's `source` skips the error it wraps: look at that one directly.
            match io.get_ref() {
                Some(inner) if inner.is::<ConnectFailed>() => return true,
                // The channel's connect timeout wraps the connector: TimedOut around tokio's Elapsed.
                Some(inner)
                    if io.kind() == io::ErrorKind::TimedOut && inner.is::<tokio::time::error::Elapsed>() =>
                {
                    return true;
                }
                Some(inner) => {
                    cause = Some(inner);
                    continue;
                }
                None => {}
            }
        }
        cause = e.source();
    }
    false
}

/// An `http://host:port` endpoint for a runner address given as `host:port` (or an `http://` URI).
/// TLS, if any, is added by the connector, so the scheme is always `http`.
pub fn runner_endpoint(addr: &str) -> Result<Endpoint, tonic::transport::Error> {
    let addr = addr
        .strip_prefix("http://")
        .or_else(|| addr.strip_prefix("https://"))
        .unwrap_or(addr);
    Endpoint::from_shared(format!("http://{addr}"))
}

/// Connects `endpoint` (an `http://` URI, see [`runner_endpoint`]), verifying the server as `host`
/// (normally the host of the runner address; the port, if any, is ignored). `tls: None` = plaintext.
pub async fn connect_channel(
    endpoint: Endpoint,
    tls: Option<ClientTls>,
    host: &str,
) -> Result<Channel, tonic::transport::Error> {
    endpoint
        .connect_with_connector(RunnerConnector::new(tls).with_host(host))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::{ClusterCertOptions, generate_cluster};
    use crate::tls_files::LB_KEY_FILE;

    fn cluster(dir: &Path) {
        let opts = ClusterCertOptions {
            runner_names: vec!["a".into()],
            ..Default::default()
        };
        generate_cluster(dir, &opts).expect("generate cluster certs");
    }

    #[test]
    fn strip_port_handles_hosts_ports_and_ipv6() {
        assert_eq!(strip_port("runner-a:9190"), "runner-a");
        assert_eq!(strip_port("runner-a"), "runner-a");
        assert_eq!(strip_port("127.0.0.1:1"), "127.0.0.1");
        assert_eq!(strip_port("[::1]:9190"), "::1");
        assert_eq!(strip_port("[::1]"), "::1");
        assert_eq!(strip_port("::1"), "::1");
    }

    #[test]
    fn loads_generated_files_on_both_sides() {
        let dir = tempfile::tempdir().unwrap();
        cluster(dir.path());
        let server = ReloadingServerTls::new(TlsFiles::runner_in(dir.path(), "a")).unwrap();
        let cfg = server.current_config();
        assert_eq!(cfg.alpn_protocols, vec![b"h2".to_vec()]);
        let client = ClientTls::new(TlsFiles::lb_in(dir.path())).unwrap();
        assert_eq!(client.rustls_config().alpn_protocols, vec![b"h2".to_vec()]);
        assert_eq!(
            client.server_name_for("127.0.0.1:9190").unwrap(),
            ServerName::try_from("127.0.0.1").unwrap()
        );
        let client = client.with_server_name("a");
        assert_eq!(
            client.server_name_for("127.0.0.1:9190").unwrap(),
            ServerName::try_from("a").unwrap()
        );
    }

    #[test]
    fn errors_name_the_file_and_the_failure() {
        let dir = tempfile::tempdir().unwrap();
        cluster(dir.path());
        let mut files = TlsFiles::runner_in(dir.path(), "a");

        files.cert = dir.path().join("missing.pem");
        let e = ReloadingServerTls::new(files.clone()).unwrap_err();
        assert!(
            matches!(
                e,
                TlsError::Read {
                    what: "certificate",
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("missing.pem"), "{e}");

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no pem here\n").unwrap();
        files.cert = empty.clone();
        let e = ReloadingServerTls::new(files.clone()).unwrap_err();
        assert!(matches!(e, TlsError::NoCertificate { .. }), "{e}");

        files = TlsFiles::runner_in(dir.path(), "a");
        files.key = empty.clone();
        let e = ReloadingServerTls::new(files.clone()).unwrap_err();
        assert!(matches!(e, TlsError::NoKey { .. }), "{e}");

        // The LB's key does not belong to the runner's certificate.
        files.key = dir.path().join(LB_KEY_FILE);
        let e = ReloadingServerTls::new(files.clone()).unwrap_err();
        assert!(matches!(e, TlsError::CertKey { .. }), "{e}");

        files = TlsFiles::runner_in(dir.path(), "a");
        files.ca = empty;
        let e = ClientTls::new(files).unwrap_err();
        assert!(matches!(e, TlsError::NoCertificate { what: "CA", .. }), "{e}");
    }

    #[test]
    fn invalid_new_files_keep_the_last_good_config() {
        let dir = tempfile::tempdir().unwrap();
        cluster(dir.path());
        let files = TlsFiles::runner_in(dir.path(), "a");
        let server = ReloadingServerTls::new(files.clone()).unwrap();
        let before = server.current_config();
        assert!(!server.reload_now().unwrap(), "nothing changed yet");

        std::fs::write(&files.cert, "garbage\n").unwrap();
        assert!(server.reload_now().is_err());
        assert!(Arc::ptr_eq(&before, &server.current_config()));

        // A valid new set (same CA) is picked up.
        let opts = ClusterCertOptions {
            runner_names: vec!["a".into()],
            ..Default::default()
        };
        generate_cluster(dir.path(), &opts).unwrap();
        assert!(server.reload_now().unwrap());
        assert!(!Arc::ptr_eq(&before, &server.current_config()));
    }

    #[test]
    fn client_picks_up_new_files_at_the_next_connect() {
        let dir = tempfile::tempdir().unwrap();
        cluster(dir.path());
        let client = ClientTls::new(TlsFiles::lb_in(dir.path())).unwrap();
        let before = client.rustls_config();
        assert!(
            Arc::ptr_eq(&before, &client.rustls_config()),
            "unchanged files, same config"
        );
        // Re-issuing writes new lb.pem / lb-key.pem (same CA); no once-a-second limit on clients.
        cluster(dir.path());
        let after = client.rustls_config();
        assert!(!Arc::ptr_eq(&before, &after));
        assert!(
            Arc::ptr_eq(&after, &client.clone().rustls_config()),
            "clones share the state"
        );
    }

    #[tokio::test]
    async fn the_connector_sets_the_tcp_user_timeout_it_is_given() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let uri: Uri = format!("http://{}", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        let user_timeout = |conn: TokioIo<ClientConn>| match conn.into_inner() {
            Either::Left(tcp) => socket2::SockRef::from(&tcp).tcp_user_timeout().unwrap(),
            Either::Right(_) => unreachable!("plaintext"),
        };
        let mut set = RunnerConnector::new(None).with_tcp_user_timeout(Some(Duration::from_millis(750)));
        let conn = set.call(uri.clone()).await.unwrap();
        assert_eq!(user_timeout(conn), Some(Duration::from_millis(750)));
        for none in [None, Some(Duration::ZERO)] {
            let mut unset = RunnerConnector::new(None).with_tcp_user_timeout(none);
            let conn = unset.call(uri.clone()).await.unwrap();
            assert_eq!(user_timeout(conn), None, "{none:?}: the kernel's default");
        }
    }
}
