//! Function images for tests and the demo (`ferrofn/{testfn,hello,status}:latest`): `FROM scratch`
//! images built on the local engine from the workspace's static binaries. An image is rebuilt only
//! when it is missing or its `ferrofn.binary-sha256` label no longer matches the binary, so stale
//! images never serve a test and concurrent test binaries do not rebuild needlessly.

use anyhow::{Context, Result, bail};
use bollard::{
    Docker, body_full,
    query_parameters::{BuildImageOptionsBuilder, ListImagesOptionsBuilder, RemoveImageOptions},
};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use std::{
    collections::{BTreeSet, HashMap},
    fmt,
    path::{Path, PathBuf},
    str::FromStr,
    sync::{Arc, LazyLock, Mutex},
    time::SystemTime,
};
use tokio::sync::OnceCell;

/// The tag of every image this checkout builds (function images and the LB / runner images of the
/// compose tests): `FERROFN_IMAGE_TAG` when set (`make images`, `make demo` and `make bench` set
/// `latest`), otherwise `co-<8 hex digits>` from a hash of this checkout's path. Two checkouts
/// sharing one Docker engine then never run each other's binaries.
pub fn image_tag() -> &'static str {
    static TAG: LazyLock<String> = LazyLock::new(|| match std::env::var("FERROFN_IMAGE_TAG") {
        Ok(t) if !t.trim().is_empty() => t.trim().to_owned(),
        _ => checkout_tag(&workspace_root()),
    });
    TAG.as_str()
}

/// `co-` and the first 8 hex digits of the SHA-256 of the checkout's path.
pub fn checkout_tag(root: &Path) -> String {
    let digest = Sha256::digest(root.as_os_str().as_encoded_bytes());
    let hex: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
    format!("co-{hex}")
}

/// The knob-driven test function (`tests/functions/testfn`), tagged [`image_tag`].
pub static TESTFN_IMAGE: LazyLock<String> = LazyLock::new(|| format!("ferrofn/testfn:{}", image_tag()));
/// The demo function (`tests/functions/hello`).
pub static HELLO_IMAGE: LazyLock<String> = LazyLock::new(|| format!("ferrofn/hello:{}", image_tag()));
/// The status-checker function (`tests/functions/status`).
pub static STATUS_IMAGE: LazyLock<String> = LazyLock::new(|| format!("ferrofn/status:{}", image_tag()));

/// SHA-256 (hex) of the image's entrypoint binary.
pub const BINARY_SHA_LABEL: &str = "ferrofn.binary-sha256";
/// SHA-256 (hex) of the whole build context (binary, extra files, Dockerfile).
pub const CONTEXT_SHA_LABEL: &str = "ferrofn.context-sha256";
/// Marks images built here, so that only those are ever removed when superseded.
pub const BUILT_BY_LABEL: &str = "ferrofn.built-by";
const BUILT_BY: &str = "ferrofn-tests";

/// The Rust target every workspace binary is built for (see `.cargo/config.toml`).
pub const TARGET_TRIPLE: &str = "x86_64-unknown-linux-gnu";

/// One of the function images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FnImage {
    Testfn,
    Hello,
    Status,
}

impl FnImage {
    /// Every function image.
    pub const ALL: [FnImage; 3] = [FnImage::Testfn, FnImage::Hello, FnImage::Status];

    /// Short name: the crate folder under `tests/functions/`.
    pub fn name(self) -> &'static str {
        match self {
            FnImage::Testfn => "testfn",
            FnImage::Hello => "hello",
            FnImage::Status => "status",
        }
    }

    /// The image tag.
    pub fn tag(self) -> &'static str {
        match self {
            FnImage::Testfn => TESTFN_IMAGE.as_str(),
            FnImage::Hello => HELLO_IMAGE.as_str(),
            FnImage::Status => STATUS_IMAGE.as_str(),
        }
    }

    /// Cargo package (and binary) name: `ferrofn-fn-<name>`.
    pub fn package(self) -> String {
        format!("ferrofn-fn-{}", self.name())
    }

    /// Sources whose changes make the binary stale: the function crate and the shared FDK.
    fn source_dirs(self) -> [PathBuf; 2] {
        let functions = workspace_root().join("tests").join("functions");
        [functions.join(self.name()), functions.join("fdk")]
    }
}

