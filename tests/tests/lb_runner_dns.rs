//! Runners found through DNS: an `FN_RUNNER_ADDRESSES` entry that is a name with several addresses
//! is one runner per address; addresses that appear join without SIGHUP, those that vanish are
//! drained out of placement (their in-flight calls finish); a failed lookup keeps the runners; `ch`
//! keeps each fn on its rendezvous home, so only the fns of a runner that comes or goes move; the
//! runners are dialled by address and their certificates verified against the name.
//!
//! The "DNS" is the test's own resolver, injected through `ferrofn_lb::start_with_resolver` (a real
//! name with several A records would need `/etc/hosts` or a DNS server; the LB's production path is
//! `tokio::net::lookup_host`, the system resolver). The runners are real gRPC servers on several
//! loopback addresses (127.0.0.2, 127.0.0.3, ...) sharing one port, as a service's replicas do.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::{Value, json};

use ferrofn_lb::placer::ch::rendezvous_order;
use ferrofn_lb::placer::hash::member_key;
use ferrofn_lb::pool::{Resolve, RunnerState};
use ferrofn_tests::lb_fixture::{eventually, invoke_path};
use ferrofn_tests::lb_proc::fake_runner::{Behaviour, FakeRunner};
use ferrofn_tests::lb_proc::{LbProc, json as call};

/// The metrics are process-wide: the tests of this file run one at a time so that counts add up.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The test's DNS: names answer the addresses set (with the port asked), fail, or are unknown.
#[derive(Debug, Default)]
struct Dns {
    answers: Mutex<HashMap<String, Option<Vec<IpAddr>>>>,
    lookups: AtomicU64,
}

impl Dns {
    fn set(&self, name: &str, ips: Option<&[IpAddr]>) {
        self.answers
            .lock()
            .unwrap()
            .insert(name.into(), ips.map(<[IpAddr]>::to_vec));
    }
}

impl Resolve for Dns {
    fn lookup<'a>(&'a self, host: &'a str, port: u16) -> BoxFuture<'a, io::Result<Vec<SocketAddr>>> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        let answer = self.answers.lock().unwrap().get(host).cloned();
        Box::pin(async move {
            match answer {
                Some(Some(ips)) => Ok(ips.into_iter().map(|ip| SocketAddr::new(ip, port)).collect()),
                Some(None) => Err(io::Error::other("SERVFAIL")),
                None => Err(io::Error::new(io::ErrorKind::NotFound, "NXDOMAIN")),
            }
        })
    }
}

/// `n` fake runners on 127.0.0.2, 127.0.0.3, ... sharing one port; with `tls` (a function giving
/// each runner's server config) when given.
async fn replicas(
    n: u8,
    b: &Behaviour,
    tls: impl Fn() -> Option<ferrofn_common::tls::ReloadingServerTls>,
) -> (u16, Vec<FakeRunner>) {
    for _ in 0..50 {
        let first = FakeRunner::start_at("127.0.0.2:0".parse().unwrap(), b.clone(), tls())
            .await
            .unwrap();
        let port = first.addr.port();
        let mut all = vec![first];
        for i in 1..n {
            let at = SocketAddr::new(IpAddr::from([127, 0, 0, 2 + i]), port);
            match FakeRunner::start_at(at, b.clone(), tls()).await {
                Ok(r) => all.push(r),
                Err(_) => break, // the port is taken there: another port
            }
        }
        if all.len() == usize::from(n) {
            return (port, all);
        }
    }
    panic!("no port free on {n} loopback addresses");
}

fn ip(r: &FakeRunner) -> IpAddr {
    r.addr.ip()
}

/// Calls of `fn_id` a runner saw.
fn calls_of(r: &FakeRunner, fn_id: &str) -> usize {
    r.seen()
        .iter()
        .filter(|s| {
            serde_json::from_str::<Value>(&s.try_call.models_call_json).unwrap()["fn_id"] == json!(fn_id)
        })
        .count()
}

/// The rendezvous home (an index into `members`) of `fn_id`.
fn home(fn_id: &str, members: &[&FakeRunner]) -> usize {
    let keys: Vec<u64> = members.iter().map(|r| member_key(&r.address())).collect();
    rendezvous_order(fn_id, &keys)[0]
}

fn members(lb: &LbProc) -> Vec<String> {
    lb.handle
        .pool
        .runners()
        .iter()
        .map(|r| r.addr().to_owned())
        .collect()
}

