//! Fn's v2 management models (apps, fns, triggers, paged lists) with Fn's JSON names, defaults,
//! validation messages and PUT merge rules, so the Fn CLI and an Fn API server read them unchanged.
//! Fields that a create or PUT body may leave out are `Option`s or empty values. Only the LB reads
//! them (the runner gets the call model), so they live beside the registry that stores them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use ferrofn_common::call::null_default;
use ferrofn_common::datetime::DateTime;
use ferrofn_common::error::FnError;

/// Default fn memory in MB.
pub const DEFAULT_MEMORY_MB: u64 = 128;
/// Default fn timeout in seconds.
pub const DEFAULT_TIMEOUT_SECS: i32 = 30;
/// Default fn idle timeout in seconds.
pub const DEFAULT_IDLE_TIMEOUT_SECS: i32 = 30;
/// Largest fn memory in MB (8 GiB).
pub const MAX_MEMORY_MB: u64 = 8 * 1024;
/// Largest fn timeout in seconds.
pub const MAX_TIMEOUT_SECS: i32 = 300;
/// Largest fn idle timeout in seconds.
pub const MAX_IDLE_TIMEOUT_SECS: i32 = 3600;
/// Longest app, fn or trigger name in bytes.
pub const MAX_NAME_LEN: usize = 255;
/// Annotation limits (Fn's `annotations.go`).
pub const MAX_ANNOTATION_KEY_BYTES: usize = 128;
/// Largest annotation value, as compact JSON.
pub const MAX_ANNOTATION_VALUE_BYTES: usize = 512;
/// Most annotation keys on one object.
pub const MAX_ANNOTATION_KEYS: usize = 100;

/// Annotation the CLI reads to find a fn's invoke URL.
pub const FN_INVOKE_ENDPOINT_ANNOTATION: &str = "fnproject.io/fn/invokeEndpoint";
/// Annotation the CLI shows as a trigger's endpoint.
pub const TRIGGER_HTTP_ENDPOINT_ANNOTATION: &str = "fnproject.io/trigger/httpEndpoint";
/// The only trigger type Fn knows.
pub const TRIGGER_TYPE_HTTP: &str = "http";
/// App shapes Fn accepts ("" = unset).
pub const APP_SHAPES: [&str; 3] = ["GENERIC_X86", "GENERIC_ARM", "GENERIC_X86_ARM"];

/// Annotations: key -> any JSON value.
pub type Annotations = BTreeMap<String, serde_json::Value>;
/// Config: key -> value (becomes container environment).
pub type Config = BTreeMap<String, String>;

/// An application: a named group of fns sharing config.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct App {
    /// Server-made ID (must be absent on create).
    #[serde(deserialize_with = "null_default")]
    pub id: String,
    /// Unique name.
    #[serde(deserialize_with = "null_default")]
    pub name: String,
    /// Config shared by the app's fns.
    #[serde(skip_serializing_if = "BTreeMap::is_empty", deserialize_with = "null_default")]
    pub config: Config,
    /// Annotations.
    #[serde(skip_serializing_if = "BTreeMap::is_empty", deserialize_with = "null_default")]
    pub annotations: Annotations,
    /// Syslog URL for the fns' logs (`""` in a PUT removes it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub syslog_url: Option<String>,
    /// Architecture shape ("" = unset).
    #[serde(deserialize_with = "null_default")]
    pub shape: String,
    /// Creation time (the server ignores what a client sends).
    pub created_at: DateTime,
    /// Last change.
    pub updated_at: DateTime,
}

