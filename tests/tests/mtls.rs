//! mTLS between LB and runner, over real loopback sockets with certificates generated at test time:
//! who is let in (CA-signed client certificates only), who is refused, and certificate rotation on
//! the server without a restart.
// runner.proto marks `Status` deprecated (in favour of `Status2`); it is still the unary call the LB
// probes with, and the simplest one to carry the peer certificate back here.
#![allow(deprecated)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferrofn_common::certs::{CertAuthority, ClusterCertOptions, LeafKind, generate_cluster, generate_leaf};
use ferrofn_common::shutdown::Shutdown;
use ferrofn_common::tls::{
    ClientTls, ReloadingServerTls, TlsFiles, connect_channel, install_crypto_provider, runner_endpoint,
};
use ferrofn_common::tls_files;
use ferrofn_proto::runner_protocol_client::RunnerProtocolClient;
use ferrofn_proto::runner_protocol_server::{RunnerProtocol, RunnerProtocolServer};
use ferrofn_proto::{
    ClientMsg, ConfigMsg, ConfigStatus, LogRequestMsg, LogResponseMsg, RunnerMsg, RunnerStatus,
};
use rustls::RootCertStore;
use rustls::client::ClientConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status};

/// Upper bound for anything that should happen promptly on loopback.
const PROMPT: Duration = Duration::from_secs(10);

/// A RunnerProtocol whose `Status` reports (and records) the client certificate it saw.
#[derive(Default)]
struct PeerRecorder {
    seen: Mutex<Vec<Vec<CertificateDer<'static>>>>,
}

/// The service handed to tonic; the test keeps another handle on the recorder.
struct TestRunner(Arc<PeerRecorder>);

#[tonic::async_trait]
impl RunnerProtocol for TestRunner {
    type EngageStream = BoxStream<RunnerMsg>;
    type StreamLogsStream = BoxStream<LogResponseMsg>;

    async fn engage(
        &self,
        _: Request<tonic::Streaming<ClientMsg>>,
    ) -> Result<Response<Self::EngageStream>, Status> {
        Err(Status::unimplemented("test runner"))
    }

    async fn status(&self, request: Request<()>) -> Result<Response<RunnerStatus>, Status> {
        let chain = request
            .peer_certs()
            .map(|c| c.as_ref().clone())
            .unwrap_or_default();
        let n = chain.len();
        self.0.seen.lock().unwrap().push(chain);
        Ok(Response::new(RunnerStatus {
            id: "mtls-test".into(),
            details: format!("peer certificates: {n}"),
            ..Default::default()
        }))
    }

    async fn configure_runner(&self, _: Request<ConfigMsg>) -> Result<Response<ConfigStatus>, Status> {
        Err(Status::unimplemented("test runner"))
    }

    async fn stream_logs(
        &self,
        _: Request<tonic::Streaming<LogRequestMsg>>,
    ) -> Result<Response<Self::StreamLogsStream>, Status> {
        Err(Status::unimplemented("test runner"))
    }

    async fn status2(&self, _: Request<prost_types::Struct>) -> Result<Response<RunnerStatus>, Status> {
        Err(Status::unimplemented("test runner"))
    }
}

/// A cluster (CA, LB client cert, runner "a") in a temp dir, and a TLS gRPC server for runner "a".
struct Fixture {
    dir: tempfile::TempDir,
    addr: SocketAddr,
    recorder: Arc<PeerRecorder>,
    tls: ReloadingServerTls,
    stop: Shutdown,
    server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Fixture {
    async fn start() -> Self {
        install_crypto_provider();
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = ClusterCertOptions {
            runner_names: vec!["a".into()],
            ..Default::default()
        };
        generate_cluster(dir.path(), &opts).expect("generate certs");
        let tls = ReloadingServerTls::new(TlsFiles::runner_in(dir.path(), "a")).expect("server tls");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let recorder = Arc::new(PeerRecorder::default());
        let stop = Shutdown::new();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(RunnerProtocolServer::new(TestRunner(recorder.clone())))
                .serve_with_incoming_shutdown(tls.clone().incoming(listener), stop.cancelled_owned()),
        );
        Self {
            dir,
            addr,
            recorder,
            tls,
            stop,
            server,
        }
    }

