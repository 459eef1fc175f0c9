//! Layered settings for both binaries: defaults < TOML file < environment < command-line flags.
//! Environment names are explicit per setting (Fn's `FN_*` names are not a uniform prefix), and each
//! also accepts Fn's `<NAME>_FILE` form. The environment can be a map, so tests never touch the real one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use figment::providers::{Format, Serialized, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Why settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file named on the command line is not there.
    #[error("config file {path} does not exist")]
    FileMissing {
        /// The path given.
        path: PathBuf,
    },
    /// `<NAME>_FILE` names a file that cannot be read.
    #[error("cannot read {var}={path} (the value of {name}): {source}")]
    EnvFile {
        /// The setting's variable, e.g. `FN_DB_URL`.
        name: String,
        /// The `_FILE` variable.
        var: String,
        /// The file it names.
        path: PathBuf,
        /// The read error.
        #[source]
        source: std::io::Error,
    },
    /// The flags could not be turned into settings (a bug in the flag struct).
    #[error("cannot read command-line flags: {0}")]
    Flags(#[source] Box<figment::Error>),
    /// A value is of the wrong type, or a key is unknown. The text names the key and where it came from.
    #[error("invalid configuration: {0}")]
    Invalid(String),
    /// A value has the right type but cannot be used.
    #[error("invalid setting {field} (from {source_of}): {message}")]
    BadValue {
        /// The settings field.
        field: String,
        /// Where its value came from.
        source_of: String,
        /// What is wrong.
        message: String,
    },
}

/// Where environment variables come from: the process, or a fixed map (tests).
#[derive(Debug, Clone, Default)]
pub enum EnvSource {
    /// The real process environment.
    #[default]
    Process,
    /// A fixed set of variables.
    Map(BTreeMap<String, String>),
}

impl EnvSource {
    /// The process environment.
    pub fn process() -> Self {
        EnvSource::Process
    }

    /// A fixed environment made of `pairs`.
    pub fn from_pairs<I, K, V>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        EnvSource::Map(pairs.into_iter().map(|(k, v)| (k.into(), v.into())).collect())
    }

    /// One variable; `None` if unset (or, in the process, not valid UTF-8).
    pub fn var(&self, name: &str) -> Option<String> {
        match self {
            EnvSource::Process => std::env::var(name).ok(),
            EnvSource::Map(m) => m.get(name).cloned(),
        }
    }

    /// `name`'s value, else the contents of the file named by `<name>_FILE` (trailing newline
    /// removed), else `None`.
    pub fn lookup(&self, name: &str) -> Result<Option<String>, ConfigError> {
        if let Some(v) = self.var(name) {
            return Ok(Some(v));
        }
        let var = format!("{name}_FILE");
        let Some(path) = self.var(&var) else {
            return Ok(None);
        };
        let path = PathBuf::from(path);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text.trim_end_matches(['\n', '\r']).to_owned())),
            Err(source) => Err(ConfigError::EnvFile {
                name: name.to_owned(),
                var,
                path,
                source,
            }),
        }
    }
}

/// How a binary names its settings in the environment.
#[derive(Debug, Clone, Copy)]
pub struct EnvNames {
    /// `(VARIABLE, field)`: the names read today (Fn's `FN_*` where Fn has the setting, `FERROFN_*`
    /// for settings only ferrofn has). `field` may be dotted, e.g. `tls.cert`.
    pub current: &'static [(&'static str, &'static str)],
    /// `(OLD, NEW)`: earlier names still read when `NEW` is unset, each with a deprecation notice.
    pub deprecated: &'static [(&'static str, &'static str)],
}

impl EnvNames {
    /// The current variable that sets `field`, if any.
    pub fn variable_of(&self, field: &str) -> Option<&'static str> {
        self.current.iter().find(|(_, f)| *f == field).map(|(n, _)| *n)
    }

    fn field_of(&self, name: &str) -> Option<&'static str> {
        self.current.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
    }
}

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The built-in default.
    Default,
    /// The TOML settings file.
    File(PathBuf),
    /// An environment variable (or its `_FILE` form).
    Env(String),
    /// A command-line flag, e.g. `--placer`.
    Flag(String),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::File(p) => write!(f, "file {}", p.display()),
            Source::Env(name) => write!(f, "environment variable {name}"),
            Source::Flag(flag) => write!(f, "flag {flag}"),
        }
    }
}

