//! The call model that the LB sends in `TryCall.models_call_json`: Fn's `models.Call` with the same JSON
//! names, omitempty rules and encodings (`cpus` as a milli-CPU string, millisecond RFC 3339 times,
//! durations in ns). Unknown keys are ignored and `null` decodes as the zero value, as Go does.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, DeserializeOwned, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::datetime::DateTime;
use crate::error::FnError;

/// Largest `cpus` value Fn accepts: 1024 CPUs.
pub const MAX_MILLI_CPUS: u64 = 1_024_000;

/// Call type of a synchronous call (`type`).
pub const TYPE_SYNC: &str = "sync";
/// Call type of a detached call (`type`).
pub const TYPE_DETACHED: &str = "detached";

/// CPU share in milli-CPUs (1000 = one core); 0 means unlimited and is omitted from JSON.
///
/// JSON form is a string: `"250m"` on output; `"250m"`, `"0.25"`, `""` and `null` on input. A bare
/// number is rejected with Fn's "Invalid JSON", a bad string with Fn's "Cpus is invalid. ...".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MilliCpus(pub u64);

impl MilliCpus {
    /// True for 0 (unlimited).
    pub fn is_zero(&self) -> bool {
        self.0 == 0
    }

    /// Parses the string forms: `"250m"`, `"0.25"`, `""` (0). Surrounding spaces are ignored.
    pub fn parse(text: &str) -> Result<Self, FnError> {
        let t = text.trim();
        if t.is_empty() {
            return Ok(MilliCpus(0));
        }
        // Go's ParseUint/ParseFloat take no sign and no NaN/Inf here (NaN would pass Go's range check
        // and convert to garbage; we refuse it).
        if t.starts_with('+') {
            return Err(FnError::invalid_cpus());
        }
        let milli = if let Some(m) = t.strip_suffix('m') {
            m.parse::<u64>().ok().filter(|v| *v <= MAX_MILLI_CPUS)
        } else {
            t.parse::<f64>()
                .ok()
                .filter(|f| f.is_finite() && *f >= 0.0 && *f <= (MAX_MILLI_CPUS / 1000) as f64)
                .map(|f| (f * 1000.0) as u64) // truncates, as Go's conversion does
        };
        milli.map(MilliCpus).ok_or_else(FnError::invalid_cpus)
    }
}

impl fmt::Display for MilliCpus {
    /// `"250m"`; empty for 0, as Fn's `String()`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            Ok(())
        } else {
            write!(f, "{}m", self.0)
        }
    }
}

impl From<u64> for MilliCpus {
    fn from(v: u64) -> Self {
        MilliCpus(v)
    }
}

