//! nginx in front of the compose cluster, configured by `deploy/nginx/ferrofn.conf` (only its
//! listen address and upstream port changed): an invoke works through it, and a 64 MiB request body
//! streams to the function and a 64 MiB response back, without nginx spooling either to a temp file.
//! nginx is Debian's package on the host; without it this test fails (loudly), it does not skip.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use bytes::Bytes;

use ferrofn_tests::cluster::Cluster;
use ferrofn_tests::images::{HELLO_IMAGE, TESTFN_IMAGE};
use ferrofn_tests::lb_proc::request;
use ferrofn_tests::nginx::{Nginx, nginx_binary};

const BIG: usize = 64 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn behind_nginx_invoke_works_and_64_mib_bodies_stream_both_ways() -> Result<()> {
    // Before the cluster: a missing nginx fails at once.
    nginx_binary()?;
    let cluster = Cluster::up().await?;
    let hello = cluster
        .register("ingress", "hello", HELLO_IMAGE.as_str(), 30)
        .await?;
    let echo = cluster
        .register("ingress", "echo", TESTFN_IMAGE.as_str(), 120)
        .await?;
    let nginx = Nginx::start(&[cluster.port]).await?;

    let r = request(
        "POST",
        &nginx.url(&format!("/invoke/{hello}")),
        &BTreeMap::new(),
        Bytes::from_static(br#"{"name":"nginx"}"#),
    )
    .await?;
    ensure!(
        r.status == 200 && r.text().contains("Hello nginx"),
        "invoke through nginx: {} {}",
        r.status,
        r.text()
    );

    // Upload: testfn reads the whole body as it streams in and reports its length.
    let mut body = br#"{"sleepTime":0}"#.to_vec();
    body.extend((0..BIG).map(|i| b'a' + (i % 26) as u8));
    let t = Instant::now();
    let r = tokio::time::timeout(
        Duration::from_secs(180),
        request(
            "POST",
            &nginx.url(&format!("/invoke/{echo}")),
            &BTreeMap::new(),
            body.clone(),
        ),
    )
    .await
    .context("64 MiB upload through nginx: no answer within 180 s")??;
    eprintln!("64 MiB request body through nginx in {:?}", t.elapsed());
    ensure!(r.status == 200, "64 MiB upload: {} {}", r.status, r.text());
    let got = r.json()["data"]["bodyLength"].as_u64();
    ensure!(
        got == Some(body.len() as u64),
        "the function read {got:?} bytes of {}",
        body.len()
    );

    // Download: testfn streams 64 MiB of the a..z pattern back.
    let t = Instant::now();
    let r = tokio::time::timeout(
        Duration::from_secs(180),
        request(
            "POST",
            &nginx.url(&format!("/invoke/{echo}")),
            &BTreeMap::new(),
            format!("{{\"responseSize\":{BIG}}}"),
        ),
    )
    .await
    .context("64 MiB download through nginx: no answer within 180 s")??;
    eprintln!("64 MiB response body through nginx in {:?}", t.elapsed());
    ensure!(
        r.status == 200,
        "64 MiB download: {} {}",
        r.status,
        String::from_utf8_lossy(&r.body[..r.body.len().min(500)])
    );
    ensure!(r.body.len() == BIG, "received {} bytes of {BIG}", r.body.len());
    ensure!(
        r.body
            .iter()
            .enumerate()
            .all(|(i, &b)| b == b'a' + (i % 26) as u8),
        "the response body is not the a..z pattern"
    );

    let log = nginx.error_log();
    ensure!(
        !log.contains("buffered to a temporary file"),
        "nginx spooled a body to disk (streaming is off): {log}"
    );
    nginx.stop().await?;
    cluster.down().await
}
