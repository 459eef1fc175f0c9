//! What the LB behaviour tests (`tests/tests/lb_*.rs`) share: an in-process LB over fake runners (or
//! any addresses) with one app and one fn registered, the fn's invoke path, a polling wait, and a
//! TCP listener that never answers.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::AsyncReadExt;

use crate::lb_proc::fake_runner::FakeRunner;
use crate::lb_proc::{LbProc, json as call};

/// An LB over `runners` with an app (config A=1) and a fn (config B=2); returns (lb, app, fn).
pub async fn setup(
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

/// An LB over `addrs` (any `host:port`) with app and fn of timeout `fn_timeout` s.
pub async fn setup_addrs(
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

/// `/invoke/<fn id>` of a fn as the API returned it.
pub fn invoke_path(f: &Value) -> String {
    format!("/invoke/{}", f["id"].as_str().unwrap())
}

/// Polls `cond` every 20 ms for up to `limit`; whether it came true.
pub async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}

/// A TCP listener that accepts connections and reads them but never writes: a runner whose
/// process hangs, or (for TLS) a handshake that never completes.
pub async fn black_hole() -> (String, tokio::task::JoinHandle<()>) {
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
