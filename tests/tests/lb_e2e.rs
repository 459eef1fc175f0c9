//! End-to-end acceptance of the LB with real parts: one `ferrofn-lb` process in front of two real
//! `ferrofn-runner` processes over mTLS (certificates generated at test time), the testfn image on
//! the real Docker engine. Calls, headers, sizes and error codes; detached calls; NACK fail-over;
//! a killed runner routed around and used again after its restart; limits; client cancellation.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use bollard::Docker;
use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tempfile::TempDir;

use ferrofn_common::certs::{ClusterCertOptions, generate_cluster};
use ferrofn_common::tls::TlsFiles;
use ferrofn_lb::placer::ch;
use ferrofn_tests::images::{FnImage, TESTFN_IMAGE, ensure_image};
use ferrofn_tests::lb_proc::{LbBinary, Resp, json as call, request};
use ferrofn_tests::runner_proc::{RunnerProc, containers_of, eventually, unique_name};

/// Bound on anything that should happen promptly (probes every 200 ms, warm calls, cold starts).
const PROMPT: Duration = Duration::from_secs(20);
const MIB: usize = 1 << 20;
/// The LB's `FN_MAX_REQUEST_SIZE` in these tests.
const MAX_REQUEST: usize = MIB;

/// One runner's identity and mTLS flags, kept so that it can be restarted as itself.
struct RunnerSpec {
    name: String,
    env: Vec<(String, String)>,
    args: Vec<String>,
}

impl RunnerSpec {
    fn new(certs: &TempDir, cert_name: &str, env: &[(&str, &str)]) -> Self {
        let files = TlsFiles::runner_in(certs.path(), cert_name);
        let args = [
            ("--tls-ca", files.ca),
            ("--tls-cert", files.cert),
            ("--tls-key", files.key),
        ]
        .into_iter()
        .flat_map(|(flag, path)| [flag.to_string(), path.display().to_string()])
        .collect();
        Self {
            name: unique_name(&format!("e2e{cert_name}")),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            args,
        }
    }

    fn env(&self) -> Vec<(&str, &str)> {
        self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
    }

    fn args(&self) -> Vec<&str> {
        self.args.iter().map(String::as_str).collect()
    }

    async fn start(&self) -> Result<RunnerProc> {
        RunnerProc::start_tls(&self.name, &self.env(), &self.args()).await
    }

    async fn restart(&self, dir: TempDir, grpc_port: u16) -> Result<RunnerProc> {
        RunnerProc::restart_tls(dir, &self.name, &self.env(), &self.args(), grpc_port).await
    }
}

/// Certificates, two mTLS runners (`a` first in the LB's list, then `b`), and the LB binary with
/// its client certificate, the `ch` placer (so a fn's home runner is known) and fast probes.
struct Stack {
    docker: Docker,
    specs: [RunnerSpec; 2],
    runners: [Option<RunnerProc>; 2],
    lb: LbBinary,
    _certs: TempDir,
    _db: TempDir,
}

impl Stack {
    async fn start(env_a: &[(&str, &str)], env_b: &[(&str, &str)]) -> Result<Self> {
        Self::start_with(env_a, env_b, &[]).await
    }

