//! A one-line progress display on stderr (redrawn a few times a second on a terminal, a start and
//! an end line otherwise), so stdout carries only the result tables.

use std::{
    io::{IsTerminal, Write},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};
use tokio::task::JoinHandle;

const REDRAW: Duration = Duration::from_millis(200);

#[derive(Default)]
struct Counters {
    ok: AtomicU64,
    failed: AtomicU64,
}

/// Progress of one scenario; cheap to clone into concurrent clients.
#[derive(Clone)]
pub struct Progress {
    label: Arc<str>,
    total: Option<u64>,
    counters: Arc<Counters>,
    started: Instant,
}

/// Keeps the redraw task alive; [`ProgressLine::finish`] prints the last line.
pub struct ProgressLine {
    progress: Progress,
    redraw: Option<JoinHandle<()>>,
}

impl Progress {
    /// Starts showing progress of `label` (`total` calls if known).
    pub fn start(label: &str, total: Option<u64>) -> (Progress, ProgressLine) {
        let progress = Progress {
            label: label.into(),
            total,
            counters: Arc::default(),
            started: Instant::now(),
        };
        let redraw = if std::io::stderr().is_terminal() {
            let p = progress.clone();
            Some(tokio::spawn(async move {
                let mut tick = tokio::time::interval(REDRAW);
                loop {
                    tick.tick().await;
                    eprint!("\r{}\x1b[K", p.line());
                    let _ = std::io::stderr().flush();
                }
            }))
        } else {
            eprintln!("[{label}] started");
            None
        };
        let line = ProgressLine {
            progress: progress.clone(),
            redraw,
        };
        (progress, line)
    }

    /// Counts one finished call.
    pub fn record(&self, ok: bool) {
        let counter = if ok {
            &self.counters.ok
        } else {
            &self.counters.failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn line(&self) -> String {
        let ok = self.counters.ok.load(Ordering::Relaxed);
        let failed = self.counters.failed.load(Ordering::Relaxed);
        let done = ok + failed;
        let of = self.total.map(|t| format!("/{t}")).unwrap_or_default();
        let secs = self.started.elapsed().as_secs_f64();
        let rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
        format!(
            "[{}] {done}{of} calls, {failed} failed, {rate:.0}/s, {secs:.1}s",
            self.label
        )
    }
}

impl ProgressLine {
    /// Stops redrawing and prints the final counts.
    pub fn finish(mut self) {
        self.stop();
        eprintln!("{}", self.progress.line());
    }

    fn stop(&mut self) {
        if let Some(task) = self.redraw.take() {
            task.abort();
            eprint!("\r\x1b[K");
        }
    }
}

impl Drop for ProgressLine {
    fn drop(&mut self) {
        self.stop();
    }
}