/// A value that has the right type but cannot be used; returned by a settings check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadSetting {
    /// The settings field (dotted for nested ones, e.g. `tls.ca`).
    pub field: String,
    /// What is wrong and what would be right.
    pub message: String,
}

impl BadSetting {
    /// `field` is not acceptable because of `message`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

const ENV_TAG: &str = "env:";
const FLAGS_TAG: &str = "flags";

/// One environment variable as a figment layer whose errors name the variable.
struct EnvVar {
    name: String,
    field: String,
    value: Value,
}

impl Provider for EnvVar {
    fn metadata(&self) -> Metadata {
        let name = self.name.clone();
        Metadata::named(format!("environment variable {}", self.name))
            .source(figment::Source::Custom(format!("{ENV_TAG}{}", self.name)))
            .interpolater(move |_, _| name.clone())
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let dict = match figment::util::nest(&self.field, self.value.clone()) {
            Value::Dict(_, d) => d,
            _ => Dict::new(),
        };
        Ok(Profile::Default.collect(dict))
    }
}

/// The flags layer; errors name the flag as `--some-setting` (`--tls-ca` for `tls.ca`).
struct Flags(Dict);

fn flag_name<K: AsRef<str>>(keys: &[K]) -> String {
    let joined: Vec<&str> = keys.iter().map(AsRef::as_ref).collect();
    format!("--{}", joined.join("-").replace('_', "-"))
}

impl Provider for Flags {
    fn metadata(&self) -> Metadata {
        Metadata::named("command-line flags")
            .source(figment::Source::Custom(FLAGS_TAG.into()))
            .interpolater(|_, keys| flag_name(keys))
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.0.clone()))
    }
}

/// Drops `None`s (figment's `Empty`) and the groups left empty, so that an unset flag does not
/// override lower layers.
fn strip_empty(v: Value) -> Option<Value> {
    match v {
        Value::Empty(..) => None,
        Value::Dict(tag, d) => {
            let d: Dict = d
                .into_iter()
                .filter_map(|(k, v)| strip_empty(v).map(|v| (k, v)))
                .collect();
            (!d.is_empty()).then_some(Value::Dict(tag, d))
        }
        other => Some(other),
    }
}

/// Reads an environment string the way the setting's default suggests: strings stay strings (so
/// `FN_X=0123` keeps its zero), lists split on commas (`FN_RUNNER_ADDRESSES=a:1,b:2`), booleans take
/// Go's `ParseBool` forms plus yes/no/on/off; anything else is parsed as figment does (numbers, ...).
fn env_value(defaults: &Value, field: &str, raw: &str) -> Value {
    match defaults.find_ref(field) {
        Some(Value::String(..)) => Value::from(raw.to_owned()),
        Some(Value::Array(..)) => Value::from(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect::<Vec<_>>(),
        ),
        Some(Value::Bool(..)) => match raw.trim().to_ascii_lowercase().as_str() {
            "1" | "t" | "true" | "yes" | "on" => Value::from(true),
            "0" | "f" | "false" | "no" | "off" | "" => Value::from(false),
            _ => Value::from(raw.to_owned()), // fails with an error naming the variable
        },
        // Numbers parsed here, anything else left a string (a wrong type then fails naming the
        // variable). Not figment's own `Value` parser: it panics on some non-ASCII text before a
        // backslash in a quoted value (figment 0.10.19, value/escape.rs indexes bytes by chars; found
        // by fuzz/ `config`).
        _ => number(raw.trim()).unwrap_or_else(|| Value::from(raw.to_owned())),
    }
}

fn number(s: &str) -> Option<Value> {
    if let Ok(u) = s.parse::<u64>() {
        Some(Value::from(u))
    } else if let Ok(i) = s.parse::<i64>() {
        Some(Value::from(i))
    } else {
        s.parse::<f64>().ok().filter(|f| f.is_finite()).map(Value::from)
    }
}

fn invalid(e: figment::Error) -> ConfigError {
    ConfigError::Invalid(
        e.into_iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("; "),
    )
}

/// Every leaf key of a settings value, dotted (`tls.ca`).
fn leaf_keys(v: &Value, prefix: &str, out: &mut Vec<String>) {
    if let Value::Dict(_, d) = v {
        for (k, v) in d {
            let key = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            match v {
                Value::Dict(..) => leaf_keys(v, &key, out),
                _ => out.push(key),
            }
        }
    }
}

