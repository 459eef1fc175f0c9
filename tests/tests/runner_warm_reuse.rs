//! Warm calls against the real Docker engine and the testfn image: sequential Engage calls in both
//! modes, with small and 200 KB answers, are all served by the one container the first call
//! started. Warm-call latency is a figure of the bench (`make bench`, BENCHMARKS.md), not of a test.
//! Every test ends with a drain (SIGTERM) and checks that no container of its runner is left.

use anyhow::Result;

use ferrofn_tests::images::TESTFN_IMAGE;
use ferrofn_tests::load::{metric_sum, scrape};
use ferrofn_tests::runner_proc::{EngageOpts, call_json, containers_of, engage, start_with_testfn as setup};
use ferrofn_tests::testfn::{fn_id, knobs, pattern};

/// 31 sequential calls per mode over one kept-alive gRPC connection: every one succeeds with its
/// whole answer, and the runner starts exactly one container for all 93.
#[tokio::test]
async fn warm_calls_in_both_modes_reuse_one_container() -> Result<()> {
    let (docker, runner) = setup(&[]).await?;
    let mut client = runner.client().await?;
    let small = knobs(serde_json::json!({"echoContent": "x"}));
    let large = knobs(serde_json::json!({"responseSize": 200_000}));
    let ack = EngageOpts {
        extensions: [("ferrofn-accept-ack".to_string(), "1".to_string())].into(),
        ..Default::default()
    };
    let mut calls = 0_u32;
    for (mode, opts, body) in [
        ("Fn mode, small answer", EngageOpts::default(), &small),
        ("accept-ack, small answer", ack.clone(), &small),
        ("accept-ack, 200 KB answer", ack, &large),
    ] {
        for i in 0..31 {
            let call = call_json(TESTFN_IMAGE.as_str(), &fn_id(21), &[], |_| {});
            let r = engage(&mut client, &call, body, opts.clone()).await?;
            assert!(r.finished().success, "{mode}, call {i}: {:?}", r.finished());
            if body == &large {
                assert!(r.body == pattern(200_000), "{mode}, call {i}: answer differs");
            }
            calls += 1;
        }
    }
    let metrics = scrape(runner.http_addr).await?;
    assert_eq!(
        metric_sum(&metrics, "ferrofn_runner_calls_total", &[("outcome", "ok")]),
        f64::from(calls),
        "{metrics}"
    );
    assert_eq!(
        metric_sum(&metrics, "ferrofn_runner_cold_starts_total", &[]),
        1.0,
        "one container for all {calls} calls"
    );
    assert_eq!(containers_of(&docker, &runner.name).await?.len(), 1);
    runner.drain_and_check(&docker).await
}
