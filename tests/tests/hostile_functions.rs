//! Hostile functions against a real runner and Docker engine (the testfn image, its hostile knobs):
//! what each gets, and that another function on the same runner keeps being served meanwhile.
//! - a fork bomb: stopped by the pids limit (`FN_MAX_PIDS`, 50): the kernel refuses the next
//!   process (EAGAIN), the call itself answers 200 with what it managed;
//! - writes to the root filesystem: `Read-only file system` (os error 30); `/tmp` is a tmpfs;
//! - memory beyond the fn's limit (allocated, or written to the `/tmp` tmpfs): the kernel kills the
//!   function, the call gets Fn's 502 `error receiving function response`, the next call runs in a
//!   new container;
//! - a stdout/stderr flood: the call succeeds, its log is capped at `FN_MAX_LOG_SIZE_BYTES` (one
//!   truncation line), the runner's memory and log stay small; output between calls (a background
//!   flood) is capped the same way, per stretch between two calls;
//! - connecting to the Docker socket (not mounted) or to the runner's gRPC port (network `none`):
//!   both fail; the same probe from a container on the bridge network reaches the port, so the probe
//!   itself works.
//!
//! Every test ends with a drain (SIGTERM) and checks that no container of its runner is left.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};

use ferrofn_tests::images::TESTFN_IMAGE;
use ferrofn_tests::runner_proc::{EngageOpts, RunnerProc, call_json, engage, start_with_testfn};
use ferrofn_tests::testfn::{docker_id, fn_id, knobs};
use tonic::transport::Channel;

type Client = ferrofn_proto::runner_protocol_client::RunnerProtocolClient<Channel>;

/// The well-behaved function: another fn on the same runner, asked to echo.
const NEIGHBOUR: u32 = 900;

/// Calls fn `n` with `knobs` (memory `memory_mb`) and returns the CallFinished's (success, code,
/// message) and the response document (Null when the call failed).
async fn call(client: &mut Client, n: u32, memory_mb: u64, k: Value) -> Result<(bool, i32, String, Value)> {
    let call = call_json(TESTFN_IMAGE.as_str(), &fn_id(n), &[], |v| {
        v["memory"] = memory_mb.into();
        v["config"]["FN_MEMORY"] = memory_mb.to_string().into();
    });
    let r = engage(client, &call, &knobs(k), EngageOpts::default()).await?;
    let f = r.finished();
    let doc = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    Ok((f.success, f.error_code, f.error_str.clone(), doc))
}

/// The neighbour function answers, and with what it was sent.
async fn neighbour_served(client: &mut Client, what: &str) -> Result<()> {
    let (ok, code, msg, doc) = call(client, NEIGHBOUR, 128, json!({ "echoContent": what })).await?;
    ensure!(ok, "the neighbour function failed: {code} {msg}");
    ensure!(doc["request"]["echoContent"] == what, "{doc}");
    Ok(())
}

fn rss_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

#[tokio::test]
async fn a_fork_bomb_stops_at_the_pids_limit() -> Result<()> {
    let (docker, runner) = start_with_testfn(&[]).await?;
    let mut client = runner.client().await?;
    neighbour_served(&mut client, "before").await?;

    // Asks for 500 processes (a ceiling in case no limit held); 50 tasks is the container's limit.
    let (ok, code, msg, doc) = call(&mut client, 1, 128, json!({"forkBomb": 500, "isDebug": true})).await?;
    assert!(ok, "{code} {msg}");
    let bomb = &doc["data"]["forkBomb"];
    eprintln!("fork bomb: {bomb}");
    let spawned = bomb["spawned"].as_u64().unwrap_or(0);
    let error = bomb["error"].as_str().unwrap_or_default();
    assert!(spawned > 0 && spawned < 50, "{bomb}");
    assert!(error.contains("Resource temporarily unavailable"), "{bomb}");
    let bombed = docker_id(&doc.to_string().into_bytes());

    // The bomb's processes live on in their container: other functions are served meanwhile, and
    // the bombed container itself still answers (its server needs no new process).
    neighbour_served(&mut client, "during").await?;
    let (ok, code, msg, doc) = call(&mut client, 1, 128, json!({"isDebug": true})).await?;
    assert!(ok, "{code} {msg}");
    assert_eq!(docker_id(&doc.to_string().into_bytes()), bombed);
    runner.drain_and_check(&docker).await
}

#[tokio::test]
async fn writes_to_the_root_filesystem_fail_and_tmp_is_writable() -> Result<()> {
    // The container settings behind this are checked in runner_pool.rs
    // (containers_are_hardened_and_labelled); here, what the function gets.
    let (docker, runner) = start_with_testfn(&[]).await?;
    let mut client = runner.client().await?;
    for path in ["/hostile", "/etc/passwd", "/tmp/iofs/../../escaped"] {
        let (ok, code, msg, doc) = call(
            &mut client,
            2,
            128,
            json!({"createFile": path, "createFileSize": 4096}),
        )
        .await?;
        assert!(ok, "{code} {msg}");
        let error = doc["data"][format!("{path}.create_error")]
            .as_str()
            .unwrap_or_default();
        eprintln!("create {path}: {error}");
        assert!(error.contains("Read-only file system"), "{path}: {}", doc["data"]);
        neighbour_served(&mut client, path).await?;
    }
    let (ok, _, _, doc) = call(
        &mut client,
        2,
        128,
        json!({"createFile": "/tmp/scratch", "createFileSize": 1 << 20}),
    )
    .await?;
    assert!(
        ok && doc["data"].get("/tmp/scratch.create_error").is_none(),
        "{doc}"
    );
    runner.drain_and_check(&docker).await
}

