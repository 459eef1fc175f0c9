//! The TARGETS table (issue 11): every performance target of one `make bench` run with a verdict,
//! computed from the JSON reports the run's scenarios wrote into one results directory.
//!
//! Each target is a difference or a ratio to the floor (or to another figure) measured **in the
//! same run**. The verdict is, in this order of precedence:
//! - `SKIPPED (why)` when a figure it needs is absent: its result file is missing (with the reason
//!   the run left in `<name>.skipped`, e.g. `BENCH_SKIP_COMPOSE=1`), or the file lacks the figure;
//! - `INVALID (n failed calls)` when any figure it uses has a failed call (a floor with a failed
//!   call anywhere counts as a whole, as in the contract checks of `all`);
//! - `PASS` or `FAIL` against the limit. A figure that cannot be computed (a division by zero)
//!   is SKIPPED with that reason.
//!
//! Some figures have no verdict (calls/s at 16 clients with 1, 2 and 3 runners); they are listed
//! after the targets, marked INVALID when they have failed calls.

use serde::{Deserialize, Serialize};
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::{Path, PathBuf},
};

use crate::{
    load::{ConcResult, SeqResult},
    report::{Report, Table},
    rss::RssFigure,
    stats::invalid_verdict,
};

/// The limits of issue 11. Differences are in ms, ratios are plain factors.
pub mod limits {
    /// 1. Warm p50 may exceed the floor's warm p50 by this (ms), plaintext and mTLS alike.
    pub const WARM_P50_OVER_FLOOR_MS: f64 = 0.15;
    /// 1. Warm p99 may be at most this multiple of the floor's warm p99.
    pub const WARM_P99_OVER_FLOOR_RATIO: f64 = 2.0;
    /// 2. CPU per call of the LB and runners together, as a multiple of the function's own.
    pub const CPU_OVER_FUNCTION_RATIO: f64 = 1.0;
    /// 2. CPU per call of the LB and runners together, absolute (us).
    pub const CPU_US_PER_CALL: f64 = 100.0;
    /// 3. Sparse p50 may exceed the floor's sparse p50 by this (ms).
    pub const SPARSE_OVER_FLOOR_SPARSE_MS: f64 = 0.2;
    /// 4. Streaming round trip, default frames: at least this fraction of the floor's.
    pub const STREAM_OF_FLOOR_RATIO: f64 = 0.5;
    /// 4. Streaming round trip with 10 KiB frames (Fn's): at least this fraction of the floor's.
    pub const STREAM_10K_FRAMES_OF_FLOOR_RATIO: f64 = 0.25;
    /// 5. Load step on a fresh fn: p99 at most this multiple of p50.
    pub const STEP_P99_OVER_P50_RATIO: f64 = 10.0;
    /// 6. mTLS CPU per call at most this multiple of plaintext's (15% more).
    pub const TLS_CPU_OVER_PLAINTEXT_RATIO: f64 = 1.15;
    /// 7. The compose cluster's warm p50 may exceed the loopback mTLS cluster's by this (ms).
    pub const COMPOSE_P50_OVER_TLS_MS: f64 = 0.3;
    /// 8. Each LB and runner must idle below this RSS (MiB).
    pub const IDLE_RSS_MIB: f64 = 20.0;
    /// 8. Peak RSS streaming the large body, as a multiple of the peak with the 64 MiB one.
    pub const PEAK_RSS_LARGE_OVER_SMALL_RATIO: f64 = 1.10;
    /// 8. A cold call may exceed the startup floor (create + start + ready + first call) by this (ms).
    pub const COLD_OVER_FLOOR_MS: f64 = 20.0;
}

/// The result files the targets are computed from: `<name>.json` in the results directory, each
/// a `ferrofn-bench --json` report. `<name>.skipped` holds why a file was not written.
pub mod files {
    /// `all` against the main plaintext cluster (LB + 2 runners): the floor, seq, sparse, conc
    /// with CPU and RSS, the 64 MiB stream, cold.
    pub const ALL: &str = "all";
    /// The large-body stream through the same LB, with RSS.
    pub const STREAM_LARGE: &str = "stream-large";
    /// The 64 MiB stream through an LB with 10 KiB Engage data frames.
    pub const STREAM_FRAMES_10K: &str = "stream-frames10k";
    /// The load step on a fresh fn, with the containers counted.
    pub const STEP: &str = "step";
    /// `conc` through an LB over one runner.
    pub const CONC_1_RUNNER: &str = "conc-1runner";
    /// `conc` through an LB over three runners.
    pub const CONC_3_RUNNERS: &str = "conc-3runners";
    /// `seq` against the loopback mTLS cluster (LB + 2 runners).
    pub const TLS_SEQ: &str = "tls-seq";
    /// `conc` with CPU against the loopback mTLS cluster.
    pub const TLS_CONC: &str = "tls-conc";
    /// `seq` against the compose demo cluster through its published port.
    pub const COMPOSE_SEQ: &str = "compose-seq";
    /// Every file, in the order the run writes them.
    pub const EVERY: [&str; 9] = [
        ALL,
        STREAM_LARGE,
        STEP,
        CONC_1_RUNNER,
        CONC_3_RUNNERS,
        STREAM_FRAMES_10K,
        TLS_SEQ,
        TLS_CONC,
        COMPOSE_SEQ,
    ];
}

/// The reports of one run by file name, or why each is absent.
#[derive(Debug, Default)]
pub struct Results {
    reports: BTreeMap<String, Result<Report, String>>,
}

impl Results {
    /// Reads every file of [`files::EVERY`] from `dir`.
    pub fn load(dir: &Path) -> Self {
        let mut reports = BTreeMap::new();
        for name in files::EVERY {
            reports.insert(name.to_owned(), read_report(dir, name));
        }
        Results { reports }
    }

    /// Results from reports in memory (`Err` = why one is absent); absent names are "no file".
    pub fn from_reports(reports: impl IntoIterator<Item = (&'static str, Result<Report, String>)>) -> Self {
        Results {
            reports: reports.into_iter().map(|(n, r)| (n.to_owned(), r)).collect(),
        }
    }

    fn get(&self, name: &str) -> Result<&Report, String> {
        match self.reports.get(name) {
            Some(Ok(r)) => Ok(r),
            Some(Err(why)) => Err(why.clone()),
            None => Err(format!("no {name}.json")),
        }
    }

    /// Failed calls over every report read.
    fn failed_calls(&self) -> u64 {
        self.reports.values().flatten().map(|r| r.failed_calls).sum()
    }
}

fn read_report(dir: &Path, name: &str) -> Result<Report, String> {
    let json = dir.join(format!("{name}.json"));
    match std::fs::read_to_string(&json) {
        Ok(text) => serde_json::from_str(&text).map_err(|e| format!("{name}.json is unreadable: {e}")),
        Err(_) => match std::fs::read_to_string(dir.join(format!("{name}.skipped"))) {
            Ok(why) if !why.trim().is_empty() => {
                Err(why.trim().lines().next().unwrap_or_default().to_owned())
            }
            _ => Err(format!("no {name}.json")),
        },
    }
}

/// A target's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Fail,
    Invalid,
    Skipped,
}

