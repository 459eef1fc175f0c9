//! Where a node's PEM files are: the three files one node loads (the cluster CA, its certificate
//! chain, its key) and the names `ferrofn-* certs` gives them in a directory. [`certs`](crate::certs)
//! writes these files and [`tls`](crate::tls) reads them; both use this module, neither the other.

use std::path::{Path, PathBuf};

/// The cluster CA's certificate.
pub const CA_CERT_FILE: &str = "ca.pem";
/// The cluster CA's private key (only the `certs` subcommand reads it).
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// The LB's client certificate.
pub const LB_CERT_FILE: &str = "lb.pem";
/// The LB's private key.
pub const LB_KEY_FILE: &str = "lb-key.pem";

/// `runner-<name>.pem`
pub fn runner_cert_file(name: &str) -> String {
    format!("runner-{name}.pem")
}

/// `runner-<name>-key.pem`
pub fn runner_key_file(name: &str) -> String {
    format!("runner-{name}-key.pem")
}

/// The PEM files of one node: the cluster CA (trust anchor for the peer), this node's certificate
/// chain (leaf first) and its private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    pub fn new(ca: impl Into<PathBuf>, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        Self {
            ca: ca.into(),
            cert: cert.into(),
            key: key.into(),
        }
    }

    /// The runner `name`'s files as `ferrofn-* certs` writes them in `dir`.
    pub fn runner_in(dir: &Path, name: &str) -> Self {
        Self::new(
            dir.join(CA_CERT_FILE),
            dir.join(runner_cert_file(name)),
            dir.join(runner_key_file(name)),
        )
    }

    /// The LB's (client) files as `ferrofn-* certs` writes them in `dir`.
    pub fn lb_in(dir: &Path) -> Self {
        Self::new(
            dir.join(CA_CERT_FILE),
            dir.join(LB_CERT_FILE),
            dir.join(LB_KEY_FILE),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_files_are_named_as_the_certs_subcommand_writes_them() {
        let dir = Path::new("/etc/ferrofn/certs");
        assert_eq!(
            TlsFiles::runner_in(dir, "r1"),
            TlsFiles::new(
                "/etc/ferrofn/certs/ca.pem",
                "/etc/ferrofn/certs/runner-r1.pem",
                "/etc/ferrofn/certs/runner-r1-key.pem"
            )
        );
        assert_eq!(
            TlsFiles::lb_in(dir),
            TlsFiles::new(
                "/etc/ferrofn/certs/ca.pem",
                "/etc/ferrofn/certs/lb.pem",
                "/etc/ferrofn/certs/lb-key.pem"
            )
        );
    }
}
