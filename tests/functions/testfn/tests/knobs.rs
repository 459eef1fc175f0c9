//! The testfn knobs, exercised on the real binary running on the host (no Docker): the process is
//! started with `FN_LISTENER` in a temp dir and called over its unix socket like the runner does.

use bytes::Bytes;
use futures::channel::mpsc;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::{body::Frame, client::conn::http1::SendRequest};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use std::{
    convert::Infallible,
    path::{Path, PathBuf},
    process::{ExitStatus, Output, Stdio},
    time::{Duration, Instant, SystemTime},
};
use tempfile::TempDir;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use tokio::{net::UnixStream, process::Child};

type Body = BoxBody<Bytes, Infallible>;

struct Function {
    child: Child,
    dir: TempDir,
}

impl Function {
    fn socket(&self) -> PathBuf {
        self.dir.path().join("lsnr.sock")
    }

    /// Waits for the process to exit and returns its output, with the socket dir still alive.
    async fn output(self) -> (Output, TempDir) {
        let output = tokio::time::timeout(Duration::from_secs(10), self.child.wait_with_output())
            .await
            .expect("testfn did not exit")
            .expect("collecting testfn output");
        (output, self.dir)
    }

    async fn status(&mut self) -> ExitStatus {
        tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .expect("testfn did not exit")
            .expect("waiting for testfn")
    }
}

fn command(dir: &Path, env: &[(&str, &str)]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferrofn-fn-testfn"));
    command
        .env("FN_LISTENER", format!("unix:{}", dir.join("lsnr.sock").display()))
        .env("FN_FORMAT", "http-stream")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Starts testfn and waits (bounded) for its socket link.
async fn start(env: &[(&str, &str)]) -> Function {
    let dir = tempfile::tempdir().unwrap();
    let child = command(dir.path(), env).spawn().expect("spawning testfn");
    let function = Function { child, dir };
    let started = Instant::now();
    while std::fs::symlink_metadata(function.socket()).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "socket never appeared"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    function
}

async fn connect(socket: &Path) -> SendRequest<Body> {
    let stream = UnixStream::connect(socket).await.expect("connecting");
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(connection);
    sender
}

fn deadline_in(duration: Duration) -> String {
    OffsetDateTime::from(SystemTime::now() + duration)
        .format(&Rfc3339)
        .unwrap()
}

fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into()).boxed()
}

struct Reply {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON reply")
    }
}

async fn send(
    sender: &mut SendRequest<Body>,
    deadline: Option<Duration>,
    body: Body,
) -> hyper::Result<Reply> {
    let mut request = Request::post("/call")
        .header("host", "localhost")
        .header("fn-call-id", "knob-call");
    if let Some(deadline) = deadline {
        request = request.header("fn-deadline", deadline_in(deadline));
    }
    let response = sender.send_request(request.body(body).unwrap()).await?;
    let (parts, body) = response.into_parts();
    Ok(Reply {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await?.to_bytes(),
    })
}

/// One call with a 30 s deadline on a fresh connection.
async fn call(function: &Function, body: impl Into<Bytes>) -> hyper::Result<Reply> {
    let mut sender = connect(&function.socket()).await;
    send(&mut sender, Some(Duration::from_secs(30)), full(body)).await
}

#[tokio::test]
async fn default_document_and_opaque_bodies() {
    let function = start(&[]).await;
    let doc = call(&function, "").await.unwrap().json();
    assert_eq!(doc["request"], json!({}));
    assert_eq!(doc["trailer"], json!([]));
    assert_eq!(doc["header"]["Fn-Call-Id"], json!(["knob-call"]));
    assert_eq!(doc["config"]["FN_FORMAT"], "http-stream");
    let doc = call(&function, "plain text, not JSON").await.unwrap().json();
    assert_eq!(doc["request"], "plain text, not JSON");
    assert_eq!(doc["data"]["bodyLength"], 20);
}