/// Settings as loaded: the values, where each came from, and the deprecated names that were used.
#[derive(Debug, Clone)]
pub struct Loaded<T> {
    /// The effective settings.
    pub settings: T,
    sources: BTreeMap<String, Source>,
    deprecations: Vec<String>,
}

impl<T: Serialize> Loaded<T> {
    /// Where `field` (dotted for nested fields) got its value.
    pub fn source(&self, field: &str) -> Source {
        self.sources.get(field).cloned().unwrap_or(Source::Default)
    }

    /// One notice per deprecated environment name that was read (or ignored).
    pub fn deprecations(&self) -> &[String] {
        &self.deprecations
    }

    /// Logs the deprecation notices (once per load; call after tracing is set up).
    pub fn log_deprecations(&self) {
        for d in &self.deprecations {
            tracing::warn!(notice = %d, "deprecated setting name");
        }
    }

    /// Runs the binary's checks of values that their types cannot express; a failure names the
    /// setting and where its value came from.
    pub fn check(self, check: impl FnOnce(&T) -> Result<(), BadSetting>) -> Result<Self, ConfigError> {
        match check(&self.settings) {
            Ok(()) => Ok(self),
            Err(bad) => Err(ConfigError::BadValue {
                source_of: self.source(&bad.field).to_string(),
                field: bad.field,
                message: bad.message,
            }),
        }
    }

    /// The effective settings as TOML, each value followed by a comment naming its source
    /// (`print-config`). The text loads back to the same settings.
    pub fn render(&self) -> String {
        let text = render_toml(&self.settings);
        let mut table = String::new();
        let mut out = String::with_capacity(text.len() * 2);
        for line in text.lines() {
            out.push_str(line);
            let trimmed = line.trim_start();
            if line.starts_with('[') && trimmed.ends_with(']') {
                table = trimmed.trim_matches(['[', ']']).to_owned();
            } else if !line.starts_with(' ')
                && let Some((key, _)) = line.split_once(" = ")
            {
                let field = if table.is_empty() {
                    key.to_owned()
                } else {
                    format!("{table}.{key}")
                };
                out.push_str("  # ");
                out.push_str(&self.source(&field).to_string());
            }
            out.push('\n');
        }
        out
    }
}

/// Loads settings: `T::default()`, then the TOML `file` (its keys are the field names; unknown keys
/// fail when `T` uses `deny_unknown_fields`), then each variable of `names` set in `env` (a
/// deprecated name only when its new name is unset), then the `flags` that are `Some`. The result
/// knows the source of every value.
pub fn load_layers<T>(
    file: Option<&Path>,
    env: &EnvSource,
    names: &EnvNames,
    flags: impl Serialize,
) -> Result<Loaded<T>, ConfigError>
where
    T: Serialize + DeserializeOwned + Default,
{
    let defaults = T::default();
    let default_value = Value::serialize(&defaults).map_err(invalid)?;
    let mut figment = Figment::from(Serialized::defaults(defaults));
    if let Some(path) = file {
        if !path.is_file() {
            return Err(ConfigError::FileMissing {
                path: path.to_owned(),
            });
        }
        figment = figment.merge(Toml::file_exact(path));
    }
    let mut deprecations = Vec::new();
    let mut layers: Vec<(&str, &str)> = Vec::new();
    for (old, new) in names.deprecated {
        if env.lookup(old)?.is_none() {
            continue;
        }
        if env.lookup(new)?.is_some() {
            deprecations.push(format!(
                "{old} is ignored: {new} is set (and {old} is a deprecated name for it)"
            ));
        } else if let Some(field) = names.field_of(new) {
            deprecations.push(format!("{old} is deprecated: use {new}"));
            layers.push((old, field));
        }
    }
    layers.extend(names.current.iter().copied());
    for (name, field) in layers {
        if let Some(raw) = env.lookup(name)? {
            let value = env_value(&default_value, field, &raw);
            figment = figment.merge(EnvVar {
                name: name.to_owned(),
                field: field.to_owned(),
                value,
            });
        }
    }
    let flags = Value::serialize(flags).map_err(|e| ConfigError::Flags(Box::new(e)))?;
    if let Some(Value::Dict(_, dict)) = strip_empty(flags) {
        figment = figment.merge(Flags(dict));
    }
    let settings: T = figment.extract().map_err(invalid)?;
    let mut keys = Vec::new();
    leaf_keys(&default_value, "", &mut keys);
    let sources = keys
        .into_iter()
        .filter_map(|key| {
            let meta = figment.find_metadata(&key)?;
            let source = match &meta.source {
                Some(figment::Source::File(p)) => Source::File(p.clone()),
                Some(figment::Source::Custom(c)) if c == FLAGS_TAG => {
                    Source::Flag(flag_name(&key.split('.').collect::<Vec<_>>()))
                }
                Some(figment::Source::Custom(c)) if c.starts_with(ENV_TAG) => {
                    Source::Env(c[ENV_TAG.len()..].to_owned())
                }
                _ => return None,
            };
            Some((key, source))
        })
        .collect();
    Ok(Loaded {
        settings,
        sources,
        deprecations,
    })
}

