//! The results of a run: one [`Report`] (written as JSON with `--json`), rendered as plain-text
//! tables on stdout, with the performance contract's checks (figures against the floor) derived
//! from whichever scenarios ran.

use serde::{Deserialize, Serialize};
use std::{collections::BTreeMap, fmt::Write as _};

use crate::{
    cold::ColdResult,
    cpu::CpuFigure,
    floor::FloorResult,
    load::{ConcResult, SeqResult},
    rss::RssFigure,
    sim::SimReport,
    stats::{ErrorTally, LatencySummary},
    stream::StreamResult,
};

/// The targets of the performance contract (issue "Benchmarks: a performance contract measured
/// against the physical floor").
pub mod targets {
    /// Warm p50 may exceed the floor's p50 by at most this (ms).
    pub const WARM_P50_OVER_FLOOR_MS: f64 = 0.25;
    /// Warm p99 may be at most this multiple of the floor's p99.
    pub const WARM_P99_OVER_FLOOR_RATIO: f64 = 4.0;
    /// Sparse p50 may be at most this multiple of the sequential p50.
    pub const SPARSE_OVER_SEQ_RATIO: f64 = 1.5;
    /// A cold call may exceed the startup floor (create + start + ready + first call) by this (ms).
    pub const COLD_OVER_FLOOR_MS: f64 = 20.0;
    /// Streaming must reach at least this fraction of the floor's MB/s.
    pub const STREAM_OF_FLOOR_RATIO: f64 = 0.5;
    /// Each watched process must idle below this RSS (MiB).
    pub const IDLE_RSS_MIB: f64 = 20.0;
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
    /// How the figure is computed, e.g. `"seq p50 - floor p50"`.
    pub formula: String,
    pub measured: f64,
    /// `"<="`, `"<"` or `">="`.
    pub rule: String,
    pub limit: f64,
    pub unit: String,
    pub pass: bool,
}

