//! Bearer tokens on the management API (`/v2/*`) and, optionally, on the invocation paths
//! (`/invoke`, `/t`). Fn itself has no authentication, but the `fn` CLI sends its context's `token`
//! as `Authorization: Bearer <token>`, so requiring one keeps the CLI working.
//!
//! Tokens come from a setting (a list) and from a file holding one token per line (`#` comments and
//! blank lines ignored). The file is read again whenever its modification time changes, so tokens
//! are rotated by rewriting it, without a restart. A presented token is compared with every known
//! token through their SHA-256 digests in constant time (no early exit on the first differing byte,
//! no length leak).

use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::SystemTime;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use ferrofn_common::lock::RwLockExt;

use super::{SharedState, json_response};

/// A set of accepted tokens: fixed ones and those of a file re-read when it changes.
#[derive(Debug, Default)]
pub struct Tokens {
    fixed: Vec<[u8; 32]>,
    file: Option<PathBuf>,
    from_file: RwLock<FileTokens>,
}

#[derive(Debug, Default)]
struct FileTokens {
    mtime: Option<SystemTime>,
    digests: Vec<[u8; 32]>,
}

/// Why a token file cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the token file {path}: {source}")]
pub struct TokenFileError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

fn parse_file(text: &str) -> Vec<[u8; 32]> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| digest(l.as_bytes()))
        .collect()
}

impl Tokens {
    /// `fixed` tokens plus those of `file` (read now: a missing or unreadable file is an error at
    /// start, not a silently open API).
    pub fn new(fixed: &[String], file: Option<&Path>) -> Result<Self, TokenFileError> {
        let me = Self {
            fixed: fixed
                .iter()
                .map(|t| t.trim())
                .filter(|t| !t.is_empty())
                .map(|t| digest(t.as_bytes()))
                .collect(),
            file: file.filter(|p| !p.as_os_str().is_empty()).map(Path::to_owned),
            from_file: RwLock::default(),
        };
        if let Some(path) = &me.file {
            me.reload(path)?;
        }
        Ok(me)
    }

    /// True when no token is configured (the paths it guards are open).
    pub fn is_empty(&self) -> bool {
        self.fixed.is_empty() && self.file.is_none()
    }

    fn reload(&self, path: &Path) -> Result<(), TokenFileError> {
        let err = |source| TokenFileError {
            path: path.to_owned(),
            source,
        };
        let mtime = std::fs::metadata(path).and_then(|m| m.modified()).map_err(err)?;
        if self.from_file.read_unpoisoned().mtime == Some(mtime) {
            return Ok(());
        }
        let text = std::fs::read_to_string(path).map_err(err)?;
        let digests = parse_file(&text);
        tracing::info!(path = %path.display(), tokens = digests.len(), "API token file (re)loaded");
        *self.from_file.write_unpoisoned() = FileTokens {
            mtime: Some(mtime),
            digests,
        };
        Ok(())
    }

    /// True when `presented` is one of the tokens. Every known token is compared (constant time).
    pub fn accepts(&self, presented: &[u8]) -> bool {
        if let Some(path) = &self.file
            && let Err(e) = self.reload(path)
        {
            // Keep the tokens read last: a file being rewritten must not lock everyone out.
            tracing::warn!(error = %ferrofn_common::exit::one_line(&e), "keeping the last API tokens");
        }
        let d = digest(presented);
        let file = self.from_file.read_unpoisoned();
        let mut ok = subtle::Choice::from(0);
        for known in self.fixed.iter().chain(file.digests.iter()) {
            ok |= known.ct_eq(&d);
        }
        ok.into()
    }
}

/// The token of an `Authorization: Bearer <token>` header.
fn bearer(req: &Request) -> Option<&[u8]> {
    let v = req.headers().get(header::AUTHORIZATION)?.as_bytes();
    let (scheme, token) = v.split_at(v.iter().position(|b| *b == b' ')?);
    scheme
        .eq_ignore_ascii_case(b"bearer")
        .then(|| token.trim_ascii())
        .filter(|t| !t.is_empty())
}

fn unauthorized(message: &'static str) -> Response {
    let mut resp = json_response(
        StatusCode::UNAUTHORIZED,
        &serde_json::json!({ "message": message }),
        true,
    );
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"ferrofn\""),
    );
    resp.into_response()
}

/// Which token set guards `path`, if any.
fn guard<'a>(st: &'a SharedState, path: &str) -> Option<&'a Tokens> {
    let is = |prefix: &str| {
        path.strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    };
    if is("/v2") {
        Some(&st.api_tokens).filter(|t| !t.is_empty())
    } else if is("/invoke") || is("/t") {
        Some(&st.invoke_tokens).filter(|t| !t.is_empty())
    } else {
        None
    }
}

/// The middleware: 401 unless the path is open or the request carries an accepted token.
pub async fn require_token(State(st): State<SharedState>, req: Request, next: Next) -> Response {
    if let Some(tokens) = guard(&st, req.uri().path()) {
        match bearer(&req) {
            None => return unauthorized("Authorization required: send Authorization: Bearer <token>"),
            Some(t) if !tokens.accepts(t) => return unauthorized("Invalid token"),
            Some(_) => {}
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_and_file_tokens_rotate_without_restart() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tokens");
        std::fs::write(&file, "# admins\nalpha\n\n  beta  \n").unwrap();
        let t = Tokens::new(&["fixed".into(), " ".into()], Some(&file)).unwrap();
        assert!(!t.is_empty());
        for ok in ["fixed", "alpha", "beta"] {
            assert!(t.accepts(ok.as_bytes()), "{ok}");
        }
        for bad in ["", "alph", "alphaa", "# admins", "Alpha"] {
            assert!(!t.accepts(bad.as_bytes()), "{bad:?}");
        }
        // Rotation: the file changes (a later mtime), the old token stops working at once.
        std::fs::write(&file, "gamma\n").unwrap();
        let later = SystemTime::now() + std::time::Duration::from_secs(2);
        std::fs::File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(later)
            .unwrap();
        assert!(t.accepts(b"gamma"));
        assert!(!t.accepts(b"alpha"));
        // The file vanishes: the last tokens stay (no lock-out while it is being replaced).
        std::fs::remove_file(&file).unwrap();
        assert!(t.accepts(b"gamma"));
    }

    #[test]
    fn a_missing_file_is_an_error_at_start_and_no_token_means_open() {
        let e = Tokens::new(&[], Some(Path::new("/nonexistent/tokens"))).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/tokens"), "{e}");
        assert!(Tokens::new(&[], None).unwrap().is_empty());
        assert!(Tokens::new(&[], Some(Path::new(""))).unwrap().is_empty());
    }
}
