//! What a hostile gRPC client gets from a real runner serving mTLS (certificates generated at test
//! time, real Docker engine, testfn image), while the LB's own connection carries a call across the
//! attack and more calls after it:
//! - no client certificate, one from another CA, an expired one: refused in the TLS handshake
//!   (alerts CertificateRequired, UnknownCA, CertificateExpired), no handler runs;
//! - a valid client doing HTTP/2 rapid reset (HEADERS + RST_STREAM, thousands): GOAWAY
//!   ENHANCE_YOUR_CALM, connection closed;
//! - a valid client opening more streams than the runner's limit (4096): the excess is refused
//!   (RST_STREAM REFUSED_STREAM), then GOAWAY ENHANCE_YOUR_CALM after 1024 refusals;
//! - messages over the gRPC size limit (4 MiB): OUT_OF_RANGE, before the TryCall and during the body,
//!   without buffering them;
//! - a DataFrame before the TryCall and call JSON that does not decode, on the LB's own connection:
//!   Fn's answers (`Protocol failure: expected ClientMsg_Try`; CallFinished with code 0). The same
//!   answers on a connection of their own are checked in `runner_protocol_errors.rs`.
//!
//! Every case checks that the runner's memory stays bounded and ends with a drain that leaves no
//! container. The raw HTTP/2 client below writes frames by hand: a well-behaved HTTP/2 library never
//! exceeds the peer's stream limit, so it cannot play the attacker.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use bollard::Docker;
use bytes::Bytes;
use rustls::RootCertStore;
use rustls::client::ClientConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use ferrofn_common::certs::{CertAuthority, ClusterCertOptions, ClusterCerts, LeafKind, generate_cluster};
use ferrofn_common::tls::{ClientTls, TlsFiles, connect_channel, runner_endpoint};
use ferrofn_proto::runner_protocol_client::RunnerProtocolClient;
use ferrofn_proto::{ClientMsg, DataFrame, TryCall, client_msg, runner_msg};
use ferrofn_tests::images::TESTFN_IMAGE;
use ferrofn_tests::runner_proc::{EngageOpts, RunnerProc, call_json, engage, unique_name};
use ferrofn_tests::testfn::{fn_id, knobs};

/// Upper bound for anything that should happen promptly on loopback.
const PROMPT: Duration = Duration::from_secs(20);

/// How much the runner's resident memory may grow through one attack.
const RSS_BOUND: u64 = 96 << 20;

/// A runner serving mTLS with a fresh cluster CA, and the LB's connection to it.
struct Fixture {
    docker: Docker,
    runner: RunnerProc,
    certs: ClusterCerts,
    _dir: tempfile::TempDir,
    lb: RunnerProtocolClient<Channel>,
}