fn all_up(lb: &LbProc) -> bool {
    lb.handle
        .pool
        .runners()
        .iter()
        .all(|r| r.state() == RunnerState::Up)
}

fn sorted(rs: &[&FakeRunner]) -> Vec<String> {
    let mut v: Vec<String> = rs.iter().map(|r| r.address()).collect();
    v.sort();
    v
}

/// A counter of `/metrics` (0 when absent).
async fn metric(lb: &LbProc, name: &str) -> f64 {
    let text = call("GET", &lb.url("/metrics"), None).await.unwrap().text();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

async fn invoke(lb: &LbProc, f: &Value) -> u16 {
    call("POST", &lb.url(&invoke_path(f)), None).await.unwrap().status
}

#[tokio::test]
async fn runners_join_and_leave_through_dns_and_ch_moves_only_their_fns() {
    let _serial = SERIAL.lock().await;
    let dns = Arc::new(Dns::default());
    let (port, rs) = replicas(4, &Behaviour::default(), || None).await;
    let (a, b, c, d) = (&rs[0], &rs[1], &rs[2], &rs[3]);
    dns.set("runners", Some(&[ip(c), ip(a), ip(b)]));
    let lb = LbProc::start_resolving(dns.clone(), |s| {
        s.runner_addresses = vec![format!("runners:{port}")];
        s.runner_resolve_interval_ms = 50;
        s.placer = "ch".into();
    })
    .await
    .unwrap();
    // Resolved before the LB served: one runner per address, in address order.
    assert_eq!(members(&lb), sorted(&[a, b, c]));
    assert!(all_up(&lb), "probed before serving");

    // Enough fns that each of the four runners is the home of some, before and after each change.
    let app = call("POST", &lb.url("/v2/apps"), Some(json!({"name": "dns"})))
        .await
        .unwrap()
        .json();
    let mut fns: Vec<Value> = Vec::new();
    for i in 0..400 {
        let f = call(
            "POST",
            &lb.url("/v2/fns"),
            Some(json!({"app_id": app["id"], "name": format!("f{i}"), "image": "i"})),
        )
        .await
        .unwrap()
        .json();
        fns.push(f);
        let ids = || fns.iter().map(|f| f["id"].as_str().unwrap());
        let on = |set: &[&FakeRunner], r: usize| ids().filter(|id| home(id, set) == r).count();
        if (0..3).all(|r| on(&[a, b, c], r) >= 2)
            && (0..4).all(|r| on(&[a, b, c, d], r) >= 2)
            && (0..3).all(|r| on(&[a, c, d], r) >= 2)
        {
            break;
        }
    }
    let id = |f: &Value| f["id"].as_str().unwrap().to_owned();
    let check_homes = |set: &[&FakeRunner], per_fn: usize| {
        for f in &fns {
            let h = home(&id(f), set);
            for (i, r) in set.iter().enumerate() {
                let want = if i == h { per_fn } else { 0 };
                assert_eq!(calls_of(r, &id(f)), want, "fn {} home {h} runner {i}", id(f));
            }
        }
    };
    for f in &fns {
        assert_eq!(invoke(&lb, f).await, 200);
    }
    check_homes(&[a, b, c], 1);

    // d's address appears: it joins without SIGHUP; fns move only to it.
    let joins = metric(&lb, "lb_runner_joins_total").await;
    dns.set("runners", Some(&[ip(a), ip(b), ip(c), ip(d)]));
    assert!(
        eventually(Duration::from_secs(10), || members(&lb) == sorted(&[a, b, c, d])
            && all_up(&lb))
        .await,
        "{:?}",
        members(&lb)
    );
    assert_eq!(metric(&lb, "lb_runner_joins_total").await, joins + 1.0);
    assert_eq!(metric(&lb, "lb_runner_members").await, 4.0);
    for f in &fns {
        assert_eq!(invoke(&lb, f).await, 200);
    }
    let mut moved = 0;
    for f in &fns {
        let (before, after) = (home(&id(f), &[a, b, c]), home(&id(f), &[a, b, c, d]));
        let was = [a, b, c][before];
        let now = [a, b, c, d][after];
        assert_eq!(calls_of(now, &id(f)), if std::ptr::eq(now, was) { 2 } else { 1 });
        if !std::ptr::eq(now, was) {
            assert!(std::ptr::eq(now, d), "a fn moved elsewhere than to the joiner");
            moved += 1;
        }
    }
    assert!(
        moved >= 2 && moved < fns.len() / 2,
        "moved {moved} of {}",
        fns.len()
    );
    println!("join: {moved} of {} fns moved to the new runner", fns.len());

    // b's address vanishes while calls run on it: no new call reaches b, its calls finish, then it
    // is dropped.
    let on_b: Vec<Value> = fns
        .iter()
        .filter(|f| home(&id(f), &[a, b, c, d]) == 1)
        .cloned()
        .collect();
    for r in &rs {
        r.set(|x| x.run_ms = 2000);
    }
    let b_engaged = b.engaged();
    let running: Vec<_> = on_b
        .iter()
        .map(|f| {
            let url = lb.url(&invoke_path(f));
            tokio::spawn(async move { call("POST", &url, None).await.unwrap().status })
        })
        .collect();
    assert!(
        eventually(Duration::from_secs(10), || b.engaged()
            == b_engaged + on_b.len() as u32)
        .await,
        "the calls are running on b"
    );
    let leaves = metric(&lb, "lb_runner_leaves_total").await;
    dns.set("runners", Some(&[ip(a), ip(c), ip(d)]));
    assert!(eventually(Duration::from_secs(10), || members(&lb) == sorted(&[a, c, d])).await);
    let leaving = lb.handle.pool.leaving();
    assert_eq!(leaving.len(), 1);
    assert_eq!(leaving[0].addr(), b.address());
    assert_eq!(leaving[0].in_flight(), on_b.len() as u64, "its calls still run");
    assert_eq!(metric(&lb, "lb_runner_leaves_total").await, leaves + 1.0);
    // New calls of b's fns go to their next choice; b gets none.
    let again: Vec<_> = on_b
        .iter()
        .map(|f| {
            let url = lb.url(&invoke_path(f));
            tokio::spawn(async move { call("POST", &url, None).await.unwrap().status })
        })
        .collect();
    for t in running.into_iter().chain(again) {
        assert_eq!(t.await.unwrap(), 200, "every call succeeds");
    }
    assert_eq!(
        b.engaged(),
        b_engaged + on_b.len() as u32,
        "no new call on the leaver"
    );
    for f in &on_b {
        let next = [a, c, d][home(&id(f), &[a, c, d])];
        assert!(
            calls_of(next, &id(f)) >= 1,
            "fn {} went to its next choice",
            id(f)
        );
    }
    assert!(
        eventually(Duration::from_secs(10), || lb.handle.pool.leaving().is_empty()).await,
        "dropped once its calls ended"
    );
    for r in &rs {
        r.set(|x| x.run_ms = 0);
    }

    // The DNS fails: the runners stay, calls keep working.
    dns.set("runners", None);
    let lookups = dns.lookups.load(Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(10), || dns.lookups.load(Ordering::SeqCst)
            >= lookups + 3)
        .await
    );
    assert_eq!(members(&lb), sorted(&[a, c, d]));
    for f in fns.iter().take(10) {
        assert_eq!(invoke(&lb, f).await, 200);
    }
    assert!(metric(&lb, "lb_runner_resolve_failures_total").await >= 3.0);
    lb.stop().await;
}