/// One target of issue 11 with its verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Target {
    /// `1a`, `1b`, ...: the point number and a letter.
    pub id: String,
    pub name: String,
    pub status: Status,
    /// `PASS`, `FAIL`, `INVALID (n failed calls)` or `SKIPPED (why)`.
    pub verdict: String,
    /// `false` when a figure it uses has failed calls.
    pub valid: bool,
    /// Failed calls in the figures it uses.
    pub failed: u64,
    /// The computed figure (absent when skipped).
    pub measured: Option<f64>,
    /// `"<="`, `"<"` or `">="`.
    pub rule: String,
    pub limit: f64,
    pub unit: String,
    /// How the figure is computed.
    pub formula: String,
    /// The figures it was computed from, or why it was skipped.
    pub detail: String,
    /// The verdict as a boolean; `null` when invalid or skipped.
    pub pass: Option<bool>,
}

/// A figure reported without a verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Figure {
    pub name: String,
    /// `false` when it has failed calls; `null` when absent.
    pub valid: Option<bool>,
    pub failed: u64,
    pub value: Option<f64>,
    pub unit: String,
    /// The figures around it, or why it is absent.
    pub detail: String,
}

/// What `ferrofn-bench targets` writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetsReport {
    pub tool: String,
    pub version: String,
    /// `false` when a result has failed calls (some target is then INVALID).
    pub valid: bool,
    /// Failed calls over every result file read.
    pub failed_calls: u64,
    pub pass: usize,
    pub fail: usize,
    pub invalid: usize,
    pub skipped: usize,
    pub targets: Vec<Target>,
    pub figures: Vec<Figure>,
    /// Each result file: `"read"`, or why it is absent.
    pub sources: BTreeMap<String, String>,
}

/// The fixed part of a target.
struct Spec {
    id: &'static str,
    name: &'static str,
    formula: &'static str,
    rule: &'static str,
    limit: f64,
    unit: &'static str,
}

/// A figure computed for a target: its failed calls, its value and the figures behind it.
struct Measured {
    failed: u64,
    value: f64,
    detail: String,
    /// A limit taken from the results instead of the spec (the step's client count).
    limit: Option<f64>,
}

impl Measured {
    fn new(failed: u64, value: f64, detail: String) -> Self {
        Measured {
            failed,
            value,
            detail,
            limit: None,
        }
    }
}

impl Target {
    /// The verdict of `spec` on `measured` (`Err` = why the figure is absent).
    fn judge(spec: &Spec, measured: Result<Measured, String>) -> Self {
        let mut t = Target {
            id: spec.id.into(),
            name: spec.name.into(),
            status: Status::Skipped,
            verdict: String::new(),
            valid: true,
            failed: 0,
            measured: None,
            rule: spec.rule.into(),
            limit: spec.limit,
            unit: spec.unit.into(),
            formula: spec.formula.into(),
            detail: String::new(),
            pass: None,
        };
        let m = match measured {
            Ok(m) => m,
            Err(why) => {
                t.verdict = format!("SKIPPED ({why})");
                t.detail = why;
                return t;
            }
        };
        t.limit = m.limit.unwrap_or(spec.limit);
        t.failed = m.failed;
        t.valid = m.failed == 0;
        t.detail = m.detail;
        t.measured = m.value.is_finite().then_some(m.value);
        if m.failed > 0 {
            t.status = Status::Invalid;
            t.verdict = invalid_verdict(m.failed);
        } else if !m.value.is_finite() {
            t.verdict = format!("SKIPPED (not computable: {})", t.detail);
        } else {
            let within = match spec.rule {
                "<=" => m.value <= t.limit,
                "<" => m.value < t.limit,
                _ => m.value >= t.limit,
            };
            t.status = if within { Status::Pass } else { Status::Fail };
            t.verdict = if within { "PASS" } else { "FAIL" }.into();
            t.pass = Some(within);
        }
        t
    }
}

fn need<'a, T>(value: Option<&'a T>, what: &str, file: &str) -> Result<&'a T, String> {
    value.ok_or_else(|| format!("no {what} in {file}.json"))
}

/// The LB + runners CPU per call in `conc` of a report, its failed calls, and a breakdown.
fn overhead_cpu(r: &Report, file: &str) -> Result<(f64, u64, String), String> {
    let (per_call, failed) = r
        .overhead_cpu()
        .ok_or_else(|| format!("no CPU figures of conc in {file}.json"))?;
    let parts: Vec<String> = r
        .cpu
        .iter()
        .filter(|f| f.scenario == "conc" && !f.label.starts_with("fn "))
        .map(|f| format!("{} {:.1}", f.label, f.cpu_us_per_call))
        .collect();
    Ok((per_call, failed, parts.join(" + ")))
}

