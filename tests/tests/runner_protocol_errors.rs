//! Bad Engage input against the runner (real Docker engine, testfn image): a first message that is
//! not a TryCall, call JSON that does not decode, resources the node can never have, and a stream
//! cancelled half way; the runner answers each as Fn does and keeps serving.
//! Every test ends with a drain (SIGTERM) and checks that no container of its runner is left.

use std::time::Duration;

use anyhow::Result;

use ferrofn_tests::images::TESTFN_IMAGE;
use ferrofn_tests::runner_proc::{EngageOpts, call_json, engage, start_with_testfn as setup};
use ferrofn_tests::testfn::fn_id;

#[tokio::test]
async fn bad_input() -> Result<()> {
    use ferrofn_proto::{ClientMsg, DataFrame, TryCall, client_msg};
    let (docker, runner) = setup(&[]).await?;
    let mut client = runner.client().await?;

    // First message not a TryCall: protocol error, no CallFinished.
    let first = ClientMsg {
        body: Some(client_msg::Body::Data(DataFrame {
            data: "x".into(),
            eof: true,
        })),
    };
    let mut s = client.engage(tokio_stream::iter(vec![first])).await?.into_inner();
    let err = match s.message().await {
        Ok(Some(m)) => panic!("unexpected message {m:?}"),
        Ok(None) => panic!("stream ended without an error"),
        Err(e) => e,
    };
    assert_eq!(err.message(), "Protocol failure: expected ClientMsg_Try");

    // Garbage JSON: CallFinished, not an API error (code 0) as in Fn.
    let r = engage(&mut client, "{not json", b"", EngageOpts::default()).await?;
    let f = r.finished();
    assert!(
        !f.success && f.error_code == 0 && !f.error_str.is_empty(),
        "{f:?}"
    );
    // A bare-number cpus is Fn's 400 Invalid JSON.
    let call = call_json(TESTFN_IMAGE.as_str(), &fn_id(8), &[], |v| v["cpus"] = 250.into());
    let r = engage(&mut client, &call, b"", EngageOpts::default()).await?;
    assert_eq!(
        (r.finished().error_code, r.finished().error_str.as_str()),
        (400, "Invalid JSON")
    );
    // Memory the node can never have: 400.
    let call = call_json(TESTFN_IMAGE.as_str(), &fn_id(8), &[], |v| {
        v["memory"] = (1u64 << 40).into()
    });
    let r = engage(&mut client, &call, b"", EngageOpts::default()).await?;
    assert_eq!(
        (r.finished().error_code, r.finished().error_str.as_str()),
        (400, "Requested CPU/Memory cannot be allocated")
    );

    // A stream cancelled in the middle of the body: the runner survives and serves the next call.
    let call = call_json(TESTFN_IMAGE.as_str(), &fn_id(9), &[], |_| {});
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(ClientMsg {
        body: Some(client_msg::Body::Try(TryCall {
            models_call_json: call,
            ..Default::default()
        })),
    })
    .await?;
    tx.send(ClientMsg {
        body: Some(client_msg::Body::Data(DataFrame {
            data: "{\"echoBody\":true}".into(),
            eof: false,
        })),
    })
    .await?;
    let stream = client
        .engage(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    // Cancel once the runner is working on it (one Engage in flight).
    let status_client = client.clone();
    ferrofn_tests::runner_proc::eventually("call in flight", Duration::from_secs(10), || {
        let mut c = status_client.clone();
        #[allow(deprecated)]
        async move {
            c.status(())
                .await
                .map(|s| s.into_inner().active == 1)
                .unwrap_or(false)
        }
    })
    .await?;
    drop(stream);
    drop(tx);
    ferrofn_tests::runner_proc::eventually("cancelled call cleaned up", Duration::from_secs(10), || {
        let mut c = status_client.clone();
        #[allow(deprecated)]
        async move {
            c.status(())
                .await
                .map(|s| s.into_inner().active == 0)
                .unwrap_or(false)
        }
    })
    .await?;
    let call = call_json(TESTFN_IMAGE.as_str(), &fn_id(9), &[], |_| {});
    let r = engage(
        &mut client,
        &call,
        b"{\"echoContent\":\"still here\"}",
        EngageOpts::default(),
    )
    .await?;
    assert!(r.finished().success, "{:?}", r.finished());
    runner.drain_and_check(&docker).await
}
