//! The LB's call path against scripted gRPC runners (engage-protocol.md §2.3, §2.6-2.8, §3, §5):
//! body framing, call model, NACK fall-through, committed errors, placer timeout, detached 202,
//! trigger header and status mapping, health-aware pool, accept-ack streaming, 413 on chunked
//! bodies, client disconnects and mTLS.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use ferrofn_proto::health::health_check_response::ServingStatus;
use ferrofn_tests::lb_proc::fake_runner::{Behaviour, FakeRunner};
use ferrofn_tests::lb_proc::{LbProc, json as call, request};

/// An LB over `runners` with an app (config A=1) and a fn (config B=2); returns (lb, app, fn).
async fn setup(
    runners: &[&FakeRunner],
    tune: impl FnOnce(&mut ferrofn_lb::LbSettings),
) -> (LbProc, Value, Value) {
    let addrs: Vec<String> = runners.iter().map(|r| r.address()).collect();
    let lb = LbProc::start(|s| {
        s.runner_addresses = addrs;
        tune(s);
    })
    .await
    .unwrap();
    let app = call(
        "POST",
        &lb.url("/v2/apps"),
        Some(json!({"name": "eapp", "config": {"A": "1"}})),
    )
    .await
    .unwrap()
    .json();
    let f = call(
        "POST",
        &lb.url("/v2/fns"),
        Some(json!({"app_id": app["id"], "name": "efn", "image": "local/e:1", "config": {"B": "2"}})),
    )
    .await
    .unwrap()
    .json();
    (lb, app, f)
}

fn invoke_path(f: &Value) -> String {
    format!("/invoke/{}", f["id"].as_str().unwrap())
}

/// Polls `cond` every 20 ms for up to `limit`.
async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}

