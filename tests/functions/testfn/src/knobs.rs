//! The per-call knobs read from the request's JSON object (fn-test-utils' field names, plus
//! ferrofn's own additions). Parsing is lenient: a field of the wrong type is ignored rather than
//! failing the call, so one typo cannot turn a behaviour test into a decode-error test.

use serde_json::{Map, Value};

/// A header name with the values expected or returned for it.
pub type HeaderSpec = Vec<(String, Vec<String>)>;

/// Everything a call can ask the function to do. Field docs name the JSON key.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Knobs {
    /// `echoContent`: echoed in `request`, repeated `trailerRepeat` times in `trailer`.
    pub echo_content: Option<String>,
    /// `sleepTime` (ms): sleep before building the response.
    pub sleep_ms: u64,
    /// `postSleepTime` (ms): sleep after building the response, before it is returned.
    pub post_sleep_ms: u64,
    /// `responseCode`: the user status (`Fn-Http-Status` for HTTP-trigger calls).
    pub response_code: Option<u16>,
    /// `responseContentType` (or fn-test-utils' misspelt `jasonContentType`).
    pub content_type: Option<String>,
    /// `returnHeaders` `{name: [values]}`: added to the response.
    pub return_headers: HeaderSpec,
    /// `expectHeaders` `{name: [values]}`: the process exits (code 1) if the request differs.
    pub expect_headers: HeaderSpec,
    /// `isEmptyBody`: answer without a body.
    pub empty_body: bool,
    /// `trailerRepeat`: copies of `echoContent` in `trailer`.
    pub trailer_repeat: usize,
    /// `invalidResponse`: prefix the JSON with a non-JSON sentence.
    pub invalid_response: bool,
    /// `postOutGarbage`: appended to the body after the JSON.
    pub post_out_garbage: Option<String>,
    /// `postErrGarbage`: written to stderr after the call.
    pub post_err_garbage: Option<String>,
    /// `isDebug`: log request/headers/config to stderr, add `DockerId`/`DockerHostname` to `data`.
    pub debug: bool,
    /// `isCrash`: exit(1) before answering.
    pub crash: bool,
    /// `isExit` + `exitCode`: exit with that code before answering.
    pub exit_code: Option<i32>,
    /// `isShutdown`: stop the server once this call is handled.
    pub shutdown: bool,
    /// `allocateMemory` (bytes): allocate, touch and hold until the next call.
    pub allocate_memory: u64,
    /// `leakMemory` (bytes): allocate, touch and never free (cumulative).
    pub leak_memory: u64,
    /// `readFile` (+ `readFileSize`): read (the first N bytes of) a file into `data`.
    pub read_file: Option<String>,
    /// `readFileSize`.
    pub read_file_size: Option<u64>,
    /// `createFile` (+ `createFileSize`): write a file of N bytes; an error goes into `data`.
    pub create_file: Option<String>,
    /// `createFileSize`.
    pub create_file_size: u64,
    /// `echoBody` (ferrofn): stream the raw request body back as the response body.
    pub echo_body: bool,
    /// `responseSize` (ferrofn): answer exactly N bytes of `a..z` pattern, streamed.
    pub response_size: Option<u64>,
    /// `httpStatus` (ferrofn): the raw status of the UDS response (e.g. 502, 504, 500).
    pub http_status: Option<u16>,
    /// `writeBeforeRead` (ferrofn): answer before reading the rest of the request body.
    pub write_before_read: bool,
    /// `stdout` (ferrofn): line(s) printed to stdout during the call.
    pub stdout: Vec<String>,
    /// `stderr` (ferrofn): line(s) printed to stderr during the call.
    pub stderr: Vec<String>,
    /// `forkBomb` (ferrofn): start up to N sleeping copies of the function's binary, stopping at
    /// the first the kernel refuses (the container's pids limit).
    pub fork_bomb: u64,
    /// `floodOutput` (ferrofn, bytes): write that much to stdout and as much to stderr.
    pub flood_output: u64,
    /// `floodOutputAfter` (ferrofn, bytes): write that much to stderr from a background thread,
    /// starting a second after the call (output between calls).
    pub flood_output_after: u64,
    /// `connect` (ferrofn): `unix:<path>` / `tcp:<ip:port>` targets to try to connect to.
    pub connect: Vec<String>,
}