    fn path(&self, file: &str) -> std::path::PathBuf {
        self.dir.path().join(file)
    }

    fn lb_files(&self) -> TlsFiles {
        TlsFiles::lb_in(self.dir.path())
    }

    fn cluster_ca(&self) -> CertAuthority {
        CertAuthority::from_pem(
            &std::fs::read_to_string(self.path(tls_files::CA_CERT_FILE)).unwrap(),
            &std::fs::read_to_string(self.path(tls_files::CA_KEY_FILE)).unwrap(),
        )
        .expect("load cluster CA")
    }

    /// One `Status` call over a fresh connection made by ferrofn's own client code.
    async fn status_via(&self, tls: Option<ClientTls>) -> Result<RunnerStatus, String> {
        let endpoint = runner_endpoint(&self.addr.to_string())
            .unwrap()
            .connect_timeout(PROMPT)
            .timeout(PROMPT);
        let channel = connect_channel(endpoint, tls, &self.addr.to_string())
            .await
            .map_err(|e| format!("connect: {e:?}"))?;
        RunnerProtocolClient::new(channel)
            .status(())
            .await
            .map(Response::into_inner)
            .map_err(|e| format!("status: {e:?}"))
    }

    async fn stop(self) {
        self.stop.trigger();
        tokio::time::timeout(PROMPT, self.server)
            .await
            .expect("server stopped")
            .expect("server task")
            .expect("server result");
    }
}

fn read_certs(path: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(path)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn roots(ca_pem_path: &Path) -> RootCertStore {
    let mut roots = RootCertStore::empty();
    for c in read_certs(ca_pem_path) {
        roots.add(c).unwrap();
    }
    roots
}

fn tls13_client() -> rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier> {
    ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
}

/// A raw TLS client (not ferrofn's code): handshakes, then waits for the server's first bytes
/// (h2 SETTINGS). Under TLS 1.3 the client finishes its handshake before the server has checked
/// the client certificate, so a refusal shows up as the alert read here. Returns the server chain.
async fn raw_probe(
    addr: SocketAddr,
    config: ClientConfig,
    server_name: &str,
) -> Result<Vec<CertificateDer<'static>>, std::io::Error> {
    let mut config = config;
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(server_name.to_owned()).unwrap();
    let mut tls = tokio::time::timeout(
        PROMPT,
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp),
    )
    .await
    .expect("handshake finished in time")?;
    let chain = tls.get_ref().1.peer_certificates().unwrap_or_default().to_vec();
    let mut buf = [0u8; 9];
    let n = tokio::time::timeout(PROMPT, tls.read(&mut buf))
        .await
        .expect("server answered in time")?;
    if n == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "server closed the connection",
        ));
    }
    Ok(chain)
}

fn lb_client_config(fx: &Fixture) -> ClientConfig {
    let files = fx.lb_files();
    tls13_client()
        .with_root_certificates(roots(&files.ca))
        .with_client_auth_cert(
            read_certs(&files.cert),
            PrivateKeyDer::from_pem_file(&files.key).unwrap(),
        )
        .unwrap()
}

fn assert_err_mentions(result: Result<impl std::fmt::Debug, impl std::fmt::Display>, what: &[&str]) {
    match result {
        Ok(v) => panic!("expected a failure mentioning {what:?}, got success: {v:?}"),
        Err(e) => {
            let msg = e.to_string();
            assert!(
                what.iter().any(|w| msg.contains(w)),
                "error {msg:?} mentions none of {what:?}"
            );
        }
    }
}

