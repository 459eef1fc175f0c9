//! Cluster certificates for ferrofn's mTLS: one CA, a client certificate for the LB and a server
//! certificate per runner, written as PEM files (keys 0600). Backs the `certs` subcommand of both
//! binaries, and gives tests in-memory CAs and leaves.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use time::{Duration, OffsetDateTime};

use crate::tls_files::{CA_CERT_FILE, CA_KEY_FILE, TlsFiles};

/// Common name of the cluster CA this module creates.
pub const CA_COMMON_NAME: &str = "ferrofn cluster CA";
/// Common name of the LB's client certificate.
pub const LB_COMMON_NAME: &str = "ferrofn-lb";

/// Why certificates could not be generated, loaded or written.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot generate a key pair for {subject}: {source}")]
    KeyGen {
        subject: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("cannot sign the certificate for {subject}: {source}")]
    Sign {
        subject: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("invalid subject alternative name {san:?}: {source}")]
    San {
        san: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("invalid runner name {name:?}: use letters, digits, '-', '_' and '.' only")]
    RunnerName { name: String },
    #[error("cannot read existing CA file {path}: {source}")]
    ReadCa {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("existing CA in {cert} / {key} is unusable: {source}")]
    BadCa {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rcgen::Error,
    },
    #[error("{present} exists but {missing} does not; restore it or pass --force to make a new CA")]
    HalfCa { present: PathBuf, missing: PathBuf },
    #[error("cannot create directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("runner name {name:?} is taken by the per-node layout (its `ca` and `lb` directories)")]
    ReservedName { name: String },
    #[error("cannot give {path} to uid {uid} gid {gid}: {source}")]
    Chown {
        path: PathBuf,
        uid: u32,
        gid: u32,
        #[source]
        source: io::Error,
    },
}

/// What a leaf certificate is for (its extended key usage).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeafKind {
    /// TLS server (runners): EKU serverAuth.
    Server,
    /// TLS client (the LB): EKU clientAuth.
    Client,
    /// Both usages, for a node that dials and serves with one certificate.
    ServerAndClient,
}

/// A certificate and its private key, PEM encoded.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_der: CertificateDer<'static>,
}

impl IssuedCert {
    /// Writes the certificate and the key (0600). Each file is replaced atomically (write to a
    /// temporary name, then rename), so a reloading reader never sees half a file.
    pub fn write(&self, cert_path: &Path, key_path: &Path) -> Result<(), CertError> {
        write_file(key_path, self.key_pem.as_bytes(), 0o600)?;
        write_file(cert_path, self.cert_pem.as_bytes(), 0o644)
    }
}

/// A certificate authority that can issue leaves: freshly generated, or loaded from PEM.
pub struct CertAuthority {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    cert_der: CertificateDer<'static>,
}

impl std::fmt::Debug for CertAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertAuthority").finish_non_exhaustive()
    }
}