impl Knobs {
    /// Reads the knobs from the request's JSON object; anything else yields the defaults.
    pub fn from_json(value: &Value) -> Self {
        let Some(o) = value.as_object() else {
            return Knobs::default();
        };
        Knobs {
            echo_content: text(o, "echoContent"),
            sleep_ms: uint(o, "sleepTime").unwrap_or(0),
            post_sleep_ms: uint(o, "postSleepTime").unwrap_or(0),
            response_code: uint(o, "responseCode").and_then(|c| u16::try_from(c).ok()),
            content_type: text(o, "responseContentType").or_else(|| text(o, "jasonContentType")),
            return_headers: header_spec(o, "returnHeaders"),
            expect_headers: header_spec(o, "expectHeaders"),
            empty_body: flag(o, "isEmptyBody"),
            trailer_repeat: uint(o, "trailerRepeat")
                .and_then(|n| usize::try_from(n).ok())
                .unwrap_or(0),
            invalid_response: flag(o, "invalidResponse"),
            post_out_garbage: text(o, "postOutGarbage"),
            post_err_garbage: text(o, "postErrGarbage"),
            debug: flag(o, "isDebug"),
            crash: flag(o, "isCrash"),
            exit_code: flag(o, "isExit").then(|| {
                int(o, "exitCode")
                    .and_then(|c| i32::try_from(c).ok())
                    .unwrap_or(0)
            }),
            shutdown: flag(o, "isShutdown"),
            allocate_memory: uint(o, "allocateMemory").unwrap_or(0),
            leak_memory: uint(o, "leakMemory").unwrap_or(0),
            read_file: text(o, "readFile"),
            read_file_size: uint(o, "readFileSize").filter(|n| *n > 0),
            create_file: text(o, "createFile"),
            create_file_size: uint(o, "createFileSize").unwrap_or(0),
            echo_body: flag(o, "echoBody"),
            response_size: uint(o, "responseSize"),
            http_status: uint(o, "httpStatus").and_then(|c| u16::try_from(c).ok()),
            write_before_read: flag(o, "writeBeforeRead"),
            stdout: lines(o, "stdout"),
            stderr: lines(o, "stderr"),
            fork_bomb: uint(o, "forkBomb").unwrap_or(0),
            flood_output: uint(o, "floodOutput").unwrap_or(0),
            flood_output_after: uint(o, "floodOutputAfter").unwrap_or(0),
            connect: lines(o, "connect"),
        }
    }
}

fn flag(o: &Map<String, Value>, key: &str) -> bool {
    match o.get(key) {
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_f64().is_some_and(|n| n != 0.0),
        Some(Value::String(s)) => matches!(s.as_str(), "true" | "1"),
        _ => false,
    }
}

fn int(o: &Map<String, Value>, key: &str) -> Option<i64> {
    match o.get(key)? {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn uint(o: &Map<String, Value>, key: &str) -> Option<u64> {
    int(o, key).and_then(|n| u64::try_from(n).ok())
}

fn text(o: &Map<String, Value>, key: &str) -> Option<String> {
    o.get(key)?.as_str().map(str::to_owned)
}

fn strings(value: &Value) -> Vec<String> {
    match value {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

fn header_spec(o: &Map<String, Value>, key: &str) -> HeaderSpec {
    o.get(key)
        .and_then(Value::as_object)
        .map(|m| m.iter().map(|(k, v)| (k.clone(), strings(v))).collect())
        .unwrap_or_default()
}

fn lines(o: &Map<String, Value>, key: &str) -> Vec<String> {
    o.get(key).map(strings).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_every_knob() {
        let knobs = Knobs::from_json(&json!({
            "echoContent": "hi", "sleepTime": 10, "postSleepTime": "20", "responseCode": 202,
            "jasonContentType": "text/x", "returnHeaders": {"X-A": ["1", "2"]},
            "expectHeaders": {"X-B": "v"}, "isEmptyBody": true, "trailerRepeat": 3,
            "invalidResponse": true, "postOutGarbage": "g", "postErrGarbage": "e", "isDebug": true,
            "isCrash": false, "isExit": true, "exitCode": 7, "isShutdown": true,
            "allocateMemory": 1024, "leakMemory": 2048, "readFile": "/proc/mounts", "readFileSize": 10,
            "createFile": "/tmp/x", "createFileSize": 5, "echoBody": true, "responseSize": 99,
            "httpStatus": 502, "writeBeforeRead": true, "stdout": "out", "stderr": ["e1", "e2"],
            "forkBomb": 60, "floodOutput": 4096, "floodOutputAfter": 8, "connect": ["unix:/s", "tcp:1.2.3.4:5"]
        }));
        assert_eq!(knobs.echo_content.as_deref(), Some("hi"));
        assert_eq!((knobs.sleep_ms, knobs.post_sleep_ms), (10, 20));
        assert_eq!(knobs.response_code, Some(202));
        assert_eq!(knobs.content_type.as_deref(), Some("text/x"));
        assert_eq!(
            knobs.return_headers,
            vec![("X-A".into(), vec!["1".into(), "2".into()])]
        );
        assert_eq!(knobs.expect_headers, vec![("X-B".into(), vec!["v".into()])]);
        assert!(knobs.empty_body && knobs.invalid_response && knobs.debug && knobs.shutdown);
        assert_eq!(knobs.trailer_repeat, 3);
        assert!(!knobs.crash);
        assert_eq!(knobs.exit_code, Some(7));
        assert_eq!((knobs.allocate_memory, knobs.leak_memory), (1024, 2048));
        assert_eq!(knobs.read_file_size, Some(10));
        assert_eq!(knobs.create_file_size, 5);
        assert!(knobs.echo_body && knobs.write_before_read);
        assert_eq!(knobs.response_size, Some(99));
        assert_eq!(knobs.http_status, Some(502));
        assert_eq!(knobs.stdout, vec!["out".to_string()]);
        assert_eq!(knobs.stderr.len(), 2);
        assert_eq!(
            (knobs.fork_bomb, knobs.flood_output, knobs.flood_output_after),
            (60, 4096, 8)
        );
        assert_eq!(
            knobs.connect,
            vec!["unix:/s".to_string(), "tcp:1.2.3.4:5".to_string()]
        );
    }

    #[test]
    fn wrong_types_and_non_objects_fall_back_to_defaults() {
        let knobs = Knobs::from_json(&json!({"sleepTime": "soon", "isExit": false, "exitCode": 3,
                                              "responseCode": 70000, "returnHeaders": 5}));
        assert_eq!(knobs, Knobs::default());
        assert_eq!(Knobs::from_json(&json!([1, 2])), Knobs::default());
    }
}
