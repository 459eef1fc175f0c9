//! nginx in front of the compose cluster, configured by `deploy/nginx/ferrofn.conf` (only its
//! listen address and upstream port changed): an invoke works through it, and a 64 MiB request body
//! streams to the function and a 64 MiB response back, without nginx spooling either to a temp file.
//! nginx is Debian's package on the host; without it this test fails (loudly), it does not skip.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;

use ferrofn_tests::cluster::Cluster;
use ferrofn_tests::images::{HELLO_IMAGE, TESTFN_IMAGE, workspace_root};
use ferrofn_tests::lb_proc::{free_port, request};

const BIG: usize = 64 << 20;

fn nginx_binary() -> Result<PathBuf> {
    let in_path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("nginx"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    in_path
        .into_iter()
        .chain([PathBuf::from("/usr/sbin/nginx")])
        .find(|p| p.is_file())
        .context(
            "nginx is not installed, so the ingress test cannot run: install Debian's package \
             (`apt-get install -y nginx`, as .ci/run does). This is a failure, not a skip.",
        )
}

/// nginx serving `deploy/nginx/ferrofn.conf` on a loopback port, proxying to the cluster's LB.
struct Nginx {
    bin: PathBuf,
    conf: PathBuf,
    dir: tempfile::TempDir,
    child: tokio::process::Child,
    port: u16,
}

impl Nginx {
    async fn start(lb_port: u16) -> Result<Self> {
        let bin = nginx_binary()?;
        let dir = tempfile::Builder::new().prefix("ffnginx").tempdir()?;
        // nginx workers (not root) read the config and write temp files here.
        set_mode(dir.path(), 0o755)?;
        let site = std::fs::read_to_string(workspace_root().join("deploy/nginx/ferrofn.conf"))
            .context("reading deploy/nginx/ferrofn.conf")?;
        let port = free_port()?;
        let site = replace_once(
            &site,
            "server 127.0.0.1:8080;",
            &format!("server 127.0.0.1:{lb_port};"),
        )?;
        let site = replace_once(&site, "listen 80;", &format!("listen 127.0.0.1:{port};"))?;
        std::fs::write(dir.path().join("ferrofn.conf"), site)?;
        let d = dir.path().display();
        let main = format!(
            "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/client_body;\n  \
             proxy_temp_path {d}/proxy;\n  include {d}/ferrofn.conf;\n}}\n"
        );
        let conf = dir.path().join("nginx.conf");
        std::fs::write(&conf, main)?;

        let check = tokio::process::Command::new(&bin)
            .arg("-t")
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf)
            .output()
            .await
            .context("running nginx -t")?;
        ensure!(
            check.status.success(),
            "nginx -t rejects deploy/nginx/ferrofn.conf:\n{}",
            String::from_utf8_lossy(&check.stderr)
        );
        let child = tokio::process::Command::new(&bin)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            // Its own process group: the fallback below can kill the master and its workers at once.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .context("starting nginx")?;
        let mut nginx = Nginx {
            bin,
            conf,
            dir,
            child,
            port,
        };
        // Nothing announces readiness: poll the proxied GET /version, bounded.
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = nginx.child.try_wait()? {
                bail!("nginx exited at startup ({status}): {}", nginx.error_log());
            }
            let r = request("GET", &nginx.url("/version"), &BTreeMap::new(), Bytes::new()).await;
            if matches!(&r, Ok(r) if r.status == 200) {
                return Ok(nginx);
            }
            if Instant::now() >= deadline {
                bail!(
                    "nginx did not proxy GET /version within 15 s: {r:?}; {}",
                    nginx.error_log()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

impl Nginx {
    /// `nginx -s stop`: the master stops its workers and waits for them before it exits.
    fn signal_stop(&self) {
        let _ = std::process::Command::new(&self.bin)
            .arg("-p")
            .arg(self.dir.path())
            .arg("-c")
            .arg(&self.conf)
            .args(["-s", "stop"])
            .stderr(Stdio::null())
            .status();
    }

    /// Stops nginx and waits for its master to exit (so no worker outlives the test); kills its
    /// process group (master and workers) if it has not exited within 10 s.
    async fn stop(mut self) -> Result<()> {
        self.signal_stop();
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            if let Some(pid) = self.child.id() {
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", "--", &format!("-{pid}")])
                    .stderr(Stdio::null())
                    .status();
            }
            bail!("nginx did not stop within 10 s of `nginx -s stop`; killed its process group");
        }
        Ok(())
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // A test that failed half way: ask for the stop (kill_on_drop is the fallback).
        if matches!(self.child.try_wait(), Ok(None)) {
            self.signal_stop();
        }
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

fn replace_once(text: &str, from: &str, to: &str) -> Result<String> {
    ensure!(
        text.matches(from).count() == 1,
        "deploy/nginx/ferrofn.conf must contain `{from}` exactly once (the test rewrites it)"
    );
    Ok(text.replacen(from, to, 1))
}

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
    let nginx = Nginx::start(cluster.port).await?;

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
