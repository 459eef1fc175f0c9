//! The HA compose cluster (`make demo-ha`; `deploy/docker-compose.ha.yml`, issue 12 item 5): Postgres
//! built here from Debian's package, two LBs sharing it as their registry, nginx (also Debian's) in
//! front of both and alone published, one `runner` service scaled to three replicas sharing one
//! server certificate. Driven by the same scripts as `make demo-ha` / `make down`.
//!
//! What it checks now: the topology (one published port, nginx's), which volumes each node mounts
//! (certificates per service), distinct runner names per replica, a fn registered through nginx is seen by both LBs, calls through nginx are served by
//! both LBs (their own call counters, read on the cluster network, add up to the calls sent), a
//! write through one LB is served by the other, and `deploy/down.sh` removes everything, function
//! containers of a SIGKILLed runner replica included.
//!
//! With the LB's runner discovery through DNS (issue 12 item 4), every replica of `runner:9190`
//! serves, and the replicas can be scaled under load without a failed call.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use bytes::Bytes;

use ferrofn_tests::cluster::{Cluster, HA_LBS, HA_RUNNERS, Load, describe_failures, docker};
use ferrofn_tests::images::{HELLO_IMAGE, TESTFN_IMAGE};
use ferrofn_tests::load::metric_sum;

/// Every output of `docker logs` (the nodes log to stderr).
async fn container_logs(id: &str) -> Result<String> {
    let out = tokio::process::Command::new("docker")
        .args(["logs", id])
        .stdin(Stdio::null())
        .output()
        .await
        .context("docker logs")?;
    Ok(format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

/// The named volumes mounted in a container, sorted.
async fn named_volumes(id: &str) -> Result<Vec<String>> {
    let out = docker(&[
        "inspect",
        "--format",
        "{{range .Mounts}}{{if eq .Type \"volume\"}}{{.Name}} {{end}}{{end}}",
        id,
    ])
    .await?;
    let mut names: Vec<String> = out.split_whitespace().map(str::to_owned).collect();
    names.sort();
    Ok(names)
}

/// The runner name a runner logged at start (`runner started ... runner=<name>`).
fn logged_runner_name(logs: &str) -> Option<String> {
    let line = logs.lines().find(|l| l.contains("runner started"))?;
    // Plain text `runner=NAME` or JSON `"runner":"NAME"`.
    let rest = if let Some(i) = line.find(" runner=") {
        &line[i + 8..]
    } else {
        let i = line.find("\"runner\":\"")?;
        &line[i + 10..]
    };
    let name: String = rest
        .trim_start_matches('"')
        .chars()
        .take_while(|c| !c.is_whitespace() && *c != '"' && *c != ',')
        .collect();
    (!name.is_empty()).then_some(name)
}

/// `lb_calls_total` (every outcome) of each LB, read on the cluster network.
async fn lb_calls(cluster: &Cluster) -> Result<BTreeMap<&'static str, f64>> {
    let mut out = BTreeMap::new();
    for lb in HA_LBS {
        let id = cluster.container(lb).await?;
        out.insert(
            lb,
            metric_sum(&cluster.metrics_of(&id).await?, "lb_calls_total", &[]),
        );
    }
    Ok(out)
}

/// Calls each runner replica served (by container id): `ferrofn_runner_calls_total{outcome="ok"}`.
/// A call an LB gave up on at a replica (`canceled`: it answered too late under a cold start, and
/// the call went to another) is not a call served.
async fn runner_calls(cluster: &Cluster) -> Result<BTreeMap<String, f64>> {
    let mut out = BTreeMap::new();
    for id in cluster.containers("runner").await? {
        let text = cluster.metrics_of(&id).await?;
        out.insert(
            id,
            metric_sum(&text, "ferrofn_runner_calls_total", &[("outcome", "ok")]),
        );
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ha_cluster_serves_through_nginx_on_both_lbs_and_down_removes_everything() -> Result<()> {
    let cluster = Cluster::up_ha().await?;

    // Topology: one container per node service, three runner replicas, and nginx's port alone
    // published (on loopback).
    for svc in ["postgres", "lb-1", "lb-2", "nginx"] {
        let ids = cluster.containers(svc).await?;
        ensure!(ids.len() == 1, "{svc}: {} containers", ids.len());
    }
    let runners = cluster.containers("runner").await?;
    ensure!(
        runners.len() == HA_RUNNERS,
        "{} runner replicas, want {HA_RUNNERS}",
        runners.len()
    );
    let nginx = cluster.container("nginx").await?;
    for id in cluster.compose(&["ps", "-q"]).await?.split_whitespace() {
        let published = docker(&["port", id]).await?;
        if id == nginx {
            ensure!(
                published.trim() == format!("8080/tcp -> 127.0.0.1:{}", cluster.port),
                "nginx publishes {published:?}"
            );
        } else {
            ensure!(
                published.trim().is_empty(),
                "container {id} publishes {published:?}"
            );
        }
    }

    // Least privilege: each node mounts its own volumes alone. The CA's key only in the one-shot
    // certs job; both LBs one client identity; the runner replicas one server identity.
    let project = &cluster.project;
    let want: [(&str, &[&str]); 5] = [
        ("postgres", &["pg-data"]),
        ("lb-1", &["certs-lb"]),
        ("lb-2", &["certs-lb"]),
        ("nginx", &[]),
        ("runner", &["certs-runner"]),
    ];
    for (svc, volumes) in want {
        let want: Vec<String> = volumes.iter().map(|v| format!("{project}_{v}")).collect();
        for id in cluster.containers(svc).await? {
            let seen = named_volumes(&id).await?;
            ensure!(seen == want, "{svc} ({id}) mounts {seen:?}, want {want:?}");
        }
    }
    let certs = cluster.compose(&["ps", "-a", "-q", "certs"]).await?;
    let seen = named_volumes(certs.trim()).await?;
    ensure!(
        seen.contains(&format!("{project}_certs-ca")),
        "the certs job mounts {seen:?}"
    );

    // Each replica runs under its own runner name, `<hostname>-9190` (its hostname is its
    // container id): the name its function containers are labelled with and swept by.
    let mut names = BTreeSet::new();
    for id in &runners {
        let host = docker(&["inspect", "--format", "{{.Config.Hostname}}", id]).await?;
        let logs = container_logs(id).await?;
        let name = logged_runner_name(&logs)
            .with_context(|| format!("runner {id} logged no `runner started` line: {logs}"))?;
        ensure!(
            name == format!("{}-9190", host.trim()),
            "runner {id} (hostname {host:?}) runs as {name:?}"
        );
        names.insert(name);
    }
    ensure!(
        names.len() == HA_RUNNERS,
        "runner names are not distinct: {names:?}"
    );

    // Registered through nginx (whichever LB it picked); both LBs, asked directly, have it.
    let hello = cluster.register("ha", "hello", HELLO_IMAGE.as_str(), 30).await?;
    for lb in HA_LBS {
        let r = cluster
            .api_on(lb, "GET", &format!("/v2/fns/{hello}"), None)
            .await?;
        ensure!(
            r.status == 200,
            "{lb}: GET /v2/fns/{hello}: {} {}",
            r.status,
            r.text()
        );
        ensure!(
            r.json()["image"] == HELLO_IMAGE.as_str(),
            "{lb} sees {}",
            r.text()
        );
    }

    // Calls through nginx: every one answers, and both LBs served some. Their own counters,
    // read on the cluster network, add up to exactly the calls sent (nothing else invokes).
    let lbs_before = lb_calls(&cluster).await?;
    let runners_before = runner_calls(&cluster).await?;
    const CALLS: usize = 40;
    let (cluster_ref, hello_ref) = (&cluster, hello.as_str());
    for batch in 0..CALLS / 4 {
        let calls = (0..4).map(|i| {
            let n = batch * 4 + i;
            let (cluster, hello) = (cluster_ref, hello_ref);
            async move {
                let r = cluster
                    .invoke(hello, Bytes::from(format!(r#"{{"name":"ha-{n}"}}"#)))
                    .await?;
                ensure!(
                    r.status == 200 && r.text().contains(&format!("Hello ha-{n}")),
                    "call {n} through nginx: {} {}",
                    r.status,
                    r.text()
                );
                anyhow::Ok(())
            }
        });
        for r in futures::future::join_all(calls).await {
            r?;
        }
    }
    let lbs_after = lb_calls(&cluster).await?;
    let per_lb: BTreeMap<&str, f64> = HA_LBS
        .iter()
        .map(|lb| (*lb, lbs_after[lb] - lbs_before[lb]))
        .collect();
    ensure!(
        per_lb.values().all(|n| *n > 0.0),
        "an LB served none of the {CALLS} calls through nginx: {per_lb:?}"
    );
    ensure!(
        per_lb.values().sum::<f64>() == CALLS as f64,
        "the LBs counted {per_lb:?} calls, {CALLS} were sent"
    );
    let runners_after = runner_calls(&cluster).await?;
    let per_runner: Vec<f64> = runners_after
        .iter()
        .map(|(id, n)| n - runners_before.get(id).copied().unwrap_or(0.0))
        .collect();
    ensure!(
        per_runner.iter().sum::<f64>() == CALLS as f64,
        "the runner replicas counted {per_runner:?} calls, {CALLS} were sent"
    );
    eprintln!("calls per LB: {per_lb:?}; per runner replica: {per_runner:?}");

    // A fn created through lb-2 is served by lb-1; deleted through lb-1, lb-2 (which has it
    // cached) answers 404 within 1 s (the registry's LISTEN/NOTIFY; lb/README.md).
    let app = cluster.api_on("lb-2", "GET", "/v2/apps?name=ha", None).await?;
    let app_id = app.json()["items"][0]["id"]
        .as_str()
        .context("app ha on lb-2")?
        .to_owned();
    let r = cluster
        .api_on(
            "lb-2",
            "POST",
            "/v2/fns",
            Some(serde_json::json!({
                "app_id": app_id, "name": "echo", "image": TESTFN_IMAGE.as_str(),
                "memory": 128, "timeout": 30,
            })),
        )
        .await?;
    ensure!(r.status == 200, "POST /v2/fns on lb-2: {} {}", r.status, r.text());
    let echo = r.json()["id"].as_str().context("fn id")?.to_owned();
    let r = cluster
        .invoke_on("lb-1", &echo, Bytes::from_static(b"{}"))
        .await?;
    ensure!(
        r.status == 200,
        "lb-1 calls the fn made on lb-2: {} {}",
        r.status,
        r.text()
    );
    let r = cluster
        .invoke_on("lb-2", &echo, Bytes::from_static(b"{}"))
        .await?;
    ensure!(
        r.status == 200,
        "lb-2 calls its own fn: {} {}",
        r.status,
        r.text()
    );
    let r = cluster
        .api_on("lb-1", "DELETE", &format!("/v2/fns/{echo}"), None)
        .await?;
    ensure!(r.status == 204, "DELETE on lb-1: {} {}", r.status, r.text());
    let deleted = Instant::now();
    loop {
        let r = cluster
            .invoke_on("lb-2", &echo, Bytes::from_static(b"{}"))
            .await?;
        if r.status == 404 {
            break;
        }
        ensure!(
            deleted.elapsed() < Duration::from_secs(1),
            "lb-2 still answers {} for a fn deleted through lb-1 {:?} ago",
            r.status,
            deleted.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // make down's path: a runner replica SIGKILLed with function containers of its own cannot
    // remove them; deploy/down.sh must (they are labelled with its container-id name).
    let mut killed = None;
    for id in &runners {
        let host = docker(&["inspect", "--format", "{{.Config.Hostname}}", id]).await?;
        let label = format!("label=ferrofn.runner={}-9190", host.trim());
        if !docker(&["ps", "-q", "--filter", &label]).await?.trim().is_empty() {
            killed = Some(id.clone());
            break;
        }
    }
    let killed = killed.context("no runner replica has a function container")?;
    docker(&["kill", &killed]).await?;
    let before = cluster.leftovers().await?;
    for kind in ["function container", "volume", "network", "container"] {
        ensure!(
            before.iter().any(|l| l.starts_with(kind)),
            "expected a {kind} before down: {before:?}"
        );
    }
    // down() runs deploy/down.sh (FERROFN_HA=1) and fails if anything of the cluster is left.
    cluster.down().await
}

/// Issue 12, point 4: the LBs find the runner replicas through Docker's DNS (`runner:9190`, one A
/// record per replica): every replica serves; scaled 3 -> 5 under load the new ones join without a
/// reload and serve, scaled 5 -> 2 the removed ones drain (SIGTERM: NOT_SERVING, in-flight calls
/// finish) and leave placement, and no call fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn runner_replicas_found_through_dns_serve_and_scale_3_5_2_under_load() -> Result<()> {
    let cluster = Cluster::up_ha().await?;
    let fn_id = cluster
        .register("spread", "echo", TESTFN_IMAGE.as_str(), 30)
        .await?;
    let before = runner_calls(&cluster).await?;
    // Concurrent calls that each hold a container for a while, so that one runner's capacity is
    // not what decides the spread.
    const CALLS: usize = 48;
    for batch in 0..CALLS / 8 {
        let calls = (0..8).map(|_| cluster.invoke(&fn_id, Bytes::from_static(br#"{"sleepTime":300}"#)));
        for (i, r) in futures::future::join_all(calls).await.into_iter().enumerate() {
            let r = r?;
            ensure!(
                r.status == 200,
                "call {}: {} {}",
                batch * 8 + i,
                r.status,
                r.text()
            );
        }
    }
    let after = runner_calls(&cluster).await?;
    let per_runner: BTreeMap<&String, f64> = after
        .iter()
        .map(|(id, n)| (id, n - before.get(id).copied().unwrap_or(0.0)))
        .collect();
    ensure!(per_runner.len() == HA_RUNNERS, "{per_runner:?}");
    // THE assertion to enable with DNS discovery: every replica served calls.
    ensure!(
        per_runner.values().all(|n| *n > 0.0),
        "a runner replica served none of {CALLS} calls: {per_runner:?}"
    );
    ensure!(
        per_runner.values().sum::<f64>() == CALLS as f64,
        "runner replicas counted {per_runner:?}, {CALLS} calls were sent"
    );

    // Scale under steady load through nginx.
    let load = Load::start(
        cluster.url(&format!("/invoke/{fn_id}")),
        Bytes::from_static(br#"{"sleepTime":50}"#),
        6,
        20_000,
        Duration::from_secs(60),
    );
    load.wait_calls(30, Duration::from_secs(60)).await?;
    for (n, what) in [(5, "scaled up"), (2, "scaled down")] {
        let t = Instant::now();
        cluster
            .compose(&[
                "up",
                "-d",
                "--no-recreate",
                "--scale",
                &format!("runner={n}"),
                "runner",
            ])
            .await?;
        let members = wait_members(&cluster, n, Duration::from_secs(60)).await?;
        let ids = cluster.containers("runner").await?;
        ensure!(ids.len() == n, "{what}: {} runner containers", ids.len());
        // Every replica that is left serves part of the load.
        let base = runner_calls(&cluster).await?;
        let start = load.done();
        load.wait_calls(start + 60, Duration::from_secs(60)).await?;
        let now = runner_calls(&cluster).await?;
        let idle: Vec<&String> = now
            .iter()
            .filter(|(id, c)| **c <= base.get(*id).copied().unwrap_or(0.0))
            .map(|(id, _)| id)
            .collect();
        eprintln!(
            "{what} to {n}: both LBs at {members} members {:?} after the compose command; idle replicas {idle:?}",
            t.elapsed()
        );
        ensure!(idle.is_empty(), "{what} to {n}: replicas {idle:?} got no calls");
    }
    let outcomes = load.finish().await?;
    let failed = outcomes.iter().filter(|o| !o.ok()).count();
    eprintln!("{} calls through the scaling, {failed} failed", outcomes.len());
    ensure!(failed == 0, "{}", describe_failures(&outcomes));
    cluster.down().await
}

/// Waits until both LBs count `n` runner members (`lb_runner_members`); returns it.
async fn wait_members(cluster: &Cluster, n: usize, limit: Duration) -> Result<usize> {
    let deadline = Instant::now() + limit;
    loop {
        let mut counts = Vec::new();
        for lb in ["lb-1", "lb-2"] {
            let id = cluster.container(lb).await?;
            let text = cluster.metrics_of(&id).await?;
            counts.push(metric_sum(&text, "lb_runner_members", &[]) as usize);
        }
        if counts.iter().all(|c| *c == n) {
            return Ok(n);
        }
        ensure!(
            Instant::now() < deadline,
            "the LBs count {counts:?} runner members, not {n}, after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[test]
fn parses_the_runner_name_from_its_start_line() {
    let text = "2026-01-01T00:00:00Z  INFO ferrofn_runner::service: runner started \
                grpc_addr=0.0.0.0:9190 http_addr=0.0.0.0:8080 runner=3f2a1b4c5d6e-9190 instance=01j";
    assert_eq!(logged_runner_name(text).as_deref(), Some("3f2a1b4c5d6e-9190"));
    let json = r#"{"fields":{"message":"runner started","runner":"abc-9190","instance":"x"}}"#;
    assert_eq!(logged_runner_name(json).as_deref(), Some("abc-9190"));
    assert_eq!(logged_runner_name("nothing here"), None);
}
