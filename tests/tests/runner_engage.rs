//! The runner's Engage behaviour against the real Docker engine and the testfn image: echo over many
//! frames, empty and large bodies, the response cap, timeouts, crashes, init failures, premature
//! writes, headers both ways, the accept ack, protocol errors. Every test ends with a drain (SIGTERM)
//! and checks that no container of its runner is left.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Result;
use bollard::Docker;
use ferrofn_tests::images::TESTFN_IMAGE;
use ferrofn_tests::load::{metric_sum, scrape};
use ferrofn_tests::runner_proc::{
    EngageOpts, OpenCall, RunnerProc, call_json, containers_of, engage, eventually, open_call,
    start_with_testfn as setup,
};

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| b'a' + (i % 26) as u8).collect()
}

fn knobs(v: serde_json::Value) -> Vec<u8> {
    v.to_string().into_bytes()
}

#[tokio::test]
async fn echo_body_over_many_frames() -> Result<()> {
    let (docker, runner) = setup(&[]).await?;
    let mut client = runner.client().await?;
    let mut body = knobs(serde_json::json!({"echoBody": true}));
    body.extend_from_slice(&pattern(100 * 1024));
    let call = call_json(TESTFN_IMAGE, "01FNECHO000000000000000000", &[], |_| {});
    let r = engage(&mut client, &call, &body, EngageOpts::default()).await?;
    let f = r.finished();
    assert!(f.success, "{f:?}\n{}", runner.logs());
    assert_eq!(r.status, Some(200));
    assert_eq!(r.result_starts, 1);
    assert_eq!(r.body.len(), body.len());
    assert!(r.body == body, "echoed body differs");
    assert!(r.frames >= 10, "expected many frames, got {}", r.frames);
    assert!(r.max_frame <= 10240, "frame of {} bytes", r.max_frame);
    assert_eq!(r.after_finished, 0);
    assert!(r.error.is_none(), "{:?}", r.error);
    let id: serde_json::Value = serde_json::from_str(&call)?;
    assert_eq!(
        f.details,
        id["id"].as_str().unwrap(),
        "CallFinished.details is the LB's call id"
    );
    assert!(!f.created_at.is_empty() && !f.started_at.is_empty() && !f.completed_at.is_empty());
    assert!(f.execution_duration > 0);
    assert_eq!(f.image, TESTFN_IMAGE);
    finish(&docker, runner).await
}

fn fn_id(n: u32) -> String {
    format!("01FNTEST{n:018}")
}

#[tokio::test]
async fn empty_body_and_large_bodies_and_the_response_cap() -> Result<()> {
    let (docker, runner) = setup(&[("FN_MAX_RESPONSE_SIZE", "6291456")]).await?;
    let mut client = runner.client().await?;
    let call = || call_json(TESTFN_IMAGE, &fn_id(1), &[], |_| {});

    let r = engage(
        &mut client,
        &call(),
        &knobs(serde_json::json!({"isEmptyBody": true})),
        EngageOpts::default(),
    )
    .await?;
    assert!(r.finished().success, "{:?}", r.finished());
    assert_eq!((r.status, r.body.len()), (Some(200), 0));

    // No body at all: exactly one eof frame from the client.
    let r = engage(&mut client, &call(), b"", EngageOpts::default()).await?;
    assert!(r.finished().success, "{:?}", r.finished());

    let size = 5 * 1024 * 1024 + 300 * 1024;
    let r = engage(
        &mut client,
        &call(),
        &knobs(serde_json::json!({"responseSize": size})),
        EngageOpts::default(),
    )
    .await?;
    assert!(r.finished().success, "{:?}", r.finished());
    assert_eq!(r.body.len(), size);
    assert!(r.body == pattern(size), "5.3 MB response corrupted");
    assert!(r.max_frame <= 10240 && r.frames >= size / 10240);

    let over = 6 * 1024 * 1024 + 1;
    let r = engage(
        &mut client,
        &call(),
        &knobs(serde_json::json!({"responseSize": over})),
        EngageOpts::default(),
    )
    .await?;
    let f = r.finished();
    assert!(!f.success);
    assert_eq!(
        (f.error_code, f.error_str.as_str()),
        (502, "function response body too large")
    );
    assert!(f.error_user);

    // The container survived the over-size body (Fn keeps it): the next call reuses it.
    let r = engage(
        &mut client,
        &call(),
        &knobs(serde_json::json!({"echoContent": "after"})),
        EngageOpts::default(),
    )
    .await?;
    assert!(r.finished().success, "{:?}", r.finished());
    assert_eq!(containers_of(&docker, &runner.name).await?.len(), 1);
    finish(&docker, runner).await
}

