//! The results of a run: one [`Report`] (written as JSON with `--json`), rendered as plain-text
//! tables on stdout, with the performance contract's checks (figures against the floor) derived
//! from whichever scenarios ran.
//!
//! Failed calls come first, everywhere: the report opens with them, every figure's row and JSON
//! object starts with its failed calls and its validity, and a figure with any failed call is
//! INVALID. A check that rests on an invalid figure gets no PASS or FAIL but
//! `INVALID (n failed calls)`.

use serde::{Deserialize, Serialize};
use std::{collections::BTreeMap, fmt::Write as _};

use crate::{
    cold::ColdResult,
    cpu::CpuFigure,
    floor::FloorResult,
    load::{ConcResult, SeqResult},
    rss::RssFigure,
    sim::SimReport,
    stats::{CallCounts, LatencySummary, invalid_verdict},
    step::StepResult,
    stream::StreamResult,
};

/// The limits of the contract's checks: issue 11's (see [`crate::targets::limits`]), so that a
/// single `all` run and `make bench`'s TARGETS table never disagree, plus one diagnostic ratio.
pub mod targets {
    pub use crate::targets::limits::*;
    /// What the LB and runner add to a call after idle may be at most this multiple of what they
    /// add to a warm call (a diagnostic of the sparse figure; not one of issue 11's targets).
    pub const ADDED_AFTER_IDLE_OVER_WARM_RATIO: f64 = 1.5;
}

/// What was measured.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TargetInfo {
    pub url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fn_id: Option<String>,
}

/// One target of the contract against its measured figure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    /// `false` when a figure the check uses has failed calls: no PASS or FAIL then.
    pub valid: bool,
    /// Failed calls in the figures the check uses.
    pub failed: u64,
    /// `"PASS"`, `"FAIL"`, or `"INVALID (n failed calls)"`.
    pub verdict: String,
    /// How the figure is computed, e.g. `"seq p50 - floor p50"`.
    pub formula: String,
    pub measured: f64,
    /// `"<="`, `"<"` or `">="`.
    pub rule: String,
    pub limit: f64,
    pub unit: String,
    /// The verdict as a boolean; `null` when the check is invalid.
    pub pass: Option<bool>,
}

impl Check {
    /// A check of `measured` against `limit`, resting on figures with `failed` failed calls.
    fn new(
        name: &str,
        formula: &str,
        failed: u64,
        measured: f64,
        rule: &str,
        limit: f64,
        unit: &str,
    ) -> Self {
        let within = measured.is_finite()
            && match rule {
                "<=" => measured <= limit,
                "<" => measured < limit,
                _ => measured >= limit,
            };
        let pass = (failed == 0).then_some(within);
        let verdict = match pass {
            Some(true) => "PASS".into(),
            Some(false) => "FAIL".into(),
            None => invalid_verdict(failed),
        };
        Check {
            name: name.into(),
            valid: failed == 0,
            failed,
            verdict,
            formula: formula.into(),
            measured,
            rule: rule.into(),
            limit,
            unit: unit.into(),
            pass,
        }
    }
}

/// A scenario figure with failed calls.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InvalidFigure {
    /// `"conc"`, `"floor stream"`, ...
    pub figure: String,
    pub failed: u64,
}

/// Everything one invocation of the tool measured. Absent scenarios are omitted from the JSON.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub tool: String,
    pub version: String,
    /// RFC 3339.
    pub started_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<TargetInfo>,
    /// `false` when any figure has a failed call; the tool then exits with status 3 unless
    /// `--allow-failures` is given.
    pub valid: bool,
    /// Failed calls over every scenario (warm-up calls included).
    pub failed_calls: u64,
    /// The scenario figures with failed calls, in report order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub invalid_figures: Vec<InvalidFigure>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub floor: Option<FloorResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<SeqResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sparse: Option<SeqResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conc: Option<ConcResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cold: Option<ColdResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream: Option<StreamResult>,
    /// The load step on a fresh fn (`step`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<StepResult>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rss: Vec<RssFigure>,
    /// CPU used per call by the watched processes and the function containers (`conc`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cpu: Vec<CpuFigure>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sim: Option<SimReport>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<Check>,
}

impl Report {
    /// An empty report stamped with the tool's name, version and the current time.
    pub fn new(target: Option<TargetInfo>) -> Self {
        let now = time::OffsetDateTime::now_utc();
        Report {
            tool: env!("CARGO_PKG_NAME").into(),
            version: env!("CARGO_PKG_VERSION").into(),
            started_at: now
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            target,
            valid: true,
            ..Default::default()
        }
    }