#[tokio::test]
async fn memory_beyond_the_limit_gets_502_and_a_new_container() -> Result<()> {
    let (docker, runner) = start_with_testfn(&[]).await?;
    let mut client = runner.client().await?;
    let (ok, _, _, doc) = call(&mut client, 3, 64, json!({"isDebug": true})).await?;
    assert!(ok);
    let first = docker_id(&doc.to_string().into_bytes());

    // 256 MiB in a 64 MB function, touched page by page: the kernel's OOM killer ends it.
    let mut other = client.clone();
    let allocate = call(&mut client, 3, 64, json!({"allocateMemory": 256u64 << 20}));
    let (hostile, neighbour) = tokio::join!(
        allocate,
        neighbour_served(&mut other, "while another fn runs out of memory")
    );
    let (ok, code, msg, _) = hostile?;
    neighbour?;
    assert_eq!(
        (ok, code, msg.as_str()),
        (false, 502, "error receiving function response")
    );
    assert!(
        runner.logs().contains("exited with 137"),
        "no exit 137 in the runner log"
    );

    // The killed container is replaced.
    let (ok, code, msg, doc) = call(&mut client, 3, 64, json!({"isDebug": true})).await?;
    assert!(ok, "{code} {msg}");
    let second = docker_id(&doc.to_string().into_bytes());
    assert!(!second.is_empty() && second != first, "{first} served again");
    neighbour_served(&mut client, "after").await?;

    // /tmp is a tmpfs: what is written there is memory of the fn, limited the same way.
    let (ok, code, msg, _) = call(
        &mut client,
        3,
        64,
        json!({"createFile": "/tmp/fill", "createFileSize": 256u64 << 20}),
    )
    .await?;
    assert_eq!(
        (ok, code, msg.as_str()),
        (false, 502, "error receiving function response")
    );
    let (ok, code, msg, doc) = call(&mut client, 3, 64, json!({"isDebug": true})).await?;
    assert!(ok, "{code} {msg}");
    let third = docker_id(&doc.to_string().into_bytes());
    assert!(!third.is_empty() && third != second, "{second} served again");
    neighbour_served(&mut client, "after /tmp filled up").await?;
    runner.drain_and_check(&docker).await
}

#[tokio::test]
async fn an_output_flood_is_capped_and_the_runner_stays_small() -> Result<()> {
    const CAP: u64 = 64 * 1024;
    const FLOOD: u64 = 256 << 20;
    let cap = CAP.to_string();
    let (docker, runner) = start_with_testfn(&[("FN_MAX_LOG_SIZE_BYTES", cap.as_str())]).await?;
    let mut client = runner.client().await?;
    neighbour_served(&mut client, "before").await?;
    let (ok, _, _, _) = call(&mut client, 4, 128, json!({})).await?;
    assert!(ok, "warm-up");
    let rss = rss_of(runner.pid());
    let log_before = runner.logs().len();

    // 256 MiB on stdout, then 256 MiB on stderr, while the neighbour is called.
    let started = Instant::now();
    let flood = tokio::spawn({
        let mut client = client.clone();
        async move { call(&mut client, 4, 128, json!({ "floodOutput": FLOOD })).await }
    });
    // The flood has passed the cap once its truncation line is in the log.
    ferrofn_tests::runner_proc::eventually("the log cap reached", Duration::from_secs(60), || {
        let logs = runner.logs();
        async move { logs.contains("max log size 65536 bytes exceeded, truncating log") }
    })
    .await?;
    neighbour_served(&mut client, "during the flood").await?;
    assert!(
        !flood.is_finished(),
        "the flood ended before the neighbour's call ({:?}): too short to tell",
        started.elapsed()
    );
    let (ok, code, msg, doc) = flood.await??;
    assert!(ok, "{code} {msg}");
    assert_eq!(
        doc["data"]["floodOutput"],
        json!({"stdout": FLOOD, "stderr": FLOOD})
    );
    let took = started.elapsed();

    let grown = rss_of(runner.pid()).saturating_sub(rss);
    let logged = runner.logs().len() - log_before;
    eprintln!(
        "flood of 2 x {} MiB in {took:?}; runner RSS growth {} KiB, runner log growth {} KiB",
        FLOOD >> 20,
        grown >> 10,
        logged >> 10
    );
    assert!(grown < 32 << 20, "runner RSS grew by {grown} bytes");
    // The cap plus one line per log record's fields: far below the flood.
    assert!(
        logged < 2 << 20,
        "the runner logged {logged} bytes of a 512 MiB flood"
    );
    neighbour_served(&mut client, "after").await?;
    runner.drain_and_check(&docker).await
}

