//! `jigsaw replay`: the paper's Figure 4 on a local simulated cluster. For each search space
//! (A+S+T and the baselines A+T, S+T, A+S, or only `--space`) it starts a local cluster of
//! real agent processes with simulated GPUs and timed executors (the real data plane;
//! worker sleeps drawn from the synthetic profiles), sets the planner's space, registers the
//! app, replays the arrivals of a trace through every agent's HTTP API (open loop, scaled by
//! `--rate-scale` and `--time-scale`), and meanwhile samples the cluster status four times a
//! second. The replay only observes the cluster (plan epoch, whether every node applied it,
//! the app's slices and accuracy) and drives load: whatever control loop the cluster runs
//! shows up in the figures.
//!
//! The math (trace parsing, scaling, binning, per-interval figures, summary, tables, SVG) is
//! in [`core`], pure and unit-tested.
//!
//! JSON (`--json`): `{"app", "trace", "rate_scale", "time_scale", "interval_s", "control_interval_s", "demand_rps",
//! "runs": [{"space", "intervals": [...], "summary": {...}}]}`; with one space (`--space`)
//! the run's `space`, `intervals` and `summary` are also at the top level. Each interval has
//! `start_s`, `sent`, `offered_rps`, `slices_used_pct`, `accuracy_pct`, `slo_violation_pct`,
//! `transitions`, `transition_failures`; the summary `slices_used_pct`, `accuracy_pct`,
//! `accuracy_min_pct`, `slo_violation_pct`, `transitions`, `transition_failures`, `sent`.

pub mod core;

use crate::cluster::{self, LocalCluster, Operator, UpOptions};
use crate::load::{self, parse_duration, LoadArgs, Schedule};
use anyhow::{bail, Context, Result};
use jigsaw_coordinator::spaces::SearchSpace;
use jigsaw_protocol::catalogue::COMPUTE_SLICES;
use jigsaw_protocol::wire::ClusterStatus;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The spaces of the paper's Figure 4, JigsawServe first.
pub const FIGURE4_SPACES: [&str; 4] = ["A+S+T", "A+T", "S+T", "A+S"];

/// Arguments of `jigsaw replay`.
#[derive(Debug, Clone, clap::Args)]
pub struct ReplayArgs {
    /// Application: one of the example apps (`social`, `traffic`, `ar`; synthetic H100
    /// profiles).
    #[arg(long, default_value = "traffic")]
    pub app: String,
    /// Trace: an Azure LLM inference trace CSV (`TIMESTAMP,ContextTokens,GeneratedTokens`;
    /// only the timestamps are used), e.g. examples/traces/azure-llm-2023-conv.csv.
    #[arg(long)]
    pub trace: PathBuf,
    /// Requests per trace request (0.5 keeps about half, 3 sends three).
    #[arg(long, default_value_t = 1.0)]
    pub rate_scale: f64,
    /// Instead of `--rate-scale`: scale the trace so its busiest interval asks for this share
    /// of the app's maximum serviceable demand under A+S+T on the replay's GPUs (the paper
    /// scales its trace to JigsawServe's maximum demand; 0.8 leaves headroom for bursts).
    #[arg(long, conflicts_with = "rate_scale")]
    pub peak_of_max: Option<f64>,
    /// Trace seconds per replay second (60: an hour of trace in a minute, at 60x the rate).
    #[arg(long, default_value_t = 1.0)]
    pub time_scale: f64,
    /// Replay only this search space (default: A+S+T, A+T, S+T and A+S in turn).
    #[arg(long)]
    pub space: Option<String>,
    /// Length of an interval in trace time (the paper's demand timestamps are 5 minutes).
    #[arg(long, value_parser = parse_duration, default_value = "5m")]
    pub interval: Duration,
    /// Replay only the first part of the trace, trace time (`30m`).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Demand the app is first planned for: `first` (the first interval's rate), `peak`,
    /// `mean`, or a number of requests per second. It is registered as `--rps auto:N` (no
    /// floor), so with `--follow` the cluster re-plans from measured demand.
    #[arg(long, default_value = "first")]
    pub demand: String,
    /// Follow demand (`[control] follow_demand`): the control interval is
    /// `--control-interval` in real time (divided by `--time-scale`, at least 1 s), re-plans
    /// at most once a control interval, after one of warm-up. `--follow false` plans once
    /// for `--demand`.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub follow: bool,
    /// Control interval of the cluster's control loop, trace time (default: `--interval`).
    /// The report's intervals stay `--interval` long.
    #[arg(long, value_parser = parse_duration)]
    pub control_interval: Option<Duration>,
    /// Forecaster of the control loop (`[control] forecaster`): `holt` (the default) or
    /// `paper` (mean of the last five intervals + 5 %).
    #[arg(long, default_value = "holt", value_parser = ["holt", "paper"])]
    pub forecaster: String,
    /// Agent processes of each cluster.
    #[arg(long, default_value_t = 1)]
    pub nodes: usize,
    /// Simulated H100s per agent (the paper's testbed: 4).
    #[arg(long, default_value_t = 4)]
    pub gpus_per_node: u32,
    /// Seed of the rate scaling and of the request bodies.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Write the chart here (default: `replay-APP.svg` in the current directory).
    #[arg(long)]
    pub svg: Option<PathBuf>,
    /// Parent directory of the clusters (default: the temp dir); each run uses its own
    /// subdirectory and removes it (unless `--keep`).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Keep each run's cluster directory (agent logs, data) after it stopped.
    #[arg(long)]
    pub keep: bool,
}