#[tokio::test]
async fn members_are_dialled_by_address_and_verified_against_the_name() {
    let _serial = SERIAL.lock().await;
    use ferrofn_common::certs::{ClusterCertOptions, generate_cluster};
    use ferrofn_common::tls::{ReloadingServerTls, TlsFiles};
    ferrofn_common::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    // The runners' certificate carries the service name (and localhost, 127.0.0.1), not
    // 127.0.0.2 or 127.0.0.3, which the LB dials.
    let opts = ClusterCertOptions {
        runner_names: vec!["runners".into()],
        ..ClusterCertOptions::default()
    };
    let certs = generate_cluster(dir.path(), &opts).unwrap();
    let tls = || Some(ReloadingServerTls::new(TlsFiles::runner_in(dir.path(), "runners")).unwrap());
    let (port, rs) = replicas(2, &Behaviour::default(), tls).await;
    let dns = Arc::new(Dns::default());
    let ips: Vec<IpAddr> = rs.iter().map(ip).collect();
    dns.set("runners", Some(&ips));
    dns.set("impostor", Some(&ips));
    let lb_files = certs.lb.clone();
    let start = |entry: &str, server_name: &str| {
        let (entry, server_name, files, dns) = (
            entry.to_owned(),
            server_name.to_owned(),
            lb_files.clone(),
            dns.clone(),
        );
        async move {
            let lb = LbProc::start_resolving(dns, |s| {
                s.runner_addresses = vec![format!("{entry}:{port}")];
                s.plaintext = false;
                s.tls.ca = files.ca.clone();
                s.tls.cert = files.cert.clone();
                s.tls.key = files.key.clone();
                s.tls.server_name = server_name;
                s.no_runner_wait_ms = 300;
            })
            .await
            .unwrap();
            let app = call("POST", &lb.url("/v2/apps"), Some(json!({"name": "t"})))
                .await
                .unwrap()
                .json();
            let f = call(
                "POST",
                &lb.url("/v2/fns"),
                Some(json!({"app_id": app["id"], "name": "f", "image": "i"})),
            )
            .await
            .unwrap()
            .json();
            (lb, f)
        }
    };

    // Dialled at 127.0.0.2 / 127.0.0.3, verified as "runners": both serve calls.
    let (lb, f) = start("runners", "").await;
    assert_eq!(members(&lb).len(), 2);
    for _ in 0..30 {
        assert_eq!(invoke(&lb, &f).await, 200);
    }
    assert!(rs.iter().all(|r| r.engaged() > 0), "both replicas took calls");
    lb.stop().await;

    // The same addresses under a name their certificate does not carry: refused (503).
    let engaged: u32 = rs.iter().map(FakeRunner::engaged).sum();
    let (lb, f) = start("impostor", "").await;
    assert_eq!(members(&lb).len(), 2);
    assert_eq!(invoke(&lb, &f).await, 503);
    assert_eq!(rs.iter().map(FakeRunner::engaged).sum::<u32>(), engaged);
    lb.stop().await;

    // FERROFN_TLS_SERVER_NAME still wins over the entry's name.
    let (lb, f) = start("impostor", "runners").await;
    assert_eq!(invoke(&lb, &f).await, 200);
    lb.stop().await;
}

