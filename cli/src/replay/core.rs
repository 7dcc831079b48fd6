//! The pure core of `jigsaw replay`: trace scaling (parsing is `jigsaw_coordinator::trace`), binning, per-interval
//! aggregation of request outcomes and cluster samples, the summary, the comparison table
//! and the SVG chart. No clocks, sockets or processes: times are µs from the start of the
//! replay, passed in.

use crate::load::schedule::Outcome;
pub use crate::load::Served;
use jigsaw_protocol::rng::SplitMix64;
use serde::Serialize;
use std::fmt::Write as _;

/// Most arrivals a replay schedule may hold (after scaling).
pub const MAX_ARRIVALS: usize = 5_000_000;

/// A trace that cannot be used: the parser's error (file, line, column) or a trace too
/// large for a replay.
pub type TraceError = jigsaw_coordinator::trace::TraceError;

/// Parse an Azure LLM inference trace (`TIMESTAMP,ContextTokens,GeneratedTokens`, one
/// request per line, header first; [`jigsaw_coordinator::trace::parse_trace`], shared with
/// `jigsaw forecast backtest`): arrival offsets in µs from the first request, sorted.
pub fn parse_azure_trace(text: &str, file: &str) -> Result<Vec<u64>, TraceError> {
    let secs = jigsaw_coordinator::trace::parse_trace(text, file)?;
    if secs.len() > MAX_ARRIVALS {
        let message = format!("{} requests, more than {MAX_ARRIVALS}", secs.len());
        return Err(TraceError { origin: file.into(), line: 1, column: 1, message });
    }
    Ok(secs.into_iter().map(|t| (t * 1e6).round() as u64).collect())
}

/// Scale a trace: time runs `time_scale` times faster (an offset `t` becomes
/// `t / time_scale`), and each request becomes `rate_scale` requests on average
/// (`floor(rate_scale)` plus one more with probability `frac(rate_scale)`, seeded), the
/// copies spread evenly over the gap to the next request. Only offsets below `limit_us`
/// (trace time) are kept.
pub fn scale_arrivals(
    offsets: &[u64],
    rate_scale: f64,
    time_scale: f64,
    limit_us: Option<u64>,
    seed: u64,
) -> Result<Vec<u64>, String> {
    if !(rate_scale.is_finite() && rate_scale > 0.0 && rate_scale <= 10_000.0) {
        return Err(format!("--rate-scale must be in (0, 10000], not {rate_scale}"));
    }
    if !(time_scale.is_finite() && time_scale > 0.0 && time_scale <= 1e6) {
        return Err(format!("--time-scale must be in (0, 1e6], not {time_scale}"));
    }
    let kept: Vec<u64> = offsets.iter().copied().filter(|&t| limit_us.is_none_or(|l| t < l)).collect();
    let expected = kept.len() as f64 * rate_scale;
    if expected > MAX_ARRIVALS as f64 {
        return Err(format!("the scaled trace would hold {expected:.0} requests, more than {MAX_ARRIVALS}"));
    }
    let mut rng = SplitMix64::new(seed ^ 0x7ACE_5CA1_E000_0001);
    let mut out = Vec::with_capacity(expected as usize + 1);
    for (i, &t) in kept.iter().enumerate() {
        let at = t as f64 / time_scale;
        let next = kept.get(i + 1).map_or(at, |&n| n as f64 / time_scale);
        let k = rate_scale.floor() as u64 + u64::from(rng.unit() < rate_scale.fract());
        for j in 0..k {
            out.push((at + (next - at) * j as f64 / k as f64) as u64);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// One look at the cluster while replaying.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// When, µs from the start.
    pub at_us: u64,
    /// Committed plan epoch.
    pub epoch: u64,
    /// Whether every alive node has applied that epoch (no transition in progress).
    pub applied: bool,
    /// Compute slices the app's plan uses.
    pub slices: u32,
    /// Compute slices of the cluster (GPUs × 7).
    pub total_slices: u32,
    /// The plan's accuracy as a fraction of the app's maximum.
    pub accuracy: f64,
}

/// One interval of a replay.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Interval {
    /// Start, s from the start of the replay.
    pub start_s: f64,
    /// Requests scheduled in it.
    pub sent: u64,
    /// Requests per second scheduled in it.
    pub offered_rps: f64,
    /// GPU slices the app uses, % of the cluster's (mean of the samples in it).
    pub slices_used_pct: f64,
    /// Plan accuracy, % of the app's maximum (mean of the samples in it).
    pub accuracy_pct: f64,
    /// Fan-out-weighted requests that were not ok, % of all (weighted).
    pub slo_violation_pct: f64,
    /// Plan epoch changes seen in it.
    pub transitions: u64,
    /// Requests dropped or failed (early, stale, error) while a transition was in progress.
    pub transition_failures: u64,
}

/// A whole replay.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Mean over intervals of the slices used, %.
    pub slices_used_pct: f64,
    /// Mean over intervals of the accuracy, %.
    pub accuracy_pct: f64,
    /// Lowest interval accuracy, %.
    pub accuracy_min_pct: f64,
    /// Fan-out-weighted SLO violations over the whole replay, %.
    pub slo_violation_pct: f64,
    /// Plan epoch changes during the replay.
    pub transitions: u64,
    /// Requests dropped or failed while a transition was in progress.
    pub transition_failures: u64,
    /// Requests sent.
    pub sent: u64,
}