impl Check {
    fn new(name: &str, formula: &str, measured: f64, rule: &str, limit: f64, unit: &str) -> Self {
        let pass = measured.is_finite()
            && match rule {
                "<=" => measured <= limit,
                "<" => measured < limit,
                _ => measured >= limit,
            };
        Check {
            name: name.into(),
            formula: formula.into(),
            measured,
            rule: rule.into(),
            limit,
            unit: unit.into(),
            pass,
        }
    }
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
            ..Default::default()
        }
    }

    /// Fills [`Report::checks`] from the figures present: each target needs its scenario and,
    /// for ratios, the floor.
    pub fn derive_checks(&mut self) {
        use targets::*;
        let mut checks = Vec::new();
        let floor = self.floor.as_ref();
        if let (Some(seq), Some(floor)) = (&self.seq, floor) {
            checks.push(Check::new(
                "warm p50 over floor",
                "seq p50 - floor /call p50",
                seq.latency.p50_ms - floor.call.latency.p50_ms,
                "<=",
                WARM_P50_OVER_FLOOR_MS,
                "ms",
            ));
            checks.push(Check::new(
                "warm p99 vs floor",
                "seq p99 / floor /call p99",
                seq.latency.p99_ms / floor.call.latency.p99_ms,
                "<=",
                WARM_P99_OVER_FLOOR_RATIO,
                "x",
            ));
        }
        if let (Some(sparse), Some(seq)) = (&self.sparse, &self.seq) {
            checks.push(Check::new(
                "sparse p50 vs seq",
                "sparse p50 / seq p50",
                sparse.latency.p50_ms / seq.latency.p50_ms,
                "<=",
                SPARSE_OVER_SEQ_RATIO,
                "x",
            ));
            // The LB and runner's own share: what they add to a call after idle, against what they
            // add to a warm one. The function's (and the machine's) wake-up after idle is in the
            // floor's sparse figure, so it cancels out of both differences.
            if let Some((floor_sparse, floor_seq)) =
                floor.and_then(|f| f.sparse.as_ref().map(|s| (s, &f.call)))
            {
                checks.push(Check::new(
                    "added after idle vs warm",
                    "(sparse p50 - floor sparse p50) / (seq p50 - floor /call p50)",
                    (sparse.latency.p50_ms - floor_sparse.latency.p50_ms)
                        / (seq.latency.p50_ms - floor_seq.latency.p50_ms),
                    "<=",
                    SPARSE_OVER_SEQ_RATIO,
                    "x",
                ));
            }
        }
        if let (Some(cold), Some(floor)) = (&self.cold, floor) {
            checks.push(Check::new(
                "cold p50 over floor",
                "cold p50 - floor (create+start+ready+first call) p50",
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
                stream.round_trip_mb_s / floor.stream.round_trip_mb_s,
                ">=",
                STREAM_OF_FLOOR_RATIO,
                "x",
            ));
        }
        // The idle figure of a process is its largest pre-scenario sample: idle after load counts.
        let mut idle: BTreeMap<(String, u32), u64> = BTreeMap::new();
        for figure in &self.rss {
            if let Some(kib) = figure.idle_kib {
                let entry = idle.entry((figure.label.clone(), figure.pid)).or_default();
                *entry = (*entry).max(kib);
            }
        }
        for ((label, pid), kib) in idle {
            checks.push(Check::new(
                &format!("idle RSS {label} ({pid})"),
                "max VmRSS before each scenario",
                kib as f64 / 1024.0,
                "<",
                IDLE_RSS_MIB,
                "MiB",
            ));
        }
        self.checks = checks;
    }

    /// The report as plain-text tables.
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
        let mut latency = Table::new(&[
            "scenario", "calls", "errors", "p50 ms", "p90 ms", "p99 ms", "max ms", "mean ms", "notes",
        ]);
        if let Some(f) = &self.floor {
            latency.latency_row(
                "floor /call (uds)",
                &f.call.latency,
                &f.call.errors,
                "direct to the FDK",
            );
            if let Some(s) = &f.sparse {
                let note = format!("gap {} ms, direct to the FDK", s.gap_ms.unwrap_or(0));
                latency.latency_row("floor sparse (uds)", &s.latency, &s.errors, &note);
            }
            latency.latency_row(
                "floor cold",
                &f.startup.cold,
                &ErrorTally::default(),
                "create+start+ready+first call",
            );
        }
        if let Some(s) = &self.seq {
            let note = format!("{} warm-up, {} conn", s.warmup, s.connects);
            latency.latency_row("seq", &s.latency, &s.errors, &note);
        }
        if let Some(s) = &self.sparse {
            let note = format!("gap {} ms, {} conn", s.gap_ms.unwrap_or(0), s.connects);
            latency.latency_row("sparse", &s.latency, &s.errors, &note);
        }
        if let Some(c) = &self.conc {
            let note = format!(
                "{} clients, {:.0} calls/s over {:.1}s",
                c.clients, c.throughput_per_s, c.elapsed_s
            );
            latency.latency_row("conc", &c.latency, &c.errors, &note);
        }
        if let Some(c) = &self.cold {
            let note = format!(
                "{} fresh fns, {} deleted",
                c.latency.calls + c.errors.total(),
                c.deleted
            );
            latency.latency_row("cold", &c.latency, &c.errors, &note);
        }
        if !latency.rows.is_empty() {
            out.push_str("\nlatency\n");
            out.push_str(&latency.render());
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
            let _ = writeln!(out, "\nstartup floor ({}, {} runs)", f.image, s.runs.len());
            out.push_str(&startup.render());
        }

        let mut streams = Table::new(&[
            "stream",
            "mode",
            "size",
            "up MB/s",
            "down MB/s",
            "round trip MB/s",
            "verified",
        ]);
        for (name, s) in [
            ("floor (uds)", self.floor.as_ref().map(|f| &f.stream)),
            ("via LB", self.stream.as_ref()),
        ] {
            if let Some(s) = s {
                streams.row(vec![
                    name.into(),
                    format!("{:?}", s.body_mode).to_lowercase(),
                    crate::units::mib(s.size_bytes),
                    format!("{:.1}", s.up_mb_s),
                    format!("{:.1}", s.down_mb_s),
                    format!("{:.1}", s.round_trip_mb_s),
                    if s.verified {
                        "yes".into()
                    } else {
                        verify_detail(s)
                    },
                ]);
            }
        }
        if !streams.rows.is_empty() {
            out.push_str("\nstreaming (median of runs)\n");
            out.push_str(&streams.render());
        }

        if !self.rss.is_empty() {
            let mut rss = Table::new(&["process", "pid", "scenario", "idle", "peak", "after", "hwm"]);
            let kib = |v: Option<u64>| v.map_or("-".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0));
            for f in &self.rss {
                rss.row(vec![
                    f.label.clone(),
                    f.pid.to_string(),
                    f.scenario.clone(),
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
            let mut checks = Table::new(&["target", "measured", "limit", "result", "formula"]);
            for c in &self.checks {
                checks.row(vec![
                    c.name.clone(),
                    format!("{:.3} {}", c.measured, c.unit),
                    format!("{} {} {}", c.rule, c.limit, c.unit),
                    if c.pass { "PASS" } else { "FAIL" }.into(),
                    c.formula.clone(),
                ]);
            }
            out.push_str("\ncontract\n");
            out.push_str(&checks.render());
        }
        out
    }
}