#[tokio::test]
async fn fn_mode_frames_body_and_builds_the_call_model() {
    let r = FakeRunner::start(Behaviour::default()).await.unwrap();
    let (lb, app, f) = setup(&[&r], |_| {}).await;
    let body: Vec<u8> = (0..25_000u32).map(|i| (i % 251) as u8).collect();
    let headers = BTreeMap::from([("content-type", "application/octet-stream"), ("x-test", "yes")]);
    let resp = request("POST", &lb.url(&invoke_path(&f)), &headers, body.clone())
        .await
        .unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(&resp.body[..], &body[..], "echoed intact");
    assert_eq!(resp.header("content-type"), "text/plain");
    let call_id = resp.header("fn-call-id");
    assert_eq!(call_id.len(), 26);

    let seen = r.seen();
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    let sizes: Vec<(usize, bool)> = s.frames.iter().map(|d| (d.data.len(), d.eof)).collect();
    assert_eq!(
        sizes,
        vec![(10240, false), (10240, false), (4520, false), (0, true)]
    );
    assert!(s.try_call.extensions.is_empty(), "no ack asked of an Fn runner");
    assert_eq!(s.try_call.slot_hash_id, "");
    assert_eq!(s.metadata.get("fn_request_id"), Some(&call_id));
    assert!(
        s.metadata
            .get("traceparent")
            .is_some_and(|t| t.starts_with("00-"))
    );
    let m: Value = serde_json::from_str(&s.try_call.models_call_json).unwrap();
    assert_eq!(m["id"], json!(call_id));
    assert_eq!(
        (m["type"].clone(), m["method"].clone(), m["status"].clone()),
        (json!("sync"), json!("POST"), json!("running"))
    );
    assert_eq!(
        m["url"],
        json!(format!("http://{}{}", lb.addr(), invoke_path(&f)))
    );
    assert_eq!(
        (
            m["memory"].clone(),
            m["timeout"].clone(),
            m["idle_timeout"].clone()
        ),
        (json!(128), json!(30), json!(30))
    );
    assert_eq!(m["image"], json!("local/e:1"));
    assert_eq!(
        (m["app_id"].clone(), m["fn_id"].clone(), m["app_name"].clone()),
        (app["id"].clone(), f["id"].clone(), json!("eapp"))
    );
    assert_eq!(m["trigger_id"], json!(""));
    let c = &m["config"];
    assert_eq!(
        (
            c["A"].clone(),
            c["B"].clone(),
            c["FN_MEMORY"].clone(),
            c["FN_TYPE"].clone()
        ),
        (json!("1"), json!("2"), json!("128"), json!("sync"))
    );
    assert_eq!(
        (c["FN_FN_ID"].clone(), c["FN_APP_ID"].clone()),
        (f["id"].clone(), app["id"].clone())
    );
    assert_eq!(m["headers"]["X-Test"], json!(["yes"]));
    assert_eq!(m["headers"]["Content-Type"], json!(["application/octet-stream"]));
    assert!(m["headers"].get("Host").is_none());
    assert_eq!(m["completed_at"], json!("0001-01-01T00:00:00.000Z"));

    // An empty body is exactly one empty eof frame.
    let resp = call("POST", &lb.url(&invoke_path(&f)), None).await.unwrap();
    assert_eq!((resp.status, resp.body.len()), (200, 0));
    let frames = &r.seen()[1].frames;
    assert_eq!(frames.len(), 1);
    assert!(frames[0].eof && frames[0].data.is_empty());
    let metrics = call("GET", &lb.url("/metrics"), None).await.unwrap().text();
    for name in [
        "lb_calls_total",
        "lb_placer_attempts_total",
        "lb_call_latency_seconds",
        "lb_runner_up",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
    lb.stop().await;
}

#[tokio::test]
async fn nack_falls_through_and_committed_errors_are_final() {
    let a = FakeRunner::start(Behaviour {
        nack: true,
        ..Behaviour::default()
    })
    .await
    .unwrap();
    let b = FakeRunner::start(Behaviour::default()).await.unwrap();
    let (lb, _app, f) = setup(&[&a, &b], |_| {}).await;
    for i in 0..10 {
        let resp = call("POST", &lb.url(&invoke_path(&f)), Some(json!({"i": i})))
            .await
            .unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(
            resp.json(),
            json!({"i": i}),
            "the body was replayed to the second runner"
        );
    }
    assert_eq!(b.engaged(), 10);
    assert!(a.engaged() <= 10);
    // A committed failure goes to the client and is not retried elsewhere.
    b.set(|x| x.error = Some((502, "function failed".into(), true)));
    let before = b.engaged();
    let resp = call("POST", &lb.url(&invoke_path(&f)), None).await.unwrap();
    assert_eq!(
        (resp.status, resp.text()),
        (502, "{\"message\":\"function failed\"}\n".into())
    );
    assert_eq!(resp.header("fn-call-id").len(), 26);
    assert_eq!(b.engaged(), before + 1);
    // Fn's errorCode 0 becomes 500 (Go would answer 200).
    b.set(|x| x.error = Some((0, "json: cannot unmarshal".into(), false)));
    let resp = call("POST", &lb.url(&invoke_path(&f)), None).await.unwrap();
    assert_eq!(
        (resp.status, resp.json()["message"].clone()),
        (500, json!("json: cannot unmarshal"))
    );
    b.set(|x| x.error = Some((504, "Timed out".into(), true)));
    assert_eq!(
        call("POST", &lb.url(&invoke_path(&f)), None)
            .await
            .unwrap()
            .status,
        504
    );
    lb.stop().await;
}

#[tokio::test]
async fn every_runner_nacking_gives_503_at_the_placer_timeout() {
    let a = FakeRunner::start(Behaviour {
        nack: true,
        ..Behaviour::default()
    })
    .await
    .unwrap();
    let b = FakeRunner::start(Behaviour {
        nack: true,
        ..Behaviour::default()
    })
    .await
    .unwrap();
    let (lb, _app, f) = setup(&[&a, &b], |s| s.placer_timeout_ms = 400).await;
    let started = Instant::now();
    let resp = call("POST", &lb.url(&invoke_path(&f)), None).await.unwrap();
    let took = started.elapsed();
    assert_eq!(
        (resp.status, resp.json()["message"].clone()),
        (503, json!("Timed out - server too busy"))
    );
    assert_eq!(resp.header("retry-after"), "15");
    assert!(
        took >= Duration::from_millis(380) && took < Duration::from_secs(5),
        "{took:?}"
    );
    // Passes 10 ms apart: both runners tried several times, evenly.
    let (na, nb) = (a.engaged(), b.engaged());
    assert!(na >= 3 && na.abs_diff(nb) <= 1, "{na} vs {nb}");
    lb.stop().await;
}

#[tokio::test]
async fn detached_invoke_answers_202() {
    for accept_ack in [false, true] {
        let b = Behaviour {
            accept_ack,
            health: Some(ServingStatus::Serving),
            ..Behaviour::default()
        };
        let r = FakeRunner::start(b).await.unwrap();
        let (lb, _app, f) = setup(&[&r], |_| {}).await;
        let headers = BTreeMap::from([("fn-invoke-type", "detached")]);
        let resp = request("POST", &lb.url(&invoke_path(&f)), &headers, "payload")
            .await
            .unwrap();
        assert_eq!(
            (resp.status, resp.body.len()),
            (202, 0),
            "ack={accept_ack}: {}",
            resp.text()
        );
        assert_eq!(resp.header("fn-call-id").len(), 26);
        let m: Value = serde_json::from_str(&r.seen()[0].try_call.models_call_json).unwrap();
        assert_eq!(m["type"], json!("detached"));
        assert_eq!(m["config"]["FN_TYPE"], json!("sync"), "as Fn");
        assert_eq!(m["headers"]["Fn-Invoke-Type"], json!(["detached"]));
        // The body still reaches the runner after the 202 ack.
        let got = || {
            r.seen()[0]
                .frames
                .iter()
                .flat_map(|d| d.data.to_vec())
                .collect::<Vec<u8>>()
                == b"payload"
        };
        assert!(
            eventually(Duration::from_secs(5), got).await,
            "ack={accept_ack}: body delivered"
        );
        lb.stop().await;
    }
}

#[tokio::test]
async fn trigger_renames_headers_and_maps_the_response() {
    let r = FakeRunner::start(Behaviour {
        headers: vec![
            ("Content-Type".into(), "application/json".into()),
            ("Fn-Http-H-X-Out".into(), "v".into()),
            ("Fn-Http-Status".into(), "201".into()),
            ("Fn-Fdk-Version".into(), "fdk-rust/1".into()),
        ],
        ..Behaviour::default()
    })
    .await
    .unwrap();
    let (lb, app, f) = setup(&[&r], |_| {}).await;
    let t = call(
        "POST",
        &lb.url("/v2/triggers"),
        Some(json!({"app_id": app["id"], "fn_id": f["id"], "name": "hook", "type": "http", "source": "/hook/x"})),
    )
    .await
    .unwrap()
    .json();
    let headers = BTreeMap::from([("x-in", "a"), ("content-type", "text/plain")]);
    let resp = request("PUT", &lb.url("/t/eapp/hook/x?q=1"), &headers, "hi")
        .await
        .unwrap();
    assert_eq!(resp.status, 201, "{}", resp.text());
    assert_eq!(resp.text(), "hi");
    assert_eq!(resp.header("x-out"), "v");
    assert_eq!(resp.header("content-type"), "application/json");
    assert_eq!(resp.header("fn-call-id").len(), 26);
    assert_eq!(resp.header("fn-fdk-version"), "");
    assert_eq!(resp.header("fn-http-status"), "");
    let m: Value = serde_json::from_str(&r.seen()[0].try_call.models_call_json).unwrap();
    let h = &m["headers"];
    assert_eq!(h["Fn-Http-H-X-In"], json!(["a"]));
    assert_eq!(h["Content-Type"], json!(["text/plain"]));
    assert_eq!(h["Fn-Http-Method"], json!(["PUT"]));
    assert_eq!(
        h["Fn-Http-Request-Url"],
        json!([format!("http://{}/t/eapp/hook/x?q=1", lb.addr())])
    );
    assert_eq!(h["Fn-Intent"], json!(["httprequest"]));
    assert!(h.get("X-In").is_none());
    assert_eq!(m["trigger_id"], t["id"]);
    assert_eq!(m["method"], json!("PUT"));
    // A function error status >= 400 wins over Fn-Http-Status.
    r.set(|b| b.error = Some((502, "function failed".into(), true)));
    let resp = request("GET", &lb.url("/t/eapp/hook/x"), &BTreeMap::new(), "")
        .await
        .unwrap();
    assert_eq!(resp.status, 502);
    lb.stop().await;
}

#[tokio::test]
async fn health_loop_skips_down_and_draining_runners_and_keeps_fn_runners() {
    // No grpc.health (UNIMPLEMENTED) as on an Fn runner: still up.
    let fnr = FakeRunner::start(Behaviour {
        health: None,
        ..Behaviour::default()
    })
    .await
    .unwrap();
    let (lb, _app, f) = setup(&[&fnr], |_| {}).await;
    assert_eq!(
        call("POST", &lb.url(&invoke_path(&f)), None)
            .await
            .unwrap()
            .status,
        200
    );
    lb.stop().await;

    let r = FakeRunner::start(Behaviour {
        status_failed: true,
        health: Some(ServingStatus::Serving),
        ..Behaviour::default()
    })
    .await
    .unwrap();
    let (lb, _app, f) = setup(&[&r], |s| s.placer_timeout_ms = 600).await;
    // Down after the start-up probe: the call waits for a runner to come up (Fn's placer loop),
    // then answers 503 at the placer timeout, with no Engage attempted.
    let started = Instant::now();
    let resp = call("POST", &lb.url(&invoke_path(&f)), None).await.unwrap();
    assert_eq!(resp.status, 503);
    assert!(
        started.elapsed() >= Duration::from_millis(550),
        "{:?}",
        started.elapsed()
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(r.engaged(), 0);
    // Recovers, then drains: the pool follows (probe every 200 ms).
    r.set(|b| b.status_failed = false);
    let pool = lb.handle.pool.clone();
    let up = || pool.snapshot().iter().all(|(c, _)| c.eligible);
    assert!(eventually(Duration::from_secs(5), up).await, "runner back up");
    assert_eq!(
        call("POST", &lb.url(&invoke_path(&f)), None)
            .await
            .unwrap()
            .status,
        200
    );
    r.set(|b| b.health = Some(ServingStatus::NotServing));
    let draining = || pool.snapshot().iter().all(|(c, _)| !c.eligible);
    assert!(
        eventually(Duration::from_secs(5), draining).await,
        "runner draining"
    );
    let before = r.engaged();
    assert_eq!(
        call("POST", &lb.url(&invoke_path(&f)), None)
            .await
            .unwrap()
            .status,
        503
    );
    assert_eq!(r.engaged(), before);
    // A runner that stops answering is marked down.
    r.set(|b| b.health = Some(ServingStatus::Serving));
    assert!(eventually(Duration::from_secs(5), up).await);
    r.stop();
    assert!(
        eventually(Duration::from_secs(5), draining).await,
        "stopped runner marked down"
    );
    lb.stop().await;
}

#[tokio::test]
async fn accept_ack_runner_gets_the_body_only_after_acking_and_streams_back() {
    let r = FakeRunner::start(Behaviour {
        accept_ack: true,
        health: Some(ServingStatus::Serving),
        ..Behaviour::default()
    })
    .await
    .unwrap();
    let (lb, _app, f) = setup(&[&r], |_| {}).await;
    assert!(
        lb.handle.pool.runners()[0].supports_accept_ack(),
        "capability learnt from Status"
    );
    let body: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let resp = request("POST", &lb.url(&invoke_path(&f)), &BTreeMap::new(), body.clone())
        .await
        .unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body.len(), body.len());
    assert!(resp.body[..] == body[..], "streamed response intact");
    let s = &r.seen()[0];
    assert_eq!(
        s.try_call
            .extensions
            .get("ferrofn-accept-ack")
            .map(String::as_str),
        Some("1")
    );
    assert_eq!(s.frames_before_ack, Some(0), "no body frame before the ack");
    assert!(s.frames.iter().all(|d| d.data.len() <= 10240));
    assert!(s.frames.last().unwrap().eof);
    // Short error answers keep their exact status in this mode too.
    r.set(|b| b.error = Some((502, "function failed".into(), true)));
    let resp = request("POST", &lb.url(&invoke_path(&f)), &BTreeMap::new(), "x")
        .await
        .unwrap();
    assert_eq!(resp.status, 502);
    // NACK before the ack: the next runner (none here) -> 503 after the (short) placer timeout.
    lb.stop().await;
}

/// Sends a chunked request over a raw socket and returns the status line and the whole response.
async fn raw_chunked(addr: std::net::SocketAddr, path: &str, chunks: usize, chunk: usize) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    for _ in 0..chunks {
        let piece = format!("{chunk:x}\r\n{}\r\n", "y".repeat(chunk));
        if s.write_all(piece.as_bytes()).await.is_err() {
            break;
        }
    }
    let _ = s.write_all(b"0\r\n\r\n").await;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn chunked_body_over_the_limit_is_413() {
    for accept_ack in [false, true] {
        let r = FakeRunner::start(Behaviour {
            accept_ack,
            health: Some(ServingStatus::Serving),
            ..Behaviour::default()
        })
        .await
        .unwrap();
        let (lb, _app, f) = setup(&[&r], |s| s.max_request_size = 50_000).await;
        let out = raw_chunked(lb.addr(), &invoke_path(&f), 10, 10_000).await;
        assert!(out.starts_with("HTTP/1.1 413"), "ack={accept_ack}: {out}");
        assert!(out.contains("too large for this server"), "{out}");
        let ok = raw_chunked(lb.addr(), &invoke_path(&f), 4, 10_000).await;
        assert!(ok.starts_with("HTTP/1.1 200"), "ack={accept_ack}: {ok}");
        lb.stop().await;
    }
}

#[tokio::test]
async fn client_disconnect_cancels_the_engage_stream() {
    let r = FakeRunner::start(Behaviour {
        hang: true,
        ..Behaviour::default()
    })
    .await
    .unwrap();
    let (lb, _app, f) = setup(&[&r], |_| {}).await;
    let mut s = tokio::net::TcpStream::connect(lb.addr()).await.unwrap();
    let req = format!(
        "POST {} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi",
        invoke_path(&f)
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let engaged = || {
        r.engaged() == 1
            && r.seen()
                .first()
                .is_some_and(|x| x.frames.last().is_some_and(|d| d.eof))
    };
    assert!(
        eventually(Duration::from_secs(5), engaged).await,
        "call reached the runner"
    );
    drop(s);
    let cancelled = || r.shared.cancelled.load(std::sync::atomic::Ordering::SeqCst) == 1;
    assert!(
        eventually(Duration::from_secs(5), cancelled).await,
        "runner saw the stream cancelled"
    );
    assert_eq!(lb.handle.pool.runners()[0].in_flight(), 0);
    lb.stop().await;
}

#[tokio::test]
async fn mtls_to_runners_by_default() {
    use ferrofn_common::certs::{ClusterCertOptions, generate_cluster};
    use ferrofn_common::tls::{ReloadingServerTls, TlsFiles};
    ferrofn_common::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let opts = ClusterCertOptions {
        runner_names: vec!["r1".into()],
        ..ClusterCertOptions::default()
    };
    let certs = generate_cluster(dir.path(), &opts).unwrap();
    let server_tls = ReloadingServerTls::new(TlsFiles::runner_in(dir.path(), "r1")).unwrap();
    let r = FakeRunner::start_tls(Behaviour::default(), Some(server_tls))
        .await
        .unwrap();
    let lb_files = certs.lb.clone();
    let (lb, _app, f) = setup(&[&r], |s| {
        s.plaintext = false;
        s.tls.ca = lb_files.ca.clone();
        s.tls.cert = lb_files.cert.clone();
        s.tls.key = lb_files.key.clone();
    })
    .await;
    let resp = call("POST", &lb.url(&invoke_path(&f)), Some(json!({"tls": true})))
        .await
        .unwrap();
    assert_eq!((resp.status, resp.json()), (200, json!({"tls": true})));
    lb.stop().await;

    // An LB with a certificate from another CA is refused: the runner is down, 503.
    let other = tempfile::tempdir().unwrap();
    let other_certs = generate_cluster(other.path(), &ClusterCertOptions::default()).unwrap();
    let (lb, _app, f) = setup(&[&r], |s| {
        s.plaintext = false;
        s.tls.ca = lb_files.ca.clone();
        s.tls.cert = other_certs.lb.cert.clone();
        s.tls.key = other_certs.lb.key.clone();
        s.placer_timeout_ms = 600;
    })
    .await;
    let resp = call("POST", &lb.url(&invoke_path(&f)), None).await.unwrap();
    assert_eq!(resp.status, 503);
    assert_eq!(r.engaged(), 1, "only the mTLS call got through");
    // Plaintext to a TLS runner fails too.
    lb.stop().await;
    let (lb, _app, f) = setup(&[&r], |s| {
        s.plaintext = true;
        s.placer_timeout_ms = 600;
    })
    .await;
    assert_eq!(
        call("POST", &lb.url(&invoke_path(&f)), None)
            .await
            .unwrap()
            .status,
        503
    );
    lb.stop().await;
}

#[tokio::test]
async fn ch_and_bounded_placers_send_each_fn_to_its_home_runner() {
    for placer in ["ch", "ch-bounded"] {
        let rs = [
            FakeRunner::start(Behaviour::default()).await.unwrap(),
            FakeRunner::start(Behaviour::default()).await.unwrap(),
            FakeRunner::start(Behaviour::default()).await.unwrap(),
        ];
        let (lb, app, _f) = setup(&[&rs[0], &rs[1], &rs[2]], |s| s.placer = placer.into()).await;
        let mut homes = std::collections::HashSet::new();
        for i in 0..8 {
            let f = call(
                "POST",
                &lb.url("/v2/fns"),
                Some(json!({"app_id": app["id"], "name": format!("f{i}"), "image": "i"})),
            )
            .await
            .unwrap()
            .json();
            let fn_id = f["id"].as_str().unwrap().to_owned();
            let home = ferrofn_lb::placer::ch::home(&fn_id, 3);
            homes.insert(home);
            // Sequential calls: even (zero) load, so ch-bounded keeps them home too.
            for _ in 0..3 {
                assert_eq!(
                    call("POST", &lb.url(&invoke_path(&f)), None)
                        .await
                        .unwrap()
                        .status,
                    200
                );
            }
            for (idx, r) in rs.iter().enumerate() {
                let n = r
                    .seen()
                    .iter()
                    .filter(|s| {
                        serde_json::from_str::<Value>(&s.try_call.models_call_json).unwrap()["fn_id"]
                            == json!(fn_id)
                    })
                    .count();
                assert_eq!(
                    n,
                    if idx == home { 3 } else { 0 },
                    "{placer}: fn {fn_id} home {home}, runner {idx}"
                );
            }
        }
        assert!(homes.len() > 1, "8 fns spread over several runners");
        lb.stop().await;
    }
}

#[tokio::test]
async fn concurrent_calls_all_answer_with_their_own_body() {
    for accept_ack in [false, true] {
        let b = || Behaviour {
            accept_ack,
            health: Some(ServingStatus::Serving),
            ..Behaviour::default()
        };
        let rs = [
            FakeRunner::start(b()).await.unwrap(),
            FakeRunner::start(b()).await.unwrap(),
            FakeRunner::start(b()).await.unwrap(),
        ];
        let (lb, _app, f) = setup(&[&rs[0], &rs[1], &rs[2]], |_| {}).await;
        let url = lb.url(&invoke_path(&f));
        let calls = (0..20).map(|i| {
            let url = url.clone();
            tokio::spawn(async move {
                let body = format!("call-{i}-").repeat(3000);
                let r = request("POST", &url, &BTreeMap::new(), body.clone())
                    .await
                    .unwrap();
                (r.status, r.text() == body, r.header("fn-call-id"))
            })
        });
        let mut ids = std::collections::HashSet::new();
        for c in calls {
            let (status, same, id) = c.await.unwrap();
            assert_eq!((status, same), (200, true), "ack={accept_ack}");
            ids.insert(id);
        }
        assert_eq!(ids.len(), 20, "distinct call ids");
        let total: u32 = rs.iter().map(FakeRunner::engaged).sum();
        assert_eq!(total, 20);
        assert_eq!(lb.handle.pool.in_flight(), 0);
        lb.stop().await;
    }
}

#[tokio::test]
async fn detached_body_still_flows_after_an_early_202() {
    // An Fn runner acks a detached call when it gets a slot, before the function reads its input:
    // a body larger than the HTTP/2 windows must keep flowing after the 202 has been answered.
    let r = FakeRunner::start(Behaviour {
        discard: true,
        ..Behaviour::default()
    })
    .await
    .unwrap();
    let (lb, _app, f) = setup(&[&r], |_| {}).await;
    let headers = BTreeMap::from([("fn-invoke-type", "detached")]);
    let body = vec![b'z'; 4 << 20];
    let resp = request("POST", &lb.url(&invoke_path(&f)), &headers, body)
        .await
        .unwrap();
    assert_eq!(resp.status, 202);
    let all_in = || r.shared.bytes_in.load(std::sync::atomic::Ordering::SeqCst) == 4 << 20;
    assert!(
        eventually(Duration::from_secs(10), all_in).await,
        "the whole body reached the runner"
    );
    let done = || r.shared.completed.load(std::sync::atomic::Ordering::SeqCst) == 1;
    assert!(
        eventually(Duration::from_secs(10), done).await,
        "the call ran to its end"
    );
    lb.stop().await;
}

/// A TCP listener that accepts connections and reads them but never writes: a runner whose
/// process hangs, or (for TLS) a handshake that never completes.
async fn black_hole() -> (String, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut s, _)) = l.accept().await {
            held.push(tokio::spawn(async move {
                let mut buf = vec![0_u8; 4096];
                while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
            }));
        }
    });
    (addr, task)
}

