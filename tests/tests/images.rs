//! Acceptance test of the function images: each image is built (or found current) on the real
//! engine, started the way the runner starts functions (uid 1000, read-only rootfs, tmpfs `/tmp`,
//! no capabilities, no network, iofs bind mount) and called over its unix socket with the FDK
//! `http-stream` contract.

use anyhow::{Context, Result, bail, ensure};
use bollard::{
    Docker,
    container::LogOutput,
    models::{ContainerCreateBody, HostConfig},
    query_parameters::{LogsOptionsBuilder, WaitContainerOptionsBuilder},
};
use bytes::Bytes;
use ferrofn_tests::{
    docker::{self, ContainerGuard},
    images::{self, BINARY_SHA_LABEL, FnImage, HELLO_IMAGE, STATUS_IMAGE, TESTFN_IMAGE},
};
use futures::StreamExt;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::{body::Frame, client::conn::http1::SendRequest};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::{
    collections::HashMap,
    convert::Infallible,
    os::unix::fs::{FileTypeExt, PermissionsExt},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};
use tempfile::TempDir;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use tokio::net::UnixStream;

/// Label on every container this test creates (and the only ones it ever removes).
const TEST_LABEL: &str = "ferrofn.test";
const TEST_LABEL_VALUE: &str = "images";
/// Bound on the socket appearing after `docker start` (Fn's HotStartTimeout is 5 s).
const SOCKET_WAIT: Duration = Duration::from_secs(10);

type CallBody = BoxBody<Bytes, Infallible>;

/// A running function container with its iofs dir; the guard removes the container on drop.
struct FnContainer {
    guard: ContainerGuard,
    iofs: TempDir,
}

impl FnContainer {
    fn socket(&self) -> PathBuf {
        self.iofs.path().join("lsnr.sock")
    }
}

async fn setup() -> Result<Docker> {
    let docker = docker::connect().await?;
    // Containers of runs killed before their guards ran; young ones may be a parallel run's.
    docker::remove_stale_containers(
        &docker,
        &format!("{TEST_LABEL}={TEST_LABEL_VALUE}"),
        Duration::from_secs(600),
    )
    .await?;
    images::ensure_images(&docker).await?;
    Ok(docker)
}

async fn container_logs(docker: &Docker, id: &str) -> String {
    let options = LogsOptionsBuilder::default().stdout(true).stderr(true).build();
    let mut logs = docker.logs(id, Some(options));
    let mut out = String::new();
    while let Some(Ok(line)) = logs.next().await {
        if let LogOutput::StdOut { message } | LogOutput::StdErr { message } = line {
            out.push_str(&String::from_utf8_lossy(&message));
        }
    }
    out
}

