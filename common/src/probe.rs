//! The `probe` subcommands' HTTP check: `GET path` over a plain socket (the images are FROM scratch,
//! with no HTTP client), for compose health checks and Kubernetes exec probes.

use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Bytes of an answer read at most (a health answer is a status line and a short body).
const MAX_ANSWER: u64 = 64 * 1024;

/// `GET path` on `addr` (`host:port`): Ok when it answers 200 within `limit`, otherwise an error
/// that quotes the status line and body.
pub async fn http_ok(addr: &str, path: &str, limit: Duration) -> anyhow::Result<()> {
    let check = async {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())
            .await?;
        let mut out = Vec::new();
        s.take(MAX_ANSWER).read_to_end(&mut out).await?;
        let text = String::from_utf8_lossy(&out);
        let status = text.lines().next().unwrap_or_default();
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b.trim());
        anyhow::ensure!(
            status.starts_with("HTTP/1.1 200"),
            "GET {path} on {addr} answered {status:?} {body}"
        );
        Ok(())
    };
    tokio::time::timeout(limit, check)
        .await
        .map_err(|_| anyhow::anyhow!("no answer from {addr} within {limit:?}"))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn server(answer: &'static str) -> String {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            s.write_all(answer.as_bytes()).await.unwrap();
        });
        addr
    }

    #[tokio::test]
    async fn ok_on_200_error_with_the_answer_otherwise() {
        let ok = server("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
        http_ok(&ok, "/health/ready", Duration::from_secs(2))
            .await
            .unwrap();
        let down = server("HTTP/1.1 503 Service Unavailable\r\n\r\n{\"message\":\"draining\"}").await;
        let e = http_ok(&down, "/health/ready", Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(
            e.to_string().contains("503") && e.to_string().contains("draining"),
            "{e}"
        );
        let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = silent.local_addr().unwrap().to_string();
        let e = http_ok(&addr, "/", Duration::from_millis(100)).await.unwrap_err();
        assert!(e.to_string().contains("no answer"), "{e}");
    }
}
