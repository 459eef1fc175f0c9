//! The `ferrofn-lb` binary: `print-config` layering, refusing to start without mTLS files unless
//! `--plaintext`, the `certs` subcommand, SIGHUP re-reading the runner list, graceful SIGTERM.

use std::time::{Duration, Instant};

use serde_json::json;

use ferrofn_tests::lb_proc::fake_runner::{Behaviour, FakeRunner};
use ferrofn_tests::lb_proc::{LbBinary, json as call, lb_binary, register};

#[tokio::test]
async fn print_config_layers_env_and_flags() {
    let bin = lb_binary().await.unwrap();
    let out = tokio::process::Command::new(&bin)
        .args([
            "--placer",
            "ch-bounded",
            "--listen-address",
            "127.0.0.1",
            "print-config",
        ])
        .env("FN_PORT", "9999")
        .env("FN_PLACER", "ch")
        .env("FN_RUNNER_ADDRESSES", "a:1,b:2")
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("port = 9999"), "{text}");
    assert!(text.contains("placer = \"ch-bounded\""), "flag beats env: {text}");
    assert!(text.contains("\"a:1\""), "{text}");
    assert!(text.contains("plaintext = false"), "{text}");
}

#[tokio::test]
async fn refuses_to_start_without_mtls_files_unless_plaintext() {
    let bin = lb_binary().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new(&bin)
        .current_dir(dir.path())
        .env("FN_PORT", "0")
        .env("FERROFN_LISTEN_ADDRESS", "127.0.0.1")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("mTLS"), "{err}");

    // `certs` writes the files the default settings look for (certs/ca.pem, lb.pem, lb-key.pem).
    let out = tokio::process::Command::new(&bin)
        .current_dir(dir.path())
        .args(["certs", "--out", "certs", "--runner-names", "r1"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for f in ["ca.pem", "lb.pem", "lb-key.pem"] {
        assert!(dir.path().join("certs").join(f).is_file(), "{f}");
    }
}

#[tokio::test]
async fn probe_subcommand_checks_a_running_lb() {
    let bin = lb_binary().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite3://{}", dir.path().join("fn.db").display());
    let lb = LbBinary::start(&["--plaintext"], &[("FN_DB_URL", db.as_str())])
        .await
        .unwrap();
    let ok = tokio::process::Command::new(&bin)
        .args(["probe", "--addr", &lb.addr.to_string()])
        .output()
        .await
        .unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let port = ferrofn_tests::lb_proc::free_port().unwrap();
    let down = tokio::process::Command::new(&bin)
        .args([
            "probe",
            "--addr",
            &format!("127.0.0.1:{port}"),
            "--timeout-ms",
            "500",
        ])
        .output()
        .await
        .unwrap();
    assert!(!down.status.success(), "nothing listens there");
}

#[tokio::test]
async fn sighup_rereads_the_runner_list_and_sigterm_stops() {
    let a = FakeRunner::start(Behaviour {
        body: Some(b"from-a".to_vec()),
        ..Behaviour::default()
    })
    .await
    .unwrap();
    let b = FakeRunner::start(Behaviour {
        body: Some(b"from-b".to_vec()),
        ..Behaviour::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("lb.toml");
    let db = dir.path().join("fn.db");
    let write_cfg = |runner: &str| {
        std::fs::write(
            &cfg,
            format!(
                "runner_addresses = [\"{runner}\"]\ndb_url = \"{}\"\n",
                db.display()
            ),
        )
        .unwrap();
    };
    write_cfg(&a.address());
    let mut lb = LbBinary::start(&["--plaintext", "--config", cfg.to_str().unwrap()], &[])
        .await
        .unwrap();
    let (_app, f) = register(&lb.url(""), "hup", json!({"name": "f", "image": "i"}))
        .await
        .unwrap();
    let path = format!("/invoke/{}", f["id"].as_str().unwrap());
    assert_eq!(call("POST", &lb.url(&path), None).await.unwrap().text(), "from-a");

    write_cfg(&b.address());
    lb.signal("HUP").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = call("POST", &lb.url(&path), None).await.unwrap();
        if r.text() == "from-b" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not switch runners: {}",
            lb.stderr.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    lb.signal("TERM").unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), lb.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "graceful exit: {status}");
}

#[tokio::test]
async fn sigterm_lets_a_running_detached_call_finish() {
    let r = FakeRunner::start(Behaviour {
        run_ms: 1500,
        ..Behaviour::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite3://{}", dir.path().join("fn.db").display());
    let addr = r.address();
    let mut lb = LbBinary::start(
        &["--plaintext"],
        &[("FN_RUNNER_ADDRESSES", addr.as_str()), ("FN_DB_URL", db.as_str())],
    )
    .await
    .unwrap();
    let (_app, f) = register(&lb.url(""), "drain", json!({"name": "f", "image": "i"}))
        .await
        .unwrap();
    let headers = std::collections::BTreeMap::from([("fn-invoke-type", "detached")]);
    let path = format!("/invoke/{}", f["id"].as_str().unwrap());
    let resp = ferrofn_tests::lb_proc::request("POST", &lb.url(&path), &headers, "x")
        .await
        .unwrap();
    assert_eq!(resp.status, 202);
    let acked = Instant::now();
    lb.signal("TERM").unwrap();
    let status = tokio::time::timeout(Duration::from_secs(20), lb.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
    assert!(
        acked.elapsed() >= Duration::from_millis(1200),
        "exited before the call ended: {:?}",
        acked.elapsed()
    );
    assert_eq!(
        r.shared.completed.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the detached call ran to its end"
    );
}
