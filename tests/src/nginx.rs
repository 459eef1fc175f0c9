//! nginx (Debian's package, on the host) in front of LBs, configured by `deploy/nginx/ferrofn.conf`
//! with only its listen address and upstream servers changed: a throwaway instance in a temp dir.
//! Without nginx the tests that need it fail (loudly), they do not skip.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;

use crate::images::workspace_root;
use crate::lb_proc::{free_port, request};

/// The nginx binary (Debian's package): PATH, then /usr/sbin.
pub fn nginx_binary() -> Result<PathBuf> {
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

/// nginx serving `deploy/nginx/ferrofn.conf` on a loopback port, proxying to LBs on loopback.
#[derive(Debug)]
pub struct Nginx {
    bin: PathBuf,
    conf: PathBuf,
    dir: tempfile::TempDir,
    child: tokio::process::Child,
    port: u16,
}

impl Nginx {
    /// Starts nginx with `deploy/nginx/ferrofn.conf` whose upstream is the LBs on these loopback
    /// ports (one `server` line each), and waits until it proxies `GET /version`.
    pub async fn start(lb_ports: &[u16]) -> Result<Self> {
        let bin = nginx_binary()?;
        let dir = tempfile::Builder::new().prefix("ffnginx").tempdir()?;
        // nginx workers (not root) read the config and write temp files here.
        set_mode(dir.path(), 0o755)?;
        let site = std::fs::read_to_string(workspace_root().join("deploy/nginx/ferrofn.conf"))
            .context("reading deploy/nginx/ferrofn.conf")?;
        let port = free_port()?;
        let servers: Vec<String> = lb_ports
            .iter()
            .map(|p| format!("server 127.0.0.1:{p};"))
            .collect();
        let site = replace_once(&site, "server 127.0.0.1:8080;", &servers.join("\n    "))?;
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

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Its loopback port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its error log so far.
    pub fn error_log(&self) -> String {
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
    pub async fn stop(mut self) -> Result<()> {
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
