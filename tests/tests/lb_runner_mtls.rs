//! mTLS from the LB to its runners, on by default: calls go through with the cluster's
//! certificates; an LB certificate from another CA, or plaintext, is refused (the runner is down,
//! 503).

use serde_json::json;

use ferrofn_tests::lb_fixture::{invoke_path, setup};
use ferrofn_tests::lb_proc::fake_runner::{Behaviour, FakeRunner};
use ferrofn_tests::lb_proc::json as call;

#[tokio::test]
async fn mtls_to_runners_by_default() {
    use ferrofn_common::certs::{ClusterCertOptions, generate_cluster};
    use ferrofn_common::tls::{ReloadingServerTls, TlsFiles};
    ferrofn_common::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let opts = ClusterCertOptions {
        runner_names: vec!["r1".into()],
        ..ClusterCertOptions::default()
    };
    let certs = generate_cluster(dir.path(), &opts).unwrap();
    let server_tls = ReloadingServerTls::new(TlsFiles::runner_in(dir.path(), "r1")).unwrap();
    let r = FakeRunner::start_tls(Behaviour::default(), Some(server_tls))
        .await
        .unwrap();
    let lb_files = certs.lb.clone();
    let (lb, _app, f) = setup(&[&r], |s| {
        s.plaintext = false;
        s.tls.ca = lb_files.ca.clone();
        s.tls.cert = lb_files.cert.clone();
        s.tls.key = lb_files.key.clone();
    })
    .await;
    let resp = call("POST", &lb.url(&invoke_path(&f)), Some(json!({"tls": true})))
        .await
        .unwrap();
    assert_eq!((resp.status, resp.json()), (200, json!({"tls": true})));
    lb.stop().await;

    // An LB with a certificate from another CA is refused: the runner is down, 503.
    let other = tempfile::tempdir().unwrap();
    let other_certs = generate_cluster(other.path(), &ClusterCertOptions::default()).unwrap();
    let (lb, _app, f) = setup(&[&r], |s| {
        s.plaintext = false;
        s.tls.ca = lb_files.ca.clone();
        s.tls.cert = other_certs.lb.cert.clone();
        s.tls.key = other_certs.lb.key.clone();
        s.placer_timeout_ms = 600;
    })
    .await;
    let resp = call("POST", &lb.url(&invoke_path(&f)), None).await.unwrap();
    assert_eq!(resp.status, 503);
    assert_eq!(r.engaged(), 1, "only the mTLS call got through");
    // Plaintext to a TLS runner fails too.
    lb.stop().await;
    let (lb, _app, f) = setup(&[&r], |s| {
        s.plaintext = true;
        s.placer_timeout_ms = 600;
    })
    .await;
    assert_eq!(
        call("POST", &lb.url(&invoke_path(&f)), None)
            .await
            .unwrap()
            .status,
        503
    );
    lb.stop().await;
}
