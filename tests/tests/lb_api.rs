//! Fn's v2 management API on the LB (fn-v2-api.md): create/get/list/update/delete of apps, fns and
//! triggers with the CLI's exact codes, pagination, name lookups, merge updates, validation errors,
//! 409s, the endpoint annotations, cascading deletes and persistence across a restart. The LB runs
//! in-process on 127.0.0.1:0. One suite, run against both registries: every scenario is an
//! `async fn(Backend)`, and [`backends!`] makes a `sqlite::<name>` and a `postgres::<name>` test of
//! it (a temp SQLite file; a fresh database on a throwaway Postgres server).

use std::collections::BTreeMap;

use serde_json::{Value, json};

use ferrofn_tests::lb_proc::{Backend, LbProc, json as call, request};

fn is_rfc3339_ms(v: &Value) -> bool {
    let s = v.as_str().unwrap_or_default();
    // 2026-11-28T07:02:02.396Z
    s.len() == 24 && s.ends_with('Z') && &s[10..11] == "T" && &s[19..20] == "."
}

async fn create_app(lb: &LbProc, name: &str) -> Value {
    let r = call("POST", &lb.url("/v2/apps"), Some(json!({"name": name})))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

async fn create_fn(lb: &LbProc, app_id: &str, name: &str) -> Value {
    let r = call(
        "POST",
        &lb.url("/v2/fns"),
        Some(json!({"app_id": app_id, "name": name, "image": "local/x:1"})),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

async fn root_version_metrics_and_unknown_paths(backend: Backend) {
    let lb = LbProc::start_on(backend, |_| {}).await.unwrap();
    let r = call("GET", &lb.url("/"), None).await.unwrap();
    assert_eq!(
        (r.status, r.text()),
        (
            200,
            r#"{"goto":"https://github.com/fnproject/fn","hello":"world!"}"#.into()
        )
    );
    let r = call("GET", &lb.url("/version"), None).await.unwrap();
    // Fn's version (what the `fn` CLI reads) and ferrofn's own.
    assert_eq!(
        r.json(),
        json!({"version": "0.3.753", "ferrofn": env!("CARGO_PKG_VERSION")})
    );
    assert!(r.header("content-type").starts_with("application/json"));
    let r = call("GET", &lb.url("/nope"), None).await.unwrap();
    assert_eq!(
        (r.status, r.text()),
        (404, "{\"message\":\"Path not found: GET /nope\"}\n".into())
    );
    let r = call("PATCH", &lb.url("/v2/apps"), None).await.unwrap();
    assert_eq!(r.status, 405);
    assert_eq!(r.json()["message"], "Method not allowed: PATCH /v2/apps");
    let r = call("GET", &lb.url("/metrics"), None).await.unwrap();
    assert_eq!(r.status, 200);
    assert!(r.text().contains("lb_http_requests_total"), "{}", r.text());
    lb.stop().await;
}

async fn apps_crud_merge_conflicts_and_errors(backend: Backend) {
    let lb = LbProc::start_on(backend, |_| {}).await.unwrap();
    // Create: 200, server id and times; the CLI's zero times are ignored.
    let r = call(
        "POST",
        &lb.url("/v2/apps"),
        Some(
            json!({"name": "a1", "config": {"K": "v", "GONE": "x"}, "annotations": {"x/y": "z"},
            "created_at": "0001-01-01T00:00:00.000Z", "updated_at": "0001-01-01T00:00:00.000Z"}),
        ),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").starts_with("application/json"));
    let app = r.json();
    let id = app["id"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 26);
    assert!(
        is_rfc3339_ms(&app["created_at"]) && is_rfc3339_ms(&app["updated_at"]),
        "{app}"
    );
    assert_ne!(app["created_at"], "0001-01-01T00:00:00.000Z");
    assert_eq!(app["config"], json!({"K": "v", "GONE": "x"}));

    // Duplicate name: 409.
    let r = call("POST", &lb.url("/v2/apps"), Some(json!({"name": "a1"})))
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.json()["message"].clone()),
        (409, json!("App already exists"))
    );
    // Validation: 400s.
    let r = call("POST", &lb.url("/v2/apps"), Some(json!({"name": ""})))
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    let r = call("POST", &lb.url("/v2/apps"), Some(json!({"name": "bad name!"})))
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    let r = call(
        "POST",
        &lb.url("/v2/apps"),
        Some(json!({"name": "x", "id": "01ID"})),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 400);
    let r = request("POST", &lb.url("/v2/apps"), &BTreeMap::new(), "{not json")
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.json()["message"].clone()),
        (400, json!("Invalid JSON"))
    );

    // Get by id and by name (a list query, as the CLI does).
    let r = call("GET", &lb.url(&format!("/v2/apps/{id}")), None)
        .await
        .unwrap();
    assert_eq!((r.status, r.json()["name"].clone()), (200, json!("a1")));
    let r = call("GET", &lb.url("/v2/apps?name=a1"), None).await.unwrap();
    assert_eq!(r.json()["items"][0]["id"], json!(id));
    let r = call("GET", &lb.url("/v2/apps?name=nosuch"), None).await.unwrap();
    assert_eq!((r.status, r.json()["items"].clone()), (200, json!([])));
    let r = call("GET", &lb.url("/v2/apps/01NOSUCHAPP00000000000000"), None)
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.text()),
        (404, "{\"message\":\"App not found\"}\n".into())
    );

    // Update: the CLI PUTs the whole object back with one config key changed; "" deletes a key.
    let mut full = app.clone();
    full["config"] = json!({"NEW": "1", "GONE": ""});
    full["annotations"] = json!({"a/b": "c"});
    let r = call("PUT", &lb.url(&format!("/v2/apps/{id}")), Some(full))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let updated = r.json();
    assert_eq!(updated["config"], json!({"K": "v", "NEW": "1"}));
    assert_eq!(updated["annotations"], json!({"a/b": "c", "x/y": "z"}));
    assert_eq!(updated["created_at"], app["created_at"], "created_at is kept");
    // Changing the name is refused.
    let r = call(
        "PUT",
        &lb.url(&format!("/v2/apps/{id}")),
        Some(json!({"name": "other"})),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 409);
    let r = call(
        "PUT",
        &lb.url("/v2/apps/01NOSUCHAPP00000000000000"),
        Some(json!({})),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 404);

    // Delete: 204 (with the CLI's Content-Type on DELETE), then 404.
    let r = call("DELETE", &lb.url(&format!("/v2/apps/{id}")), None)
        .await
        .unwrap();
    assert_eq!((r.status, r.body.len()), (204, 0));
    let r = call("DELETE", &lb.url(&format!("/v2/apps/{id}")), None)
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.json()["message"].clone()),
        (404, json!("App not found"))
    );
    lb.stop().await;
}

