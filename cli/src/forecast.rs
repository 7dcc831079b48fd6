//! `jigsaw forecast backtest`: every forecaster of [`jigsaw_coordinator::forecast`] on a
//! real arrival trace (the Azure LLM trace format, [`jigsaw_coordinator::trace`]) or a
//! seeded synthetic diurnal one.

use anyhow::Context as _;
use clap::Args;
use jigsaw_coordinator::forecast::{backtest, BacktestRow, ForecasterKind};
use jigsaw_coordinator::trace::{bin, parse_trace, synthetic_diurnal};
use serde::Serialize;
use std::path::PathBuf;

/// Options of `jigsaw forecast backtest`.
#[derive(Debug, Args)]
pub struct BacktestArgs {
    /// Trace CSV (`TIMESTAMP,ContextTokens,GeneratedTokens`, e.g.
    /// `examples/traces/azure-llm-2023-conv.csv`).
    #[arg(long, conflicts_with = "synthetic", required_unless_present = "synthetic")]
    pub trace: Option<PathBuf>,
    /// A synthetic trace instead: `diurnal` (seeded; labelled synthetic).
    #[arg(long, value_parser = ["diurnal"])]
    pub synthetic: Option<String>,
    /// Seed of the synthetic trace.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Days of the synthetic trace.
    #[arg(long, default_value_t = 7.0)]
    pub days: f64,
    /// Mean rate of the synthetic trace, requests/s.
    #[arg(long, default_value_t = 100.0)]
    pub mean_rps: f64,
    /// Control interval, seconds (arrivals are binned into intervals of this length).
    #[arg(long, default_value_t = 60.0)]
    pub interval_s: f64,
    /// Intervals observed before scoring starts.
    #[arg(long, default_value_t = 5)]
    pub warmup: usize,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// The report.
#[derive(Debug, Serialize)]
pub struct BacktestReport {
    /// What was replayed.
    pub source: String,
    /// Whether the trace is synthetic.
    pub synthetic: bool,
    /// Interval, s.
    pub interval_s: f64,
    /// Intervals in the trace.
    pub intervals: usize,
    /// Mean measured rate, requests/s.
    pub mean_rps: f64,
    /// One row per forecaster.
    pub rows: Vec<BacktestRow>,
}

/// Run the backtest and format it.
pub fn cmd_backtest(a: &BacktestArgs) -> anyhow::Result<String> {
    let (source, synthetic, rates) = match (&a.trace, &a.synthetic) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            let arrivals = parse_trace(&text, &path.display().to_string())?;
            (path.display().to_string(), false, bin(&arrivals, a.interval_s).context("--interval-s")?)
        }
        (None, _) => {
            if !(a.days.is_finite() && a.days > 0.0 && a.days <= 366.0) {
                anyhow::bail!("--days must be in (0, 366], got {}", a.days);
            }
            if !(a.interval_s.is_finite() && a.interval_s >= 1.0) {
                anyhow::bail!("--interval-s must be at least 1 s, got {}", a.interval_s);
            }
            if !(a.mean_rps.is_finite() && a.mean_rps > 0.0 && a.mean_rps <= 1e7) {
                anyhow::bail!("--mean-rps must be in (0, 1e7], got {}", a.mean_rps);
            }
            let src = format!("synthetic diurnal (seed {}, {} days, mean {} req/s)", a.seed, a.days, a.mean_rps);
            (src, true, synthetic_diurnal(a.seed, a.days, a.interval_s, a.mean_rps))
        }
    };
    if rates.len() <= a.warmup {
        anyhow::bail!("{} intervals of {} s: not more than --warmup {}", rates.len(), a.interval_s, a.warmup);
    }
    let rows = ForecasterKind::ALL.iter().map(|k| backtest(&rates, &mut k.build(), a.warmup)).collect();
    let report = BacktestReport {
        source,
        synthetic,
        interval_s: a.interval_s,
        intervals: rates.len(),
        mean_rps: rates.iter().sum::<f64>() / rates.len() as f64,
        rows,
    };
    if a.json {
        return Ok(serde_json::to_string_pretty(&report)? + "\n");
    }
    Ok(table(&report))
}

/// The report as a table.
pub fn table(r: &BacktestReport) -> String {
    let mut s = format!(
        "forecast backtest: {}{}\n{} intervals of {} s, mean {:.2} req/s\n\n",
        r.source,
        if r.synthetic { " [SYNTHETIC]" } else { "" },
        r.intervals,
        r.interval_s,
        r.mean_rps
    );
    s += &format!(
        "{:<38} {:>9} {:>11} {:>11} {:>13}\n",
        "forecaster", "under %", "mean over %", "p95 short %", "provisioned %"
    );
    for row in &r.rows {
        s += &format!(
            "{:<38} {:>9.1} {:>11.1} {:>11.1} {:>13.1}\n",
            row.forecaster,
            100.0 * row.under_share,
            row.mean_over_pct,
            row.p95_under_pct,
            row.provisioned_pct
        );
    }
    s += "\nunder %: intervals whose forecast was below the measured rate; mean over %: mean of\nmax(0, forecast - rate) / rate; p95 short %: 95th percentile of max(0, rate - forecast) / rate;\nprovisioned %: mean forecast over mean rate, minus 1.\n";
    s
}
