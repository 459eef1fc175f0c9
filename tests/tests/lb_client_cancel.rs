//! A client that goes away mid-call: the LB resets the Engage stream, so the runner sees the call
//! cancelled, and the runner's in-flight count returns to 0.

use std::time::Duration;

use tokio::io::AsyncWriteExt;

use ferrofn_tests::lb_fixture::{eventually, invoke_path, setup};
use ferrofn_tests::lb_proc::fake_runner::{Behaviour, FakeRunner};

#[tokio::test]
async fn client_disconnect_cancels_the_engage_stream() {
    let r = FakeRunner::start(Behaviour {
        hang: true,
        ..Behaviour::default()
    })
    .await
    .unwrap();
    let (lb, _app, f) = setup(&[&r], |_| {}).await;
    let mut s = tokio::net::TcpStream::connect(lb.addr()).await.unwrap();
    let req = format!(
        "POST {} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi",
        invoke_path(&f)
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let engaged = || {
        r.engaged() == 1
            && r.seen()
                .first()
                .is_some_and(|x| x.frames.last().is_some_and(|d| d.eof))
    };
    assert!(
        eventually(Duration::from_secs(5), engaged).await,
        "call reached the runner"
    );
    drop(s);
    let cancelled = || r.shared.cancelled.load(std::sync::atomic::Ordering::SeqCst) == 1;
    assert!(
        eventually(Duration::from_secs(5), cancelled).await,
        "runner saw the stream cancelled"
    );
    assert_eq!(lb.handle.pool.runners()[0].in_flight(), 0);
    lb.stop().await;
}