impl Fixture {
    async fn start() -> Result<Self> {
        ferrofn_common::tls::install_crypto_provider();
        let docker = ferrofn_tests::docker::connect().await?;
        ferrofn_tests::images::ensure_image(&docker, ferrofn_tests::images::FnImage::Testfn).await?;
        let dir = tempfile::tempdir()?;
        let opts = ClusterCertOptions {
            runner_names: vec!["r1".into()],
            ..Default::default()
        };
        let certs = generate_cluster(dir.path(), &opts)?;
        let files = &certs.runners[0].1;
        let path = |p: &std::path::Path| p.to_str().expect("utf-8 temp path").to_owned();
        let args = [
            "--tls-ca".to_owned(),
            path(&files.ca),
            "--tls-cert".to_owned(),
            path(&files.cert),
            "--tls-key".to_owned(),
            path(&files.key),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let runner = RunnerProc::start_tls(&unique_name("hostile-grpc"), &[], &args).await?;
        let channel = connect_channel(
            runner_endpoint(&runner.grpc_addr.to_string())?,
            Some(ClientTls::new(certs.lb.clone())?),
            "127.0.0.1",
        )
        .await?;
        let lb = RunnerProtocolClient::new(channel);
        Ok(Fixture {
            docker,
            runner,
            certs,
            _dir: dir,
            lb,
        })
    }

    /// One complete call through the LB's connection: the function echoes what it was sent.
    async fn served(&self, what: &str) -> Result<()> {
        let call = call_json(TESTFN_IMAGE.as_str(), &fn_id(1), &[], |_| {});
        let r = engage(
            &mut self.lb.clone(),
            &call,
            &knobs(serde_json::json!({ "echoContent": what })),
            EngageOpts::default(),
        )
        .await?;
        ensure!(r.finished().success, "{what}: {:?}", r.finished());
        let doc: serde_json::Value = serde_json::from_slice(&r.body)?;
        ensure!(doc["request"]["echoContent"] == what, "{what}: {doc}");
        Ok(())
    }

    /// Resident memory of the runner process.
    fn rss(&self) -> u64 {
        rss_of(self.runner.pid())
    }

    /// A TLS client config presenting `cert`/`key` (or nothing) and trusting the cluster CA.
    fn client_config(
        &self,
        identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    ) -> ClientConfig {
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(&self.certs.lb.ca).expect("ca file") {
            roots.add(c.expect("ca pem")).expect("ca cert");
        }
        let builder = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3")
            .with_root_certificates(roots);
        let mut config = match identity {
            None => builder.with_no_client_auth(),
            Some((chain, key)) => builder.with_client_auth_cert(chain, key).expect("client cert"),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        config
    }

    /// The LB's own identity (a valid client).
    fn lb_identity(&self) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        identity_files(&self.certs.lb)
    }

    async fn finish(self) -> Result<()> {
        drop(self.lb);
        self.runner.drain_and_check(&self.docker).await
    }
}

fn identity_files(files: &TlsFiles) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let chain = CertificateDer::pem_file_iter(&files.cert)
        .expect("cert file")
        .collect::<Result<_, _>>()
        .expect("cert pem");
    (chain, PrivateKeyDer::from_pem_file(&files.key).expect("key pem"))
}

fn rss_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// A call held open across an attack, on the LB's connection: TryCall with the accept ack, the
/// start of an echoed body; [`InFlight::finish`] sends the rest and checks the whole echo.
struct InFlight {
    requests: mpsc::Sender<ClientMsg>,
    responses: tonic::Streaming<ferrofn_proto::RunnerMsg>,
}

const ECHO_HEAD: &str = "{\"echoBody\":true}";
const ECHO_TAIL: &str = " and the rest, after the attack";

impl InFlight {
    /// Returns once the runner acknowledged the call (it holds a container).
    async fn start(fx: &Fixture) -> Result<Self> {
        let call = call_json(TESTFN_IMAGE.as_str(), &fn_id(1), &[], |_| {});
        let (tx, rx) = mpsc::channel(4);
        tx.send(ClientMsg {
            body: Some(client_msg::Body::Try(TryCall {
                models_call_json: call,
                slot_hash_id: String::new(),
                extensions: HashMap::from([(
                    ferrofn_proto::ext::ACCEPT_ACK.to_string(),
                    ferrofn_proto::ext::ON.to_string(),
                )]),
            })),
        })
        .await?;
        tx.send(data(ECHO_HEAD.as_bytes(), false)).await?;
        let mut responses = fx
            .lb
            .clone()
            .engage(ReceiverStream::new(rx))
            .await
            .context("opening the in-flight call")?
            .into_inner();
        let ack = tokio::time::timeout(PROMPT, responses.message())
            .await
            .context("no accept ack in time")??;
        match ack.and_then(|m| m.body) {
            Some(runner_msg::Body::Data(d)) if d.data.is_empty() => {}
            other => bail!("expected the accept ack, got {other:?}"),
        }
        Ok(InFlight {
            requests: tx,
            responses,
        })
    }