/// An LB over `addrs` (any `host:port`) with app and fn of timeout `fn_timeout` s.
async fn setup_addrs(
    addrs: Vec<String>,
    fn_timeout: u32,
    tune: impl FnOnce(&mut ferrofn_lb::LbSettings),
) -> (LbProc, Value) {
    let lb = LbProc::start(|s| {
        s.runner_addresses = addrs;
        tune(s);
    })
    .await
    .unwrap();
    let app = call("POST", &lb.url("/v2/apps"), Some(json!({"name": "fapp"})))
        .await
        .unwrap()
        .json();
    let f = call(
        "POST",
        &lb.url("/v2/fns"),
        Some(json!({"app_id": app["id"], "name": "ffn", "image": "local/f:1", "timeout": fn_timeout})),
    )
    .await
    .unwrap()
    .json();
    (lb, f)
}

#[tokio::test]
async fn open_failure_on_a_stopped_runner_tries_the_next_and_marks_it_down() {
    use ferrofn_lb::pool::RunnerState;
    let a = FakeRunner::start(Behaviour::default()).await.unwrap();
    let b = FakeRunner::start(Behaviour::default()).await.unwrap();
    // Probes once a minute: only the failed open can mark the stopped runner down.
    let (lb, f) = setup_addrs(vec![a.address(), b.address()], 30, |s| {
        s.health_interval_ms = 60_000;
    })
    .await;
    let pool = lb.handle.pool.clone();
    a.stop();
    let addr = a.addr;
    let mut closed = false;
    for _ in 0..250 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(closed, "the stopped runner's port still accepts");
    assert_eq!(pool.runners()[0].state(), RunnerState::Up, "not probed since");
    // A connection opened before the stop may still serve a stream or two.
    let a_before = a.engaged();
    // Naive placement starts at a random runner: call until the stopped one was tried.
    let mut calls = 0;
    while pool.runners()[0].state() == RunnerState::Up && calls < 30 {
        let resp = call("POST", &lb.url(&invoke_path(&f)), Some(json!({"n": calls})))
            .await
            .unwrap();
        assert_eq!(
            (resp.status, resp.json()),
            (200, json!({"n": calls})),
            "call {calls}"
        );
        calls += 1;
    }
    assert_eq!(
        pool.runners()[0].state(),
        RunnerState::Down,
        "marked down by the failed open"
    );
    assert_eq!(
        a.engaged() - a_before + b.engaged(),
        calls,
        "every call ran exactly once"
    );
    lb.stop().await;
}

