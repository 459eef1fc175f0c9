//! One HTTP/2 gRPC channel per runner: connected lazily, kept alive with HTTP/2 pings, mTLS through
//! the common connector unless the pool runs in plaintext (Fn runners, trusted networks).

use std::time::Duration;

use tonic::transport::Channel;

use ferrofn_common::tls::{ClientTls, connect_channel_lazy, runner_endpoint};

/// HTTP/2 receive window per stream, explicit rather than hyper's defaults (client 2 MiB stream /
/// 5 MiB connection); the runner's server sets the same (its defaults: 1 MiB / 1 MiB). Streaming
/// through LB and runner measured faster with these (BENCHMARKS.md, "Round 2"). Memory stays
/// bounded: a window is credit, filled only while the reader falls behind.
pub const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
/// HTTP/2 receive window per connection (all calls to one runner share it).
pub const CONNECTION_WINDOW: u32 = 8 * 1024 * 1024;

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
}

impl Default for ChannelOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_millis(500),
            keepalive_interval: Duration::from_secs(5),
            keepalive_timeout: Duration::from_secs(5),
        }
    }
}

/// A bad runner address.
#[derive(Debug, thiserror::Error)]
#[error("invalid runner address {addr:?}: {source}")]
pub struct AddressError {
    /// The address as configured.
    pub addr: String,
    /// The cause.
    #[source]
    pub source: tonic::transport::Error,
}

/// The lazily connected channel to `addr` (`host:port`). Host names are resolved on each connect.
pub fn runner_channel(
    addr: &str,
    tls: Option<ClientTls>,
    opts: ChannelOptions,
) -> Result<Channel, AddressError> {
    let endpoint = runner_endpoint(addr)
        .map_err(|source| AddressError {
            addr: addr.to_owned(),
            source,
        })?
        .connect_timeout(opts.connect_timeout)
        .http2_keep_alive_interval(opts.keepalive_interval)
        .keep_alive_timeout(opts.keepalive_timeout)
        .keep_alive_while_idle(true)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .tcp_nodelay(true);
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    Ok(connect_channel_lazy(endpoint, tls, host))
}