/// A function: an image plus its resources and config, in an app.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Function {
    /// Server-made ID (must be absent on create).
    #[serde(deserialize_with = "null_default")]
    pub id: String,
    /// Name, unique in its app.
    #[serde(deserialize_with = "null_default")]
    pub name: String,
    /// Owning app.
    #[serde(deserialize_with = "null_default")]
    pub app_id: String,
    /// Docker image.
    #[serde(deserialize_with = "null_default")]
    pub image: String,
    /// Memory in MB; `None` (or 0) = default 128.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
    /// Exec timeout in seconds; `None` (or 0) = default 30.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<i32>,
    /// Hot container idle timeout in seconds; `None` (or 0) = default 30.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<i32>,
    /// Config (overrides the app's). Always printed, as Fn does.
    #[serde(deserialize_with = "null_default")]
    pub config: Config,
    /// Annotations.
    #[serde(skip_serializing_if = "BTreeMap::is_empty", deserialize_with = "null_default")]
    pub annotations: Annotations,
    /// Architecture shape ("" = unset, omitted).
    #[serde(skip_serializing_if = "String::is_empty", deserialize_with = "null_default")]
    pub shape: String,
    /// Creation time.
    pub created_at: DateTime,
    /// Last change.
    pub updated_at: DateTime,
}

/// A trigger: an HTTP source path that invokes a fn.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Trigger {
    /// Server-made ID (must be absent on create).
    #[serde(deserialize_with = "null_default")]
    pub id: String,
    /// Name, unique per fn.
    #[serde(deserialize_with = "null_default")]
    pub name: String,
    /// Owning app.
    #[serde(deserialize_with = "null_default")]
    pub app_id: String,
    /// Target fn.
    #[serde(deserialize_with = "null_default")]
    pub fn_id: String,
    /// Trigger type; only `http` exists (JSON `type`).
    #[serde(rename = "type", deserialize_with = "null_default")]
    pub trigger_type: String,
    /// Source path, with its leading `/` (e.g. `/hello`).
    #[serde(deserialize_with = "null_default")]
    pub source: String,
    /// Annotations.
    #[serde(skip_serializing_if = "BTreeMap::is_empty", deserialize_with = "null_default")]
    pub annotations: Annotations,
    /// Creation time.
    pub created_at: DateTime,
    /// Last change.
    pub updated_at: DateTime,
}

/// One page of a list: `{"items":[...],"next_cursor":"..."}` (cursor omitted on the last page).
/// `{}` reads as an empty last page, as the CLI accepts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(bound(serialize = "T: Serialize", deserialize = "T: Deserialize<'de>"))]
pub struct ListResponse<T> {
    /// The page's items.
    #[serde(default = "Vec::new", deserialize_with = "items_or_null")]
    pub items: Vec<T>,
    /// Cursor of the next page; empty on the last one.
    #[serde(
        default,
        skip_serializing_if = "String::is_empty",
        deserialize_with = "null_default"
    )]
    pub next_cursor: String,
}

fn items_or_null<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

impl<T> Default for ListResponse<T> {
    fn default() -> Self {
        ListResponse {
            items: Vec::new(),
            next_cursor: String::new(),
        }
    }
}

fn bad_request(message: String) -> FnError {
    FnError::new(400, message, false)
}

/// Fn's name rule for apps and triggers: letters, digits (any script), `_` and `-`.
fn is_word_name(name: &str) -> bool {
    name.chars().all(|c| c.is_alphanumeric() || c == '_' || c == '-')
}

/// Fn's fn-name rule: the name is unchanged by Go's `url.PathEscape` (unreserved characters plus
/// `$&+:=@`).
fn is_path_segment(name: &str) -> bool {
    name.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.~$&+:=@".contains(&b))
}

/// Fn's checks on the name of one kind of object. The three kinds share the checks and differ only
/// in their messages and allowed characters.
struct NameRule {
    /// The kind as the length message names it.
    kind: &'static str,
    /// The message for an empty name.
    missing: &'static str,
    /// The message for a name with characters `allowed` refuses.
    invalid: &'static str,
    allowed: fn(&str) -> bool,
}

const APP_NAME: NameRule = NameRule {
    kind: "App",
    missing: "Missing Name",
    invalid: "Invalid app name",
    allowed: is_word_name,
};

const FN_NAME: NameRule = NameRule {
    kind: "Fn",
    missing: "Missing Fn name",
    invalid: "name must be a valid string",
    allowed: is_path_segment,
};