#[tokio::test]
async fn timeout_gives_504_and_a_fresh_container() -> Result<()> {
    let (docker, runner) = setup(&[]).await?;
    let mut client = runner.client().await?;
    let call = call_json(TESTFN_IMAGE, &fn_id(2), &[], |v| v["timeout"] = 1.into());
    let t = std::time::Instant::now();
    let r = engage(
        &mut client,
        &call,
        &knobs(serde_json::json!({"sleepTime": 5000})),
        EngageOpts::default(),
    )
    .await?;
    let f = r.finished();
    assert_eq!(
        (f.success, f.error_code, f.error_str.as_str()),
        (false, 504, "Timed out")
    );
    assert!(f.error_user);
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "timeout took {:?}",
        t.elapsed()
    );
    assert_eq!(r.result_starts, 0);
    let call = call_json(TESTFN_IMAGE, &fn_id(2), &[], |v| v["timeout"] = 1.into());
    let r = engage(
        &mut client,
        &call,
        &knobs(serde_json::json!({"echoContent": "ok"})),
        EngageOpts::default(),
    )
    .await?;
    assert!(r.finished().success, "{:?}", r.finished());
    finish(&docker, runner).await
}

fn docker_id(body: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    v["data"]["DockerId"].as_str().unwrap_or_default().to_string()
}

/// A function that exits after answering (fn-test-utils' `isShutdown`): the call succeeds, the runner
/// notices the exit (docker wait), and the next call runs in a new container.
#[tokio::test]
async fn exit_between_calls_gives_the_next_call_a_new_container() -> Result<()> {
    let (docker, runner) = setup(&[]).await?;
    let mut client = runner.client().await?;
    // The delay lets the reply leave before the process ends, as with fn-test-utils.
    let call = || {
        call_json(
            TESTFN_IMAGE,
            &fn_id(31),
            &[("ENABLE_EXIT_DELAY_MSEC", "100")],
            |_| {},
        )
    };
    let r = engage(
        &mut client,
        &call(),
        &knobs(serde_json::json!({"isDebug": true, "isShutdown": true})),
        EngageOpts::default(),
    )
    .await?;
    assert!(r.finished().success, "{:?}", r.finished());
    let first = docker_id(&r.body);
    assert!(
        !first.is_empty(),
        "no DockerId in {}",
        String::from_utf8_lossy(&r.body)
    );
    // The runner sees the exit through docker wait and removes the container.
    let name = runner.name.clone();
    eventually("the exited container is removed", Duration::from_secs(20), || {
        let (docker, name) = (docker.clone(), name.clone());
        async move { containers_of(&docker, &name).await.is_ok_and(|c| c.is_empty()) }
    })
    .await?;
    let r = engage(
        &mut client,
        &call(),
        &knobs(serde_json::json!({"isDebug": true})),
        EngageOpts::default(),
    )
    .await?;
    assert!(r.finished().success, "call after the exit: {:?}", r.finished());
    let second = docker_id(&r.body);
    assert!(!second.is_empty());
    assert_ne!(first, second, "an exited container must not serve again");
    finish(&docker, runner).await
}

