//! A throwaway Postgres server for the registry tests: `initdb` into a temp dir, `postgres` listening
//! on a unix socket in that dir and on a free loopback port (password auth over TCP, trust on the
//! socket), stopped and removed afterwards. Nothing depends on a server left running.
//!
//! The binaries are Debian's (`postgresql` package): `FERROFN_PG_BIN` if set, else `initdb` on the
//! PATH, else the newest `/usr/lib/postgresql/<version>/bin`. `initdb` and `postgres` refuse to run
//! as root, so as root they run as the package's `postgres` system user (the temp dir is chowned to
//! it). The server runs under a small shell that stops it when the test process lets go of the
//! shell's stdin: on drop, on a panic, or when the test process dies, so no server outlives its test.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use tempfile::TempDir;

/// The superuser `initdb` creates.
pub const USER: &str = "ferrofn";
/// Its password (TCP connections use it; the socket trusts local users).
pub const PASSWORD: &str = "ferrofn-test-secret";
/// How long `initdb` and a (re)start may take.
const START_LIMIT: Duration = Duration::from_secs(60);
/// How long a stop may take before the server is killed.
const STOP_LIMIT: Duration = Duration::from_secs(20);

/// Stops the server (fast shutdown: sessions are terminated) when its stdin closes. The first line
/// out is the server's pid. With `FERROFN_PG_REMOVE` set it also removes that directory.
const SUPERVISOR: &str = r#""$@" &
pid=$!
echo "$pid"
read -r _ || true
kill -INT "$pid" 2>/dev/null
wait "$pid"
if [ -n "${FERROFN_PG_REMOVE:-}" ]; then rm -rf -- "$FERROFN_PG_REMOVE"; fi
"#;

static NEXT_DB: AtomicU32 = AtomicU32::new(0);

