//! The call model JSON (`TryCall.models_call_json`) matches Fn's: the sample produced by Fn's Go code
//! (engage-protocol.md §2.2) round-trips exactly, `cpus` takes all of Fn's forms, omitempty drops what
//! Fn drops, and bad input gives a clear error.

use std::collections::BTreeMap;

use ferrofn_common::call::{CallModel, MilliCpus};
use ferrofn_common::datetime::DateTime;
use ferrofn_common::error::FnError;
use serde_json::{Value, json};

/// §2.2's sample with the elided IDs ("01APP...", "01FN...") filled in.
const SAMPLE: &str = r#"{"id":"01M8GDTSH50000000000000001","status":"running","image":"fnproject/hello:0.0.1","type":"sync",
 "url":"http://127.0.0.1:8080/invoke/01FNID00000000000000000000","method":"POST","timeout":30,
 "idle_timeout":30,"memory":128,"cpus":"250m",
 "config":{"A":"1","B":"2","FN_APP_ID":"01M8GDTSH5APP0000000000001","FN_FN_ID":"01FNID00000000000000000000","FN_MEMORY":"128","FN_TYPE":"sync"},
 "headers":{"Content-Type":["application/json"],"Fn-Invoke-Type":["sync"]},
 "completed_at":"0001-01-01T00:00:00.000Z","created_at":"2026-11-28T06:35:10.245Z",
 "started_at":"0001-01-01T00:00:00.000Z","app_id":"01M8GDTSH5APP0000000000001","app_name":"myapp","trigger_id":"","fn_id":"01FNID00000000000000000000"}"#;

fn keys(json: &str) -> Vec<String> {
    let v: Value = serde_json::from_str(json).unwrap();
    v.as_object().unwrap().keys().cloned().collect()
}