const TRIGGER_NAME: NameRule = NameRule {
    kind: "Trigger",
    missing: "Missing name on Trigger",
    invalid: "Invalid name for Trigger",
    allowed: is_word_name,
};

impl NameRule {
    /// The name is not empty.
    fn present(&self, name: &str) -> Result<(), FnError> {
        if name.is_empty() {
            return Err(bad_request(self.missing.into()));
        }
        Ok(())
    }

    /// At most [`MAX_NAME_LEN`] bytes, then only allowed characters (Fn's order).
    fn well_formed(&self, name: &str) -> Result<(), FnError> {
        if name.len() > MAX_NAME_LEN {
            return Err(bad_request(format!(
                "{} name must be {MAX_NAME_LEN} characters or less",
                self.kind
            )));
        }
        if !(self.allowed)(name) {
            return Err(bad_request(self.invalid.into()));
        }
        Ok(())
    }

    /// [`NameRule::present`], then [`NameRule::well_formed`].
    fn check(&self, name: &str) -> Result<(), FnError> {
        self.present(name)?;
        self.well_formed(name)
    }
}

/// An app or fn shape: unset or one of [`APP_SHAPES`].
fn check_shape(shape: &str, invalid: &str) -> Result<(), FnError> {
    if !shape.is_empty() && !APP_SHAPES.contains(&shape) {
        return Err(bad_request(invalid.into()));
    }
    Ok(())
}

/// Fills the creation and update times that are still unset (all three kinds, on create).
fn stamp_times(created_at: &mut DateTime, updated_at: &mut DateTime) {
    let now = DateTime::now();
    if created_at.is_zero() {
        *created_at = now;
    }
    if updated_at.is_zero() {
        *updated_at = now;
    }
}

/// Fn's annotation rules: printable-ASCII keys of at most 128 bytes, values that are not `""` or
/// `null` and at most 512 bytes of compact JSON, at most 100 keys.
pub fn validate_annotations(annotations: &Annotations) -> Result<(), FnError> {
    for (key, value) in annotations {
        if key.is_empty() || !key.bytes().all(|b| (b'!'..=b'~').contains(&b)) {
            return Err(bad_request(
                "Invalid annotation key, annotation keys must be non-empty ascii strings excluding whitespace"
                    .into(),
            ));
        }
        if key.len() > MAX_ANNOTATION_KEY_BYTES {
            return Err(bad_request(format!(
                "Invalid annotation key length, annotation keys may not be larger than {MAX_ANNOTATION_KEY_BYTES} bytes"
            )));
        }
        if is_empty_annotation(value) {
            return Err(bad_request(
                "Invalid annotation value, annotation values may only be non-empty strings, numbers, objects, or arrays"
                    .into(),
            ));
        }
        if value.to_string().len() > MAX_ANNOTATION_VALUE_BYTES {
            return Err(bad_request(format!(
                "Invalid annotation value length, annotation values may not be larger than {MAX_ANNOTATION_VALUE_BYTES} bytes when serialized as JSON"
            )));
        }
    }
    if annotations.len() > MAX_ANNOTATION_KEYS {
        return Err(bad_request(format!(
            "Invalid annotation change, new key(s) exceed maximum permitted number of annotations keys ({MAX_ANNOTATION_KEYS})"
        )));
    }
    Ok(())
}

fn is_empty_annotation(v: &serde_json::Value) -> bool {
    v.is_null() || v.as_str() == Some("")
}

/// Fn's PUT rule for annotations: `""`/`null` deletes a key, anything else sets it, absent keys stay.
pub fn merge_annotations(into: &mut Annotations, patch: &Annotations) {
    for (k, v) in patch {
        if is_empty_annotation(v) {
            into.remove(k);
        } else {
            into.insert(k.clone(), v.clone());
        }
    }
}

/// Fn's PUT rule for config: `""` deletes a key, anything else sets it, absent keys stay.
pub fn merge_config(into: &mut Config, patch: &Config) {
    for (k, v) in patch {
        if v.is_empty() {
            into.remove(k);
        } else {
            into.insert(k.clone(), v.clone());
        }
    }
}

