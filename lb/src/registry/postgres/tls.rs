//! TLS to Postgres: libpq's `sslmode` levels on the URL (`disable`, `prefer`, `require`,
//! `verify-ca`, `verify-full`) and `sslrootcert=<PEM file>` for the trusted CAs. tokio-postgres
//! itself knows `disable`, `prefer` and `require`; the two verify levels and the root file are taken
//! off the URL here and become the rustls verifier ([`ferrofn_common::tls_db`]).

use std::path::PathBuf;

use ferrofn_common::tls_db::{DbVerify, database_client_config};
use tokio_postgres_rustls::MakeRustlsConnect;

/// What the URL asks of TLS beyond tokio-postgres' own `sslmode`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgTls {
    /// How much of the server's certificate is checked when TLS is used.
    pub verify: DbVerify,
    /// `sslrootcert`: the trusted CAs.
    pub root: Option<PathBuf>,
}

/// Takes `sslrootcert` and the verify levels off `url`'s query: the URL tokio-postgres can parse
/// (a verify level becomes `sslmode=require`) and the TLS wanted. As libpq: `require` with a root
/// file checks the CA; without one it only encrypts.
pub fn split_url(url: &str) -> Result<(String, PgTls), String> {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, q),
        None => return Ok((url.to_owned(), plain())),
    };
    let mut kept = Vec::new();
    let mut verify = None;
    let mut root = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("sslrootcert", v)) => root = Some(PathBuf::from(percent_decode(v)?)),
            Some(("sslmode", "verify-ca")) => {
                verify = Some(DbVerify::Ca);
                kept.push("sslmode=require");
            }
            Some(("sslmode", "verify-full")) => {
                verify = Some(DbVerify::Full);
                kept.push("sslmode=require");
            }
            _ => kept.push(pair),
        }
    }
    let verify = match (verify, &root) {
        (Some(v), _) => v,
        (None, Some(_)) => DbVerify::Ca,
        (None, None) => DbVerify::Nothing,
    };
    if verify != DbVerify::Nothing && root.is_none() {
        return Err(
            "sslmode=verify-ca and verify-full need sslrootcert=<PEM file of the trusted CAs> \
                    (the LB's images carry no system certificate store)"
                .into(),
        );
    }
    let url = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((url, PgTls { verify, root }))
}

fn plain() -> PgTls {
    PgTls {
        verify: DbVerify::Nothing,
        root: None,
    }
}

fn percent_decode(v: &str) -> Result<String, String> {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = v
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("bad percent-encoding in sslrootcert")?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "sslrootcert is not UTF-8".into())
}

impl PgTls {
    /// The connector every connection of the registry uses (tokio-postgres uses it only when the
    /// URL's `sslmode` asks for TLS).
    pub fn connector(&self) -> Result<MakeRustlsConnect, String> {
        let config = database_client_config(self.verify, self.root.as_deref()).map_err(|e| e.to_string())?;
        Ok(MakeRustlsConnect::new(config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_levels_and_the_root_file_come_off_the_url() {
        let (url, tls) =
            split_url("postgres://u@h/db?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&x=1").unwrap();
        assert_eq!(url, "postgres://u@h/db?sslmode=require&x=1");
        assert_eq!(
            tls,
            PgTls {
                verify: DbVerify::Full,
                root: Some("/etc/ca.pem".into())
            }
        );
        let (url, tls) = split_url("postgres://u@h/db?sslmode=require&sslrootcert=ca.pem").unwrap();
        assert_eq!(
            (url.as_str(), tls.verify),
            ("postgres://u@h/db?sslmode=require", DbVerify::Ca)
        );
        let (url, tls) = split_url("postgres://u@h/db?sslmode=require").unwrap();
        assert_eq!(
            (url.as_str(), tls.verify),
            ("postgres://u@h/db?sslmode=require", DbVerify::Nothing)
        );
        assert_eq!(split_url("postgres://u@h/db").unwrap().1, plain());
        assert!(split_url("postgres://u@h/db?sslmode=verify-ca").is_err());
        assert!(split_url("postgres://u@h/db?sslrootcert=%zz").is_err());
    }
}