/// The directory of Debian's Postgres binaries.
pub fn bin_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("FERROFN_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|d| d.join("initdb"))
        .find(|p| p.is_file());
    if let Some(initdb) = on_path {
        // /usr/local/bin/initdb may be a link into /usr/lib/postgresql/<v>/bin: use the real dir,
        // where postgres and pg_isready are too.
        let real = std::fs::canonicalize(&initdb).unwrap_or(initdb);
        if let Some(dir) = real.parent().filter(|d| d.join("postgres").is_file()) {
            return Ok(dir.to_owned());
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).context(
        "no Postgres server binaries (initdb): install Debian's postgresql package \
         (apt-get install postgresql) or set FERROFN_PG_BIN to the directory of initdb and postgres",
    )
}

/// As root: the uid and gid of the `postgres` system user, who runs the server.
fn server_user() -> Result<Option<(u32, u32)>> {
    let me = Command::new("id").arg("-u").output().context("running id -u")?;
    if String::from_utf8_lossy(&me.stdout).trim() != "0" {
        return Ok(None);
    }
    let id = |flag: &str| -> Result<u32> {
        let out = Command::new("id").args([flag, "postgres"]).output()?;
        ensure!(
            out.status.success(),
            "running as root, and there is no postgres system user to run the server as \
             (Debian's postgresql package creates it)"
        );
        Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
    };
    Ok(Some((id("-u")?, id("-g")?)))
}

/// A running (or stopped, restartable) throwaway server.
#[derive(Debug)]
pub struct PgServer {
    dir: Option<TempDir>,
    root: PathBuf,
    bin: PathBuf,
    port: u16,
    run_as: Option<(u32, u32)>,
    supervisor: Option<(Child, ChildStdin)>,
    pid: Option<u32>,
    remove_on_exit: bool,
    /// `ssl=on` with `server.crt` / `server.key` in the data dir.
    ssl: bool,
}

impl PgServer {
    /// `initdb` into a new temp dir, then start the server.
    pub async fn start() -> Result<Self> {
        let mut me = tokio::task::spawn_blocking(|| Self::init(false))
            .await
            .context("the initdb task")??;
        me.launch().await?;
        Ok(me)
    }

    /// Like [`PgServer::start`], serving TLS (`ssl=on`) with this certificate and key (PEM).
    pub async fn start_tls(cert_pem: &str, key_pem: &str) -> Result<Self> {
        let mut me = tokio::task::spawn_blocking(|| Self::init(false))
            .await
            .context("the initdb task")??;
        let data = me.root.join("data");
        for (name, pem, mode) in [("server.crt", cert_pem, 0o644), ("server.key", key_pem, 0o600)] {
            use std::os::unix::fs::PermissionsExt;
            let path = data.join(name);
            std::fs::write(&path, pem)?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
            if let Some((uid, gid)) = me.run_as {
                std::os::unix::fs::chown(&path, Some(uid), Some(gid))?;
            }
        }
        me.ssl = true;
        me.launch().await?;
        Ok(me)
    }

    /// One server for the whole test process (each test takes its own database with
    /// [`PgServer::create_database`]); it stops, and its dir is removed, when the process exits.
    pub async fn shared() -> Result<&'static PgServer> {
        static SHARED: tokio::sync::OnceCell<PgServer> = tokio::sync::OnceCell::const_new();
        SHARED
            .get_or_try_init(|| async {
                let mut me = tokio::task::spawn_blocking(|| Self::init(true))
                    .await
                    .context("the initdb task")??;
                me.launch().await?;
                Ok::<_, anyhow::Error>(me)
            })
            .await
    }

    /// `initdb` (blocking: run it off the runtime).
    fn init(shared: bool) -> Result<Self> {
        let bin = bin_dir()?;
        let run_as = server_user()?;
        let dir = tempfile::Builder::new()
            .prefix("ffpg")
            .tempdir()
            .context("temp dir for Postgres")?;
        let root = dir.path().to_owned();
        let pwfile = root.join("pw");
        std::fs::write(&pwfile, PASSWORD)?;
        if let Some((uid, gid)) = run_as {
            for p in [&root, &pwfile] {
                std::os::unix::fs::chown(p, Some(uid), Some(gid))
                    .with_context(|| format!("chown {} to the postgres user", p.display()))?;
            }
        }
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(root.join("data"))
            .args([
                "-U",
                USER,
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ])
            .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .current_dir(&root);
        as_user(&mut initdb, run_as);
        let out = output_within(initdb, START_LIMIT).context("running initdb")?;
        ensure!(
            out.status.success(),
            "initdb failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let port = crate::lb_proc::free_port()?;
        let mut me = Self {
            root: root.clone(),
            dir: Some(dir),
            bin,
            port,
            run_as,
            supervisor: None,
            pid: None,
            remove_on_exit: shared,
            ssl: false,
        };
        if shared {
            // Nothing will drop a static: the supervisor removes the dir when the process exits.
            let _ = me.dir.take().map(TempDir::keep);
        }
        Ok(me)
    }

    /// Starts the server on the data dir and waits until it accepts connections.
    async fn launch(&mut self) -> Result<()> {
        ensure!(self.supervisor.is_none(), "the server is running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .context("Postgres log file")?;
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(SUPERVISOR)
            .arg("sh")
            .arg(self.bin.join("postgres"))
            .arg("-D")
            .arg(self.root.join("data"))
            .arg("-k")
            .arg(&self.root)
            .args(["-p", &self.port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args([
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ])
            .args(["-c", "max_connections=200", "-c", "shared_buffers=16MB"])
            .args(if self.ssl { &["-c", "ssl=on"][..] } else { &[] })
            .current_dir(&self.root)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        if self.remove_on_exit {
            cmd.env("FERROFN_PG_REMOVE", &self.root);
        }
        as_user(&mut cmd, self.run_as);
        let mut child = cmd.spawn().context("starting postgres")?;
        let stdin = child.stdin.take().context("supervisor stdin")?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("supervisor stdout")?).read_line(&mut line)?;
        self.pid = line.trim().parse().ok();
        self.supervisor = Some((child, stdin));
        self.wait_ready().await
    }

    /// Polls `pg_isready` until the server accepts connections (bounded).
    async fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_LIMIT;
        loop {
            let ok = tokio::process::Command::new(self.bin.join("pg_isready"))
                .arg("-h")
                .arg(&self.root)
                .args(["-p", &self.port.to_string(), "-U", USER, "-d", "postgres", "-q"])
                .status()
                .await
                .is_ok_and(|s| s.success());
            if ok {
                return Ok(());
            }
            if let Some((child, _)) = self.supervisor.as_mut()
                && let Some(status) = child.try_wait()?
            {
                self.supervisor = None;
                bail!("postgres exited at start ({status}): {}", self.log());
            }
            if Instant::now() > deadline {
                bail!("postgres not ready within {START_LIMIT:?}: {}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the server (fast shutdown, as `pg_ctl stop` does: client sessions are cut), keeping
    /// its data for [`PgServer::restart`].
    pub fn stop(&mut self) -> Result<()> {
        let Some((mut child, stdin)) = self.supervisor.take() else {
            return Ok(());
        };
        drop(stdin);
        let shell = child.id();
        let (done, exited) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = done.send(child.wait());
        });
        if exited.recv_timeout(STOP_LIMIT).is_err() {
            for pid in self.pid.into_iter().chain([shell]) {
                let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            }
            bail!("postgres did not stop within {STOP_LIMIT:?}: {}", self.log());
        }
        Ok(())
    }

    /// Starts the stopped server again on the same data, socket and port.
    pub async fn restart(&mut self) -> Result<()> {
        self.launch().await
    }

    /// Whether the server process is running.
    pub fn running(&self) -> bool {
        self.supervisor.is_some()
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://ferrofn:<password>@127.0.0.1:<port>/<db>?sslmode=disable`: TCP, password auth.
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://{USER}:{PASSWORD}@127.0.0.1:{}/{db}?sslmode=disable",
            self.port
        )
    }

    /// The unix socket form: the directory percent-encoded as the host, no password.
    pub fn socket_url(&self, db: &str) -> String {
        let host: String = self
            .root
            .to_string_lossy()
            .chars()
            .map(|c| match c {
                '/' => "%2F".to_owned(),
                c => c.to_string(),
            })
            .collect();
        format!("postgres://{USER}@{host}:{}/{db}", self.port)
    }

    /// A new empty database; returns its name.
    pub async fn create_database(&self) -> Result<String> {
        let name = format!(
            "t{}_{}",
            std::process::id(),
            NEXT_DB.fetch_add(1, Ordering::Relaxed)
        );
        let client = self.client("postgres").await?;
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .with_context(|| format!("CREATE DATABASE {name}"))?;
        Ok(name)
    }

    /// A superuser connection to `db` over the socket (driven by a spawned task).
    pub async fn client(&self, db: &str) -> Result<tokio_postgres::Client> {
        let (client, conn) = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_postgres::connect(&self.socket_url(db), tokio_postgres::NoTls),
        )
        .await
        .context("connecting to the test Postgres: timed out")?
        .with_context(|| format!("connecting to the test Postgres ({})", self.log()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }

    fn log_path(&self) -> PathBuf {
        self.root.join("postgres.log")
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The data and socket directory.
    pub fn dir(&self) -> &Path {
        &self.root
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("stopping the test Postgres: {e:#}");
        }
    }
}

/// Runs `cmd` to completion, killed (and an error) if it takes longer than `limit`.
fn output_within(mut cmd: Command, limit: Duration) -> Result<std::process::Output> {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning")?;
    let pid = child.id();
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    match finished.recv_timeout(limit) {
        Ok(out) => Ok(out?),
        Err(_) => {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            bail!("did not finish within {limit:?}")
        }
    }
}

fn as_user(cmd: &mut Command, run_as: Option<(u32, u32)>) {
    if let Some((uid, gid)) = run_as {
        // std drops the supplementary groups when it changes the uid.
        cmd.uid(uid).gid(gid).env("HOME", "/tmp");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_server_starts_answers_stops_and_restarts() {
        let mut pg = PgServer::start().await.unwrap();
        let db = pg.create_database().await.unwrap();
        // TCP with the password.
        let (c, conn) = tokio_postgres::connect(&pg.url(&db), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        c.batch_execute("CREATE TABLE t (x INT); INSERT INTO t VALUES (7)")
            .await
            .unwrap();
        // A wrong password is refused over TCP.
        let wrong = pg.url(&db).replace(PASSWORD, "wrong");
        assert!(
            tokio_postgres::connect(&wrong, tokio_postgres::NoTls)
                .await
                .is_err()
        );
        pg.stop().unwrap();
        assert!(!pg.running());
        assert!(c.query_one("SELECT 1", &[]).await.is_err(), "the session was cut");
        pg.restart().await.unwrap();
        let c = pg.client(&db).await.unwrap();
        let x: i32 = c.query_one("SELECT x FROM t", &[]).await.unwrap().get(0);
        assert_eq!(x, 7, "the data survives a restart");
        let dir = pg.dir().to_owned();
        drop(pg);
        assert!(!dir.exists(), "the temp dir is removed");
    }
}