#[tokio::test]
async fn deadline_passing_during_sleep_answers_504() {
    let function = start(&[]).await;
    let mut sender = connect(&function.socket()).await;
    let started = Instant::now();
    let reply = send(
        &mut sender,
        Some(Duration::from_millis(1500)),
        full(r#"{"sleepTime":10000}"#),
    )
    .await
    .unwrap();
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(started.elapsed() < Duration::from_secs(5));
    // The function survives and serves the next call on the same connection.
    let reply = send(
        &mut sender,
        Some(Duration::from_secs(30)),
        full(r#"{"sleepTime":50}"#),
    )
    .await
    .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test]
async fn response_shaping_knobs() {
    let function = start(&[]).await;
    let reply = call(&function, r#"{"responseSize":100000}"#).await.unwrap();
    assert_eq!(reply.headers["content-length"], "100000");
    assert_eq!(reply.body.len(), 100_000);
    assert!(
        reply
            .body
            .iter()
            .enumerate()
            .all(|(i, b)| *b == b'a' + (i % 26) as u8)
    );

    let reply = call(&function, r#"{"isEmptyBody":true,"httpStatus":504}"#)
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(reply.body.is_empty());

    let reply = call(
        &function,
        r#"{"invalidResponse":true,"postOutGarbage":"GARBAGE","responseContentType":"text/x"}"#,
    )
    .await
    .unwrap();
    assert_eq!(reply.headers["content-type"], "text/x");
    let text = String::from_utf8(reply.body.to_vec()).unwrap();
    assert!(text.starts_with("Thank you for calling."), "{text}");
    assert!(text.ends_with("}GARBAGE"), "{text}");

    let reply = call(
        &function,
        r#"{"echoContent":"x","trailerRepeat":3,"allocateMemory":1048576}"#,
    )
    .await
    .unwrap();
    assert_eq!(reply.json()["trailer"], json!(["x", "x", "x"]));
}

#[tokio::test]
async fn write_before_read_answers_while_the_body_is_still_open() {
    let function = start(&[]).await;
    let mut sender = connect(&function.socket()).await;
    let (tx, rx) = mpsc::unbounded::<Result<Frame<Bytes>, Infallible>>();
    tx.unbounded_send(Ok(Frame::data(Bytes::from_static(
        br#"{"writeBeforeRead":true}"#,
    ))))
    .unwrap();
    tx.unbounded_send(Ok(Frame::data(Bytes::from(vec![b'z'; 4096]))))
        .unwrap();
    let response = tokio::time::timeout(
        Duration::from_secs(5),
        sender.send_request(
            Request::post("/call")
                .header("host", "localhost")
                .header("fn-deadline", deadline_in(Duration::from_secs(30)))
                .body(BodyExt::boxed(StreamBody::new(rx)))
                .unwrap(),
        ),
    )
    .await
    .expect("no answer while the request body was open")
    .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let doc: Value =
        serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(doc["request"]["writeBeforeRead"], true);
    assert!(doc["data"].get("bodyLength").is_none());
    drop(tx);
}

#[tokio::test]
async fn expect_headers_match_or_kill_the_process() {
    let mut function = start(&[]).await;
    let reply = call(&function, r#"{"expectHeaders":{"Fn-Call-Id":["knob-call"]}}"#)
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert!(
        call(&function, r#"{"expectHeaders":{"Fn-Call-Id":["other"]}}"#)
            .await
            .is_err()
    );
    assert_eq!(function.status().await.code(), Some(1));
}

#[tokio::test]
async fn crash_and_exit_codes() {
    let mut function = start(&[]).await;
    assert!(call(&function, r#"{"isCrash":true}"#).await.is_err());
    assert_eq!(function.status().await.code(), Some(1));

    let mut function = start(&[]).await;
    assert!(call(&function, r#"{"isExit":true,"exitCode":3}"#).await.is_err());
    assert_eq!(function.status().await.code(), Some(3));

    let mut function = start(&[]).await;
    let mut sender = connect(&function.socket()).await;
    assert!(send(&mut sender, None, full("{}")).await.is_err());
    assert_eq!(function.status().await.code(), Some(1));
}

#[tokio::test]
async fn shutdown_with_exit_delay_still_answers_and_logs() {
    let function = start(&[
        ("ENABLE_HEADER", "1"),
        ("ENABLE_FOOTER", "1"),
        ("ENABLE_EXIT_DELAY_MSEC", "300"),
    ])
    .await;
    let socket = function.socket();
    let reply = call(
        &function,
        r#"{"isShutdown":true,"stdout":["out-1","out-2"],"stderr":"err-1","postErrGarbage":"after","isDebug":true}"#,
    )
    .await
    .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.json()["data"].get("DockerHostname").is_some());
    let (output, dir) = function.output().await;
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stdout.contains("out-1\nout-2\n"), "{stdout}");
    for expected in [
        "Container starting",
        "err-1",
        "BeginOfLogs",
        "EndOfLogs",
        "after",
        "Container ending",
    ] {
        assert!(stderr.contains(expected), "{expected} missing from {stderr}");
    }
    // The socket files are removed on the way out.
    assert!(std::fs::symlink_metadata(&socket).is_err());
    assert!(std::fs::symlink_metadata(dir.path().join("phonylsnr.sock")).is_err());
    assert!(dir.path().exists());
}

#[tokio::test]
async fn startup_knobs_and_bad_environment() {
    let dir = tempfile::tempdir().unwrap();
    let status = command(dir.path(), &[("ENABLE_INIT_EXIT", "4")])
        .status()
        .await
        .unwrap();
    assert_eq!(status.code(), Some(4));
    let status = command(dir.path(), &[("FN_FORMAT", "json")])
        .status()
        .await
        .unwrap();
    assert_eq!(status.code(), Some(1));
    let status = command(dir.path(), &[("FN_LISTENER", "tcp:127.0.0.1:1")])
        .status()
        .await
        .unwrap();
    assert_eq!(status.code(), Some(1));

    let started = Instant::now();
    let function = start(&[("ENABLE_INIT_DELAY_MSEC", "400")]).await;
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert_eq!(call(&function, "{}").await.unwrap().status, StatusCode::OK);
}

#[tokio::test]
async fn sigterm_stops_the_server_cleanly() {
    let function = start(&[("ENABLE_FOOTER", "1")]).await;
    let socket = function.socket();
    let pid = function.child.id().expect("running").to_string();
    let killed = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(killed.success());
    let (output, dir) = function.output().await;
    assert!(output.status.success(), "{:?}", output.status);
    assert!(dir.path().exists());
    assert!(String::from_utf8_lossy(&output.stderr).contains("Container ending"));
    assert!(std::fs::symlink_metadata(&socket).is_err());
}