    /// Every scenario figure present, by name, with its call counts, in report order.
    pub fn call_figures(&self) -> Vec<(&'static str, &CallCounts)> {
        let mut figures = Vec::new();
        if let Some(f) = &self.floor {
            figures.push(("floor /call", &f.call.calls));
            if let Some(s) = &f.sparse {
                figures.push(("floor sparse", &s.calls));
            }
            if let Some(r) = &f.relayed {
                figures.push(("floor via relays", &r.call.calls));
            }
            figures.push(("floor stream", &f.stream.calls));
            figures.push(("floor startup", &f.startup.calls));
        }
        let scenarios = [
            ("seq", self.seq.as_ref().map(|s| &s.calls)),
            ("sparse", self.sparse.as_ref().map(|s| &s.calls)),
            ("conc", self.conc.as_ref().map(|c| &c.calls)),
            ("cold", self.cold.as_ref().map(|c| &c.calls)),
            ("stream", self.stream.as_ref().map(|s| &s.calls)),
            ("step", self.step.as_ref().map(|s| &s.calls)),
        ];
        figures.extend(scenarios.into_iter().filter_map(|(name, c)| Some((name, c?))));
        figures
    }

    /// Derives, from the figures present, the run's validity ([`Report::valid`],
    /// [`Report::failed_calls`], [`Report::invalid_figures`]) and the contract's checks: each
    /// target needs its scenario and, for ratios, the floor.
    pub fn derive(&mut self) {
        let figures = self.call_figures();
        let invalid: Vec<InvalidFigure> = figures
            .iter()
            .filter(|(_, c)| c.failed > 0)
            .map(|(name, c)| InvalidFigure {
                figure: (*name).into(),
                failed: c.failed,
            })
            .collect();
        self.failed_calls = figures.iter().map(|(_, c)| c.failed).sum();
        self.valid = invalid.is_empty();
        self.invalid_figures = invalid;
        self.checks = self.contract_checks();
    }

    /// The contract's checks. A check rests on the failed calls of its scenarios and, when it is
    /// taken against the floor, on the whole floor's: a floor with a failed call anywhere is not
    /// a floor.
    fn contract_checks(&self) -> Vec<Check> {
        use targets::*;
        let mut checks = Vec::new();
        let floor = self.floor.as_ref();
        if let (Some(seq), Some(floor)) = (&self.seq, floor) {
            let failed = seq.calls.failed + floor.failed;
            checks.push(Check::new(
                "warm p50 over floor",
                "seq p50 - floor /call p50",
                failed,
                seq.latency.p50_ms - floor.call.latency.p50_ms,
                "<=",
                WARM_P50_OVER_FLOOR_MS,
                "ms",
            ));
            checks.push(Check::new(
                "warm p99 vs floor",
                "seq p99 / floor /call p99",
                failed,
                seq.latency.p99_ms / floor.call.latency.p99_ms,
                "<=",
                WARM_P99_OVER_FLOOR_RATIO,
                "x",
            ));
        }
        if let (Some(sparse), Some((floor, floor_sparse))) = (
            &self.sparse,
            floor.and_then(|f| f.sparse.as_ref().map(|s| (f, s))),
        ) {
            checks.push(Check::new(
                "sparse p50 over floor sparse",
                "sparse p50 - floor sparse p50",
                sparse.calls.failed + floor.failed,
                sparse.latency.p50_ms - floor_sparse.latency.p50_ms,
                "<=",
                SPARSE_OVER_FLOOR_SPARSE_MS,
                "ms",
            ));
            // The LB and runner's own share: what they add to a call after idle, against what they
            // add to a warm one. The function's (and the machine's) wake-up after idle is in the
            // floor's sparse figure, so it cancels out of both differences.
            if let Some(seq) = &self.seq {
                checks.push(Check::new(
                    "added after idle vs warm",
                    "(sparse p50 - floor sparse p50) / (seq p50 - floor /call p50)",
                    sparse.calls.failed + seq.calls.failed + floor.failed,
                    (sparse.latency.p50_ms - floor_sparse.latency.p50_ms)
                        / (seq.latency.p50_ms - floor.call.latency.p50_ms),
                    "<=",
                    ADDED_AFTER_IDLE_OVER_WARM_RATIO,
                    "x",
                ));
            }
        }
        if let (Some(cold), Some(floor)) = (&self.cold, floor) {
            checks.push(Check::new(
                "cold p50 over floor",
                "cold p50 - floor (create+start+ready+first call) p50",
                cold.calls.failed + floor.failed,
                cold.latency.p50_ms - floor.startup.cold.p50_ms,
                "<=",
                COLD_OVER_FLOOR_MS,
                "ms",
            ));
        }
        // Streaming is only comparable with a floor measured in the same body mode.
        if let (Some(stream), Some(floor)) = (&self.stream, floor)
            && stream.body_mode == floor.stream.body_mode
        {
            checks.push(Check::new(
                "streaming vs floor",
                "stream round-trip MB/s / floor round-trip MB/s",
                stream.calls.failed + floor.failed,
                stream.round_trip_mb_s / floor.stream.round_trip_mb_s,
                ">=",
                STREAM_OF_FLOOR_RATIO,
                "x",
            ));
        }
        // The idle figure of a process is its largest pre-scenario sample: idle after load counts,
        // so it rests on the failed calls of every scenario the process was watched through.
        let mut idle: BTreeMap<(String, u32), (u64, u64)> = BTreeMap::new();
        for figure in &self.rss {
            let entry = idle.entry((figure.label.clone(), figure.pid)).or_default();
            entry.1 += figure.failed;
            if let Some(kib) = figure.idle_kib {
                entry.0 = entry.0.max(kib);
            }
        }
        for ((label, pid), (kib, failed)) in idle {
            if kib == 0 {
                continue;
            }
            checks.push(Check::new(
                &format!("idle RSS {label} ({pid})"),
                "max VmRSS before each scenario",
                failed,
                kib as f64 / 1024.0,
                "<",
                IDLE_RSS_MIB,
                "MiB",
            ));
        }
        checks
    }