    /// Sends the rest of the body and checks the echo and the CallFinished.
    async fn finish(mut self) -> Result<()> {
        self.requests.send(data(ECHO_TAIL.as_bytes(), true)).await?;
        let mut body = Vec::new();
        let read = async {
            while let Some(m) = self.responses.message().await? {
                match m.body {
                    Some(runner_msg::Body::Data(d)) => body.extend_from_slice(&d.data),
                    Some(runner_msg::Body::Finished(f)) => return anyhow::Ok(f),
                    _ => {}
                }
            }
            bail!("stream ended without CallFinished")
        };
        let finished = tokio::time::timeout(PROMPT, read)
            .await
            .context("in-flight call did not finish")??;
        ensure!(finished.success, "in-flight call failed: {finished:?}");
        let want = format!("{ECHO_HEAD}{ECHO_TAIL}");
        ensure!(
            body == want.as_bytes(),
            "in-flight echo: {}",
            String::from_utf8_lossy(&body)
        );
        Ok(())
    }
}

fn data(bytes: &[u8], eof: bool) -> ClientMsg {
    ClientMsg {
        body: Some(client_msg::Body::Data(DataFrame {
            data: Bytes::copy_from_slice(bytes),
            eof,
        })),
    }
}

/// TLS handshake as `config`, then waits for the server's first bytes (its HTTP/2 SETTINGS). Under
/// TLS 1.3 the client's handshake completes before the server has checked the client's
/// certificate, so a refusal arrives as the alert read here.
async fn handshake(fx: &Fixture, config: ClientConfig) -> Result<(), String> {
    let tcp = TcpStream::connect(fx.runner.grpc_addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from("localhost").expect("name");
    let mut tls = tokio::time::timeout(
        PROMPT,
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp),
    )
    .await
    .map_err(|_| "handshake hung".to_owned())?
    .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 9];
    match tokio::time::timeout(PROMPT, tls.read(&mut buf)).await {
        Err(_) => Err("server sent nothing".to_owned()),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(0)) => Err("closed without an alert".to_owned()),
        Ok(Ok(_)) => Ok(()),
    }
}

/// A client certificate signed by `ca` whose validity ended yesterday.
fn expired_leaf(ca_cert: &str, ca_key: &str) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let issuer = rcgen::Issuer::from_ca_cert_pem(ca_cert, rcgen::KeyPair::from_pem(ca_key).expect("ca key"))
        .expect("ca");
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(vec!["ferrofn-lb".to_owned()]).expect("params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "ferrofn-lb");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(30);
    params.not_after = now - time::Duration::days(1);
    let cert = params.signed_by(&key, &issuer).expect("sign");
    (
        vec![cert.der().clone()],
        PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).expect("key pem"),
    )
}

#[tokio::test]
async fn clients_without_a_valid_certificate_are_refused_at_the_handshake() -> Result<()> {
    let fx = Fixture::start().await?;
    fx.served("before").await?;
    let in_flight = InFlight::start(&fx).await?;
    #[allow(deprecated)]
    let received = fx.lb.clone().status(()).await?.into_inner().requests_received;
    let rss = fx.rss();

    // No certificate at all.
    let err = handshake(&fx, fx.client_config(None))
        .await
        .expect_err("no certificate accepted");
    assert!(err.contains("CertificateRequired"), "{err}");
    // A certificate from another CA (same names, same usage).
    let stranger = CertAuthority::generate("stranger CA", 1)?;
    let foreign = stranger.issue("ferrofn-lb", &["ferrofn-lb".into()], LeafKind::Client, 1)?;
    let foreign_identity = (
        vec![foreign.cert_der.clone()],
        PrivateKeyDer::from_pem_slice(foreign.key_pem.as_bytes())?,
    );
    let err = handshake(&fx, fx.client_config(Some(foreign_identity)))
        .await
        .expect_err("foreign certificate accepted");
    assert!(err.contains("UnknownCA") || err.contains("UnknownCa"), "{err}");
    // A certificate from the cluster's CA that has expired.
    let ca_cert = std::fs::read_to_string(&fx.certs.lb.ca)?;
    let ca_key = std::fs::read_to_string(fx.certs.dir.join(ferrofn_common::tls_files::CA_KEY_FILE))?;
    let err = handshake(&fx, fx.client_config(Some(expired_leaf(&ca_cert, &ca_key))))
        .await
        .expect_err("expired certificate accepted");
    assert!(err.contains("CertificateExpired"), "{err}");
    // The control: the LB's own certificate passes the same handshake.
    handshake(&fx, fx.client_config(Some(fx.lb_identity())))
        .await
        .map_err(|e| anyhow::anyhow!("the valid certificate was refused: {e}"))?;

    // No refused client reached a handler; the LB's call and connection are unaffected.
    #[allow(deprecated)]
    let after = fx.lb.clone().status(()).await?.into_inner().requests_received;
    assert_eq!(after, received, "a refused client started an Engage");
    in_flight.finish().await?;
    fx.served("after").await?;
    let grown = fx.rss().saturating_sub(rss);
    eprintln!("runner RSS growth: {} KiB", grown >> 10);
    assert!(grown < RSS_BOUND, "runner RSS grew by {grown} bytes");
    fx.finish().await
}

