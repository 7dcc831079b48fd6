//! The maximum-serviceable-demand experiment (paper Figure 3): for each search space, the
//! largest root demand that meets the SLOs on the given GPUs, normalised to Unopt.

use crate::milp::Solver;
use crate::planner::{plan, Clock, Goal, PlanError, PlannerConfig, Problem};
use crate::spaces::SearchSpace;
use std::fmt::Write as _;

/// One bar of the chart.
#[derive(Debug, Clone, PartialEq)]
pub struct MaxDemandRow {
    /// Search space.
    pub space: SearchSpace,
    /// Maximum serviceable demand, req/s (`None` when the space serves nothing).
    pub demand: Option<f64>,
    /// Why the space serves nothing.
    pub error: Option<String>,
    /// Demand ÷ Unopt's demand.
    pub vs_unopt: Option<f64>,
    /// Physical compute slices used at that demand.
    pub slices: u32,
    /// GPUs used at that demand.
    pub gpus_used: usize,
    /// Accuracy at that demand, fraction of max.
    pub accuracy: f64,
    /// Planner wall time, ms.
    pub solve_ms: f64,
    /// Optimality gap.
    pub gap: f64,
}

/// Run the experiment over `spaces` (Unopt must be among them for the normalisation).
pub fn max_demand(
    pb: Problem<'_>,
    spaces: &[SearchSpace],
    cfg: &PlannerConfig,
    solver: &dyn Solver,
    clock: &dyn Clock,
) -> Vec<MaxDemandRow> {
    let mut rows: Vec<MaxDemandRow> = spaces
        .iter()
        .map(|&space| match plan(Problem { space, ..pb }, Goal::MaxDemand, cfg, solver, clock) {
            Ok(p) => MaxDemandRow {
                space,
                demand: Some(p.demand_rps),
                error: None,
                vs_unopt: None,
                slices: p.compute_slices,
                gpus_used: p.gpus_used,
                accuracy: p.accuracy,
                solve_ms: p.stats.solve_ms,
                gap: p.stats.gap,
            },
            Err(e) => MaxDemandRow {
                space,
                demand: None,
                error: Some(match e {
                    PlanError::Infeasible { .. } => "serves no demand".into(),
                    other => other.to_string(),
                }),
                vs_unopt: None,
                slices: 0,
                gpus_used: 0,
                accuracy: 0.0,
                solve_ms: 0.0,
                gap: 0.0,
            },
        })
        .collect();
    let base = rows.iter().find(|r| r.space == SearchSpace { a: false, s: false, t: false }).and_then(|r| r.demand);
    for r in &mut rows {
        r.vs_unopt = match (r.demand, base) {
            (Some(d), Some(b)) if b > 0.0 => Some(d / b),
            _ => None,
        };
    }
    rows
}

/// A text table of the rows.
pub fn table(rows: &[MaxDemandRow], total_slices: usize) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<8} {:>12} {:>9} {:>14} {:>6} {:>9} {:>10} {:>8}",
        "space", "max req/s", "x Unopt", "slices used", "GPUs", "accuracy", "solve ms", "gap"
    );
    for r in rows {
        match r.demand {
            Some(d) => {
                let _ = writeln!(
                    s,
                    "{:<8} {:>12.1} {:>9} {:>7}/{:<6} {:>6} {:>9.4} {:>10.0} {:>8.1e}",
                    r.space.to_string(),
                    d,
                    r.vs_unopt.map_or("-".into(), |x| format!("{x:.2}x")),
                    r.slices,
                    total_slices,
                    r.gpus_used,
                    r.accuracy,
                    r.solve_ms,
                    r.gap
                );
            }
            None => {
                let _ = writeln!(s, "{:<8} {}", r.space.to_string(), r.error.as_deref().unwrap_or("-"));
            }
        }
    }
    s
}

/// An SVG bar chart: demand ÷ Unopt per space (left axis), slices used as text.
pub fn svg(rows: &[MaxDemandRow], title: &str, total_slices: usize) -> String {
    let (w, h, left, bottom, top) = (760.0, 420.0, 70.0, 60.0, 50.0);
    let plot_h = h - bottom - top;
    let max = rows.iter().filter_map(|r| r.vs_unopt).fold(1.0, f64::max) * 1.1;
    let bw = (w - left - 20.0) / rows.len().max(1) as f64;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(s, r#"<text x="{}" y="24" text-anchor="middle" font-size="15">{}</text>"#, w / 2.0, xml(title));
    let _ = writeln!(s, r#"<line x1="{left}" y1="{top}" x2="{left}" y2="{}" stroke="black"/>"#, h - bottom);
    let _ =
        writeln!(s, r#"<line x1="{left}" y1="{}" x2="{}" y2="{}" stroke="black"/>"#, h - bottom, w - 20.0, h - bottom);
    let ticks = 5;
    for i in 0..=ticks {
        let v = max * i as f64 / ticks as f64;
        let y = h - bottom - plot_h * i as f64 / ticks as f64;
        let _ = writeln!(s, r#"<text x="{}" y="{}" text-anchor="end">{v:.1}x</text>"#, left - 6.0, y + 4.0);
        let _ = writeln!(s, r##"<line x1="{left}" y1="{y}" x2="{}" y2="{y}" stroke="#ddd"/>"##, w - 20.0);
    }
    let _ = writeln!(
        s,
        r#"<text x="16" y="{}" transform="rotate(-90 16 {})" text-anchor="middle">max demand / Unopt</text>"#,
        top + plot_h / 2.0,
        top + plot_h / 2.0
    );
    for (i, r) in rows.iter().enumerate() {
        let x = left + bw * i as f64 + bw * 0.15;
        let v = r.vs_unopt.unwrap_or(0.0);
        let bh = plot_h * v / max;
        let y = h - bottom - bh;
        let fill = if r.space == SearchSpace::FULL { "#d9534f" } else { "#5b8dd6" };
        let _ = writeln!(s, r#"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{bh:.1}" fill="{fill}"/>"#, bw * 0.7);
        let label = r.vs_unopt.map_or("n/a".into(), |v| format!("{v:.2}x"));
        let _ = writeln!(s, r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{label}</text>"#, x + bw * 0.35, y - 4.0);
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
            x + bw * 0.35,
            h - bottom + 16.0,
            r.space
        );
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{}" text-anchor="middle" fill="#555">{}/{total_slices} sl</text>"##,
            x + bw * 0.35,
            h - bottom + 32.0,
            r.slices
        );
    }
    let _ = writeln!(s, "</svg>");
    s
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}
