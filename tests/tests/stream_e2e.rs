//! End to end full duplex: a real `ferrofn-lb` process in front of a real `ferrofn-runner` process
//! (plaintext) and the testfn image echoing (`{"echoBody":true}`) a generated body while it reads
//! it. 16 MiB and then 256 MiB go up and come back through LB -> runner -> function; the response
//! is checked byte for byte, and the peak RSS growth of both processes stays under a fixed bound.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::sync::oneshot;

use ferrofn_tests::images::{FnImage, TESTFN_IMAGE, ensure_image};
use ferrofn_tests::lb_proc::{LbBinary, json as call};
use ferrofn_tests::runner_proc::{RunnerProc, containers_of, remove_containers_of};

const MIB: u64 = 1 << 20;
/// The stated bound: neither process may grow its peak RSS by this much over its warm baseline,
/// whatever the body size (the body is 4x this for the large run).
const RSS_GROWTH_BOUND: u64 = 64 * MIB;
/// Wall-clock limit of one transfer.
const TRANSFER_LIMIT: Duration = Duration::from_secs(120);
const KNOBS: &[u8] = br#"{"echoBody":true}"#;
/// Period of the generated pattern: prime, so it never lines up with frame or chunk sizes.
const PERIOD: usize = 251;
/// Generated chunk size.
const CHUNK: usize = 64 * 1024;

/// `PERIOD`-periodic bytes, long enough to slice any chunk (or piece of one) at any phase.
fn pattern_base() -> Bytes {
    let len = PERIOD * (CHUNK / PERIOD + 2);
    Bytes::from((0..len).map(|i| (i % PERIOD) as u8 ^ 0x5a).collect::<Vec<u8>>())
}

/// The request body of `size` bytes as a stream of chunks: the knobs, then the pattern (the
/// pattern's phase is the absolute offset, so the echo can be checked by position).
fn body_stream(size: u64, base: Bytes) -> impl futures::Stream<Item = Result<Frame<Bytes>, std::io::Error>> {
    futures::stream::unfold(0u64, move |off| {
        let base = base.clone();
        async move {
            if off >= size {
                return None;
            }
            let chunk = if off == 0 {
                Bytes::from_static(KNOBS)
            } else {
                let len = (size - off).min(CHUNK as u64) as usize;
                let phase = (off % PERIOD as u64) as usize;
                base.slice(phase..phase + len)
            };
            let next = off + chunk.len() as u64;
            Some((Ok(Frame::data(chunk)), next))
        }
    })
}

/// Checks one response chunk at absolute offset `off` against the request body.
fn check_chunk(off: u64, chunk: &[u8], base: &[u8]) -> Result<()> {
    let mut off = off;
    let mut rest = chunk;
    while !rest.is_empty() {
        let (n, ok) = if off < KNOBS.len() as u64 {
            let n = rest.len().min(KNOBS.len() - off as usize);
            (n, rest[..n] == KNOBS[off as usize..off as usize + n])
        } else {
            let n = rest.len().min(CHUNK);
            let phase = (off % PERIOD as u64) as usize;
            (n, rest[..n] == base[phase..phase + n])
        };
        ensure!(
            ok,
            "echoed bytes differ from the request in [{off}, {})",
            off + n as u64
        );
        off += n as u64;
        rest = &rest[n..];
    }
    Ok(())
}

/// `VmRSS` and `VmHWM` of `pid`, in bytes.
fn rss(pid: u32) -> Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .with_context(|| format!("no {name} in /proc/{pid}/status"))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// Samples the largest `VmRSS` of each pid every 20 ms until told to stop.
fn sample_rss(pids: [u32; 2]) -> (oneshot::Sender<()>, tokio::task::JoinHandle<[u64; 2]>) {
    let (stop_tx, mut stop) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let mut max = [0u64; 2];
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        loop {
            for (m, pid) in max.iter_mut().zip(pids) {
                if let Ok((now, _)) = rss(pid) {
                    *m = (*m).max(now);
                }
            }
            tokio::select! {
                _ = tick.tick() => {}
                _ = &mut stop => return max,
            }
        }
    });
    (stop_tx, task)
}

/// POSTs a generated `size`-byte echo body to `path` and checks the streamed response; returns the
/// response length.
async fn echo(lb: &LbBinary, path: &str, size: u64, base: Bytes) -> Result<u64> {
    let stream = tokio::net::TcpStream::connect(lb.addr).await?;
    stream.set_nodelay(true)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let conn = tokio::spawn(conn);
    let req = hyper::Request::post(path)
        .header(hyper::header::HOST, lb.addr.to_string())
        .header(hyper::header::CONTENT_LENGTH, size)
        .body(StreamBody::new(body_stream(size, base.clone())))?;
    let resp = sender.send_request(req).await.context("sending the request")?;
    let status = resp.status();
    let mut body = resp.into_body();
    if status != 200 {
        let text = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        bail!("status {status}: {}", String::from_utf8_lossy(&text));
    }
    let mut got = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.with_context(|| format!("response body broke after {got} bytes"))?;
        if let Ok(data) = frame.into_data() {
            check_chunk(got, &data, &base)?;
            got += data.len() as u64;
        }
    }
    conn.abort();
    Ok(got)
}