    /// The report as plain-text tables, failed calls first.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Some(t) = &self.target {
            let _ = writeln!(
                out,
                "target: {}{}",
                t.url,
                t.fn_id.as_ref().map(|f| format!(" fn {f}")).unwrap_or_default()
            );
        }
        out.push_str(&self.render_failures());

        let mut latency = Table::new(&[
            "scenario",
            "failed",
            "figure",
            "attempted",
            "ok",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "max ms",
            "mean ms",
            "notes",
        ]);
        if let Some(f) = &self.floor {
            latency.latency_row(
                "floor /call (uds)",
                &f.call.calls,
                &f.call.latency,
                "direct to the FDK",
            );
            if let Some(r) = &f.relayed {
                let note = format!("through {} byte relays (own processes) to the FDK", r.relays);
                latency.latency_row("floor via relays", &r.call.calls, &r.call.latency, &note);
            }
            if let Some(s) = &f.sparse {
                let note = format!("gap {} ms, direct to the FDK", s.gap_ms.unwrap_or(0));
                latency.latency_row("floor sparse (uds)", &s.calls, &s.latency, &note);
            }
            latency.latency_row(
                "floor cold",
                &f.startup.calls,
                &f.startup.cold,
                "create+start+ready+first call",
            );
        }
        if let Some(s) = &self.seq {
            let note = format!("{} warm-up, {} conn", s.warmup, s.connects);
            latency.latency_row("seq", &s.calls, &s.latency, &note);
        }
        if let Some(s) = &self.sparse {
            let note = format!("gap {} ms, {} conn", s.gap_ms.unwrap_or(0), s.connects);
            latency.latency_row("sparse", &s.calls, &s.latency, &note);
        }
        if let Some(c) = &self.conc {
            let attempted = if c.calls.failed > 0 {
                format!(" ({:.0} attempted/s)", c.attempted_calls_per_s)
            } else {
                String::new()
            };
            let note = format!(
                "{} clients, {:.0} ok calls/s{attempted} over {:.1}s",
                c.clients, c.ok_calls_per_s, c.elapsed_s
            );
            latency.latency_row("conc", &c.calls, &c.latency, &note);
        }
        if let Some(c) = &self.cold {
            let note = format!("{} fresh fns, {} deleted", c.calls.attempted, c.deleted);
            latency.latency_row("cold", &c.calls, &c.latency, &note);
        }
        if let Some(s) = &self.step {
            let note = format!(
                "{} clients at once on a fresh fn, no warm-up, {:.0} ok calls/s; first calls p50 {:.1} ms",
                s.clients, s.ok_calls_per_s, s.first_calls.p50_ms
            );
            latency.latency_row("step", &s.calls, &s.latency, &note);
        }
        if !latency.rows.is_empty() {
            out.push_str("\nlatency (over the ok calls)\n");
            out.push_str(&latency.render());
        }
        if let Some(s) = &self.step {
            out.push_str(&render_step(s));
        }

        if let Some(f) = &self.floor {
            let mut startup = Table::new(&["startup floor", "p50 ms", "p99 ms", "max ms"]);
            let s = &f.startup;
            for (name, l) in [
                ("docker create", &s.create),
                ("docker start", &s.start),
                ("socket ready after start", &s.ready),
                ("create..ready", &s.total),
                ("first call", &s.first_call),
                ("cold floor", &s.cold),
            ] {
                startup.row(vec![name.into(), num(l.p50_ms), num(l.p99_ms), num(l.max_ms)]);
            }
            let failed = if s.calls.valid {
                String::new()
            } else {
                format!("; INVALID: failed first calls {}", s.calls.describe_failed())
            };
            let _ = writeln!(
                out,
                "\nstartup floor ({}, {} runs{failed})",
                f.image,
                s.runs.len()
            );
            out.push_str(&startup.render());
        }

        let mut streams = Table::new(&[
            "stream",
            "failed",
            "figure",
            "attempted",
            "ok",
            "mode",
            "size",
            "up MB/s",
            "down MB/s",
            "round trip MB/s",
            "first failure",
        ]);
        for (name, s) in [
            ("floor (uds)", self.floor.as_ref().map(|f| &f.stream)),
            ("via LB", self.stream.as_ref()),
        ] {
            if let Some(s) = s {
                streams.row(vec![
                    name.into(),
                    s.calls.describe_failed(),
                    figure(s.calls.valid),
                    s.calls.attempted.to_string(),
                    s.calls.ok.to_string(),
                    format!("{:?}", s.body_mode).to_lowercase(),
                    crate::units::mib(s.size_bytes),
                    format!("{:.1}", s.up_mb_s),
                    format!("{:.1}", s.down_mb_s),
                    format!("{:.1}", s.round_trip_mb_s),
                    verify_detail(s),
                ]);
            }
        }
        if !streams.rows.is_empty() {
            out.push_str("\nstreaming (medians of the verified transfers)\n");
            out.push_str(&streams.render());
        }

        if !self.rss.is_empty() {
            let mut rss = Table::new(&[
                "process", "pid", "scenario", "failed", "figure", "idle", "peak", "after", "hwm",
            ]);
            let kib = |v: Option<u64>| v.map_or("-".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0));
            for f in &self.rss {
                rss.row(vec![
                    f.label.clone(),
                    f.pid.to_string(),
                    f.scenario.clone(),
                    f.failed.to_string(),
                    figure(f.valid),
                    kib(f.idle_kib),
                    kib(f.peak_kib),
                    kib(f.after_kib),
                    kib(f.hwm_kib),
                ]);
            }
            out.push_str("\nmemory (VmRSS)\n");
            out.push_str(&rss.render());
        }

        if let Some(text) = self.render_cpu() {
            out.push_str(&text);
        }
        if let Some(sim) = &self.sim {
            out.push('\n');
            out.push_str(&sim.render());
        }
        if !self.checks.is_empty() {
            let mut checks = Table::new(&["target", "result", "measured", "limit", "formula"]);
            for c in &self.checks {
                checks.row(vec![
                    c.name.clone(),
                    c.verdict.clone(),
                    format!("{:.3} {}", c.measured, c.unit),
                    format!("{} {} {}", c.rule, c.limit, c.unit),
                    c.formula.clone(),
                ]);
            }
            out.push_str("\ncontract\n");
            out.push_str(&checks.render());
        }
        out
    }

    /// The opening lines: the failed calls of the run, figure by figure.
    fn render_failures(&self) -> String {
        let figures = self.call_figures();
        if figures.is_empty() {
            return String::new();
        }
        let failed: u64 = figures.iter().map(|(_, c)| c.failed).sum();
        if failed == 0 {
            return "failed calls: 0 (every figure valid)\n".into();
        }
        let mut out = format!(
            "INVALID: {failed} failed call{}. The figures marked INVALID below are not measurements; \
             a check that uses one gets no verdict:\n",
            if failed == 1 { "" } else { "s" }
        );
        for (name, c) in figures.iter().filter(|(_, c)| c.failed > 0) {
            let _ = writeln!(out, "  {name}: {}", c.describe_failed());
        }
        out
    }

    /// CPU per call: each watched process and container group, the LB + runner(s) sum, and the
    /// function's own CPU per call (from the floor's warm calls, and from the containers in `conc`).
    fn render_cpu(&self) -> Option<String> {
        let floor_fn = self
            .floor
            .as_ref()
            .and_then(|f| Some((f.call_cpu_us_per_call?, f.call.calls.failed)));
        if self.cpu.is_empty() && floor_fn.is_none() {
            return None;
        }
        let mut t = Table::new(&[
            "cpu", "scenario", "failed", "figure", "cpu ms", "calls", "us/call",
        ]);
        for f in &self.cpu {
            t.row(vec![
                f.label.clone(),
                f.scenario.clone(),
                f.failed.to_string(),
                figure(f.valid),
                format!("{:.0}", f.cpu_ms),
                f.calls.to_string(),
                format!("{:.1}", f.cpu_us_per_call),
            ]);
        }
        if let Some((per_call, failed)) = self.overhead_cpu() {
            t.row(vec![
                "LB + runners".into(),
                "conc".into(),
                failed.to_string(),
                figure(failed == 0),
                String::new(),
                String::new(),
                format!("{per_call:.1}"),
            ]);
        }
        if let Some((us, failed)) = floor_fn {
            t.row(vec![
                "function (floor)".into(),
                "floor /call".into(),
                failed.to_string(),
                figure(failed == 0),
                String::new(),
                String::new(),
                format!("{us:.1}"),
            ]);
        }
        let mut out = String::from("\ncpu per call\n");
        out.push_str(&t.render());
        Some(out)
    }

    /// The summed CPU per call of the watched processes (the LB and runners) in `conc`, and the
    /// failed calls it rests on.
    pub fn overhead_cpu(&self) -> Option<(f64, u64)> {
        let procs: Vec<&CpuFigure> = self
            .cpu
            .iter()
            .filter(|f| f.scenario == "conc" && !f.label.starts_with("fn "))
            .collect();
        (!procs.is_empty()).then(|| {
            (
                procs.iter().map(|f| f.cpu_us_per_call).sum(),
                procs.iter().map(|f| f.failed).max().unwrap_or(0),
            )
        })
    }
}