/// The effective settings as TOML (for `--print-config` and start-up logs).
pub fn render_toml<T: Serialize>(settings: &T) -> String {
    toml::to_string_pretty(settings)
        .unwrap_or_else(|e| format!("# cannot render the settings as TOML: {e}\n"))
}

/// Flags both binaries take, with the same names: where to listen, plaintext or mTLS, and the TLS
/// files. Flattened into each binary's flag set; they land on the same settings fields
/// (`listen_address`, `plaintext`, `tls.ca`, `tls.cert`, `tls.key`).
#[derive(Debug, Clone, Default, Serialize, clap::Args)]
pub struct NodeFlags {
    /// Listen address.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen_address: Option<String>,
    /// Plaintext h2c between LB and runners (Fn peers, trusted networks) instead of mTLS.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plaintext: Option<bool>,
    /// mTLS files.
    #[command(flatten)]
    pub tls: TlsFlags,
}

/// `--tls-ca`, `--tls-cert`, `--tls-key`.
#[derive(Debug, Clone, Default, Serialize, clap::Args)]
pub struct TlsFlags {
    /// Cluster CA certificate file.
    #[arg(long = "tls-ca")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// This node's certificate chain file.
    #[arg(long = "tls-cert")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// This node's private key file.
    #[arg(long = "tls-key")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
}