/// The spans `[from, to]` (µs) during which a plan transition was in progress: from the
/// sample before one that shows a newer epoch or an unapplied plan, to the first sample
/// after it that shows the plan applied.
pub fn transition_spans(samples: &[Sample]) -> Vec<(u64, u64)> {
    let mut spans = Vec::new();
    let mut open: Option<u64> = None;
    for (i, s) in samples.iter().enumerate() {
        let prev = i.checked_sub(1).map(|p| samples[p]);
        let changed = prev.is_some_and(|p| s.epoch != p.epoch);
        if open.is_none() && (changed || !s.applied) {
            open = Some(prev.map_or(s.at_us, |p| p.at_us));
        }
        if let Some(from) = open {
            if s.applied {
                spans.push((from, s.at_us));
                open = None;
            }
        }
    }
    if let (Some(from), Some(last)) = (open, samples.last()) {
        spans.push((from, last.at_us));
    }
    spans
}

fn pct(n: u64, of: u64) -> f64 {
    if of == 0 {
        0.0
    } else {
        100.0 * n as f64 / of as f64
    }
}

fn failed(o: Outcome) -> bool {
    matches!(o, Outcome::EarlyDrop | Outcome::StaleDrop | Outcome::Error)
}

/// Per-interval figures of a replay `span_us` long cut into intervals of `interval_us`.
/// A request belongs to the interval of its scheduled arrival; cluster figures are the mean
/// of the samples in the interval (the last earlier sample when there is none).
pub fn intervals(served: &[Served], samples: &[Sample], interval_us: u64, span_us: u64) -> Vec<Interval> {
    let interval_us = interval_us.max(1);
    let n = span_us.div_ceil(interval_us).max(1) as usize;
    let spans = transition_spans(samples);
    let mut sent = vec![0u64; n];
    let mut weighted = vec![(0u64, 0u64); n];
    let mut fails = vec![0u64; n];
    for r in served {
        let k = ((r.at_us / interval_us) as usize).min(n - 1);
        sent[k] += 1;
        let w = u64::from(r.weight.max(1));
        weighted[k].1 += w;
        if r.outcome != Outcome::Ok {
            weighted[k].0 += w;
        }
        let end = r.at_us.saturating_add(r.latency_us);
        if failed(r.outcome) && spans.iter().any(|&(a, b)| r.at_us <= b && end >= a) {
            fails[k] += 1;
        }
    }
    (0..n)
        .map(|k| {
            let (from, to) = (k as u64 * interval_us, (k as u64 + 1) * interval_us);
            let inside: Vec<&Sample> = samples.iter().filter(|s| s.at_us >= from && s.at_us < to).collect();
            let before = samples.iter().rev().find(|s| s.at_us < from);
            let pick: Vec<&Sample> = if inside.is_empty() { before.into_iter().collect() } else { inside.clone() };
            let mean = |f: &dyn Fn(&Sample) -> f64| {
                if pick.is_empty() {
                    0.0
                } else {
                    pick.iter().map(|s| f(s)).sum::<f64>() / pick.len() as f64
                }
            };
            let mut transitions = 0;
            let mut last = before.map(|s| s.epoch);
            for s in &inside {
                if last.is_some_and(|e| s.epoch > e) {
                    transitions += s.epoch - last.unwrap_or(s.epoch);
                }
                last = Some(s.epoch);
            }
            let len_s = (to.min(span_us.max(to - interval_us + 1)) - from) as f64 / 1e6;
            Interval {
                start_s: from as f64 / 1e6,
                sent: sent[k],
                offered_rps: sent[k] as f64 / len_s.max(1e-9),
                slices_used_pct: mean(&|s| pct(u64::from(s.slices), u64::from(s.total_slices))),
                accuracy_pct: mean(&|s| 100.0 * s.accuracy),
                slo_violation_pct: pct(weighted[k].0, weighted[k].1),
                transitions,
                transition_failures: fails[k],
            }
        })
        .collect()
}

