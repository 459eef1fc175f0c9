//! Function output, against the real Docker engine and the testfn image: stdout and stderr lines
//! are logged with the call id, and capped at `FN_MAX_LOG_SIZE_BYTES` per call.
//! Every test ends with a drain (SIGTERM) and checks that no container of its runner is left.

use std::time::Duration;

use anyhow::Result;

use ferrofn_tests::images::TESTFN_IMAGE;
use ferrofn_tests::runner_proc::{EngageOpts, call_json, engage, start_with_testfn as setup};
use ferrofn_tests::testfn::{fn_id, knobs};

#[tokio::test]
async fn function_logs_are_captured_per_call_and_capped() -> Result<()> {
    let (docker, runner) = setup(&[("FN_MAX_LOG_SIZE_BYTES", "200")]).await?;
    let mut client = runner.client().await?;
    let call = call_json(TESTFN_IMAGE.as_str(), &fn_id(10), &[], |_| {});
    let id = serde_json::from_str::<serde_json::Value>(&call)?["id"]
        .as_str()
        .unwrap()
        .to_string();
    let k = serde_json::json!({"stderr": ["marker-err-7f3a"], "stdout": ["marker-out-7f3a"]});
    let r = engage(&mut client, &call, &knobs(k), EngageOpts::default()).await?;
    assert!(r.finished().success, "{:?}", r.finished());
    let logged = |needle: &'static str| {
        let path = runner.log_path.clone();
        let id = id.clone();
        move || {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let found = text
                .lines()
                .any(|l| l.contains(needle) && l.contains(&format!("call_id={id}")));
            async move { found }
        }
    };
    if let Err(e) = ferrofn_tests::runner_proc::eventually(
        "stderr line logged with the call id",
        Duration::from_secs(5),
        logged("marker-err-7f3a"),
    )
    .await
    {
        panic!(
            "{e}; body {}; log:\n{}",
            String::from_utf8_lossy(&r.body),
            runner.logs()
        );
    }
    ferrofn_tests::runner_proc::eventually(
        "stdout line logged with the call id",
        Duration::from_secs(5),
        logged("marker-out-7f3a"),
    )
    .await?;

    let call = call_json(TESTFN_IMAGE.as_str(), &fn_id(10), &[], |_| {});
    let lines: Vec<String> = (0..10)
        .map(|i| format!("cap-line-{i}-{}", "x".repeat(40)))
        .collect();
    let r = engage(
        &mut client,
        &call,
        &knobs(serde_json::json!({"stderr": lines})),
        EngageOpts::default(),
    )
    .await?;
    assert!(r.finished().success, "{:?}", r.finished());
    ferrofn_tests::runner_proc::eventually("truncation notice", Duration::from_secs(5), || {
        let text = runner.logs();
        async move { text.contains("max log size 200 bytes exceeded") }
    })
    .await?;
    let text = runner.logs();
    assert!(text.contains("cap-line-0-"), "first line missing");
    assert!(!text.contains("cap-line-9-"), "a line past the cap was logged");
    runner.drain_and_check(&docker).await
}