/// Checks a `host:port` address (a name or an IP, and a port number).
pub fn check_host_port(field: &str, addr: &str) -> Result<(), BadSetting> {
    let bad = |why: &str| BadSetting::new(field, format!("{addr:?} is not host:port ({why})"));
    let (host, port) = addr.rsplit_once(':').ok_or_else(|| bad("no port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad("no host"));
    }
    if host.parse::<std::net::IpAddr>().is_err()
        && !host.split('.').all(|l| {
            !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
    {
        return Err(bad("the host is neither an IP address nor a DNS name"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(bad("the port is not a number from 1 to 65535")),
    }
}

/// Checks a listen address: an IP address (`0.0.0.0`, `127.0.0.1`, `::`).
pub fn check_listen_address(field: &str, addr: &str) -> Result<(), BadSetting> {
    addr.parse::<std::net::IpAddr>().map(|_| ()).map_err(|_| {
        BadSetting::new(
            field,
            format!("{addr:?} is not an IP address to listen on (e.g. 0.0.0.0 or 127.0.0.1)"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::io::Write;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct Settings {
        port: u16,
        placer: String,
        runners: Vec<String>,
        nb_tracker: bool,
        max_request_size: Option<u64>,
        tls: Tls,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct Tls {
        cert: String,
        plaintext: bool,
    }

    impl Default for Settings {
        fn default() -> Self {
            Settings {
                port: 8080,
                placer: "naive".into(),
                runners: vec![],
                nb_tracker: false,
                max_request_size: None,
                tls: Tls::default(),
            }
        }
    }

    impl Default for Tls {
        fn default() -> Self {
            Tls {
                cert: "certs/lb.pem".into(),
                plaintext: false,
            }
        }
    }

    #[derive(Default, Serialize)]
    struct Flags {
        #[serde(skip_serializing_if = "Option::is_none")]
        port: Option<u16>,
        placer: Option<String>, // None is serialized: load must still ignore it
    }

    const ENV_MAP: &[(&str, &str)] = &[
        ("FN_PORT", "port"),
        ("FN_PLACER", "placer"),
        ("FN_RUNNER_ADDRESSES", "runners"),
        ("FN_ENABLE_NB_RESOURCE_TRACKER", "nb_tracker"),
        ("FN_MAX_REQUEST_SIZE", "max_request_size"),
        ("FERROFN_TLS_CERT", "tls.cert"),
    ];

    /// [`load_layers`] without the sources or deprecated names: the settings alone.
    fn load<T>(
        file: Option<&Path>,
        env: &EnvSource,
        env_map: &'static [(&'static str, &'static str)],
        flags: impl Serialize,
    ) -> Result<T, ConfigError>
    where
        T: Serialize + DeserializeOwned + Default,
    {
        let names = EnvNames {
            current: env_map,
            deprecated: &[],
        };
        load_layers(file, env, &names, flags).map(|l| l.settings)
    }

    fn toml_file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    fn no_env() -> EnvSource {
        EnvSource::from_pairs(Vec::<(String, String)>::new())
    }

    /// fuzz/ `config` found figment's value parser panicking on this (a quoted value with
    /// non-ASCII text before a backslash); a number setting now gets a clear error instead.
    #[test]
    fn odd_text_in_a_number_setting_is_an_error_not_a_panic() {
        let raw = String::from_utf8_lossy(b"\"\xfe\xff\xff\xfa\\\"*");
        let env = EnvSource::from_pairs([("FN_PORT", raw.as_ref())]);
        let e = load::<Settings>(None, &env, ENV_MAP, Flags::default()).unwrap_err();
        assert!(e.to_string().contains("FN_PORT"), "{e}");
        let env = EnvSource::from_pairs([("FN_PORT", " 2500 ")]);
        let s: Settings = load(None, &env, ENV_MAP, Flags::default()).unwrap();
        assert_eq!(s.port, 2500);
    }

    #[test]
    fn defaults_alone() {
        let s: Settings = load(None, &no_env(), ENV_MAP, Flags::default()).unwrap();
        assert_eq!(s, Settings::default());
    }

    #[test]
    fn each_layer_overrides_the_one_below() {
        let file = toml_file(
            "port = 1000\nplacer = \"ch\"\nrunners = [\"r1:9190\"]\nmax_request_size = 5\n[tls]\ncert = \"file.pem\"\n",
        );
        let path = Some(file.path());

        let s: Settings = load(path, &no_env(), ENV_MAP, Flags::default()).unwrap();
        assert_eq!(
            (s.port, s.placer.as_str(), s.max_request_size),
            (1000, "ch", Some(5))
        );
        assert_eq!(
            (s.runners.clone(), s.tls.cert.as_str()),
            (vec!["r1:9190".to_owned()], "file.pem")
        );
        assert!(!s.tls.plaintext, "keys absent from the file keep their defaults");

        let env = EnvSource::from_pairs([
            ("FN_PORT", "2000"),
            ("FN_RUNNER_ADDRESSES", "a:1, b:2,"),
            ("FN_ENABLE_NB_RESOURCE_TRACKER", "1"),
            ("FERROFN_TLS_CERT", "env.pem"),
            ("UNRELATED", "x"),
        ]);
        let s: Settings = load(path, &env, ENV_MAP, Flags::default()).unwrap();
        assert_eq!((s.port, s.placer.as_str()), (2000, "ch"));
        assert_eq!(s.runners, ["a:1", "b:2"]);
        assert!(s.nb_tracker);
        assert_eq!(s.tls.cert, "env.pem");

        let s: Settings = load(
            path,
            &env,
            ENV_MAP,
            Flags {
                port: Some(3000),
                placer: None,
            },
        )
        .unwrap();
        assert_eq!(
            (s.port, s.placer.as_str()),
            (3000, "ch"),
            "an unset flag does not override"
        );
        let s: Settings = load(
            path,
            &env,
            ENV_MAP,
            Flags {
                port: None,
                placer: Some("naive".into()),
            },
        )
        .unwrap();
        assert_eq!((s.port, s.placer.as_str()), (2000, "naive"));
    }

    #[test]
    fn env_strings_stay_strings() {
        let env = EnvSource::from_pairs([("FN_PLACER", "0123")]);
        let s: Settings = load(None, &env, ENV_MAP, Flags::default()).unwrap();
        assert_eq!(s.placer, "0123");
    }

    #[test]
    fn file_suffix_reads_the_value_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("port");
        std::fs::write(&secret, "4242\n").unwrap();
        let env = EnvSource::from_pairs([("FN_PORT_FILE", secret.to_str().unwrap())]);
        let s: Settings = load(None, &env, ENV_MAP, Flags::default()).unwrap();
        assert_eq!(s.port, 4242);
        // The plain variable wins over _FILE.
        let env = EnvSource::from_pairs([("FN_PORT", "1"), ("FN_PORT_FILE", secret.to_str().unwrap())]);
        assert_eq!(
            load::<Settings>(None, &env, ENV_MAP, Flags::default())
                .unwrap()
                .port,
            1
        );

        let env = EnvSource::from_pairs([("FN_PORT_FILE", "/nonexistent/ferrofn-port")]);
        let err = load::<Settings>(None, &env, ENV_MAP, Flags::default()).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, ConfigError::EnvFile { .. }), "{text}");
        assert!(text.contains("FN_PORT_FILE=/nonexistent/ferrofn-port"), "{text}");
    }

    #[test]
    fn unknown_key_in_file_names_key_and_file() {
        let file = toml_file("port = 1\nplacr = \"ch\"\n");
        let err = load::<Settings>(Some(file.path()), &no_env(), ENV_MAP, Flags::default()).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("placr"), "{text}");
        assert!(text.contains(&file.path().display().to_string()), "{text}");

        let file = toml_file("[tls]\ncertt = \"x\"\n");
        let text = load::<Settings>(Some(file.path()), &no_env(), ENV_MAP, Flags::default())
            .unwrap_err()
            .to_string();
        assert!(text.contains("certt"), "{text}");
    }

    #[test]
    fn bad_types_name_the_setting_and_its_source() {
        let file = toml_file("port = \"eighty\"\n");
        let text = load::<Settings>(Some(file.path()), &no_env(), ENV_MAP, Flags::default())
            .unwrap_err()
            .to_string();
        assert!(
            text.contains("port") && text.contains(&file.path().display().to_string()),
            "{text}"
        );

        let env = EnvSource::from_pairs([("FN_PORT", "99999")]);
        let text = load::<Settings>(None, &env, ENV_MAP, Flags::default())
            .unwrap_err()
            .to_string();
        assert!(text.contains("FN_PORT"), "{text}");

        let env = EnvSource::from_pairs([("FN_ENABLE_NB_RESOURCE_TRACKER", "maybe")]);
        let text = load::<Settings>(None, &env, ENV_MAP, Flags::default())
            .unwrap_err()
            .to_string();
        assert!(text.contains("FN_ENABLE_NB_RESOURCE_TRACKER"), "{text}");
    }

    #[test]
    fn missing_file_is_an_error() {
        let err = load::<Settings>(
            Some(Path::new("/nonexistent/ferrofn.toml")),
            &no_env(),
            ENV_MAP,
            (),
        )
        .unwrap_err();
        assert!(matches!(err, ConfigError::FileMissing { .. }), "{err}");
    }

    #[test]
    fn render_round_trips() {
        let s = Settings {
            runners: vec!["a:1".into()],
            max_request_size: Some(7),
            ..Default::default()
        };
        let text = render_toml(&s);
        assert!(text.contains("port = 8080"), "{text}");
        let file = toml_file(&text);
        let back: Settings = load(Some(file.path()), &no_env(), ENV_MAP, ()).unwrap();
        assert_eq!(back, s);
    }

    const NAMES: EnvNames = EnvNames {
        current: ENV_MAP,
        deprecated: &[("FN_TLS_CERT", "FERROFN_TLS_CERT"), ("FN_OLD_PORT", "FN_PORT")],
    };

    #[test]
    fn deprecated_names_are_read_with_a_notice_and_lose_to_the_new_name() {
        let env = EnvSource::from_pairs([("FN_TLS_CERT", "old.pem")]);
        let l: Loaded<Settings> = load_layers(None, &env, &NAMES, Flags::default()).unwrap();
        assert_eq!(l.settings.tls.cert, "old.pem");
        assert_eq!(l.source("tls.cert"), Source::Env("FN_TLS_CERT".into()));
        assert_eq!(
            l.deprecations(),
            ["FN_TLS_CERT is deprecated: use FERROFN_TLS_CERT"]
        );

        let env = EnvSource::from_pairs([("FN_TLS_CERT", "old.pem"), ("FERROFN_TLS_CERT", "new.pem")]);
        let l: Loaded<Settings> = load_layers(None, &env, &NAMES, Flags::default()).unwrap();
        assert_eq!(l.settings.tls.cert, "new.pem");
        assert_eq!(l.source("tls.cert"), Source::Env("FERROFN_TLS_CERT".into()));
        assert_eq!(l.deprecations().len(), 1);
        assert!(l.deprecations()[0].contains("ignored"), "{:?}", l.deprecations());

        let l: Loaded<Settings> = load_layers(None, &no_env(), &NAMES, Flags::default()).unwrap();
        assert!(l.deprecations().is_empty());
    }

    #[test]
    fn every_value_knows_its_source() {
        let file = toml_file("placer = \"ch\"\n");
        let env = EnvSource::from_pairs([("FN_RUNNER_ADDRESSES", "a:1")]);
        let l: Loaded<Settings> = load_layers(
            Some(file.path()),
            &env,
            &NAMES,
            Flags {
                port: Some(7),
                placer: None,
            },
        )
        .unwrap();
        assert_eq!(l.source("port"), Source::Flag("--port".into()));
        assert_eq!(l.source("placer"), Source::File(file.path().to_owned()));
        assert_eq!(l.source("runners"), Source::Env("FN_RUNNER_ADDRESSES".into()));
        assert_eq!(l.source("nb_tracker"), Source::Default);
        assert_eq!(l.source("tls.cert"), Source::Default);

        let text = l.render();
        assert!(text.contains("port = 7  # flag --port"), "{text}");
        assert!(text.contains("placer = \"ch\"  # file "), "{text}");
        assert!(
            text.contains("runners = [\"a:1\"]  # environment variable FN_RUNNER_ADDRESSES"),
            "{text}"
        );
        assert!(text.contains("cert = \"certs/lb.pem\"  # default"), "{text}");
        // The annotated text is still the same settings.
        let again = toml_file(&text);
        let back: Settings = load(Some(again.path()), &no_env(), ENV_MAP, ()).unwrap();
        assert_eq!(back, l.settings);
    }

    #[test]
    fn a_check_names_the_setting_and_its_source() {
        let env = EnvSource::from_pairs([("FN_PLACER", "foo")]);
        let l: Loaded<Settings> = load_layers(None, &env, &NAMES, Flags::default()).unwrap();
        let err = l
            .check(|s| {
                if s.placer == "foo" {
                    Err(BadSetting::new("placer", "unknown placer \"foo\""))
                } else {
                    Ok(())
                }
            })
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid setting placer (from environment variable FN_PLACER): unknown placer \"foo\""
        );
    }

    #[test]
    fn node_flags_land_on_the_shared_fields() {
        #[derive(Default, Serialize)]
        struct Both {
            #[serde(flatten)]
            node: NodeFlags,
        }
        let flags = Both {
            node: NodeFlags {
                tls: TlsFlags {
                    cert: Some("flag.pem".into()),
                    ..TlsFlags::default()
                },
                ..NodeFlags::default()
            },
        };
        let l: Loaded<Settings> = load_layers(None, &no_env(), &NAMES, flags).unwrap();
        assert_eq!(l.settings.tls.cert, "flag.pem");
        assert_eq!(l.source("tls.cert"), Source::Flag("--tls-cert".into()));
        assert!(!l.settings.tls.plaintext, "unset flags change nothing");
    }

    #[test]
    fn addresses_are_checked() {
        for good in ["r1:9190", "runner-1.internal:1", "127.0.0.1:9190", "[::1]:9190"] {
            assert_eq!(check_host_port("runner_addresses", good), Ok(()), "{good}");
        }
        for bad in [
            "garbage",
            "r1:",
            ":9190",
            "r1:0",
            "r1:99999",
            "bad_name!:1",
            "a..b:1",
        ] {
            let e = check_host_port("runner_addresses", bad).unwrap_err();
            assert_eq!(e.field, "runner_addresses");
            assert!(e.message.contains(bad), "{e:?}");
        }
        assert!(check_listen_address("listen_address", "0.0.0.0").is_ok());
        assert!(check_listen_address("listen_address", "::").is_ok());
        assert!(check_listen_address("listen_address", "localhost:80").is_err());
    }
}
