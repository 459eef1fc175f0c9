//! Lifecycle of the compose cluster of `deploy/`: the LB keeps apps and fns across a restart (its
//! SQLite file lives in a volume), and `deploy/down.sh` leaves nothing behind, not even the function
//! containers of a runner that was killed and so could not remove them itself.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use bytes::Bytes;

use ferrofn_tests::cluster::{Cluster, RUNNERS, docker};
use ferrofn_tests::images::{HELLO_IMAGE, TESTFN_IMAGE};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lb_restart_keeps_apps_and_fns() -> Result<()> {
    let cluster = Cluster::up().await?;
    let hello = cluster
        .register("keep", "hello", HELLO_IMAGE.as_str(), 30)
        .await?;
    let testfn = cluster
        .register("keep", "echo", TESTFN_IMAGE.as_str(), 30)
        .await?;
    let r = cluster
        .invoke(&hello, Bytes::from_static(br#"{"name":"before"}"#))
        .await?;
    ensure!(r.status == 200, "before the restart: {} {}", r.status, r.text());

    let lb = cluster.container("lb").await?;
    docker(&["restart", "--time", "20", &lb]).await?;
    cluster.wait_lb(Duration::from_secs(60)).await?;

    let apps = cluster.api("GET", "/v2/apps?name=keep", None).await?;
    ensure!(
        apps.status == 200,
        "GET /v2/apps: {} {}",
        apps.status,
        apps.text()
    );
    let app_id = apps.json()["items"][0]["id"]
        .as_str()
        .context("app `keep` is gone after the LB restart")?
        .to_owned();
    let fns = cluster
        .api("GET", &format!("/v2/fns?app_id={app_id}"), None)
        .await?;
    let mut ids: Vec<String> = fns.json()["items"]
        .as_array()
        .context("fn list")?
        .iter()
        .filter_map(|f| f["id"].as_str().map(str::to_owned))
        .collect();
    ids.sort();
    let mut want = vec![hello.clone(), testfn];
    want.sort();
    ensure!(ids == want, "fns after the LB restart: {ids:?}, before: {want:?}");

    // Calls work again once the new LB process has probed the runners.
    let r = cluster
        .invoke(&hello, Bytes::from_static(br#"{"name":"after"}"#))
        .await?;
    ensure!(
        r.status == 200 && r.text().contains("Hello after"),
        "after the restart: {} {}",
        r.status,
        r.text()
    );
    cluster.down().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn down_removes_containers_function_containers_networks_volumes_and_iofs() -> Result<()> {
    let cluster = Cluster::up().await?;
    let fn_id = cluster
        .register("gone", "echo", TESTFN_IMAGE.as_str(), 30)
        .await?;
    // Concurrent calls, so that each runner very likely starts a function container.
    let calls = (0..12).map(|_| cluster.invoke(&fn_id, Bytes::from_static(br#"{"sleepTime":300}"#)));
    for r in futures::future::join_all(calls).await {
        let r = r?;
        ensure!(r.status == 200, "call: {} {}", r.status, r.text());
    }
    // Kill a runner that has function containers: it cannot remove them, down.sh must.
    let mut orphaned = None;
    for runner in RUNNERS {
        let label = format!("label=ferrofn.runner={}", cluster.runner_label(runner));
        if !docker(&["ps", "-q", "--filter", &label]).await?.trim().is_empty() {
            orphaned = Some(runner);
            break;
        }
    }
    let runner = orphaned.context("no runner has a function container")?;
    docker(&["kill", &cluster.container(runner).await?]).await?;
    let before = cluster.leftovers().await?;
    ensure!(
        before.iter().any(|l| l.starts_with("function container")),
        "expected orphaned function containers before down: {before:?}"
    );
    ensure!(before.iter().any(|l| l.starts_with("volume")), "{before:?}");
    ensure!(before.iter().any(|l| l.starts_with("network")), "{before:?}");
    // down() runs deploy/down.sh and fails if anything of the cluster is left.
    cluster.down().await
}