/// The scheme of a URL as Go's `url.Parse` sees it (lower-cased), or "" if there is none.
fn url_scheme(url: &str) -> String {
    match url.split_once(':') {
        Some((scheme, _))
            if scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)) =>
        {
            scheme.to_ascii_lowercase()
        }
        _ => String::new(),
    }
}

impl App {
    /// Fn's checks for a create body (after which [`App::validate`] runs).
    pub fn validate_create(&self) -> Result<(), FnError> {
        if !self.id.is_empty() {
            return Err(bad_request("App ID cannot be supplied on create".into()));
        }
        self.validate()
    }

    /// Fn's checks on a complete app: name, annotations, syslog URL, shape.
    pub fn validate(&self) -> Result<(), FnError> {
        APP_NAME.check(&self.name)?;
        validate_annotations(&self.annotations)?;
        if let Some(url) = self.syslog_url.as_deref().filter(|u| !u.is_empty()) {
            let scheme = url_scheme(url.trim());
            if !["udp", "tcp", "unix", "unixgram", "tcp+tls"].contains(&scheme.as_str()) {
                return Err(bad_request(format!(
                    "invalid syslog url: {url:?} invalid scheme, only [tcp, udp, unix, unixgram, tcp+tls] are supported"
                )));
            }
        }
        check_shape(&self.shape, "Invalid app shape")
    }

    /// Applies a PUT body: merges config and annotations, sets or (with `""`) clears the syslog
    /// URL; bumps `updated_at` if anything changed. Name, ID and times in `patch` are ignored.
    pub fn apply_patch(&mut self, patch: &App) {
        let before = self.clone();
        merge_config(&mut self.config, &patch.config);
        merge_annotations(&mut self.annotations, &patch.annotations);
        if let Some(url) = &patch.syslog_url {
            self.syslog_url = if url.is_empty() { None } else { Some(url.clone()) };
        }
        if *self != before {
            self.updated_at = DateTime::now();
        }
    }

    /// Fills server-side values on create: creation and update times.
    pub fn set_defaults(&mut self) {
        stamp_times(&mut self.created_at, &mut self.updated_at);
    }
}

impl Function {
    /// Memory in MB, or the default when unset or 0.
    pub fn memory_mb(&self) -> u64 {
        self.memory.filter(|m| *m != 0).unwrap_or(DEFAULT_MEMORY_MB)
    }

    /// Timeout in seconds, or the default when unset or 0.
    pub fn timeout_secs(&self) -> i32 {
        self.timeout.filter(|t| *t != 0).unwrap_or(DEFAULT_TIMEOUT_SECS)
    }

    /// Idle timeout in seconds, or the default when unset or 0.
    pub fn idle_timeout_secs(&self) -> i32 {
        self.idle_timeout
            .filter(|t| *t != 0)
            .unwrap_or(DEFAULT_IDLE_TIMEOUT_SECS)
    }

    /// Fills Fn's defaults (memory 128, timeout 30, idle_timeout 30) and the times.
    pub fn set_defaults(&mut self) {
        self.memory = Some(self.memory_mb());
        self.timeout = Some(self.timeout_secs());
        self.idle_timeout = Some(self.idle_timeout_secs());
        stamp_times(&mut self.created_at, &mut self.updated_at);
    }

    /// Fn's checks for a create body (defaults not yet applied).
    pub fn validate_create(&self) -> Result<(), FnError> {
        if !self.id.is_empty() {
            return Err(bad_request("ID cannot be provided for Fn creation".into()));
        }
        self.validate()
    }