async fn fns_defaults_annotation_partial_put_and_conflicts(backend: Backend) {
    let lb = LbProc::start_on(backend, |_| {}).await.unwrap();
    let app = create_app(&lb, "fapp").await;
    let app_id = app["id"].as_str().unwrap();
    let other = create_app(&lb, "otherapp").await;

    let f = create_fn(&lb, app_id, "hello").await;
    let fn_id = f["id"].as_str().unwrap().to_owned();
    assert_eq!(
        (
            f["memory"].clone(),
            f["timeout"].clone(),
            f["idle_timeout"].clone()
        ),
        (json!(128), json!(30), json!(30))
    );
    let endpoint = format!("http://{}/invoke/{fn_id}", lb.addr());
    assert_eq!(
        f["annotations"]["fnproject.io/fn/invokeEndpoint"],
        json!(endpoint)
    );

    // Same name in the same app: 409; in another app: fine.
    let r = call(
        "POST",
        &lb.url("/v2/fns"),
        Some(json!({"app_id": app_id, "name": "hello", "image": "i"})),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 409);
    create_fn(&lb, other["id"].as_str().unwrap(), "hello").await;
    // Unknown app: 404; bad values: 400 with Fn's text.
    let r = call(
        "POST",
        &lb.url("/v2/fns"),
        Some(json!({"app_id": "01NOSUCH", "name": "x", "image": "i"})),
    )
    .await
    .unwrap();
    assert_eq!(
        (r.status, r.json()["message"].clone()),
        (404, json!("App not found"))
    );
    let r = call(
        "POST",
        &lb.url("/v2/fns"),
        Some(json!({"app_id": app_id, "name": "m", "image": "i", "memory": 99_999_999})),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 400);
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap()
            .starts_with("memory value is out of range")
    );
    let r = call(
        "POST",
        &lb.url("/v2/fns"),
        Some(json!({"app_id": app_id, "name": "noimg"})),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 400);

    // The CLI's name lookup: GET /v2/fns?app_id=A&name=F.
    let r = call(
        "GET",
        &lb.url(&format!("/v2/fns?app_id={app_id}&name=hello")),
        None,
    )
    .await
    .unwrap();
    let items = r.json()["items"].clone();
    assert_eq!(items.as_array().unwrap().len(), 1);
    assert_eq!(items[0]["id"], json!(fn_id));
    assert_eq!(
        items[0]["annotations"]["fnproject.io/fn/invokeEndpoint"],
        json!(endpoint)
    );

    // `fn update function --memory 256`: the whole object back, with our own annotation and times.
    let mut full = f.clone();
    full["memory"] = json!(256);
    full["config"] = json!({"FNKEY": "v"});
    let r = call("PUT", &lb.url(&format!("/v2/fns/{fn_id}")), Some(full))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let g = r.json();
    assert_eq!(g["memory"], json!(256));
    assert_eq!(g["config"], json!({"FNKEY": "v"}));
    assert_eq!(
        g["annotations"],
        json!({"fnproject.io/fn/invokeEndpoint": endpoint})
    );
    // `fn deploy`'s partial PUT: no name, no app_id.
    let r = call(
        "PUT",
        &lb.url(&format!("/v2/fns/{fn_id}")),
        Some(
            json!({"created_at": "0001-01-01T00:00:00.000Z", "id": fn_id, "image": "dfn:0.0.2", "memory": 512,
            "updated_at": "0001-01-01T00:00:00.000Z"}),
        ),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let g = r.json();
    assert_eq!(
        (g["image"].clone(), g["memory"].clone(), g["name"].clone()),
        (json!("dfn:0.0.2"), json!(512), json!("hello"))
    );
    assert_eq!(g["created_at"], f["created_at"]);
    assert_eq!(
        g["config"],
        json!({"FNKEY": "v"}),
        "config kept by a PUT without config"
    );
    // `fn unset config function`: {"config":{"FNKEY":""}}.
    let r = call(
        "PUT",
        &lb.url(&format!("/v2/fns/{fn_id}")),
        Some(json!({"config": {"FNKEY": ""}})),
    )
    .await
    .unwrap();
    assert!(
        r.json().get("config").is_none_or(|c| c == &json!({})),
        "{}",
        r.text()
    );
    // Renaming is refused.
    let r = call(
        "PUT",
        &lb.url(&format!("/v2/fns/{fn_id}")),
        Some(json!({"name": "renamed"})),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 400);

    // Public URL setting overrides the Host.
    lb.stop().await;
    let lb = LbProc::start_on(backend, |s| s.public_lb_url = "https://fn.example.com/".into())
        .await
        .unwrap();
    let app = create_app(&lb, "pub").await;
    let f = create_fn(&lb, app["id"].as_str().unwrap(), "f").await;
    assert_eq!(
        f["annotations"]["fnproject.io/fn/invokeEndpoint"],
        json!(format!(
            "https://fn.example.com/invoke/{}",
            f["id"].as_str().unwrap()
        ))
    );
    let r = call(
        "DELETE",
        &lb.url(&format!("/v2/fns/{}", f["id"].as_str().unwrap())),
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 204);
    let r = call(
        "GET",
        &lb.url(&format!("/v2/fns/{}", f["id"].as_str().unwrap())),
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        (r.status, r.json()["message"].clone()),
        (404, json!("Fn not found"))
    );
    lb.stop().await;
}

