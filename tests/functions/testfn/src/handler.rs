//! One call of the test function: read the knobs, misbehave as asked, and answer the
//! `{"request","header","config","data","trailer"}` document (or the raw/streamed body a knob asks
//! for).

use crate::{
    bodies::{self, EchoBody, Input, PatternBody, Prefix},
    hostile,
    knobs::Knobs,
};
use bytes::Bytes;
use ferrofn_fdk::{BoxError, Request, Response, ResponseBody, canonical_header_name, empty_body, full_body};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header::CONTENT_TYPE};
use http_body_util::BodyExt;
use serde_json::{Map, Value, json};
use std::{
    collections::BTreeMap,
    io::{Read, Write},
    sync::Mutex,
    time::Duration,
};

/// Sentence put in front of the JSON by `invalidResponse`.
pub const INVALID_RESPONSE_PREFIX: &str = "Thank you for calling. This reply is not JSON. ";

/// Memory held by `allocateMemory` until the next call replaces it.
static HELD: Mutex<Vec<u8>> = Mutex::new(Vec::new());

/// Logs like Go's `log.Fatal` (stderr) and exits with `code` without answering.
fn fatal(code: i32, message: &str) -> ! {
    ferrofn_fdk::log_err(message);
    std::process::exit(code)
}

/// Serves one call.
pub async fn handle(req: Request) -> Response {
    // fn-test-utils runs its handler under a context deadline and aborts without one.
    if req.deadline.is_none() {
        fatal(
            1,
            "testfn: no deadline in the call (missing or unparseable Fn-Deadline)",
        );
    }
    let mut body = req.body;
    let mut prefix = match bodies::read_prefix(&mut body).await {
        Ok(prefix) => prefix,
        Err(e) => return failed(&format!("reading the request body: {e}")),
    };
    let knobs = match &prefix.input {
        Input::Json(value) => Knobs::from_json(value),
        Input::Empty | Input::Opaque => Knobs::default(),
    };

    for line in &knobs.stdout {
        ferrofn_fdk::log_out(line);
    }
    for line in &knobs.stderr {
        ferrofn_fdk::log_err(line);
    }
    let config: BTreeMap<String, String> = std::env::vars().collect();
    let headers = headers_json(&req.headers);
    for (name, expected) in &knobs.expect_headers {
        let actual: Vec<String> = req
            .headers
            .get_all(name.as_str())
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        if &actual != expected {
            fatal(
                1,
                &format!("testfn: header {name} is {actual:?}, expected {expected:?}"),
            );
        }
    }
    if knobs.crash {
        fatal(1, "testfn: crashing as asked (isCrash)");
    }
    if let Some(code) = knobs.exit_code {
        fatal(code, &format!("testfn: exiting with {code} as asked (isExit)"));
    }

    // Everything below may need the whole body; `echoBody` and `writeBeforeRead` must not read it.
    let mut body_len = None;
    let rest = if knobs.echo_body || knobs.write_before_read {
        (!prefix.eof).then_some(body)
    } else {
        match bodies::drain(&mut prefix, &mut body).await {
            Ok(total) => body_len = Some(total),
            Err(e) => return failed(&format!("reading the request body: {e}")),
        }
        None
    };
    let request = request_echo(&prefix);
    if knobs.debug {
        ferrofn_fdk::log_err("BeginOfLogs");
        ferrofn_fdk::log_err(format_args!("request: {request}"));
        ferrofn_fdk::log_err(format_args!("headers: {headers}"));
        ferrofn_fdk::log_err(format_args!("config: {}", json!(config)));
        ferrofn_fdk::log_err("EndOfLogs");
    }
    if knobs.sleep_ms > 0 {
        tokio::time::sleep(Duration::from_millis(knobs.sleep_ms)).await;
    }

    let mut data = Map::new();
    if let Some(len) = body_len {
        data.insert("bodyLength".into(), json!(len));
    }
    hold_memory(&knobs);
    if let Some(path) = &knobs.read_file {
        match read_file(path, knobs.read_file_size) {
            Ok(text) => data.insert(format!("{path}.read_output"), json!(text)),
            Err(e) => data.insert(format!("{path}.read_error"), json!(e.to_string())),
        };
    }
    if let Some(path) = &knobs.create_file
        && let Err(e) = create_file(path, knobs.create_file_size)
    {
        data.insert(format!("{path}.create_error"), json!(e.to_string()));
    }
    if knobs.fork_bomb > 0 {
        data.insert("forkBomb".into(), hostile::fork_bomb(knobs.fork_bomb));
    }
    if knobs.flood_output > 0 {
        data.insert("floodOutput".into(), hostile::flood_output(knobs.flood_output));
    }
    if knobs.flood_output_after > 0 {
        hostile::flood_output_later(knobs.flood_output_after);
    }
    if let Some(state) = hostile::background_flood() {
        data.insert("backgroundFlood".into(), json!(state));
    }
    for target in &knobs.connect {
        match hostile::connect(target) {
            Ok(()) => data.insert(format!("{target}.connect_output"), json!("connected")),
            Err(e) => data.insert(format!("{target}.connect_error"), json!(e)),
        };
    }
    if knobs.debug {
        data.insert("DockerId".into(), json!(docker_id().unwrap_or_default()));
        data.insert("DockerHostname".into(), json!(hostname()));
    }

    let echo = knobs.echo_content.clone().unwrap_or_default();
    let document = json!({
        "request": request,
        "header": headers,
        "config": config,
        "data": data,
        "trailer": vec![echo; knobs.trailer_repeat],
    });
    let mut response = Response::new(response_body(&knobs, document, prefix, rest));
    if let Some(content_type) = knobs
        .content_type
        .as_deref()
        .or_else(|| default_content_type(&knobs))
        && let Ok(value) = HeaderValue::from_str(content_type)
    {
        response.headers.insert(CONTENT_TYPE, value);
    }
    for (name, values) in &knobs.return_headers {
        let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else {
            continue;
        };
        for value in values {
            if let Ok(value) = HeaderValue::from_str(value) {
                response.headers.append(name.clone(), value);
            }
        }
    }
    if let Some(code) = knobs.response_code.and_then(|c| StatusCode::from_u16(c).ok()) {
        response.status = code;
    }
    response.raw_status = knobs.http_status.and_then(|c| StatusCode::from_u16(c).ok());

    if knobs.post_sleep_ms > 0 {
        tokio::time::sleep(Duration::from_millis(knobs.post_sleep_ms)).await;
    }
    if let Some(garbage) = &knobs.post_err_garbage {
        ferrofn_fdk::log_err(garbage);
    }
    if knobs.shutdown {
        req.shutdown.trigger();
    }
    let _ = std::io::stdout().flush();
    response
}