#[tokio::test]
async fn connect_timeout_to_a_runner_is_retried_on_the_next_one() {
    use ferrofn_common::certs::{ClusterCertOptions, generate_cluster};
    use ferrofn_common::tls::{ReloadingServerTls, TlsFiles};
    use ferrofn_lb::pool::RunnerState;
    ferrofn_common::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let opts = ClusterCertOptions {
        runner_names: vec!["r1".into()],
        ..ClusterCertOptions::default()
    };
    let certs = generate_cluster(dir.path(), &opts).unwrap();
    let server_tls = ReloadingServerTls::new(TlsFiles::runner_in(dir.path(), "r1")).unwrap();
    let good = FakeRunner::start_tls(Behaviour::default(), Some(server_tls))
        .await
        .unwrap();
    // TCP connects, the TLS handshake never answers: tonic's connect timeout (500 ms), which it
    // reports as UNKNOWN "transport error".
    let (hole, _task) = black_hole().await;
    let lb_files = certs.lb.clone();
    let (lb, f) = setup_addrs(vec![hole, good.address()], 30, |s| {
        s.plaintext = false;
        s.tls.ca = lb_files.ca.clone();
        s.tls.cert = lb_files.cert.clone();
        s.tls.key = lb_files.key.clone();
        s.health_interval_ms = 60_000;
    })
    .await;
    let pool = lb.handle.pool.clone();
    let mut tried = 0;
    for n in 0..30 {
        // The start-up probe found it down; pretend the health loop has not noticed yet.
        pool.runners()[0].set_state(RunnerState::Up, "test");
        let started = Instant::now();
        let resp = call("POST", &lb.url(&invoke_path(&f)), Some(json!({"n": n})))
            .await
            .unwrap();
        assert_eq!((resp.status, resp.json()), (200, json!({"n": n})), "call {n}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        if pool.runners()[0].state() == RunnerState::Down {
            tried += 1;
            if tried == 2 {
                break;
            }
        }
    }
    assert_eq!(
        tried, 2,
        "the silent runner was tried first in two calls and marked down"
    );
    lb.stop().await;
}