// ----- a raw HTTP/2 client: frames written by hand, so it can break the rules -----------------------

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADERS: u8 = 0x1;
const FRAME_RST_STREAM: u8 = 0x3;
const FRAME_SETTINGS: u8 = 0x4;
const FRAME_GOAWAY: u8 = 0x7;
const FLAG_END_HEADERS: u8 = 0x4;
const CANCEL: u32 = 0x8;
const REFUSED_STREAM: u32 = 0x7;
const ENHANCE_YOUR_CALM: u32 = 0xb;

fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = payload.len() as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// HPACK literal (never Huffman) header with an indexed name, or a new name when `index` is 0.
fn hpack_literal(out: &mut Vec<u8>, index: u8, name: &str, value: &str) {
    out.push(index); // "literal without indexing", 4-bit name index
    if index == 0 {
        out.push(name.len() as u8);
        out.extend_from_slice(name.as_bytes());
    }
    out.push(value.len() as u8);
    out.extend_from_slice(value.as_bytes());
}

/// The header block of a gRPC `Engage` request.
fn engage_headers() -> Vec<u8> {
    let mut block = vec![0x83, 0x87]; // :method POST, :scheme https (static table 3 and 7)
    hpack_literal(&mut block, 4, "", "/RunnerProtocol/Engage"); // :path
    hpack_literal(&mut block, 1, "", "localhost"); // :authority
    hpack_literal(&mut block, 0, "content-type", "application/grpc");
    hpack_literal(&mut block, 0, "te", "trailers");
    block
}

/// What the server sent on a raw connection until it closed it.
#[derive(Debug, Default)]
struct ServerFrames {
    refused: usize,
    other_resets: usize,
    goaway: Option<(u32, u32)>,
    closed: bool,
}

/// A TLS connection with the LB's valid certificate, speaking HTTP/2 by hand.
struct RawH2 {
    write: tokio::io::WriteHalf<tokio_rustls::client::TlsStream<TcpStream>>,
    frames: tokio::task::JoinHandle<ServerFrames>,
}