    /// Fn's checks: name, app, image, ranges (unset values count as their defaults), annotations.
    pub fn validate(&self) -> Result<(), FnError> {
        FN_NAME.check(&self.name)?;
        if self.app_id.is_empty() {
            return Err(bad_request("Missing AppID on Fn".into()));
        }
        if self.image.is_empty() {
            return Err(bad_request("Missing image on Fn".into()));
        }
        if !(1..=MAX_TIMEOUT_SECS).contains(&self.timeout_secs()) {
            return Err(bad_request(format!(
                "timeout value is out of range, must be between 0 and {MAX_TIMEOUT_SECS}"
            )));
        }
        if !(1..=MAX_IDLE_TIMEOUT_SECS).contains(&self.idle_timeout_secs()) {
            return Err(bad_request(format!(
                "idle_timeout value is out of range, must be between 0 and {MAX_IDLE_TIMEOUT_SECS}"
            )));
        }
        if !(1..=MAX_MEMORY_MB).contains(&self.memory_mb()) {
            return Err(bad_request(format!(
                "memory value is out of range. It should be between 0 and {MAX_MEMORY_MB}"
            )));
        }
        check_shape(&self.shape, "Invalid fn shape")?;
        validate_annotations(&self.annotations)
    }

    /// Applies a (possibly partial) PUT body as Fn does: non-empty image and non-zero resources
    /// replace, config and annotations merge; bumps `updated_at` if anything changed. Name, app and
    /// ID are not changed here (Fn rejects changing them; see [`Function::check_immutable`]).
    pub fn apply_patch(&mut self, patch: &Function) {
        let before = self.clone();
        if !patch.image.is_empty() {
            self.image.clone_from(&patch.image);
        }
        if let Some(m) = patch.memory.filter(|m| *m != 0) {
            self.memory = Some(m);
        }
        if let Some(t) = patch.timeout.filter(|t| *t != 0) {
            self.timeout = Some(t);
        }
        if let Some(t) = patch.idle_timeout.filter(|t| *t != 0) {
            self.idle_timeout = Some(t);
        }
        if !patch.shape.is_empty() {
            self.shape.clone_from(&patch.shape);
        }
        merge_config(&mut self.config, &patch.config);
        merge_annotations(&mut self.annotations, &patch.annotations);
        if *self != before {
            self.updated_at = DateTime::now();
        }
    }

    /// A PUT body may not change the name or app of an fn (empty fields mean "unchanged").
    pub fn check_immutable(&self, patch: &Function) -> Result<(), FnError> {
        if (!patch.name.is_empty() && patch.name != self.name)
            || (!patch.app_id.is_empty() && patch.app_id != self.app_id)
        {
            return Err(bad_request("Fn names and IDs cannot be modified".into()));
        }
        if !patch.id.is_empty() && patch.id != self.id {
            return Err(bad_request("Fn ID in path does not match that in body".into()));
        }
        Ok(())
    }
}

impl Trigger {
    /// Fn's checks for a create body.
    pub fn validate_create(&self) -> Result<(), FnError> {
        if !self.id.is_empty() {
            return Err(bad_request("ID cannot be provided for Trigger creation".into()));
        }
        self.validate()
    }

    /// Fn's checks: name, app, fn, type `http`, source, annotations.
    pub fn validate(&self) -> Result<(), FnError> {
        // Fn checks the app between the name's presence and its form.
        TRIGGER_NAME.present(&self.name)?;
        if self.app_id.is_empty() {
            return Err(bad_request("Missing App ID on Trigger".into()));
        }
        TRIGGER_NAME.well_formed(&self.name)?;
        if self.fn_id.is_empty() {
            return Err(bad_request("Missing Fn ID on Trigger".into()));
        }
        if self.trigger_type != TRIGGER_TYPE_HTTP {
            return Err(bad_request("Trigger Type Not Supported".into()));
        }
        if self.source.is_empty() {
            return Err(bad_request("Missing Trigger Source".into()));
        }
        validate_annotations(&self.annotations)
    }

    /// Applies a PUT body as Fn does: non-empty name/source/app/fn replace, annotations merge;
    /// bumps `updated_at` if anything changed.
    pub fn apply_patch(&mut self, patch: &Trigger) {
        let before = self.clone();
        for (field, new) in [
            (&mut self.app_id, &patch.app_id),
            (&mut self.fn_id, &patch.fn_id),
            (&mut self.name, &patch.name),
            (&mut self.source, &patch.source),
        ] {
            if !new.is_empty() {
                field.clone_from(new);
            }
        }
        merge_annotations(&mut self.annotations, &patch.annotations);
        if *self != before {
            self.updated_at = DateTime::now();
        }
    }

