//! The per-container iofs directory: a fresh host dir (mode 0777, so the function's uid 1000 can
//! create its socket) bind-mounted at `/tmp/iofs`, and readiness by inotify on that dir: the FDK's
//! `lsnr.sock` symlink appearing, checked so that it can only point at a sibling socket (§3.3).

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// Name of the socket the FDK announces (a symlink to its phony socket).
pub const SOCKET_NAME: &str = "lsnr.sock";
/// `FN_LISTENER` value for every container.
pub const FN_LISTENER: &str = "unix:/tmp/iofs/lsnr.sock";

/// Where iofs dirs live, on the runner and as the Docker daemon sees them.
#[derive(Debug, Clone)]
pub struct IofsConfig {
    /// `FN_IOFS_PATH`: parent of the iofs dirs as this process sees it.
    pub root: PathBuf,
    /// `FN_IOFS_DOCKER_PATH`: the same parent as the Docker daemon sees it (runner in a container).
    pub docker_root: Option<PathBuf>,
    /// Start of every dir name this runner creates (see [`dir_prefix`]): several runners may share
    /// `root`, and a restarted runner removes exactly its own leftovers.
    pub prefix: String,
}

/// The iofs dir name prefix of the runner called `runner_name`: `iofs-<name>-`, the name reduced to
/// at most 24 safe characters so the socket path stays far below the 108-byte `sun_path` limit.
pub fn dir_prefix(runner_name: &str) -> String {
    let safe: String = runner_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(24)
        .collect();
    format!("iofs-{safe}-")
}

/// Removes the dirs a crashed earlier process of this runner left under the root (their
/// containers are swept by label at the same moment). Returns how many were removed.
pub fn sweep_leftovers(cfg: &IofsConfig) -> usize {
    let Ok(entries) = std::fs::read_dir(&cfg.root) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let own = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(&cfg.prefix));
        if own && entry.file_type().is_ok_and(|t| t.is_dir()) {
            match std::fs::remove_dir_all(entry.path()) {
                Ok(()) => removed += 1,
                Err(e) => tracing::warn!(path = %entry.path().display(), error = %e,
                    "cannot remove leftover iofs dir"),
            }
        }
    }
    removed
}

/// A failure of the iofs dir or of its readiness check.
#[derive(Debug, thiserror::Error)]
pub enum IofsError {
    /// The per-container dir could not be created.
    #[error("cannot create iofs dir {path}: {source}")]
    Create { path: PathBuf, source: std::io::Error },
    /// The inotify watch could not be set up.
    #[error("cannot watch iofs dir {path}: {source}")]
    Watch { path: PathBuf, source: notify::Error },
    /// The watch reported an error.
    #[error("inotify error on iofs dir {path}: {source}")]
    WatchEvent { path: PathBuf, source: notify::Error },
    /// The socket the function announced is not acceptable (a symlink out of the dir, not a socket).
    #[error("invalid function socket {path}: {reason}")]
    BadSocket { path: PathBuf, reason: String },
}

/// One container's iofs dir, with its inotify watch armed.
pub struct IofsDir {
    host: PathBuf,
    docker: PathBuf,
    _watcher: notify::RecommendedWatcher,
    events: mpsc::UnboundedReceiver<notify::Result<notify::Event>>,
}

impl std::fmt::Debug for IofsDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IofsDir")
            .field("host", &self.host)
            .field("docker", &self.docker)
            .finish()
    }
}

