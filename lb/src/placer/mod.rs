//! Placement: a [`Placer`] orders the runners for one pass (pure functions over the runner list and
//! loads, usable from a simulator), and [`place`] is Fn's retry loop around it: passes separated by a
//! 10 ms pause until the placer timeout, NACKed attempts fall through to the next runner.

pub mod bounded;
pub mod ch;
pub mod hash;
pub mod naive;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

pub use bounded::BoundedPlacer;
pub use ch::ChPlacer;
pub use naive::NaivePlacer;

/// Fn's `RetryAllDelay`.
pub const DEFAULT_RETRY_DELAY: Duration = Duration::from_millis(10);
/// Fn's `PlacerTimeout` (sync calls).
pub const DEFAULT_PLACER_TIMEOUT: Duration = Duration::from_secs(360);
/// Fn's `DetachedPlacerTimeout`.
pub const DEFAULT_DETACHED_PLACER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a call waits while no runner at all is up (all down or draining) before it is answered
/// 503 "no runner is up". Long enough to ride out one runner's restart or a health-check blip,
/// short enough that a dead cluster says so in seconds rather than after the placer timeout.
pub const DEFAULT_NO_RUNNER_WAIT: Duration = Duration::from_secs(5);

/// What a placer sees of one configured runner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// Up (not down, not draining): may be tried.
    pub eligible: bool,
    /// Calls in flight from this LB.
    pub load: u64,
    /// The member's stable identity ([`hash::member_key`] of its address) when the pool holds
    /// members found through DNS, whose list position is not stable; `None` when every runner is
    /// configured, and its position in the list is its identity (Fn's placement). `ch` and
    /// `ch-bounded` rank keyed runners by rendezvous hashing on it, so that a runner joining or
    /// leaving moves only the functions it gains or loses.
    pub key: Option<u64>,
}

impl Candidate {
    /// An unkeyed candidate (a configured runner).
    pub fn new(eligible: bool, load: u64) -> Self {
        Self {
            eligible,
            load,
            key: None,
        }
    }
}

/// Orders the runners for one pass. `runners` is the configured list, in configuration order; the
/// result holds indexes of eligible runners only, each at most once.
pub trait Placer: Send + Sync + std::fmt::Debug {
    /// The `FN_PLACER` name.
    fn name(&self) -> &'static str;
    /// The order in which to try runners on one pass for a call of `fn_id`.
    fn pass_order(&self, fn_id: &str, runners: &[Candidate]) -> Vec<usize>;
}

/// An unknown `FN_PLACER` value.
#[derive(Debug, thiserror::Error)]
#[error("unknown placer {0:?}: expected naive, ch or ch-bounded")]
pub struct UnknownPlacer(pub String);

/// Builds the placer named by `FN_PLACER`. `load_factor` is the `ch-bounded` factor `c`.
pub fn from_name(name: &str, load_factor: f64) -> Result<Arc<dyn Placer>, UnknownPlacer> {
    match name.trim() {
        "" | "naive" => Ok(Arc::new(NaivePlacer)),
        "ch" => Ok(Arc::new(ChPlacer)),
        "ch-bounded" | "bounded" => Ok(Arc::new(BoundedPlacer::new(load_factor))),
        other => Err(UnknownPlacer(other.to_owned())),
    }
}

/// Timing of the retry loop.
#[derive(Debug, Clone, Copy)]
pub struct PlacerConfig {
    /// Pause between full passes.
    pub retry_delay: Duration,
    /// Placement budget of a sync call.
    pub timeout: Duration,
    /// Placement budget of a detached call.
    pub detached_timeout: Duration,
    /// How long a call waits while no runner is up (bounded by the placement budget).
    pub no_runner_wait: Duration,
}

impl Default for PlacerConfig {
    fn default() -> Self {
        Self {
            retry_delay: DEFAULT_RETRY_DELAY,
            timeout: DEFAULT_PLACER_TIMEOUT,
            detached_timeout: DEFAULT_DETACHED_PLACER_TIMEOUT,
            no_runner_wait: DEFAULT_NO_RUNNER_WAIT,
        }
    }
}

/// The outcome of trying one runner.
#[derive(Debug)]
pub enum Attempt<T, E> {
    /// The runner took the call (committed): this result is final, success or error.
    Placed(Result<T, E>),
    /// The runner refused (NACK) or could not be reached before the call was committed.
    NotPlaced(E),
}