#[tokio::test]
async fn crash_gives_502_then_a_new_container() -> Result<()> {
    let (docker, runner) = setup(&[]).await?;
    let mut client = runner.client().await?;
    let call = || call_json(TESTFN_IMAGE, &fn_id(3), &[], |_| {});
    let r = engage(
        &mut client,
        &call(),
        &knobs(serde_json::json!({"isDebug": true})),
        EngageOpts::default(),
    )
    .await?;
    assert!(r.finished().success, "{:?}", r.finished());
    let first = docker_id(&r.body);
    assert!(
        !first.is_empty(),
        "no DockerId in {}",
        String::from_utf8_lossy(&r.body)
    );

    let r = engage(
        &mut client,
        &call(),
        &knobs(serde_json::json!({"isCrash": true})),
        EngageOpts::default(),
    )
    .await?;
    let f = r.finished();
    assert_eq!(
        (f.success, f.error_code, f.error_str.as_str()),
        (false, 502, "error receiving function response")
    );
    assert!(f.error_user);

    let r = engage(
        &mut client,
        &call(),
        &knobs(serde_json::json!({"isDebug": true})),
        EngageOpts::default(),
    )
    .await?;
    assert!(r.finished().success, "{:?}", r.finished());
    let second = docker_id(&r.body);
    assert_ne!(first, second, "the crashed container must not serve again");
    let live: Vec<String> = containers_of(&docker, &runner.name)
        .await?
        .into_iter()
        .filter_map(|c| c.id)
        .collect();
    assert!(!live.contains(&first), "crashed container {first} still present");
    finish(&docker, runner).await
}