async fn triggers_crud_annotation_conflicts_and_cascade(backend: Backend) {
    let lb = LbProc::start_on(backend, |_| {}).await.unwrap();
    let app = create_app(&lb, "tapp").await;
    let app_id = app["id"].as_str().unwrap().to_owned();
    let f = create_fn(&lb, &app_id, "hello").await;
    let fn_id = f["id"].as_str().unwrap().to_owned();
    let body = json!({"app_id": app_id, "fn_id": fn_id, "name": "hello-trigger", "type": "http", "source": "/hello",
        "created_at": "0001-01-01T00:00:00.000Z", "updated_at": "0001-01-01T00:00:00.000Z"});
    let r = call("POST", &lb.url("/v2/triggers"), Some(body.clone()))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let t = r.json();
    let tid = t["id"].as_str().unwrap().to_owned();
    let endpoint = format!("http://{}/t/tapp/hello", lb.addr());
    assert_eq!(
        t["annotations"]["fnproject.io/trigger/httpEndpoint"],
        json!(endpoint)
    );
    assert_eq!(t["type"], json!("http"));

    // Duplicate source (another name): 409; duplicate name: 409.
    let mut dup = body.clone();
    dup["name"] = json!("other");
    let r = call("POST", &lb.url("/v2/triggers"), Some(dup)).await.unwrap();
    assert_eq!(r.status, 409);
    let mut dup = body.clone();
    dup["source"] = json!("/other");
    let r = call("POST", &lb.url("/v2/triggers"), Some(dup)).await.unwrap();
    assert_eq!(r.status, 409);
    // Validation: type, source prefix; unknown fn.
    let mut bad = body.clone();
    bad["type"] = json!("cron");
    assert_eq!(
        call("POST", &lb.url("/v2/triggers"), Some(bad))
            .await
            .unwrap()
            .status,
        400
    );
    let mut bad = body.clone();
    bad["source"] = json!("noslash");
    bad["name"] = json!("n2");
    assert_eq!(
        call("POST", &lb.url("/v2/triggers"), Some(bad))
            .await
            .unwrap()
            .status,
        400
    );
    let mut bad = body.clone();
    bad["fn_id"] = json!("01NOSUCHFN");
    bad["name"] = json!("n3");
    bad["source"] = json!("/n3");
    let r = call("POST", &lb.url("/v2/triggers"), Some(bad)).await.unwrap();
    assert_eq!(
        (r.status, r.json()["message"].clone()),
        (404, json!("Fn not found"))
    );

    // The CLI's lookups.
    for q in [
        format!("app_id={app_id}"),
        format!("app_id={app_id}&fn_id={fn_id}"),
        format!("app_id={app_id}&fn_id={fn_id}&name=hello-trigger"),
    ] {
        let r = call("GET", &lb.url(&format!("/v2/triggers?{q}")), None)
            .await
            .unwrap();
        let items = r.json()["items"].clone();
        assert_eq!(items.as_array().unwrap().len(), 1, "{q}");
        assert_eq!(
            items[0]["annotations"]["fnproject.io/trigger/httpEndpoint"],
            json!(endpoint)
        );
    }
    let r = call(
        "GET",
        &lb.url(&format!("/v2/triggers?app_id={app_id}&name=nosuch")),
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.json()["items"], json!([]));

    // PUT with only the user's annotation: merged, endpoint still there.
    let r = call(
        "PUT",
        &lb.url(&format!("/v2/triggers/{tid}")),
        Some(json!({"annotations": {"a/b": "c"}})),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let u = r.json();
    assert_eq!(u["annotations"]["a/b"], json!("c"));
    assert_eq!(
        u["annotations"]["fnproject.io/trigger/httpEndpoint"],
        json!(endpoint)
    );
    assert_eq!(u["source"], json!("/hello"));

    // Cascading app delete takes the fn and the trigger.
    let r = call("DELETE", &lb.url(&format!("/v2/apps/{app_id}")), None)
        .await
        .unwrap();
    assert_eq!(r.status, 204);
    let r = call("GET", &lb.url(&format!("/v2/triggers/{tid}")), None)
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.json()["message"].clone()),
        (404, json!("Trigger not found"))
    );
    let r = call("GET", &lb.url(&format!("/v2/fns/{fn_id}")), None)
        .await
        .unwrap();
    assert_eq!(r.status, 404);
    let r = call("GET", &lb.url(&format!("/v2/fns?app_id={app_id}")), None)
        .await
        .unwrap();
    assert_eq!(r.json()["items"], json!([]));
    lb.stop().await;
}