impl Report {
    /// CPU per call: each watched process and container group, the LB + runner(s) sum, and the
    /// function's own CPU per call (from the floor's warm calls, and from the containers in `conc`).
    fn render_cpu(&self) -> Option<String> {
        let floor_fn = self.floor.as_ref().and_then(|f| f.call_cpu_us_per_call);
        if self.cpu.is_empty() && floor_fn.is_none() {
            return None;
        }
        let mut t = Table::new(&["cpu", "scenario", "cpu ms", "calls", "us/call"]);
        for f in &self.cpu {
            t.row(vec![
                f.label.clone(),
                f.scenario.clone(),
                format!("{:.0}", f.cpu_ms),
                f.calls.to_string(),
                format!("{:.1}", f.cpu_us_per_call),
            ]);
        }
        if let Some(per_call) = self.overhead_cpu_us_per_call() {
            t.row(vec![
                "LB + runners".into(),
                "conc".into(),
                String::new(),
                String::new(),
                format!("{per_call:.1}"),
            ]);
        }
        if let Some(us) = floor_fn {
            t.row(vec![
                "function (floor)".into(),
                "floor /call".into(),
                String::new(),
                String::new(),
                format!("{us:.1}"),
            ]);
        }
        let mut out = String::from("\ncpu per call\n");
        out.push_str(&t.render());
        Some(out)
    }

    /// The summed CPU per call of the watched processes (the LB and runners) in `conc`.
    pub fn overhead_cpu_us_per_call(&self) -> Option<f64> {
        let procs: Vec<&CpuFigure> = self
            .cpu
            .iter()
            .filter(|f| f.scenario == "conc" && !f.label.starts_with("fn "))
            .collect();
        (!procs.is_empty()).then(|| procs.iter().map(|f| f.cpu_us_per_call).sum())
    }
}

fn verify_detail(s: &StreamResult) -> String {
    match s.runs.iter().find(|r| !r.verified) {
        Some(r) if !(200..300).contains(&r.status) => {
            format!("NO: status {} ({} bytes back)", r.status, r.received_bytes)
        }
        Some(r) => match r.first_mismatch {
            Some(at) => format!("NO: differs at byte {at}"),
            None => format!("NO: {} bytes back, expected more or fewer", r.received_bytes),
        },
        None => "NO".into(),
    }
}

fn num(v: f64) -> String {
    format!("{v:.3}")
}