    /// As [`Stack::start`], with extra LB settings.
    async fn start_with(
        env_a: &[(&str, &str)],
        env_b: &[(&str, &str)],
        lb_env: &[(&str, &str)],
    ) -> Result<Self> {
        let docker = ferrofn_tests::docker::connect().await?;
        ensure_image(&docker, FnImage::Testfn).await?;
        ferrofn_common::tls::install_crypto_provider();
        let certs = tempfile::tempdir()?;
        let opts = ClusterCertOptions {
            runner_names: vec!["a".into(), "b".into()],
            ..Default::default()
        };
        generate_cluster(certs.path(), &opts).context("generating the cluster certificates")?;
        let specs = [
            RunnerSpec::new(&certs, "a", env_a),
            RunnerSpec::new(&certs, "b", env_b),
        ];
        let (a, b) = tokio::try_join!(specs[0].start(), specs[1].start())?;
        let db = tempfile::tempdir()?;
        let db_url = format!("sqlite3://{}", db.path().join("fn.db").display());
        let addrs = format!("{},{}", a.grpc_addr, b.grpc_addr);
        let lb_tls = TlsFiles::lb_in(certs.path());
        let (ca, cert, key) = (
            lb_tls.ca.display().to_string(),
            lb_tls.cert.display().to_string(),
            lb_tls.key.display().to_string(),
        );
        let max = MAX_REQUEST.to_string();
        let mut env = lb_env.to_vec();
        env.extend_from_slice(&[
            ("FN_RUNNER_ADDRESSES", addrs.as_str()),
            ("FN_DB_URL", db_url.as_str()),
            ("FN_PLACER", "ch"),
            ("FERROFN_HEALTH_INTERVAL_MSECS", "200"),
            ("FN_MAX_REQUEST_SIZE", max.as_str()),
            ("FERROFN_TLS_CA", ca.as_str()),
            ("FERROFN_TLS_CERT", cert.as_str()),
            ("FERROFN_TLS_KEY", key.as_str()),
            ("RUST_LOG", "info,ferrofn_lb=debug"),
            ("NO_COLOR", "1"),
        ]);
        let lb = LbBinary::start(&[], &env).await?;
        let stack = Stack {
            docker,
            specs,
            runners: [Some(a), Some(b)],
            lb,
            _certs: certs,
            _db: db,
        };
        for i in 0..2 {
            stack.wait_runner_state(i, "up").await?;
        }
        Ok(stack)
    }

    fn runner(&self, i: usize) -> &RunnerProc {
        self.runners[i].as_ref().expect("runner running")
    }

    /// The LB's name for runner `i` (its address in `FN_RUNNER_ADDRESSES`).
    fn addr(&self, i: usize) -> String {
        self.runner(i).grpc_addr.to_string()
    }

    fn lb_log(&self) -> String {
        self.lb.stderr.lock().unwrap().clone()
    }

    /// Polls the LB's `/metrics` until `lb_runner_up{runner=<i>,state=<state>}` is 1.
    async fn wait_runner_state(&self, i: usize, state: &str) -> Result<()> {
        let url = self.lb.url("/metrics");
        let runner = self.addr(i);
        let labels = [("runner", runner.as_str()), ("state", state)];
        eventually(&format!("LB sees runner {runner} {state}"), PROMPT, || async {
            let text = get_text(&url).await.unwrap_or_default();
            metric(&text, "lb_runner_up", &labels) == 1.0
        })
        .await
        .with_context(|| format!("LB log:\n{}", tail(&self.lb_log())))
    }

    /// Waits until runner `i` has no call in flight (its outcome counters are then final).
    async fn settle(&self, i: usize) -> Result<()> {
        let r = self.runner(i);
        eventually(&format!("no call in flight on {}", r.name), PROMPT, || async {
            runner_metric(r, "ferrofn_runner_inflight_calls", &[]).await.ok() == Some(0.0)
        })
        .await
    }

    /// `ferrofn_runner_calls_total{outcome=<outcome>}` of runner `i`.
    async fn calls(&self, i: usize, outcome: &str) -> Result<f64> {
        runner_metric(
            self.runner(i),
            "ferrofn_runner_calls_total",
            &[("outcome", outcome)],
        )
        .await
    }

    /// Creates the app `name`; its id.
    async fn app(&self, name: &str) -> Result<String> {
        let r = call("POST", &self.lb.url("/v2/apps"), Some(json!({"name": name}))).await?;
        ensure!(r.status == 200, "creating app {name}: {} {}", r.status, r.text());
        Ok(r.json()["id"].as_str().context("app id")?.to_string())
    }

    async fn function(&self, app_id: &str, name: &str, timeout: u32) -> Result<String> {
        let r = call(
            "POST",
            &self.lb.url("/v2/fns"),
            Some(json!({"app_id": app_id, "name": name, "image": TESTFN_IMAGE.as_str(), "timeout": timeout})),
        )
        .await?;
        ensure!(r.status == 200, "creating fn {name}: {} {}", r.status, r.text());
        Ok(r.json()["id"].as_str().context("fn id")?.to_string())
    }

