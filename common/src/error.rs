//! The error table both nodes answer with: an HTTP code, Fn's exact message text, and whether the error is
//! the function's fault (Fn's `FuncError`, sent as `CallFinished.errorUser`). Clients see
//! `{"message":"<text>"}\n`; a 503 also carries `Retry-After: 15`.

use std::borrow::Cow;
use std::fmt;

/// `Retry-After` seconds sent with a 503.
pub const RETRY_AFTER_SECS: u32 = 15;

/// What the LB says when a runner's CallFinished has an empty `errorStr`.
pub const UNKNOWN_RUNNER_ERROR: &str = "Unknown Error From Pure Runner";

/// An Fn API error: HTTP status, message, and whether the function is to blame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FnError {
    code: u16,
    message: Cow<'static, str>,
    user_error: bool,
}

const fn api(code: u16, message: &'static str) -> FnError {
    FnError {
        code,
        message: Cow::Borrowed(message),
        user_error: false,
    }
}

const fn func(code: u16, message: &'static str) -> FnError {
    FnError {
        code,
        message: Cow::Borrowed(message),
        user_error: true,
    }
}

impl FnError {
    /// Any error: code, text, and whether it is the function's fault.
    pub fn new(code: u16, message: impl Into<Cow<'static, str>>, user_error: bool) -> Self {
        FnError {
            code,
            message: message.into(),
            user_error,
        }
    }

    /// An error received from a runner (`CallFinished.errorCode` / `errorStr`). A code that is not
    /// an HTTP status (Fn's 0 for "not an API error", or anything outside 100..=599) becomes 500
    /// (decisions.md: Go's LB would answer 200); an empty message becomes Fn's
    /// "Unknown Error From Pure Runner". Use [`FnError::with_user_error`] for `errorUser`.
    pub fn from_code(code: i32, message: impl Into<Cow<'static, str>>) -> Self {
        let code = u16::try_from(code)
            .ok()
            .filter(|c| (100..=599).contains(c))
            .unwrap_or(500);
        let message = message.into();
        let message = if message.is_empty() {
            Cow::Borrowed(UNKNOWN_RUNNER_ERROR)
        } else {
            message
        };
        FnError {
            code,
            message,
            user_error: false,
        }
    }

    /// The same error, marked as (not) the function's fault.
    pub fn with_user_error(mut self, user_error: bool) -> Self {
        self.user_error = user_error;
        self
    }

    // ---- capacity / placement ----

    /// 503: no runner had room (also the runner's NACK).
    pub const fn server_busy() -> Self {
        api(503, "Timed out - server too busy")
    }
    /// 503: the LB has no runner to place the call on (ferrofn's; Fn spins until its placer
    /// timeout and then answers [`FnError::server_busy`]). `configured` = 0: the list is empty.
    pub fn no_runner(configured: usize) -> Self {
        let message = if configured == 0 {
            "No runner is configured on this LB (FN_RUNNER_ADDRESSES is empty)".to_owned()
        } else {
            format!(
                "No runner is up: all {configured} configured runners are down or draining (the LB log says why)"
            )
        };
        FnError::new(503, message, false)
    }
    /// 400: the call can never fit the runner's totals.
    pub const fn resource_too_big() -> Self {
        api(400, "Requested CPU/Memory cannot be allocated")
    }
    /// 501: a detached call on a runner without detach support.
    pub const fn detach_unsupported() -> Self {
        api(501, "Detach call functions are not supported on this server")
    }
    /// 500: a detached call's placement outlived its reservation.
    pub const fn reservation_failure() -> Self {
        api(500, "Unable to service the request for the reservation period")
    }
    /// 400: the fn uses the runner's status image.
    pub const fn invalid_image() -> Self {
        api(400, "Invalid Fn image")
    }

    // ---- function errors (user errors) ----

