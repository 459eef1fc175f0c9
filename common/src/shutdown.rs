//! The process-wide "stop now" signal: SIGTERM/SIGINT (or code) trigger a cancellation token that
//! servers, pools and drains wait on, so shutdown is one event rather than a global flag.

use std::fmt;

use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// A cloneable handle to the shutdown event. Clones share it: triggering one triggers all.
#[derive(Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
}

impl fmt::Debug for Shutdown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shutdown")
            .field("triggered", &self.is_triggered())
            .finish()
    }
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Triggers shutdown on the first SIGTERM or SIGINT (logging which). The task ends after the
    /// first signal or when shutdown is triggered otherwise. Must be called inside a tokio runtime.
    pub fn listen_for_signals(&self) -> JoinHandle<()> {
        let this = self.clone();
        // Register now, not in the task: a signal arriving right after this call must count.
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        tokio::spawn(async move {
            let (mut term, mut int) = match (term, int) {
                (Ok(term), Ok(int)) => (term, int),
                (Err(e), _) | (_, Err(e)) => {
                    warn!(error = %e, "cannot listen for SIGTERM/SIGINT; only an explicit trigger stops");
                    return;
                }
            };
            let name = tokio::select! {
                () = this.token.cancelled() => return,
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            info!(signal = name, "shutdown signal received; draining");
            this.trigger();
        })
    }

    /// Starts shutdown (idempotent).
    pub fn trigger(&self) {
        self.token.cancel();
    }

    /// The underlying token, for `select!` and for APIs taking a `CancellationToken`.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// Completes once shutdown is triggered (immediately if it already was).
    pub async fn cancelled(&self) {
        self.token.cancelled().await;
    }

    /// An owned future of [`Shutdown::cancelled`], e.g. for `serve_with_incoming_shutdown`.
    pub fn cancelled_owned(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        self.token.clone().cancelled_owned()
    }

    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn trigger_wakes_every_clone() {
        let s = Shutdown::new();
        let clone = s.clone();
        assert!(!clone.is_triggered());
        let waiter = tokio::spawn(async move { clone.cancelled().await });
        s.trigger();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("waiter woke")
            .unwrap();
        assert!(s.is_triggered());
        // Already triggered: completes at once.
        s.cancelled_owned().await;
    }

    #[tokio::test]
    async fn listener_task_ends_on_trigger() {
        let s = Shutdown::new();
        let task = s.listen_for_signals();
        s.trigger();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("signal task ended")
            .unwrap();
    }

    #[tokio::test]
    async fn sigterm_triggers_shutdown() {
        let s = Shutdown::new();
        let task = s.listen_for_signals();
        // Handlers are registered by now, so the signal cannot kill the test process.
        let status = std::process::Command::new("kill")
            .args(["-TERM", &std::process::id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("SIGTERM seen")
            .unwrap();
        assert!(s.is_triggered());
    }
}