impl fmt::Display for FnImage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for FnImage {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        FnImage::ALL
            .into_iter()
            .find(|i| i.name() == s)
            .with_context(|| format!("unknown function image {s:?} (expected testfn, hello or status)"))
    }
}

/// A file added to a scratch image next to its binary.
#[derive(Debug, Clone)]
pub struct ExtraFile {
    /// Absolute path inside the image, e.g. `/etc/ferrofn/runner.toml`.
    pub path: String,
    /// File contents.
    pub contents: Vec<u8>,
    /// Permission bits, e.g. `0o644`.
    pub mode: u32,
}

/// An image known to be present and current.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    /// The tag.
    pub tag: String,
    /// The image id (`sha256:...`).
    pub id: String,
    /// Size in bytes as reported by the engine.
    pub size: i64,
    /// Whether this call (re)built it, as opposed to finding it current.
    pub rebuilt: bool,
}

/// Receives build progress lines (the builder's output).
pub type Progress<'a> = &'a (dyn Fn(&str) + Send + Sync);

/// The workspace root (the parent of this crate's manifest directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// Cargo's target directory: `CARGO_TARGET_DIR` (relative to the workspace root if relative),
/// else `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => workspace_root().join(dir),
        _ => workspace_root().join("target"),
    }
}

/// Where `cargo build` puts the debug binary `name`.
pub fn binary_path(name: &str) -> PathBuf {
    target_dir().join(TARGET_TRIPLE).join("debug").join(name)
}

/// The newest modification time of any file under `dir`.
fn newest_mtime(dir: &Path) -> Option<SystemTime> {
    let mut newest = None;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                pending.push(entry.path());
            } else if let Ok(mtime) = meta.modified() {
                newest = newest.max(Some(mtime));
            }
        }
    }
    newest
}