impl Serialize for MilliCpus {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MilliCpus {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        fn not_a_string<E: de::Error>(what: &str) -> E {
            E::custom(format_args!(
                "{}: cpus must be a string such as \"250m\" or \"0.25\", not {what}",
                FnError::invalid_json().message()
            ))
        }
        impl<'de> Visitor<'de> for V {
            type Value = MilliCpus;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a milli-CPU string such as \"250m\" or \"0.25\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<MilliCpus, E> {
                MilliCpus::parse(v).map_err(|e| E::custom(format_args!("{}; got {v:?}", e.message())))
            }
            fn visit_unit<E: de::Error>(self) -> Result<MilliCpus, E> {
                Ok(MilliCpus(0))
            }
            fn visit_none<E: de::Error>(self) -> Result<MilliCpus, E> {
                Ok(MilliCpus(0))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<MilliCpus, E> {
                Err(not_a_string(&format!("the number {v}")))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<MilliCpus, E> {
                Err(not_a_string(&format!("the number {v}")))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<MilliCpus, E> {
                Err(not_a_string(&format!("the number {v}")))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<MilliCpus, E> {
                Err(not_a_string(&format!("the boolean {v}")))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<MilliCpus, A::Error> {
                Err(not_a_string("an array"))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, _: A) -> Result<MilliCpus, A::Error> {
                Err(not_a_string("an object"))
            }
        }
        d.deserialize_any(V)
    }
}

/// Go leaves a field at its zero value when the JSON says `null`; serde would fail instead. For
/// `#[serde(deserialize_with = "null_default")]`, here and in the LB's registry models.
pub fn null_default<'de, D: Deserializer<'de>, T: Default + DeserializeOwned>(d: D) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

fn is_zero_i32(v: &i32) -> bool {
    *v == 0
}
fn is_zero_i64(v: &i64) -> bool {
    *v == 0
}
fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}
fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}

/// Fn's `models.Call` as it travels in `TryCall.models_call_json`.
///
/// Field order follows Fn's struct (so output reads like Go's); map keys are sorted like Go's.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CallModel {
    /// 26-character call ID, made on the LB and reused by the runner.
    #[serde(deserialize_with = "null_default")]
    pub id: String,
    /// `queued`, `running`, `success`, `error`, ... (the runner ignores it).
    #[serde(deserialize_with = "null_default")]
    pub status: String,
    /// Docker image.
    #[serde(skip_serializing_if = "String::is_empty", deserialize_with = "null_default")]
    pub image: String,
    /// Seconds before the call may run (async calls; unused here).
    #[serde(skip_serializing_if = "is_zero_i32", deserialize_with = "null_default")]
    pub delay: i32,
    /// `sync` or `detached` (JSON `type`).
    #[serde(
        rename = "type",
        skip_serializing_if = "String::is_empty",
        deserialize_with = "null_default"
    )]
    pub call_type: String,
    /// Stored input of async calls (unused here).
    #[serde(skip_serializing_if = "String::is_empty", deserialize_with = "null_default")]
    pub payload: String,
    /// Full URL of the request that made the call.
    #[serde(skip_serializing_if = "String::is_empty", deserialize_with = "null_default")]
    pub url: String,
    /// Method of the request that made the call.
    #[serde(skip_serializing_if = "String::is_empty", deserialize_with = "null_default")]
    pub method: String,
    /// Exec deadline in seconds (0 = immediate timeout on the runner).
    #[serde(skip_serializing_if = "is_zero_i32", deserialize_with = "null_default")]
    pub timeout: i32,
    /// Hot container idle time in seconds.
    #[serde(skip_serializing_if = "is_zero_i32", deserialize_with = "null_default")]
    pub idle_timeout: i32,
    /// `/tmp` tmpfs size in MB (0 = default).
    #[serde(skip_serializing_if = "is_zero_u32", deserialize_with = "null_default")]
    pub tmpfs_size: u32,
    /// Memory in MB.
    #[serde(skip_serializing_if = "is_zero_u64", deserialize_with = "null_default")]
    pub memory: u64,
    /// CPU share (0 = unlimited).
    #[serde(skip_serializing_if = "MilliCpus::is_zero")]
    pub cpus: MilliCpus,
    /// Container environment (app config overridden by fn config, plus `FN_*`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty", deserialize_with = "null_default")]
    pub config: BTreeMap<String, String>,
    /// App and fn annotations merged: any JSON values.
    #[serde(skip_serializing_if = "BTreeMap::is_empty", deserialize_with = "null_default")]
    pub annotations: BTreeMap<String, serde_json::Value>,
    /// Request headers passed to the function.
    #[serde(skip_serializing_if = "BTreeMap::is_empty", deserialize_with = "null_default")]
    pub headers: BTreeMap<String, Vec<String>>,
    /// Syslog URL of the app.
    #[serde(skip_serializing_if = "String::is_empty", deserialize_with = "null_default")]
    pub syslog_url: String,
    /// When the call completed (zero until then; always printed).
    pub completed_at: DateTime,
    /// When the call was created (the runner overwrites it with its own clock).
    pub created_at: DateTime,
    /// When the call started.
    pub started_at: DateTime,
    /// Execution time in nanoseconds (Go `time.Duration`).
    #[serde(skip_serializing_if = "is_zero_i64", deserialize_with = "null_default")]
    pub execution_duration: i64,
    /// Driver metrics of the run (Fn's `drivers.Stats`, a list), kept as raw JSON.
    #[serde(skip_serializing_if = "Vec::is_empty", deserialize_with = "null_default")]
    pub stats: Vec<serde_json::Value>,
    /// Why the call failed, when `status` is `error`.
    #[serde(skip_serializing_if = "String::is_empty", deserialize_with = "null_default")]
    pub error: String,
    /// App ID.
    #[serde(deserialize_with = "null_default")]
    pub app_id: String,
    /// App name.
    #[serde(deserialize_with = "null_default")]
    pub app_name: String,
    /// Trigger ID ("" for direct invokes).
    #[serde(deserialize_with = "null_default")]
    pub trigger_id: String,
    /// Fn ID.
    #[serde(deserialize_with = "null_default")]
    pub fn_id: String,
}

