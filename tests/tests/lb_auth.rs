//! Bearer tokens on the management API: 401 with Fn's `{"message"}` shape and `WWW-Authenticate`
//! without a valid token, tokens rotated through the token file without a restart, an optional
//! token on the invocation paths, and a non-loopback LB that refuses to start with an open API.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde_json::json;

use ferrofn_tests::lb_proc::{LbProc, lb_binary, request};

async fn get(url: &str, token: Option<&str>) -> ferrofn_tests::lb_proc::Resp {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = BTreeMap::new();
    if let Some(a) = &auth {
        headers.insert("authorization", a.as_str());
    }
    request("GET", url, &headers, Bytes::new()).await.unwrap()
}

async fn post_app(url: &str, auth: &str, name: &str) -> ferrofn_tests::lb_proc::Resp {
    let headers = BTreeMap::from([("authorization", auth), ("content-type", "application/json")]);
    let body = Bytes::from(json!({ "name": name }).to_string());
    request("POST", url, &headers, body).await.unwrap()
}

#[tokio::test]
async fn the_management_api_needs_a_valid_bearer_token() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    std::fs::write(&file, "# operators\nfile-token-1\n").unwrap();
    let lb = LbProc::start(|s| {
        s.api_token = "fixed-token".into();
        s.api_tokens_file = file.clone();
    })
    .await
    .unwrap();
    let apps = lb.url("/v2/apps");

    let r = get(&apps, None).await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.header("www-authenticate"), "Bearer realm=\"ferrofn\"");
    assert!(
        r.json()["message"].as_str().unwrap().contains("Authorization"),
        "{}",
        r.text()
    );
    let r = get(&apps, Some("wrong")).await;
    assert_eq!(
        (r.status, r.json()["message"].clone()),
        (401, json!("Invalid token"))
    );
    // Another scheme, or a prefix of a valid token, is not a token.
    for auth in [
        "Basic Zml4ZWQtdG9rZW4=",
        "Bearer fixed-toke",
        "Bearer",
        "fixed-token",
    ] {
        let r = post_app(&apps, auth, "x").await;
        assert_eq!(r.status, 401, "{auth}: {}", r.text());
    }
    assert_eq!(get(&apps, Some("fixed-token")).await.status, 200);
    assert_eq!(get(&apps, Some("file-token-1")).await.status, 200);
    assert_eq!(
        post_app(&apps, "bearer file-token-1", "made").await.status,
        200,
        "scheme is case-insensitive"
    );
    // Refused requests changed nothing.
    let list = get(&apps, Some("fixed-token")).await.json();
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["made"]);

    // Rotation without a restart: a new file replaces the old token.
    let next = dir.path().join("tokens.new");
    std::fs::write(&next, "file-token-2\n").unwrap();
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(2);
    std::fs::File::options()
        .write(true)
        .open(&next)
        .unwrap()
        .set_modified(later)
        .unwrap();
    std::fs::rename(&next, &file).unwrap();
    assert_eq!(get(&apps, Some("file-token-2")).await.status, 200);
    assert_eq!(get(&apps, Some("file-token-1")).await.status, 401);

    // What is not management stays open: version, health, metrics, invocations (no invoke token).
    for path in ["/version", "/health/live", "/metrics"] {
        assert_eq!(get(&lb.url(path), None).await.status, 200, "{path}");
    }
    let r = get(&lb.url("/invoke/01ABCDEFGHJKMNPQRSTVWXYZ00"), None).await;
    assert_eq!(r.status, 404, "open invoke path, unknown fn: {}", r.text());
}

#[tokio::test]
async fn an_invoke_token_guards_the_invocation_paths() {
    let lb = LbProc::start(|s| {
        s.api_token = "admin".into();
        s.invoke_token = "caller".into();
    })
    .await
    .unwrap();
    for path in ["/invoke/01ABCDEFGHJKMNPQRSTVWXYZ00", "/t/app/hook"] {
        assert_eq!(get(&lb.url(path), None).await.status, 401, "{path}");
        assert_eq!(
            get(&lb.url(path), Some("admin")).await.status,
            401,
            "{path}: the API token is not an invoke token"
        );
        let r = get(&lb.url(path), Some("caller")).await;
        assert_eq!(r.status, 404, "{path}: past the token check: {}", r.text());
    }
}

#[tokio::test]
async fn a_non_loopback_lb_without_a_token_refuses_to_start() {
    let bin = lb_binary().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite3://{}", dir.path().join("fn.db").display());
    let out = tokio::process::Command::new(&bin)
        .args(["--plaintext", "--port", "0", "--listen-address", "0.0.0.0"])
        .env("FN_DB_URL", &db)
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("invalid setting api_token") && err.contains("--insecure-open-api"),
        "{err}"
    );
    // print-config says the same.
    let out = tokio::process::Command::new(&bin)
        .args(["--listen-address", "0.0.0.0", "print-config"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    // With a token (or the explicit flag) the settings are accepted.
    for (args, env) in [
        (
            vec!["--listen-address", "0.0.0.0", "print-config"],
            vec![("FERROFN_API_TOKEN", "t")],
        ),
        (
            vec![
                "--listen-address",
                "0.0.0.0",
                "--insecure-open-api",
                "print-config",
            ],
            vec![],
        ),
    ] {
        let out = tokio::process::Command::new(&bin)
            .args(&args)
            .envs(env)
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[tokio::test]
async fn metrics_on_a_listener_of_their_own_leave_the_main_port() {
    let lb = LbProc::start(|s| {
        s.api_token = "sekret".into();
        s.metrics_address = "127.0.0.1:0".into();
    })
    .await
    .unwrap();
    let metrics = lb.handle.metrics_addr.expect("a metrics listener");
    assert_ne!(metrics, lb.addr());
    // The main port no longer serves them (to anyone, with a token or not)...
    for token in [None, Some("sekret")] {
        let r = get(&lb.url("/metrics"), token).await;
        assert_eq!(r.status, 404, "main /metrics with {token:?}: {}", r.text());
    }
    // ...the metrics listener does, and the health endpoints, and nothing else.
    let r = get(&format!("http://{metrics}/metrics"), None).await;
    assert_eq!(r.status, 200);
    assert!(r.text().contains("lb_http_requests_total"), "{}", r.text());
    assert_eq!(
        get(&format!("http://{metrics}/health/live"), None).await.status,
        200
    );
    let r = get(&format!("http://{metrics}/v2/apps"), Some("sekret")).await;
    assert_eq!(r.status, 404, "the API is not on the metrics listener");
    assert!(r.json()["message"].is_string(), "Fn's error shape: {}", r.text());
    lb.stop().await;
}