impl IofsDir {
    /// Creates `<root>/<prefix><random>` with mode 0777 and arms the watch on it, before any container
    /// exists, so that the socket's creation cannot be missed.
    pub fn create(cfg: &IofsConfig) -> Result<Self, IofsError> {
        let name = format!("{}{:012x}", cfg.prefix, rand::random::<u64>() & 0xffff_ffff_ffff);
        let host = cfg.root.join(&name);
        std::fs::create_dir_all(&cfg.root).map_err(|source| IofsError::Create {
            path: cfg.root.clone(),
            source,
        })?;
        std::fs::create_dir(&host).map_err(|source| IofsError::Create {
            path: host.clone(),
            source,
        })?;
        // The umask strips bits from mkdir's mode; set them explicitly.
        std::fs::set_permissions(&host, std::fs::Permissions::from_mode(0o777)).map_err(|source| {
            IofsError::Create {
                path: host.clone(),
                source,
            }
        })?;
        let docker = match &cfg.docker_root {
            Some(d) => d.join(&name),
            None => host.clone(),
        };
        let (tx, events) = mpsc::unbounded_channel();
        let mut watcher = notify::recommended_watcher(move |ev| {
            let _ = tx.send(ev);
        })
        .map_err(|source| IofsError::Watch {
            path: host.clone(),
            source,
        })?;
        if let Err(source) = watcher.watch(&host, RecursiveMode::NonRecursive) {
            let _ = std::fs::remove_dir_all(&host);
            return Err(IofsError::Watch { path: host, source });
        }
        Ok(IofsDir {
            host,
            docker,
            _watcher: watcher,
            events,
        })
    }

    /// The dir as this process sees it.
    pub fn host_path(&self) -> &Path {
        &self.host
    }

    /// The dir as the Docker daemon sees it (the bind source).
    pub fn docker_path(&self) -> &Path {
        &self.docker
    }

    /// The socket the runner dials.
    pub fn socket_path(&self) -> PathBuf {
        self.host.join(SOCKET_NAME)
    }

    /// Waits until the function's socket is there and valid. Unbounded: the caller applies
    /// `FN_HOT_START_TIMEOUT_MSECS` and watches for the container dying.
    pub async fn wait_ready(&mut self) -> Result<(), IofsError> {
        // The socket may already exist (events arrive after the check is armed, never before it).
        if check_socket(&self.socket_path())? {
            return Ok(());
        }
        while let Some(ev) = self.events.recv().await {
            let ev = ev.map_err(|source| IofsError::WatchEvent {
                path: self.host.clone(),
                source,
            })?;
            if ev
                .paths
                .iter()
                .any(|p| p.file_name().is_some_and(|n| n == SOCKET_NAME))
                && check_socket(&self.socket_path())?
            {
                return Ok(());
            }
        }
        // The watcher lives as long as `self`, so its channel cannot close first.
        Err(IofsError::BadSocket {
            path: self.socket_path(),
            reason: "watch ended".into(),
        })
    }

    /// Removes the dir and everything in it. The watch goes first (`unwatch` waits for the watcher's
    /// thread): removing a watched dir makes the kernel drop the watch itself, and the watcher's
    /// later attempt to remove it again was logged as "unable to remove watch descriptor" each time.
    pub fn remove(mut self) {
        if let Err(e) = self._watcher.unwatch(&self.host) {
            tracing::debug!(path = %self.host.display(), error = %e, "cannot remove the iofs watch");
        }
        if let Err(e) = std::fs::remove_dir_all(&self.host) {
            tracing::warn!(path = %self.host.display(), error = %e, "cannot remove iofs dir");
        }
    }
}