/// Peak RSS of one transfer, per process.
#[derive(Debug)]
struct Peaks {
    /// Largest sampled VmRSS during the transfer.
    lb_rss: u64,
    runner_rss: u64,
    /// VmHWM after the transfer minus VmHWM before it.
    lb_hwm_growth: u64,
    runner_hwm_growth: u64,
    took: Duration,
}

async fn measured_echo(
    lb: &LbBinary,
    runner: &RunnerProc,
    path: &str,
    size: u64,
    base: &Bytes,
    baseline: (u64, u64),
) -> Result<Peaks> {
    let lb_pid = lb.child.id().context("LB exited")?;
    let (stop, sampler) = sample_rss([lb_pid, runner.pid()]);
    let started = Instant::now();
    let got = tokio::time::timeout(TRANSFER_LIMIT, echo(lb, path, size, base.clone()))
        .await
        .with_context(|| format!("{} MiB echo took over {TRANSFER_LIMIT:?}", size / MIB))?
        .with_context(|| {
            format!(
                "{} MiB echo; runner log tail:\n{}",
                size / MIB,
                tail(&runner.logs())
            )
        })?;
    let took = started.elapsed();
    let _ = stop.send(());
    let [lb_rss, runner_rss] = sampler.await?;
    ensure!(got == size, "echoed {got} of {size} bytes");
    let (_, lb_hwm) = rss(lb_pid)?;
    let (_, runner_hwm) = rss(runner.pid())?;
    Ok(Peaks {
        lb_rss,
        runner_rss,
        lb_hwm_growth: lb_hwm.saturating_sub(baseline.0),
        runner_hwm_growth: runner_hwm.saturating_sub(baseline.1),
        took,
    })
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// A runner, an LB binary in front of it (plaintext, fast health probes), an app and an echo fn.
struct Stack {
    docker: bollard::Docker,
    runner: RunnerProc,
    lb: LbBinary,
    /// `/invoke/{fn_id}`.
    path: String,
    _db_dir: tempfile::TempDir,
}

impl Stack {
    async fn start() -> Result<Self> {
        let docker = ferrofn_tests::docker::connect().await?;
        ensure_image(&docker, FnImage::Testfn).await?;
        let runner = RunnerProc::start(&[]).await?;
        let dir = tempfile::tempdir()?;
        let db = format!("sqlite3://{}", dir.path().join("fn.db").display());
        let addr = runner.grpc_addr.to_string();
        let lb = LbBinary::start(
            &["--plaintext"],
            &[
                ("FN_RUNNER_ADDRESSES", addr.as_str()),
                ("FN_DB_URL", db.as_str()),
                ("FERROFN_HEALTH_INTERVAL_MSECS", "200"),
            ],
        )
        .await?;
        let app = call("POST", &lb.url("/v2/apps"), Some(json!({"name": "stream"})))
            .await?
            .json();
        let f = call(
            "POST",
            &lb.url("/v2/fns"),
            Some(
                json!({"app_id": app["id"], "name": "echo", "image": TESTFN_IMAGE.as_str(), "timeout": 120}),
            ),
        )
        .await?
        .json();
        let fn_id = f["id"].as_str().with_context(|| format!("no fn id in {f}"))?;
        let path = format!("/invoke/{fn_id}");
        Ok(Stack {
            docker,
            runner,
            lb,
            path,
            _db_dir: dir,
        })
    }

    /// Drains the runner (the LB goes first) and checks that it left no container.
    async fn finish(self) -> Result<()> {
        let Stack {
            docker,
            mut runner,
            lb,
            ..
        } = self;
        drop(lb);
        runner.sigterm()?;
        let status = runner.wait_exit(Duration::from_secs(60)).await?;
        let left = containers_of(&docker, &runner.name).await?;
        if !left.is_empty() {
            remove_containers_of(&docker, &runner.name).await?;
        }
        ensure!(
            status.success(),
            "runner exit {status}; log:\n{}",
            tail(&runner.logs())
        );
        ensure!(left.is_empty(), "containers left after the drain: {left:?}");
        Ok(())
    }
}

#[tokio::test]
async fn echo_256_mib_through_lb_and_runner_in_bounded_memory() -> Result<()> {
    let stack = Stack::start().await?;
    let (lb, runner, path) = (&stack.lb, &stack.runner, stack.path.as_str());
    let base = pattern_base();

    // Warm up (container start, connections, allocator pools) until the LB has seen the runner's
    // accept-ack capability and a 4 MiB echo streams through; then take the baselines.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match echo(lb, path, 4 * MIB, base.clone()).await {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                eprintln!("warm-up echo failed ({e:#}), retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => bail!(
                "warm-up never succeeded: {e:#}\nLB log:\n{}",
                lb.stderr.lock().unwrap()
            ),
        }
    }
    let lb_pid = lb.child.id().context("LB exited")?;
    let baseline = (rss(lb_pid)?.1, rss(runner.pid())?.1);

    let small = measured_echo(lb, runner, path, 16 * MIB, &base, baseline).await?;
    let large = measured_echo(lb, runner, path, 256 * MIB, &base, baseline).await?;
    for (name, p, size) in [("16 MiB", &small, 16 * MIB), ("256 MiB", &large, 256 * MIB)] {
        eprintln!(
            "{name} echo in {:.1?} ({:.0} MiB/s each way): LB peak VmRSS {} MiB (VmHWM +{} MiB over \
             baseline {} MiB), runner peak VmRSS {} MiB (VmHWM +{} MiB over baseline {} MiB)",
            p.took,
            size as f64 / MIB as f64 / p.took.as_secs_f64(),
            p.lb_rss / MIB,
            p.lb_hwm_growth / MIB,
            baseline.0 / MIB,
            p.runner_rss / MIB,
            p.runner_hwm_growth / MIB,
            baseline.1 / MIB,
        );
    }
    for (who, growth) in [("LB", large.lb_hwm_growth), ("runner", large.runner_hwm_growth)] {
        ensure!(
            growth < RSS_GROWTH_BOUND,
            "{who} peak RSS grew by {} MiB for a 256 MiB echo (bound {} MiB)",
            growth / MIB,
            RSS_GROWTH_BOUND / MIB
        );
    }
    // 16x the body must not mean more memory: allow 16 MiB of noise over the 16 MiB run's peak.
    for (who, s, l) in [
        ("LB", small.lb_hwm_growth, large.lb_hwm_growth),
        ("runner", small.runner_hwm_growth, large.runner_hwm_growth),
    ] {
        ensure!(
            l < s + 16 * MIB,
            "{who}'s peak grows with the body: +{} MiB at 16 MiB, +{} MiB at 256 MiB",
            s / MIB,
            l / MIB
        );
    }
    let logs = runner.logs();
    ensure!(
        !logs.contains("function answered before receiving the entire request"),
        "the runner applied the premature-write rule in accept-ack mode:\n{}",
        tail(&logs)
    );

    stack.finish().await
}

