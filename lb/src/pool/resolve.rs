//! Runners found through DNS: an entry of `FN_RUNNER_ADDRESSES` that is a host name is looked up
//! every `FERROFN_RUNNER_RESOLVE_INTERVAL_MSECS`. A name with several addresses (compose `--scale`,
//! a Kubernetes headless Service) gives one pool member per address, dialled at that address and
//! verified (mTLS) against the name; a name with one address stays one member dialled by name, as
//! a configured runner (the channel resolves it again on each connect, so a runner restarted with a
//! new address is found at once). A failed lookup keeps the members last known.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures::future::BoxFuture;

/// Default period of the lookups.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
/// Bound of one lookup (a resolver that does not answer counts as a failed lookup).
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Looks host names up. The LB uses [`SystemResolver`]; tests inject their own.
pub trait Resolve: Send + Sync + fmt::Debug {
    /// Every address of `host` (a name, not a literal address), with `port`.
    fn lookup<'a>(&'a self, host: &'a str, port: u16) -> BoxFuture<'a, io::Result<Vec<SocketAddr>>>;
}

/// The system's resolver (`getaddrinfo` through `tokio::net::lookup_host`: `/etc/hosts`, then the
/// DNS servers of `/etc/resolv.conf`; in a container, Docker's or the cluster's DNS).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn lookup<'a>(&'a self, host: &'a str, port: u16) -> BoxFuture<'a, io::Result<Vec<SocketAddr>>> {
        Box::pin(async move { Ok(tokio::net::lookup_host((host, port)).await?.collect()) })
    }
}

/// A configured runner address split for the resolver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// A literal IP address (or something the resolver cannot use): dialled as configured.
    Literal,
    /// A host name to look up, and the port.
    Name {
        /// The name (also the TLS server name of the members found through it).
        host: String,
        /// The port every member is dialled on.
        port: u16,
    },
}

/// Classifies a `host:port` entry (an `http://` prefix, as the channel accepts, is ignored).
pub fn classify(addr: &str) -> EntryKind {
    let bare = addr
        .strip_prefix("http://")
        .or_else(|| addr.strip_prefix("https://"))
        .unwrap_or(addr);
    if bare.starts_with('[') || bare.parse::<SocketAddr>().is_ok() {
        return EntryKind::Literal;
    }
    let Some((host, port)) = bare.rsplit_once(':') else {
        return EntryKind::Literal;
    };
    match port.parse::<u16>() {
        Ok(port) if !host.is_empty() && host.parse::<IpAddr>().is_err() && !host.contains(':') => {
            EntryKind::Name {
                host: host.to_owned(),
                port,
            }
        }
        _ => EntryKind::Literal,
    }
}

/// The addresses of a lookup that become members: those of one family (IPv4 when the name has any,
/// else IPv6: a dual-stack runner has one of each and must count once), without duplicates, sorted.
pub fn choose(found: &[SocketAddr]) -> Vec<SocketAddr> {
    let v4 = found.iter().any(SocketAddr::is_ipv4);
    let mut out: Vec<SocketAddr> = found.iter().copied().filter(|a| a.is_ipv4() == v4).collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// One member of the pool as an entry gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its identity in the pool (logs, metrics, placement): the entry as configured, or `ip:port`
    /// for a member found through a name with several addresses.
    pub key: String,
    /// What the channel dials (`host:port`).
    pub dial: String,
    /// The name its certificate must carry (unless `FERROFN_TLS_SERVER_NAME` overrides it).
    pub verify: String,
    /// Found through a name with several addresses (identified by address, not list position).
    pub expanded: bool,
}

impl Member {
    /// The entry itself, dialled as configured.
    pub fn configured(addr: &str) -> Self {
        let bare = addr
            .strip_prefix("http://")
            .or_else(|| addr.strip_prefix("https://"))
            .unwrap_or(addr);
        let host = match bare.rsplit_once(':') {
            Some((h, _)) => h,
            None => bare,
        };
        Self {
            key: addr.to_owned(),
            dial: addr.to_owned(),
            verify: host.to_owned(),
            expanded: false,
        }
    }

    /// The members of entry `addr` (a name `host`) given a lookup's `found` addresses: one per
    /// address when there are several, else the entry itself.
    pub fn from_lookup(addr: &str, host: &str, found: &[SocketAddr]) -> Vec<Self> {
        let chosen = choose(found);
        if chosen.len() <= 1 {
            return vec![Self::configured(addr)];
        }
        chosen
            .into_iter()
            .map(|a| Self {
                key: a.to_string(),
                dial: a.to_string(),
                verify: host.to_owned(),
                expanded: true,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_names_or_literals() {
        assert_eq!(classify("10.0.0.1:9190"), EntryKind::Literal);
        assert_eq!(classify("[::1]:9190"), EntryKind::Literal);
        assert_eq!(classify("garbage"), EntryKind::Literal);
        assert_eq!(
            classify("runner:9190"),
            EntryKind::Name {
                host: "runner".into(),
                port: 9190
            }
        );
        assert_eq!(
            classify("http://runners.fn.svc.cluster.local:9190"),
            EntryKind::Name {
                host: "runners.fn.svc.cluster.local".into(),
                port: 9190
            }
        );
        assert_eq!(classify("runner:notaport"), EntryKind::Literal);
    }

    #[test]
    fn one_family_no_duplicates_sorted() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        let found = [
            a("10.0.0.3:1"),
            a("[fd00::3]:1"),
            a("10.0.0.2:1"),
            a("10.0.0.3:1"),
        ];
        assert_eq!(choose(&found), vec![a("10.0.0.2:1"), a("10.0.0.3:1")]);
        assert_eq!(
            choose(&[a("[fd00::3]:1"), a("[fd00::2]:1")]),
            vec![a("[fd00::2]:1"), a("[fd00::3]:1")]
        );
        // localhost on a dual-stack host is one runner, dialled by name.
        let m = Member::from_lookup(
            "localhost:9190",
            "localhost",
            &[a("[::1]:9190"), a("127.0.0.1:9190")],
        );
        assert_eq!(m, vec![Member::configured("localhost:9190")]);
        assert_eq!(m[0].verify, "localhost");
        let m = Member::from_lookup("runner:9190", "runner", &[a("10.0.0.3:9190"), a("10.0.0.2:9190")]);
        assert_eq!(m.len(), 2);
        assert_eq!(
            (
                m[0].key.as_str(),
                m[0].dial.as_str(),
                m[0].verify.as_str(),
                m[0].expanded
            ),
            ("10.0.0.2:9190", "10.0.0.2:9190", "runner", true)
        );
        let m = Member::from_lookup("[v6]", "x", &[a("[fd00::2]:9190"), a("[fd00::3]:9190")]);
        assert_eq!(m[1].dial, "[fd00::3]:9190");
    }

    #[tokio::test]
    async fn the_system_resolver_finds_localhost() {
        let found = SystemResolver.lookup("localhost", 9190).await.unwrap();
        assert!(!found.is_empty());
        assert!(
            found.iter().all(|a| a.ip().is_loopback() && a.port() == 9190),
            "{found:?}"
        );
        assert_eq!(
            Member::from_lookup("localhost:9190", "localhost", &found),
            vec![Member::configured("localhost:9190")]
        );
    }
}