/// `Ok(false)` while `lsnr.sock` does not exist; `Ok(true)` once it is a socket or a symlink to a
/// sibling socket; an error for anything else (a hostile image pointing the runner elsewhere).
fn check_socket(path: &Path) -> Result<bool, IofsError> {
    let bad = |reason: String| IofsError::BadSocket {
        path: path.to_path_buf(),
        reason,
    };
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(bad(format!("lstat: {e}"))),
    };
    if meta.file_type().is_symlink() {
        let target = std::fs::read_link(path).map_err(|e| bad(format!("readlink: {e}")))?;
        let parent = target.parent().map(|p| p.as_os_str().is_empty()).unwrap_or(true);
        if !parent || target.is_absolute() || target.components().count() != 1 {
            return Err(bad(format!(
                "symlink points outside the iofs dir: {}",
                target.display()
            )));
        }
    }
    let meta = std::fs::metadata(path).map_err(|e| bad(format!("stat: {e}")))?;
    if !meta.file_type().is_socket() {
        return Err(bad("not a unix socket".into()));
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cfg(dir: &tempfile::TempDir) -> IofsConfig {
        IofsConfig {
            root: dir.path().join("iofs"),
            docker_root: None,
            prefix: dir_prefix("test"),
        }
    }

    #[tokio::test]
    async fn ready_on_relative_symlink_to_phony_socket() {
        let tmp = tempfile::tempdir().unwrap();
        let mut io = IofsDir::create(&cfg(&tmp)).unwrap();
        let mode = std::fs::metadata(io.host_path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o777);
        let host = io.host_path().to_path_buf();
        let server = tokio::spawn(async move {
            let l = tokio::net::UnixListener::bind(host.join("phonylsnr.sock")).unwrap();
            std::os::unix::fs::symlink("phonylsnr.sock", host.join(SOCKET_NAME)).unwrap();
            let _ = l.accept().await;
        });
        tokio::time::timeout(Duration::from_secs(5), io.wait_ready())
            .await
            .unwrap()
            .unwrap();
        tokio::net::UnixStream::connect(io.socket_path()).await.unwrap();
        server.await.unwrap();
        let p = io.host_path().to_path_buf();
        io.remove();
        assert!(!p.exists());
    }

    #[tokio::test]
    async fn ready_when_socket_exists_before_wait() {
        let tmp = tempfile::tempdir().unwrap();
        let mut io = IofsDir::create(&cfg(&tmp)).unwrap();
        let _l = tokio::net::UnixListener::bind(io.socket_path()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), io.wait_ready())
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn rejects_symlink_outside_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let mut io = IofsDir::create(&cfg(&tmp)).unwrap();
        let outside = tmp.path().join("evil.sock");
        let _l = tokio::net::UnixListener::bind(&outside).unwrap();
        let link = io.socket_path();
        tokio::spawn(async move { std::os::unix::fs::symlink(&outside, link).unwrap() });
        let err = tokio::time::timeout(Duration::from_secs(5), io.wait_ready())
            .await
            .unwrap()
            .unwrap_err();
        assert!(matches!(err, IofsError::BadSocket { .. }), "{err}");
    }

    #[tokio::test]
    async fn rejects_plain_file() {
        let tmp = tempfile::tempdir().unwrap();
        let mut io = IofsDir::create(&cfg(&tmp)).unwrap();
        let link = io.socket_path();
        tokio::spawn(async move { std::fs::write(link, b"x").unwrap() });
        let err = tokio::time::timeout(Duration::from_secs(5), io.wait_ready())
            .await
            .unwrap()
            .unwrap_err();
        assert!(err.to_string().contains("not a unix socket"), "{err}");
    }

    #[test]
    fn sweep_removes_only_this_runners_leftover_dirs() {
        let tmp = tempfile::tempdir().unwrap();
        let mine = cfg(&tmp);
        let other = IofsConfig {
            prefix: dir_prefix("other"),
            ..cfg(&tmp)
        };
        let a = IofsDir::create(&mine).unwrap();
        let b = IofsDir::create(&other).unwrap();
        let (a_path, b_path) = (a.host_path().to_path_buf(), b.host_path().to_path_buf());
        drop((a, b)); // a crash: the dirs stay
        assert!(a_path.exists() && b_path.exists());
        assert_eq!(sweep_leftovers(&mine), 1);
        assert!(!a_path.exists(), "own leftover removed");
        assert!(b_path.exists(), "another runner's dir is kept");
        assert_eq!(dir_prefix("a b/c"), "iofs-a_b_c-");
        assert!(dir_prefix(&"x".repeat(100)).len() <= 30);
    }

    #[test]
    fn docker_path_maps_under_docker_root() {
        let tmp = tempfile::tempdir().unwrap();
        let c = IofsConfig {
            root: tmp.path().to_path_buf(),
            docker_root: Some(PathBuf::from("/host/iofs")),
            prefix: dir_prefix("test"),
        };
        let io = IofsDir::create(&c).unwrap();
        assert_eq!(io.docker_path().parent().unwrap(), Path::new("/host/iofs"));
        assert_eq!(io.docker_path().file_name(), io.host_path().file_name());
        io.remove();
    }
}
