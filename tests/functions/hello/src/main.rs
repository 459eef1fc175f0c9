//! `hello`: ferrofn's demo function. It answers `{"message":"Hello <name>"}` where `name` comes
//! from a JSON body `{"name": ...}` ("World" when the body is empty, not JSON or has no name).
#![forbid(unsafe_code)]

use ferrofn_fdk::{ListenerConfig, Request, Response, Server, read_body};
use serde_json::{Value, json};

/// The greeting for a request body.
fn greeting(body: &[u8]) -> Value {
    let name = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("name").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| "World".to_owned());
    json!({ "message": format!("Hello {name}") })
}

async fn handle(req: Request) -> Response {
    match read_body(req.body).await {
        Ok(body) => Response::json(&greeting(&body)),
        Err(e) => {
            ferrofn_fdk::log_err(format_args!("hello: reading the request body: {e}"));
            Response::json(&greeting(b""))
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let served = async { Server::bind(ListenerConfig::from_env()?)?.serve(handle).await }.await;
    if let Err(e) = served {
        ferrofn_fdk::log_err(format_args!("hello: {e}"));
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greets_by_name_or_world() {
        assert_eq!(
            greeting(br#"{"name":"Ferro"}"#),
            json!({"message": "Hello Ferro"})
        );
        assert_eq!(greeting(b""), json!({"message": "Hello World"}));
        assert_eq!(greeting(b"not json"), json!({"message": "Hello World"}));
        assert_eq!(greeting(br#"{"name":5}"#), json!({"message": "Hello World"}));
    }
}