    async fn trigger(&self, app_id: &str, fn_id: &str, source: &str) -> Result<()> {
        let r = call(
            "POST",
            &self.lb.url("/v2/triggers"),
            Some(
                json!({"app_id": app_id, "fn_id": fn_id, "name": source.trim_start_matches('/'),
                        "type": "http", "source": source}),
            ),
        )
        .await?;
        ensure!(
            r.status == 200,
            "creating trigger {source}: {} {}",
            r.status,
            r.text()
        );
        Ok(())
    }

    /// POSTs `body` to `path` on the LB with `headers`.
    async fn post(&self, path: &str, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Result<Resp> {
        let headers: BTreeMap<&str, &str> = headers.iter().copied().collect();
        request("POST", &self.lb.url(path), &headers, body).await
    }

    /// Stops the LB (SIGTERM, must exit 0), then drains both runners and checks they left nothing.
    async fn finish(mut self) -> Result<()> {
        self.lb.signal("TERM")?;
        let status = tokio::time::timeout(PROMPT, self.lb.child.wait())
            .await
            .context("LB did not exit after SIGTERM")??;
        let lb_log = self.lb_log();
        let mut errors = Vec::new();
        for r in self.runners.iter_mut() {
            if let Some(r) = r.take()
                && let Err(e) = r.drain_and_check(&self.docker).await
            {
                errors.push(format!("{e:#}"));
            }
        }
        ensure!(status.success(), "LB exit {status}; log:\n{}", tail(&lb_log));
        ensure!(errors.is_empty(), "runner drain: {errors:?}");
        Ok(())
    }
}

async fn get_text(url: &str) -> Result<String> {
    let r = request("GET", url, &BTreeMap::new(), Bytes::new()).await?;
    ensure!(r.status == 200, "GET {url}: {}", r.status);
    Ok(r.text())
}

/// Sum of the samples of `name` whose labels include every `labels` pair (0 when absent).
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = match series.split_once('{') {
                Some((n, rest)) => (n, rest),
                None => (series, ""),
            };
            (n == name && labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
                .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

async fn runner_metric(r: &RunnerProc, name: &str, labels: &[(&str, &str)]) -> Result<f64> {
    let text = get_text(&format!("http://{}/metrics", r.http_addr)).await?;
    Ok(metric(&text, name, labels))
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// The `ch` home (0 = a, 1 = b) of `fn_id` among the two runners.
fn home(fn_id: &str) -> usize {
    ch::home(fn_id, 2)
}

fn knobs(v: Value) -> String {
    v.to_string()
}

/// Asserts an Fn error response: `status` and `{"message": <message>}`.
fn assert_error(r: &Resp, status: u16, message: &str, what: &str) {
    assert_eq!(r.status, status, "{what}: {}", r.text());
    assert_eq!(r.json(), json!({"message": message}), "{what}");
}

fn assert_pattern(r: &Resp, len: usize, what: &str) {
    assert_eq!(
        r.status,
        200,
        "{what}: {}",
        String::from_utf8_lossy(&r.body[..r.body.len().min(300)])
    );
    assert_eq!(r.body.len(), len, "{what}: response length");
    let bad = r
        .body
        .iter()
        .enumerate()
        .find(|(i, b)| **b != b'a' + (*i % 26) as u8);
    assert!(
        bad.is_none(),
        "{what}: response differs at byte {:?}",
        bad.map(|(i, _)| i)
    );
}

/// A body of unknown length (chunked) of `len` bytes, sent on a fresh connection.
async fn post_chunked(addr: SocketAddr, path: &str, len: usize) -> Result<u16> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let conn = tokio::spawn(conn);
    let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
    let frames =
        (0..len.div_ceil(chunk.len())).map(move |_| Ok::<_, std::io::Error>(Frame::data(chunk.clone())));
    let req = hyper::Request::post(path)
        .header(hyper::header::HOST, addr.to_string())
        .body(StreamBody::new(futures::stream::iter(frames)))?;
    let resp = sender.send_request(req).await.context("chunked request")?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    conn.abort();
    let v: Value = serde_json::from_slice(&body).unwrap_or_default();
    ensure!(
        status != 413 || v["message"].as_str().is_some_and(|m| m.contains("too large")),
        "413 without Fn's message: {}",
        String::from_utf8_lossy(&body)
    );
    Ok(status)
}

/// Invoke and trigger calls through the LB and two mTLS runners: echo, headers both ways, a 5 MiB
/// response, an empty one, status mapping, crash, timeout, unknown fn, request size limit, a client
/// that goes away mid-call, and a detached call answered before its function finishes.
#[tokio::test]
async fn calls_through_lb_and_two_mtls_runners() -> Result<()> {
    let stack = Stack::start(&[], &[]).await?;
    let app = stack.app("e2e").await?;
    let echo = stack.function(&app, "echo", 30).await?;
    let short = stack.function(&app, "short", 1).await?;
    let sleeper = stack.function(&app, "sleeper", 30).await?;
    stack.trigger(&app, &echo, "/echo").await?;
    let invoke = format!("/invoke/{echo}");
    let trig = "/t/e2e/echo";

    // Echo, both routes; the first call also pays the cold start.
    for path in [invoke.as_str(), trig] {
        let r = stack
            .post(
                path,
                &[("content-type", "application/json")],
                knobs(json!({"echoContent": "hi"})),
            )
            .await?;
        assert_eq!(
            r.status,
            200,
            "echo via {path}: {}\nLB log:\n{}",
            r.text(),
            tail(&stack.lb_log())
        );
        assert_eq!(r.json()["request"]["echoContent"], json!("hi"), "echo via {path}");
        assert_eq!(r.header("fn-call-id").len(), 26, "Fn-Call-Id via {path}");
    }
    // Only the echo fn's home runner ran it (ch, neither runner busy).
    let h = home(&echo);
    assert_eq!(stack.calls(h, "ok").await?, 2.0, "echo calls on its home runner");
    assert_eq!(
        stack.calls(1 - h, "ok").await?,
        0.0,
        "echo calls on the other runner"
    );

    // Headers on /invoke: the request header reaches the function as is (expectHeaders makes the
    // function exit on a mismatch), and returned headers come back as they were set.
    let r = stack
        .post(
            &invoke,
            &[("x-custom-in", "v1")],
            knobs(json!({"expectHeaders": {"X-Custom-In": ["v1"]},
                         "returnHeaders": {"X-Custom-Out": ["o1", "o2"]}})),
        )
        .await?;
    assert_eq!(r.status, 200, "invoke headers: {}", r.text());
    assert_eq!(r.json()["header"]["X-Custom-In"], json!(["v1"]));
    let outs: Vec<_> = r
        .headers
        .get_all("x-custom-out")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert_eq!(outs, ["o1", "o2"], "returned headers on /invoke");
    // On a trigger: request headers arrive renamed `Fn-Http-H-*`; the function's headers travel
    // encapsulated and the LB renames them back, dropping `Fn-Http-Status`.
    let r = stack
        .post(
            trig,
            &[("x-custom-in", "v1")],
            knobs(json!({"expectHeaders": {"Fn-Http-H-X-Custom-In": ["v1"]},
                         "returnHeaders": {"X-Custom-Out": ["t1"]}})),
        )
        .await?;
    assert_eq!(r.status, 200, "trigger headers: {}", r.text());
    let seen = &r.json()["header"];
    assert_eq!(seen["Fn-Http-H-X-Custom-In"], json!(["v1"]), "{seen}");
    // The FDK also hands the function an un-prefixed copy.
    assert_eq!(seen["X-Custom-In"], json!(["v1"]), "{seen}");
    assert_eq!(
        r.header("x-custom-out"),
        "t1",
        "trigger response header renamed: {:?}",
        r.headers
    );
    assert!(
        r.headers.get("fn-http-h-x-custom-out").is_none(),
        "{:?}",
        r.headers
    );
    assert!(r.headers.get("fn-http-status").is_none(), "{:?}", r.headers);

    // 5 MiB response and an empty one, both routes.
    for path in [invoke.as_str(), trig] {
        let r = stack
            .post(path, &[], knobs(json!({"responseSize": 5 * MIB})))
            .await?;
        assert_pattern(&r, 5 * MIB, &format!("5 MiB via {path}"));
        let r = stack.post(path, &[], knobs(json!({"isEmptyBody": true}))).await?;
        assert_eq!(
            (r.status, r.body.len()),
            (200, 0),
            "empty via {path}: {}",
            r.text()
        );
    }

    // Status mapping of trigger calls: the function's status is the HTTP status.
    for code in [202u16, 404] {
        let r = stack
            .post(
                trig,
                &[],
                knobs(json!({"responseCode": code, "echoContent": "c"})),
            )
            .await?;
        assert_eq!(r.status, code, "trigger responseCode {code}: {}", r.text());
        assert_eq!(r.json()["request"]["echoContent"], json!("c"));
    }
    // A crash is Fn's 502; a call outliving its fn timeout (1 s) is Fn's 504.
    for path in [invoke.as_str(), trig] {
        let r = stack.post(path, &[], knobs(json!({"isCrash": true}))).await?;
        assert_error(
            &r,
            502,
            "error receiving function response",
            &format!("crash via {path}"),
        );
    }
    let t0 = Instant::now();
    let r = stack
        .post(
            &format!("/invoke/{short}"),
            &[],
            knobs(json!({"sleepTime": 5000})),
        )
        .await?;
    assert_error(&r, 504, "Timed out", "timeout");
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "504 only after {:?}",
        t0.elapsed()
    );

    // Unknown fn, and the request size limit with and without a Content-Length.
    let r = stack
        .post("/invoke/01ARZ3NDEKTSV4RRFFQ69G5FAV", &[], "{}")
        .await?;
    assert_error(&r, 404, "Fn not found", "unknown fn");
    let r = stack.post(&invoke, &[], vec![b'x'; MAX_REQUEST + 1]).await?;
    assert_error(
        &r,
        413,
        &format!(
            "Content-Length too large for this server, {} > max {MAX_REQUEST}",
            MAX_REQUEST + 1
        ),
        "declared length over the limit",
    );
    let calls_before = stack.calls(h, "ok").await?;
    let status = post_chunked(stack.lb.addr, &invoke, MAX_REQUEST + 256 * 1024).await?;
    assert_eq!(status, 413, "chunked body over the limit");
    let status = post_chunked(stack.lb.addr, &invoke, MAX_REQUEST / 2).await?;
    assert_eq!(status, 200, "chunked body under the limit");
    assert_eq!(
        stack.calls(h, "ok").await?,
        calls_before + 1.0,
        "only the small chunked call ran"
    );

    // A client that goes away mid-call: the runner ends the call (outcome `canceled`, nothing in
    // flight) long before the function's 10 s sleep would.
    let sh = home(&sleeper);
    let warm = stack.post(&format!("/invoke/{sleeper}"), &[], "{}").await?;
    assert_eq!(warm.status, 200, "warming the sleeper: {}", warm.text());
    // The LB may answer before the runner has finished with an aborted call (the 413 above):
    // read the baseline once nothing is in flight there.
    stack.settle(sh).await?;
    let canceled_before = stack.calls(sh, "canceled").await?;
    let failed_before = stack.calls(sh, "500").await?;
    let stream = tokio::net::TcpStream::connect(stack.lb.addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let conn = tokio::spawn(conn);
    let req = hyper::Request::post(format!("/invoke/{sleeper}"))
        .header(hyper::header::HOST, stack.lb.addr.to_string())
        .body(http_body_util::Full::new(Bytes::from(knobs(
            json!({"sleepTime": 10_000}),
        ))))?;
    let pending = tokio::spawn(async move { sender.send_request(req).await });
    let runner = stack.runner(sh);
    eventually("the sleeping call runs on its home runner", PROMPT, || async {
        runner_metric(runner, "ferrofn_runner_inflight_calls", &[])
            .await
            .unwrap_or(0.0)
            == 1.0
    })
    .await?;
    let dropped = Instant::now();
    pending.abort();
    conn.abort();
    eventually(
        "the runner ends the abandoned call",
        Duration::from_secs(5),
        || async {
            runner_metric(runner, "ferrofn_runner_inflight_calls", &[])
                .await
                .unwrap_or(1.0)
                == 0.0
        },
    )
    .await
    .with_context(|| format!("runner log:\n{}", tail(&runner.logs())))?;
    assert_eq!(
        stack.calls(sh, "canceled").await?,
        canceled_before + 1.0,
        "the abandoned call ended as canceled on the runner"
    );
    assert_eq!(
        stack.calls(sh, "500").await?,
        failed_before,
        "a call its client abandoned is no failure of the runner"
    );
    assert!(
        dropped.elapsed() < Duration::from_secs(5),
        "{:?}",
        dropped.elapsed()
    );
    // ... and the runner goes on serving the fn.
    let r = stack
        .post(
            &format!("/invoke/{sleeper}"),
            &[],
            knobs(json!({"echoContent": "next"})),
        )
        .await?;
    assert_eq!(r.status, 200, "call after the abandoned one: {}", r.text());

    // Detached: the sleeper's container is warm (the calls above), so the 202 measures the LB and
    // runner hand-off, not a cold start. The function then really runs its 10 s on the runner.
    stack.settle(sh).await?;
    let ok_before = stack.calls(sh, "ok").await?;
    let t0 = Instant::now();
    let r = stack
        .post(
            &format!("/invoke/{sleeper}"),
            &[("fn-invoke-type", "detached")],
            knobs(json!({"sleepTime": 10_000})),
        )
        .await?;
    let took = t0.elapsed();
    assert_eq!(r.status, 202, "detached: {}", r.text());
    assert!(took < Duration::from_secs(1), "detached 202 took {took:?}");
    assert_eq!(r.header("fn-call-id").len(), 26);
    assert_eq!(
        runner_metric(stack.runner(sh), "ferrofn_runner_inflight_calls", &[]).await?,
        1.0,
        "the detached function is still running after the 202"
    );
    let runner = stack.runner(sh);
    eventually("the detached call completes on the runner", PROMPT, || async {
        runner_metric(runner, "ferrofn_runner_calls_total", &[("outcome", "ok")])
            .await
            .unwrap_or(0.0)
            > ok_before
    })
    .await?;
    assert!(
        t0.elapsed() >= Duration::from_secs(10),
        "detached call ended after {:?}",
        t0.elapsed()
    );

    stack.finish().await
}

/// A full runner NACKs and the call lands on the other one; a runner killed while idle is marked
/// down and routed around; once restarted on its address it serves its fns again.
#[tokio::test]
async fn nack_fail_over_and_killed_runner_routed_around() -> Result<()> {
    // Runner a has room for exactly one 128 MB container.
    let stack = Stack::start(&[("FN_MAX_TOTAL_MEMORY_BYTES", "209715200")], &[]).await?;
    let app = stack.app("fo").await?;
    // Two fns whose ch home is runner a (each new id is a's with probability 1/2).
    let mut on_a = Vec::new();
    for i in 0..40 {
        let id = stack.function(&app, &format!("f{i}"), 30).await?;
        if home(&id) == 0 {
            on_a.push(id);
        }
        if on_a.len() == 2 {
            break;
        }
    }
    let [x, y] = <[String; 2]>::try_from(on_a).map_err(|v| anyhow::anyhow!("homes on a: {v:?}"))?;

    // x sleeps on a, filling it.
    let sleeping = {
        let url = stack.lb.url(&format!("/invoke/{x}"));
        tokio::spawn(async move {
            request("POST", &url, &BTreeMap::new(), knobs(json!({"sleepTime": 4000}))).await
        })
    };
    let a = stack.runner(0);
    eventually("x runs on a", PROMPT, || async {
        runner_metric(a, "ferrofn_runner_inflight_calls", &[])
            .await
            .unwrap_or(0.0)
            == 1.0
            && containers_of(&stack.docker, &a.name)
                .await
                .map(|c| c.len())
                .unwrap_or(0)
                == 1
    })
    .await?;
    // y's home is a too: a NACKs (no memory), b serves it.
    let r = stack
        .post(&format!("/invoke/{y}"), &[], knobs(json!({"echoContent": "y"})))
        .await?;
    assert_eq!(
        r.status,
        200,
        "y: {}\nLB log:\n{}",
        r.text(),
        tail(&stack.lb_log())
    );
    assert_eq!(r.json()["config"]["FN_FN_ID"], json!(y));
    assert!(stack.calls(0, "nack").await? >= 1.0, "a NACKed y");
    assert_eq!(
        runner_metric(a, "ferrofn_runner_nacks_total", &[("reason", "no capacity")]).await?,
        stack.calls(0, "nack").await?,
        "a's NACKs were for capacity"
    );
    assert_eq!(stack.calls(1, "ok").await?, 1.0, "b served y");
    assert_eq!(
        containers_of(&stack.docker, &stack.runner(1).name).await?.len(),
        1,
        "y's container on b"
    );
    let r = sleeping.await??;
    assert_eq!(r.status, 200, "x: {}", r.text());
    assert_eq!(stack.calls(0, "ok").await?, 1.0, "a served x");

    // Kill a while idle: the LB marks it down and x's calls go to b.
    let mut stack = stack;
    let a = stack.runners[0].take().expect("a");
    let a_addr = a.grpc_addr;
    let dir = a.kill().await?;
    let down_labels = [("runner", a_addr.to_string()), ("state", "down".to_string())];
    let url = stack.lb.url("/metrics");
    eventually("LB marks a down", PROMPT, || async {
        let text = get_text(&url).await.unwrap_or_default();
        let labels: Vec<(&str, &str)> = down_labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
        metric(&text, "lb_runner_up", &labels) == 1.0
    })
    .await
    .with_context(|| format!("LB log:\n{}", tail(&stack.lb_log())))?;
    for i in 0..3 {
        let r = stack
            .post(&format!("/invoke/{x}"), &[], knobs(json!({"echoContent": i})))
            .await?;
        assert_eq!(r.status, 200, "x with a down: {}", r.text());
        assert_eq!(r.json()["request"]["echoContent"], json!(i));
    }
    assert_eq!(stack.calls(1, "ok").await?, 4.0, "b served x while a was down");

    // Restart a on its address: the LB probes it up and x goes home again.
    let a = stack.specs[0].restart(dir, a_addr.port()).await?;
    assert_eq!(a.grpc_addr, a_addr);
    stack.runners[0] = Some(a);
    stack.wait_runner_state(0, "up").await?;
    let r = stack
        .post(
            &format!("/invoke/{x}"),
            &[],
            knobs(json!({"echoContent": "back"})),
        )
        .await?;
    assert_eq!(r.status, 200, "x after a's restart: {}", r.text());
    assert_eq!(stack.calls(0, "ok").await?, 1.0, "the restarted a served x");
    assert_eq!(stack.calls(1, "ok").await?, 4.0, "b did not");

    stack.finish().await
}

/// Issue 10 (6): with `FN_MAX_RESPONSE_SIZE` on the runners, a response over it is Fn's 502 through
/// the streaming LB, never a 200 with a cut body, whether the function declares its length or not,
/// and even with a response head buffer far smaller than the response; responses that fit stream
/// through whole.
#[tokio::test]
async fn response_over_the_runner_limit_is_an_error_never_a_cut_body() -> Result<()> {
    const LIMIT: usize = 256 * 1024;
    let limit = LIMIT.to_string();
    let runner_env = [("FN_MAX_RESPONSE_SIZE", limit.as_str())];
    let stack = Stack::start_with(
        &runner_env,
        &runner_env,
        &[("FERROFN_RESPONSE_HEAD_BYTES", "1024")],
    )
    .await?;
    let app = stack.app("limits").await?;
    let f = stack.function(&app, "big", 30).await?;
    let path = format!("/invoke/{f}");
    let too_large = json!({"message": "function response body too large"});
    // Echo: the answer streams with no declared length (chunked) and is as long as the request.
    for (len, fits) in [(LIMIT / 2, true), (2 * LIMIT, false)] {
        let mut body = br#"{"echoBody":true}"#.to_vec();
        body.resize(len, b'x');
        let r = stack.post(&path, &[], body.clone()).await?;
        if fits {
            assert_eq!(r.status, 200, "echo of {len}: {}", r.text());
            assert!(r.body == body, "echo of {len} came back whole");
        } else {
            assert_eq!((r.status, r.json()), (502, too_large.clone()), "echo of {len}");
        }
    }
    // A declared length (testfn's responseSize sends Content-Length).
    for (len, fits) in [(LIMIT, true), (LIMIT + 1, false)] {
        let r = stack
            .post(&path, &[], knobs(json!({"responseSize": len})))
            .await?;
        if fits {
            assert_eq!((r.status, r.body.len()), (200, len), "responseSize {len}");
        } else {
            assert_eq!(
                (r.status, r.json()),
                (502, too_large.clone()),
                "responseSize {len}"
            );
        }
    }
    stack.finish().await
}
