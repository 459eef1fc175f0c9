//! A client cancel of a call that waits for a slot, against the real Docker engine and the testfn
//! image: the call leaves the runner's queue at once, whichever way the stream ends.
//! Every test ends with a drain (SIGTERM) and checks that no container of its runner is left.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Result;

use ferrofn_tests::images::TESTFN_IMAGE;
use ferrofn_tests::load::{metric_sum, scrape};
use ferrofn_tests::runner_proc::{OpenCall, call_json, eventually, open_call, start_with_testfn as setup};
use ferrofn_tests::testfn::fn_id;

/// A client cancel of a call that waits for a slot (its function's only container never finishes
/// starting) takes the call out of the queue at once, whichever way the stream ends: Fn's LB resets
/// a stream whose request side is still open; a client may half-close first and reset after;
/// the ferrofn LB asks for the accept ack.
#[tokio::test]
async fn a_client_cancel_takes_a_waiting_call_out_of_the_queue() -> Result<()> {
    let (docker, runner) = setup(&[("FN_HOT_START_TIMEOUT_MSECS", "3600000")]).await?;
    let mut client = runner.client().await?;
    let call = call_json(
        TESTFN_IMAGE.as_str(),
        &fn_id(70),
        &[("ENABLE_INIT_DELAY_MSEC", "3600000")],
        |_| {},
    );
    let gauge = |name: &'static str| {
        let addr = runner.http_addr;
        async move { metric_sum(&scrape(addr).await.unwrap_or_default(), name, &[]) }
    };
    let ack = HashMap::from([("ferrofn-accept-ack".to_string(), "1".to_string())]);
    for (mode, extensions, half_close_first) in [
        ("reset with the request side open", HashMap::new(), false),
        ("half-close, then reset", HashMap::new(), true),
        ("accept-ack mode", ack, false),
    ] {
        let open = open_call(&mut client, call.clone(), b"{}", extensions).await?;
        eventually(
            &format!("{mode}: the call waits"),
            Duration::from_secs(30),
            || async { gauge("ferrofn_runner_waiting_calls").await == 1.0 },
        )
        .await?;
        let OpenCall { responses, requests } = open;
        if half_close_first {
            drop(requests);
            drop(responses);
        } else {
            drop(responses);
            drop(requests);
        }
        eventually(
            &format!("{mode}: the cancelled call leaves the queue and the stream ends"),
            Duration::from_secs(5),
            || async {
                gauge("ferrofn_runner_waiting_calls").await == 0.0
                    && gauge("ferrofn_runner_inflight_calls").await == 0.0
            },
        )
        .await?;
    }
    runner.drain_and_check(&docker).await
}