async fn pagination_walks_every_item_once(backend: Backend) {
    let lb = LbProc::start_on(backend, |_| {}).await.unwrap();
    for i in 0..35 {
        create_app(&lb, &format!("pg{i:02}")).await;
    }
    // Default page: 30 plus a cursor, as Fn.
    let r = call("GET", &lb.url("/v2/apps"), None).await.unwrap();
    let page = r.json();
    assert_eq!(page["items"].as_array().unwrap().len(), 30);
    let cursor = page["next_cursor"].as_str().unwrap().to_owned();
    let r = call("GET", &lb.url(&format!("/v2/apps?cursor={cursor}")), None)
        .await
        .unwrap();
    let page = r.json();
    assert_eq!(page["items"].as_array().unwrap().len(), 5);
    assert!(
        page.get("next_cursor").is_none(),
        "last page has no cursor: {page}"
    );
    // per_page=10 walks 4 pages, sorted, no duplicates.
    let mut names = Vec::new();
    let mut cursor = String::new();
    let mut pages = 0;
    loop {
        let r = call(
            "GET",
            &lb.url(&format!("/v2/apps?per_page=10&cursor={cursor}")),
            None,
        )
        .await
        .unwrap();
        let page = r.json();
        pages += 1;
        names.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a["name"].as_str().unwrap().to_owned()),
        );
        match page.get("next_cursor").and_then(Value::as_str) {
            Some(c) => cursor = c.to_owned(),
            None => break,
        }
    }
    assert_eq!(pages, 4);
    let want: Vec<String> = (0..35).map(|i| format!("pg{i:02}")).collect();
    assert_eq!(names, want);
    lb.stop().await;
}

