//! What a hostile function tries, on request: a fork bomb, an output flood, connections to the
//! Docker socket or the runner. Each reports what it achieved in the response's `data`, so a test can
//! tell the limit that stopped it (or that nothing did).

use serde_json::{Value, json};
use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Environment variable that turns a process started by [`fork_bomb`] into a sleeper: checked first
/// thing in `main`, so a child never binds the FDK socket.
pub const CHILD_ENV: &str = "TESTFN_FORK_BOMB_CHILD";

/// Children started by [`fork_bomb`]; kept (never waited for) so they live as long as the container.
static CHILDREN: std::sync::Mutex<Vec<Child>> = std::sync::Mutex::new(Vec::new());

/// What a child of the bomb does: nothing, for ever (until the container is removed).
pub async fn child_idle_forever() -> ! {
    std::future::pending::<()>().await;
    unreachable!("a pending future never completes")
}

/// Starts copies of this binary as fast as it can, until the kernel refuses one or `max` are
/// running (a ceiling so that a missing pids limit cannot take the host down with the test).
/// Returns `{"spawned": n, "error": "<first refusal>" | null}`.
pub fn fork_bomb(max: u64) -> Value {
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return json!({"spawned": 0, "error": format!("current_exe: {e}")}),
    };
    let mut children = CHILDREN.lock().unwrap_or_else(|e| e.into_inner());
    let mut spawned = 0u64;
    let mut error = None;
    while spawned < max {
        let started = Command::new(&exe)
            .env(CHILD_ENV, "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        match started {
            Ok(child) => {
                children.push(child);
                spawned += 1;
            }
            Err(e) => {
                error = Some(e.to_string());
                break;
            }
        }
    }
    json!({"spawned": spawned, "error": error})
}

/// Writes `bytes` of output to stdout and as much to stderr, in 1 KiB lines, as fast as it can.
/// Returns the bytes written to each (a write error, e.g. a closed stream, ends the flood early).
pub fn flood_output(bytes: u64) -> Value {
    let mut line = [b'x'; 1024];
    line[1023] = b'\n';
    let mut written = [0u64; 2];
    let mut out = std::io::stdout().lock();
    let mut err = std::io::stderr().lock();
    for (i, sink) in [&mut out as &mut dyn Write, &mut err].into_iter().enumerate() {
        while written[i] < bytes {
            let n = (bytes - written[i]).min(line.len() as u64) as usize;
            if sink.write_all(&line[line.len() - n..]).is_err() {
                break;
            }
            written[i] += n as u64;
        }
        let _ = sink.flush();
    }
    json!({"stdout": written[0], "stderr": written[1]})
}

/// State of the background flood: 0 none, 1 waiting or writing, 2 done.
static BACKGROUND: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Floods stderr with `bytes` from a thread, starting one second after the call (well after the
/// runner stopped attributing output to it): output between calls. One at a time.
pub fn flood_output_later(bytes: u64) {
    use std::sync::atomic::Ordering;
    if BACKGROUND
        .compare_exchange(0, 1, Ordering::SeqCst, Ordering::SeqCst)
        .is_err()
        && BACKGROUND
            .compare_exchange(2, 1, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
    {
        return;
    }
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        // Blocking writes, off the runtime's only thread.
        std::thread::spawn(move || {
            let mut line = [b'z'; 1024];
            line[1023] = b'\n';
            let mut err = std::io::stderr().lock();
            let mut written = 0u64;
            while written < bytes && err.write_all(&line).is_ok() {
                written += line.len() as u64;
            }
            let _ = err.flush();
            BACKGROUND.store(2, Ordering::SeqCst);
        });
    });
}

/// `"running"` or `"done"` once a background flood was asked for.
pub fn background_flood() -> Option<&'static str> {
    match BACKGROUND.load(std::sync::atomic::Ordering::SeqCst) {
        1 => Some("running"),
        2 => Some("done"),
        _ => None,
    }
}

/// Tries to connect to `target`: `unix:<path>` or `tcp:<host:port>` (2 s bound). Returns `Ok(())`
/// when the connection was established (and closes it), else the error as text.
pub fn connect(target: &str) -> Result<(), String> {
    if let Some(path) = target.strip_prefix("unix:") {
        return std::os::unix::net::UnixStream::connect(path)
            .map(drop)
            .map_err(|e| e.to_string());
    }
    if let Some(addr) = target.strip_prefix("tcp:") {
        let addr: std::net::SocketAddr = addr.parse().map_err(|e| format!("not host:port ({e})"))?;
        return std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .map(drop)
            .map_err(|e| e.to_string());
    }
    Err("unknown target (expected unix:<path> or tcp:<ip:port>)".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_reports_both_outcomes() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        assert_eq!(connect(&format!("tcp:{addr}")), Ok(()));
        drop(listener);
        assert!(connect(&format!("tcp:{addr}")).is_err());
        let missing = connect("unix:/nonexistent/docker.sock").unwrap_err();
        assert!(missing.contains("No such file"), "{missing}");
        assert!(connect("ftp:x").is_err());
        assert!(connect("tcp:nonsense").is_err());
    }
}