/// Warm-call latency through LB -> runner -> function: sequential small invokes over one kept-alive
/// HTTP/1.1 connection, after a first (cold) call. Prints the percentiles (no timing assert: the
/// shared machines are too noisy for one).
#[tokio::test]
async fn warm_invoke_latency_through_lb_printout() -> Result<()> {
    let stack = Stack::start().await?;
    let stream = tokio::net::TcpStream::connect(stack.lb.addr).await?;
    stream.set_nodelay(true)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let conn = tokio::spawn(conn);
    // A small answer (one write), then a 200 KB one (streamed by the LB past its 64 KiB head).
    let series: [(&str, &[u8], usize); 2] = [
        ("small answer", br#"{"echoContent":"x"}"#, 0),
        ("200 KB answer", br#"{"responseSize":200000}"#, 200_000),
    ];
    let deadline = Instant::now() + Duration::from_secs(60);
    for (what, body, want_len) in series {
        let mut times = Vec::new();
        while times.len() < 40 {
            let req = hyper::Request::post(stack.path.as_str())
                .header(hyper::header::HOST, stack.lb.addr.to_string())
                .body(http_body_util::Full::new(Bytes::from_static(body)))?;
            sender.ready().await?;
            let t0 = Instant::now();
            let resp = sender.send_request(req).await?;
            let status = resp.status();
            let got = resp.into_body().collect().await?.to_bytes();
            let took = t0.elapsed();
            if status != 200 {
                // The LB may not have probed the runner yet: retry within the deadline.
                ensure!(
                    Instant::now() < deadline,
                    "invoke answered {status}: {}",
                    String::from_utf8_lossy(&got)
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            ensure!(
                if want_len > 0 {
                    got.len() == want_len
                } else {
                    got.windows(3).any(|w| w == b"\"x\"")
                },
                "unexpected body of {} bytes: {}",
                got.len(),
                String::from_utf8_lossy(&got[..got.len().min(200)])
            );
            times.push(took);
        }
        let first = times.remove(0);
        times.sort();
        eprintln!(
            "invoke through LB+runner, {what}: first {first:.2?}; warm ({} calls) \
             p50 {:.2?}, p90 {:.2?}, max {:.2?}",
            times.len(),
            times[times.len() / 2],
            times[times.len() * 9 / 10],
            times[times.len() - 1]
        );
    }
    conn.abort();
    stack.finish().await
}
