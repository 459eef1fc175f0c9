//! How the runner maps the function's FDK answer, against the real Docker engine and the testfn
//! image: 502 / 504 / other statuses to Fn's errors, a response header block over
//! `FN_MAX_HDR_RESPONSE_SIZE` to a 502, and the container still serves afterwards.
//! Every test ends with a drain (SIGTERM) and checks that no container of its runner is left.

use anyhow::Result;

use ferrofn_tests::images::TESTFN_IMAGE;
use ferrofn_tests::runner_proc::{EngageOpts, call_json, engage, start_with_testfn as setup};
use ferrofn_tests::testfn::{fn_id, knobs};

#[tokio::test]
async fn fdk_status_mapping_and_the_header_cap() -> Result<()> {
    let (docker, runner) = setup(&[("FN_MAX_HDR_RESPONSE_SIZE", "1024")]).await?;
    let mut client = runner.client().await?;
    let call = || call_json(TESTFN_IMAGE.as_str(), &fn_id(11), &[], |_| {});
    for (status, code, text) in [
        (502, 502, "function failed"),
        (504, 504, "Timed out"),
        (500, 502, "invalid function response"),
    ] {
        let r = engage(
            &mut client,
            &call(),
            &knobs(serde_json::json!({"httpStatus": status})),
            EngageOpts::default(),
        )
        .await?;
        let f = r.finished();
        assert_eq!(
            (f.success, f.error_code, f.error_str.as_str()),
            (false, code, text),
            "FDK status {status}"
        );
        assert_eq!(r.result_starts, 0);
    }
    let big = serde_json::json!({"returnHeaders": {"X-Big": ["h".repeat(2048)]}});
    let r = engage(&mut client, &call(), &knobs(big), EngageOpts::default()).await?;
    let f = r.finished();
    assert_eq!(
        (f.error_code, f.error_str.as_str()),
        (502, "function response header too large")
    );
    let r = engage(
        &mut client,
        &call(),
        &knobs(serde_json::json!({"echoContent": "fine"})),
        EngageOpts::default(),
    )
    .await?;
    assert!(r.finished().success, "{:?}", r.finished());
    runner.drain_and_check(&docker).await
}