/// The system resolver, counting its lookups.
#[derive(Debug, Default)]
struct Counted(AtomicU64);

impl Resolve for Counted {
    fn lookup<'a>(&'a self, host: &'a str, port: u16) -> BoxFuture<'a, io::Result<Vec<SocketAddr>>> {
        self.0.fetch_add(1, Ordering::SeqCst);
        ferrofn_lb::pool::SystemResolver.lookup(host, port)
    }
}

/// The production path: the system resolver looks `localhost` up (one loopback address per family,
/// IPv4 kept): one runner, dialled by name as before, and calls go through.
#[tokio::test]
async fn a_real_name_with_one_address_stays_one_runner_dialled_by_name() {
    let _serial = SERIAL.lock().await;
    let r = FakeRunner::start(Behaviour::default()).await.unwrap();
    let entry = format!("localhost:{}", r.addr.port());
    let counted = Arc::new(Counted::default());
    let lb = LbProc::start_resolving(counted.clone(), |s| {
        s.runner_addresses = vec![entry.clone()];
        s.runner_resolve_interval_ms = 20;
    })
    .await
    .unwrap();
    let app = call("POST", &lb.url("/v2/apps"), Some(json!({"name": "one"})))
        .await
        .unwrap()
        .json();
    let f = call(
        "POST",
        &lb.url("/v2/fns"),
        Some(json!({"app_id": app["id"], "name": "f", "image": "i"})),
    )
    .await
    .unwrap()
    .json();
    let runners = lb.handle.pool.runners();
    assert_eq!(members(&lb), vec![entry.clone()]);
    // Several lookups later, still the same runner (not replaced, not expanded).
    let seen = counted.0.load(Ordering::SeqCst);
    assert!(seen >= 1, "looked up at start");
    assert!(
        eventually(Duration::from_secs(10), || counted.0.load(Ordering::SeqCst)
            >= seen + 3)
        .await
    );
    assert!(Arc::ptr_eq(&lb.handle.pool.runners()[0], &runners[0]));
    assert_eq!(invoke(&lb, &f).await, 200);
    assert_eq!(r.engaged(), 1);
    lb.stop().await;
}