#[tokio::test]
async fn a_silent_runner_connection_fails_the_committed_call_with_502_after_keepalive() {
    use ferrofn_lb::pool::RunnerState;
    let (hole, _task) = black_hole().await;
    let (lb, f) = setup_addrs(vec![hole], 30, |s| {
        s.health_interval_ms = 60_000;
        s.runner_keepalive_ms = 300;
        s.runner_keepalive_timeout_ms = 300;
    })
    .await;
    lb.handle.pool.runners()[0].set_state(RunnerState::Up, "test");
    let started = Instant::now();
    let resp = call("POST", &lb.url(&invoke_path(&f)), None).await.unwrap();
    let took = started.elapsed();
    assert_eq!(
        (resp.status, resp.json()["message"].clone()),
        (502, json!(ferrofn_lb::engage::CONNECTION_LOST)),
        "after {took:?}"
    );
    assert_eq!(resp.header("fn-call-id").len(), 26);
    assert!(took < Duration::from_secs(5), "keepalive noticed late: {took:?}");
    lb.stop().await;
}

#[tokio::test]
async fn a_runner_that_never_finishes_gets_504_at_the_call_deadline() {
    for accept_ack in [false, true] {
        let r = FakeRunner::start(Behaviour {
            hang: true,
            accept_ack,
            ..Behaviour::default()
        })
        .await
        .unwrap();
        // fn timeout 1 s + 1 s margin.
        let (lb, f) = setup_addrs(vec![r.address()], 1, |s| s.sync_deadline_margin_ms = 1000).await;
        let started = Instant::now();
        let resp = call("POST", &lb.url(&invoke_path(&f)), Some(json!({"x": 1})))
            .await
            .unwrap();
        let took = started.elapsed();
        assert_eq!(resp.status, 504, "ack {accept_ack}: {}", resp.text());
        let msg = resp.json()["message"].as_str().unwrap().to_owned();
        assert!(msg.contains("within 2s"), "{msg}");
        assert_eq!(resp.header("fn-call-id").len(), 26);
        assert!(
            took >= Duration::from_millis(1900) && took < Duration::from_secs(5),
            "ack {accept_ack}: {took:?}"
        );
        let cancelled = || r.shared.cancelled.load(std::sync::atomic::Ordering::SeqCst) == 1;
        assert!(
            eventually(Duration::from_secs(5), cancelled).await,
            "the runner saw the call cancelled"
        );
        assert_eq!(r.engaged(), 1, "not retried");
        lb.stop().await;
    }
}

#[tokio::test]
async fn a_stream_ending_without_call_finished_is_a_clear_502() {
    for accept_ack in [false, true] {
        let r = FakeRunner::start(Behaviour {
            end_without_finish: true,
            accept_ack,
            ..Behaviour::default()
        })
        .await
        .unwrap();
        let (lb, f) = setup_addrs(vec![r.address()], 30, |_| {}).await;
        let resp = call("POST", &lb.url(&invoke_path(&f)), None).await.unwrap();
        assert_eq!(
            (resp.status, resp.json()["message"].clone()),
            (502, json!(ferrofn_lb::engage::NO_RESULT)),
            "ack {accept_ack}"
        );
        assert_eq!(resp.header("fn-call-id").len(), 26);
        assert_eq!(r.engaged(), 1, "committed: not retried");
        lb.stop().await;
    }
}