#[test]
fn fn_sample_round_trips_exactly() {
    let call = CallModel::from_json(SAMPLE).expect("the Fn sample decodes");
    assert_eq!(call.id, "01M8GDTSH50000000000000001");
    assert_eq!(call.call_type, "sync");
    assert_eq!((call.timeout, call.idle_timeout, call.memory), (30, 30, 128));
    assert_eq!(call.cpus, MilliCpus(250));
    assert_eq!(call.config["FN_TYPE"], "sync");
    assert_eq!(call.headers["Fn-Invoke-Type"], ["sync"]);
    assert!(call.completed_at.is_zero() && call.started_at.is_zero());
    assert_eq!(call.created_at.to_string(), "2026-11-28T06:35:10.245Z");
    assert_eq!(call.trigger_id, "");

    let out = call.to_json();
    let original: Value = serde_json::from_str(SAMPLE).unwrap();
    let reencoded: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(reencoded, original);
    // Compact like Go's json.Marshal, and map keys sorted.
    assert!(!out.contains(": ") && !out.contains('\n'), "{out}");
    assert!(out.contains(r#""config":{"A":"1","B":"2","FN_APP_ID""#), "{out}");
}

#[test]
fn cpus_forms() {
    let cpus = |v: &str| CallModel::from_json(&format!(r#"{{"cpus":{v}}}"#)).map(|c| c.cpus.0);
    assert_eq!(cpus(r#""250m""#).unwrap(), 250);
    assert_eq!(cpus(r#""0.25""#).unwrap(), 250);
    assert_eq!(cpus(r#""2""#).unwrap(), 2000);
    assert_eq!(cpus(r#""""#).unwrap(), 0);
    assert_eq!(cpus("null").unwrap(), 0);
    assert_eq!(CallModel::from_json("{}").unwrap().cpus, MilliCpus(0));

    let err = cpus("250").unwrap_err();
    assert!(err.to_string().contains("Invalid JSON"), "{err}");
    assert_eq!(err.api_error(), Some(FnError::invalid_json()));

    for bad in [r#""lots""#, r#""1024001m""#, r#""2000""#, r#""-1""#] {
        let err = cpus(bad).unwrap_err();
        assert!(err.to_string().contains("Cpus is invalid"), "{bad}: {err}");
        assert_eq!(err.api_error().map(|e| e.code()), Some(400), "{bad}");
    }

    // Output is always the milli form, and 0 is omitted.
    let mut call = CallModel {
        cpus: MilliCpus(1500),
        ..Default::default()
    };
    let v: Value = serde_json::from_str(&call.to_json()).unwrap();
    assert_eq!(v["cpus"], "1500m");
    call.cpus = MilliCpus(0);
    assert!(!keys(&call.to_json()).contains(&"cpus".to_owned()));
}

#[test]
fn invalid_json_is_a_clear_error() {
    let err = CallModel::from_json(r#"{"id":"x","memory":"lots"}"#).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("invalid call model JSON"), "{text}");
    assert!(text.contains("line 1 column"), "{text}");
    assert_eq!(
        err.api_error(),
        None,
        "a type error is not an API error in Fn (errorCode 0)"
    );

    let err = CallModel::from_json("{\"id\":\"x\",\n\"timeout\":30,\n").unwrap_err();
    assert_eq!(err.line(), 3, "{err}");

    assert!(CallModel::from_json("[]").is_err());
    assert!(
        CallModel::from_json(r#"{"created_at":"yesterday"}"#)
            .unwrap_err()
            .to_string()
            .contains("yesterday")
    );
    // Unknown keys are ignored, as Go does.
    let call = CallModel::from_json(r#"{"id":"x","priority":2,"format":"http-stream","path":"/"}"#).unwrap();
    assert_eq!(call.id, "x");
}

#[test]
fn every_field_survives_a_round_trip() {
    let call = CallModel {
        id: "01M8GDTSH50000000000000002".into(),
        status: "error".into(),
        image: "img:1".into(),
        delay: 3,
        call_type: "detached".into(),
        payload: "p".into(),
        url: "http://h/t/app/src?q=1".into(),
        method: "PUT".into(),
        timeout: 60,
        idle_timeout: 120,
        tmpfs_size: 64,
        memory: 256,
        cpus: MilliCpus(500),
        config: BTreeMap::from([("K".into(), "V".into())]),
        annotations: BTreeMap::from([
            (
                "fnproject.io/fn/invokeEndpoint".into(),
                json!("http://h/invoke/F"),
            ),
            ("n".into(), json!(1)),
            ("obj".into(), json!({"a": [1, 2], "b": null})),
        ]),
        headers: BTreeMap::from([("Fn-Http-H-X".into(), vec!["1".into(), "2".into()])]),
        syslog_url: "tcp://logs:514".into(),
        completed_at: DateTime::parse("2026-11-28T06:35:11.500Z").unwrap(),
        created_at: DateTime::parse("2026-11-28T06:35:10.245Z").unwrap(),
        started_at: DateTime::parse("2026-11-28T06:35:10.300Z").unwrap(),
        execution_duration: 1_200_000_000,
        stats: vec![json!({"timestamp": "2026-11-28T06:35:11Z", "metrics": {"mem": 1}})],
        error: "function failed".into(),
        app_id: "A".into(),
        app_name: "app".into(),
        trigger_id: "T".into(),
        fn_id: "F".into(),
    };
    let text = call.to_json();
    assert_eq!(CallModel::from_json(&text).unwrap(), call);
    assert!(call.is_detached());
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["type"], "detached");
    assert_eq!(v["execution_duration"], 1_200_000_000_i64);
    assert_eq!(v["completed_at"], "2026-11-28T06:35:11.500Z");
    assert_eq!(v.as_object().unwrap().len(), 27, "every field is written: {text}");
}

#[test]
fn omitempty_rules() {
    let always = [
        "app_id",
        "app_name",
        "completed_at",
        "created_at",
        "fn_id",
        "id",
        "started_at",
        "status",
        "trigger_id",
    ];
    assert_eq!(keys(&CallModel::default().to_json()), always);
    let v: Value = serde_json::from_str(&CallModel::default().to_json()).unwrap();
    for k in ["completed_at", "created_at", "started_at"] {
        assert_eq!(v[k], "0001-01-01T00:00:00.000Z");
    }
    for k in ["app_id", "app_name", "fn_id", "id", "status", "trigger_id"] {
        assert_eq!(v[k], "", "{k} is written even when empty");
    }

    // Empty maps and lists are dropped like zero numbers and empty strings.
    let call = CallModel {
        config: BTreeMap::new(),
        headers: BTreeMap::new(),
        stats: vec![],
        timeout: 0,
        ..Default::default()
    };
    assert_eq!(keys(&call.to_json()), always);

    // Each droppable field appears once it is non-zero.
    type Setter = fn(&mut CallModel);
    let set: [(&str, Setter); 18] = [
        ("image", |c| c.image = "i".into()),
        ("delay", |c| c.delay = 1),
        ("type", |c| c.call_type = "sync".into()),
        ("payload", |c| c.payload = "p".into()),
        ("url", |c| c.url = "u".into()),
        ("method", |c| c.method = "GET".into()),
        ("timeout", |c| c.timeout = 1),
        ("idle_timeout", |c| c.idle_timeout = 1),
        ("tmpfs_size", |c| c.tmpfs_size = 1),
        ("memory", |c| c.memory = 1),
        ("cpus", |c| c.cpus = MilliCpus(1)),
        ("config", |c| _ = c.config.insert("a".into(), "b".into())),
        ("annotations", |c| {
            _ = c.annotations.insert("a".into(), json!("b"))
        }),
        ("headers", |c| _ = c.headers.insert("a".into(), vec![])),
        ("syslog_url", |c| c.syslog_url = "tcp://x".into()),
        ("execution_duration", |c| c.execution_duration = 1),
        ("stats", |c| c.stats.push(json!({}))),
        ("error", |c| c.error = "e".into()),
    ];
    for (key, apply) in set {
        let mut c = CallModel::default();
        apply(&mut c);
        let k = keys(&c.to_json());
        assert!(k.contains(&key.to_owned()), "{key} written when set: {k:?}");
        assert_eq!(k.len(), always.len() + 1, "{key}");
    }
}