/// The load step by window of call start, and the containers it started.
fn render_step(s: &StepResult) -> String {
    let mut t = Table::new(&["step window", "failed", "ok", "p50 ms", "p99 ms", "max ms"]);
    for w in &s.windows {
        t.row(vec![
            format!("{:.1}-{:.1} s", w.from_s, w.to_s),
            w.failed.to_string(),
            w.ok.to_string(),
            num(w.latency.p50_ms),
            num(w.latency.p99_ms),
            num(w.latency.max_ms),
        ]);
    }
    let mut out = String::from("\nload step by window (calls by the window they started in)\n");
    out.push_str(&t.render());
    if let Some(c) = &s.containers {
        let by: Vec<String> = c.by_runner.iter().map(|(r, n)| format!("{r}: {n}")).collect();
        let _ = writeln!(
            out,
            "function containers started during the step: {} ({}; {})",
            c.started,
            c.label,
            by.join(", ")
        );
    }
    out
}

/// The figure column: `valid`, or `INVALID` for a figure with failed calls.
fn figure(valid: bool) -> String {
    if valid { "valid" } else { "INVALID" }.into()
}

/// The first unverified transfer, described; `-` when every transfer that got an answer was
/// verified (a broken connection is only in the failure causes).
fn verify_detail(s: &StreamResult) -> String {
    match s.runs.iter().find(|r| !r.verified) {
        Some(r) if !(200..300).contains(&r.status) => {
            format!("status {} ({} bytes back)", r.status, r.received_bytes)
        }
        Some(r) => match r.first_mismatch {
            Some(at) => format!("differs at byte {at}"),
            None => format!("{} bytes back, expected more or fewer", r.received_bytes),
        },
        None => "-".into(),
    }
}