#[tokio::test]
async fn init_delay_over_hot_start_timeout_is_504_and_init_exit_is_502() -> Result<()> {
    let (docker, runner) = setup(&[("FN_HOT_START_TIMEOUT_MSECS", "1500")]).await?;
    let mut client = runner.client().await?;
    let slow = call_json(
        TESTFN_IMAGE,
        &fn_id(4),
        &[("ENABLE_INIT_DELAY_MSEC", "5000")],
        |_| {},
    );
    let r = engage(&mut client, &slow, b"{}", EngageOpts::default()).await?;
    let f = r.finished();
    assert_eq!((f.success, f.error_code), (false, 504), "{f:?}");
    assert!(
        f.error_str.starts_with("Container initialization timed out"),
        "{}",
        f.error_str
    );
    assert!(f.error_user);

    let exits = call_json(TESTFN_IMAGE, &fn_id(5), &[("ENABLE_INIT_EXIT", "3")], |_| {});
    let r = engage(&mut client, &exits, b"{}", EngageOpts::default()).await?;
    let f = r.finished();
    assert_eq!((f.success, f.error_code), (false, 502), "{f:?}");
    assert!(
        f.error_str.starts_with("Container failed to initialize"),
        "{}",
        f.error_str
    );
    // Failed containers are removed, not left behind.
    let live = containers_of(&docker, &runner.name).await?;
    ferrofn_tests::runner_proc::eventually("failed containers removed", Duration::from_secs(10), || {
        let docker = docker.clone();
        let name = runner.name.clone();
        async move {
            containers_of(&docker, &name)
                .await
                .map(|c| c.is_empty())
                .unwrap_or(false)
        }
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}: {live:?}"))?;
    finish(&docker, runner).await
}

#[tokio::test]
async fn premature_write_is_502() -> Result<()> {
    let (docker, runner) = setup(&[]).await?;
    let mut client = runner.client().await?;
    let call = call_json(TESTFN_IMAGE, &fn_id(6), &[], |_| {});
    let mut body = knobs(serde_json::json!({"writeBeforeRead": true}));
    body.extend_from_slice(&pattern(64 * 1024));
    let opts = EngageOpts {
        hold_eof_until_reply: true,
        ..Default::default()
    };
    let r = engage(&mut client, &call, &body, opts).await?;
    let f = r.finished();
    assert_eq!((f.success, f.error_code), (false, 502), "{f:?}");
    assert_eq!(
        f.error_str,
        "function invoked write before receiving entire request"
    );
    assert_eq!(r.result_starts, 0, "no ResultStart for a premature write");
    finish(&docker, runner).await
}

/// The premature-write rule depends on the mode: with the accept ack (ferrofn LB) an echo that
/// answers while the request is still open streams both ways; without it (Fn LB) the same exchange
/// is Fn's premature write. The eof frame is held until a ResultStart arrives, so the function can
/// only finish if the runner relays its head before the request ends.
#[tokio::test]
async fn accept_ack_mode_is_full_duplex_and_fn_mode_keeps_the_premature_write() -> Result<()> {
    let (docker, runner) = setup(&[]).await?;
    let mut client = runner.client().await?;
    let mut body = knobs(serde_json::json!({"echoBody": true}));
    // Far more than every window on the way (body channel, h2, the unix socket): both directions
    // must flow at the same time for this to finish.
    body.extend_from_slice(&pattern(4 << 20));
    let ack = EngageOpts {
        extensions: [("ferrofn-accept-ack".to_string(), "1".to_string())].into(),
        hold_eof_until_result_start: true,
        ..Default::default()
    };
    let call = call_json(TESTFN_IMAGE, &fn_id(20), &[], |_| {});
    let r = tokio::time::timeout(
        Duration::from_secs(60),
        engage(&mut client, &call, &body, ack.clone()),
    )
    .await??;
    assert!(r.finished().success, "{:?}\n{}", r.finished(), runner.logs());
    assert_eq!((r.acks, r.result_starts, r.status), (1, 1, Some(200)));
    assert_eq!(r.body.len(), body.len());
    assert!(r.body == body, "echoed body differs");

    // A function that answers without reading the rest: fine in full duplex, and the container's
    // next call is not stuck behind the unread request (the FDK connection is replaced).
    let mut unread = knobs(serde_json::json!({"writeBeforeRead": true, "echoContent": "early"}));
    unread.extend_from_slice(&pattern(4 << 20));
    let plain_ack = EngageOpts {
        hold_eof_until_result_start: false,
        ..ack.clone()
    };
    let next = knobs(serde_json::json!({"echoContent": "next"}));
    for (what, b, opts) in [
        ("answer without reading", unread, ack.clone()),
        ("next call", next, plain_ack),
    ] {
        let call = call_json(TESTFN_IMAGE, &fn_id(20), &[], |_| {});
        let r = tokio::time::timeout(Duration::from_secs(30), engage(&mut client, &call, &b, opts))
            .await
            .map_err(|_| anyhow::anyhow!("{what}: no answer within 30 s\n{}", runner.logs()))??;
        assert!(
            r.finished().success,
            "{what}: {:?}\n{}",
            r.finished(),
            runner.logs()
        );
        assert_eq!(r.status, Some(200), "{what}");
        assert!(
            String::from_utf8_lossy(&r.body).contains("\"echoContent\""),
            "{what}: {:?}",
            String::from_utf8_lossy(&r.body)
        );
    }

    let fn_mode = EngageOpts {
        hold_eof_until_result_start: true,
        ..Default::default()
    };
    let call = call_json(TESTFN_IMAGE, &fn_id(20), &[], |_| {});
    let r = tokio::time::timeout(
        Duration::from_secs(60),
        engage(&mut client, &call, &body, fn_mode),
    )
    .await??;
    let f = r.finished();
    assert_eq!((f.success, f.error_code), (false, 502), "{f:?}");
    assert_eq!(
        f.error_str,
        "function invoked write before receiving entire request"
    );
    assert_eq!(r.result_starts, 0, "no ResultStart for a premature write");
    finish(&docker, runner).await
}

#[tokio::test]
async fn headers_both_ways_and_the_accept_ack() -> Result<()> {
    let (docker, runner) = setup(&[]).await?;
    let mut client = runner.client().await?;
    let call = call_json(TESTFN_IMAGE, &fn_id(7), &[("MY_CONFIG", "v1")], |v| {
        v["headers"]["X-Custom"] = serde_json::json!(["a", "b"]);
        v["headers"]["Connection"] = serde_json::json!(["keep-alive"]);
        v["headers"]["Content-Length"] = serde_json::json!(["12345"]);
    });
    let id = serde_json::from_str::<serde_json::Value>(&call)?["id"]
        .as_str()
        .unwrap()
        .to_string();
    let k = serde_json::json!({"returnHeaders": {"X-Out": ["1", "2"]}, "responseContentType": "application/x-test"});
    let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let opts = EngageOpts {
        metadata: vec![
            ("traceparent", trace.to_string()),
            ("fn_request_id", "req-1".to_string()),
        ],
        ..Default::default()
    };
    let r = engage(&mut client, &call, &knobs(k.clone()), opts).await?;
    assert!(r.finished().success, "{:?}", r.finished());
    assert_eq!(r.acks, 0, "no ack unless the TryCall asks for it");
    assert_eq!(r.header("X-Out"), vec!["1", "2"]);
    assert_eq!(r.header("Content-Type"), vec!["application/x-test"]);
    assert!(
        r.headers.iter().any(|h| h.key == "X-Out"),
        "canonical header names: {:?}",
        r.headers
    );
    let doc: serde_json::Value = serde_json::from_slice(&r.body)?;
    let seen = &doc["header"];
    assert_eq!(seen["Fn-Call-Id"], serde_json::json!([id]));
    assert_eq!(seen["X-Custom"], serde_json::json!(["a", "b"]));
    let tp = seen["Traceparent"][0].as_str().unwrap_or_default();
    assert!(
        tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && !tp.contains("00f067aa0ba902b7"),
        "the function gets the LB's trace with the runner's hop as parent: {seen}"
    );
    assert!(
        seen.get("Connection").is_none(),
        "hop-by-hop header forwarded: {seen}"
    );
    assert_ne!(
        seen["Content-Length"],
        serde_json::json!(["12345"]),
        "Content-Length copied: {seen}"
    );
    let deadline = seen["Fn-Deadline"][0].as_str().unwrap_or_default();
    let deadline = time::OffsetDateTime::parse(deadline, &time::format_description::well_known::Rfc3339)?;
    let left = deadline - time::OffsetDateTime::now_utc();
    assert!(
        left > time::Duration::seconds(20) && left <= time::Duration::seconds(31),
        "Fn-Deadline {deadline} ({left})"
    );
    assert_eq!(doc["config"]["MY_CONFIG"], "v1");
    assert_eq!(doc["config"]["FN_LISTENER"], "unix:/tmp/iofs/lsnr.sock");
    assert_eq!(doc["config"]["FN_FORMAT"], "http-stream");

    let opts = EngageOpts {
        extensions: [("ferrofn-accept-ack".to_string(), "1".to_string())].into(),
        ..Default::default()
    };
    let call = call_json(TESTFN_IMAGE, &fn_id(7), &[("MY_CONFIG", "v1")], |_| {});
    let r = engage(&mut client, &call, &knobs(k), opts).await?;
    assert!(r.finished().success, "{:?}", r.finished());
    assert_eq!(r.acks, 1, "exactly one zero-length ack frame before ResultStart");
    assert_eq!(r.status, Some(200));
    finish(&docker, runner).await
}

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
    let call = call_json(TESTFN_IMAGE, &fn_id(8), &[], |v| v["cpus"] = 250.into());
    let r = engage(&mut client, &call, b"", EngageOpts::default()).await?;
    assert_eq!(
        (r.finished().error_code, r.finished().error_str.as_str()),
        (400, "Invalid JSON")
    );
    // Memory the node can never have: 400.
    let call = call_json(TESTFN_IMAGE, &fn_id(8), &[], |v| {
        v["memory"] = (1u64 << 40).into()
    });
    let r = engage(&mut client, &call, b"", EngageOpts::default()).await?;
    assert_eq!(
        (r.finished().error_code, r.finished().error_str.as_str()),
        (400, "Requested CPU/Memory cannot be allocated")
    );

    // A stream cancelled in the middle of the body: the runner survives and serves the next call.
    let call = call_json(TESTFN_IMAGE, &fn_id(9), &[], |_| {});
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
    let call = call_json(TESTFN_IMAGE, &fn_id(9), &[], |_| {});
    let r = engage(
        &mut client,
        &call,
        b"{\"echoContent\":\"still here\"}",
        EngageOpts::default(),
    )
    .await?;
    assert!(r.finished().success, "{:?}", r.finished());
    finish(&docker, runner).await
}