impl RawH2 {
    async fn connect(fx: &Fixture) -> Result<Self> {
        let tcp = TcpStream::connect(fx.runner.grpc_addr).await?;
        let config = fx.client_config(Some(fx.lb_identity()));
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("localhost")?, tcp)
            .await?;
        let (mut read, mut write) = tokio::io::split(tls);
        let mut hello = PREFACE.to_vec();
        frame(&mut hello, FRAME_SETTINGS, 0, 0, &[]);
        write.write_all(&hello).await?;
        // Reads every frame the server sends until it closes the connection.
        let frames = tokio::spawn(async move {
            let mut seen = ServerFrames::default();
            let mut head = [0u8; 9];
            loop {
                if read.read_exact(&mut head).await.is_err() {
                    seen.closed = true;
                    return seen;
                }
                let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
                let mut payload = vec![0u8; len];
                if read.read_exact(&mut payload).await.is_err() {
                    seen.closed = true;
                    return seen;
                }
                match head[3] {
                    FRAME_RST_STREAM if payload.len() == 4 => {
                        let code = u32::from_be_bytes(payload[..4].try_into().expect("4 bytes"));
                        if code == REFUSED_STREAM {
                            seen.refused += 1;
                        } else {
                            seen.other_resets += 1;
                        }
                    }
                    FRAME_GOAWAY if payload.len() >= 8 => {
                        let last =
                            u32::from_be_bytes(payload[..4].try_into().expect("4 bytes")) & 0x7fff_ffff;
                        let code = u32::from_be_bytes(payload[4..8].try_into().expect("4 bytes"));
                        seen.goaway.get_or_insert((last, code));
                    }
                    _ => {}
                }
            }
        });
        Ok(RawH2 { write, frames })
    }

    /// Writes `batch` until the server stops taking bytes (it closed the connection) or `max_batches`
    /// were sent. Returns how many batches went out.
    async fn send_until_closed(&mut self, mut batch: impl FnMut(u32) -> Vec<u8>, max_batches: u32) -> u32 {
        for i in 0..max_batches {
            if self.write.write_all(&batch(i)).await.is_err() || self.frames.is_finished() {
                return i;
            }
        }
        max_batches
    }

    /// What the server sent, once it has closed the connection (bounded by [`PROMPT`]).
    async fn outcome(self) -> Result<ServerFrames> {
        let RawH2 { write, frames } = self;
        let seen = tokio::time::timeout(PROMPT, frames)
            .await
            .context("the server kept the hostile connection open")??;
        drop(write);
        Ok(seen)
    }
}

#[tokio::test]
async fn rapid_reset_gets_goaway_and_the_lb_connection_keeps_serving() -> Result<()> {
    let fx = Fixture::start().await?;
    fx.served("before").await?;
    let in_flight = InFlight::start(&fx).await?;
    let rss = fx.rss();

    let mut raw = RawH2::connect(&fx).await?;
    let headers = engage_headers();
    // 100 streams per write, each opened and cancelled at once: the CVE-2023-44487 pattern.
    let batches = raw
        .send_until_closed(
            |i| {
                let mut out = Vec::new();
                for j in 0..100 {
                    let stream = 1 + 2 * (i * 100 + j);
                    frame(&mut out, FRAME_HEADERS, FLAG_END_HEADERS, stream, &headers);
                    frame(&mut out, FRAME_RST_STREAM, 0, stream, &CANCEL.to_be_bytes());
                }
                out
            },
            // Up to a million streams: only the server closing the connection ends this early.
            10_000,
        )
        .await;
    let seen = raw.outcome().await?;
    eprintln!("rapid reset: {batches} batches of 100 written; server frames: {seen:?}");
    assert!(
        batches < 10_000,
        "a million reset streams were all taken: {seen:?}"
    );
    let (_, code) = seen.goaway.unwrap_or_else(|| panic!("no GOAWAY: {seen:?}"));
    assert_eq!(code, ENHANCE_YOUR_CALM, "{seen:?}");
    assert!(seen.closed);

    in_flight.finish().await?;
    fx.served("after").await?;
    let grown = fx.rss().saturating_sub(rss);
    eprintln!("runner RSS growth: {} KiB", grown >> 10);
    assert!(grown < RSS_BOUND, "runner RSS grew by {grown} bytes");
    fx.finish().await
}