/// A plain-text table with columns padded to their widest cell.
struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(header: &[&str]) -> Self {
        Table {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn latency_row(&mut self, name: &str, l: &LatencySummary, errors: &ErrorTally, note: &str) {
        let errors = if errors.total() == 0 {
            "0".into()
        } else {
            format!("{} ({})", errors.total(), errors.describe())
        };
        self.row(vec![
            name.into(),
            l.calls.to_string(),
            errors,
            num(l.p50_ms),
            num(l.p90_ms),
            num(l.p99_ms),
            num(l.max_ms),
            num(l.mean_ms),
            note.into(),
        ]);
    }

    fn render(&self) -> String {
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
        floor::{StartupFloor, StartupRun},
        stream::{BodyMode, StreamRun},
    };
    use serde_json::Value;

    fn latency(p50: f64, p99: f64) -> LatencySummary {
        LatencySummary {
            calls: 100,
            errors: 0,
            min_ms: p50 / 2.0,
            mean_ms: p50,
            p50_ms: p50,
            p90_ms: p50,
            p99_ms: p99,
            max_ms: p99 * 2.0,
        }
    }

    fn seq(p50: f64, p99: f64) -> SeqResult {
        SeqResult {
            gap_ms: None,
            warmup: 10,
            latency: latency(p50, p99),
            errors: ErrorTally::default(),
            connects: 1,
            elapsed_s: 1.0,
        }
    }

    fn stream(echo: f64) -> StreamResult {
        StreamResult {
            size_bytes: 64 << 20,
            body_mode: BodyMode::Sized,
            up_mb_s: echo * 2.0,
            down_mb_s: echo * 2.0,
            round_trip_mb_s: echo,
            verified: true,
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

    fn full_report() -> Report {
        let mut r = Report::new(Some(TargetInfo {
            url: "http://127.0.0.1:8080".into(),
            fn_id: Some("01FN".into()),
        }));
        r.floor = Some(FloorResult {
            image: "ferrofn/testfn:latest".into(),
            call: seq(0.2, 0.5),
            sparse: Some(SeqResult {
                gap_ms: Some(200),
                ..seq(0.25, 0.6)
            }),
            call_cpu_us_per_call: Some(40.0),
            stream: stream(1000.0),
            startup: StartupFloor {
                cold: latency(300.0, 400.0),
                runs: vec![StartupRun::default()],
                ..Default::default()
            },
        });
        r.seq = Some(seq(0.4, 1.5));
        r.sparse = Some(SeqResult {
            gap_ms: Some(200),
            ..seq(0.5, 2.0)
        });
        r.conc = Some(ConcResult {
            clients: 16,
            duration_s: 10.0,
            elapsed_s: 10.01,
            throughput_per_s: 5000.0,
            latency: latency(3.0, 9.0),
            errors: ErrorTally(BTreeMap::from([("503".into(), 2)])),
            connects: 16,
        });
        r.cold = Some(ColdResult {
            image: "ferrofn/testfn:latest".into(),
            latency: latency(330.0, 420.0),
            ..Default::default()
        });
        r.stream = Some(stream(400.0));
        r.rss = vec![RssFigure {
            label: "lb".into(),
            pid: 42,
            scenario: "seq".into(),
            idle_kib: Some(12_000),
            peak_kib: Some(15_000),
            after_kib: Some(13_000),
            hwm_kib: Some(16_000),
        }];
        r.derive_checks();
        r
    }

    #[test]
    fn checks_follow_the_contract() {
        let r = full_report();
        let by_name = |n: &str| r.checks.iter().find(|c| c.name.starts_with(n)).unwrap().clone();
        let p50 = by_name("warm p50");
        assert!((p50.measured - 0.2).abs() < 1e-9 && p50.pass);
        let p99 = by_name("warm p99");
        assert_eq!(p99.measured, 3.0);
        assert!(p99.pass);
        assert_eq!(by_name("sparse").measured, 1.25);
        // Added after idle 0.5 - 0.25, added warm 0.4 - 0.2: 1.25x.
        let idle = by_name("added after idle");
        assert!((idle.measured - 1.25).abs() < 1e-9 && idle.pass);
        let cold = by_name("cold");
        assert_eq!(cold.measured, 30.0);
        assert!(!cold.pass);
        let streaming = by_name("streaming");
        assert_eq!(streaming.measured, 0.4);
        assert!(!streaming.pass);
        let rss = by_name("idle RSS lb");
        assert!(rss.pass && (rss.measured - 11.71875).abs() < 1e-9);
        assert_eq!(r.checks.len(), 7);
    }

    #[test]
    fn json_shape_is_stable() {
        let r = full_report();
        let v: Value = serde_json::to_value(&r).unwrap();
        assert_eq!(v["tool"], "ferrofn-bench");
        assert!(v["started_at"].as_str().unwrap().contains('T'));
        assert_eq!(v["target"]["fn_id"], "01FN");
        for scenario in ["seq", "sparse"] {
            for key in ["calls", "errors", "p50_ms", "p90_ms", "p99_ms", "max_ms"] {
                assert!(v[scenario]["latency"][key].is_number(), "{scenario}.{key}");
            }
        }
        assert_eq!(v["sparse"]["gap_ms"], 200);
        assert!(v["seq"].get("gap_ms").is_none());
        assert_eq!(v["conc"]["errors"]["503"], 2);
        assert_eq!(v["conc"]["throughput_per_s"], 5000.0);
        assert_eq!(v["stream"]["body_mode"], "sized");
        assert!(v["stream"]["runs"][0]["verified"].as_bool().unwrap());
        assert!(v["floor"]["call"]["latency"]["p99_ms"].is_number());
        assert!(v["floor"]["startup"]["cold"]["p50_ms"].is_number());
        assert_eq!(v["rss"][0]["label"], "lb");
        assert_eq!(v["checks"][0]["rule"], "<=");
        assert!(v["checks"][0]["pass"].is_boolean());
        // It round-trips, and absent scenarios are absent, not null.
        let back: Report = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
        let empty = serde_json::to_value(Report::new(None)).unwrap();
        let mut keys: Vec<&String> = empty.as_object().unwrap().keys().collect();
        keys.sort();
        assert_eq!(keys, ["started_at", "tool", "version"]);
    }

    #[test]
    fn renders_every_section() {
        let text = full_report().render();
        for needle in [
            "latency",
            "floor /call (uds)",
            "seq",
            "sparse",
            "16 clients, 5000 calls/s",
            "2 (503x2)",
            "startup floor",
            "streaming",
            "memory (VmRSS)",
            "contract",
            "FAIL",
            "PASS",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
    }
}
