//! Byte relays: the cheapest possible middle of a call path. A relay accepts TCP on loopback and
//! copies bytes both ways to its target (TCP or a unix socket) without looking at them. The floor
//! measures the function's warm call through a chain of them, each its own process (`ferrofn-bench
//! relay`), so a run reports what any path through that many extra processes costs on the machine,
//! before a single byte is parsed: the structural part of the LB path's overhead (an LB and a
//! runner are two extra processes), as opposed to what the LB and runner spend themselves.

use std::io;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::process::{Child, Command};

use crate::client::Endpoint;

/// Serves a relay to `to` on `listener` until the process ends: one task per connection, each
/// connection to `to` opened when a client connects, Nagle off on TCP both ways.
pub async fn serve(listener: TcpListener, to: Endpoint) -> io::Result<()> {
    loop {
        let (mut client, _) = listener.accept().await?;
        client.set_nodelay(true)?;
        let to = to.clone();
        tokio::spawn(async move {
            let copied = match &to {
                Endpoint::Tcp(addr) => match TcpStream::connect(addr).await {
                    Ok(mut up) => {
                        let _ = up.set_nodelay(true);
                        tokio::io::copy_bidirectional(&mut client, &mut up).await
                    }
                    Err(e) => Err(e),
                },
                Endpoint::Unix(path) => match UnixStream::connect(path).await {
                    Ok(mut up) => tokio::io::copy_bidirectional(&mut client, &mut up).await,
                    Err(e) => Err(e),
                },
            };
            if let Err(e) = copied {
                tracing::debug!(%to, error = %e, "relay connection ended with an error");
            }
        });
    }
}

/// `tcp:host:port` or `unix:/path` (as [`Endpoint`]'s `Display` writes them).
pub fn parse_endpoint(s: &str) -> Result<Endpoint, String> {
    if let Some(addr) = s.strip_prefix("tcp:") {
        Ok(Endpoint::Tcp(addr.to_owned()))
    } else if let Some(path) = s.strip_prefix("unix:") {
        Ok(Endpoint::Unix(path.into()))
    } else {
        Err(format!("{s:?}: expected tcp:HOST:PORT or unix:PATH"))
    }
}

/// Relay processes chained in front of a target; killed when dropped.
#[derive(Debug)]
pub struct RelayChain {
    children: Vec<Child>,
    /// Where a client connects: the last relay started (or the target itself with no relays).
    pub entry: Endpoint,
}

impl RelayChain {
    /// Starts `hops` relay processes (this executable's `relay` subcommand), the first relaying to
    /// `target` and each next one to the one before. Each announces the loopback address it bound
    /// on its first line of output, which is awaited.
    pub async fn start(hops: usize, target: Endpoint) -> io::Result<Self> {
        let exe = std::env::current_exe()?;
        let mut chain = RelayChain {
            children: Vec::with_capacity(hops),
            entry: target,
        };
        for _ in 0..hops {
            let mut child = Command::new(&exe)
                .arg("relay")
                .arg("--to")
                .arg(chain.entry.to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .kill_on_drop(true)
                .spawn()?;
            let stdout = child
                .stdout
                .take()
                .ok_or_else(|| io::Error::other("relay stdout not captured"))?;
            chain.children.push(child);
            let mut first = String::new();
            BufReader::new(stdout).read_line(&mut first).await?;
            let addr = first.trim();
            if addr.is_empty() {
                return Err(io::Error::other(
                    "a relay process ended before announcing its address",
                ));
            }
            chain.entry = Endpoint::Tcp(addr.to_owned());
        }
        Ok(chain)
    }

    /// Relay processes running.
    pub fn hops(&self) -> usize {
        self.children.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_relay_copies_both_ways_to_a_unix_socket_and_ends_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lsnr.sock");
        let echo = tokio::net::UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (mut s, _) = echo.accept().await.unwrap();
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).await.unwrap();
            buf.reverse();
            s.write_all(&buf).await.unwrap();
            // Closing here must reach the client through the relay.
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, Endpoint::Unix(path)));
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"hello").await.unwrap();
        let mut got = Vec::new();
        c.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"olleh");
    }

    #[test]
    fn endpoints_parse_as_they_print() {
        for e in [
            Endpoint::Tcp("127.0.0.1:9".into()),
            Endpoint::Unix("/tmp/x.sock".into()),
        ] {
            let back = parse_endpoint(&e.to_string()).unwrap();
            assert_eq!(back.to_string(), e.to_string());
        }
        assert!(parse_endpoint("127.0.0.1:9").is_err());
    }
}
