//! `status`: the status-checker function a pure runner runs for `Status` calls (the role of Fn's
//! `fn-status-checker`): it parses its body as a JSON object and writes it back (`{}` for an empty
//! body). Like the Go original, input that is not a JSON object yields a 200 with an empty body.
#![forbid(unsafe_code)]

use ferrofn_fdk::{ListenerConfig, Request, Response, Server, read_body};
use serde_json::{Map, Value};

/// The echoed object, or `None` when the body is not a JSON object.
fn echo(body: &[u8]) -> Option<Value> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Some(Value::Object(Map::new()));
    }
    serde_json::from_slice::<Map<String, Value>>(body)
        .ok()
        .map(Value::Object)
}

async fn handle(req: Request) -> Response {
    let body = match read_body(req.body).await {
        Ok(body) => body,
        Err(e) => {
            ferrofn_fdk::log_err(format_args!("status: reading the request body: {e}"));
            return Response::empty();
        }
    };
    match echo(&body) {
        Some(value) => Response::json(&value),
        None => {
            ferrofn_fdk::log_err("status: the request body is not a JSON object");
            Response::empty()
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let served = async { Server::bind(ListenerConfig::from_env()?)?.serve(handle).await }.await;
    if let Err(e) = served {
        ferrofn_fdk::log_err(format_args!("status: {e}"));
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn echoes_objects_only() {
        assert_eq!(echo(b""), Some(json!({})));
        assert_eq!(echo(b" \n"), Some(json!({})));
        assert_eq!(echo(br#"{"a":{"b":[1,2]}}"#), Some(json!({"a": {"b": [1, 2]}})));
        assert_eq!(echo(b"[1]"), None);
        assert_eq!(echo(b"nope"), None);
    }
}