/// Returns the path of `package`'s binary, running `cargo build -p <package>` first when the binary
/// is missing or older than any file under `sources`.
pub async fn ensure_binary(package: &str, sources: &[PathBuf]) -> Result<PathBuf> {
    let path = binary_path(package);
    let built = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
    let newest_source = sources.iter().filter_map(|dir| newest_mtime(dir)).max();
    let stale = match (built, newest_source) {
        (None, _) => true,
        (Some(built), Some(source)) => source > built,
        (Some(_), None) => false,
    };
    if !stale {
        return Ok(path);
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    tracing::info!(package, "building function binary");
    let output = tokio::process::Command::new(&cargo)
        .args(["build", "-p", package])
        .current_dir(workspace_root())
        .output()
        .await
        .with_context(|| format!("running `cargo build -p {package}`"))?;
    if !output.status.success() {
        bail!(
            "`cargo build -p {package}` failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    if !path.exists() {
        bail!(
            "`cargo build -p {package}` succeeded but {} does not exist",
            path.display()
        );
    }
    Ok(path)
}

fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// A tar build context: `Dockerfile` plus `rootfs/` (binary at `/<name>`, a world-writable `/tmp`,
/// the extra files). Timestamps and owners are fixed so equal inputs give equal bytes.
fn build_context(binary_name: &str, binary: &[u8], extra_files: &[ExtraFile]) -> Result<Vec<u8>> {
    let dockerfile = format!("FROM scratch\nCOPY rootfs/ /\nENTRYPOINT [\"/{binary_name}\"]\n");
    let mut dirs = BTreeSet::from(["rootfs/".to_owned()]);
    let mut files: Vec<(String, &[u8], u32)> = vec![
        ("Dockerfile".to_owned(), dockerfile.as_bytes(), 0o644),
        (format!("rootfs/{binary_name}"), binary, 0o755),
    ];
    for extra in extra_files {
        let relative = extra.path.trim_start_matches('/');
        if relative.is_empty() || relative.split('/').any(|c| c == ".." || c.is_empty()) {
            bail!("extra file path {:?} is not a clean absolute path", extra.path);
        }
        let mut parent = Path::new(relative).parent();
        while let Some(dir) = parent.filter(|d| !d.as_os_str().is_empty()) {
            dirs.insert(format!("rootfs/{}/", dir.display()));
            parent = dir.parent();
        }
        files.push((format!("rootfs/{relative}"), &extra.contents, extra.mode));
    }

    let mut tar = tar::Builder::new(Vec::new());
    let header = |kind: tar::EntryType, size: u64, mode: u32| {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_size(size);
        header.set_mode(mode);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        header
    };
    for dir in &dirs {
        let mut h = header(tar::EntryType::Directory, 0, 0o755);
        tar.append_data(&mut h, dir, std::io::empty())?;
    }
    // /tmp exists even without a tmpfs mount (sticky, world-writable like on any system).
    let mut h = header(tar::EntryType::Directory, 0, 0o1777);
    tar.append_data(&mut h, "rootfs/tmp/", std::io::empty())?;
    for (path, contents, mode) in files {
        let mut h = header(tar::EntryType::Regular, contents.len() as u64, mode);
        tar.append_data(&mut h, &path, contents)?;
    }
    Ok(tar.into_inner()?)
}

async fn build_from_context(
    docker: &Docker,
    tag: &str,
    context: Vec<u8>,
    labels: &HashMap<String, String>,
    progress: Option<Progress<'_>>,
) -> Result<String> {
    let options = BuildImageOptionsBuilder::default()
        .dockerfile("Dockerfile")
        .t(tag)
        .rm(true)
        .forcerm(true)
        .labels(labels)
        .build();
    let mut stream = docker.build_image(options, None, Some(body_full(context.into())));
    while let Some(item) = stream.next().await {
        let item = item.with_context(|| format!("building image {tag}"))?;
        if let Some(detail) = item.error_detail {
            bail!(
                "building image {tag} failed: {}",
                detail.message.unwrap_or_else(|| "unknown error".to_owned())
            );
        }
        if let Some(line) = item
            .stream
            .as_deref()
            .map(str::trim_end)
            .filter(|l| !l.is_empty())
        {
            tracing::debug!(tag, "{line}");
            if let Some(progress) = progress {
                progress(line);
            }
        }
    }
    let image = docker
        .inspect_image(tag)
        .await
        .with_context(|| format!("inspecting image {tag} after building it"))?;
    image
        .id
        .with_context(|| format!("image {tag} has no id after building it"))
}

fn read_binary(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading image binary {}", path.display()))
}

fn binary_name(path: &Path) -> Result<String> {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .with_context(|| format!("{} has no file name", path.display()))
}

fn all_labels(
    labels: &HashMap<String, String>,
    binary_sha: String,
    context_sha: String,
) -> HashMap<String, String> {
    let mut all = labels.clone();
    all.insert(BINARY_SHA_LABEL.to_owned(), binary_sha);
    all.insert(CONTEXT_SHA_LABEL.to_owned(), context_sha);
    all.insert(BUILT_BY_LABEL.to_owned(), BUILT_BY.to_owned());
    all
}

/// Builds `tag` from scratch: the static binary at `/<file name>` as ENTRYPOINT, a `/tmp`, the
/// extra files and `labels` (plus the hash labels). Always builds; returns the image id.
/// The LB and runner images of the cluster tests are built with this too.
pub async fn build_scratch_image(
    docker: &Docker,
    tag: &str,
    binary_path: &Path,
    extra_files: &[ExtraFile],
    labels: &HashMap<String, String>,
) -> Result<String> {
    let binary = read_binary(binary_path)?;
    let context = build_context(&binary_name(binary_path)?, &binary, extra_files)?;
    let labels = all_labels(labels, sha256_hex(&binary), sha256_hex(&context));
    let id = build_from_context(docker, tag, context, &labels, None).await?;
    remove_superseded(docker, tag).await;
    Ok(id)
}

/// Removes untagged images built here (the ones a rebuild superseded). Removal is not forced: an
/// image still used by a container (e.g. a runner test's hot container) stays until a later sweep.
async fn remove_superseded(docker: &Docker, tag: &str) {
    let built_by = format!("{BUILT_BY_LABEL}={BUILT_BY}");
    let filters = HashMap::from([("dangling", vec!["true"]), ("label", vec![built_by.as_str()])]);
    let options = ListImagesOptionsBuilder::default().filters(&filters).build();
    let superseded = match docker.list_images(Some(options)).await {
        Ok(images) => images,
        Err(e) => {
            tracing::debug!(tag, error = %e, "listing superseded images failed");
            return;
        }
    };
    for image in superseded {
        if let Err(e) = docker
            .remove_image(&image.id, None::<RemoveImageOptions>, None)
            .await
        {
            tracing::debug!(tag, image = image.id, error = %e, "superseded image not removed");
        }
    }
}

/// Serialises image builds across processes (concurrent test binaries) with a lock file per tag.
async fn lock_tag(tag: &str) -> Result<std::fs::File> {
    let dir = target_dir().join("ferrofn-images");
    let name: String = tag
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let path = dir.join(format!("{name}.lock"));
    tokio::task::spawn_blocking(move || -> Result<std::fs::File> {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening lock file {}", path.display()))?;
        file.lock()
            .with_context(|| format!("locking {}", path.display()))?;
        Ok(file)
    })
    .await
    .context("lock task panicked")?
}

/// Like [`build_scratch_image`], but keeps an existing `tag` whose hash labels match the binary and
/// context, so repeated calls cost one inspect. After a rebuild, superseded images built here are
/// removed (those no container still uses).
pub async fn ensure_scratch_image(
    docker: &Docker,
    tag: &str,
    binary_path: &Path,
    extra_files: &[ExtraFile],
    labels: &HashMap<String, String>,
) -> Result<BuiltImage> {
    ensure_scratch_image_with(docker, tag, binary_path, extra_files, labels, false, None).await
}

async fn ensure_scratch_image_with(
    docker: &Docker,
    tag: &str,
    binary_path: &Path,
    extra_files: &[ExtraFile],
    labels: &HashMap<String, String>,
    force: bool,
    progress: Option<Progress<'_>>,
) -> Result<BuiltImage> {
    let binary = read_binary(binary_path)?;
    let context = build_context(&binary_name(binary_path)?, &binary, extra_files)?;
    let labels = all_labels(labels, sha256_hex(&binary), sha256_hex(&context));
    let _lock = lock_tag(tag).await?;

    let existing = match docker.inspect_image(tag).await {
        Ok(image) => Some(image),
        Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => None,
        Err(e) => return Err(e).with_context(|| format!("inspecting image {tag}")),
    };
    let existing_labels = existing
        .as_ref()
        .and_then(|i| i.config.as_ref())
        .and_then(|c| c.labels.clone())
        .unwrap_or_default();
    let current = [BINARY_SHA_LABEL, CONTEXT_SHA_LABEL]
        .iter()
        .all(|key| existing_labels.get(*key) == labels.get(*key));
    if let Some(image) = existing.as_ref().filter(|_| current && !force) {
        return Ok(BuiltImage {
            tag: tag.to_owned(),
            id: image.id.clone().unwrap_or_default(),
            size: image.size.unwrap_or_default(),
            rebuilt: false,
        });
    }

    let id = build_from_context(docker, tag, context, &labels, progress).await?;
    remove_superseded(docker, tag).await;
    let size = docker
        .inspect_image(&id)
        .await
        .with_context(|| format!("inspecting image {tag}"))?
        .size
        .unwrap_or_default();
    Ok(BuiltImage {
        tag: tag.to_owned(),
        id,
        size,
        rebuilt: true,
    })
}

/// Images already ensured by this process: concurrent callers share one build.
static ENSURED: LazyLock<Mutex<HashMap<FnImage, Arc<OnceCell<BuiltImage>>>>> =
    LazyLock::new(Default::default);

/// Makes sure one function image is present and built from the current binary (building the
/// binary with cargo first if it is missing or stale). Checked once per process.
pub async fn ensure_image(docker: &Docker, which: FnImage) -> Result<BuiltImage> {
    let cell = ENSURED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(which)
        .or_default()
        .clone();
    cell.get_or_try_init(|| ensure_image_with(docker, which, false, None))
        .await
        .cloned()
}

/// [`ensure_image`] without the per-process memo, optionally forcing a rebuild and reporting the
/// builder's output.
pub async fn ensure_image_with(
    docker: &Docker,
    which: FnImage,
    force: bool,
    progress: Option<Progress<'_>>,
) -> Result<BuiltImage> {
    let binary = ensure_binary(&which.package(), &which.source_dirs())
        .await
        .with_context(|| format!("preparing the binary of image {}", which.tag()))?;
    let labels = HashMap::from([("ferrofn.image".to_owned(), which.name().to_owned())]);
    ensure_scratch_image_with(docker, which.tag(), &binary, &[], &labels, force, progress)
        .await
        .with_context(|| format!("ensuring image {}", which.tag()))
}

/// Ensures all three function images (testfn, hello, status).
pub async fn ensure_images(docker: &Docker) -> Result<Vec<BuiltImage>> {
    let mut built = Vec::with_capacity(FnImage::ALL.len());
    for which in FnImage::ALL {
        built.push(ensure_image(docker, which).await?);
    }
    Ok(built)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn names_round_trip() {
        for which in FnImage::ALL {
            assert_eq!(which.name().parse::<FnImage>().unwrap(), which);
            assert!(which.tag().starts_with(&format!("ferrofn/{}:", which.name())));
            assert_eq!(which.package(), format!("ferrofn-fn-{which}"));
        }
        assert!("nope".parse::<FnImage>().is_err());
    }

    #[test]
    fn binary_lives_under_the_target_triple() {
        let path = binary_path("ferrofn-fn-testfn");
        assert!(path.ends_with("x86_64-unknown-linux-gnu/debug/ferrofn-fn-testfn"));
    }

    #[test]
    fn context_is_deterministic_and_complete() {
        let extra = [ExtraFile {
            path: "/etc/ferrofn/a.toml".into(),
            contents: b"x = 1".to_vec(),
            mode: 0o600,
        }];
        let one = build_context("bin", b"ELF", &extra).unwrap();
        assert_eq!(one, build_context("bin", b"ELF", &extra).unwrap());
        assert_ne!(one, build_context("bin", b"ELF2", &extra).unwrap());

        let mut archive = tar::Archive::new(one.as_slice());
        let mut seen = HashMap::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().display().to_string();
            let mode = entry.header().mode().unwrap();
            let mut contents = String::new();
            entry.read_to_string(&mut contents).unwrap();
            seen.insert(path, (mode, contents));
        }
        assert!(seen["Dockerfile"].1.contains("ENTRYPOINT [\"/bin\"]"));
        assert_eq!(seen["rootfs/bin"], (0o755, "ELF".to_owned()));
        assert_eq!(seen["rootfs/etc/ferrofn/a.toml"], (0o600, "x = 1".to_owned()));
        assert!(seen.contains_key("rootfs/etc/ferrofn/"));
        assert_eq!(seen["rootfs/tmp/"].0, 0o1777);
    }

    #[test]
    fn rejects_unclean_extra_paths() {
        for bad in ["/", "/a/../b", "/a//b"] {
            let extra = [ExtraFile {
                path: bad.into(),
                contents: Vec::new(),
                mode: 0o644,
            }];
            assert!(build_context("bin", b"", &extra).is_err(), "{bad} accepted");
        }
    }
}