    /// 504: the exec deadline passed (or the FDK answered 504).
    pub const fn call_timeout() -> Self {
        func(504, "Timed out")
    }
    /// 502: the FDK answered 502.
    pub const fn function_failed() -> Self {
        func(502, "function failed")
    }
    /// 502: the FDK answered a status other than 200/502/504.
    pub const fn invalid_response() -> Self {
        func(502, "invalid function response")
    }
    /// 502: the response body passed `FN_MAX_RESPONSE_SIZE`.
    pub const fn response_too_big() -> Self {
        func(502, "function response body too large")
    }
    /// 502: the response headers passed `FN_MAX_HDR_RESPONSE_SIZE`.
    pub const fn header_too_big() -> Self {
        func(502, "function response header too large")
    }
    /// 502: the function answered before reading the whole request.
    pub const fn premature_write() -> Self {
        func(502, "function invoked write before receiving entire request")
    }
    /// 502: the function stopped reading its request.
    pub const fn closed_pipe() -> Self {
        func(502, "function closed pipe while receiving request")
    }
    /// 502: the connection to the FDK failed (crash, exit, OOM) before the response headers.
    pub const fn receive_failed() -> Self {
        func(502, "error receiving function response")
    }
    /// 504: the FDK socket did not appear within `FN_HOT_START_TIMEOUT_MSECS`.
    pub const fn init_timeout() -> Self {
        func(
            504,
            "Container initialization timed out, please ensure you are using the latest fdk and check the logs",
        )
    }
    /// 502: the container exited during init or its socket link was bad.
    pub const fn init_failed() -> Self {
        func(
            502,
            "Container failed to initialize, please ensure you are using the latest fdk and check the logs",
        )
    }
    /// 504: the image pull passed `FN_HOT_PULL_TIMEOUT_MSECS`.
    pub const fn pull_timeout() -> Self {
        func(504, "Image pull timed out")
    }
    /// 500: the syslog URL could not be reached at container start.
    pub const fn syslog_unavailable() -> Self {
        func(500, "Syslog Unavailable")
    }
    /// A failed image pull: the registry's 4xx, else 502 (`Failed to pull image '<img>': <msg>`).
    pub fn pull_failed(registry_code: u16, image: &str, msg: &str) -> Self {
        let code = if (400..500).contains(&registry_code) {
            registry_code
        } else {
            502
        };
        FnError::new(code, format!("Failed to pull image '{image}': {msg}"), true)
    }

    // ---- lookups and routing ----

    /// 404: no such fn.
    pub const fn fn_not_found() -> Self {
        api(404, "Fn not found")
    }
    /// 404: no such app.
    pub const fn app_not_found() -> Self {
        api(404, "App not found")
    }
    /// 404: no such trigger.
    pub const fn trigger_not_found() -> Self {
        api(404, "Trigger not found")
    }
    /// 404: an unknown route, e.g. `Path not found: GET /x`.
    pub fn path_not_found(method: &str, path: &str) -> Self {
        FnError::new(404, format!("Path not found: {method} {path}"), false)
    }
    /// 405: a known route with the wrong method, e.g. `Method not allowed: PUT /invoke/x`.
    pub fn method_not_allowed(method: &str, path: &str) -> Self {
        FnError::new(405, format!("Method not allowed: {method} {path}"), false)
    }
    /// 413: the request's Content-Length (or streamed length) passed `FN_MAX_REQUEST_SIZE`.
    pub fn request_too_large(size: u64, max: u64) -> Self {
        FnError::new(
            413,
            format!("Content-Length too large for this server, {size} > max {max}"),
            false,
        )
    }

    // ---- call model ----

    /// 400: a value of the wrong JSON type (Fn's `ErrInvalidJSON`, e.g. a bare number for `cpus`).
    pub const fn invalid_json() -> Self {
        api(400, "Invalid JSON")
    }
    /// 400: a `cpus` string out of range or malformed.
    pub const fn invalid_cpus() -> Self {
        api(
            400,
            "Cpus is invalid. Value should be either between [0.000 and 1024.000] or [0m and 1024000m] milliCPU units",
        )
    }

    // ---- Engage protocol and internals (not API errors in Fn: they reach the client as 500) ----

    /// The first message of an Engage stream was not a TryCall (or the stream closed first).
    pub const fn expected_try() -> Self {
        api(500, "Protocol failure: expected ClientMsg_Try")
    }
    /// A message after the TryCall was not a DataFrame (or the stream closed before `eof`).
    pub const fn expected_data() -> Self {
        api(500, "Protocol failure: expected ClientMsg_Data")
    }
    /// 500: anything that is not an API error (broken stream, I/O, bugs).
    pub const fn internal() -> Self {
        api(500, "internal server error")
    }

    // ---- accessors ----

    /// HTTP status.
    pub fn code(&self) -> u16 {
        self.code
    }
    /// Message text as clients see it.
    pub fn message(&self) -> &str {
        &self.message
    }
    /// True when the function is to blame (`CallFinished.errorUser`).
    pub fn is_user_error(&self) -> bool {
        self.user_error
    }
    /// True for the runner's "no room" answer, the only error the LB retries elsewhere.
    pub fn is_nack(&self) -> bool {
        self.code == 503
    }
    /// `Retry-After` seconds to send with this error (15 for a 503).
    pub fn retry_after(&self) -> Option<u32> {
        (self.code == 503).then_some(RETRY_AFTER_SECS)
    }
    /// The HTTP body: `{"message":"<text>"}` plus a newline, as Fn writes it.
    pub fn json_body(&self) -> String {
        #[derive(serde::Serialize)]
        struct Body<'a> {
            message: &'a str,
        }
        let mut s = serde_json::to_string(&Body {
            message: &self.message,
        })
        .unwrap_or_else(|_| String::from("{\"message\":\"internal server error\"}"));
        s.push('\n');
        s
    }
}

