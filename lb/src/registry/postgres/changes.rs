//! The change feed: how an LB learns that another LB changed the registry. Every write commits a new
//! `registry_version` and a `NOTIFY` on [`CHANNEL`]; each LB holds one connection of its own
//! (outside the pool) that `LISTEN`s and clears the invocation cache when a newer version arrives,
//! within milliseconds of the commit.
//!
//! Notifications sent while the connection is down are lost, so after every (re)connect the feed
//! reads the version and clears the cache if it moved. It also polls the version on its connection
//! every `poll` period (one tiny query), in case a notification is lost some other way. While the
//! database is unreachable nothing is cleared: cached fns keep being served, and the first
//! reconnect that sees a new version clears them.
//!
//! A notification carries the writer's mark; the LB's own are skipped (the write cleared the cache
//! itself once committed). Versions are committed, and notified, in order.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;

use crate::registry::CachedRegistry;

/// The `NOTIFY` channel; the payload is [`payload`].
pub const CHANNEL: &str = "ferrofn_registry";

/// A notification's payload: the committed version and the writer's mark.
pub fn payload(version: i64, writer: &str) -> String {
    format!("{version} {writer}")
}

/// The version and writer of a payload (`None` for one this LB did not make).
fn parse_payload(payload: &str) -> Option<(i64, &str)> {
    let (version, writer) = payload.split_once(' ')?;
    Some((version.parse().ok()?, writer))
}

/// First pause before a reconnect (doubled up to [`MAX_BACKOFF`]).
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest pause between two reconnects: bounds how long after the database returns the feed
/// (and so cross-LB invalidation) is back.
const MAX_BACKOFF: Duration = Duration::from_millis(500);

/// Why the feed's connection ended.
#[derive(Debug, thiserror::Error)]
enum FeedError {
    /// A statement or the connection failed.
    #[error(transparent)]
    Db(#[from] tokio_postgres::Error),
    /// The version poll got no answer in time.
    #[error("no answer to the version poll within {0:?}")]
    Silent(Duration),
    /// The connection's message stream ended.
    #[error("the connection closed")]
    Closed,
}

/// What the feed follows and whom it tells.
#[derive(Clone)]
pub struct Feed {
    /// The database (with the LB's session settings).
    pub config: tokio_postgres::Config,
    /// The registry's TLS connector.
    pub tls: tokio_postgres_rustls::MakeRustlsConnect,
    /// Version poll period.
    pub poll: Duration,
    /// Bound of one poll.
    pub timeout: Duration,
    /// This LB's mark on its notifications ([`super::PostgresRegistry::writer`]).
    pub writer: Arc<str>,
    /// The cache to clear.
    pub cache: CachedRegistry,
}

impl std::fmt::Debug for Feed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feed")
            .field("poll", &self.poll)
            .field("timeout", &self.timeout)
            .field("writer", &self.writer)
            .finish_non_exhaustive()
    }
}

/// Starts the feed: clears the cache when another writer commits; stops with `stop`.
pub fn spawn(feed: Feed, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut seen: Option<i64> = None;
        let mut delay = FIRST_BACKOFF;
        loop {
            let mut connected = false;
            let ended = tokio::select! {
                () = stop.cancelled() => return,
                ended = follow(&feed, &mut seen, &mut connected) => ended,
            };
            metrics::gauge!("lb_registry_feed_connected").set(0.0);
            let error = ferrofn_common::exit::one_line(&ended);
            if connected {
                tracing::warn!(%error, "registry change feed lost; reconnecting");
                delay = FIRST_BACKOFF;
            } else {
                tracing::debug!(%error, "registry change feed: cannot connect yet");
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(MAX_BACKOFF);
        }
    })
}

/// One connection's life: connect, `LISTEN`, catch up on the version, then follow notifications and
/// polls until the connection fails.
async fn follow(feed: &Feed, seen: &mut Option<i64>, connected: &mut bool) -> FeedError {
    let (poll, timeout, cache) = (feed.poll, feed.timeout, &feed.cache);
    let (client, mut connection) = match feed.config.connect(feed.tls.clone()).await {
        Ok(pair) => pair,
        Err(e) => return e.into(),
    };
    // The connection object yields the notifications; a task drives it and forwards them.
    let (tx, mut notes) = mpsc::unbounded_channel::<Result<String, tokio_postgres::Error>>();
    let driver = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(m) = messages.next().await {
            match m {
                Ok(AsyncMessage::Notification(n)) if n.channel() == CHANNEL => {
                    if tx.send(Ok(n.payload().to_owned())).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            }
        }
    });
    let _abort = AbortOnDrop(driver);
    let read_version = || async {
        match tokio::time::timeout(
            timeout,
            client.query_one("SELECT version FROM registry_version", &[]),
        )
        .await
        {
            Ok(Ok(row)) => row.try_get::<_, i64>(0).map_err(FeedError::from),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(FeedError::Silent(timeout)),
        }
    };
    if let Err(e) = client.batch_execute(&format!("LISTEN {CHANNEL}")).await {
        return e.into();
    }
    // On the first connect, entries cached since the start may predate a change whose notification
    // came before the LISTEN: start clean.
    let catch_up = |v: i64, why: &'static str, seen: &mut Option<i64>| {
        if seen.is_none_or(|s| v > s) {
            cache.invalidate_all(why);
        }
        if seen.is_none_or(|s| v > s) {
            *seen = Some(v);
        }
    };
    match read_version().await {
        Ok(v) => catch_up(v, "reconnect", seen),
        Err(e) => return e,
    }
    *connected = true;
    metrics::gauge!("lb_registry_feed_connected").set(1.0);
    tracing::info!("registry change feed following the database");
    let mut tick = tokio::time::interval(poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            note = notes.recv() => match note {
                Some(Ok(payload)) => match parse_payload(&payload) {
                    Some((v, writer)) if writer == &*feed.writer => {
                        if seen.is_none_or(|s| v > s) {
                            *seen = Some(v);
                        }
                    }
                    Some((v, _)) => catch_up(v, "notify", seen),
                    None => cache.invalidate_all("notify"),
                },
                Some(Err(e)) => return e.into(),
                None => return FeedError::Closed,
            },
            _ = tick.tick() => match read_version().await {
                Ok(v) => catch_up(v, "poll", seen),
                Err(e) => return e,
            },
        }
    }
}

/// Aborts the connection task when the session ends (the client is dropped with it).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip() {
        assert_eq!(parse_payload(&payload(42, "00ab")), Some((42, "00ab")));
        assert_eq!(parse_payload("42"), None);
        assert_eq!(parse_payload("x 00ab"), None);
    }
}
