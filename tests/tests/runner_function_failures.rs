//! A function that fails, against the real Docker engine and the testfn image: a timeout is 504, a
//! crash 502, a container that exits after answering or fails to start (init delay over the hot
//! start timeout: 504, init exit: 502) is replaced, and the next call runs in a new container.
//! Every test ends with a drain (SIGTERM) and checks that no container of its runner is left.

use std::time::Duration;

use anyhow::Result;

use ferrofn_tests::images::TESTFN_IMAGE;
use ferrofn_tests::runner_proc::{
    EngageOpts, call_json, containers_of, engage, eventually, start_with_testfn as setup,
};
use ferrofn_tests::testfn::{docker_id, fn_id, knobs};

#[tokio::test]
async fn timeout_gives_504_and_a_fresh_container() -> Result<()> {
    let (docker, runner) = setup(&[]).await?;
    let mut client = runner.client().await?;
    let call = call_json(TESTFN_IMAGE.as_str(), &fn_id(2), &[], |v| v["timeout"] = 1.into());
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
    let call = call_json(TESTFN_IMAGE.as_str(), &fn_id(2), &[], |v| v["timeout"] = 1.into());
    let r = engage(
        &mut client,
        &call,
        &knobs(serde_json::json!({"echoContent": "ok"})),
        EngageOpts::default(),
    )
    .await?;
    assert!(r.finished().success, "{:?}", r.finished());
    runner.drain_and_check(&docker).await
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
            TESTFN_IMAGE.as_str(),
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
    runner.drain_and_check(&docker).await
}

#[tokio::test]
async fn crash_gives_502_then_a_new_container() -> Result<()> {
    let (docker, runner) = setup(&[]).await?;
    let mut client = runner.client().await?;
    let call = || call_json(TESTFN_IMAGE.as_str(), &fn_id(3), &[], |_| {});
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
    runner.drain_and_check(&docker).await
}

#[tokio::test]
async fn init_delay_over_hot_start_timeout_is_504_and_init_exit_is_502() -> Result<()> {
    let (docker, runner) = setup(&[("FN_HOT_START_TIMEOUT_MSECS", "1500")]).await?;
    let mut client = runner.client().await?;
    let slow = call_json(
        TESTFN_IMAGE.as_str(),
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

    let exits = call_json(
        TESTFN_IMAGE.as_str(),
        &fn_id(5),
        &[("ENABLE_INIT_EXIT", "3")],
        |_| {},
    );
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
    runner.drain_and_check(&docker).await
}