#[tokio::test]
async fn streams_over_the_limit_are_refused_then_the_connection_is_closed() -> Result<()> {
    let fx = Fixture::start().await?;
    fx.served("before").await?;
    let in_flight = InFlight::start(&fx).await?;
    let rss = fx.rss();

    let mut raw = RawH2::connect(&fx).await?;
    let headers = engage_headers();
    // Streams opened and left open (no body, no end): the runner allows 4096 at once.
    let batches = raw
        .send_until_closed(
            |i| {
                let mut out = Vec::new();
                for j in 0..256 {
                    let stream = 1 + 2 * (i * 256 + j);
                    frame(&mut out, FRAME_HEADERS, FLAG_END_HEADERS, stream, &headers);
                }
                out
            },
            // 4096 allowed + 2048 over the limit
            24,
        )
        .await;
    let seen = raw.outcome().await?;
    eprintln!("stream flood: {batches} batches of 256 written; server frames: {seen:?}");
    let (last, code) = seen
        .goaway
        .unwrap_or_else(|| panic!("no GOAWAY after {batches} batches: {seen:?}"));
    assert_eq!(code, ENHANCE_YOUR_CALM, "{seen:?}");
    assert_eq!(seen.refused, 1024, "refusals before the GOAWAY: {seen:?}");
    assert!(last < 1 + 2 * 5200, "GOAWAY last stream {last}");
    assert!(seen.closed);

    // The runner let go of the 4096 idle streams with the connection.
    ferrofn_tests::runner_proc::eventually("the flood's streams released", PROMPT, || {
        let mut lb = fx.lb.clone();
        #[allow(deprecated)]
        async move {
            lb.status(()).await.is_ok_and(|s| s.into_inner().active <= 1)
        }
    })
    .await?;
    in_flight.finish().await?;
    fx.served("after").await?;
    let grown = fx.rss().saturating_sub(rss);
    eprintln!("runner RSS growth: {} KiB", grown >> 10);
    assert!(grown < RSS_BOUND, "runner RSS grew by {grown} bytes");
    fx.finish().await
}

/// Sends `messages` on a new Engage stream of `client`, keeping the request side open, and reads the
/// answer to its end: (CallFinished if any, the final gRPC status if not OK).
async fn exchange(
    client: &mut RunnerProtocolClient<Channel>,
    messages: Vec<ClientMsg>,
) -> Result<(Option<ferrofn_proto::CallFinished>, Option<tonic::Status>)> {
    let (tx, rx) = mpsc::channel(2);
    // Sent from a task: a message the runner refuses may never be taken off the wire whole.
    let sender = tokio::spawn(async move {
        for m in messages {
            if tx.send(m).await.is_err() {
                break;
            }
        }
        tx
    });
    let read = async {
        let mut stream = match client.engage(ReceiverStream::new(rx)).await {
            Ok(s) => s.into_inner(),
            Err(status) => return Ok((None, Some(status))),
        };
        let mut finished = None;
        loop {
            match stream.message().await {
                Ok(Some(m)) => {
                    if let Some(runner_msg::Body::Finished(f)) = m.body {
                        finished = Some(f);
                    }
                }
                Ok(None) => return anyhow::Ok((finished, None)),
                Err(status) => return Ok((finished, Some(status))),
            }
        }
    };
    let answer = tokio::time::timeout(PROMPT, read)
        .await
        .context("no answer in time")??;
    sender.abort();
    Ok(answer)
}

fn try_call(json: String) -> ClientMsg {
    ClientMsg {
        body: Some(client_msg::Body::Try(TryCall {
            models_call_json: json,
            ..Default::default()
        })),
    }
}

/// The gRPC limit on one message the runner takes (tonic's default, as grpc-go's in Fn).
const MAX_MESSAGE: usize = 4 << 20;