/// Warm p50 and p99 of `seq` in `file` against the floor of `all`.
fn warm_targets(res: &Results, file: &str, transport: &str, ids: [&'static str; 2]) -> [Target; 2] {
    let (p50_name, p99_name) = match transport {
        "plaintext" => ("warm p50 over floor, plaintext", "warm p99 vs floor, plaintext"),
        _ => ("warm p50 over floor, mTLS", "warm p99 vs floor, mTLS"),
    };
    let figures = || -> Result<(&SeqResult, &SeqResult, u64), String> {
        let seq = need(res.get(file)?.seq.as_ref(), "seq figure", file)?;
        let floor = need(res.get(files::ALL)?.floor.as_ref(), "floor", files::ALL)?;
        Ok((seq, &floor.call, seq.calls.failed + floor.failed))
    };
    let p50 = figures().map(|(seq, floor, failed)| {
        Measured::new(
            failed,
            seq.latency.p50_ms - floor.latency.p50_ms,
            format!(
                "{file} seq p50 {:.3} ms, floor /call p50 {:.3} ms",
                seq.latency.p50_ms, floor.latency.p50_ms
            ),
        )
    });
    let p99 = figures().map(|(seq, floor, failed)| {
        Measured::new(
            failed,
            seq.latency.p99_ms / floor.latency.p99_ms,
            format!(
                "{file} seq p99 {:.3} ms, floor /call p99 {:.3} ms",
                seq.latency.p99_ms, floor.latency.p99_ms
            ),
        )
    });
    [
        Target::judge(
            &Spec {
                id: ids[0],
                name: p50_name,
                formula: "seq p50 - floor /call p50",
                rule: "<=",
                limit: limits::WARM_P50_OVER_FLOOR_MS,
                unit: "ms",
            },
            p50,
        ),
        Target::judge(
            &Spec {
                id: ids[1],
                name: p99_name,
                formula: "seq p99 / floor /call p99",
                rule: "<=",
                limit: limits::WARM_P99_OVER_FLOOR_RATIO,
                unit: "x",
            },
            p99,
        ),
    ]
}

/// The largest idle RSS of every watched process over every result, with the failed calls of the
/// scenarios the processes were watched through (each scenario's counted once).
fn idle_rss(res: &Results) -> Result<Measured, String> {
    // (label, pid) -> max idle KiB
    let mut idle: BTreeMap<(String, u32), u64> = BTreeMap::new();
    // (file, scenario) -> failed calls
    let mut failed: BTreeMap<(String, String), u64> = BTreeMap::new();
    for (file, report) in &res.reports {
        let Ok(report) = report else { continue };
        for f in &report.rss {
            let e = failed.entry((file.clone(), f.scenario.clone())).or_default();
            *e = (*e).max(f.failed);
            if let Some(kib) = f.idle_kib {
                let e = idle.entry((f.label.clone(), f.pid)).or_default();
                *e = (*e).max(kib);
            }
        }
    }
    if idle.is_empty() {
        return Err("no RSS figures in the results (--rss-pid)".into());
    }
    let max = idle.values().copied().max().unwrap_or(0);
    let detail: Vec<String> = idle
        .iter()
        .map(|((label, _), kib)| format!("{label} {:.1}", *kib as f64 / 1024.0))
        .collect();
    Ok(Measured::new(
        failed.values().sum(),
        max as f64 / 1024.0,
        format!("max idle VmRSS, MiB: {}", detail.join(", ")),
    ))
}

/// A process's role: its label without a trailing number (`runner1` -> `runner`, `lb` -> `lb`).
fn role(label: &str) -> &str {
    label.trim_end_matches(|c: char| c.is_ascii_digit())
}

/// Peak RSS while streaming the large body over the peak with the 64 MiB one, per role: the LB,
/// and the largest runner. The placer picks the runner of each transfer, so a runner may carry
/// transfers in one stream and none in the other (its peak is then its idle memory); the largest
/// peak over the runners is the peak of a runner that carried one. The target is the largest
/// ratio over the roles.
fn peak_rss_flat(res: &Results) -> Result<Measured, String> {
    let all = res.get(files::ALL)?;
    let large = res.get(files::STREAM_LARGE)?;
    let small_stream = need(all.stream.as_ref(), "stream figure", files::ALL)?;
    let large_stream = need(large.stream.as_ref(), "stream figure", files::STREAM_LARGE)?;
    let peaks = |r: &Report| -> BTreeMap<String, u64> {
        r.rss
            .iter()
            .filter(|f| f.scenario == "stream")
            .filter_map(|f: &RssFigure| Some((f.label.clone(), f.peak_kib?)))
            .collect()
    };
    let (small, big) = (peaks(all), peaks(large));
    // role -> (largest small peak, largest large peak, processes)
    let mut roles: BTreeMap<&str, (u64, u64, usize)> = BTreeMap::new();
    let mut processes = Vec::new();
    for (label, a) in &small {
        let Some(b) = big.get(label) else { continue };
        let r = roles.entry(role(label)).or_default();
        *r = (r.0.max(*a), r.1.max(*b), r.2 + 1);
        processes.push(format!(
            "{label} {:.1} -> {:.1}",
            *a as f64 / 1024.0,
            *b as f64 / 1024.0
        ));
    }
    if roles.is_empty() {
        return Err("no stream RSS figures of the same processes in all.json and stream-large.json".into());
    }
    let mut worst = f64::NAN;
    let mut detail = Vec::new();
    for (role, (a, b, n)) in &roles {
        let ratio = *b as f64 / *a as f64;
        worst = if worst.is_nan() { ratio } else { worst.max(ratio) };
        let name = if *n > 1 {
            format!("{role} (largest of {n})")
        } else {
            (*role).to_owned()
        };
        detail.push(format!(
            "{name} {:.1} -> {:.1} MiB x{ratio:.3}",
            *a as f64 / 1024.0,
            *b as f64 / 1024.0
        ));
    }
    Ok(Measured::new(
        small_stream.calls.failed + large_stream.calls.failed,
        worst,
        format!(
            "{} vs {} body: {} (each process, MiB: {})",
            crate::units::mib(small_stream.size_bytes),
            crate::units::mib(large_stream.size_bytes),
            detail.join(", "),
            processes.join(", ")
        ),
    ))
}

/// A streaming target: `file`'s stream round trip over the floor's, in the same body mode.
fn stream_ratio(res: &Results, file: &str) -> Result<Measured, String> {
    let stream = need(res.get(file)?.stream.as_ref(), "stream figure", file)?;
    let floor = need(res.get(files::ALL)?.floor.as_ref(), "floor", files::ALL)?;
    if stream.body_mode != floor.stream.body_mode {
        return Err(format!(
            "{file} streamed in {:?} mode, the floor in {:?}",
            stream.body_mode, floor.stream.body_mode
        ));
    }
    Ok(Measured::new(
        stream.calls.failed + floor.failed,
        stream.round_trip_mb_s / floor.stream.round_trip_mb_s,
        format!(
            "{file} {} round trip {:.1} MB/s, floor {:.1} MB/s",
            crate::units::mib(stream.size_bytes),
            stream.round_trip_mb_s,
            floor.stream.round_trip_mb_s
        ),
    ))
}

/// 3: sparse p50 over the floor's sparse p50.
fn sparse_over_floor(res: &Results) -> Result<Measured, String> {
    let all = res.get(files::ALL)?;
    let sparse = need(all.sparse.as_ref(), "sparse figure", files::ALL)?;
    let floor = need(all.floor.as_ref(), "floor", files::ALL)?;
    let floor_sparse = need(floor.sparse.as_ref(), "floor sparse figure", files::ALL)?;
    Ok(Measured::new(
        sparse.calls.failed + floor.failed,
        sparse.latency.p50_ms - floor_sparse.latency.p50_ms,
        format!(
            "sparse p50 {:.3} ms, floor sparse p50 {:.3} ms (gap {} ms)",
            sparse.latency.p50_ms,
            floor_sparse.latency.p50_ms,
            sparse.gap_ms.unwrap_or(0)
        ),
    ))
}

/// 6: the mTLS cluster's LB + runners CPU per call over the plaintext cluster's.
fn tls_cpu_ratio(res: &Results) -> Result<Measured, String> {
    let (plain, plain_failed, _) = overhead_cpu(res.get(files::ALL)?, files::ALL)?;
    let (tls, tls_failed, _) = overhead_cpu(res.get(files::TLS_CONC)?, files::TLS_CONC)?;
    Ok(Measured::new(
        plain_failed + tls_failed,
        tls / plain,
        format!("mTLS {tls:.1} us/call, plaintext {plain:.1} us/call"),
    ))
}

/// 7: the compose cluster's warm p50 over the loopback mTLS cluster's.
fn compose_over_tls(res: &Results) -> Result<Measured, String> {
    let compose = need(
        res.get(files::COMPOSE_SEQ)?.seq.as_ref(),
        "seq figure",
        files::COMPOSE_SEQ,
    )?;
    let tls = need(
        res.get(files::TLS_SEQ)?.seq.as_ref(),
        "seq figure",
        files::TLS_SEQ,
    )?;
    Ok(Measured::new(
        compose.calls.failed + tls.calls.failed,
        compose.latency.p50_ms - tls.latency.p50_ms,
        format!(
            "compose p50 {:.3} ms, loopback mTLS p50 {:.3} ms",
            compose.latency.p50_ms, tls.latency.p50_ms
        ),
    ))
}

/// 8: cold p50 over the startup floor.
fn cold_over_floor(res: &Results) -> Result<Measured, String> {
    let all = res.get(files::ALL)?;
    let cold = need(all.cold.as_ref(), "cold figure", files::ALL)?;
    let floor = need(all.floor.as_ref(), "floor", files::ALL)?;
    Ok(Measured::new(
        cold.calls.failed + floor.failed,
        cold.latency.p50_ms - floor.startup.cold.p50_ms,
        format!(
            "cold p50 {:.1} ms ({} fresh fns), floor cold p50 {:.1} ms",
            cold.latency.p50_ms, cold.calls.attempted, floor.startup.cold.p50_ms
        ),
    ))
}

/// Calls/s of a `conc` run, without a verdict.
/// What the relays of the floor add to its warm p50: the part of target 1a's gap that any path
/// through as many extra processes pays, before parsing anything.
fn relayed_floor_figure(res: &Results) -> Figure {
    const NAME: &str = "floor via byte relays, p50 over floor";
    let relayed = res.get(files::ALL).and_then(|r| {
        let floor = need(r.floor.as_ref(), "floor", files::ALL)?;
        let relayed = need(floor.relayed.as_ref(), "floor via relays", files::ALL)?;
        Ok((floor, relayed))
    });
    match relayed {
        Ok((floor, relayed)) => Figure {
            name: NAME.into(),
            valid: Some(floor.valid),
            failed: floor.failed,
            value: Some(relayed.call.latency.p50_ms - floor.call.latency.p50_ms),
            unit: "ms".into(),
            detail: format!(
                "{} relays (own processes): p50 {:.3} ms, floor /call p50 {:.3} ms; p99 {:.3} vs {:.3} ms",
                relayed.relays,
                relayed.call.latency.p50_ms,
                floor.call.latency.p50_ms,
                relayed.call.latency.p99_ms,
                floor.call.latency.p99_ms
            ),
        },
        Err(why) => Figure {
            name: NAME.into(),
            valid: None,
            failed: 0,
            value: None,
            unit: "ms".into(),
            detail: why,
        },
    }
}

fn conc_figure(res: &Results, file: &str, runners: &str) -> Figure {
    let conc: Result<&ConcResult, String> = res
        .get(file)
        .and_then(|r| need(r.conc.as_ref(), "conc figure", file));
    match conc {
        Ok(c) => Figure {
            name: format!("calls/s, {} clients, {runners}", c.clients),
            valid: Some(c.calls.valid),
            failed: c.calls.failed,
            value: Some(c.ok_calls_per_s),
            unit: "calls/s".into(),
            detail: format!(
                "{file}: {} ok calls in {:.1} s, p50 {:.3} ms, p99 {:.3} ms",
                c.calls.ok, c.elapsed_s, c.latency.p50_ms, c.latency.p99_ms
            ),
        },
        Err(why) => Figure {
            name: format!("calls/s, 16 clients, {runners}"),
            valid: None,
            failed: 0,
            value: None,
            unit: "calls/s".into(),
            detail: why,
        },
    }
}

/// Every target of issue 11, in the order, and the figures without a verdict.
pub fn evaluate(res: &Results) -> TargetsReport {
    use limits::*;
    let mut targets = Vec::new();

    // 1. Warm latency, plaintext and mTLS.
    targets.extend(warm_targets(res, files::ALL, "plaintext", ["1a", "1b"]));
    targets.extend(warm_targets(res, files::TLS_SEQ, "mTLS", ["1c", "1d"]));

    // 2. CPU per call of the LB and runners at 16 clients.
    let cpu = || -> Result<(f64, u64, String), String> { overhead_cpu(res.get(files::ALL)?, files::ALL) };
    targets.push(Target::judge(
        &Spec {
            id: "2a",
            name: "CPU per call (LB + runners) vs the function's",
            formula: "conc LB+runners us/call / floor function us/call",
            rule: "<=",
            limit: CPU_OVER_FUNCTION_RATIO,
            unit: "x",
        },
        cpu().and_then(|(per_call, failed, parts)| {
            let floor = need(res.get(files::ALL)?.floor.as_ref(), "floor", files::ALL)?;
            let function = floor
                .call_cpu_us_per_call
                .ok_or("the floor's CPU per call was not read (engine stats)")?;
            Ok(Measured::new(
                failed + floor.failed,
                per_call / function,
                format!(
                    "LB + runners {per_call:.1} us/call ({parts}), function (floor) {function:.1} us/call"
                ),
            ))
        }),
    ));
    targets.push(Target::judge(
        &Spec {
            id: "2b",
            name: "CPU per call (LB + runners), absolute",
            formula: "conc LB+runners CPU / calls",
            rule: "<=",
            limit: CPU_US_PER_CALL,
            unit: "us",
        },
        cpu().map(|(per_call, failed, parts)| Measured::new(failed, per_call, format!("{parts} us/call"))),
    ));

    // 3. Sparse calls.
    targets.push(Target::judge(
        &Spec {
            id: "3",
            name: "sparse p50 over floor sparse",
            formula: "sparse p50 - floor sparse p50",
            rule: "<=",
            limit: SPARSE_OVER_FLOOR_SPARSE_MS,
            unit: "ms",
        },
        sparse_over_floor(res),
    ));
    // 4. Streaming.
    targets.push(Target::judge(
        &Spec {
            id: "4a",
            name: "streaming round trip vs floor, default frames",
            formula: "stream MB/s / floor stream MB/s",
            rule: ">=",
            limit: STREAM_OF_FLOOR_RATIO,
            unit: "x",
        },
        stream_ratio(res, files::ALL),
    ));
    targets.push(Target::judge(
        &Spec {
            id: "4b",
            name: "streaming round trip vs floor, 10 KiB frames",
            formula: "stream MB/s (LB with 10 KiB frames) / floor stream MB/s",
            rule: ">=",
            limit: STREAM_10K_FRAMES_OF_FLOOR_RATIO,
            unit: "x",
        },
        stream_ratio(res, files::STREAM_FRAMES_10K),
    ));

    // 5. The load step on a fresh fn.
    let step = || {
        res.get(files::STEP)
            .and_then(|r| need(r.step.as_ref(), "step figure", files::STEP))
    };
    targets.push(Target::judge(
        &Spec {
            id: "5a",
            name: "load step 0 -> 16 clients, p99 vs p50",
            formula: "step p99 / step p50 (every call from t=0)",
            rule: "<=",
            limit: STEP_P99_OVER_P50_RATIO,
            unit: "x",
        },
        step().map(|s| {
            Measured::new(
                s.calls.failed,
                s.latency.p99_ms / s.latency.p50_ms,
                format!(
                    "{} clients, {} calls in {:.0} s: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms; first calls p50 {:.1} ms",
                    s.clients,
                    s.calls.attempted,
                    s.duration_s,
                    s.latency.p50_ms,
                    s.latency.p99_ms,
                    s.latency.max_ms,
                    s.first_calls.p50_ms
                ),
            )
        }),
    ));
    targets.push(Target::judge(
        &Spec {
            id: "5b",
            name: "load step, function containers started",
            formula: "containers of the fn created during the step",
            rule: "<=",
            limit: 16.0,
            unit: "containers",
        },
        step().and_then(|s| {
            let c = s
                .containers
                .as_ref()
                .ok_or("the step's containers were not counted (--containers-label)")?;
            let by: Vec<String> = c.by_runner.iter().map(|(r, n)| format!("{r} {n}")).collect();
            Ok(Measured {
                limit: Some(s.clients as f64),
                ..Measured::new(
                    s.calls.failed,
                    c.started as f64,
                    format!(
                        "{} started, limit = the {} clients ({})",
                        c.started,
                        s.clients,
                        by.join(", ")
                    ),
                )
            })
        }),
    ));

    // 6. mTLS against plaintext CPU per call.
    targets.push(Target::judge(
        &Spec {
            id: "6",
            name: "CPU per call, mTLS vs plaintext",
            formula: "mTLS conc LB+runners us/call / plaintext's",
            rule: "<=",
            limit: TLS_CPU_OVER_PLAINTEXT_RATIO,
            unit: "x",
        },
        tls_cpu_ratio(res),
    ));

    // 7. The compose demo cluster against the loopback mTLS cluster.
    targets.push(Target::judge(
        &Spec {
            id: "7",
            name: "compose cluster warm p50 over loopback mTLS",
            formula: "compose seq p50 - loopback mTLS seq p50",
            rule: "<=",
            limit: COMPOSE_P50_OVER_TLS_MS,
            unit: "ms",
        },
        compose_over_tls(res),
    ));

    // 8. No regression: memory and cold start.
    targets.push(Target::judge(
        &Spec {
            id: "8a",
            name: "idle RSS of each LB and runner",
            formula: "max VmRSS before each scenario, largest process",
            rule: "<",
            limit: IDLE_RSS_MIB,
            unit: "MiB",
        },
        idle_rss(res),
    ));
    targets.push(Target::judge(
        &Spec {
            id: "8b",
            name: "peak RSS flat in body size",
            formula: "peak VmRSS large stream / 64 MiB stream, largest process",
            rule: "<=",
            limit: PEAK_RSS_LARGE_OVER_SMALL_RATIO,
            unit: "x",
        },
        peak_rss_flat(res),
    ));
    targets.push(Target::judge(
        &Spec {
            id: "8c",
            name: "cold start p50 over floor",
            formula: "cold p50 - floor (create+start+ready+first call) p50",
            rule: "<=",
            limit: COLD_OVER_FLOOR_MS,
            unit: "ms",
        },
        cold_over_floor(res),
    ));

    let figures = vec![
        conc_figure(res, files::CONC_1_RUNNER, "1 runner"),
        conc_figure(res, files::ALL, "2 runners"),
        conc_figure(res, files::CONC_3_RUNNERS, "3 runners"),
        relayed_floor_figure(res),
    ];
    let count = |s: Status| targets.iter().filter(|t| t.status == s).count();
    let failed_calls = res.failed_calls();
    TargetsReport {
        tool: env!("CARGO_PKG_NAME").into(),
        version: env!("CARGO_PKG_VERSION").into(),
        valid: failed_calls == 0 && count(Status::Invalid) == 0,
        failed_calls,
        pass: count(Status::Pass),
        fail: count(Status::Fail),
        invalid: count(Status::Invalid),
        skipped: count(Status::Skipped),
        sources: res
            .reports
            .iter()
            .map(|(name, r)| {
                let state = match r {
                    Ok(r) if r.failed_calls > 0 => format!("read, {} failed calls", r.failed_calls),
                    Ok(_) => "read".to_owned(),
                    Err(why) => why.clone(),
                };
                (name.clone(), state)
            })
            .collect(),
        targets,
        figures,
    }
}

/// `0.677 ms`, `2.905x`, `16 containers`, `568.3 us`, `14.8 MiB`.
fn quantity(value: f64, unit: &str) -> String {
    match unit {
        "x" => format!("{value:.3}x"),
        "containers" => format!("{value:.0} {unit}"),
        "us" | "MiB" => format!("{value:.1} {unit}"),
        _ => format!("{value:.3} {unit}"),
    }
}

fn limit_text(t: &Target) -> String {
    match t.unit.as_str() {
        "x" => format!("{} {}x", t.rule, t.limit),
        _ => format!("{} {} {}", t.rule, t.limit, t.unit),
    }
}

impl TargetsReport {
    /// The TARGETS table, the figures without a verdict and a one-line summary.
    pub fn render(&self) -> String {
        let mut out = String::from(
            "\nTARGETS (issue 11; each against figures of this run; a figure with a failed call is INVALID)\n",
        );
        let mut t = Table::new(&["#", "target", "verdict", "measured", "limit", "figures"]);
        for target in &self.targets {
            let skipped = target.status == Status::Skipped;
            t.row(vec![
                target.id.clone(),
                target.name.clone(),
                target.verdict.clone(),
                target
                    .measured
                    .filter(|_| !skipped)
                    .map_or_else(|| "-".into(), |v| quantity(v, &target.unit)),
                limit_text(target),
                if skipped {
                    String::new()
                } else {
                    target.detail.clone()
                },
            ]);
        }
        out.push_str(&t.render());
        let mut f = Table::new(&["figure (no verdict)", "failed", "figure", "value", "detail"]);
        for figure in &self.figures {
            f.row(vec![
                figure.name.clone(),
                figure.failed.to_string(),
                match figure.valid {
                    Some(true) => "valid".into(),
                    Some(false) => "INVALID".into(),
                    None => "absent".into(),
                },
                figure
                    .value
                    .map_or_else(|| "-".into(), |v| format!("{v:.1} {}", figure.unit)),
                figure.detail.clone(),
            ]);
        }
        out.push('\n');
        out.push_str(&f.render());
        let _ = writeln!(
            out,
            "\nTARGETS: {} PASS, {} FAIL, {} INVALID, {} SKIPPED ({} targets); failed calls in the results: {}",
            self.pass,
            self.fail,
            self.invalid,
            self.skipped,
            self.targets.len(),
            self.failed_calls
        );
        out
    }
}

/// Reads the results in `dir` and evaluates the targets.
pub fn from_dir(dir: &Path) -> TargetsReport {
    evaluate(&Results::load(dir))
}

/// The path of a result file.
pub fn result_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.json"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        cold::ColdResult,
        cpu::CpuFigure,
        floor::{FloorResult, RelayedFloor, StartupFloor, StartupRun},
        stats::{CallCounts, ErrorTally},
        step::{ContainerCount, StepResult},
        stream::{BodyMode, StreamResult},
    };

    use crate::test_support::{clean, latency};

    fn failing(ok: u64, n: u64) -> CallCounts {
        let mut failures = ErrorTally::default();
        for _ in 0..n {
            failures.add("503");
        }
        CallCounts::new(ok, failures, ErrorTally::default())
    }

    fn seq(p50: f64, p99: f64) -> SeqResult {
        SeqResult {
            calls: clean(1000),
            gap_ms: None,
            warmup: 20,
            latency: latency(p50, p99),
            connects: 1,
            elapsed_s: 1.0,
        }
    }

    fn stream(mb_s: f64, size: u64) -> StreamResult {
        StreamResult {
            calls: clean(3),
            size_bytes: size,
            body_mode: BodyMode::Sized,
            up_mb_s: mb_s,
            down_mb_s: mb_s,
            round_trip_mb_s: mb_s,
            runs: Vec::new(),
        }
    }

    fn conc(per_s: f64, calls: CallCounts) -> ConcResult {
        ConcResult {
            calls,
            clients: 16,
            warmup: 2,
            duration_s: 10.0,
            elapsed_s: 10.0,
            ok_calls_per_s: per_s,
            attempted_calls_per_s: per_s,
            latency: latency(8.0, 16.0),
            connects: 16,
        }
    }

    fn rss(label: &str, pid: u32, scenario: &str, idle_mib: f64, peak_mib: f64) -> RssFigure {
        RssFigure {
            valid: true,
            failed: 0,
            label: label.into(),
            pid,
            scenario: scenario.into(),
            idle_kib: Some((idle_mib * 1024.0) as u64),
            peak_kib: Some((peak_mib * 1024.0) as u64),
            after_kib: Some((idle_mib * 1024.0) as u64),
            hwm_kib: Some((peak_mib * 1024.0) as u64),
        }
    }

    fn derived(mut r: Report) -> Report {
        r.derive();
        r
    }

    /// The floor: warm p50 0.2 ms / p99 0.5 ms, sparse p50 0.5 ms, stream 1000 MB/s, cold 200 ms,
    /// the function's CPU 100 us/call.
    fn all() -> Report {
        let mut r = Report::new(None);
        let mut floor_sparse = seq(0.5, 1.0);
        floor_sparse.gap_ms = Some(200);
        r.floor = Some(
            FloorResult::new(
                "ferrofn/testfn:latest".into(),
                seq(0.2, 0.5),
                Some(floor_sparse),
                Some(100.0),
                stream(1000.0, 64 << 20),
                StartupFloor {
                    calls: clean(5),
                    cold: latency(200.0, 250.0),
                    runs: vec![StartupRun::default()],
                    ..Default::default()
                },
            )
            .with_relayed(Some(RelayedFloor {
                relays: 2,
                call: seq(0.3, 0.6),
            })),
        );
        r.seq = Some(seq(0.35, 1.0));
        let mut sparse = seq(0.7, 2.0);
        sparse.gap_ms = Some(200);
        r.sparse = Some(sparse);
        r.conc = Some(conc(2000.0, clean(20_000)));
        r.cpu = vec![
            CpuFigure::new("lb", "conc", 1000.0, 20_032, 0),
            CpuFigure::new("runner1", "conc", 500.0, 20_032, 0),
            CpuFigure::new("runner2", "conc", 500.0, 20_032, 0),
            CpuFigure::new("fn ferrofn.runner=r1", "conc", 3000.0, 20_032, 0),
        ];
        r.stream = Some(stream(500.0, 64 << 20));
        r.cold = Some(ColdResult {
            calls: clean(10),
            latency: latency(215.0, 300.0),
            ..Default::default()
        });
        r.rss = vec![
            rss("lb", 10, "seq", 14.0, 15.0),
            rss("runner1", 11, "seq", 15.0, 16.0),
            rss("lb", 10, "stream", 14.5, 20.0),
            rss("runner1", 11, "stream", 15.5, 20.0),
        ];
        derived(r)
    }

    fn only(f: impl FnOnce(&mut Report)) -> Report {
        let mut r = Report::new(None);
        f(&mut r);
        derived(r)
    }

    /// A complete run's results.
    fn results() -> Vec<(&'static str, Result<Report, String>)> {
        vec![
            (files::ALL, Ok(all())),
            (
                files::STREAM_LARGE,
                Ok(only(|r| {
                    r.stream = Some(stream(450.0, 256 << 20));
                    r.rss = vec![
                        rss("lb", 10, "stream", 14.5, 21.0),
                        rss("runner1", 11, "stream", 15.5, 22.0),
                    ];
                })),
            ),
            (
                files::STREAM_FRAMES_10K,
                Ok(only(|r| r.stream = Some(stream(250.0, 64 << 20)))),
            ),
            (
                files::STEP,
                Ok(only(|r| {
                    r.step = Some(StepResult {
                        calls: clean(5000),
                        clients: 16,
                        duration_s: 10.0,
                        latency: latency(10.0, 100.0),
                        containers: Some(ContainerCount {
                            label: "ferrofn.fn_id=F".into(),
                            started: 16,
                            by_runner: [("r1".to_owned(), 8), ("r2".to_owned(), 8)].into(),
                        }),
                        ..Default::default()
                    })
                })),
            ),
            (
                files::CONC_1_RUNNER,
                Ok(only(|r| r.conc = Some(conc(1500.0, clean(15_000))))),
            ),
            (
                files::CONC_3_RUNNERS,
                Ok(only(|r| r.conc = Some(conc(2100.0, clean(21_000))))),
            ),
            (files::TLS_SEQ, Ok(only(|r| r.seq = Some(seq(0.4, 1.2))))),
            (
                files::TLS_CONC,
                Ok(only(|r| {
                    r.conc = Some(conc(1900.0, clean(19_000)));
                    r.cpu = vec![
                        CpuFigure::new("lb-tls", "conc", 1150.0, 19_032, 0),
                        CpuFigure::new("runner-tls1", "conc", 575.0, 19_032, 0),
                    ];
                    r.rss = vec![rss("lb-tls", 20, "conc", 19.9, 25.0)];
                })),
            ),
            (files::COMPOSE_SEQ, Ok(only(|r| r.seq = Some(seq(0.7, 2.0))))),
        ]
    }

    fn target<'a>(r: &'a TargetsReport, id: &str) -> &'a Target {
        r.targets.iter().find(|t| t.id == id).unwrap()
    }

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 1e-6)
    }

    #[test]
    fn every_target_of_a_clean_run_gets_pass_or_fail() {
        let r = evaluate(&Results::from_reports(results()));
        let ids: Vec<&str> = r.targets.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "1a", "1b", "1c", "1d", "2a", "2b", "3", "4a", "4b", "5a", "5b", "6", "7", "8a", "8b", "8c"
            ]
        );
        assert!(r.valid);
        assert_eq!(r.failed_calls, 0);
        assert_eq!(r.invalid + r.skipped, 0);
        assert_eq!(r.pass + r.fail, 16);
        // 1: 0.35 - 0.2 = 0.15 ms is exactly the limit: PASS; 1.0 / 0.5 = 2x: PASS.
        let t = target(&r, "1a");
        assert!(close(t.measured, 0.15) && t.status == Status::Pass, "{t:?}");
        assert_eq!(target(&r, "1b").verdict, "PASS");
        // mTLS: 0.4 - 0.2 = 0.2 ms: FAIL; 1.2 / 0.5 = 2.4x: FAIL.
        assert_eq!(target(&r, "1c").verdict, "FAIL");
        assert!(close(target(&r, "1d").measured, 2.4));
        // 2: LB + runners = (1000 + 500 + 500) ms / 20032 calls = 99.84 us: under 100 us and
        // under the function's 100 us. The function containers' figure is not part of it.
        let cpu = target(&r, "2b");
        assert!(close(cpu.measured, 2000.0 * 1e3 / 20_032.0), "{cpu:?}");
        assert_eq!(cpu.verdict, "PASS");
        assert_eq!(target(&r, "2a").verdict, "PASS");
        // 3: 0.7 - 0.5 = 0.2 ms: PASS at the limit.
        assert_eq!(target(&r, "3").verdict, "PASS");
        // 4: 500/1000 = 0.5x PASS at the limit; 250/1000 = 0.25x PASS at the limit.
        assert!(close(target(&r, "4a").measured, 0.5) && target(&r, "4a").pass == Some(true));
        assert!(close(target(&r, "4b").measured, 0.25) && target(&r, "4b").pass == Some(true));
        // 5: 100/10 = 10x at the limit; 16 containers for 16 clients.
        assert_eq!(target(&r, "5a").verdict, "PASS");
        let containers = target(&r, "5b");
        assert_eq!((containers.measured, containers.limit), (Some(16.0), 16.0));
        assert_eq!(containers.verdict, "PASS");
        assert!(containers.detail.contains("r1 8, r2 8"), "{}", containers.detail);
        // 6: (1150 + 575) / (1000 + 500 + 500) = 1.15x with the same call count... per call.
        let tls = target(&r, "6");
        let expected = (1725.0 / 19_032.0) / (2000.0 / 20_032.0);
        assert!(close(tls.measured, expected), "{tls:?}");
        assert_eq!(tls.verdict, if expected <= 1.15 { "PASS" } else { "FAIL" });
        // 7: 0.7 - 0.4 = 0.3 ms at the limit.
        assert_eq!(target(&r, "7").verdict, "PASS");
        // 8a: the largest idle over every process of every file: lb-tls 19.9 MiB < 20.
        let idle = target(&r, "8a");
        assert!(
            idle.measured.unwrap() > 19.8 && idle.pass == Some(true),
            "{idle:?}"
        );
        assert!(idle.detail.contains("lb-tls 19.9"), "{}", idle.detail);
        // 8b: runner1 20 -> 22 MiB = 1.1x at the limit; lb 1.05x.
        let flat = target(&r, "8b");
        assert!(close(flat.measured, 1.1) && flat.pass == Some(true), "{flat:?}");
        assert!(
            flat.detail.contains("lb 20.0 -> 21.0 MiB x1.050"),
            "{}",
            flat.detail
        );
        // 8c: 215 - 200 = 15 ms.
        assert!(close(target(&r, "8c").measured, 15.0));
        assert_eq!(r.figures.len(), 4);
        assert_eq!(r.figures[0].value, Some(1500.0));
        assert_eq!(r.figures[0].name, "calls/s, 16 clients, 1 runner");
        assert_eq!(r.figures[2].valid, Some(true));
        // The floor through 2 relays: 0.3 - 0.2 = 0.1 ms over the floor.
        let relayed = &r.figures[3];
        assert!(close(relayed.value, 0.1), "{relayed:?}");
        assert!(relayed.detail.starts_with("2 relays"), "{}", relayed.detail);
    }

    #[test]
    fn peak_rss_compares_the_lb_and_the_largest_runner() {
        // runner2 carried no transfer of the 64 MiB stream (its peak is its idle memory) and the
        // one transfer of the large stream: the runners' largest peaks are compared, 20 -> 21.
        let mut res = results();
        res[0]
            .1
            .as_mut()
            .unwrap()
            .rss
            .push(rss("runner2", 12, "stream", 11.0, 11.0));
        res[1].1.as_mut().unwrap().rss = vec![
            rss("lb", 10, "stream", 14.5, 21.0),
            rss("runner1", 11, "stream", 15.5, 15.6),
            rss("runner2", 12, "stream", 11.0, 21.0),
        ];
        let r = evaluate(&Results::from_reports(res));
        let flat = target(&r, "8b");
        assert!(close(flat.measured, 1.05), "{flat:?}");
        assert!(
            flat.detail
                .contains("runner (largest of 2) 20.0 -> 21.0 MiB x1.050"),
            "{}",
            flat.detail
        );
        assert!(flat.detail.contains("runner2 11.0 -> 21.0"), "{}", flat.detail);
        assert_eq!(role("runner-tls2"), "runner-tls");
        assert_eq!(role("lb"), "lb");
    }

    #[test]
    fn just_over_a_limit_fails() {
        let mut res = results();
        res[0].1.as_mut().unwrap().seq = Some(seq(0.3501, 1.0001));
        let mut compose = Report::new(None);
        compose.seq = Some(seq(0.7001, 1.0));
        res[8].1 = Ok(compose);
        let r = evaluate(&Results::from_reports(res));
        assert_eq!(target(&r, "1a").verdict, "FAIL");
        assert_eq!(target(&r, "1b").verdict, "FAIL");
        assert_eq!(target(&r, "7").verdict, "FAIL");
        // Idle RSS must be strictly below the limit.
        let mut res = results();
        res[0]
            .1
            .as_mut()
            .unwrap()
            .rss
            .push(rss("runner2", 12, "conc", 20.0, 21.0));
        let r = evaluate(&Results::from_reports(res));
        assert_eq!(target(&r, "8a").verdict, "FAIL");
    }

    #[test]
    fn a_failed_call_makes_every_target_resting_on_it_invalid() {
        let mut res = results();
        // Two failed calls in the mTLS conc: targets 6 only (1c/1d rest on tls-seq).
        res[7].1.as_mut().unwrap().conc = Some(conc(1900.0, failing(19_000, 2)));
        for f in &mut res[7].1.as_mut().unwrap().cpu {
            *f = CpuFigure::new(&f.label, "conc", f.cpu_ms, f.calls, 2);
        }
        res[7].1.as_mut().unwrap().derive();
        let r = evaluate(&Results::from_reports(res));
        let t = target(&r, "6");
        assert_eq!(
            (t.status, t.verdict.as_str(), t.pass),
            (Status::Invalid, "INVALID (2 failed calls)", None)
        );
        assert!(!t.valid);
        assert_eq!(target(&r, "1c").status, Status::Fail);
        assert!(!r.valid);
        assert_eq!(r.failed_calls, 2);
        assert_eq!(r.invalid, 1);

        // A failed floor call invalidates every target taken against the floor.
        let mut res = results();
        let all = res[0].1.as_mut().unwrap();
        let floor = all.floor.take().unwrap();
        let mut floor_stream = floor.stream.clone();
        floor_stream.calls = failing(2, 1);
        all.floor = Some(FloorResult::new(
            floor.image,
            floor.call,
            floor.sparse,
            floor.call_cpu_us_per_call,
            floor_stream,
            floor.startup,
        ));
        all.derive();
        let r = evaluate(&Results::from_reports(res));
        for id in ["1a", "1b", "1c", "1d", "2a", "3", "4a", "4b", "8c"] {
            assert_eq!(target(&r, id).verdict, "INVALID (1 failed call)", "{id}");
        }
        for id in ["2b", "5a", "5b", "6", "7", "8b"] {
            assert!(
                matches!(target(&r, id).status, Status::Pass | Status::Fail),
                "{id}"
            );
        }

        // A failed step call: both step targets.
        let mut res = results();
        let step = res[3].1.as_mut().unwrap();
        step.step.as_mut().unwrap().calls = failing(4990, 10);
        step.derive();
        assert_eq!(step.failed_calls, 10);
        let r = evaluate(&Results::from_reports(res));
        assert_eq!(target(&r, "5a").verdict, "INVALID (10 failed calls)");
        assert_eq!(target(&r, "5b").verdict, "INVALID (10 failed calls)");

        // Failed calls in a scenario a process was watched through: its idle RSS.
        let mut res = results();
        res[0].1.as_mut().unwrap().rss[0].failed = 3;
        let r = evaluate(&Results::from_reports(res));
        assert_eq!(target(&r, "8a").verdict, "INVALID (3 failed calls)");

        // A conc without a verdict is still marked.
        let mut res = results();
        res[4].1.as_mut().unwrap().conc = Some(conc(1000.0, failing(10_000, 4)));
        let r = evaluate(&Results::from_reports(res));
        assert_eq!((r.figures[0].valid, r.figures[0].failed), (Some(false), 4));
        assert!(r.render().contains("INVALID"));
    }

    #[test]
    fn missing_figures_are_skipped_with_the_reason() {
        let mut res = results();
        res[8].1 = Err("BENCH_SKIP_COMPOSE=1".into());
        res[3].1.as_mut().unwrap().step.as_mut().unwrap().containers = None;
        res.retain(|(name, _)| *name != files::STREAM_FRAMES_10K);
        let all = res[0].1.as_mut().unwrap();
        all.cold = None;
        all.floor.as_mut().unwrap().call_cpu_us_per_call = None;
        let r = evaluate(&Results::from_reports(res));
        assert_eq!(target(&r, "7").verdict, "SKIPPED (BENCH_SKIP_COMPOSE=1)");
        assert_eq!(target(&r, "7").measured, None);
        assert_eq!(target(&r, "4b").verdict, "SKIPPED (no stream-frames10k.json)");
        assert!(
            target(&r, "5b")
                .verdict
                .starts_with("SKIPPED (the step's containers were not counted")
        );
        assert_eq!(target(&r, "5a").status, Status::Pass);
        assert_eq!(target(&r, "8c").verdict, "SKIPPED (no cold figure in all.json)");
        assert!(target(&r, "2a").verdict.contains("CPU per call was not read"));
        assert_eq!(target(&r, "2b").status, Status::Pass);
        assert_eq!(r.skipped, 5);
        assert!(r.valid, "skipping is not a failed call");
        assert_eq!(r.sources["compose-seq"], "BENCH_SKIP_COMPOSE=1");
        assert_eq!(r.sources["all"], "read");

        // Nothing at all: every target skipped, the figures absent.
        let r = evaluate(&Results::default());
        assert_eq!(r.skipped, r.targets.len());
        assert!(r.figures.iter().all(|f| f.valid.is_none() && f.value.is_none()));
        assert_eq!(target(&r, "1a").verdict, "SKIPPED (no all.json)");

        // A figure that cannot be computed (a zero floor) is skipped, not failed.
        let mut res = results();
        res[0]
            .1
            .as_mut()
            .unwrap()
            .floor
            .as_mut()
            .unwrap()
            .call
            .latency
            .p99_ms = 0.0;
        let r = evaluate(&Results::from_reports(res));
        assert!(
            target(&r, "1b").verdict.starts_with("SKIPPED (not computable"),
            "{:?}",
            target(&r, "1b")
        );
        // Different body modes are not comparable.
        let mut res = results();
        res[2].1.as_mut().unwrap().stream.as_mut().unwrap().body_mode = BodyMode::Echo;
        let r = evaluate(&Results::from_reports(res));
        assert!(
            target(&r, "4b").verdict.contains("Echo mode"),
            "{}",
            target(&r, "4b").verdict
        );
    }

    #[test]
    fn reads_a_results_dir_and_renders_every_line() {
        let dir = tempfile::tempdir().unwrap();
        for (name, report) in results() {
            if name == files::COMPOSE_SEQ {
                std::fs::write(
                    dir.path().join(format!("{name}.skipped")),
                    "BENCH_SKIP_COMPOSE=1\n",
                )
                .unwrap();
                continue;
            }
            let json = serde_json::to_string_pretty(&report.unwrap()).unwrap();
            std::fs::write(result_path(dir.path(), name), json).unwrap();
        }
        std::fs::write(result_path(dir.path(), files::CONC_3_RUNNERS), "{not json").unwrap();
        let r = from_dir(dir.path());
        assert_eq!(target(&r, "7").verdict, "SKIPPED (BENCH_SKIP_COMPOSE=1)");
        assert!(r.sources["conc-3runners"].starts_with("conc-3runners.json is unreadable"));
        assert_eq!(r.figures[2].valid, None);
        assert_eq!(r.pass + r.fail, 15);
        let text = r.render();
        assert!(text.contains("\nTARGETS (issue 11"), "{text}");
        for t in &r.targets {
            let line = text
                .lines()
                .find(|l| l.trim_start().starts_with(&format!("{} ", t.id)))
                .unwrap_or_else(|| panic!("no line for {} in\n{text}", t.id));
            assert!(line.contains(&t.verdict), "{line}");
        }
        assert!(text.contains("SKIPPED (BENCH_SKIP_COMPOSE=1)"));
        assert!(text.contains("calls/s, 16 clients, 1 runner"));
        assert!(text.contains("TARGETS: "), "{text}");
        // The JSON round-trips and names each target's status.
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["targets"][0]["id"], "1a");
        assert!(v["targets"][0]["status"].is_string());
        assert_eq!(v["targets"][12]["status"], "skipped");
        assert_eq!(serde_json::from_value::<TargetsReport>(v).unwrap(), r);
    }
}
