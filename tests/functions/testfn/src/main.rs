//! `testfn`: a Rust re-creation of Fn's `fn-test-utils` function (runner-docker-fdk.md §9),
//! built on the shared `ferrofn_fdk` so it speaks the `http-stream` contract exactly, and driven by
//! knobs in the request's JSON object so runner tests can make it misbehave on purpose.
//!
//! # Per-call knobs (first JSON object of the body; every field optional)
//!
//! fn-test-utils' own: `echoContent`, `sleepTime` (ms), `postSleepTime` (ms), `responseCode`,
//! `responseContentType`/`jasonContentType`, `returnHeaders` `{name: [values]}`, `expectHeaders`
//! `{name: [values]}` (exit 1 on mismatch), `isEmptyBody`, `trailerRepeat`, `invalidResponse`,
//! `postOutGarbage`, `postErrGarbage`, `isDebug`, `isCrash`, `isExit` + `exitCode`, `isShutdown`,
//! `allocateMemory`, `leakMemory`, `readFile` (+`readFileSize`), `createFile` + `createFileSize`.
//!
//! ferrofn's additions:
//! - `echoBody` (bool): the response body is the raw request body, streamed back as it arrives
//!   (knob object included, since it is part of the body). Send `{"echoBody":true}` followed by
//!   any bytes to echo large or slow bodies without buffering.
//! - `responseSize` (bytes): the body is exactly that many bytes of the `a..z` pattern
//!   (byte `i` = `b'a' + i % 26`), streamed with a `Content-Length`.
//! - `httpStatus` (int): the raw status of the UDS response (502, 504, 500, ...) to exercise the
//!   runner's mapping; the body is built as usual.
//! - `writeBeforeRead` (bool): answer as soon as the knob object has been read, leaving the rest
//!   of the request body unread (the premature-write case).
//! - `stdout` / `stderr` (string or list of strings): lines printed during the call.
//! - Hostile behaviours, each reported in `data` (see `hostile.rs`): `forkBomb` (N) starts up to N
//!   sleeping copies of the binary until the kernel refuses one (`data.forkBomb = {"spawned",
//!   "error"}`); `floodOutput` (bytes) writes that much to stdout and as much to stderr
//!   (`data.floodOutput`); `floodOutputAfter` (bytes) writes that much to stderr from a thread a
//!   second after the call, i.e. between calls (every later answer reports
//!   `data.backgroundFlood`: `"running"` / `"done"`); `connect` (`unix:<path>` / `tcp:<ip:port>`, one or a list) tries each
//!   (`data["<target>.connect_output"] = "connected"` or `data["<target>.connect_error"]`).
//!   Memory beyond the fn's limit is `allocateMemory`, a write to the root filesystem `createFile`.
//!
//! Only the first JSON object of the body is read before acting, so the knobs may be followed by
//! arbitrary bytes. A body that is not JSON is echoed as text (`"request": "<body>"`, first 1 MiB)
//! with default knobs; an empty body echoes `{}`. Unless `echoBody`/`writeBeforeRead` is set the
//! whole body is read and `data.bodyLength` holds its size.
//!
//! The response is `{"request": <input>, "header": <headers seen, canonical names → [values]>,
//! "config": <env vars>, "data": {...}, "trailer": [echoContent × trailerRepeat]}`. A call
//! without a valid `Fn-Deadline` makes the process exit(1) without answering, as fn-test-utils
//! does; a deadline that passes before the answer is ready yields a raw 504.
//!
//! # Startup knobs (environment, i.e. fn/app config)
//!
//! `ENABLE_HEADER` / `ENABLE_FOOTER` (log "Container starting" / "Container ending" to stderr),
//! `ENABLE_INIT_DELAY_MSEC` (wait before listening), `ENABLE_INIT_EXIT=<code>` (exit at startup),
//! `ENABLE_FAIL_IF_FN_SPAWN_CALL_ID_NONMATCH=<call id>` (+ `_MSEC` delay; exit 255 when
//! `FN_SPAWN_CALL_ID` differs), `ENABLE_EXIT_DELAY_MSEC` (linger after `isShutdown` stopped the
//! server, so the last reply still goes out).
#![forbid(unsafe_code)]

mod bodies;
mod handler;
mod hostile;
mod knobs;

use ferrofn_fdk::{ListenerConfig, Server};
use std::time::Duration;

fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.is_empty())
}

fn env_number(name: &str) -> Option<i64> {
    std::env::var(name).ok()?.trim().parse().ok()
}

async fn sleep_ms(ms: Option<i64>) {
    if let Some(ms) = ms.and_then(|ms| u64::try_from(ms).ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

// One thread is plenty for one call at a time, and stays far below the runner's pids limit.
#[tokio::main(flavor = "current_thread")]
async fn main() {
    if env_flag(hostile::CHILD_ENV) {
        hostile::child_idle_forever().await;
    }
    if env_flag("ENABLE_HEADER") {
        ferrofn_fdk::log_err("Container starting");
    }
    if let Ok(expected) = std::env::var("ENABLE_FAIL_IF_FN_SPAWN_CALL_ID_NONMATCH") {
        sleep_ms(env_number("ENABLE_FAIL_IF_FN_SPAWN_CALL_ID_NONMATCH_MSEC")).await;
        let actual = std::env::var("FN_SPAWN_CALL_ID").unwrap_or_default();
        if actual != expected {
            ferrofn_fdk::log_err(format_args!(
                "testfn: FN_SPAWN_CALL_ID is {actual:?}, expected {expected:?}"
            ));
            std::process::exit(-1);
        }
    }
    sleep_ms(env_number("ENABLE_INIT_DELAY_MSEC")).await;
    if let Some(code) = env_number("ENABLE_INIT_EXIT") {
        ferrofn_fdk::log_err(format_args!(
            "testfn: exiting at startup with {code} (ENABLE_INIT_EXIT)"
        ));
        std::process::exit(i32::try_from(code).unwrap_or(1));
    }

    let served = async {
        Server::bind(ListenerConfig::from_env()?)?
            .serve(handler::handle)
            .await
    }
    .await;
    if let Err(e) = served {
        ferrofn_fdk::log_err(format_args!("testfn: {e}"));
        std::process::exit(1);
    }
    sleep_ms(env_number("ENABLE_EXIT_DELAY_MSEC")).await;
    if env_flag("ENABLE_FOOTER") {
        ferrofn_fdk::log_err("Container ending");
    }
}
