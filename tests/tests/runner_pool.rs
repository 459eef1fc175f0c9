//! The runner's container pool against the real Docker engine: reuse, one container per concurrent
//! call, idle timeout, memory cap (NACK, then eviction), freezing, and the hardening of the
//! containers it creates. Every test drains its runner and checks no container is left.

use std::time::Duration;

use anyhow::Result;
use bollard::Docker;
use ferrofn_tests::images::{FnImage, TESTFN_IMAGE, ensure_image};
use ferrofn_tests::runner_proc::{
    EngageOpts, RunnerProc, call_json, containers_of, engage, eventually, start_with_testfn as setup,
};

async fn count(docker: &Docker, runner: &RunnerProc) -> usize {
    containers_of(docker, &runner.name)
        .await
        .map(|c| c.len())
        .unwrap_or(usize::MAX)
}

fn fn_id(n: u32) -> String {
    format!("01FNPOOL{n:018}")
}

#[tokio::test]
async fn twenty_sequential_calls_use_one_container() -> Result<()> {
    let (docker, runner) = setup(&[]).await?;
    let mut client = runner.client().await?;
    for i in 0..20 {
        let call = call_json(TESTFN_IMAGE.as_str(), &fn_id(1), &[], |_| {});
        let body = format!("{{\"echoContent\":\"n{i}\"}}");
        let r = engage(&mut client, &call, body.as_bytes(), EngageOpts::default()).await?;
        assert!(r.finished().success, "call {i}: {:?}", r.finished());
        let doc: serde_json::Value = serde_json::from_slice(&r.body)?;
        assert_eq!(doc["request"]["echoContent"], format!("n{i}"));
    }
    assert_eq!(count(&docker, &runner).await, 1);
    finish(&docker, runner).await
}

#[tokio::test]
async fn eight_concurrent_calls_get_eight_containers_which_idle_out() -> Result<()> {
    let (docker, runner) = setup(&[]).await?;
    let mut calls = Vec::new();
    for i in 0..8 {
        let mut client = runner.client().await?;
        calls.push(tokio::spawn(async move {
            let call = call_json(TESTFN_IMAGE.as_str(), &fn_id(2), &[], |v| {
                v["idle_timeout"] = 2.into()
            });
            // Each call holds its container 3 s: the launch policy starts 2 containers, then one
            // per waiting call once the busy ones outlive a launch (~0.3 s); 6 starts at once on a
            // loaded 2-vCPU machine take ~1-1.5 s, and all must be up before the first call
            // returns its container (which a waiting call would otherwise reuse).
            let body = format!("{{\"sleepTime\":3000,\"echoContent\":\"c{i}\",\"isDebug\":true}}");
            engage(&mut client, &call, body.as_bytes(), EngageOpts::default()).await
        }));
    }
    let mut ids = std::collections::HashSet::new();
    for c in calls {
        let r = c.await??;
        assert!(r.finished().success, "{:?}", r.finished());
        let doc: serde_json::Value = serde_json::from_slice(&r.body)?;
        ids.insert(doc["data"]["DockerId"].as_str().unwrap_or_default().to_string());
    }
    assert_eq!(ids.len(), 8, "each concurrent call ran in its own container");
    assert_eq!(count(&docker, &runner).await, 8);
    // idle_timeout 2 s: all of them go away on their own.
    eventually("idle containers removed", Duration::from_secs(15), || {
        let (docker, name) = (docker.clone(), runner.name.clone());
        async move {
            containers_of(&docker, &name)
                .await
                .map(|c| c.is_empty())
                .unwrap_or(false)
        }
    })
    .await?;
    finish(&docker, runner).await
}