async fn data_survives_a_restart(backend: Backend) {
    let lb = LbProc::start_on(backend, |_| {}).await.unwrap();
    let app = create_app(&lb, "persist").await;
    let f = create_fn(&lb, app["id"].as_str().unwrap(), "f").await;
    let db = lb.stop().await.unwrap();
    let lb = LbProc::start_with_url(&db.url, |_| {}).await.unwrap();
    let r = call("GET", &lb.url("/v2/apps?name=persist"), None).await.unwrap();
    assert_eq!(r.json()["items"][0]["id"], app["id"]);
    let r = call(
        "GET",
        &lb.url(&format!("/v2/fns/{}", f["id"].as_str().unwrap())),
        None,
    )
    .await
    .unwrap();
    assert_eq!((r.status, r.json()["image"].clone()), (200, json!("local/x:1")));
    lb.stop().await;
    drop(db);
}

async fn call_routes_without_runners(backend: Backend) {
    let lb = LbProc::start_on(backend, |s| s.max_request_size = 300)
        .await
        .unwrap();
    let app = create_app(&lb, "capp").await;
    let app_id = app["id"].as_str().unwrap().to_owned();
    let f = create_fn(&lb, &app_id, "f").await;
    let fn_id = f["id"].as_str().unwrap().to_owned();
    let r = call(
        "POST",
        &lb.url("/v2/triggers"),
        Some(json!({"app_id": app_id, "fn_id": fn_id, "name": "t", "type": "http", "source": "/a/b"})),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);

    // Unknown fn: 404 with Fn-Call-Id.
    let r = call("POST", &lb.url("/invoke/01NOSUCHFN0000000000000000"), None)
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.text()),
        (404, "{\"message\":\"Fn not found\"}\n".into())
    );
    assert_eq!(r.header("fn-call-id").len(), 26);
    // Empty pool: a clear 503 at once (Fn would spin for 360 s), with Retry-After.
    let started = std::time::Instant::now();
    let r = call(
        "POST",
        &lb.url(&format!("/invoke/{fn_id}")),
        Some(json!({"x": 1})),
    )
    .await
    .unwrap();
    assert_eq!(
        (r.status, r.json()["message"].clone()),
        (
            503,
            json!("No runner is configured on this LB (FN_RUNNER_ADDRESSES is empty)")
        )
    );
    assert_eq!(r.header("retry-after"), "15");
    assert_eq!(r.header("fn-call-id").len(), 26);
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
    // Request size limit: 413 with Fn's text.
    let big = "x".repeat(301);
    let r = request(
        "POST",
        &lb.url(&format!("/invoke/{fn_id}")),
        &BTreeMap::new(),
        big,
    )
    .await
    .unwrap();
    assert_eq!(
        (r.status, r.json()["message"].clone()),
        (
            413,
            json!("Content-Length too large for this server, 301 > max 300")
        )
    );
    // Triggers: unknown app, unknown source, then a known one reaching placement (503).
    let r = call("GET", &lb.url("/t/nosuchapp/x"), None).await.unwrap();
    assert_eq!(
        (r.status, r.json()["message"].clone()),
        (404, json!("App not found"))
    );
    let r = call("GET", &lb.url("/t/capp/nope"), None).await.unwrap();
    assert_eq!(
        (r.status, r.json()["message"].clone()),
        (404, json!("Trigger not found"))
    );
    assert_eq!(r.header("fn-call-id").len(), 26);
    let r = call("PUT", &lb.url("/t/capp/a/b"), None).await.unwrap();
    assert_eq!(r.status, 503);
    lb.stop().await;
}