/// `models_call_json` that does not decode into a [`CallModel`].
#[derive(Debug, thiserror::Error)]
#[error("invalid call model JSON: {source}")]
pub struct CallModelError {
    #[source]
    source: serde_json::Error,
}

impl CallModelError {
    /// 1-based line of the error in the JSON text (0 if unknown).
    pub fn line(&self) -> usize {
        self.source.line()
    }

    /// 1-based column of the error in the JSON text (0 if unknown).
    pub fn column(&self) -> usize {
        self.source.column()
    }

    /// The API error Fn answers for this failure, if it is one: a bad `cpus` value is Fn's 400
    /// "Invalid JSON" (not a string) or 400 "Cpus is invalid. ..." (bad string). Anything else
    /// (syntax, wrong types) is not an API error in Fn: the runner reports `errorCode` 0 with
    /// [`CallModelError`]'s text.
    pub fn api_error(&self) -> Option<FnError> {
        let text = self.source.to_string();
        let invalid_json = FnError::invalid_json();
        let invalid_cpus = FnError::invalid_cpus();
        if text.starts_with(invalid_cpus.message()) {
            Some(invalid_cpus)
        } else if text.starts_with(&format!("{}: cpus", invalid_json.message())) {
            Some(invalid_json)
        } else {
            None
        }
    }
}

impl CallModel {
    /// Decodes `models_call_json`. Unknown keys are ignored.
    pub fn from_json(text: &str) -> Result<CallModel, CallModelError> {
        // serde's derived struct decoding also accepts a JSON array (fields by position); Go does not.
        if text.trim_start().starts_with('[') {
            let source =
                <serde_json::Error as de::Error>::invalid_type(de::Unexpected::Seq, &"a JSON object");
            return Err(CallModelError { source });
        }
        serde_json::from_str(text).map_err(|source| CallModelError { source })
    }

    /// Encodes as Fn does (`json.Marshal`): compact, omitempty, sorted map keys.
    pub fn to_json(&self) -> String {
        // Every field is a string, number, list or map with string keys: encoding cannot fail.
        serde_json::to_string(self).expect("CallModel always encodes")
    }

