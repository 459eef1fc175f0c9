//! One HTTP/2 gRPC connection per runner ([`RunnerConn`]): connected lazily, kept alive with HTTP/2
//! pings, mTLS through the common connector unless the pool runs in plaintext (Fn runners, trusted
//! networks).

use std::time::Duration;

use ferrofn_common::tls::ClientTls;

pub use super::conn::{AddressError, RunnerConn};

/// HTTP/2 receive window per stream, explicit rather than hyper's defaults (client 2 MiB stream /
/// 5 MiB connection); the runner's server sets the same (its defaults: 1 MiB / 1 MiB). Streaming
/// through LB and runner measured faster with these (BENCHMARKS.md, "Round 2"). Memory stays
/// bounded: a window is credit, filled only while the reader falls behind.
pub const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
/// HTTP/2 receive window per connection (all calls to one runner share it).
pub const CONNECTION_WINDOW: u32 = 8 * 1024 * 1024;
/// Streams the LB reset (a client that went away cancels its call this way) that HTTP/2 remembers,
/// so that frames the runner had already sent on them are ignored rather than answered with a
/// STREAM_CLOSED reset (h2 counts those as local errors; the default 10 is soon exceeded when many
/// clients disconnect at once). A few dozen bytes each.
pub const RESET_STREAMS_REMEMBERED: usize = 4096;
/// h2's default limit of streams reset by the LB's own HTTP/2 layer (protocol errors) per
/// connection, kept on purpose: in normal operation there are none (finished calls are read to
/// their trailers, cancelled ones are remembered above), so reaching it means a broken runner.
pub const MAX_LOCAL_ERROR_RESETS: usize = 1024;

/// Default of [`ChannelOptions::answer_timeout`]: far above a live runner's answer (well under a
/// millisecond on a LAN; the load test counts the re-placements it causes, expected 0), and short
/// enough that a call meeting a silent runner is still served within a few hundred ms elsewhere.
pub const DEFAULT_ANSWER_TIMEOUT: Duration = Duration::from_millis(200);

/// Default of [`ChannelOptions::tcp_user_timeout`]: a runner's host acknowledges TCP data within
/// a round trip (plus a delayed ACK) however busy the runner is, and the kernel retransmits
/// unacknowledged data at 0.2, 0.6 and 1.4 s on a LAN, so two seconds of silence at that level is
/// a host cut off or gone, not a loaded one.
pub const DEFAULT_TCP_USER_TIMEOUT: Duration = Duration::from_secs(2);

/// Connection tuning shared by every runner channel.
#[derive(Debug, Clone, Copy)]
pub struct ChannelOptions {
    /// TCP connect (plus handshake) budget. Fn uses 100 ms; a little more tolerates a loaded host.
    pub connect_timeout: Duration,
    /// HTTP/2 ping interval (Fn's system tests: 60 s). Short, so that a runner cut off the
    /// network (no RST) is found within interval + timeout: its calls fail and the channel
    /// reconnects.
    pub keepalive_interval: Duration,
    /// How long a ping may go unanswered.
    pub keepalive_timeout: Duration,
    /// How long an accept-ack (ferrofn) runner may take to send an Engage stream's response
    /// headers once the TryCall left; `None` = no bound. A ferrofn runner answers a stream at once,
    /// before it queues the call for a container, so silence means a runner that is cut off or
    /// stalled: the call (not accepted, so it never ran) is placed again at once.
    pub answer_timeout: Option<Duration>,
    /// `TCP_USER_TIMEOUT` of the runner connections: data the LB sent and the runner's host left
    /// unacknowledged this long makes the kernel close the connection, which fails its streams:
    /// the calls the runner had not acknowledged go to another runner, those it had fail (502),
    /// as at the keepalive's verdict, but within this of the LB's next write to it (a call, a
    /// ping) rather than a ping interval plus the keepalive timeout. A runner that is only busy is
    /// never affected: its kernel acknowledges. `None` = the kernel's default (~15 minutes).
    pub tcp_user_timeout: Option<Duration>,
}

impl Default for ChannelOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_millis(500),
            keepalive_interval: Duration::from_secs(5),
            keepalive_timeout: Duration::from_secs(5),
            answer_timeout: Some(DEFAULT_ANSWER_TIMEOUT),
            tcp_user_timeout: Some(DEFAULT_TCP_USER_TIMEOUT),
        }
    }
}

/// The connection to `addr` (`host:port`), made on first use; host names are resolved on each
/// connect.
pub fn runner_channel(
    addr: &str,
    tls: Option<ClientTls>,
    opts: ChannelOptions,
) -> Result<RunnerConn, AddressError> {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    dial_channel(addr, host, tls, opts)
}

/// The connection that dials `addr` (`host:port`, e.g. one address of a name) and verifies the
/// runner's certificate against `verify` (e.g. that name), unless the TLS settings name a server
/// name of their own (`FERROFN_TLS_SERVER_NAME`). Made on first use, and again after it is lost.
pub fn dial_channel(
    addr: &str,
    verify: &str,
    tls: Option<ClientTls>,
    opts: ChannelOptions,
) -> Result<RunnerConn, AddressError> {
    RunnerConn::new(addr, verify, tls, opts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_refused_connect_is_told_apart_from_a_lost_connection() {
        // A port nobody listens on: bind, note it, close.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let ch = runner_channel(&format!("127.0.0.1:{port}"), None, ChannelOptions::default()).unwrap();
        let mut client = ferrofn_proto::runner_protocol_client::RunnerProtocolClient::new(ch);
        let err = client.status2(prost_types::Struct::default()).await.unwrap_err();
        assert!(crate::engage::is_connect_failure(&err), "{err:?}");
        let lost = tonic::Status::from_error(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )));
        assert!(!crate::engage::is_connect_failure(&lost));
    }
}
