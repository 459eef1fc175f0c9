//! Lifecycle of the compose cluster of `deploy/`: the LB keeps apps and fns across a restart (its
//! SQLite file lives in a volume), and `deploy/down.sh` leaves nothing behind, not even the function
//! containers of a runner that was killed and so could not remove them itself. Least privilege
//! (issue 13, point 3): each node holds only its own key and the CA certificate, the CA key only
//! the job that issues certificates.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use bytes::Bytes;

use ferrofn_tests::cluster::{Cluster, RUNNERS, docker};
use ferrofn_tests::images::{HELLO_IMAGE, TESTFN_IMAGE};

/// The files a container sees under `dir`, sorted (copied out of the container's own view of its
/// filesystem, mounts included).
async fn files_in(container: &str, dir: &str) -> Result<Vec<String>> {
    let tmp = tempfile::tempdir()?;
    let dest = tmp.path().join("copy");
    docker(&["cp", &format!("{container}:{dir}"), &dest.display().to_string()]).await?;
    let mut names: Vec<String> = std::fs::read_dir(&dest)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<std::io::Result<_>>()?;
    names.sort();
    Ok(names)
}

/// `docker inspect`: the names of the volumes mounted in `container`.
async fn volumes_of(container: &str) -> Result<Vec<String>> {
    let out = docker(&[
        "inspect",
        "--format",
        "{{range .Mounts}}{{if .Name}}{{.Name}} {{end}}{{end}}",
        container,
    ])
    .await?;
    Ok(out.split_whitespace().map(str::to_owned).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_node_holds_only_its_own_key_and_no_node_the_ca_key() -> Result<()> {
    let cluster = Cluster::up().await?;
    let ca_volume = format!("{}_certs-ca", cluster.project);

    let lb = cluster.container("lb").await?;
    ensure!(
        files_in(&lb, "/certs").await? == ["ca.pem", "lb-key.pem", "lb.pem"],
        "the LB sees {:?} in /certs",
        files_in(&lb, "/certs").await?
    );
    ensure!(
        !volumes_of(&lb).await?.contains(&ca_volume),
        "the LB mounts the CA's volume"
    );
    for runner in RUNNERS {
        let id = cluster.container(runner).await?;
        let want = [
            "ca.pem".to_owned(),
            format!("runner-{runner}-key.pem"),
            format!("runner-{runner}.pem"),
        ];
        let seen = files_in(&id, "/certs").await?;
        ensure!(seen == want, "{runner} sees {seen:?} in /certs, want {want:?}");
        ensure!(
            !volumes_of(&id).await?.contains(&ca_volume),
            "{runner} mounts the CA's volume"
        );
    }

    // From inside a runner: the LB's client identity is not there to take, and the runner's own
    // (server) certificate is refused as a client by another runner.
    let r1 = cluster.container(RUNNERS[0]).await?;
    let other = format!("{}:9190", RUNNERS[1]);
    // `ferrofn-runner probe` of the other runner's gRPC health, from inside runner-1, presenting
    // these client files.
    let probe_as = |cert: String, key: String| {
        let (r1, other) = (r1.clone(), other.clone());
        async move {
            docker(&[
                "exec",
                &r1,
                "/ferrofn-runner",
                "probe",
                "--addr",
                &other,
                "--ca",
                "/certs/ca.pem",
                "--cert",
                &cert,
                "--key",
                &key,
                "--timeout-ms",
                "3000",
            ])
            .await
        }
    };
    let as_lb = probe_as("/certs/lb.pem".into(), "/certs/lb-key.pem".into())
        .await
        .expect_err("a runner must not hold the LB's certificate");
    ensure!(
        format!("{as_lb:#}").contains("lb.pem"),
        "the probe should fail on the missing LB files: {as_lb:#}"
    );
    probe_as(
        format!("/certs/runner-{}.pem", RUNNERS[0]),
        format!("/certs/runner-{}-key.pem", RUNNERS[0]),
    )
    .await
    .expect_err("a runner's server certificate must not pass as a client certificate");

    // The issuer kept the CA key in its own volume, and the cluster works on these files.
    let certs = cluster.compose(&["ps", "-a", "-q", "certs"]).await?;
    let certs = certs.trim();
    ensure!(
        volumes_of(certs).await?.contains(&ca_volume),
        "the certs job has the CA volume"
    );
    let hello = cluster
        .register("priv", "hello", HELLO_IMAGE.as_str(), 30)
        .await?;
    let r = cluster
        .invoke(&hello, Bytes::from_static(br#"{"name":"least"}"#))
        .await?;
    ensure!(r.status == 200, "a call over mTLS: {} {}", r.status, r.text());
    cluster.down().await
}

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