#[tokio::test]
async fn function_logs_are_captured_per_call_and_capped() -> Result<()> {
    let (docker, runner) = setup(&[("FN_MAX_LOG_SIZE_BYTES", "200")]).await?;
    let mut client = runner.client().await?;
    let call = call_json(TESTFN_IMAGE, &fn_id(10), &[], |_| {});
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

    let call = call_json(TESTFN_IMAGE, &fn_id(10), &[], |_| {});
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
    finish(&docker, runner).await
}

#[tokio::test]
async fn fdk_status_mapping_and_the_header_cap() -> Result<()> {
    let (docker, runner) = setup(&[("FN_MAX_HDR_RESPONSE_SIZE", "1024")]).await?;
    let mut client = runner.client().await?;
    let call = || call_json(TESTFN_IMAGE, &fn_id(11), &[], |_| {});
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
    finish(&docker, runner).await
}

/// Warm-call latency straight against the runner (no LB): one cold call, then sequential warm
/// Engage calls, each timed from TryCall to CallFinished over one kept-alive gRPC connection.
/// Prints the percentiles (no timing assert: shared CI machines are too noisy for one).
#[tokio::test]
async fn warm_engage_latency_printout() -> Result<()> {
    let (docker, runner) = setup(&[]).await?;
    let mut client = runner.client().await?;
    let small = knobs(serde_json::json!({"echoContent": "x"}));
    let large = knobs(serde_json::json!({"responseSize": 200_000}));
    let ack = EngageOpts {
        extensions: [("ferrofn-accept-ack".to_string(), "1".to_string())].into(),
        ..Default::default()
    };
    for (mode, opts, body) in [
        ("Fn mode, small answer", EngageOpts::default(), &small),
        ("accept-ack, small answer", ack.clone(), &small),
        ("accept-ack, 200 KB answer", ack, &large),
    ] {
        let mut times = Vec::new();
        for i in 0..31 {
            let call = call_json(TESTFN_IMAGE, &fn_id(21), &[], |_| {});
            let t0 = std::time::Instant::now();
            let r = engage(&mut client, &call, body, opts.clone()).await?;
            let took = t0.elapsed();
            assert!(r.finished().success, "{:?}", r.finished());
            if i > 0 {
                times.push(took);
            }
        }
        times.sort();
        eprintln!(
            "warm Engage ({mode}, {} calls): p50 {:.2?}, p90 {:.2?}, max {:.2?}",
            times.len(),
            times[times.len() / 2],
            times[times.len() * 9 / 10],
            times[times.len() - 1]
        );
    }
    finish(&docker, runner).await
}

/// A client cancel of a call that waits for a slot (its function's only container never finishes
/// starting) takes the call out of the queue at once, whichever way the stream ends: Fn's LB resets
/// a stream whose request side is still open; a client may half-close first and reset after;
/// the ferrofn LB asks for the accept ack.
#[tokio::test]
async fn a_client_cancel_takes_a_waiting_call_out_of_the_queue() -> Result<()> {
    let (docker, runner) = setup(&[("FN_HOT_START_TIMEOUT_MSECS", "3600000")]).await?;
    let mut client = runner.client().await?;
    let call = call_json(
        TESTFN_IMAGE,
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
    finish(&docker, runner).await
}

/// Drains the runner and checks it left nothing behind.
async fn finish(docker: &Docker, runner: RunnerProc) -> Result<()> {
    runner.drain_and_check(docker).await
}