/// The JSON report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReplayReport {
    /// Application.
    pub app: String,
    /// Spaces that could not serve the app at all on the replay's GPUs (not run), with why.
    pub infeasible: Vec<(String, String)>,
    /// Trace file.
    pub trace: String,
    /// `--rate-scale`.
    pub rate_scale: f64,
    /// `--time-scale`.
    pub time_scale: f64,
    /// Interval, s of replay time.
    pub interval_s: f64,
    /// The cluster's control interval, s of replay time (`--control-interval`).
    pub control_interval_s: f64,
    /// Demand the app was registered with, req/s.
    pub demand_rps: f64,
    /// The app's accuracy SLO, % of the maximum.
    pub accuracy_slo_pct: f64,
    /// One run per space.
    pub runs: Vec<core::Run>,
    /// With one space: its name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub space: Option<String>,
    /// With one space: its intervals.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub intervals: Option<Vec<core::Interval>>,
    /// With one space: its summary.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary: Option<core::Summary>,
}

/// What a replay needs besides the arguments.
struct Plan {
    /// Requests per trace request (`--rate-scale`, or derived from `--peak-of-max`).
    rate_scale: f64,
    arrivals: Vec<u64>,
    span_us: u64,
    interval_us: u64,
    entry: jigsaw_protocol::cluster::AppEntry,
}

/// Requests per second of each interval of `arrivals` (µs), the last one partial.
fn rates(arrivals: &[u64], interval_us: u64, span_us: u64) -> Vec<f64> {
    let n = span_us.div_ceil(interval_us).max(1) as usize;
    let mut counts = vec![0u64; n];
    for &t in arrivals {
        counts[((t / interval_us) as usize).min(n - 1)] += 1;
    }
    counts
        .iter()
        .enumerate()
        .map(|(k, &c)| {
            let len = (span_us.min((k as u64 + 1) * interval_us) - k as u64 * interval_us).max(1);
            c as f64 * 1e6 / len as f64
        })
        .collect()
}