impl fmt::Display for FnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for FnError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_codes_texts_and_blame() {
        let cases: &[(FnError, u16, &str, bool)] = &[
            (FnError::server_busy(), 503, "Timed out - server too busy", false),
            (FnError::call_timeout(), 504, "Timed out", true),
            (FnError::function_failed(), 502, "function failed", true),
            (
                FnError::invalid_response(),
                502,
                "invalid function response",
                true,
            ),
            (
                FnError::response_too_big(),
                502,
                "function response body too large",
                true,
            ),
            (
                FnError::header_too_big(),
                502,
                "function response header too large",
                true,
            ),
            (
                FnError::premature_write(),
                502,
                "function invoked write before receiving entire request",
                true,
            ),
            (
                FnError::closed_pipe(),
                502,
                "function closed pipe while receiving request",
                true,
            ),
            (
                FnError::receive_failed(),
                502,
                "error receiving function response",
                true,
            ),
            (FnError::pull_timeout(), 504, "Image pull timed out", true),
            (
                FnError::resource_too_big(),
                400,
                "Requested CPU/Memory cannot be allocated",
                false,
            ),
            (FnError::invalid_image(), 400, "Invalid Fn image", false),
            (FnError::fn_not_found(), 404, "Fn not found", false),
            (FnError::app_not_found(), 404, "App not found", false),
            (FnError::trigger_not_found(), 404, "Trigger not found", false),
            (FnError::internal(), 500, "internal server error", false),
            (
                FnError::expected_try(),
                500,
                "Protocol failure: expected ClientMsg_Try",
                false,
            ),
            (
                FnError::expected_data(),
                500,
                "Protocol failure: expected ClientMsg_Data",
                false,
            ),
            (FnError::invalid_json(), 400, "Invalid JSON", false),
        ];
        for (e, code, text, user) in cases {
            assert_eq!(
                (e.code(), e.message(), e.is_user_error()),
                (*code, *text, *user),
                "{e:?}"
            );
        }
        assert!(
            FnError::init_timeout()
                .message()
                .starts_with("Container initialization timed out, ")
        );
        assert_eq!(
            (FnError::init_timeout().code(), FnError::init_failed().code()),
            (504, 502)
        );
        assert!(FnError::init_failed().is_user_error() && FnError::init_timeout().is_user_error());
        assert_eq!(FnError::detach_unsupported().code(), 501);
        assert_eq!(FnError::reservation_failure().code(), 500);
        assert!(FnError::invalid_cpus().message().starts_with("Cpus is invalid."));
    }

    #[test]
    fn formatted_messages() {
        let e = FnError::path_not_found("GET", "/x");
        assert_eq!((e.code(), e.message()), (404, "Path not found: GET /x"));
        let e = FnError::method_not_allowed("PUT", "/invoke/x");
        assert_eq!(
            (e.code(), e.message()),
            (405, "Method not allowed: PUT /invoke/x")
        );
        let e = FnError::request_too_large(7_000_000, 6_291_456);
        assert_eq!(
            (e.code(), e.message()),
            (
                413,
                "Content-Length too large for this server, 7000000 > max 6291456"
            )
        );
        let e = FnError::pull_failed(404, "a/b:1", "not found");
        assert_eq!(
            (e.code(), e.message()),
            (404, "Failed to pull image 'a/b:1': not found")
        );
        assert_eq!(FnError::pull_failed(500, "a", "x").code(), 502);
    }

    #[test]
    fn json_body_is_fn_shape_with_escaping() {
        assert_eq!(
            FnError::call_timeout().json_body(),
            "{\"message\":\"Timed out\"}\n"
        );
        let e = FnError::new(500, "say \"hi\"\n\\", false);
        assert_eq!(e.json_body(), "{\"message\":\"say \\\"hi\\\"\\n\\\\\"}\n");
        let v: serde_json::Value = serde_json::from_str(&e.json_body()).unwrap();
        assert_eq!(v["message"], "say \"hi\"\n\\");
    }

    #[test]
    fn retry_after_only_for_503() {
        assert_eq!(FnError::server_busy().retry_after(), Some(15));
        assert!(FnError::server_busy().is_nack());
        assert_eq!(FnError::call_timeout().retry_after(), None);
        assert!(!FnError::internal().is_nack());
    }

    #[test]
    fn from_runner_codes() {
        let e = FnError::from_code(0, "json: cannot unmarshal");
        assert_eq!(
            (e.code(), e.message(), e.is_user_error()),
            (500, "json: cannot unmarshal", false)
        );
        let e = FnError::from_code(502, "function failed").with_user_error(true);
        assert_eq!(e, FnError::function_failed());
        assert_eq!(FnError::from_code(413, "").message(), UNKNOWN_RUNNER_ERROR);
        assert_eq!(FnError::from_code(-1, "x").code(), 500);
        assert_eq!(FnError::from_code(70_000, "x").code(), 500);
        assert_eq!(FnError::from_code(99, "x").code(), 500);
        assert_eq!(FnError::server_busy().to_string(), "Timed out - server too busy");
    }
}
