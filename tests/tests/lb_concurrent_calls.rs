//! Concurrent calls over three runners, in both Engage modes: every client gets its own body back
//! under its own call id, and nothing stays in flight.

use std::collections::BTreeMap;

use ferrofn_proto::health::health_check_response::ServingStatus;
use ferrofn_tests::lb_fixture::{invoke_path, setup};
use ferrofn_tests::lb_proc::fake_runner::{Behaviour, FakeRunner};
use ferrofn_tests::lb_proc::request;

#[tokio::test]
async fn concurrent_calls_all_answer_with_their_own_body() {
    for accept_ack in [false, true] {
        let b = || Behaviour {
            accept_ack,
            health: Some(ServingStatus::Serving),
            ..Behaviour::default()
        };
        let rs = [
            FakeRunner::start(b()).await.unwrap(),
            FakeRunner::start(b()).await.unwrap(),
            FakeRunner::start(b()).await.unwrap(),
        ];
        let (lb, _app, f) = setup(&[&rs[0], &rs[1], &rs[2]], |_| {}).await;
        let url = lb.url(&invoke_path(&f));
        let calls = (0..20).map(|i| {
            let url = url.clone();
            tokio::spawn(async move {
                let body = format!("call-{i}-").repeat(3000);
                let r = request("POST", &url, &BTreeMap::new(), body.clone())
                    .await
                    .unwrap();
                (r.status, r.text() == body, r.header("fn-call-id"))
            })
        });
        let mut ids = std::collections::HashSet::new();
        for c in calls {
            let (status, same, id) = c.await.unwrap();
            assert_eq!((status, same), (200, true), "ack={accept_ack}");
            ids.insert(id);
        }
        assert_eq!(ids.len(), 20, "distinct call ids");
        let total: u32 = rs.iter().map(FakeRunner::engaged).sum();
        assert_eq!(total, 20);
        assert_eq!(lb.handle.pool.in_flight(), 0);
        lb.stop().await;
    }
}