#[tokio::test]
async fn memory_cap_nacks_then_serves_after_eviction() -> Result<()> {
    // 256 MiB pool, 128 MB functions: two containers fit.
    let (docker, runner) = setup(&[("FN_MAX_TOTAL_MEMORY_BYTES", "268435456")]).await?;
    let busy = |n: u32| {
        let addr = runner.grpc_addr;
        tokio::spawn(async move {
            let ch = tonic::transport::Channel::from_shared(format!("http://{addr}"))?
                .connect()
                .await?;
            let mut client = ferrofn_proto::runner_protocol_client::RunnerProtocolClient::new(ch);
            let call = call_json(TESTFN_IMAGE.as_str(), &fn_id(3), &[], |_| {});
            let _ = n;
            engage(&mut client, &call, b"{\"sleepTime\":3000}", EngageOpts::default()).await
        })
    };
    let (a, b) = (busy(1), busy(2));
    eventually("two containers busy", Duration::from_secs(20), || {
        let (docker, name) = (docker.clone(), runner.name.clone());
        async move {
            containers_of(&docker, &name)
                .await
                .map(|c| c.len() == 2)
                .unwrap_or(false)
        }
    })
    .await?;
    // A call of another function while both are busy: no room, nothing evictable, and no container
    // of its own that could serve it -> NACK before any ResultStart.
    let mut client = runner.client().await?;
    let other = call_json(TESTFN_IMAGE.as_str(), &fn_id(5), &[], |_| {});
    let r = engage(&mut client, &other, b"{}", EngageOpts::default()).await?;
    let f = r.finished();
    assert_eq!(
        (f.success, f.error_code, f.error_str.as_str()),
        (false, 503, "Timed out - server too busy")
    );
    assert!(!f.error_user);
    assert_eq!(r.result_starts, 0, "a NACK comes before any ResultStart");
    // A third concurrent call of the busy function waits for one of its containers (Fn NACKs only
    // the call that nothing but a launch could serve) and succeeds without a third container.
    let call = call_json(TESTFN_IMAGE.as_str(), &fn_id(3), &[], |_| {});
    let r = engage(&mut client, &call, b"{}", EngageOpts::default()).await?;
    assert!(r.finished().success, "third call: {:?}", r.finished());
    assert_eq!(
        containers_of(&docker, &runner.name).await?.len(),
        2,
        "no third container"
    );
    for (n, h) in [("a", a), ("b", b)] {
        let r = h.await??;
        assert!(
            r.finished().success,
            "busy call {n}: {:?}\n{}",
            r.finished(),
            runner.logs()
        );
    }
    // Another function: fn 3's idle containers are evicted to make room.
    let call = call_json(TESTFN_IMAGE.as_str(), &fn_id(4), &[], |_| {});
    let r = engage(
        &mut client,
        &call,
        b"{\"echoContent\":\"evicted\"}",
        EngageOpts::default(),
    )
    .await?;
    assert!(r.finished().success, "{:?}\n{}", r.finished(), runner.logs());
    assert!(count(&docker, &runner).await <= 2);
    assert!(runner.logs().contains("evict"), "no eviction logged");
    finish(&docker, runner).await
}

#[tokio::test]
async fn freeze_pauses_idle_containers_and_a_call_thaws_them() -> Result<()> {
    let (docker, runner) = setup(&[("FN_FREEZE_IDLE_MSECS", "100")]).await?;
    let mut client = runner.client().await?;
    let call = || call_json(TESTFN_IMAGE.as_str(), &fn_id(5), &[], |_| {});
    let r = engage(&mut client, &call(), b"{}", EngageOpts::default()).await?;
    assert!(r.finished().success);
    let id = containers_of(&docker, &runner.name).await?[0]
        .id
        .clone()
        .unwrap_or_default();
    let paused = || {
        let (docker, id) = (docker.clone(), id.clone());
        async move {
            docker
                .inspect_container(&id, None)
                .await
                .ok()
                .and_then(|c| c.state.and_then(|s| s.paused))
                .unwrap_or(false)
        }
    };
    eventually("container paused", Duration::from_secs(10), paused).await?;
    let r = engage(
        &mut client,
        &call(),
        b"{\"echoContent\":\"thawed\"}",
        EngageOpts::default(),
    )
    .await?;
    assert!(r.finished().success, "{:?}", r.finished());
    let doc: serde_json::Value = serde_json::from_slice(&r.body)?;
    assert_eq!(doc["request"]["echoContent"], "thawed");
    assert_eq!(
        count(&docker, &runner).await,
        1,
        "the frozen container was reused"
    );
    finish(&docker, runner).await
}