fn prepare(a: &ReplayArgs) -> Result<Plan> {
    let text = std::fs::read_to_string(&a.trace).with_context(|| format!("reading trace {}", a.trace.display()))?;
    let offsets = core::parse_azure_trace(&text, &a.trace.display().to_string())?;
    let limit = a.duration.map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    let trace_span_us = limit.unwrap_or_else(|| offsets.last().copied().unwrap_or(0) + 1);
    let span_us = ((trace_span_us as f64 / a.time_scale) as u64).max(1);
    let interval_us = ((a.interval.as_micros() as f64 / a.time_scale) as u64).max(1);
    let mut entry = cluster::example_apps()
        .into_iter()
        .find(|e| e.name == a.app)
        .with_context(|| format!("--app: no example app `{}` (social, traffic, ar)", a.app))?;
    let rate_scale = match a.peak_of_max {
        None => a.rate_scale,
        Some(f) => {
            if !(f.is_finite() && f > 0.0 && f <= 1.0) {
                bail!("--peak-of-max must be in (0, 1], not {f}");
            }
            let max = max_demand(&entry, a.nodes * a.gpus_per_node as usize, SearchSpace::FULL)?;
            let unscaled =
                core::scale_arrivals(&offsets, 1.0, a.time_scale, limit, a.seed).map_err(anyhow::Error::msg)?;
            let peak = rates(&unscaled, interval_us, span_us).into_iter().fold(0.0, f64::max);
            if peak <= 0.0 {
                bail!("{}: no requests in the part replayed", a.trace.display());
            }
            f * max / peak
        }
    };
    let arrivals =
        core::scale_arrivals(&offsets, rate_scale, a.time_scale, limit, a.seed).map_err(anyhow::Error::msg)?;
    if arrivals.is_empty() {
        bail!("{}: no requests in the part replayed", a.trace.display());
    }
    let r = rates(&arrivals, interval_us, span_us);
    let demand =
        match a.demand.as_str() {
            "first" => r[0],
            "peak" => r.iter().copied().fold(0.0, f64::max),
            "mean" => arrivals.len() as f64 * 1e6 / span_us as f64,
            n => n.parse::<f64>().ok().filter(|x| x.is_finite() && *x > 0.0).with_context(|| {
                format!("--demand must be first, peak, mean or a positive number of req/s, not `{n}`")
            })?,
        };
    // The planner needs a positive demand; an empty first interval plans for one request/s.
    entry.demand_rps = (demand * 10.0).round().max(10.0) / 10.0;
    entry.demand_auto = true;
    Ok(Plan { rate_scale, arrivals, span_us, interval_us, entry })
}

/// The app's maximum serviceable demand under A+S+T on `gpus` H100s (planner defaults).
fn max_demand(entry: &jigsaw_protocol::cluster::AppEntry, gpus: usize, space: SearchSpace) -> Result<f64> {
    use jigsaw_coordinator::{Goal, Problem};
    let app = jigsaw_protocol::app::AppSpec::parse(&entry.spec_toml, &entry.name)?;
    let profiles = jigsaw_protocol::profile::ProfileTable::parse_csv(&entry.profiles_csv, &entry.name)?;
    let (cfg, solver) = crate::planning::planner_config(None)?;
    let pb = Problem { app: &app, profiles: &profiles, gpu: jigsaw_protocol::GpuModel::H100_80gb, gpus, space };
    let p = jigsaw_coordinator::plan(pb, Goal::MaxDemand, &cfg, &solver, &jigsaw_agent::node::WallClock::new())?;
    Ok(p.demand_rps)
}

/// The control interval in real time, µs: `--control-interval` (default: one replay
/// interval) over the time scale.
fn control_us(a: &ReplayArgs, interval_us: u64) -> u64 {
    a.control_interval.map_or(interval_us, |c| ((c.as_micros() as f64 / a.time_scale) as u64).max(1))
}

/// The `[control]` table of a replay's agents: the control interval is `interval_us` of
/// real time (at least 1 s), as is the shortest time between re-plans; one interval of
/// warm-up.
fn control_table(follow: bool, forecaster: &str, interval_us: u64) -> String {
    if !follow {
        return "follow_demand = false".into();
    }
    let s = (interval_us as f64 / 1e6).max(1.0);
    format!(
        "follow_demand = true\nforecaster = \"{forecaster}\"\ninterval_s = {s:.3}\nmin_replan_interval_s = {s:.3}\nwarmup_intervals = 1"
    )
}

fn sample(s: &ClusterStatus, app: &str, at_us: u64) -> core::Sample {
    let placement = s.state.plan.as_ref().and_then(|p| p.apps.iter().find(|x| x.app == app));
    let gpus: usize = s.state.alive_members().map(|m| m.gpus.len()).sum();
    core::Sample {
        at_us,
        epoch: s.state.epoch,
        applied: cluster::plan_applied(s),
        slices: placement.map_or(0, |p| p.compute_slices),
        total_slices: u32::try_from(gpus).unwrap_or(u32::MAX).saturating_mul(u32::from(COMPUTE_SLICES)),
        accuracy: placement.map_or(0.0, |p| p.accuracy),
    }
}

