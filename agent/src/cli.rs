//! The `jigsaw` command line: argument types, file loading and the human-readable output
//! of the planner commands. `main.rs` only dispatches.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use jigsaw_coordinator::analyze;
use jigsaw_coordinator::evaluate::evaluate;
use jigsaw_coordinator::planner::{Clock, Goal, PlannerConfig, Problem};
use jigsaw_coordinator::{synth, HighsSolver, SearchSpace};
use jigsaw_protocol::app::AppSpec;
use jigsaw_protocol::catalogue::GpuModel;
use jigsaw_protocol::plan::Plan;
use jigsaw_protocol::profile::ProfileTable;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::config::Config;

/// jigsaw: serve compound inference systems on MIG/MPS-partitioned GPUs.
#[derive(Debug, Parser)]
#[command(name = "jigsaw", version, about)]
pub struct Cli {
    /// Operator config file (TOML, see `deploy/jigsaw.toml`).
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// Command.
    #[command(subcommand)]
    pub cmd: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Plan one application: variants, segments, batches, replicas and per-GPU layout.
    Plan(PlanArgs),
    /// Experiments over the planner.
    #[command(subcommand)]
    Analyze(AnalyzeCmd),
    /// Benchmarks that print figures.
    #[command(subcommand)]
    Bench(BenchCmd),
    /// Profile tables.
    #[command(subcommand)]
    Profiles(ProfilesCmd),
    /// The cluster certificate authority for mutual TLS between agents.
    #[command(subcommand)]
    Ca(CaCmd),
    /// Run this node's agent (reads the `[node]` section of --config) until SIGTERM.
    Agent,
    /// Configuration.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Start a local cluster of agent processes on loopback with simulated GPUs.
    Up {
        /// Agent processes.
        #[arg(long, default_value_t = 4)]
        nodes: usize,
        /// Simulated GPUs per node.
        #[arg(long, default_value_t = 4)]
        gpus_per_node: u32,
        /// GPU model.
        #[arg(long, default_value = "h100-80gb")]
        gpu: GpuModel,
        /// Coordinator-eligible nodes (Raft voters), the first ones.
        #[arg(long, default_value_t = 3)]
        eligible: usize,
        /// Cluster directory (CA, configs, data, logs).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Do not register the example apps.
        #[arg(long)]
        no_apps: bool,
        /// Simulated MIG create/destroy latency, ms.
        #[arg(long, default_value_t = 100)]
        reconfig_ms: u64,
        /// Executor of the agents' worker processes: `timed` sleeps each batch's profiled
        /// latency (simulated GPU time), `cpu` runs scaled-down models on the CPU.
        #[arg(long, value_enum, default_value = "timed")]
        executor: crate::dataplane::worker::ExecutorKind,
    },
    /// Measure a profile table by running the serving workers on each configuration
    /// (resumable: rows already in --out are kept and skipped).
    Profile {
        /// Application spec.
        #[arg(long)]
        app: PathBuf,
        /// Output CSV (appended to; an interrupted run resumes).
        #[arg(long)]
        out: PathBuf,
        /// GPU model the rows are for.
        #[arg(long, default_value = "h100-80gb")]
        gpu: GpuModel,
        /// MIG profiles.
        #[arg(long, value_delimiter = ',', default_value = "1g.10gb,2g.20gb,3g.40gb,7g.80gb")]
        mig: Vec<String>,
        /// MPS levels.
        #[arg(long, value_delimiter = ',', default_value = "1,2")]
        mps: Vec<u8>,
        /// Batch sizes.
        #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
        batch: Vec<u32>,
        /// Timed batches per worker and configuration.
        #[arg(long, default_value_t = 10)]
        reps: usize,
        /// Executor: `cpu` (scaled-down reference models on this CPU), `cuda` (the GPU the
        /// worker sees), `timed` (replays --curves; tests the pipeline only).
        #[arg(long, value_enum, default_value = "cpu")]
        executor: crate::dataplane::worker::ExecutorKind,
        /// Profile CSV whose latencies the `timed` executor replays.
        #[arg(long)]
        curves: Option<PathBuf>,
    },
    /// One worker process of a segment instance (started and supervised by the agent).
    Worker {
        /// The worker's spec, JSON (written by the agent).
        #[arg(long)]
        spec_json: String,
    },
    /// Send open-loop load to an application through the inference API and report outcomes.
    Load {
        /// Load options.
        #[command(flatten)]
        args: crate::dataplane::loadgen::LoadArgs,
        /// Local cluster directory whose agents are the targets when no --target is given.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Stop a local cluster and remove its directory.
    Down {
        /// Cluster directory.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Keep the directory (logs, data).
        #[arg(long)]
        keep: bool,
    },
    /// Members, coordinator, plan epoch and each GPU's MIG layout.
    Status {
        /// Cluster directory.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Applications.
    #[command(subcommand)]
    App(AppCmd),
    /// Plan the shipped example applications on 4 simulated H100s (the default demo).
    Demo {
        /// Directory holding `apps/` and `profiles/`.
        #[arg(long, default_value = "examples")]
        examples: PathBuf,
    },
}

/// `jigsaw config ...`.
#[derive(Debug, Subcommand)]
pub enum ConfigCmd {
    /// Validate --config (planner and node sections) and print what it resolves to.
    Check,
}

/// `jigsaw config check`: validate a config file and summarise it.
pub fn cmd_config_check(path: &Path) -> Result<String> {
    let p = path.display().to_string();
    let cfg = Config::load(&p)?;
    let planner = cfg.planner_config(&p)?;
    let mut out = format!("{p}: valid\nplanner: {planner:?}\n");
    if let Some(n) = &cfg.node {
        let n = n.validate(&p)?;
        let voters: Vec<&str> = n.voters.iter().map(|v| v.0.as_str()).collect();
        let peers: Vec<String> = n.peers.iter().map(|(i, a)| format!("{i}@{a}")).collect();
        writeln!(
            out,
            "node {} listens on {} (advertised {}), eligible: {}, voters [{}], peers [{}], data {}, gpu {:?}",
            n.id,
            n.listen,
            n.advertise,
            n.coordinator_eligible,
            voters.join(", "),
            peers.join(", "),
            n.data_dir.display(),
            n.gpu
        )?;
    }
    Ok(out)
}

/// `jigsaw app ...`.
#[derive(Debug, Subcommand)]
pub enum AppCmd {
    /// Register (or replace) an application; the coordinator re-plans.
    Register {
        /// App spec (TOML).
        spec: PathBuf,
        /// Profile CSV.
        #[arg(long)]
        profiles: PathBuf,
        /// Demand to plan for, requests/s.
        #[arg(long)]
        rps: f64,
        /// Cluster directory.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Remove an application.
    Remove {
        /// App name.
        name: String,
        /// Cluster directory.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

/// Inputs shared by the planner commands.
#[derive(Debug, Args)]
pub struct Inputs {
    /// Application spec (TOML or JSON).
    #[arg(long)]
    pub app: PathBuf,
    /// Profile CSV.
    #[arg(long)]
    pub profiles: PathBuf,
    /// GPU model: a100-40gb, a100-80gb, h100-80gb, h200.
    #[arg(long, default_value = "h100-80gb")]
    pub gpu: GpuModel,
    /// Number of GPUs available.
    #[arg(long)]
    pub gpus: usize,
}

/// `jigsaw plan`.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Files and GPUs.
    #[command(flatten)]
    pub inputs: Inputs,
    /// Root demand, requests/s.
    #[arg(long)]
    pub demand: f64,
    /// Search space: Unopt, T, A, S, A+T, S+T, A+S, A+S+T.
    #[arg(long, default_value = "A+S+T")]
    pub space: SearchSpace,
    /// Print the plan as JSON (docs/plan-json.md).
    #[arg(long)]
    pub json: bool,
}

/// `jigsaw analyze ...`.
#[derive(Debug, Subcommand)]
pub enum AnalyzeCmd {
    /// Maximum serviceable demand of each search space (paper Figure 3).
    MaxDemand {
        /// Files and GPUs.
        #[command(flatten)]
        inputs: Inputs,
        /// Where to write the SVG bar chart.
        #[arg(long, default_value = "max-demand.svg")]
        svg: PathBuf,
    },
}

/// `jigsaw bench ...`.
#[derive(Debug, Subcommand)]
pub enum BenchCmd {
    /// Planner solve times for 4, 120 and 1000 GPUs on each example app.
    Planner {
        /// Directory holding `apps/` and `profiles/`.
        #[arg(long, default_value = "examples")]
        examples: PathBuf,
        /// GPU counts.
        #[arg(long, value_delimiter = ',', default_value = "4,120,1000")]
        gpus: Vec<usize>,
        /// Repetitions per case (the median is printed).
        #[arg(long, default_value_t = 3)]
        reps: usize,
    },
    /// Failover and plan distribution times of in-process clusters over QUIC on loopback.
    Mesh {
        /// Cluster sizes (nodes).
        #[arg(long, value_delimiter = ',', default_value = "4,32")]
        nodes: Vec<usize>,
        /// Repetitions of each measurement.
        #[arg(long, default_value_t = 5)]
        reps: usize,
        /// Simulated GPUs per node.
        #[arg(long, default_value_t = 2)]
        gpus_per_node: u32,
    },
    /// Data-plane overhead with a no-op model: per-hop latency over QUIC on loopback and
    /// throughput through a 2-stage graph.
    Dataplane {
        /// Requests in the throughput run (and at most 5000 in the per-hop run).
        #[arg(long, default_value_t = 50_000)]
        requests: usize,
        /// Requests in flight during the throughput run.
        #[arg(long, default_value_t = 256)]
        concurrency: usize,
        /// Largest batch of the no-op instances.
        #[arg(long, default_value_t = 16)]
        batch: u32,
    },
}

/// `jigsaw ca ...`.
#[derive(Debug, Subcommand)]
pub enum CaCmd {
    /// Create a cluster CA (`ca.pem`, `ca.key`, `ca.name`) in DIR; never overwrites one.
    Init {
        /// Directory for the CA files.
        #[arg(long)]
        dir: PathBuf,
        /// Cluster name (goes into the CA's subject).
        #[arg(long, default_value = "jigsaw")]
        cluster: String,
    },
    /// Issue NODE's certificate and key (`NODE.pem`, `NODE.key`) from the CA in DIR.
    Issue {
        /// Node id (the name peers dial it by).
        node: String,
        /// Directory holding the CA.
        #[arg(long)]
        dir: PathBuf,
    },
}

/// `jigsaw ca`.
pub fn cmd_ca(c: &CaCmd) -> Result<String> {
    match c {
        CaCmd::Init { dir, cluster } => {
            crate::transport::tls::ca_init(dir, cluster)?;
            Ok(format!("cluster CA `{cluster}` written to {}\n", dir.display()))
        }
        CaCmd::Issue { node, dir } => {
            let (cert, key) = crate::transport::tls::ca_issue(dir, node)?;
            Ok(format!("certificate {} and key {} issued for node `{node}`\n", cert.display(), key.display()))
        }
    }
}

/// `jigsaw profiles ...`.
#[derive(Debug, Subcommand)]
pub enum ProfilesCmd {
    /// Generate SYNTHETIC profiles from the analytic model (docs/profiles.md).
    Synth {
        /// Application spec.
        #[arg(long)]
        app: PathBuf,
        /// GPU model.
        #[arg(long, default_value = "h100-80gb")]
        gpu: GpuModel,
        /// Output CSV (stdout if omitted).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// Wall clock for the planner.
pub struct WallClock(Instant);

impl WallClock {
    /// Start now.
    pub fn new() -> Self {
        WallClock(Instant::now())
    }
}

impl Default for WallClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for WallClock {
    fn now_s(&self) -> f64 {
        self.0.elapsed().as_secs_f64()
    }
}

/// Read and validate an app spec.
pub fn load_app(path: &Path) -> Result<AppSpec> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading app spec {}", path.display()))?;
    Ok(AppSpec::parse(&text, &path.display().to_string())?)
}

/// Read a profile CSV.
pub fn load_profiles(path: &Path) -> Result<ProfileTable> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading profiles {}", path.display()))?;
    Ok(ProfileTable::parse_csv(&text, &path.display().to_string())?)
}

fn planner_config(cli_config: Option<&Path>) -> Result<(PlannerConfig, HighsSolver)> {
    let (cfg, path) = match cli_config {
        Some(p) => (Config::load(&p.display().to_string())?, p.display().to_string()),
        None => (Config::default(), "<defaults>".to_string()),
    };
    let threads = cfg.planner.threads;
    Ok((cfg.planner_config(&path)?, HighsSolver { threads }))
}

fn check_inputs(i: &Inputs) -> Result<()> {
    if i.gpus == 0 {
        bail!("--gpus must be at least 1");
    }
    Ok(())
}

/// `jigsaw plan`.
pub fn cmd_plan(a: &PlanArgs, config: Option<&Path>) -> Result<String> {
    check_inputs(&a.inputs)?;
    if !(a.demand.is_finite() && a.demand > 0.0) {
        bail!("--demand must be a positive number of requests/s, got {}", a.demand);
    }
    let app = load_app(&a.inputs.app)?;
    let profiles = load_profiles(&a.inputs.profiles)?;
    let (cfg, solver) = planner_config(config)?;
    let pb = Problem { app: &app, profiles: &profiles, gpu: a.inputs.gpu, gpus: a.inputs.gpus, space: a.space };
    let plan = jigsaw_coordinator::plan(pb, Goal::MinCost { demand: a.demand }, &cfg, &solver, &WallClock::new())?;
    let report = evaluate(&plan, &app, &profiles);
    if !report.ok() {
        bail!("internal error: the planner returned a plan that fails the evaluator: {:?}", report.violations);
    }
    if a.json {
        return Ok(serde_json::to_string_pretty(&plan)? + "\n");
    }
    Ok(render_plan(&plan))
}

/// Human-readable plan.
pub fn render_plan(p: &Plan) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "plan for `{}` in {} on {} x {} at {:.1} req/s",
        p.app, p.space, p.gpus_available, p.gpu_model, p.demand_rps
    );
    let _ = writeln!(
        s,
        "  accuracy {:.4} of max (SLO {:.2}), latency bound {:.1} ms (SLO {:.0} ms), {} slices on {} GPU(s)",
        p.accuracy, p.accuracy_slo, p.latency_bound_ms, p.latency_slo_ms, p.slices_used, p.gpus_used
    );
    let _ = writeln!(
        s,
        "  solved in {:.0} ms, gap {:.2e}; latency splits {} enumerated, {} solved, {} pruned by bound; levels: {}",
        p.stats.solve_ms,
        p.stats.gap,
        p.stats.splits_total,
        p.stats.splits_solved,
        p.stats.splits_pruned,
        p.stats.latency_levels
    );
    if let Some(n) = &p.stats.note {
        let _ = writeln!(s, "  note: {n}");
    }
    let _ = writeln!(s, "tasks:");
    for t in &p.tasks {
        let _ = writeln!(
            s,
            "  {:<10} budget {:>7.1} ms  slowest p95 {:>7.1} ms  demand {:>9.1}/s  capacity {:>9.1}/s  {} slices",
            t.task, t.latency_budget_ms, t.slowest_p95_ms, t.demand_rps, t.capacity_rps, t.slices
        );
        for v in &t.variants {
            let _ = writeln!(
                s,
                "      {:<20} acc {:.4}  {:>3} inst  {:>9.1}/s  weight {:.3}",
                v.variant, v.accuracy, v.instances, v.capacity_rps, v.weight
            );
        }
    }
    let _ = writeln!(s, "gpus:");
    for g in &p.gpus {
        let parts: Vec<String> = g
            .instances
            .iter()
            .map(|i| format!("{}@{} {}/{} mps{} b{}", i.mig_profile, i.start, i.task, i.variant, i.mps, i.batch))
            .collect();
        let _ = writeln!(s, "  gpu {:>4}: {}", g.gpu, parts.join(" | "));
    }
    s
}

/// `jigsaw analyze max-demand`.
pub fn cmd_max_demand(inputs: &Inputs, svg_path: &Path, config: Option<&Path>) -> Result<String> {
    check_inputs(inputs)?;
    let app = load_app(&inputs.app)?;
    let profiles = load_profiles(&inputs.profiles)?;
    let (cfg, solver) = planner_config(config)?;
    let pb = Problem { app: &app, profiles: &profiles, gpu: inputs.gpu, gpus: inputs.gpus, space: SearchSpace::FULL };
    let rows = analyze::max_demand(pb, &SearchSpace::all(), &cfg, &solver, &WallClock::new());
    let slices = inputs.gpus * 7;
    let title =
        format!("{}: max serviceable demand on {} x {} (synthetic profiles)", app.name, inputs.gpus, inputs.gpu);
    std::fs::write(svg_path, analyze::svg(&rows, &title, slices))
        .with_context(|| format!("writing {}", svg_path.display()))?;
    let mut out = format!("{title}\n");
    out += &analyze::table(&rows, slices);
    let get = |sp: &str| rows.iter().find(|r| r.space.to_string() == sp).and_then(|r| r.demand);
    if let (Some(full), Some(at)) = (get("A+S+T"), get("A+T")) {
        let _ = writeln!(out, "A+S+T / A+T = {:.2}x (the paper reports 11.3x for its traffic app)", full / at);
    }
    let _ = writeln!(out, "chart: {}", svg_path.display());
    Ok(out)
}

/// `jigsaw profiles synth`.
pub fn cmd_synth(app: &Path, gpu: GpuModel) -> Result<String> {
    let app = load_app(app)?;
    Ok(synth::generate(&app, gpu).to_csv(&synth::provenance(&app, gpu)))
}

/// The example apps: (name, app path, profile path).
pub fn examples(dir: &Path) -> Vec<(String, PathBuf, PathBuf)> {
    ["social", "traffic", "ar"]
        .into_iter()
        .map(|n| {
            (
                n.to_string(),
                dir.join("apps").join(format!("{n}.toml")),
                dir.join("profiles").join(format!("{n}-h100-80gb.csv")),
            )
        })
        .collect()
}

/// `jigsaw bench planner`.
pub fn cmd_bench_planner(dir: &Path, gpus: &[usize], reps: usize, config: Option<&Path>) -> Result<String> {
    let (cfg, solver) = planner_config(config)?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "planner bench: min-cost plan at 60% of the max serviceable demand, A+S+T, h100-80gb (synthetic profiles)"
    );
    let _ = writeln!(
        out,
        "time limit {} s, mip gap {}, median of {} run(s)",
        cfg.time_limit_s,
        cfg.mip_rel_gap,
        reps.max(1)
    );
    let _ = writeln!(
        out,
        "{:<8} {:>6} {:>10} {:>11} {:>11} {:>9} {:>8} {:>10}",
        "app", "GPUs", "demand/s", "max-dem ms", "plan ms", "gap", "slices", "splits"
    );
    for (name, app_path, prof_path) in examples(dir) {
        let app = load_app(&app_path)?;
        let profiles = load_profiles(&prof_path)?;
        for &g in gpus {
            let pb =
                Problem { app: &app, profiles: &profiles, gpu: GpuModel::H100_80gb, gpus: g, space: SearchSpace::FULL };
            let clock = WallClock::new();
            let mut md_times = Vec::new();
            let mut max = None;
            for _ in 0..reps.max(1) {
                let p = jigsaw_coordinator::plan(pb, Goal::MaxDemand, &cfg, &solver, &clock)?;
                md_times.push(p.stats.solve_ms);
                max = Some(p);
            }
            let max = max.context("no run")?;
            let demand = (0.6 * max.demand_rps * 10.0).floor() / 10.0;
            let mut times = Vec::new();
            let mut last = None;
            for _ in 0..reps.max(1) {
                let p = jigsaw_coordinator::plan(pb, Goal::MinCost { demand }, &cfg, &solver, &clock)?;
                let rep = evaluate(&p, &app, &profiles);
                if !rep.ok() {
                    bail!("plan fails the evaluator: {:?}", rep.violations);
                }
                times.push(p.stats.solve_ms);
                last = Some(p);
            }
            let p = last.context("no run")?;
            let _ = writeln!(
                out,
                "{:<8} {:>6} {:>10.1} {:>11.0} {:>11.0} {:>9.1e} {:>8} {:>10}",
                name,
                g,
                demand,
                median(&mut md_times),
                median(&mut times),
                p.stats.gap,
                p.slices_used,
                format!("{}/{}", p.stats.splits_solved, p.stats.splits_total)
            );
        }
    }
    Ok(out)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// `jigsaw demo`: plan every example app on 4 H100s at half its max demand.
pub fn cmd_demo(dir: &Path, config: Option<&Path>) -> Result<String> {
    let (cfg, solver) = planner_config(config)?;
    let mut out =
        String::from("jigsaw demo: planning the example apps on 4 x h100-80gb (SYNTHETIC profiles, no GPU needed)\n\n");
    for (_, app_path, prof_path) in examples(dir) {
        let app = load_app(&app_path)?;
        let profiles = load_profiles(&prof_path)?;
        let pb =
            Problem { app: &app, profiles: &profiles, gpu: GpuModel::H100_80gb, gpus: 4, space: SearchSpace::FULL };
        let clock = WallClock::new();
        let max = jigsaw_coordinator::plan(pb, Goal::MaxDemand, &cfg, &solver, &clock)?;
        let demand = (max.demand_rps * 5.0).floor() / 10.0;
        let _ = writeln!(
            out,
            "`{}`: max serviceable demand {:.1} req/s; planning for {demand:.1} req/s",
            app.name, max.demand_rps
        );
        let p = jigsaw_coordinator::plan(pb, Goal::MinCost { demand }, &cfg, &solver, &clock)?;
        let rep = evaluate(&p, &app, &profiles);
        if !rep.ok() {
            bail!("plan fails the evaluator: {:?}", rep.violations);
        }
        out += &render_plan(&p);
        out += "  evaluator: all constraints hold\n\n";
    }
    Ok(out)
}