/// A raw 502 ("function failed") for failures of the function itself.
fn failed(message: &str) -> Response {
    ferrofn_fdk::log_err(format_args!("testfn: {message}"));
    let mut response = Response::full(message.to_owned());
    response.raw_status = Some(StatusCode::BAD_GATEWAY);
    response
}

/// The `request` member: the JSON as sent, `{}` for an empty body, else the body as text.
fn request_echo(prefix: &Prefix) -> Value {
    match &prefix.input {
        Input::Json(value) => value.clone(),
        Input::Empty => json!({}),
        Input::Opaque => Value::String(String::from_utf8_lossy(&prefix.bytes).into_owned()),
    }
}

/// Headers as Go shows them: canonical names, each with its list of values.
fn headers_json(headers: &HeaderMap) -> Value {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in headers {
        out.entry(canonical_header_name(name.as_str()))
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    json!(out)
}

fn default_content_type(knobs: &Knobs) -> Option<&'static str> {
    if knobs.echo_body || knobs.response_size.is_some() {
        Some("application/octet-stream")
    } else if knobs.empty_body {
        None
    } else {
        Some("application/json")
    }
}

fn response_body(
    knobs: &Knobs,
    document: Value,
    prefix: Prefix,
    rest: Option<hyper::body::Incoming>,
) -> ResponseBody {
    if knobs.echo_body {
        return EchoBody::new(prefix.bytes.freeze(), rest)
            .map_err(BoxError::from)
            .boxed_unsync();
    }
    // With writeBeforeRead the unread rest is dropped here, after the response is built.
    drop(rest);
    if let Some(len) = knobs.response_size {
        return PatternBody::new(len)
            .map_err(|never| match never {})
            .boxed_unsync();
    }
    if knobs.empty_body {
        return empty_body();
    }
    let mut out = Vec::new();
    if knobs.invalid_response {
        out.extend_from_slice(INVALID_RESPONSE_PREFIX.as_bytes());
    }
    out.extend_from_slice(document.to_string().as_bytes());
    if let Some(garbage) = &knobs.post_out_garbage {
        out.extend_from_slice(garbage.as_bytes());
    }
    full_body(Bytes::from(out))
}

