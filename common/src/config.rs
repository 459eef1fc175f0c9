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

/// One environment variable as a figment layer whose errors name the variable.
struct EnvVar {
    name: String,
    field: String,
    value: Value,
}

impl Provider for EnvVar {
    fn metadata(&self) -> Metadata {
        let name = self.name.clone();
        Metadata::named(format!("environment variable {}", self.name)).interpolater(move |_, _| name.clone())
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let dict = match figment::util::nest(&self.field, self.value.clone()) {
            Value::Dict(_, d) => d,
            _ => Dict::new(),
        };
        Ok(Profile::Default.collect(dict))
    }
}

/// The flags layer; errors name the flag as `--some-setting`.
struct Flags(Dict);

impl Provider for Flags {
    fn metadata(&self) -> Metadata {
        Metadata::named("command-line flags")
            .interpolater(|_, keys| format!("--{}", keys.join(".").replace('_', "-")))
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.0.clone()))
    }
}

/// Drops `None`s (figment's `Empty`) so that an unset flag does not override lower layers.
fn strip_empty(v: Value) -> Option<Value> {
    match v {
        Value::Empty(..) => None,
        Value::Dict(tag, d) => Some(Value::Dict(
            tag,
            d.into_iter()
                .filter_map(|(k, v)| strip_empty(v).map(|v| (k, v)))
                .collect(),
        )),
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
        _ => raw.parse::<Value>().unwrap_or_else(|never| match never {}),
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

/// Loads settings: `T::default()`, then the TOML `file` (its keys are the field names; unknown keys
/// fail when `T` uses `deny_unknown_fields`), then each `(ENV_NAME, field)` of `env_map` that is set
/// in `env` (`field` may be dotted, e.g. `tls.cert`), then the `flags` that are `Some`.
pub fn load<T>(
    file: Option<&Path>,
    env: &EnvSource,
    env_map: &[(&str, &str)],
    flags: impl Serialize,
) -> Result<T, ConfigError>
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
    for (name, field) in env_map {
        if let Some(raw) = env.lookup(name)? {
            let value = env_value(&default_value, field, &raw);
            figment = figment.merge(EnvVar {
                name: (*name).to_owned(),
                field: (*field).to_owned(),
                value,
            });
        }
    }
    let flags = Value::serialize(flags).map_err(|e| ConfigError::Flags(Box::new(e)))?;
    if let Some(Value::Dict(_, dict)) = strip_empty(flags) {
        figment = figment.merge(Flags(dict));
    }
    figment.extract::<T>().map_err(invalid)
}

/// The effective settings as TOML (for `--print-config` and start-up logs).
pub fn render_toml<T: Serialize>(settings: &T) -> String {
    toml::to_string_pretty(settings)
        .unwrap_or_else(|e| format!("# cannot render the settings as TOML: {e}\n"))
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

    fn toml_file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    fn no_env() -> EnvSource {
        EnvSource::from_pairs(Vec::<(String, String)>::new())
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
}
