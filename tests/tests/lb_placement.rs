//! The `ch` and `ch-bounded` placers: with even load, each fn goes to its home runner (Fn's jump
//! hash of the fn id), and fns spread over the runners.

use serde_json::{Value, json};

use ferrofn_tests::lb_fixture::{invoke_path, setup};
use ferrofn_tests::lb_proc::fake_runner::{Behaviour, FakeRunner};
use ferrofn_tests::lb_proc::json as call;

#[tokio::test]
async fn ch_and_bounded_placers_send_each_fn_to_its_home_runner() {
    for placer in ["ch", "ch-bounded"] {
        let rs = [
            FakeRunner::start(Behaviour::default()).await.unwrap(),
            FakeRunner::start(Behaviour::default()).await.unwrap(),
            FakeRunner::start(Behaviour::default()).await.unwrap(),
        ];
        let (lb, app, _f) = setup(&[&rs[0], &rs[1], &rs[2]], |s| s.placer = placer.into()).await;
        let mut homes = std::collections::HashSet::new();
        for i in 0..8 {
            let f = call(
                "POST",
                &lb.url("/v2/fns"),
                Some(json!({"app_id": app["id"], "name": format!("f{i}"), "image": "i"})),
            )
            .await
            .unwrap()
            .json();
            let fn_id = f["id"].as_str().unwrap().to_owned();
            let home = ferrofn_lb::placer::ch::home(&fn_id, 3);
            homes.insert(home);
            // Sequential calls: even (zero) load, so ch-bounded keeps them home too.
            for _ in 0..3 {
                assert_eq!(
                    call("POST", &lb.url(&invoke_path(&f)), None)
                        .await
                        .unwrap()
                        .status,
                    200
                );
            }
            for (idx, r) in rs.iter().enumerate() {
                let n = r
                    .seen()
                    .iter()
                    .filter(|s| {
                        serde_json::from_str::<Value>(&s.try_call.models_call_json).unwrap()["fn_id"]
                            == json!(fn_id)
                    })
                    .count();
                assert_eq!(
                    n,
                    if idx == home { 3 } else { 0 },
                    "{placer}: fn {fn_id} home {home}, runner {idx}"
                );
            }
        }
        assert!(homes.len() > 1, "8 fns spread over several runners");
        lb.stop().await;
    }
}