#[tokio::test]
async fn containers_are_hardened_and_labelled() -> Result<()> {
    let (docker, runner) = setup(&[("FN_MAX_PIDS", "40")]).await?;
    let mut client = runner.client().await?;
    let call = call_json(TESTFN_IMAGE.as_str(), &fn_id(6), &[], |_| {});
    let k = serde_json::json!({"createFile": "/etc/x", "readFile": "/proc/self/status"});
    // Separate calls for the other file knobs (one path each per call).
    for (knob, expect_error) in [
        (
            serde_json::json!({"createFile": "/tmp/x", "createFileSize": 1024}),
            false,
        ),
        (serde_json::json!({"readFile": "/var/run/docker.sock"}), true),
        (serde_json::json!({"readFile": "/run/docker.sock"}), true),
    ] {
        let r = engage(
            &mut client,
            &call_json(TESTFN_IMAGE.as_str(), &fn_id(6), &[], |_| {}),
            knob.to_string().as_bytes(),
            EngageOpts::default(),
        )
        .await?;
        assert!(r.finished().success, "{:?}", r.finished());
        let doc: serde_json::Value = serde_json::from_slice(&r.body)?;
        let errors: Vec<_> = doc["data"]
            .as_object()
            .map(|m| m.keys().filter(|k| k.ends_with("_error")).cloned().collect())
            .unwrap_or_default();
        assert_eq!(
            !errors.is_empty(),
            expect_error,
            "{knob}: data {} (/tmp must be writable, the Docker socket invisible)",
            doc["data"]
        );
    }
    let r = engage(
        &mut client,
        &call,
        k.to_string().as_bytes(),
        EngageOpts::default(),
    )
    .await?;
    assert!(r.finished().success, "{:?}", r.finished());
    let doc: serde_json::Value = serde_json::from_slice(&r.body)?;
    assert!(
        doc["data"]["/etc/x.create_error"].is_string(),
        "rootfs writable: {}",
        doc["data"]
    );
    let status = doc["data"]["/proc/self/status.read_output"]
        .as_str()
        .unwrap_or_default();
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("Uid:") && l.contains("1000")),
        "{status}"
    );
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("CapEff:") && l.ends_with("0000000000000000")),
        "{status}"
    );
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("NoNewPrivs:") && l.ends_with('1')),
        "{status}"
    );

    let c = &containers_of(&docker, &runner.name).await?[0];
    let info = docker
        .inspect_container(c.id.as_deref().unwrap_or_default(), None)
        .await?;
    let cfg = info.config.unwrap_or_default();
    let hc = info.host_config.unwrap_or_default();
    assert_eq!(cfg.user.as_deref(), Some("1000:1000"));
    let labels = cfg.labels.unwrap_or_default();
    assert_eq!(labels.get("ferrofn.runner"), Some(&runner.name));
    assert_eq!(labels.get("ferrofn.managed").map(String::as_str), Some("true"));
    assert!(
        cfg.env
            .unwrap_or_default()
            .iter()
            .any(|e| e == "FN_FORMAT=http-stream")
    );
    assert_eq!(hc.readonly_rootfs, Some(true));
    assert_eq!(
        hc.cap_drop
            .unwrap_or_default()
            .iter()
            .map(|c| c.to_ascii_lowercase())
            .collect::<Vec<_>>(),
        vec!["all"]
    );
    assert_eq!(hc.security_opt.unwrap_or_default(), vec!["no-new-privileges"]);
    assert_eq!(hc.pids_limit, Some(40));
    assert_eq!(hc.memory, Some(128 << 20));
    assert_eq!(hc.memory_swap, Some(128 << 20));
    assert_eq!(hc.memory_swappiness, Some(0));
    assert_eq!(hc.init, Some(true));
    assert_eq!(hc.network_mode.as_deref(), Some("none"));
    assert_eq!(hc.log_config.and_then(|l| l.typ).as_deref(), Some("none"));
    assert!(hc.tmpfs.unwrap_or_default().contains_key("/tmp"));
    assert!(
        hc.binds
            .unwrap_or_default()
            .iter()
            .any(|b| b.ends_with(":/tmp/iofs"))
    );
    let ulimits = hc.ulimits.unwrap_or_default();
    assert!(
        ulimits
            .iter()
            .any(|u| u.name.as_deref() == Some("nofile") && u.soft == Some(350) && u.hard == Some(350))
    );
    finish(&docker, runner).await
}