#[tokio::test]
async fn messages_over_the_size_limit_get_out_of_range_without_being_buffered() -> Result<()> {
    let fx = Fixture::start().await?;
    fx.served("before").await?;
    let in_flight = InFlight::start(&fx).await?;
    let rss = fx.rss();
    // Another client with a valid certificate, on a connection of its own.
    let mut hostile = RunnerProtocolClient::new(
        connect_channel(
            runner_endpoint(&fx.runner.grpc_addr.to_string())?,
            Some(ClientTls::new(fx.certs.lb.clone())?),
            "127.0.0.1",
        )
        .await?,
    );

    // A TryCall over the limit (a 5 MiB config value): refused before any call exists.
    let big = "x".repeat(MAX_MESSAGE + (1 << 20));
    let call = call_json(TESTFN_IMAGE.as_str(), &fn_id(2), &[("BIG", big.as_str())], |_| {});
    let (finished, status) = exchange(&mut hostile, vec![try_call(call)]).await?;
    assert!(finished.is_none(), "{finished:?}");
    let status = status.expect("a status, not OK");
    assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");
    assert!(
        status.message().contains("message length too large"),
        "{status:?}"
    );

    // A 64 MiB DataFrame after a good TryCall: the call ends with Fn's protocol failure, the stream
    // with OUT_OF_RANGE, and the frame is refused by its length prefix, not read into memory.
    let call = call_json(TESTFN_IMAGE.as_str(), &fn_id(2), &[], |_| {});
    let huge = vec![b'y'; 64 << 20];
    let (finished, status) = exchange(&mut hostile, vec![try_call(call), data(&huge, true)]).await?;
    drop(huge);
    let f = finished.expect("CallFinished");
    assert!(!f.success);
    assert_eq!(f.error_code, 500, "{f:?}");
    assert!(
        f.error_str.starts_with("Protocol failure: ") && f.error_str.contains("message length too large"),
        "{f:?}"
    );
    let status = status.expect("a status, not OK");
    assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");
    let grown = fx.rss().saturating_sub(rss);
    eprintln!("runner RSS growth: {} KiB", grown >> 10);
    assert!(
        grown < 32 << 20,
        "runner RSS grew by {grown} bytes: the frame was buffered"
    );

    // The hostile client's connection may go on with well-formed calls; the LB's is unaffected.
    let call = call_json(TESTFN_IMAGE.as_str(), &fn_id(2), &[], |_| {});
    let r = engage(&mut hostile, &call, b"{}", EngageOpts::default()).await?;
    assert!(r.finished().success, "{:?}", r.finished());
    in_flight.finish().await?;
    fx.served("after").await?;
    fx.finish().await
}

/// The same answers as `runner_protocol_errors.rs` gets on a connection of its own, here on the
/// LB's connection with a call in flight (which must not notice).
#[tokio::test]
async fn protocol_garbage_gets_fn_answers_and_the_call_in_flight_goes_on() -> Result<()> {
    let fx = Fixture::start().await?;
    fx.served("before").await?;
    let in_flight = InFlight::start(&fx).await?;
    let mut lb = fx.lb.clone();

    // A DataFrame before the TryCall: Fn's protocol failure as the stream's status.
    let (finished, status) = exchange(&mut lb, vec![data(b"x", true)]).await?;
    assert!(finished.is_none(), "{finished:?}");
    let status = status.expect("a status, not OK");
    assert_eq!(status.message(), "Protocol failure: expected ClientMsg_Try");

    // Call JSON that does not decode: CallFinished with code 0 (not an API error, as in Fn; the LB
    // answers 500).
    for garbage in ["{not json", "", "[]", "{\"id\": 7}", "\u{0}\u{1}\u{2}"] {
        let (finished, status) =
            exchange(&mut lb, vec![try_call(garbage.to_owned()), data(b"", true)]).await?;
        let f = finished.unwrap_or_else(|| panic!("{garbage:?}: no CallFinished, status {status:?}"));
        assert!(
            !f.success && f.error_code == 0 && !f.error_str.is_empty(),
            "{garbage:?}: {f:?}"
        );
        assert!(status.is_none(), "{garbage:?}: {status:?}");
    }

    // A second TryCall where the body should be: Fn's other protocol failure.
    let call = || call_json(TESTFN_IMAGE.as_str(), &fn_id(3), &[], |_| {});
    let (finished, _) = exchange(&mut lb, vec![try_call(call()), try_call(call())]).await?;
    let f = finished.expect("CallFinished");
    assert_eq!(
        (f.success, f.error_code, f.error_str.as_str()),
        (false, 500, "Protocol failure: expected ClientMsg_Data")
    );

    in_flight.finish().await?;
    fx.served("after").await?;
    fx.finish().await
}
