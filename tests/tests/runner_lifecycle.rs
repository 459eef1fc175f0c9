//! The runner process around the calls: drain on SIGTERM, leftovers of a SIGKILLed runner removed at
//! its next start, the probe subcommand, Status / Status2 with and without the status image, health,
//! ConfigureRunner (acknowledged) and StreamLogs (UNIMPLEMENTED), `/metrics`, and mTLS (real
//! certificates generated per test).
// `Status` is deprecated in Fn's proto, but it is what Fn's LB calls: it is tested as such.
#![allow(deprecated)]

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result};
use bollard::Docker;
use ferrofn_proto::health::health_check_response::ServingStatus;
use ferrofn_proto::health::{HealthCheckRequest, health_client::HealthClient};
use ferrofn_tests::images::{FnImage, STATUS_IMAGE, TESTFN_IMAGE, ensure_image};
use ferrofn_tests::runner_proc::{
    EngageOpts, RunnerProc, call_json, containers_of, engage, ensure_runner_binary, eventually, unique_name,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn docker_with(images: &[FnImage]) -> Result<Docker> {
    let docker = ferrofn_tests::docker::connect().await?;
    for i in images {
        ensure_image(&docker, *i).await?;
    }
    Ok(docker)
}

async fn health(runner: &RunnerProc) -> Result<i32> {
    let mut h = HealthClient::new(runner.channel().await?);
    Ok(h.check(HealthCheckRequest {
        service: String::new(),
    })
    .await?
    .into_inner()
    .status)
}

fn fn_id(n: u32) -> String {
    format!("01FNLIFE{n:018}")
}

#[tokio::test]
async fn sigterm_drains_in_flight_calls_nacks_new_ones_and_removes_containers() -> Result<()> {
    let docker = docker_with(&[FnImage::Testfn]).await?;
    let mut runner = RunnerProc::start(&[]).await?;
    assert_eq!(health(&runner).await?, ServingStatus::Serving as i32);
    let mut long_client = runner.client().await?;
    let long = tokio::spawn(async move {
        let call = call_json(TESTFN_IMAGE.as_str(), &fn_id(1), &[], |_| {});
        engage(
            &mut long_client,
            &call,
            b"{\"sleepTime\":3000,\"echoContent\":\"survived\"}",
            EngageOpts::default(),
        )
        .await
    });
    // Wait until the call runs in its container.
    let mut status_client = runner.client().await?;
    eventually("call in flight in a container", Duration::from_secs(20), || {
        let (docker, name) = (docker.clone(), runner.name.clone());
        let mut c = status_client.clone();
        async move {
            let active = c.status(()).await.map(|s| s.into_inner().active).unwrap_or(0);
            let running = containers_of(&docker, &name).await.map(|v| v.len()).unwrap_or(0);
            active == 1 && running == 1
        }
    })
    .await?;
    // The HTTP port's readiness (what `probe --http` checks) follows the gRPC health.
    let http = runner.http_addr.to_string();
    let ready = || ferrofn_common::probe::http_ok(&http, "/health/ready", Duration::from_secs(2));
    ready().await.context("/health/ready of a serving runner")?;
    runner.sigterm()?;
    eventually("health NOT_SERVING", Duration::from_secs(5), || async {
        health(&runner)
            .await
            .map(|s| s == ServingStatus::NotServing as i32)
            .unwrap_or(false)
    })
    .await?;
    let not_ready = ready().await.expect_err("a draining runner is not ready");
    assert!(not_ready.to_string().contains("503"), "{not_ready}");
    ferrofn_common::probe::http_ok(&http, "/health/live", Duration::from_secs(2)).await?;
    let mut client = runner.client().await?;
    let call = call_json(TESTFN_IMAGE.as_str(), &fn_id(2), &[], |_| {});
    let r = engage(&mut client, &call, b"{}", EngageOpts::default()).await?;
    let f = r.finished();
    assert_eq!(
        (f.success, f.error_code),
        (false, 503),
        "a draining runner NACKs: {f:?}"
    );
    let r = long.await??;
    assert!(
        r.finished().success,
        "in-flight call cut by the drain: {:?}",
        r.finished()
    );
    let doc: serde_json::Value = serde_json::from_slice(&r.body)?;
    assert_eq!(doc["request"]["echoContent"], "survived");
    let exit = runner.wait_exit(Duration::from_secs(30)).await?;
    assert!(exit.success(), "exit {exit}; log:\n{}", runner.logs());
    let left = containers_of(&docker, &runner.name).await?;
    assert!(left.is_empty(), "containers left after drain: {left:?}");
    let _ = status_client.status(()).await;
    Ok(())
}

#[tokio::test]
async fn leftovers_of_a_killed_runner_are_removed_at_its_next_start() -> Result<()> {
    let docker = docker_with(&[FnImage::Testfn]).await?;
    let name = unique_name("killed");
    let runner = RunnerProc::start_named(&name, &[], &[]).await?;
    let mut client = runner.client().await?;
    let r = engage(
        &mut client,
        &call_json(TESTFN_IMAGE.as_str(), &fn_id(3), &[], |_| {}),
        b"{}",
        EngageOpts::default(),
    )
    .await?;
    assert!(r.finished().success);
    let dir = runner.kill().await?;
    assert_eq!(
        containers_of(&docker, &name).await?.len(),
        1,
        "SIGKILL leaves the container behind"
    );
    let runner = RunnerProc::restart(dir, &name, &[]).await?;
    // The sweep runs before the runner announces its addresses.
    assert!(
        containers_of(&docker, &name).await?.is_empty(),
        "leftover not swept at start"
    );
    assert!(runner.logs().contains("removed leftover containers"));
    finish(&docker, runner).await
}

#[tokio::test]
async fn probe_subcommand_reports_health() -> Result<()> {
    let docker = docker_with(&[]).await?;
    let runner = RunnerProc::start(&[]).await?;
    let bin = ensure_runner_binary().await?;
    // `--addr` probes the gRPC health, `--http` the HTTP port's /health/ready.
    let probe = |flag: &'static str, addr: String| {
        let bin = bin.clone();
        async move {
            tokio::process::Command::new(bin)
                .args(["probe", flag, &addr, "--timeout-ms", "2000"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .await
        }
    };
    let (grpc, http) = (runner.grpc_addr.to_string(), runner.http_addr.to_string());
    for (flag, addr) in [("--addr", &grpc), ("--http", &http)] {
        assert!(
            probe(flag, addr.clone()).await?.success(),
            "probe {flag} of a serving runner failed"
        );
    }
    finish(&docker, runner).await?;
    for (flag, addr) in [("--addr", grpc), ("--http", http)] {
        assert_eq!(
            probe(flag, addr).await?.code(),
            Some(1),
            "probe {flag} of a stopped runner must exit 1"
        );
    }
    Ok(())
}

#[tokio::test]
async fn status_counters_capabilities_configure_and_stream_logs() -> Result<()> {
    let docker = docker_with(&[FnImage::Testfn]).await?;
    let runner = RunnerProc::start(&[("FN_MAX_TOTAL_MEMORY_BYTES", "134217728")]).await?;
    let mut client = runner.client().await?;
    let s = client.status(()).await?.into_inner();
    assert_eq!((s.active, s.requests_received, s.requests_handled), (0, 0, 0));
    assert!(s.id.is_empty() && !s.failed, "no status image: counters only");
    assert_eq!(
        s.custom_status.get("ferrofn-capabilities").map(String::as_str),
        Some("accept-ack,frames")
    );

    let r = engage(
        &mut client,
        &call_json(TESTFN_IMAGE.as_str(), &fn_id(4), &[], |_| {}),
        b"{}",
        EngageOpts::default(),
    )
    .await?;
    assert!(r.finished().success);
    // The only 128 MB container of fn 4 is idle and the pool is full: fn 5 evicts it, fn 4's
    // concurrent call while fn 5 holds the slot cannot fit: a NACK, not counted as handled.
    let busy = {
        let mut c = runner.client().await?;
        tokio::spawn(async move {
            engage(
                &mut c,
                &call_json(TESTFN_IMAGE.as_str(), &fn_id(5), &[], |_| {}),
                b"{\"sleepTime\":2000}",
                EngageOpts::default(),
            )
            .await
        })
    };
    eventually("fn 5 running", Duration::from_secs(20), || {
        let mut c = client.clone();
        async move {
            c.status(())
                .await
                .map(|s| s.into_inner().active == 1)
                .unwrap_or(false)
        }
    })
    .await?;
    eventually("fn 5 container up", Duration::from_secs(20), || {
        let (docker, name) = (docker.clone(), runner.name.clone());
        async move {
            let only_fn5 = |v: Vec<bollard::models::ContainerSummary>| {
                v.len() == 1
                    && v.iter().all(|c| {
                        c.labels
                            .as_ref()
                            .and_then(|l| l.get("ferrofn.fn_id"))
                            .map(String::as_str)
                            == Some(fn_id(5).as_str())
                    })
            };
            containers_of(&docker, &name).await.map(only_fn5).unwrap_or(false)
        }
    })
    .await?;
    let r = engage(
        &mut client,
        &call_json(TESTFN_IMAGE.as_str(), &fn_id(4), &[], |_| {}),
        b"{}",
        EngageOpts::default(),
    )
    .await?;
    assert_eq!(r.finished().error_code, 503, "{:?}", r.finished());
    assert!(busy.await??.finished().success);
    let s = client.status(()).await?.into_inner();
    assert_eq!(s.requests_received, 3);
    assert_eq!(s.requests_handled, 2, "the NACK is not counted as handled");

    // No configuration function, as on an Fn runner without one: acknowledged, nothing changes.
    let answer = client
        .configure_runner(ferrofn_proto::ConfigMsg::default())
        .await?
        .into_inner();
    assert_eq!(answer, ferrofn_proto::ConfigStatus {});
    let e = client
        .stream_logs(tokio_stream::iter(Vec::<ferrofn_proto::LogRequestMsg>::new()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unimplemented);

    // /metrics on the HTTP port.
    let mut conn = tokio::net::TcpStream::connect(runner.http_addr).await?;
    conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .await?;
    let mut text = String::new();
    conn.read_to_string(&mut text).await?;
    assert!(
        text.starts_with("HTTP/1.0 200") || text.starts_with("HTTP/1.1 200"),
        "{text}"
    );
    assert!(text.contains("ferrofn_runner_calls_total"), "{text}");
    assert!(text.contains("ferrofn_runner_nacks_total"), "{text}");
    assert!(text.contains("ferrofn_runner_cold_starts_total"), "{text}");
    assert!(
        text.contains("ferrofn_runner_docker_op_seconds_count{op=\"start\",result=\"ok\"}"),
        "Docker operation latencies: {text}"
    );
    assert!(
        text.contains("ferrofn_runner_containers_by_state{state=\"idle\"}"),
        "{text}"
    );
    finish(&docker, runner).await
}

#[tokio::test]
async fn status_image_runs_cached_status_calls() -> Result<()> {
    let docker = docker_with(&[FnImage::Status, FnImage::Testfn]).await?;
    let runner = RunnerProc::start_named(
        &unique_name("st"),
        &[],
        &["--status-image", STATUS_IMAGE.as_str()],
    )
    .await?;
    let mut client = runner.client().await?;
    let s1 = client.status(()).await?.into_inner();
    assert!(!s1.failed, "{s1:?}\n{}", runner.logs());
    assert_eq!(s1.details, "{}");
    assert!(!s1.id.is_empty() && !s1.cached);
    assert!(!s1.created_at.is_empty() && !s1.completed_at.is_empty());
    let s2 = client.status(()).await?.into_inner();
    assert_eq!(s2.id, s1.id, "served from the cache within 1.5 s");
    assert!(s2.cached);

    let mut fields = BTreeMap::new();
    fields.insert(
        "fake-member-1".to_string(),
        prost_types::Value {
            kind: Some(prost_types::value::Kind::StringValue("a".into())),
        },
    );
    fields.insert(
        "fake-member-2".to_string(),
        prost_types::Value {
            kind: Some(prost_types::value::Kind::NumberValue(2.0)),
        },
    );
    let payload = prost_types::Struct {
        fields: fields.into_iter().collect(),
    };
    let s3 = client.status2(payload).await?.into_inner();
    assert!(!s3.failed, "{s3:?}");
    let echoed: serde_json::Value = serde_json::from_str(&s3.details)?;
    assert_eq!(
        echoed,
        serde_json::json!({"fake-member-1": "a", "fake-member-2": 2.0})
    );

    // After the cache expired, a new status call.
    eventually("fresh status id", Duration::from_secs(10), || {
        let mut c = client.clone();
        let old = s1.id.clone();
        async move {
            c.status(())
                .await
                .map(|s| s.into_inner().id != old)
                .unwrap_or(false)
        }
    })
    .await?;

    // Calls may not use the status image.
    let call = call_json(STATUS_IMAGE.as_str(), &fn_id(6), &[], |_| {});
    let r = engage(&mut client, &call, b"{}", EngageOpts::default()).await?;
    assert_eq!(
        (r.finished().error_code, r.finished().error_str.as_str()),
        (400, "Invalid Fn image")
    );
    finish(&docker, runner).await
}

#[tokio::test]
async fn mtls_is_required_by_default() -> Result<()> {
    use ferrofn_common::certs::{ClusterCertOptions, generate_cluster};
    use ferrofn_common::tls::{ClientTls, connect_channel, runner_endpoint};
    ferrofn_common::tls::install_crypto_provider();
    let docker = docker_with(&[]).await?;
    let dir = tempfile::tempdir()?;
    let certs = generate_cluster(
        dir.path(),
        &ClusterCertOptions {
            runner_names: vec!["r1".into()],
            ..Default::default()
        },
    )?;
    let other_dir = tempfile::tempdir()?;
    let other = generate_cluster(
        other_dir.path(),
        &ClusterCertOptions {
            runner_names: vec!["x".into()],
            ..Default::default()
        },
    )?;
    let files = &certs.runners[0].1;
    let args = [
        "--tls-ca",
        files.ca.to_str().unwrap(),
        "--tls-cert",
        files.cert.to_str().unwrap(),
        "--tls-key",
        files.key.to_str().unwrap(),
    ];
    let runner = RunnerProc::start_tls(&unique_name("tls"), &[], &args).await?;
    let addr = runner.grpc_addr.to_string();

    let ch = connect_channel(
        runner_endpoint(&addr)?,
        Some(ClientTls::new(certs.lb.clone())?),
        "127.0.0.1",
    )
    .await?;
    let mut client = ferrofn_proto::runner_protocol_client::RunnerProtocolClient::new(ch);
    let s = client.status(()).await?.into_inner();
    assert_eq!(
        s.custom_status.get("ferrofn-capabilities").map(String::as_str),
        Some("accept-ack,frames")
    );

    // Plaintext and a certificate from another CA are both refused.
    let plain = tonic::transport::Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await;
    let refused = match plain {
        Err(_) => true,
        Ok(ch) => ferrofn_proto::runner_protocol_client::RunnerProtocolClient::new(ch)
            .status(())
            .await
            .is_err(),
    };
    assert!(refused, "plaintext client served by an mTLS runner");
    let foreign = connect_channel(
        runner_endpoint(&addr)?,
        Some(ClientTls::new(other.lb.clone())?),
        "127.0.0.1",
    )
    .await;
    let refused = match foreign {
        Err(_) => true,
        Ok(ch) => ferrofn_proto::runner_protocol_client::RunnerProtocolClient::new(ch)
            .status(())
            .await
            .is_err(),
    };
    assert!(refused, "client with a certificate from another CA was served");
    finish(&docker, runner).await
}

#[tokio::test]
async fn print_config_shows_layered_settings() -> Result<()> {
    let bin = ensure_runner_binary().await?;
    let out = tokio::process::Command::new(&bin)
        .args([
            "--status-image",
            "st:1",
            "--tls-ca",
            "ca.pem",
            "--tls-cert",
            "r.pem",
            "--tls-key",
            "k.pem",
        ])
        .arg("print-config")
        .env("FN_GRPC_PORT", "9555")
        .env("FN_FREEZE_IDLE_MSECS", "-1")
        .output()
        .await?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout)?;
    // Each value line ends with a comment naming its source.
    let has = |line: &str| {
        text.lines()
            .any(|l| l.split("  # ").next().unwrap_or_default().trim() == line)
    };
    assert!(has("grpc_port = 9555"), "{text}");
    assert!(has("freeze_idle_msecs = -1"), "{text}");
    assert!(has("status_image = \"st:1\""), "{text}");
    assert!(has("plaintext = false"), "mTLS is the default: {text}");
    assert!(
        text.contains("grpc_port = 9555  # environment variable FN_GRPC_PORT"),
        "{text}"
    );
    assert!(text.contains("cert = \"r.pem\"  # flag --tls-cert"), "{text}");
    assert!(text.contains("hot_poll_msecs = 200  # default"), "{text}");

    // mTLS (the default) without its files: the same refusal from print-config as at start.
    for args in [&["print-config"][..], &["--grpc-port", "0", "--port", "0"][..]] {
        let out = tokio::process::Command::new(&bin)
            .args(args)
            .env("RUST_BACKTRACE", "1")
            .output()
            .await?;
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.starts_with("ferrofn-runner: error: invalid setting tls.ca"),
            "{err}"
        );
        assert!(err.contains("--plaintext"), "{err}");
        assert!(!err.contains("backtrace"), "{err}");
    }
    Ok(())
}

#[tokio::test]
async fn a_runner_dropped_without_drain_leaves_no_container() -> Result<()> {
    // What happens when a test fails half way: the harness kills the runner and removes its containers.
    let docker = docker_with(&[FnImage::Testfn]).await?;
    let runner = RunnerProc::start(&[]).await?;
    let mut client = runner.client().await?;
    let r = engage(
        &mut client,
        &call_json(TESTFN_IMAGE.as_str(), &fn_id(7), &[], |_| {}),
        b"{}",
        EngageOpts::default(),
    )
    .await?;
    assert!(r.finished().success);
    let name = runner.name.clone();
    assert_eq!(containers_of(&docker, &name).await?.len(), 1);
    drop(runner);
    assert!(
        containers_of(&docker, &name).await?.is_empty(),
        "containers of a dropped runner leaked"
    );
    Ok(())
}

/// Drains the runner and checks it left nothing behind.
async fn finish(docker: &Docker, runner: RunnerProc) -> Result<()> {
    runner.drain_and_check(docker).await
}
