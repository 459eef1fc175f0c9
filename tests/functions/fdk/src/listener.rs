//! `FN_FORMAT`/`FN_LISTENER` validation and the socket "dance" of §3.2: bind a phony socket,
//! make it world-writable, then atomically publish it through a relative `lsnr.sock` symlink so
//! the runner's inotify watch only ever sees a socket that is ready.

use crate::FdkError;
use std::{
    fs,
    io::ErrorKind,
    os::unix::fs::{PermissionsExt, symlink},
    path::{Path, PathBuf},
};
use tokio::net::UnixListener;

/// Where the FDK listens, from the environment the runner sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    /// The published socket path (`/tmp/iofs/lsnr.sock` under Fn).
    pub socket_path: PathBuf,
}

impl ListenerConfig {
    /// Reads `FN_FORMAT` and `FN_LISTENER` from the process environment.
    pub fn from_env() -> Result<Self, FdkError> {
        let format = std::env::var("FN_FORMAT").ok();
        let listener = std::env::var("FN_LISTENER").ok();
        Self::from_vars(format.as_deref(), listener.as_deref())
    }

    /// Validates the two variables: `FN_FORMAT`, if set and non-empty, must be `http-stream`;
    /// `FN_LISTENER` must be `unix:<path>` whose path ends in a file name.
    pub fn from_vars(format: Option<&str>, listener: Option<&str>) -> Result<Self, FdkError> {
        if let Some(format) = format.filter(|f| !f.is_empty())
            && format != "http-stream"
        {
            return Err(FdkError::UnsupportedFormat(format.to_owned()));
        }
        let listener = listener.ok_or(FdkError::MissingListener)?;
        let path = listener
            .strip_prefix("unix:")
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .filter(|p| p.file_name().is_some())
            .ok_or_else(|| FdkError::InvalidListener(listener.to_owned()))?;
        Ok(ListenerConfig { socket_path: path })
    }
}

/// The phony socket next to `socket_path`: `<dir>/phony<file name>`.
pub fn phony_path(socket_path: &Path) -> PathBuf {
    let name = socket_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    socket_path.with_file_name(format!("phony{name}"))
}

fn remove_if_present(path: &Path) -> Result<(), FdkError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(FdkError::RemoveStale {
            path: path.to_owned(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// Performs the phony-socket dance and returns the listening socket. Needs a Tokio runtime.
pub(crate) fn bind(config: &ListenerConfig) -> Result<UnixListener, FdkError> {
    let link = &config.socket_path;
    let phony = phony_path(link);
    remove_if_present(&phony)?;
    remove_if_present(link)?;
    let listener = UnixListener::bind(&phony).map_err(|source| FdkError::Bind {
        path: phony.clone(),
        source,
    })?;
    // bind() applied the umask; the runner may run as another uid and needs write access.
    fs::set_permissions(&phony, fs::Permissions::from_mode(0o666)).map_err(|source| FdkError::Chmod {
        path: phony.clone(),
        source,
    })?;
    // The target is the bare file name: the runner refuses links with a directory component.
    let target = PathBuf::from(phony.file_name().unwrap_or_default());
    symlink(&target, link).map_err(|source| FdkError::Symlink {
        link: link.clone(),
        target,
        source,
    })?;
    Ok(listener)
}

/// Removes the link and the phony socket (the contract asks FDKs to clean up on exit).
pub(crate) fn unpublish(config: &ListenerConfig) {
    let _ = fs::remove_file(&config.socket_path);
    let _ = fs::remove_file(phony_path(&config.socket_path));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileTypeExt;

    #[test]
    fn validates_format_and_listener() {
        let ok = ListenerConfig::from_vars(Some("http-stream"), Some("unix:/tmp/iofs/lsnr.sock")).unwrap();
        assert_eq!(ok.socket_path, PathBuf::from("/tmp/iofs/lsnr.sock"));
        assert!(ListenerConfig::from_vars(None, Some("unix:/x/l.sock")).is_ok());
        assert!(ListenerConfig::from_vars(Some(""), Some("unix:/x/l.sock")).is_ok());
        assert!(matches!(
            ListenerConfig::from_vars(Some("json"), Some("unix:/x/l.sock")),
            Err(FdkError::UnsupportedFormat(f)) if f == "json"
        ));
        assert!(matches!(
            ListenerConfig::from_vars(None, None),
            Err(FdkError::MissingListener)
        ));
        for bad in ["tcp:127.0.0.1:80", "unix:", "/tmp/iofs/lsnr.sock", "unix:/"] {
            assert!(
                matches!(
                    ListenerConfig::from_vars(None, Some(bad)),
                    Err(FdkError::InvalidListener(_))
                ),
                "{bad} accepted"
            );
        }
    }

    #[test]
    fn phony_sits_next_to_the_socket() {
        assert_eq!(
            phony_path(Path::new("/tmp/iofs/lsnr.sock")),
            PathBuf::from("/tmp/iofs/phonylsnr.sock")
        );
    }

    #[tokio::test]
    async fn bind_publishes_a_relative_link_to_a_world_writable_socket() {
        let dir = tempfile::tempdir().unwrap();
        let config = ListenerConfig {
            socket_path: dir.path().join("lsnr.sock"),
        };
        // Stale files from a previous run must not prevent binding.
        fs::write(phony_path(&config.socket_path), b"stale").unwrap();
        fs::write(&config.socket_path, b"stale").unwrap();
        let _listener = bind(&config).unwrap();
        assert_eq!(
            fs::read_link(&config.socket_path).unwrap(),
            PathBuf::from("phonylsnr.sock")
        );
        let meta = fs::metadata(&config.socket_path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o666);
        unpublish(&config);
        assert!(fs::symlink_metadata(&config.socket_path).is_err());
        assert!(fs::symlink_metadata(phony_path(&config.socket_path)).is_err());
    }
}