/// Twenty clients create the same app at once: one wins, the others get Fn's 409, and one app exists.
async fn concurrent_creates_of_one_name_make_one_app(backend: Backend) {
    let lb = LbProc::start_on(backend, |_| {}).await.unwrap();
    let url = lb.url("/v2/apps");
    let tries = (0..20).map(|_| call("POST", &url, Some(json!({"name": "race"}))));
    let statuses: Vec<u16> = futures::future::join_all(tries)
        .await
        .into_iter()
        .map(|r| r.unwrap().status)
        .collect();
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 409).count(), 19, "{statuses:?}");
    let r = call("GET", &lb.url("/v2/apps?name=race"), None).await.unwrap();
    assert_eq!(r.json()["items"].as_array().unwrap().len(), 1);
    lb.stop().await;
}

/// Each scenario once per registry backend.
macro_rules! backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Backend::Sqlite).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Backend::Postgres).await;
                }
            )*
        }
    };
}

backends!(
    root_version_metrics_and_unknown_paths,
    apps_crud_merge_conflicts_and_errors,
    fns_defaults_annotation_partial_put_and_conflicts,
    triggers_crud_annotation_conflicts_and_cascade,
    pagination_walks_every_item_once,
    data_survives_a_restart,
    call_routes_without_runners,
    concurrent_creates_of_one_name_make_one_app,
);