/// Mean wall time of `n` warm calls spaced `gap` apart (the first, cold call is not counted), and
/// how many `docker unpause` the runner logged.
async fn warm_calls(runner: &RunnerProc, n: usize, gap: Duration) -> Result<(Duration, usize)> {
    let mut client = runner.client().await?;
    let call = || call_json(TESTFN_IMAGE.as_str(), &fn_id(7), &[], |_| {});
    let r = engage(&mut client, &call(), b"{}", EngageOpts::default()).await?;
    assert!(r.finished().success);
    let mut total = Duration::ZERO;
    for _ in 0..n {
        // The idle gap is what is measured here, not a synchronisation.
        tokio::time::sleep(gap).await;
        let t = std::time::Instant::now();
        let r = engage(&mut client, &call(), b"{}", EngageOpts::default()).await?;
        total += t.elapsed();
        assert!(r.finished().success);
    }
    let unpauses = runner.logs().lines().filter(|l| l.contains("unpaused")).count();
    Ok((total / n as u32, unpauses))
}

#[tokio::test]
async fn default_freeze_delay_spares_sparse_calls_the_unpause() -> Result<()> {
    let docker = ferrofn_tests::docker::connect().await?;
    ensure_image(&docker, FnImage::Testfn).await?;
    let gap = Duration::from_millis(300);
    let fn_like = RunnerProc::start(&[("FN_FREEZE_IDLE_MSECS", "50")]).await?;
    let (fn_mean, fn_unpauses) = warm_calls(&fn_like, 5, gap).await?;
    finish(&docker, fn_like).await?;
    let ours = RunnerProc::start(&[]).await?;
    let (our_mean, our_unpauses) = warm_calls(&ours, 5, gap).await?;
    finish(&docker, ours).await?;
    println!(
        "warm call every {gap:?}: Fn's 50 ms freeze {fn_mean:?} ({fn_unpauses} unpauses), default {our_mean:?} ({our_unpauses} unpauses)"
    );
    assert_eq!(
        fn_unpauses, 5,
        "with a 50 ms freeze every sparse call thaws the container"
    );
    assert_eq!(
        our_unpauses, 0,
        "the default freeze delay must not pause between calls 300 ms apart"
    );
    Ok(())
}

#[tokio::test]
async fn containers_join_the_configured_docker_network() -> Result<()> {
    let docker = ferrofn_tests::docker::connect().await?;
    let net = ferrofn_tests::runner_proc::unique_name("ferrofn-test-net");
    docker
        .create_network(bollard::models::NetworkCreateRequest {
            name: net.clone(),
            ..Default::default()
        })
        .await?;
    let result = async {
        ensure_image(&docker, FnImage::Testfn).await?;
        let runner = RunnerProc::start(&[("FN_DOCKER_NETWORKS", net.as_str())]).await?;
        let mut client = runner.client().await?;
        let r = engage(
            &mut client,
            &call_json(TESTFN_IMAGE.as_str(), &fn_id(8), &[], |_| {}),
            b"{}",
            EngageOpts::default(),
        )
        .await?;
        assert!(r.finished().success, "{:?}", r.finished());
        let c = &containers_of(&docker, &runner.name).await?[0];
        let info = docker
            .inspect_container(c.id.as_deref().unwrap_or_default(), None)
            .await?;
        assert_eq!(
            info.host_config.unwrap_or_default().network_mode.as_deref(),
            Some(net.as_str())
        );
        finish(&docker, runner).await
    }
    .await;
    docker.remove_network(&net).await?;
    result
}

/// Drains the runner and checks it left nothing behind.
async fn finish(docker: &Docker, runner: RunnerProc) -> Result<()> {
    runner.drain_and_check(docker).await
}