#[tokio::test]
async fn ca_signed_client_is_served_and_handler_sees_its_certificate() {
    let fx = Fixture::start().await;
    let tls = ClientTls::new(fx.lb_files()).unwrap();
    let status = fx.status_via(Some(tls)).await.expect("mTLS status call");
    assert_eq!(status.id, "mtls-test");
    assert_eq!(status.details, "peer certificates: 1");

    let seen = fx.recorder.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0][0],
        read_certs(&fx.lb_files().cert)[0],
        "handler saw the LB certificate"
    );

    // The raw client negotiates h2 and gets the runner's certificate.
    let chain = raw_probe(fx.addr, lb_client_config(&fx), "a")
        .await
        .expect("raw mTLS");
    assert_eq!(chain[0], read_certs(&fx.path("runner-a.pem"))[0]);
    fx.stop().await;
}

#[tokio::test]
async fn client_without_certificate_is_refused() {
    let fx = Fixture::start().await;
    let config = tls13_client()
        .with_root_certificates(roots(&fx.path(tls_files::CA_CERT_FILE)))
        .with_no_client_auth();
    // rustls' alert name for "you must send a certificate".
    assert_err_mentions(raw_probe(fx.addr, config, "a").await, &["CertificateRequired"]);

    // And the server keeps serving good clients.
    let tls = ClientTls::new(fx.lb_files()).unwrap();
    fx.status_via(Some(tls))
        .await
        .expect("good client after a refused one");
    assert_eq!(fx.recorder.seen.lock().unwrap().len(), 1);
    fx.stop().await;
}

#[tokio::test]
async fn client_certificate_from_another_ca_is_refused() {
    let fx = Fixture::start().await;
    let stranger = CertAuthority::generate("stranger CA", 1).unwrap();
    let leaf = generate_leaf(
        &stranger,
        "ferrofn-lb",
        &["ferrofn-lb".into()],
        LeafKind::Client,
        1,
    )
    .unwrap();

    // Raw: the server answers the foreign certificate with an UnknownCA alert.
    let config = tls13_client()
        .with_root_certificates(roots(&fx.path(tls_files::CA_CERT_FILE)))
        .with_client_auth_cert(
            vec![leaf.cert_der.clone()],
            PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap(),
        )
        .unwrap();
    assert_err_mentions(raw_probe(fx.addr, config, "a").await, &["UnknownCA", "UnknownCa"]);

    // Through ferrofn's client: trusts the right CA, presents the foreign certificate.
    let dir = fx.dir.path();
    leaf.write(&dir.join("foreign.pem"), &dir.join("foreign-key.pem"))
        .unwrap();
    let files = TlsFiles::new(
        dir.join(tls_files::CA_CERT_FILE),
        dir.join("foreign.pem"),
        dir.join("foreign-key.pem"),
    );
    let result = fx.status_via(Some(ClientTls::new(files).unwrap())).await;
    assert!(
        result.is_err(),
        "foreign client certificate was accepted: {result:?}"
    );
    assert!(
        fx.recorder.seen.lock().unwrap().is_empty(),
        "handler must not run"
    );
    fx.stop().await;
}

#[tokio::test]
async fn client_refuses_a_server_it_does_not_trust() {
    let fx = Fixture::start().await;
    // The client holds a valid cluster certificate but trusts only an unrelated CA.
    let stranger = CertAuthority::generate("stranger CA", 1).unwrap();
    let other_ca = fx.path("other-ca.pem");
    std::fs::write(&other_ca, stranger.cert_pem()).unwrap();
    let mut files = fx.lb_files();
    files.ca = other_ca;
    let result = fx.status_via(Some(ClientTls::new(files.clone()).unwrap())).await;
    let err = result.expect_err("untrusted server accepted");
    assert!(err.contains("UnknownIssuer"), "{err}");

    // Also with the right CA but the wrong name: the runner cert does not name "b".
    let tls = ClientTls::new(fx.lb_files()).unwrap().with_server_name("b");
    let err = fx
        .status_via(Some(tls))
        .await
        .expect_err("wrong server name accepted");
    assert!(err.contains("NotValidForName"), "{err}");
    assert!(fx.recorder.seen.lock().unwrap().is_empty());
    fx.stop().await;
}

#[tokio::test]
async fn plaintext_client_is_refused() {
    let fx = Fixture::start().await;
    let result = fx.status_via(None).await;
    assert!(result.is_err(), "plaintext h2c call succeeded: {result:?}");
    assert!(fx.recorder.seen.lock().unwrap().is_empty());
    fx.stop().await;
}