/// Replay on the cluster in `dir`: load through every agent while sampling the status.
fn replay_on(a: &ReplayArgs, p: &Plan, space: &str, dir: &Path) -> Result<core::Run> {
    let c = LocalCluster::load(dir)?;
    let targets: Vec<String> = c.nodes.iter().filter_map(|n| n.http.clone()).collect();
    let args = LoadArgs {
        app: p.entry.name.clone(),
        rps: None,
        duration: None,
        trace: None,
        seed: a.seed,
        targets,
        deadline_ms: None,
        json: false,
        window: None,
    };
    let schedule = Schedule {
        arrivals: p.arrivals.clone(),
        duration_s: p.span_us as f64 / 1e6,
        name: format!("trace {} x{:.3} rate, x{} time", a.trace.display(), p.rate_scale, a.time_scale),
    };
    let app = p.entry.name.clone();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let (report, samples) = rt.block_on(async {
        let op = Operator::for_dir(dir)?.with_patience(Duration::from_secs(5));
        let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
        let origin = Instant::now();
        let poller = tokio::spawn(async move {
            let mut samples = Vec::new();
            loop {
                if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(2), op.status()).await {
                    samples.push(sample(&s, &app, origin.elapsed().as_micros() as u64));
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                    _ = stop_rx.changed() => break,
                }
            }
            samples
        });
        let report = load::run_with(&args, Some(schedule)).await;
        let _ = stop_tx.send(true);
        let samples = poller.await.unwrap_or_default();
        anyhow::Ok((report?, samples))
    })?;
    if samples.is_empty() {
        bail!("{space}: no cluster status could be read during the replay");
    }
    let intervals = core::intervals(&report.requests, &samples, p.interval_us, p.span_us);
    let summary = core::summarize(&intervals, &report.requests);
    Ok(core::Run { space: space.to_string(), intervals, summary, causes: report.causes })
}