/// Why a call was not placed.
#[derive(Debug, thiserror::Error)]
pub enum PlaceError<E> {
    /// No runner is configured: answered at once.
    #[error("no runner configured")]
    NoRunners,
    /// Runners are configured but none was up (all down or draining) for the no-runner wait.
    #[error("none of the {configured} runners is up")]
    NoneUp {
        /// Runners configured.
        configured: usize,
    },
    /// Every runner refused until the placer timeout.
    #[error("timed out placing the call after {attempts} attempts")]
    TimedOut {
        /// Runners tried.
        attempts: u32,
        /// The last refusal.
        last: Option<E>,
    },
    /// The runner that took the call failed it.
    #[error("placed call failed")]
    Failed(E),
}

/// Fn's placement loop. Each pass takes a fresh `snapshot` of the pool (the candidates and a handle
/// per runner), asks the placer for the order and calls `attempt` on each runner until one takes the
/// call. Between passes it pauses `config.retry_delay`; it gives up after the sync or detached budget.
/// The budget limits placement only: an attempt that is running is never cut short here.
pub async fn place<R, T, E, S, A, F>(
    placer: &dyn Placer,
    config: &PlacerConfig,
    detached: bool,
    fn_id: &str,
    mut snapshot: S,
    mut attempt: A,
) -> Result<(T, u32), PlaceError<E>>
where
    S: FnMut() -> Vec<(Candidate, R)>,
    A: FnMut(R) -> F,
    F: Future<Output = Attempt<T, E>>,
{
    let budget = if detached {
        config.detached_timeout
    } else {
        config.timeout
    };
    let deadline = Instant::now() + budget;
    let mut attempts = 0_u32;
    let mut last = None;
    let mut none_up_since: Option<Instant> = None;
    loop {
        let pool = snapshot();
        let candidates: Vec<Candidate> = pool.iter().map(|(c, _)| *c).collect();
        if candidates.is_empty() {
            return Err(PlaceError::NoRunners);
        }
        // None up (all down or draining): the call waits for one to come back, up to the
        // no-runner wait; the pause below keeps this from spinning.
        if candidates.iter().any(|c| c.eligible) {
            none_up_since = None;
        } else if none_up_since.get_or_insert_with(Instant::now).elapsed() >= config.no_runner_wait {
            return Err(PlaceError::NoneUp {
                configured: candidates.len(),
            });
        }
        let order = placer.pass_order(fn_id, &candidates);
        let mut handles: Vec<Option<R>> = pool.into_iter().map(|(_, r)| Some(r)).collect();
        for i in order {
            if Instant::now() >= deadline {
                return Err(PlaceError::TimedOut { attempts, last });
            }
            let Some(runner) = handles.get_mut(i).and_then(Option::take) else {
                continue;
            };
            attempts += 1;
            metrics::counter!("lb_placer_attempts_total").increment(1);
            match attempt(runner).await {
                Attempt::Placed(Ok(v)) => return Ok((v, attempts)),
                Attempt::Placed(Err(e)) => return Err(PlaceError::Failed(e)),
                Attempt::NotPlaced(e) => last = Some(e),
            }
        }
        if Instant::now() + config.retry_delay >= deadline {
            return Err(PlaceError::TimedOut { attempts, last });
        }
        tokio::time::sleep(config.retry_delay).await;
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    fn up(n: usize) -> Vec<(Candidate, usize)> {
        (0..n)
            .map(|i| {
                (
                    Candidate {
                        eligible: true,
                        load: 0,
                        key: None,
                    },
                    i,
                )
            })
            .collect()
    }

    #[tokio::test]
    async fn empty_pool_fails_at_once_all_down_waits_for_a_runner() {
        let cfg = PlacerConfig {
            retry_delay: Duration::from_millis(10),
            timeout: Duration::from_secs(5),
            detached_timeout: Duration::from_secs(5),
            no_runner_wait: Duration::from_secs(5),
        };
        let r: Result<((), u32), PlaceError<()>> =
            place(&NaivePlacer, &cfg, false, "f", Vec::new, |_: usize| async {
                Attempt::Placed(Ok(()))
            })
            .await;
        assert!(matches!(r, Err(PlaceError::NoRunners)));
        // Three runners down; the third comes back after a few passes: the call is placed there.
        let passes = RefCell::new(0_u32);
        let snapshot = || {
            *passes.borrow_mut() += 1;
            let back = *passes.borrow() > 3;
            (0..3_usize)
                .map(|i| {
                    (
                        Candidate {
                            eligible: back && i == 2,
                            load: 0,
                            key: None,
                        },
                        i,
                    )
                })
                .collect::<Vec<_>>()
        };
        let r: Result<(usize, u32), PlaceError<()>> =
            place(&ChPlacer, &cfg, false, "f", snapshot, |i| async move {
                Attempt::Placed(Ok(i))
            })
            .await;
        assert_eq!(r.unwrap(), (2, 1));
        assert_eq!(*passes.borrow(), 4);
        // Nobody comes back: 503 at the placer timeout when it is shorter than the no-runner wait.
        let short = PlacerConfig {
            timeout: Duration::from_millis(100),
            ..cfg
        };
        let down = || {
            vec![
                (
                    Candidate {
                        eligible: false,
                        load: 0,
                        key: None
                    },
                    0_usize
                );
                3
            ]
        };
        let t = std::time::Instant::now();
        let r: Result<((), u32), PlaceError<()>> = place(&NaivePlacer, &short, false, "f", down, |_| async {
            Attempt::Placed(Ok(()))
        })
        .await;
        assert!(
            matches!(r, Err(PlaceError::TimedOut { attempts: 0, .. })),
            "{r:?}"
        );
        assert!(t.elapsed() >= Duration::from_millis(90));
        // ... and "none up" at the no-runner wait when that is shorter than the placer timeout.
        let wait = PlacerConfig {
            no_runner_wait: Duration::from_millis(50),
            ..cfg
        };
        let r: Result<((), u32), PlaceError<()>> = place(&NaivePlacer, &wait, false, "f", down, |_| async {
            Attempt::Placed(Ok(()))
        })
        .await;
        assert!(matches!(r, Err(PlaceError::NoneUp { configured: 3 })), "{r:?}");
    }

    #[tokio::test]
    async fn nacks_fall_through_and_passes_repeat_until_timeout() {
        let cfg = PlacerConfig {
            retry_delay: Duration::from_millis(10),
            timeout: Duration::from_millis(200),
            detached_timeout: Duration::from_secs(1),
            ..PlacerConfig::default()
        };
        let hits = RefCell::new(vec![0_u32; 2]);
        let started = std::time::Instant::now();
        let r: Result<((), u32), PlaceError<&str>> = place(
            &NaivePlacer,
            &cfg,
            false,
            "f",
            || up(2),
            |i| {
                hits.borrow_mut()[i] += 1;
                async { Attempt::NotPlaced("busy") }
            },
        )
        .await;
        let elapsed = started.elapsed();
        let Err(PlaceError::TimedOut { attempts, last }) = r else {
            panic!("want TimedOut, got {r:?}")
        };
        assert_eq!(last, Some("busy"));
        let h = hits.borrow();
        assert!(h[0].abs_diff(h[1]) <= 1, "both runners tried every pass: {h:?}");
        assert_eq!(h[0] + h[1], attempts);
        // 10 ms between passes over 200 ms: several passes, not a busy spin.
        assert!((4..=40).contains(&h[0]), "passes: {h:?}");
        assert!(
            elapsed >= Duration::from_millis(190) && elapsed < Duration::from_secs(2),
            "{elapsed:?}"
        );
    }

    #[tokio::test]
    async fn committed_result_is_final() {
        let cfg = PlacerConfig::default();
        let tried = RefCell::new(Vec::new());
        // ch order for "myfn" over 4 is 3,0,1,2: 3 NACKs, 0 commits with an error -> no more attempts.
        let r: Result<((), u32), PlaceError<&str>> = place(
            &ChPlacer,
            &cfg,
            false,
            "myfn",
            || up(4),
            |i| {
                tried.borrow_mut().push(i);
                async move {
                    if i == 3 {
                        Attempt::NotPlaced("nack")
                    } else {
                        Attempt::Placed(Err("boom"))
                    }
                }
            },
        )
        .await;
        assert!(matches!(r, Err(PlaceError::Failed("boom"))));
        assert_eq!(*tried.borrow(), vec![3, 0]);
    }

    #[tokio::test]
    async fn detached_budget_is_separate() {
        let cfg = PlacerConfig {
            retry_delay: Duration::from_millis(10),
            timeout: Duration::from_secs(60),
            detached_timeout: Duration::from_millis(50),
            ..PlacerConfig::default()
        };
        let started = std::time::Instant::now();
        let r: Result<((), u32), PlaceError<()>> = place(
            &NaivePlacer,
            &cfg,
            true,
            "f",
            || up(1),
            |_| async { Attempt::NotPlaced(()) },
        )
        .await;
        assert!(matches!(r, Err(PlaceError::TimedOut { .. })));
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn placer_names() {
        assert_eq!(from_name("", 1.25).map(|p| p.name()).ok(), Some("naive"));
        assert_eq!(from_name("ch", 1.25).map(|p| p.name()).ok(), Some("ch"));
        assert_eq!(
            from_name("ch-bounded", 1.25).map(|p| p.name()).ok(),
            Some("ch-bounded")
        );
        assert!(from_name("random", 1.25).is_err());
    }
}