#[tokio::test]
async fn rotated_server_certificate_is_served_without_restart() {
    let fx = Fixture::start().await;
    let files = TlsFiles::runner_in(fx.dir.path(), "a");
    let old = read_certs(&files.cert)[0].clone();

    // A connection made before the rotation, kept open across it.
    let endpoint = runner_endpoint(&fx.addr.to_string()).unwrap().timeout(PROMPT);
    let tls = ClientTls::new(fx.lb_files()).unwrap();
    let early = connect_channel(endpoint, Some(tls.clone()), "127.0.0.1")
        .await
        .expect("connect before rotation");
    let mut early = RunnerProtocolClient::new(early);
    early.status(()).await.expect("status before rotation");
    let chain = raw_probe(fx.addr, lb_client_config(&fx), "a").await.unwrap();
    assert_eq!(chain[0], old);

    // New key, new serial, new SAN; same CA. Written the way `certs` writes (atomic renames).
    let new = generate_leaf(
        &fx.cluster_ca(),
        "ferrofn-runner-a",
        &["rotated.example".into(), "127.0.0.1".into()],
        LeafKind::Server,
        1,
    )
    .unwrap();
    assert_ne!(new.cert_der, old);
    new.write(&files.cert, &files.key).unwrap();

    // The server checks its files at most once a second; poll until new handshakes see the new
    // certificate (bounded).
    let deadline = Instant::now() + PROMPT;
    loop {
        let chain = raw_probe(fx.addr, lb_client_config(&fx), "127.0.0.1")
            .await
            .expect("handshake during rotation");
        if chain[0] == new.cert_der {
            break;
        }
        assert_eq!(chain[0], old, "neither the old nor the new certificate");
        assert!(
            Instant::now() < deadline,
            "rotated certificate not served within {PROMPT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The new certificate names "rotated.example" and no longer "a".
    let tls_rotated = tls.clone().with_server_name("rotated.example");
    fx.status_via(Some(tls_rotated))
        .await
        .expect("call verifying the new SAN");
    let err = fx
        .status_via(Some(tls.with_server_name("a")))
        .await
        .expect_err("old SAN still accepted");
    assert!(err.contains("NotValidForName"), "{err}");

    // The connection from before the rotation keeps working.
    early
        .status(())
        .await
        .expect("status on the pre-rotation connection");

    // Broken files (key of another certificate) are ignored: the new certificate stays.
    std::fs::copy(fx.path(tls_files::LB_KEY_FILE), &files.key).unwrap();
    // (The accept path may have tried these files already, so "no change" is fine too.)
    assert!(
        !matches!(fx.tls.reload_now(), Ok(true)),
        "mismatched key pair was loaded"
    );
    let chain = raw_probe(fx.addr, lb_client_config(&fx), "127.0.0.1")
        .await
        .expect("server still serves with the last good certificate");
    assert_eq!(chain[0], new.cert_der);
    fx.stop().await;
}

#[tokio::test]
async fn stalled_handshake_does_not_block_other_clients() {
    let fx = Fixture::start().await;
    // Opens TCP and never speaks TLS.
    let _stalled = TcpStream::connect(fx.addr).await.unwrap();
    let tls = ClientTls::new(fx.lb_files()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), fx.status_via(Some(tls)))
        .await
        .expect("good client served while another handshake stalls")
        .expect("status call");
    fx.stop().await;
}

#[tokio::test]
async fn tls12_client_is_refused() {
    let fx = Fixture::start().await;
    let files = fx.lb_files();
    // A valid cluster client in every respect except the protocol version.
    let config = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots(&files.ca))
        .with_client_auth_cert(
            read_certs(&files.cert),
            PrivateKeyDer::from_pem_file(&files.key).unwrap(),
        )
        .unwrap();
    assert_err_mentions(raw_probe(fx.addr, config, "a").await, &["ProtocolVersion"]);
    assert!(fx.recorder.seen.lock().unwrap().is_empty());
    fx.stop().await;
}