fn num(v: f64) -> String {
    format!("{v:.3}")
}

/// A plain-text table with columns padded to their widest cell.
pub(crate) struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub(crate) fn new(header: &[&str]) -> Self {
        Table {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// A latency row: the failed calls and the validity first, then the counts and latencies.
    fn latency_row(&mut self, name: &str, calls: &CallCounts, l: &LatencySummary, note: &str) {
        self.row(vec![
            name.into(),
            calls.describe_failed(),
            figure(calls.valid),
            calls.attempted.to_string(),
            calls.ok.to_string(),
            num(l.p50_ms),
            num(l.p90_ms),
            num(l.p99_ms),
            num(l.max_ms),
            num(l.mean_ms),
            note.into(),
        ]);
    }
    pub(crate) fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                if i < widths.len() {
                    widths[i] = widths[i].max(cell.chars().count());
                }
            }
        }
        let line = |cells: &[String]| {
            let padded: Vec<String> = cells
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            format!("  {}\n", padded.join("  ").trim_end())
        };
        let mut out = line(&self.header);
        out.push_str(&line(&widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>()));
        for row in &self.rows {
            out.push_str(&line(row));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        client::{CallTemplate, Endpoint},
        floor::{StartupFloor, StartupRun},
        load::{CallTarget, sequential},
        progress::Progress,
        stats::ErrorTally,
        stream::{BodyMode, StreamRun},
        test_support::{flaky_server, json_keys},
    };
    use bytes::Bytes;
    use serde_json::Value;

    use crate::test_support::{clean, latency};

    fn failing(ok: u64, cause: &str, n: u64) -> CallCounts {
        let mut failures = ErrorTally::default();
        for _ in 0..n {
            failures.add(cause);
        }
        CallCounts::new(ok, failures, ErrorTally::default())
    }

    fn seq(p50: f64, p99: f64) -> SeqResult {
        SeqResult {
            calls: clean(100),
            gap_ms: None,
            warmup: 10,
            latency: latency(p50, p99),
            connects: 1,
            elapsed_s: 1.0,
        }
    }

    fn stream(echo: f64) -> StreamResult {
        StreamResult {
            calls: clean(1),
            size_bytes: 64 << 20,
            body_mode: BodyMode::Sized,
            up_mb_s: echo * 2.0,
            down_mb_s: echo * 2.0,
            round_trip_mb_s: echo,
            runs: vec![StreamRun {
                status: 200,
                sent_bytes: 64 << 20,
                received_bytes: 64 << 20,
                up_mb_s: echo * 2.0,
                down_mb_s: echo * 2.0,
                round_trip_mb_s: echo,
                elapsed_s: 1.0,
                verified: true,
                first_mismatch: None,
            }],
        }
    }

    fn floor(call: SeqResult, stream: StreamResult) -> FloorResult {
        FloorResult::new(
            "ferrofn/testfn:latest".into(),
            call,
            Some(SeqResult {
                gap_ms: Some(200),
                ..seq(0.25, 0.6)
            }),
            Some(40.0),
            stream,
            StartupFloor {
                cold: latency(300.0, 400.0),
                runs: vec![StartupRun::default()],
                ..Default::default()
            },
        )
    }

    fn rss(scenario: &str, failed: u64) -> RssFigure {
        RssFigure {
            valid: failed == 0,
            failed,
            label: "lb".into(),
            pid: 42,
            scenario: scenario.into(),
            idle_kib: Some(12_000),
            peak_kib: Some(15_000),
            after_kib: Some(13_000),
            hwm_kib: Some(16_000),
        }
    }

    /// Every scenario, all clean except `conc` (two 503s).
    fn full_report() -> Report {
        let mut r = Report::new(Some(TargetInfo {
            url: "http://127.0.0.1:8080".into(),
            fn_id: Some("01FN".into()),
        }));
        r.floor = Some(floor(seq(0.2, 0.5), stream(1000.0)));
        r.seq = Some(seq(0.4, 1.5));
        r.sparse = Some(SeqResult {
            gap_ms: Some(200),
            ..seq(0.5, 2.0)
        });
        r.conc = Some(ConcResult {
            calls: failing(50_000, "503", 2),
            clients: 16,
            warmup: 2,
            duration_s: 10.0,
            elapsed_s: 10.0,
            ok_calls_per_s: 5000.0,
            attempted_calls_per_s: 5000.2,
            latency: latency(3.0, 9.0),
            connects: 16,
        });
        r.cold = Some(ColdResult {
            calls: clean(10),
            image: "ferrofn/testfn:latest".into(),
            latency: latency(330.0, 420.0),
            ..Default::default()
        });
        r.stream = Some(stream(400.0));
        r.rss = vec![rss("seq", 0)];
        r.cpu = vec![CpuFigure::new("lb", "conc", 1000.0, 50_034, 2)];
        r.derive();
        r
    }

    fn check<'a>(r: &'a Report, name: &str) -> &'a Check {
        r.checks.iter().find(|c| c.name.starts_with(name)).unwrap()
    }

    #[test]
    fn checks_follow_the_contract() {
        let r = full_report();
        // Issue 11's limits: warm p50 <= floor + 0.15 ms, p99 <= 2x the floor's.
        let p50 = check(&r, "warm p50");
        assert!((p50.measured - 0.2).abs() < 1e-9);
        assert_eq!((p50.pass, p50.verdict.as_str()), (Some(false), "FAIL"));
        assert_eq!(p50.limit, 0.15);
        let p99 = check(&r, "warm p99");
        assert_eq!(p99.measured, 3.0);
        assert_eq!(p99.pass, Some(false));
        // Sparse 0.5 ms over the floor's sparse 0.25 ms: +0.25 ms, over the 0.2 ms.
        let sparse = check(&r, "sparse p50 over floor sparse");
        assert!((sparse.measured - 0.25).abs() < 1e-9 && sparse.pass == Some(false));
        // Added after idle 0.5 - 0.25, added warm 0.4 - 0.2: 1.25x.
        let idle = check(&r, "added after idle");
        assert!((idle.measured - 1.25).abs() < 1e-9 && idle.pass == Some(true));
        let cold = check(&r, "cold");
        assert_eq!(cold.measured, 30.0);
        assert_eq!((cold.pass, cold.verdict.as_str()), (Some(false), "FAIL"));
        let streaming = check(&r, "streaming");
        assert_eq!(streaming.measured, 0.4);
        assert_eq!(streaming.pass, Some(false));
        let rss = check(&r, "idle RSS lb");
        assert!(rss.pass == Some(true) && (rss.measured - 11.71875).abs() < 1e-9);
        assert_eq!(r.checks.len(), 7);
        assert!(r.checks.iter().all(|c| c.valid && c.failed == 0));
    }

    #[test]
    fn failed_calls_invalidate_the_figure_and_every_check_resting_on_it() {
        let mut r = full_report();
        // conc has failures (no check rests on it), the rest is clean.
        assert!(!r.valid);
        assert_eq!(r.failed_calls, 2);
        assert_eq!(
            r.invalid_figures,
            [InvalidFigure {
                figure: "conc".into(),
                failed: 2
            }]
        );
        assert_eq!(r.checks.iter().filter(|c| !c.valid).count(), 0);

        // Failed sparse calls: the two checks that use sparse lose their verdict.
        r.sparse.as_mut().unwrap().calls = failing(97, "502", 3);
        r.derive();
        for name in ["sparse p50 over floor sparse", "added after idle"] {
            let c = check(&r, name);
            assert!(!c.valid, "{name}");
            assert_eq!(c.failed, 3);
            assert_eq!(c.pass, None);
            assert_eq!(c.verdict, "INVALID (3 failed calls)");
        }
        assert_eq!(check(&r, "warm p50").verdict, "FAIL");

        // A floor with a failed transfer is invalid as a whole, and so is every ratio against it.
        let mut bad_stream = stream(1000.0);
        bad_stream.calls = failing(2, "transport", 1);
        r.floor = Some(floor(seq(0.2, 0.5), bad_stream));
        r.derive();
        assert!(!r.floor.as_ref().unwrap().valid);
        for name in ["warm p50", "warm p99", "cold", "streaming"] {
            assert_eq!(check(&r, name).verdict, "INVALID (1 failed call)", "{name}");
        }
        assert_eq!(check(&r, "added after idle").verdict, "INVALID (4 failed calls)");
        assert!(r.invalid_figures.iter().any(|f| f.figure == "floor stream"));
        assert_eq!(r.failed_calls, 2 + 3 + 1);

        // The idle RSS rests on the scenarios the process was watched through.
        r.rss.push(rss("conc", 2));
        r.derive();
        assert_eq!(check(&r, "idle RSS lb").verdict, "INVALID (2 failed calls)");
    }

    #[test]
    fn json_shape_is_stable() {
        let r = full_report();
        let v: Value = serde_json::to_value(&r).unwrap();
        assert_eq!(v["tool"], "ferrofn-bench");
        assert!(v["started_at"].as_str().unwrap().contains('T'));
        assert_eq!(v["target"]["fn_id"], "01FN");
        assert_eq!(v["valid"], false);
        assert_eq!(v["failed_calls"], 2);
        assert_eq!(v["invalid_figures"][0]["figure"], "conc");
        // Every figure opens with its failures.
        let order = [
            ("seq", json_keys(r.seq.as_ref().unwrap())),
            ("sparse", json_keys(r.sparse.as_ref().unwrap())),
            ("conc", json_keys(r.conc.as_ref().unwrap())),
            ("cold", json_keys(r.cold.as_ref().unwrap())),
            ("stream", json_keys(r.stream.as_ref().unwrap())),
        ];
        for (scenario, keys) in order {
            assert_eq!(
                keys[..6],
                [
                    "valid",
                    "failed",
                    "failures",
                    "warmup_failures",
                    "attempted",
                    "ok"
                ],
                "{scenario}"
            );
            for key in ["samples", "p50_ms", "p90_ms", "p99_ms", "max_ms"] {
                if scenario != "stream" {
                    assert!(v[scenario]["latency"][key].is_number(), "{scenario}.{key}");
                }
            }
        }
        assert_eq!(v["conc"]["valid"], false);
        assert_eq!(v["conc"]["failed"], 2);
        assert_eq!(v["conc"]["failures"]["503"], 2);
        assert_eq!(v["conc"]["attempted"], 50_002);
        assert_eq!(v["conc"]["ok"], 50_000);
        assert_eq!(v["conc"]["ok_calls_per_s"], 5000.0);
        assert_eq!(v["conc"]["attempted_calls_per_s"], 5000.2);
        assert_eq!(v["seq"]["valid"], true);
        assert_eq!(v["sparse"]["gap_ms"], 200);
        assert!(v["seq"].get("gap_ms").is_none());
        assert_eq!(v["stream"]["body_mode"], "sized");
        assert!(v["stream"]["runs"][0]["verified"].as_bool().unwrap());
        assert_eq!(v["floor"]["valid"], true);
        assert_eq!(v["floor"]["failed"], 0);
        assert!(v["floor"]["call"]["latency"]["p99_ms"].is_number());
        assert!(v["floor"]["startup"]["cold"]["p50_ms"].is_number());
        assert_eq!(v["floor"]["startup"]["valid"], true);
        assert_eq!(v["rss"][0]["label"], "lb");
        assert_eq!(v["rss"][0]["valid"], true);
        assert_eq!(v["cpu"][0]["valid"], false);
        assert_eq!(v["cpu"][0]["failed"], 2);
        assert_eq!(v["checks"][0]["rule"], "<=");
        assert_eq!(v["checks"][0]["valid"], true);
        assert_eq!(v["checks"][0]["verdict"], "FAIL");
        assert_eq!(v["checks"][0]["pass"], false);
        // It round-trips, and absent scenarios are absent, not null.
        let back: Report = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
        let empty = serde_json::to_value(Report::new(None)).unwrap();
        let mut keys: Vec<&String> = empty.as_object().unwrap().keys().collect();
        keys.sort();
        assert_eq!(keys, ["failed_calls", "started_at", "tool", "valid", "version"]);
        assert_eq!(empty["valid"], true);
    }

    #[test]
    fn renders_every_section() {
        let text = full_report().render();
        for needle in [
            "INVALID: 2 failed calls",
            "  conc: 2 (503x2)",
            "latency",
            "floor /call (uds)",
            "seq",
            "sparse",
            "16 clients, 5000 ok calls/s (5000 attempted/s)",
            "startup floor",
            "streaming",
            "memory (VmRSS)",
            "cpu per call",
            "contract",
            "FAIL",
            "PASS",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
        // The failures open the report, and each row shows its failures before its figures.
        assert!(text.find("INVALID: 2 failed calls").unwrap() < text.find("latency").unwrap());
        let conc = text
            .lines()
            .find(|l| l.trim_start().starts_with("conc "))
            .unwrap();
        assert!(conc.find("2 (503x2)").unwrap() < conc.find("INVALID").unwrap());
        assert!(conc.find("INVALID").unwrap() < conc.find("3.000").unwrap());
        let lb_cpu = text
            .lines()
            .find(|l| l.trim_start().starts_with("lb ") && l.contains("conc"))
            .unwrap();
        assert!(lb_cpu.contains("INVALID"), "{lb_cpu}");
        let seq = text.lines().find(|l| l.trim_start().starts_with("seq ")).unwrap();
        assert!(seq.contains("valid") && !seq.contains("INVALID"), "{seq}");
    }

    #[test]
    fn a_step_is_a_figure_with_its_windows_and_containers() {
        use crate::step::{ContainerCount, StepResult, StepWindow};
        let mut r = Report::new(None);
        r.step = Some(StepResult {
            calls: failing(99, "502", 1),
            clients: 16,
            duration_s: 2.0,
            latency: latency(2.0, 300.0),
            first_calls: latency(250.0, 300.0),
            window_s: 1.0,
            windows: vec![
                StepWindow {
                    failed: 1,
                    ok: 40,
                    from_s: 0.0,
                    to_s: 1.0,
                    latency: latency(3.0, 300.0),
                },
                StepWindow {
                    failed: 0,
                    ok: 59,
                    from_s: 1.0,
                    to_s: 2.0,
                    latency: latency(2.0, 4.0),
                },
            ],
            containers: Some(ContainerCount {
                label: "ferrofn.fn_id=F".into(),
                started: 17,
                by_runner: [("r1".to_owned(), 9), ("r2".to_owned(), 8)].into(),
            }),
            ..Default::default()
        });
        r.derive();
        // Its failed call invalidates the run like any other figure's.
        assert!(!r.valid);
        assert_eq!(r.invalid_figures[0].figure, "step");
        let text = r.render();
        for needle in [
            "INVALID: 1 failed call",
            "load step by window",
            "0.0-1.0 s",
            "function containers started during the step: 17 (ferrofn.fn_id=F; r1: 9, r2: 8)",
            "16 clients at once on a fresh fn",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["step"]["failed"], 1);
        assert_eq!(v["step"]["containers"]["started"], 17);
        assert_eq!(serde_json::from_value::<Report>(v).unwrap(), r);
    }

    fn call_target(endpoint: Endpoint) -> CallTarget {
        CallTarget {
            endpoint,
            template: CallTemplate::post("localhost", "/invoke/f"),
            body: Bytes::from_static(b"{}"),
        }
    }

    /// `seq` against a local server answering every `fail_every`-th call 503, the floor's warm
    /// calls against a clean one, and the report derived from both.
    async fn measured_report(fail_every: u64) -> Report {
        let (_lb_dir, lb, _) = flaky_server(fail_every).await;
        let (_fn_dir, function, _) = flaky_server(u64::MAX).await;
        let (progress, _line) = Progress::start("unit-report", None);
        let seq = sequential(&call_target(lb), 40, 5, None, &progress)
            .await
            .unwrap();
        let call = sequential(&call_target(function), 40, 5, None, &progress)
            .await
            .unwrap();
        let mut r = Report::new(None);
        r.floor = Some(floor(call, stream(1000.0)));
        r.seq = Some(seq);
        r.derive();
        r
    }

    #[tokio::test]
    async fn a_scenario_with_failed_calls_is_invalid_and_gets_no_verdict() {
        let r = measured_report(10).await;
        // 45 calls: the 10th, 20th, 30th and 40th fail, all measured.
        let seq = r.seq.as_ref().unwrap();
        assert_eq!((seq.calls.attempted, seq.calls.ok, seq.calls.failed), (40, 36, 4));
        assert!(!seq.calls.valid);
        assert!(!r.valid);
        assert_eq!(r.failed_calls, 4);
        assert_eq!(
            r.invalid_figures,
            [InvalidFigure {
                figure: "seq".into(),
                failed: 4
            }]
        );
        assert_eq!(r.checks.len(), 2);
        for c in &r.checks {
            assert!(!c.valid);
            assert_eq!(c.pass, None);
            assert_eq!(c.verdict, "INVALID (4 failed calls)");
        }
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["valid"], false);
        assert_eq!(v["seq"]["valid"], false);
        assert_eq!(v["seq"]["failed"], 4);
        assert_eq!(v["seq"]["failures"]["503"], 4);
        assert_eq!(v["floor"]["valid"], true);
        assert_eq!(v["checks"][0]["verdict"], "INVALID (4 failed calls)");
        assert!(v["checks"][0]["pass"].is_null());
        let text = r.render();
        assert!(text.starts_with("INVALID: 4 failed calls"), "{text}");
        assert!(text.contains("INVALID (4 failed calls)"), "{text}");
        assert!(!text.contains("PASS") && !text.contains("FAIL"), "{text}");
    }

    #[tokio::test]
    async fn a_clean_scenario_gives_valid_figures_and_verdicts() {
        let r = measured_report(u64::MAX).await;
        let seq = r.seq.as_ref().unwrap();
        assert_eq!((seq.calls.attempted, seq.calls.ok, seq.calls.failed), (40, 40, 0));
        assert!(r.valid);
        assert_eq!(r.failed_calls, 0);
        assert!(r.invalid_figures.is_empty());
        assert_eq!(r.checks.len(), 2);
        for c in &r.checks {
            assert!(c.valid);
            assert!(c.pass.is_some());
            assert!(c.verdict == "PASS" || c.verdict == "FAIL", "{}", c.verdict);
        }
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["valid"], true);
        assert_eq!(v["seq"]["valid"], true);
        let text = r.render();
        assert!(text.starts_with("failed calls: 0 (every figure valid)"), "{text}");
        assert!(!text.contains("INVALID"), "{text}");
    }
}