impl CertAuthority {
    /// A new self-signed CA named `common_name`, valid for `days`.
    pub fn generate(common_name: &str, days: u32) -> Result<Self, CertError> {
        let key = KeyPair::generate().map_err(|source| CertError::KeyGen {
            subject: common_name.to_owned(),
            source,
        })?;
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity_and_serial(&mut params, days);
        let cert = params.self_signed(&key).map_err(|source| CertError::Sign {
            subject: common_name.to_owned(),
            source,
        })?;
        Ok(Self {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads a CA from its certificate and key PEM (e.g. `ca.pem` / `ca-key.pem`).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, rcgen::Error> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        let cert_der = rustls_pki_types::pem::PemObject::from_pem_slice(cert_pem.as_bytes())
            .map_err(|_| rcgen::Error::CouldNotParseCertificate)?;
        Ok(Self {
            issuer,
            cert_pem: cert_pem.to_owned(),
            cert_der,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// Issues a leaf; see [`generate_leaf`].
    pub fn issue(
        &self,
        common_name: &str,
        sans: &[String],
        kind: LeafKind,
        days: u32,
    ) -> Result<IssuedCert, CertError> {
        generate_leaf(self, common_name, sans, kind, days)
    }
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "ferrofn");
    dn.push(DnType::CommonName, common_name);
    dn
}

fn set_validity_and_serial(params: &mut CertificateParams, days: u32) {
    let now = OffsetDateTime::now_utc();
    // Backdated a little so that a peer whose clock is slightly behind still accepts it.
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(i64::from(days));
    let mut serial: [u8; 16] = rand::random();
    serial[0] &= 0x7f; // positive, so it encodes in 16 bytes
    params.serial_number = Some(SerialNumber::from(serial.to_vec()));
}

/// Issues a leaf certificate signed by `ca` with a new key: subject CN `common_name`, the given
/// SANs (DNS names, or IP addresses written as text), EKU by `kind`, valid for `days`.
pub fn generate_leaf(
    ca: &CertAuthority,
    common_name: &str,
    sans: &[String],
    kind: LeafKind,
    days: u32,
) -> Result<IssuedCert, CertError> {
    let key = KeyPair::generate().map_err(|source| CertError::KeyGen {
        subject: common_name.to_owned(),
        source,
    })?;
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(common_name);
    params.subject_alt_names = sans.iter().map(|san| san_type(san)).collect::<Result<_, _>>()?;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = match kind {
        LeafKind::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
        LeafKind::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
        LeafKind::ServerAndClient => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
    };
    params.use_authority_key_identifier_extension = true;
    set_validity_and_serial(&mut params, days);
    let cert = params
        .signed_by(&key, &ca.issuer)
        .map_err(|source| CertError::Sign {
            subject: common_name.to_owned(),
            source,
        })?;
    Ok(IssuedCert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        cert_der: cert.der().clone(),
    })
}

fn san_type(san: &str) -> Result<SanType, CertError> {
    if let Ok(ip) = san.parse::<std::net::IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let name = san.to_owned().try_into().map_err(|source| CertError::San {
        san: san.to_owned(),
        source,
    })?;
    Ok(SanType::DnsName(name))
}

/// The CA's directory in the per-node layout.
pub const PER_NODE_CA_DIR: &str = "ca";
/// The LB's directory in the per-node layout.
pub const PER_NODE_LB_DIR: &str = "lb";

/// What [`generate_cluster`] makes.
#[derive(Debug, Clone)]
pub struct ClusterCertOptions {
    /// One server certificate per name (`runner-<name>.pem`), with SANs name, `localhost`,
    /// `127.0.0.1` and `extra_sans`.
    pub runner_names: Vec<String>,
    /// More SANs for every runner certificate (DNS names or IPs).
    pub extra_sans: Vec<String>,
    /// Make a new CA even if `ca.pem` / `ca-key.pem` exist (every existing leaf then stops being
    /// trusted).
    pub force: bool,
    /// Validity of the LB and runner certificates.
    pub leaf_days: u32,
    /// Validity of a new CA.
    pub ca_days: u32,
    /// One directory per node, so that each can be handed to its node alone: `ca/` (the CA's
    /// certificate and key: for the issuer only), `lb/` (`ca.pem` and the LB's pair) and
    /// `<runner name>/` (`ca.pem` and that runner's pair). Off: every file in `out` itself.
    pub per_node: bool,
    /// Give the files written to this uid and gid (a job running as root that issues the files
    /// for nodes running as another user); in the per-node layout the CA's files stay the issuer's.
    pub owner: Option<(u32, u32)>,
}

impl Default for ClusterCertOptions {
    fn default() -> Self {
        Self {
            runner_names: Vec::new(),
            extra_sans: Vec::new(),
            force: false,
            leaf_days: 365,
            ca_days: 3650,
            per_node: false,
            owner: None,
        }
    }
}

/// What [`generate_cluster`] wrote.
#[derive(Debug, Clone)]
pub struct ClusterCerts {
    pub dir: PathBuf,
    /// Where the CA's files are (`dir`, or `dir/ca` in the per-node layout).
    pub ca_dir: PathBuf,
    /// False when an existing CA was reused.
    pub ca_created: bool,
    pub lb: TlsFiles,
    /// `(name, files)` per runner, in the order given.
    pub runners: Vec<(String, TlsFiles)>,
    /// Every file written, in order.
    pub written: Vec<PathBuf>,
}

/// Writes the cluster's certificates into `out` (created if needed): the CA (kept if `ca.pem` and
/// `ca-key.pem` exist, unless `force`), the LB's client certificate and one server certificate per
/// runner. LB and runner certificates are always issued anew; files of other runners are untouched.
pub fn generate_cluster(out: &Path, opts: &ClusterCertOptions) -> Result<ClusterCerts, CertError> {
    for name in &opts.runner_names {
        let ok = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && !name.starts_with('.');
        if !ok {
            return Err(CertError::RunnerName { name: name.clone() });
        }
    }
    if opts.per_node
        && let Some(name) = opts
            .runner_names
            .iter()
            .find(|n| [PER_NODE_CA_DIR, PER_NODE_LB_DIR].contains(&n.as_str()))
    {
        return Err(CertError::ReservedName { name: name.clone() });
    }
    let dir_of = |node: &str| {
        if opts.per_node {
            out.join(node)
        } else {
            out.to_owned()
        }
    };
    let mut dirs = vec![out.to_owned()];
    if opts.per_node {
        dirs.extend(
            [PER_NODE_CA_DIR, PER_NODE_LB_DIR]
                .into_iter()
                .chain(opts.runner_names.iter().map(String::as_str))
                .map(|n| out.join(n)),
        );
    }
    for dir in &dirs {
        fs::create_dir_all(dir).map_err(|source| CertError::CreateDir {
            path: dir.clone(),
            source,
        })?;
    }
    let ca_dir = dir_of(PER_NODE_CA_DIR);
    let ca_cert = ca_dir.join(CA_CERT_FILE);
    let ca_key = ca_dir.join(CA_KEY_FILE);
    let mut written = Vec::new();

    let existing = match (ca_cert.exists(), ca_key.exists()) {
        _ if opts.force => None,
        (true, true) => Some(load_ca(&ca_cert, &ca_key)?),
        (false, false) => None,
        (true, false) => {
            return Err(CertError::HalfCa {
                present: ca_cert,
                missing: ca_key,
            });
        }
        (false, true) => {
            return Err(CertError::HalfCa {
                present: ca_key,
                missing: ca_cert,
            });
        }
    };
    let ca_created = existing.is_none();
    let ca = match existing {
        Some(ca) => ca,
        None => {
            let ca = CertAuthority::generate(CA_COMMON_NAME, opts.ca_days)?;
            write_file(&ca_key, ca.key_pem().as_bytes(), 0o600)?;
            write_file(&ca_cert, ca.cert_pem().as_bytes(), 0o644)?;
            written.extend([ca_cert.clone(), ca_key.clone()]);
            ca
        }
    };

    // Each node's directory has its own copy of the CA's certificate (never of its key).
    let mut ca_copy = |dir: &Path| -> Result<(), CertError> {
        if opts.per_node {
            let path = dir.join(CA_CERT_FILE);
            write_file(&path, ca.cert_pem().as_bytes(), 0o644)?;
            written.push(path);
        }
        Ok(())
    };
    let lb_dir = dir_of(PER_NODE_LB_DIR);
    ca_copy(&lb_dir)?;
    let mut runner_dirs = Vec::new();
    for name in &opts.runner_names {
        let dir = dir_of(name);
        ca_copy(&dir)?;
        runner_dirs.push(dir);
    }

    let lb = TlsFiles::lb_in(&lb_dir);
    ca.issue(
        LB_COMMON_NAME,
        &[LB_COMMON_NAME.to_owned()],
        LeafKind::Client,
        opts.leaf_days,
    )?
    .write(&lb.cert, &lb.key)?;
    written.extend([lb.cert.clone(), lb.key.clone()]);

    let mut runners = Vec::new();
    for (name, dir) in opts.runner_names.iter().zip(&runner_dirs) {
        let mut sans = vec![name.clone(), "localhost".to_owned(), "127.0.0.1".to_owned()];
        for san in &opts.extra_sans {
            if !sans.contains(san) {
                sans.push(san.clone());
            }
        }
        let files = TlsFiles::runner_in(dir, name);
        ca.issue(
            &format!("ferrofn-runner-{name}"),
            &sans,
            LeafKind::Server,
            opts.leaf_days,
        )?
        .write(&files.cert, &files.key)?;
        written.extend([files.cert.clone(), files.key.clone()]);
        runners.push((name.clone(), files));
    }

    if let Some((uid, gid)) = opts.owner {
        // The files only: directories stay with the issuer, who can then write them again without
        // any privilege but CAP_CHOWN; so do the CA's own files in the per-node layout.
        let for_nodes = written
            .iter()
            .filter(|p| !(opts.per_node && p.starts_with(&ca_dir)));
        for path in for_nodes {
            std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(|source| CertError::Chown {
                path: path.clone(),
                uid,
                gid,
                source,
            })?;
        }
    }

    Ok(ClusterCerts {
        dir: out.to_owned(),
        ca_dir,
        ca_created,
        lb,
        runners,
        written,
    })
}

fn load_ca(cert: &Path, key: &Path) -> Result<CertAuthority, CertError> {
    let read = |path: &Path| {
        fs::read_to_string(path).map_err(|source| CertError::ReadCa {
            path: path.to_owned(),
            source,
        })
    };
    CertAuthority::from_pem(&read(cert)?, &read(key)?).map_err(|source| CertError::BadCa {
        cert: cert.to_owned(),
        key: key.to_owned(),
        source,
    })
}

/// Replaces `path` atomically with `data`, created with `mode` (so a key is never readable by
/// others, not even briefly).
fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), CertError> {
    let err = |source| CertError::Write {
        path: path.to_owned(),
        source,
    };
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        // `mode` is filtered by the umask and ignored for an existing file: set it explicitly.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(err)
}

/// `certs` subcommand of `ferrofn-lb` and `ferrofn-runner`.
#[derive(Debug, Clone, clap::Args)]
pub struct CertsArgs {
    /// Directory to write the PEM files into (created if missing).
    #[arg(long, value_name = "DIR", default_value = "certs")]
    pub out: PathBuf,
    /// Runner names, one server certificate each (comma-separated or repeated).
    #[arg(long, value_name = "NAMES", value_delimiter = ',')]
    pub runner_names: Vec<String>,
    /// Extra subject alternative names (DNS names or IPs) for every runner certificate.
    #[arg(long = "san", value_name = "SAN", value_delimiter = ',')]
    pub sans: Vec<String>,
    /// Make a new CA even if one exists in DIR (certificates from the old CA stop being trusted).
    #[arg(long)]
    pub force: bool,
    /// Validity of the LB and runner certificates, in days.
    #[arg(long, value_name = "DAYS", default_value_t = 365)]
    pub days: u32,
    /// One directory per node: DIR/ca (the CA, for this command only), DIR/lb and DIR/<runner>
    /// (each with ca.pem and that node's pair), so each node can be given its own files alone.
    #[arg(long)]
    pub per_node: bool,
    /// Give what is written to UID:GID (when issuing as root for nodes running as another user).
    #[arg(long, value_name = "UID:GID", value_parser = parse_owner)]
    pub owner: Option<(u32, u32)>,
}

fn parse_owner(s: &str) -> Result<(u32, u32), String> {
    let bad = || format!("{s:?} is not UID:GID (two numbers)");
    let (u, g) = s.split_once(':').ok_or_else(bad)?;
    Ok((u.parse().map_err(|_| bad())?, g.parse().map_err(|_| bad())?))
}

/// Runs the `certs` subcommand and prints what it wrote.
pub fn run_certs(args: &CertsArgs) -> anyhow::Result<()> {
    let opts = ClusterCertOptions {
        runner_names: args.runner_names.clone(),
        extra_sans: args.sans.clone(),
        force: args.force,
        leaf_days: args.days,
        per_node: args.per_node,
        owner: args.owner,
        ..Default::default()
    };
    let certs = generate_cluster(&args.out, &opts)?;
    if certs.ca_created {
        println!("created a new CA in {}", certs.ca_dir.display());
    } else {
        println!(
            "reused the existing CA {}",
            certs.ca_dir.join(CA_CERT_FILE).display()
        );
    }
    for path in &certs.written {
        println!("wrote {}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls_files::runner_cert_file;
    use rustls::client::danger::ServerCertVerifier;
    use std::os::unix::fs::MetadataExt;

    /// The files under `dir`, relative, sorted.
    fn tree(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        for e in fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            if e.file_type().unwrap().is_dir() {
                out.extend(tree(&e.path()).into_iter().map(|f| format!("{name}/{f}")));
            } else {
                out.push(name);
            }
        }
        out.sort();
        out
    }

    #[test]
    fn per_node_layout_gives_each_node_its_own_files_only() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("certs");
        let me = (
            fs::metadata(dir.path()).unwrap().uid(),
            fs::metadata(dir.path()).unwrap().gid(),
        );
        let opts = ClusterCertOptions {
            runner_names: vec!["r1".into(), "r2".into()],
            per_node: true,
            owner: Some(me),
            ..Default::default()
        };
        let made = generate_cluster(&out, &opts).unwrap();
        assert_eq!(
            tree(&out),
            [
                "ca/ca-key.pem",
                "ca/ca.pem",
                "lb/ca.pem",
                "lb/lb-key.pem",
                "lb/lb.pem",
                "r1/ca.pem",
                "r1/runner-r1-key.pem",
                "r1/runner-r1.pem",
                "r2/ca.pem",
                "r2/runner-r2-key.pem",
                "r2/runner-r2.pem",
            ]
        );
        assert_eq!(made.lb, TlsFiles::lb_in(&out.join("lb")));
        assert_eq!(made.runners[1].1, TlsFiles::runner_in(&out.join("r2"), "r2"));
        let ca = fs::read(out.join("ca/ca.pem")).unwrap();
        for node in ["lb", "r1", "r2"] {
            assert_eq!(
                fs::read(out.join(node).join("ca.pem")).unwrap(),
                ca,
                "{node}'s CA copy"
            );
        }
        for f in ["ca/ca-key.pem", "lb/lb-key.pem", "r1/runner-r1-key.pem"] {
            let m = fs::metadata(out.join(f)).unwrap();
            assert_eq!(m.permissions().mode() & 0o777, 0o600, "{f}");
            assert_eq!((m.uid(), m.gid()), me, "{f} owner");
        }
        // A second run keeps the CA (now in ca/) and re-issues the leaves from it.
        let again = generate_cluster(&out, &opts).unwrap();
        assert!(!again.ca_created);
        assert_eq!(fs::read(out.join("r1/ca.pem")).unwrap(), ca);
        // The layout's own directory names cannot be runner names.
        let clash = ClusterCertOptions {
            runner_names: vec!["lb".into()],
            per_node: true,
            ..Default::default()
        };
        assert!(matches!(
            generate_cluster(&out, &clash),
            Err(CertError::ReservedName { .. })
        ));
    }

    #[test]
    fn owner_flag_parses_uid_and_gid() {
        assert_eq!(parse_owner("65532:65532"), Ok((65532, 65532)));
        assert!(parse_owner("65532").is_err());
        assert!(parse_owner("a:1").is_err());
    }

    #[test]
    fn cluster_files_keys_0600_and_ca_reused() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("certs");
        let opts = ClusterCertOptions {
            runner_names: vec!["a".into(), "b".into()],
            extra_sans: vec!["runner.example".into(), "10.1.2.3".into()],
            ..Default::default()
        };
        let first = generate_cluster(&out, &opts).unwrap();
        assert!(first.ca_created);
        for f in [
            "ca.pem",
            "ca-key.pem",
            "lb.pem",
            "lb-key.pem",
            "runner-a.pem",
            "runner-a-key.pem",
            "runner-b.pem",
            "runner-b-key.pem",
        ] {
            assert!(out.join(f).is_file(), "{f} missing");
        }
        for key in ["ca-key.pem", "lb-key.pem", "runner-a-key.pem"] {
            let mode = fs::metadata(out.join(key)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{key}");
        }
        let ca_before = fs::read(out.join("ca.pem")).unwrap();

        let again = ClusterCertOptions {
            runner_names: vec!["c".into()],
            ..Default::default()
        };
        let second = generate_cluster(&out, &again).unwrap();
        assert!(!second.ca_created);
        assert_eq!(fs::read(out.join("ca.pem")).unwrap(), ca_before);
        assert!(out.join("runner-c.pem").is_file());

        let forced = ClusterCertOptions { force: true, ..again };
        assert!(generate_cluster(&out, &forced).unwrap().ca_created);
        assert_ne!(fs::read(out.join("ca.pem")).unwrap(), ca_before);
    }

    #[test]
    fn leaves_from_a_reloaded_ca_verify_against_it() {
        // The chain check uses webpki through rustls, the same code the nodes run.
        let dir = tempfile::tempdir().unwrap();
        let opts = ClusterCertOptions {
            runner_names: vec!["a".into()],
            ..Default::default()
        };
        generate_cluster(dir.path(), &opts).unwrap();
        // Second run reuses the CA loaded from disk, so this leaf is signed by the loaded issuer.
        generate_cluster(dir.path(), &opts).unwrap();
        let ca = CertAuthority::from_pem(
            &fs::read_to_string(dir.path().join(CA_CERT_FILE)).unwrap(),
            &fs::read_to_string(dir.path().join(CA_KEY_FILE)).unwrap(),
        )
        .unwrap();
        let leaf_pem = fs::read(dir.path().join(runner_cert_file("a"))).unwrap();
        let leaf: CertificateDer<'static> =
            rustls_pki_types::pem::PemObject::from_pem_slice(&leaf_pem).unwrap();

        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.cert_der().clone()).unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            std::sync::Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        let now = rustls_pki_types::UnixTime::now();
        for name in ["a", "localhost", "127.0.0.1"] {
            let name = rustls_pki_types::ServerName::try_from(name).unwrap();
            verifier
                .verify_server_cert(&leaf, &[], &name, &[], now)
                .unwrap_or_else(|e| panic!("{name:?}: {e}"));
        }
        let other = rustls_pki_types::ServerName::try_from("b").unwrap();
        assert!(verifier.verify_server_cert(&leaf, &[], &other, &[], now).is_err());

        // A leaf from an unrelated CA does not verify.
        let stranger = CertAuthority::generate("other CA", 1).unwrap();
        let foreign = stranger.issue("a", &["a".into()], LeafKind::Server, 1).unwrap();
        let name = rustls_pki_types::ServerName::try_from("a").unwrap();
        assert!(
            verifier
                .verify_server_cert(&foreign.cert_der, &[], &name, &[], now)
                .is_err()
        );
    }

    #[test]
    fn rejects_bad_names_and_half_cas() {
        let dir = tempfile::tempdir().unwrap();
        let bad = ClusterCertOptions {
            runner_names: vec!["../x".into()],
            ..Default::default()
        };
        assert!(matches!(
            generate_cluster(dir.path(), &bad),
            Err(CertError::RunnerName { .. })
        ));
        fs::write(dir.path().join(CA_CERT_FILE), "x").unwrap();
        let e = generate_cluster(dir.path(), &ClusterCertOptions::default()).unwrap_err();
        assert!(matches!(e, CertError::HalfCa { .. }), "{e}");
    }
}
