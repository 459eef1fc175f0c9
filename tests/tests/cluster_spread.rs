//! The compose cluster of `deploy/` spreads calls: 300 calls through the LB all succeed and every
//! one of the three runners serves some of them (counted on the runners' own `/metrics`, since the
//! LB's responses do not name the runner).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use bytes::Bytes;

use ferrofn_tests::cluster::{Cluster, Load, RUNNERS, describe_failures};
use ferrofn_tests::images::HELLO_IMAGE;

const CALLS: usize = 300;
const WORKERS: usize = 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_hundred_calls_are_spread_over_all_three_runners() -> Result<()> {
    let cluster = Cluster::up().await?;
    let fn_id = cluster
        .register("spread", "hello", HELLO_IMAGE.as_str(), 30)
        .await?;

    let mut before = BTreeMap::new();
    for r in RUNNERS {
        before.insert(r, cluster.runner_calls(r).await?);
    }
    let t = Instant::now();
    let load = Load::start(
        cluster.url(&format!("/invoke/{fn_id}")),
        Bytes::from_static(br#"{"name":"spread"}"#),
        WORKERS,
        CALLS,
        Duration::from_secs(30),
    );
    // The load stops by itself after CALLS calls; bound the wait.
    load.wait_calls(CALLS, Duration::from_secs(120)).await?;
    let outcomes = load.finish().await?;
    eprintln!("{CALLS} calls in {:?}", t.elapsed());
    ensure!(outcomes.len() == CALLS, "{} calls made", outcomes.len());
    ensure!(
        outcomes.iter().all(|o| o.ok()),
        "{}",
        describe_failures(&outcomes)
    );
    ensure!(
        outcomes.iter().all(|o| o.body.contains("Hello spread")),
        "unexpected body: {:?}",
        outcomes.iter().find(|o| !o.body.contains("Hello spread"))
    );

    let mut served = BTreeMap::new();
    for r in RUNNERS {
        served.insert(r, cluster.runner_calls(r).await? - before[r]);
    }
    eprintln!("calls per runner: {served:?}");
    ensure!(
        served.values().sum::<u64>() == CALLS as u64,
        "the runners counted {served:?}, not {CALLS} calls in all"
    );
    ensure!(
        served.values().all(|&n| n > 0),
        "a runner served no call: {served:?}"
    );
    cluster.down().await
}