    /// Fills the creation and update times.
    pub fn set_defaults(&mut self) {
        stamp_times(&mut self.created_at, &mut self.updated_at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn msg(r: Result<(), FnError>) -> String {
        let e = r.expect_err("expected a validation error");
        assert_eq!(e.code(), 400, "{e}");
        e.message().to_owned()
    }

    #[test]
    fn cli_create_bodies_decode() {
        // Bodies as the Fn CLI sends them (fn-v2-api.md §2).
        let app: App = serde_json::from_str(
            r#"{"name":"cliapp","config":{"K":"V"},"annotations":{"k":"v"},"syslog_url":"tcp://h:1",
                "created_at":"0001-01-01T00:00:00.000Z","updated_at":"0001-01-01T00:00:00.000Z"}"#,
        )
        .unwrap();
        assert_eq!(app.name, "cliapp");
        assert!(app.created_at.is_zero());
        app.validate_create().unwrap();

        let f: Function = serde_json::from_str(
            r#"{"app_id":"A","name":"hello","image":"img:1","memory":256,"timeout":60,"idle_timeout":10,
                "config":{},"annotations":{},"created_at":"0001-01-01T00:00:00.000Z","updated_at":"0001-01-01T00:00:00.000Z"}"#,
        )
        .unwrap();
        assert_eq!(
            (f.memory, f.timeout, f.idle_timeout),
            (Some(256), Some(60), Some(10))
        );
        f.validate_create().unwrap();

        let t: Trigger = serde_json::from_str(
            r#"{"app_id":"A","fn_id":"F","name":"hello-trigger","type":"http","source":"/hello",
                "created_at":"0001-01-01T00:00:00.000Z","updated_at":"0001-01-01T00:00:00.000Z"}"#,
        )
        .unwrap();
        assert_eq!(t.trigger_type, "http");
        t.validate_create().unwrap();
    }

    #[test]
    fn fn_defaults_and_output_shape() {
        let mut f = Function {
            name: "f".into(),
            app_id: "A".into(),
            image: "i".into(),
            ..Default::default()
        };
        f.set_defaults();
        assert_eq!(
            (f.memory, f.timeout, f.idle_timeout),
            (Some(128), Some(30), Some(30))
        );
        assert!(!f.created_at.is_zero() && !f.updated_at.is_zero());
        let v = serde_json::to_value(&f).unwrap();
        assert_eq!(v["config"], json!({}), "config is always printed for fns");
        assert!(v.get("annotations").is_none() && v.get("shape").is_none());
        assert_eq!(v["memory"], 128);
        let back: Function = serde_json::from_value(v).unwrap();
        assert_eq!(back.memory, Some(128));
        assert_eq!(back.created_at.to_string(), f.created_at.to_string());
    }

    #[test]
    fn fn_validation_messages() {
        let ok = Function {
            name: "f".into(),
            app_id: "A".into(),
            image: "i".into(),
            ..Default::default()
        };
        ok.validate().unwrap();
        let with = |g: fn(&mut Function)| {
            let mut f = ok.clone();
            g(&mut f);
            msg(f.validate())
        };
        assert_eq!(
            with(|f| f.memory = Some(99_999_999)),
            "memory value is out of range. It should be between 0 and 8192"
        );
        assert_eq!(
            with(|f| f.timeout = Some(301)),
            "timeout value is out of range, must be between 0 and 300"
        );
        assert_eq!(
            with(|f| f.timeout = Some(-1)),
            "timeout value is out of range, must be between 0 and 300"
        );
        assert_eq!(
            with(|f| f.idle_timeout = Some(3601)),
            "idle_timeout value is out of range, must be between 0 and 3600"
        );
        assert_eq!(with(|f| f.name.clear()), "Missing Fn name");
        assert_eq!(with(|f| f.name = "a/b".into()), "name must be a valid string");
        assert_eq!(
            with(|f| f.name = "x".repeat(256)),
            "Fn name must be 255 characters or less"
        );
        assert_eq!(with(|f| f.app_id.clear()), "Missing AppID on Fn");
        assert_eq!(with(|f| f.image.clear()), "Missing image on Fn");
        let mut f = ok.clone();
        f.id = "X".into();
        assert_eq!(msg(f.validate_create()), "ID cannot be provided for Fn creation");
        // Upper bounds are allowed.
        let mut f = ok.clone();
        (f.memory, f.timeout, f.idle_timeout) = (Some(8192), Some(300), Some(3600));
        f.validate().unwrap();
    }

    #[test]
    fn app_validation_messages() {
        let ok = App {
            name: "my_app-1".into(),
            ..Default::default()
        };
        ok.validate().unwrap();
        let with = |g: fn(&mut App)| {
            let mut a = ok.clone();
            g(&mut a);
            msg(a.validate())
        };
        assert_eq!(with(|a| a.name.clear()), "Missing Name");
        assert_eq!(with(|a| a.name = "&&%@!".into()), "Invalid app name");
        assert_eq!(with(|a| a.name = "a.b".into()), "Invalid app name");
        assert_eq!(
            with(|a| a.name = "7".repeat(256)),
            "App name must be 255 characters or less"
        );
        assert_eq!(
            with(|a| a.syslog_url = Some("yo".into())),
            "invalid syslog url: \"yo\" invalid scheme, only [tcp, udp, unix, unixgram, tcp+tls] are supported"
        );
        assert_eq!(with(|a| a.shape = "PDP11".into()), "Invalid app shape");
        assert!(
            with(|a| a.annotations = [(String::new(), json!("v"))].into())
                .starts_with("Invalid annotation key,")
        );
        assert!(
            with(|a| a.annotations = [("k".into(), json!(""))].into())
                .starts_with("Invalid annotation value,")
        );
        let mut a = ok.clone();
        a.syslog_url = Some("tcp+tls://logs:514".into());
        a.shape = "GENERIC_ARM".into();
        a.validate().unwrap();
        a.id = "x".into();
        assert_eq!(msg(a.validate_create()), "App ID cannot be supplied on create");
    }

    #[test]
    fn trigger_validation_messages() {
        let ok = Trigger {
            name: "t".into(),
            app_id: "A".into(),
            fn_id: "F".into(),
            trigger_type: "http".into(),
            source: "/x".into(),
            ..Default::default()
        };
        ok.validate().unwrap();
        let with = |g: fn(&mut Trigger)| {
            let mut t = ok.clone();
            g(&mut t);
            msg(t.validate())
        };
        assert_eq!(with(|t| t.name.clear()), "Missing name on Trigger");
        assert_eq!(with(|t| t.name = "a b".into()), "Invalid name for Trigger");
        assert_eq!(with(|t| t.app_id.clear()), "Missing App ID on Trigger");
        assert_eq!(with(|t| t.fn_id.clear()), "Missing Fn ID on Trigger");
        assert_eq!(
            with(|t| t.trigger_type = "cron".into()),
            "Trigger Type Not Supported"
        );
        assert_eq!(with(|t| t.source.clear()), "Missing Trigger Source");
        assert_eq!(
            with(|t| t.name = "x".repeat(256)),
            "Trigger name must be 255 characters or less"
        );
        // Fn's order: the app is checked before the name's length.
        assert_eq!(
            with(|t| {
                t.name = "x".repeat(256);
                t.app_id.clear();
            }),
            "Missing App ID on Trigger"
        );
    }

    #[test]
    fn put_merges_like_fn() {
        let mut f = Function {
            id: "F".into(),
            name: "f".into(),
            app_id: "A".into(),
            image: "img:1".into(),
            config: [("KEEP".into(), "1".into()), ("DROP".into(), "x".into())].into(),
            annotations: [(
                FN_INVOKE_ENDPOINT_ANNOTATION.to_owned(),
                json!("http://h/invoke/F"),
            )]
            .into(),
            ..Default::default()
        };
        f.set_defaults();
        let stamp = f.updated_at;
        // fn deploy's partial PUT.
        let patch: Function = serde_json::from_str(
            r#"{"created_at":"0001-01-01T00:00:00.000Z","id":"F","image":"img:2","memory":512,
                "updated_at":"0001-01-01T00:00:00.000Z","config":{"DROP":"","NEW":"n"}}"#,
        )
        .unwrap();
        f.check_immutable(&patch).unwrap();
        f.apply_patch(&patch);
        assert_eq!(
            (f.image.as_str(), f.memory, f.timeout),
            ("img:2", Some(512), Some(30))
        );
        assert_eq!(
            f.config,
            [("KEEP".into(), "1".into()), ("NEW".into(), "n".into())].into()
        );
        assert!(f.annotations.contains_key(FN_INVOKE_ENDPOINT_ANNOTATION));
        assert!(f.updated_at >= stamp);
        let bad = Function {
            name: "other".into(),
            ..Default::default()
        };
        assert_eq!(
            msg(f.check_immutable(&bad)),
            "Fn names and IDs cannot be modified"
        );

        // An unchanged PUT keeps updated_at.
        let mut app = App {
            name: "a".into(),
            ..Default::default()
        };
        app.set_defaults();
        let before = app.updated_at;
        app.apply_patch(&App::default());
        assert_eq!(app.updated_at, before);
        app.apply_patch(&App {
            syslog_url: Some("tcp://x:1".into()),
            ..Default::default()
        });
        assert_eq!(app.syslog_url.as_deref(), Some("tcp://x:1"));
        app.apply_patch(&App {
            syslog_url: Some(String::new()),
            ..Default::default()
        });
        assert_eq!(app.syslog_url, None);

        let mut t = Trigger {
            annotations: [(TRIGGER_HTTP_ENDPOINT_ANNOTATION.to_owned(), json!("e"))].into(),
            ..Default::default()
        };
        t.apply_patch(&Trigger {
            annotations: [("a/b".into(), json!("c"))].into(),
            ..Default::default()
        });
        assert_eq!(t.annotations.len(), 2, "annotations not in the PUT are kept");
        t.apply_patch(&Trigger {
            annotations: [("a/b".into(), json!(null))].into(),
            ..Default::default()
        });
        assert_eq!(t.annotations.len(), 1);
    }

    #[test]
    fn list_response_shape() {
        let l: ListResponse<App> = serde_json::from_str("{}").unwrap();
        assert!(l.items.is_empty() && l.next_cursor.is_empty());
        let l = ListResponse {
            items: vec![App {
                name: "a".into(),
                ..Default::default()
            }],
            next_cursor: String::new(),
        };
        let v = serde_json::to_value(&l).unwrap();
        assert!(v.get("next_cursor").is_none());
        assert_eq!(v["items"][0]["name"], "a");
        let l: ListResponse<Trigger> =
            serde_json::from_str(r#"{"items":null,"next_cursor":"cGczMA"}"#).unwrap();
        assert_eq!(l.next_cursor, "cGczMA");
        let v = serde_json::to_value(&l).unwrap();
        assert_eq!(v, json!({"items": [], "next_cursor": "cGczMA"}));
    }

    /// Found by fuzz/fuzz_targets/api_bodies.rs: an annotation number must read back as itself
    /// after the object is stored as JSON (serde_json's `float_roundtrip`).
    #[test]
    fn annotation_numbers_survive_storage() {
        let f: Function = serde_json::from_str(r#"{"annotations":{"n":5.333333333333333e125}}"#).unwrap();
        assert_eq!(f.annotations["n"].as_f64(), Some(5.333333333333333e125));
        let back: Function = serde_json::from_str(&serde_json::to_string(&f).unwrap()).unwrap();
        assert_eq!(back, f);
    }
}