/// The summary of a replay: interval means of slices and accuracy, violations over every
/// request, all transitions and transition failures.
pub fn summarize(iv: &[Interval], served: &[Served]) -> Summary {
    let n = iv.len().max(1) as f64;
    let (mut bad, mut all) = (0u64, 0u64);
    for r in served {
        let w = u64::from(r.weight.max(1));
        all += w;
        if r.outcome != Outcome::Ok {
            bad += w;
        }
    }
    Summary {
        slices_used_pct: iv.iter().map(|i| i.slices_used_pct).sum::<f64>() / n,
        accuracy_pct: iv.iter().map(|i| i.accuracy_pct).sum::<f64>() / n,
        accuracy_min_pct: iv.iter().map(|i| i.accuracy_pct).fold(f64::INFINITY, f64::min).min(100.0),
        slo_violation_pct: pct(bad, all),
        transitions: iv.iter().map(|i| i.transitions).sum(),
        transition_failures: iv.iter().map(|i| i.transition_failures).sum(),
        sent: served.len() as u64,
    }
}

/// The paper's Figure 4 figures for a space (JigsawServe §5, "Empirical results"; the
/// per-app numbers are not in the text, only these statements).
pub fn paper_figures(space: &str) -> &'static str {
    match space {
        "A+S+T" => "43.3 % slices on average, < 0.6 % violations, accuracy SLO met",
        "A+S" => "6.7 % violations and 33 % more slices than JigsawServe in at least one case",
        "S+T" => "> 10 % violations at high demand (social, traffic); more slices than JigsawServe in every app",
        "A+T" => "> 10 % violations even at low demand in two of three apps; > 2x the slices in at least one case",
        _ => "not in the paper's Figure 4",
    }
}

/// One space's replay, for the comparison table and the chart.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Run {
    /// Search space.
    pub space: String,
    /// Per interval.
    pub intervals: Vec<Interval>,
    /// Overall.
    pub summary: Summary,
    /// Requests that were not ok, by cause (`503 stale_drop`, `200 after deadline`, ...).
    pub causes: std::collections::BTreeMap<String, u64>,
}

/// The comparison table across spaces, with the paper's statements beside ours.
pub fn comparison_table(runs: &[Run], accuracy_slo_pct: f64) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| space | slices used % | accuracy % (min) | SLO violations % | transitions | transition failures | accuracy SLO | paper (Fig. 4, 3 apps, 4x H100) |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
    for r in runs {
        let s = &r.summary;
        let _ = writeln!(
            out,
            "| {} | {:.1} | {:.1} ({:.1}) | {:.2} | {} | {} | {} | {} |",
            r.space,
            s.slices_used_pct,
            s.accuracy_pct,
            s.accuracy_min_pct,
            s.slo_violation_pct,
            s.transitions,
            s.transition_failures,
            if s.accuracy_min_pct + 1e-9 >= accuracy_slo_pct { "met" } else { "MISSED" },
            paper_figures(&r.space)
        );
    }
    out
}