    /// True for a detached call.
    pub fn is_detached(&self) -> bool {
        self.call_type == TYPE_DETACHED
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpus_forms() {
        let de = |s: &str| serde_json::from_str::<MilliCpus>(s).map(|c| c.0);
        assert_eq!(de("\"250m\"").unwrap(), 250);
        assert_eq!(de("\"0.25\"").unwrap(), 250);
        assert_eq!(de("\" 1.5 \"").unwrap(), 1500);
        assert_eq!(de("\"1024\"").unwrap(), 1_024_000);
        assert_eq!(de("\"1024000m\"").unwrap(), 1_024_000);
        assert_eq!(de("\"\"").unwrap(), 0);
        assert_eq!(de("null").unwrap(), 0);
        for bad in [
            "\"abc\"",
            "\"1024001m\"",
            "\"-1m\"",
            "\"2000\"",
            "\"NaN\"",
            "\"-0.5\"",
            "\"+5m\"",
        ] {
            let err = de(bad).unwrap_err().to_string();
            assert!(err.starts_with("Cpus is invalid."), "{bad}: {err}");
        }
        for bad in ["250", "0.25", "true", "[]", "{}"] {
            let err = de(bad).unwrap_err().to_string();
            assert!(err.starts_with("Invalid JSON: cpus"), "{bad}: {err}");
        }
        assert_eq!(serde_json::to_string(&MilliCpus(250)).unwrap(), "\"250m\"");
        assert_eq!(MilliCpus(0).to_string(), "");
    }

    #[test]
    fn api_error_classification() {
        let e = CallModel::from_json(r#"{"cpus":250}"#).unwrap_err();
        assert_eq!(e.api_error(), Some(FnError::invalid_json()));
        let e = CallModel::from_json(r#"{"cpus":"lots"}"#).unwrap_err();
        assert_eq!(e.api_error(), Some(FnError::invalid_cpus()));
        let e = CallModel::from_json(r#"{"memory":"big"}"#).unwrap_err();
        assert_eq!(e.api_error(), None);
        assert!(e.to_string().contains("line 1 column"), "{e}");
        let e = CallModel::from_json("{\n\"id\": }").unwrap_err();
        assert_eq!((e.line(), e.api_error()), (2, None));
    }

    #[test]
    fn nulls_are_zero_values() {
        let c = CallModel::from_json(
            r#"{"id":null,"config":null,"headers":null,"stats":null,"timeout":null,"created_at":null}"#,
        )
        .unwrap();
        assert_eq!(c, CallModel::default());
    }

    #[test]
    fn default_encodes_only_always_present_keys() {
        let v: serde_json::Value = serde_json::from_str(&CallModel::default().to_json()).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        let mut want = vec![
            "id",
            "status",
            "completed_at",
            "created_at",
            "started_at",
            "app_id",
            "app_name",
            "trigger_id",
            "fn_id",
        ];
        want.sort();
        assert_eq!(keys, want);
        assert_eq!(v["created_at"], "0001-01-01T00:00:00.000Z");
    }

    /// Found by fuzz/fuzz_targets/call_json.rs: a time finer than a millisecond decodes in full but
    /// encodes at milliseconds (Fn's `common.DateTime` does the same), so the first re-encoding
    /// changes the model; from there on encoding is stable.
    #[test]
    fn sub_millisecond_times_encode_at_millis_then_stay_stable() {
        let m = CallModel::from_json(r#"{"id":"c","created_at":"2024-05-01T10:11:12.3451Z"}"#).unwrap();
        let json = m.to_json();
        assert!(
            json.contains(r#""created_at":"2024-05-01T10:11:12.345Z""#),
            "{json}"
        );
        let again = CallModel::from_json(&json).unwrap();
        assert_ne!(again, m, "sub-millisecond digits are dropped by the encoding");
        assert_eq!(again.created_at.to_string(), m.created_at.to_string());
        assert_eq!(again.to_json(), json);
        assert_eq!(CallModel::from_json(&again.to_json()).unwrap(), again);
    }

    /// Found by fuzz/fuzz_targets/call_json.rs: without serde_json's `float_roundtrip` a number in
    /// an annotation could come back one ulp off after decode -> encode -> decode.
    #[test]
    fn annotation_numbers_round_trip_exactly() {
        let text = r#"{"annotations":{"a":8.888888888888799e52,"b":5.333333333333333e125,"c":0.1}}"#;
        let m = CallModel::from_json(text).unwrap();
        assert_eq!(m.annotations["a"].as_f64(), Some(8.888888888888799e52));
        let again = CallModel::from_json(&m.to_json()).unwrap();
        assert_eq!(again, m);
    }
}