/// `jigsaw replay`.
pub fn cmd_replay(a: &ReplayArgs, exe: &Path) -> Result<String> {
    if a.nodes == 0 || a.gpus_per_node == 0 {
        bail!("--nodes and --gpus-per-node must be at least 1");
    }
    let spaces: Vec<String> = match &a.space {
        Some(s) => vec![s.parse::<SearchSpace>().map_err(|e| anyhow::anyhow!("--space: {e}"))?.to_string()],
        None => FIGURE4_SPACES.iter().map(|s| s.to_string()).collect(),
    };
    let p = prepare(a)?;
    let spec = p.entry.parse().map_err(|e| anyhow::anyhow!("app {}: {e}", p.entry.name))?.spec;
    let base = a.dir.clone().unwrap_or_else(std::env::temp_dir);
    let mut runs = Vec::new();
    let mut infeasible = Vec::new();
    for space in &spaces {
        let dir = base.join(format!("jigsaw-replay-{}-{}", std::process::id(), space.replace('+', "")));
        // A space that cannot serve the first demand at all would shed the app before the
        // first request; it starts at 95 % of what it can serve and then follows the load
        // like every other space (what it cannot serve shows as violations).
        let mut entry = p.entry.clone();
        let sp: SearchSpace = space.parse().map_err(|e| anyhow::anyhow!("{space}: {e}"))?;
        let cap = match max_demand(&entry, a.nodes * a.gpus_per_node as usize, sp) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("== {space}: not run, the app cannot be served at all on these GPUs: {e:#}");
                infeasible.push((space.clone(), format!("{e:#}")));
                continue;
            }
        };
        if entry.demand_rps > 0.95 * cap {
            entry.demand_rps = ((0.95 * cap * 10.0).floor() / 10.0).max(1.0);
        }
        eprintln!(
            "== {space}: {} requests over {:.1} s on {} node(s) x {} simulated H100s, {} registered at {} req/s",
            p.arrivals.len(),
            p.span_us as f64 / 1e6,
            a.nodes,
            a.gpus_per_node,
            entry.name,
            entry.demand_rps
        );
        let up = UpOptions {
            nodes: a.nodes,
            gpus_per_node: a.gpus_per_node,
            gpu: jigsaw_protocol::GpuModel::H100_80gb,
            eligible: a.nodes.min(3),
            dir: dir.clone(),
            apps: vec![entry],
            reconfig_ms: 100,
            executor: jigsaw_agent::dataplane::worker::ExecutorKind::Timed,
            space: Some(space.clone()),
            control: control_table(a.follow, &a.forecaster, control_us(a, p.interval_us)),
        };
        let started = cluster::cmd_up(&up, exe);
        let result = started.and_then(|_| replay_on(a, &p, space, &dir));
        if dir.join("cluster.json").exists() {
            match cluster::cmd_down(&dir, a.keep) {
                Ok(out) if a.keep => eprint!("{out}"),
                Ok(_) => {}
                Err(e) => eprintln!("stopping the {space} cluster: {e:#}"),
            }
        }
        let run = result.with_context(|| format!("replaying under {space}"))?;
        eprint!("{}", core::interval_table(&run));
        runs.push(run);
    }
    let accuracy_slo_pct = 100.0 * spec.accuracy_slo;
    let title = format!(
        "jigsaw replay: {} on {} x {} simulated H100s, {} (x{} rate, x{} time)",
        p.entry.name,
        a.nodes,
        a.gpus_per_node,
        a.trace.display(),
        (p.rate_scale * 1000.0).round() / 1000.0,
        a.time_scale
    );
    let svg_path = a.svg.clone().unwrap_or_else(|| PathBuf::from(format!("replay-{}.svg", p.entry.name)));
    std::fs::write(&svg_path, core::svg(&runs, &title)).with_context(|| format!("writing {}", svg_path.display()))?;
    let one = (runs.len() == 1).then(|| runs[0].clone());
    let report = ReplayReport {
        app: p.entry.name.clone(),
        infeasible,
        trace: a.trace.display().to_string(),
        rate_scale: p.rate_scale,
        time_scale: a.time_scale,
        interval_s: p.interval_us as f64 / 1e6,
        control_interval_s: (control_us(a, p.interval_us) as f64 / 1e6).max(1.0),
        demand_rps: p.entry.demand_rps,
        accuracy_slo_pct,
        space: one.as_ref().map(|r| r.space.clone()),
        intervals: one.as_ref().map(|r| r.intervals.clone()),
        summary: one.map(|r| r.summary),
        runs,
    };
    if a.json {
        return Ok(serde_json::to_string_pretty(&report)? + "\n");
    }
    let mut out = format!("{title}\n");
    for r in &report.runs {
        out.push_str(&core::interval_table(r));
    }
    out.push_str(&core::comparison_table(&report.runs, accuracy_slo_pct));
    for (space, why) in &report.infeasible {
        out.push_str(&format!("{space}: not run, cannot serve the app on these GPUs ({why})\n"));
    }
    out.push_str(&format!(
        "paper: JigsawServe §5, Figure 4 (3 apps, 4x H100, Twitter trace scaled to JigsawServe's maximum demand); \
         ours: synthetic profiles, timed executors, this trace\nchart: {}\n",
        svg_path.display()
    ));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_per_interval_count_the_partial_last_one_by_its_length() {
        let r = rates(&[0, 100, 1_500_000, 2_100_000], 1_000_000, 2_500_000);
        assert_eq!(r, vec![2.0, 1.0, 2.0]);
    }

    #[derive(clap::Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        replay: ReplayArgs,
    }

    #[test]
    fn arguments_parse() {
        use clap::{CommandFactory, Parser};
        Cli::command().debug_assert();
        let c = Cli::try_parse_from(["replay", "--trace", "t.csv", "--rate-scale", "2", "--time-scale", "60"])
            .expect("parses");
        assert_eq!((c.replay.rate_scale, c.replay.time_scale), (2.0, 60.0));
        assert_eq!((c.replay.app.as_str(), c.replay.interval), ("traffic", Duration::from_secs(300)));
        assert!(Cli::try_parse_from(["replay"]).is_err(), "--trace is required");
    }
}