/// `allocateMemory` replaces the held block; `leakMemory` adds a block that is never freed.
/// Blocks are filled with a non-zero byte so every page is really committed.
fn hold_memory(knobs: &Knobs) {
    if knobs.allocate_memory > 0 {
        let block = vec![0xa5_u8; usize::try_from(knobs.allocate_memory).unwrap_or(usize::MAX)];
        *HELD.lock().unwrap_or_else(|e| e.into_inner()) = block;
    }
    if knobs.leak_memory > 0 {
        let block = vec![0x5a_u8; usize::try_from(knobs.leak_memory).unwrap_or(usize::MAX)];
        Box::leak(block.into_boxed_slice());
    }
}

fn read_file(path: &str, limit: Option<u64>) -> std::io::Result<String> {
    let file = std::fs::File::open(path)?;
    let mut buf = Vec::new();
    match limit {
        Some(limit) => file.take(limit).read_to_end(&mut buf)?,
        None => (&file).read_to_end(&mut buf)?,
    };
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

fn create_file(path: &str, size: u64) -> std::io::Result<()> {
    let mut file = std::fs::File::create(path)?;
    let chunk = [0x61_u8; 64 * 1024];
    let mut left = size;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        file.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    file.sync_all()
}

/// The container id, found in the bind mounts docker sets up (`/var/lib/docker/containers/<id>/…`)
/// or in the cgroup path.
fn docker_id() -> Option<String> {
    ["/proc/self/mountinfo", "/proc/self/cgroup"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .find_map(|text| find_container_id(&text))
}

fn find_container_id(text: &str) -> Option<String> {
    ["containers/", "docker/", "docker-"].iter().find_map(|marker| {
        text.match_indices(marker).find_map(|(at, _)| {
            let id = text.get(at + marker.len()..at + marker.len() + 64)?;
            id.bytes().all(|b| b.is_ascii_hexdigit()).then(|| id.to_owned())
        })
    })
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_container_id_in_mountinfo_and_cgroup() {
        let id = "0123456789abcdef".repeat(4);
        let mountinfo = format!(
            "612 600 8:1 /var/lib/docker/containers/{id}/hostname /etc/hostname rw - ext4 /dev/sda1 rw"
        );
        assert_eq!(find_container_id(&mountinfo), Some(id.clone()));
        assert_eq!(
            find_container_id(&format!("0::/system.slice/docker-{id}.scope")),
            Some(id)
        );
        assert_eq!(find_container_id("0::/init.scope"), None);
    }

    #[test]
    fn creates_and_reads_files() {
        let dir = std::env::temp_dir().join(format!("testfn-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        create_file(path.to_str().unwrap(), 100_000).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 100_000);
        assert_eq!(read_file(path.to_str().unwrap(), Some(3)).unwrap(), "aaa");
        assert!(read_file("/nonexistent/x", None).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