/// Starts `image` as the runner would and waits for its socket.
async fn start_function(docker: &Docker, image: &str) -> Result<FnContainer> {
    let iofs = tempfile::Builder::new().prefix("iofs").tempdir()?;
    // uid 1000 inside the container must be able to create the socket.
    std::fs::set_permissions(iofs.path(), std::fs::Permissions::from_mode(0o777))?;
    let host_config = HostConfig {
        binds: Some(vec![format!("{}:/tmp/iofs:rw", iofs.path().display())]),
        readonly_rootfs: Some(true),
        tmpfs: Some(HashMap::from([(
            "/tmp".to_owned(),
            "rw,noexec,nosuid,size=16m".to_owned(),
        )])),
        cap_drop: Some(vec!["ALL".to_owned()]),
        security_opt: Some(vec!["no-new-privileges".to_owned()]),
        network_mode: Some("none".to_owned()),
        ..Default::default()
    };
    let body = ContainerCreateBody {
        image: Some(image.to_owned()),
        user: Some("1000:1000".to_owned()),
        env: Some(vec![
            "FN_LISTENER=unix:/tmp/iofs/lsnr.sock".to_owned(),
            "FN_FORMAT=http-stream".to_owned(),
        ]),
        labels: Some(HashMap::from([(
            TEST_LABEL.to_owned(),
            TEST_LABEL_VALUE.to_owned(),
        )])),
        host_config: Some(host_config),
        ..Default::default()
    };
    let id = docker
        .create_container(None, body)
        .await
        .with_context(|| format!("creating a container of {image}"))?
        .id;
    let container = FnContainer {
        guard: ContainerGuard::new(id),
        iofs,
    };
    let id = container.guard.id();
    docker
        .start_container(id, None)
        .await
        .with_context(|| format!("starting container {id} of {image}"))?;

    // The runner uses inotify; polling with a bounded deadline is enough for this test.
    let socket = container.socket();
    let started = Instant::now();
    while std::fs::symlink_metadata(&socket).is_err() {
        if started.elapsed() > SOCKET_WAIT {
            bail!(
                "{image}: {} did not appear within {SOCKET_WAIT:?}; container output:\n{}",
                socket.display(),
                container_logs(docker, id).await
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(container)
}

/// The runner's acceptance checks on `lsnr.sock`: a symlink to a sibling that is a socket.
fn check_socket_link(socket: &Path) -> Result<()> {
    let target = std::fs::read_link(socket).context("lsnr.sock is not a symlink")?;
    ensure!(
        target == Path::new("phonylsnr.sock"),
        "lsnr.sock points to {}",
        target.display()
    );
    ensure!(
        target.parent() == Some(Path::new("")),
        "link target has a directory component"
    );
    let meta = std::fs::metadata(socket)?;
    ensure!(meta.file_type().is_socket(), "link target is not a socket");
    ensure!(
        meta.permissions().mode() & 0o666 == 0o666,
        "socket is not world-writable"
    );
    Ok(())
}

async fn connect(socket: &Path) -> Result<SendRequest<CallBody>> {
    let stream = UnixStream::connect(socket)
        .await
        .with_context(|| format!("connecting to {}", socket.display()))?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

/// `Fn-Deadline` as Fn sends it: RFC 3339, whole seconds.
fn deadline_in(secs: i64) -> String {
    (OffsetDateTime::now_utc() + time::Duration::seconds(secs))
        .replace_nanosecond(0)
        .expect("zero nanoseconds is valid")
        .format(&Rfc3339)
        .expect("RFC 3339 formatting")
}

fn full(bytes: impl Into<Bytes>) -> CallBody {
    Full::new(bytes.into()).boxed()
}

/// A body of unknown length, so hyper sends it chunked as Fn's runner does.
fn chunked(chunks: Vec<Bytes>) -> CallBody {
    let frames = chunks.into_iter().map(|c| Ok(Frame::data(c)));
    BodyExt::boxed(StreamBody::new(futures::stream::iter(frames)))
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Result<Value> {
        serde_json::from_slice(&self.body)
            .with_context(|| format!("reply is not JSON: {}", String::from_utf8_lossy(&self.body)))
    }
}

async fn call(
    sender: &mut SendRequest<CallBody>,
    call_id: &str,
    deadline: Option<String>,
    extra_headers: &[(&str, &str)],
    body: CallBody,
) -> Result<Reply> {
    let mut request = Request::post("/call")
        .header("host", "localhost")
        .header("fn-call-id", call_id);
    if let Some(deadline) = deadline {
        request = request.header("fn-deadline", deadline);
    }
    for (name, value) in extra_headers {
        request = request.header(*name, *value);
    }
    sender.ready().await.context("connection not ready")?;
    let response = sender
        .send_request(request.body(body)?)
        .await
        .with_context(|| format!("call {call_id}"))?;
    let (parts, body) = response.into_parts();
    Ok(Reply {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await?.to_bytes(),
    })
}

/// The exit code once the container has stopped (bollard reports non-zero codes as errors).
async fn exit_code(docker: &Docker, id: &str, within: Duration) -> Result<i64> {
    let options = WaitContainerOptionsBuilder::default()
        .condition("not-running")
        .build();
    let mut wait = docker.wait_container(id, Some(options));
    let result = tokio::time::timeout(within, wait.next())
        .await
        .with_context(|| format!("container {id} still running after {within:?}"))?
        .context("wait stream ended without a result")?;
    match result {
        Ok(response) => Ok(response.status_code),
        Err(bollard::errors::Error::DockerContainerWaitError { code, .. }) => Ok(code),
        Err(e) => Err(e).context("waiting for the container"),
    }
}

#[tokio::test]
async fn images_carry_the_hash_of_their_binary() -> Result<()> {
    let docker = setup().await?;
    for which in FnImage::ALL {
        let binary = std::fs::read(images::binary_path(&which.package()))?;
        let expected = format!("{:x}", Sha256::digest(&binary));
        let labels = docker
            .inspect_image(which.tag())
            .await?
            .config
            .and_then(|c| c.labels)
            .unwrap_or_default();
        assert_eq!(labels.get(BINARY_SHA_LABEL), Some(&expected), "{which}");
    }
    // A second ensure in the same process finds everything current and shares the first result.
    let again = images::ensure_images(&docker).await?;
    assert_eq!(again.len(), 3);
    Ok(())
}

#[tokio::test]
async fn testfn_speaks_the_http_stream_contract() -> Result<()> {
    let docker = setup().await?;
    let container = start_function(&docker, TESTFN_IMAGE.as_str()).await?;
    let id = container.guard.id().to_owned();
    check_socket_link(&container.socket())?;
    let mut sender = connect(&container.socket()).await?;

    // A chunked knob body: echo, trailer, extra response header.
    let knobs = br#"{"echoContent":"ping-1","trailerRepeat":2,"returnHeaders":{"X-Test":["a","b"]}}"#;
    let (first, second) = knobs.split_at(20);
    let reply = call(
        &mut sender,
        "call-1",
        Some(deadline_in(30)),
        &[("content-type", "application/json")],
        chunked(vec![Bytes::from_static(first), Bytes::from_static(second)]),
    )
    .await?;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.headers["content-type"], "application/json");
    assert_eq!(reply.headers.get_all("x-test").iter().count(), 2);
    let doc = reply.json()?;
    assert_eq!(doc["request"]["echoContent"], "ping-1");
    assert_eq!(doc["trailer"], json!(["ping-1", "ping-1"]));
    assert_eq!(doc["header"]["Fn-Call-Id"], json!(["call-1"]));
    assert_eq!(doc["config"]["FN_FORMAT"], "http-stream");
    assert_eq!(doc["config"]["FN_LISTENER"], "unix:/tmp/iofs/lsnr.sock");
    assert_eq!(doc["data"]["bodyLength"], json!(knobs.len()));

    // Keep-alive: the same connection serves the next call.
    let reply = call(
        &mut sender,
        "call-2",
        Some(deadline_in(30)),
        &[],
        full(r#"{"echoContent":"ping-2","readFile":"/proc/self/status","readFileSize":5}"#),
    )
    .await?;
    assert_eq!(reply.status, StatusCode::OK);
    let doc = reply.json()?;
    assert_eq!(doc["request"]["echoContent"], "ping-2");
    assert_eq!(doc["header"]["Fn-Call-Id"], json!(["call-2"]));
    assert_eq!(doc["data"]["/proc/self/status.read_output"], "Name:");

    // HTTP-trigger intent: the handler sees un-prefixed headers, the reply is encapsulated.
    let reply = call(
        &mut sender,
        "call-3",
        Some(deadline_in(30)),
        &[
            ("fn-intent", "httprequest"),
            ("fn-http-method", "PUT"),
            ("fn-http-h-x-client", "c"),
        ],
        full(r#"{"responseCode":202,"returnHeaders":{"X-R":["1"]},"createFile":"/ro","createFileSize":1}"#),
    )
    .await?;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.headers["fn-http-status"], "202");
    assert_eq!(reply.headers["fn-http-h-x-r"], "1");
    let doc = reply.json()?;
    assert_eq!(doc["header"]["X-Client"], json!(["c"]));
    assert!(doc["header"].get("Fn-Call-Id").is_none());
    // The root filesystem is read-only.
    assert!(doc["data"]["/ro.create_error"].is_string(), "{doc}");

    // Streamed echo of a large chunked body, and a raw status for the runner's mapping.
    let mut sent = b"{\"echoBody\":true,\"httpStatus\":502}".to_vec();
    let chunks: Vec<Bytes> = (0..16u8)
        .map(|i| Bytes::from(vec![b'a' + i; 64 * 1024]))
        .collect();
    for chunk in &chunks {
        sent.extend_from_slice(chunk);
    }
    let mut body = vec![Bytes::from_static(b"{\"echoBody\":true,\"httpStatus\":502}")];
    body.extend(chunks);
    let reply = call(&mut sender, "call-4", Some(deadline_in(30)), &[], chunked(body)).await?;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(reply.body.len(), sent.len());
    assert!(reply.body == sent.as_slice(), "echoed body differs");

    // No Fn-Deadline: fn-test-utils aborts without answering, and the container dies.
    let result = call(&mut sender, "call-5", None, &[], full("{}")).await;
    assert!(result.is_err(), "a call without Fn-Deadline was answered");
    let code = exit_code(&docker, &id, Duration::from_secs(20)).await?;
    assert_ne!(code, 0, "container exited cleanly");
    assert!(
        container_logs(&docker, &id).await.contains("no deadline"),
        "the abort is logged"
    );

    container.guard.remove(&docker).await
}

#[tokio::test]
async fn dropped_guard_removes_its_container() -> Result<()> {
    let docker = setup().await?;
    let container = start_function(&docker, STATUS_IMAGE.as_str()).await?;
    let id = container.guard.id().to_owned();
    // What happens when a test panics: the guard is dropped, not removed explicitly.
    drop(container);
    match docker.inspect_container(&id, None).await {
        Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => Ok(()),
        Ok(_) => bail!("container {id} still exists after its guard was dropped"),
        Err(e) => Err(e.into()),
    }
}

#[tokio::test]
async fn hello_greets() -> Result<()> {
    let docker = setup().await?;
    let container = start_function(&docker, HELLO_IMAGE.as_str()).await?;
    check_socket_link(&container.socket())?;
    let mut sender = connect(&container.socket()).await?;
    let reply = call(
        &mut sender,
        "h-1",
        Some(deadline_in(30)),
        &[],
        full(r#"{"name":"Ferro"}"#),
    )
    .await?;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()?, json!({"message": "Hello Ferro"}));
    let reply = call(&mut sender, "h-2", Some(deadline_in(30)), &[], full("")).await?;
    assert_eq!(reply.json()?, json!({"message": "Hello World"}));
    container.guard.remove(&docker).await
}

#[tokio::test]
async fn status_echoes_its_input() -> Result<()> {
    let docker = setup().await?;
    let container = start_function(&docker, STATUS_IMAGE.as_str()).await?;
    check_socket_link(&container.socket())?;
    let mut sender = connect(&container.socket()).await?;
    let input = json!({"probe": {"n": 1, "list": ["a"]}});
    let reply = call(
        &mut sender,
        "s-1",
        Some(deadline_in(5)),
        &[],
        full(input.to_string()),
    )
    .await?;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()?, input);
    let reply = call(&mut sender, "s-2", Some(deadline_in(5)), &[], full("")).await?;
    assert_eq!(reply.json()?, json!({}));
    container.guard.remove(&docker).await
}