#[tokio::test]
async fn an_output_flood_between_calls_is_capped_too() -> Result<()> {
    const FLOOD: u64 = 64 << 20;
    let (docker, runner) = start_with_testfn(&[("FN_MAX_LOG_SIZE_BYTES", "65536")]).await?;
    let mut client = runner.client().await?;
    let log_before = runner.logs().len();

    // The function answers, then floods stderr from a thread once the call is over.
    let (ok, code, msg, _) = call(&mut client, 6, 128, json!({ "floodOutputAfter": FLOOD })).await?;
    assert!(ok, "{code} {msg}");
    ferrofn_tests::runner_proc::eventually("the cap between calls reached", Duration::from_secs(60), || {
        let logs = runner.logs();
        async move { logs.contains("max log size 65536 bytes exceeded between calls, truncating log") }
    })
    .await?;
    neighbour_served(&mut client, "during the flood").await?;
    // The function says when its flood is over (each of these calls is capped on its own).
    ferrofn_tests::runner_proc::eventually("the background flood done", Duration::from_secs(60), || {
        let mut client = client.clone();
        async move {
            call(&mut client, 6, 128, json!({}))
                .await
                .is_ok_and(|(_, _, _, doc)| doc["data"]["backgroundFlood"] == "done")
        }
    })
    .await?;
    let logged = runner.logs().len() - log_before;
    eprintln!(
        "background flood of {} MiB: runner log growth {} KiB",
        FLOOD >> 20,
        logged >> 10
    );
    assert!(
        logged < 8 << 20,
        "the runner logged {logged} bytes of a 64 MiB flood"
    );
    runner.drain_and_check(&docker).await
}

/// The Docker bridge's gateway address on this host (where a bridged container reaches the host).
async fn bridge_gateway(docker: &bollard::Docker) -> Result<String> {
    let net = docker.inspect_network("bridge", None).await?;
    let configs = net.ipam.and_then(|i| i.config).unwrap_or_default();
    configs
        .iter()
        .find_map(|c| c.gateway.clone())
        .or_else(|| {
            // Some engines leave the gateway out: the subnet's first address.
            let subnet = configs.iter().find_map(|c| c.subnet.clone())?;
            let base: std::net::Ipv4Addr = subnet.split('/').next()?.parse().ok()?;
            Some(std::net::Ipv4Addr::from(u32::from(base) + 1).to_string())
        })
        .context("no gateway for the bridge network")
}

#[tokio::test]
async fn the_docker_socket_and_the_runner_port_are_out_of_reach() -> Result<()> {
    let docker = ferrofn_tests::docker::connect().await?;
    ferrofn_tests::images::ensure_image(&docker, ferrofn_tests::images::FnImage::Testfn).await?;
    // The runner listens where a container on the bridge could reach the host.
    let gateway = bridge_gateway(&docker).await?;
    let runner = RunnerProc::start_on(&gateway, &[]).await?;
    let mut client = runner.client().await?;
    let port = runner.grpc_addr.port();
    let targets = [
        "unix:/var/run/docker.sock".to_owned(),
        "unix:/run/docker.sock".to_owned(),
        format!("tcp:{gateway}:{port}"),
        format!("tcp:127.0.0.1:{port}"),
    ];
    let (ok, code, msg, doc) = call(&mut client, 5, 128, json!({ "connect": targets })).await?;
    assert!(ok, "{code} {msg}");
    let data = &doc["data"];
    eprintln!("probes from a function: {data}");
    for t in &targets {
        let error = data[format!("{t}.connect_error")].as_str().unwrap_or_default();
        assert!(!error.is_empty(), "{t} reached from the function: {data}");
    }
    let socket_error = data["unix:/var/run/docker.sock.connect_error"]
        .as_str()
        .unwrap_or_default();
    assert!(socket_error.contains("No such file"), "{data}");
    let tcp_error = data[format!("tcp:{gateway}:{port}.connect_error")]
        .as_str()
        .unwrap_or_default();
    assert!(tcp_error.contains("unreachable"), "{data}");
    neighbour_served(&mut client, "after the probes").await?;

    // The control: a function on the bridge network (FN_DOCKER_NETWORKS) reaches that port, so the
    // probe above failed because of the network mode, not because of the probe.
    let bridged = RunnerProc::start(&[("FN_DOCKER_NETWORKS", "bridge")]).await?;
    let mut bridged_client = bridged.client().await?;
    let target = format!("tcp:{gateway}:{port}");
    let (ok, code, msg, doc) = call(&mut bridged_client, 5, 128, json!({ "connect": target })).await?;
    assert!(ok, "{code} {msg}");
    assert_eq!(
        doc["data"][format!("{target}.connect_output")],
        "connected",
        "{}",
        doc["data"]
    );
    bridged.drain_and_check(&docker).await?;
    runner.drain_and_check(&docker).await
}