/// The per-interval table of one run (compact).
pub fn interval_table(r: &Run) -> String {
    let mut out = format!("{}: interval  start_s  req/s  slices%  acc%  viol%  trans  trans_fail\n", r.space);
    let causes: Vec<String> = r.causes.iter().map(|(c, n)| format!("{c} x{n}")).collect();
    for (k, i) in r.intervals.iter().enumerate() {
        let _ = writeln!(
            out,
            "  {:>4} {:>8.1} {:>7.1} {:>7.1} {:>6.1} {:>6.2} {:>5} {:>6}",
            k,
            i.start_s,
            i.offered_rps,
            i.slices_used_pct,
            i.accuracy_pct,
            i.slo_violation_pct,
            i.transitions,
            i.transition_failures
        );
    }
    if !causes.is_empty() {
        let _ = writeln!(out, "  not ok, by cause: {}", causes.join(", "));
    }
    out
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A chart series: name, colour, value of an interval.
type Series = (&'static str, &'static str, fn(&Interval) -> f64);

/// An SVG chart: one panel per run with three series over time (slices used %, accuracy %,
/// SLO violations % capped at 50 as in the paper's Figure 4), y from 0 to 100 %.
pub fn svg(runs: &[Run], title: &str) -> String {
    const W: f64 = 760.0;
    const PH: f64 = 170.0;
    const L: f64 = 50.0;
    const R: f64 = 20.0;
    let top = 40.0;
    let height = top + runs.len() as f64 * (PH + 40.0) + 30.0;
    let mut o = String::new();
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height}" viewBox="0 0 {W} {height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(o, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(o, r#"<text x="{L}" y="20" font-size="14">{}</text>"#, esc(title));
    let series: [Series; 3] = [
        ("slices used %", "#1f77b4", |i| i.slices_used_pct),
        ("accuracy % of max", "#2ca02c", |i| i.accuracy_pct),
        ("SLO violations % (capped at 50)", "#d62728", |i| i.slo_violation_pct.min(50.0)),
    ];
    for (k, (name, color, _)) in series.iter().enumerate() {
        let x = L + k as f64 * 220.0;
        let _ = writeln!(
            o,
            r#"<rect x="{x}" y="28" width="12" height="4" fill="{color}"/><text x="{}" y="33">{}</text>"#,
            x + 16.0,
            esc(name)
        );
    }
    for (p, run) in runs.iter().enumerate() {
        let y0 = top + p as f64 * (PH + 40.0) + 20.0;
        let n = run.intervals.len().max(1);
        let xs = |k: usize| L + (W - L - R) * if n == 1 { 0.5 } else { k as f64 / (n - 1) as f64 };
        let ys = |v: f64| y0 + PH - PH * v.clamp(0.0, 100.0) / 100.0;
        let _ = writeln!(
            o,
            r#"<text x="{L}" y="{}" font-size="12">{} (summary: {:.1} % slices, {:.1} % accuracy, {:.2} % violations)</text>"#,
            y0 - 6.0,
            esc(&run.space),
            run.summary.slices_used_pct,
            run.summary.accuracy_pct,
            run.summary.slo_violation_pct
        );
        let _ =
            writeln!(o, r##"<rect x="{L}" y="{y0}" width="{}" height="{PH}" fill="none" stroke="#999"/>"##, W - L - R);
        for v in [0.0, 50.0, 100.0] {
            let _ = writeln!(
                o,
                r##"<line x1="{L}" x2="{}" y1="{y}" y2="{y}" stroke="#eee"/><text x="{}" y="{}" text-anchor="end">{v:.0}</text>"##,
                W - R,
                L - 4.0,
                ys(v) + 4.0,
                y = ys(v)
            );
        }
        for (_, color, f) in &series {
            let pts: Vec<String> =
                run.intervals.iter().enumerate().map(|(k, i)| format!("{:.1},{:.1}", xs(k), ys(f(i)))).collect();
            let _ = writeln!(
                o,
                r#"<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{}"/>"#,
                pts.join(" ")
            );
        }
        if let (Some(first), Some(last)) = (run.intervals.first(), run.intervals.last()) {
            let _ = writeln!(
                o,
                r#"<text x="{L}" y="{}">{:.0} s</text><text x="{}" y="{}" text-anchor="end">{:.0} s (replay time)</text>"#,
                y0 + PH + 14.0,
                first.start_s,
                W - R,
                y0 + PH + 14.0,
                last.start_s
            );
        }
    }
    o.push_str("</svg>\n");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: &str = "TIMESTAMP,ContextTokens,GeneratedTokens\n\
        2023-11-16 18:15:46.6805900,374,44\n\
        2023-11-16 18:15:47.0000000,396,109\n\
        2023-11-16 18:15:50.5,1,1\n\
        2023-11-16 18:16:46.68059,2,2\n";

    #[test]
    fn azure_traces_parse_to_offsets() {
        let t = parse_azure_trace(TRACE, "t.csv").expect("parses");
        assert_eq!(t, vec![0, 319_410, 3_819_410, 60_000_000]);
        // Across midnight and a month end.
        let h = "TIMESTAMP,ContextTokens,GeneratedTokens";
        let t = parse_azure_trace(&format!("{h}\n2023-11-30 23:59:59.5,1,1\n2023-12-01 00:00:00.25,1,1\n"), "m")
            .expect("parses");
        assert_eq!(t, vec![0, 750_000]);
        let e = parse_azure_trace(&format!("{h}\n2023-11-16 25:00:00,1,1\n"), "x.csv").unwrap_err().to_string();
        assert!(e.starts_with("x.csv:2:1: `2023-11-16 25:00:00`"), "{e}");
        let e = parse_azure_trace("time,a\n", "x.csv").unwrap_err().to_string();
        assert!(e.contains("x.csv:1:1: the header"), "{e}");
        assert!(parse_azure_trace(&format!("{h}\n"), "x").unwrap_err().to_string().contains("no requests"));
        assert!(parse_azure_trace(&format!("{h}\n2023-11-16 18:15:46.68x,1,1\n"), "x").is_err());
    }

    #[test]
    fn scaling_compresses_time_and_multiplies_the_rate() {
        let t = parse_azure_trace(TRACE, "t").expect("parses");
        assert_eq!(scale_arrivals(&t, 1.0, 10.0, None, 1).expect("ok"), vec![0, 31_941, 381_941, 6_000_000]);
        let two = scale_arrivals(&t, 2.0, 1.0, None, 1).expect("ok");
        assert_eq!(two.len(), 8);
        assert_eq!(&two[..2], &[0, 159_705], "the copy sits halfway to the next request");
        let limited = scale_arrivals(&t, 1.0, 1.0, Some(4_000_000), 1).expect("ok");
        assert_eq!(limited.len(), 3);
        // A fractional rate keeps about that share, seeded.
        let many: Vec<u64> = (0..10_000).map(|i| i * 1_000).collect();
        let half = scale_arrivals(&many, 0.5, 1.0, None, 7).expect("ok");
        assert!((4_700..5_300).contains(&half.len()), "{}", half.len());
        assert_eq!(half, scale_arrivals(&many, 0.5, 1.0, None, 7).expect("ok"));
        assert!(scale_arrivals(&t, 0.0, 1.0, None, 1).is_err());
        assert!(scale_arrivals(&t, 1.0, f64::NAN, None, 1).is_err());
    }

    fn sample(at_s: f64, epoch: u64, applied: bool, slices: u32) -> Sample {
        Sample { at_us: (at_s * 1e6) as u64, epoch, applied, slices, total_slices: 28, accuracy: 0.95 }
    }

    fn served(at_s: f64, latency_ms: u64, outcome: Outcome, weight: u32) -> Served {
        Served { at_us: (at_s * 1e6) as u64, latency_us: latency_ms * 1_000, weight, outcome }
    }

    #[test]
    fn intervals_aggregate_outcomes_samples_and_transitions() {
        // Two 10 s intervals; a transition (epoch 2 → 3) between 12 s and 14 s.
        let samples = vec![
            sample(0.0, 2, true, 7),
            sample(5.0, 2, true, 7),
            sample(12.0, 2, true, 7),
            sample(13.0, 3, false, 14),
            sample(14.0, 3, true, 14),
            sample(19.0, 3, true, 14),
        ];
        assert_eq!(transition_spans(&samples), vec![(12_000_000, 14_000_000)]);
        let served = vec![
            served(1.0, 100, Outcome::Ok, 1),
            served(2.0, 100, Outcome::StaleDrop, 3),
            served(12.5, 100, Outcome::Error, 1),
            served(13.5, 900, Outcome::DeadlineMiss, 1),
            served(15.0, 100, Outcome::EarlyDrop, 2),
            served(16.0, 100, Outcome::Ok, 1),
        ];
        let iv = intervals(&served, &samples, 10_000_000, 20_000_000);
        assert_eq!(iv.len(), 2);
        assert_eq!((iv[0].sent, iv[0].transitions, iv[0].transition_failures), (2, 0, 0));
        assert_eq!(iv[0].slo_violation_pct, 75.0, "3 of 4 weighted");
        assert!((iv[0].slices_used_pct - 25.0).abs() < 1e-9);
        assert!((iv[0].accuracy_pct - 95.0).abs() < 1e-9);
        // The error during the transition counts; the late answer is no drop; the early
        // drop at 15 s came after it.
        assert_eq!((iv[1].sent, iv[1].transitions, iv[1].transition_failures), (4, 1, 1));
        assert!((iv[1].slices_used_pct - 100.0 * (7.0 + 14.0 * 3.0) / 4.0 / 28.0).abs() < 1e-9);
        assert!((iv[1].offered_rps - 0.4).abs() < 1e-9);
        let s = summarize(&iv, &served);
        assert_eq!((s.transitions, s.transition_failures, s.sent), (1, 1, 6));
        assert!((s.slo_violation_pct - 100.0 * 7.0 / 9.0).abs() < 1e-9);
        assert!((s.slices_used_pct - (iv[0].slices_used_pct + iv[1].slices_used_pct) / 2.0).abs() < 1e-9);
        // An interval without samples holds the last value; an open transition ends at the
        // last sample.
        let iv = intervals(&[], &samples[..4], 5_000_000, 30_000_000);
        assert_eq!(iv.len(), 6);
        assert_eq!(iv[5].slices_used_pct, 50.0);
        assert_eq!(transition_spans(&samples[..4]), vec![(12_000_000, 13_000_000)]);
    }

    #[test]
    fn tables_and_chart_name_every_space() {
        let samples = vec![sample(0.0, 1, true, 7), sample(1.0, 1, true, 7)];
        let sv = vec![served(0.5, 10, Outcome::Ok, 1)];
        let runs: Vec<Run> = ["A+S+T", "A+T"]
            .iter()
            .map(|sp| {
                let intervals = intervals(&sv, &samples, 1_000_000, 2_000_000);
                let summary = summarize(&intervals, &sv);
                Run { space: sp.to_string(), intervals, summary, causes: Default::default() }
            })
            .collect();
        let t = comparison_table(&runs, 90.0);
        assert!(t.contains("| A+S+T | 25.0 | 95.0 (95.0) | 0.00 | 0 | 0 | met | 43.3 % slices"), "{t}");
        assert!(t.contains("| A+T |"));
        assert!(comparison_table(&runs, 96.0).contains("MISSED"));
        let svg = svg(&runs, "traffic <conv>");
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 6, "three series per space");
        assert!(svg.contains("traffic &lt;conv&gt;"));
        assert!(interval_table(&runs[0]).lines().count() == 3);
    }
}
