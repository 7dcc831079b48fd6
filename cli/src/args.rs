//! The `jigsaw` command line: the clap argument types of every command. The commands
//! themselves live in one module per group; `main.rs` only dispatches.

use clap::{Args, Parser, Subcommand};
use jigsaw_coordinator::SearchSpace;
use jigsaw_protocol::catalogue::GpuModel;
use std::path::PathBuf;

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
        #[arg(long, conflicts_with = "apps")]
        no_apps: bool,
        /// Register the apps of this app-set file instead of the examples (TOML `[[apps]]`
        /// entries with spec, profiles and rps; e.g. `examples/clusters/measured-a100-80gb.toml`).
        #[arg(long, value_name = "FILE")]
        apps: Option<PathBuf>,
        /// Simulated MIG create/destroy latency, ms.
        #[arg(long, default_value_t = 100)]
        reconfig_ms: u64,
        /// Executor of the agents' worker processes: `timed` sleeps each batch's profiled
        /// latency (simulated GPU time), `cpu` runs scaled-down models on the CPU.
        #[arg(long, default_value = "timed")]
        executor: jigsaw_agent::dataplane::worker::ExecutorKind,
        /// Planner search space of the cluster: `A+S+T` (default), `A+T`, `S+T`, `A+S`, ...
        #[arg(long)]
        space: Option<String>,
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
        #[arg(long, default_value = "cpu")]
        executor: jigsaw_agent::dataplane::worker::ExecutorKind,
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
        args: crate::load::LoadArgs,
        /// Local cluster directory whose agents are the targets when no --target is given.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// A bounded chaos run under load: kill and restart random agents, report every window.
    Chaos(crate::chaos::ChaosArgs),
    /// Replay a trace on local simulated clusters under A+S+T and the baselines (the
    /// paper's Figure 4): slices, accuracy, SLO violations and transitions per interval.
    Replay(crate::replay::ReplayArgs),
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
        /// Write the status page (the HTML every agent serves at /status) to FILE.
        #[arg(long, value_name = "FILE")]
        html: Option<PathBuf>,
    },
    /// Applications.
    #[command(subcommand)]
    App(AppCmd),
    /// Demand forecasting.
    #[command(subcommand)]
    Forecast(ForecastCmd),
    /// Plan the shipped example applications on 4 simulated H100s (the default demo).
    Demo {
        /// Directory holding `apps/` and `profiles/`.
        #[arg(long, default_value = "examples")]
        examples: PathBuf,
    },
}

/// `jigsaw forecast ...`.
#[derive(Debug, Subcommand)]
pub enum ForecastCmd {
    /// Replay a trace through every forecaster: share of intervals under-predicted, mean
    /// over-provisioning, p95 shortfall.
    Backtest(crate::forecast::BacktestArgs),
}

/// `jigsaw config ...`.
#[derive(Debug, Subcommand)]
pub enum ConfigCmd {
    /// Validate --config (planner and node sections) and print what it resolves to.
    Check,
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
        /// Demand to plan for, requests/s: the initial planned demand and a floor for the
        /// measured one; `auto` (1 req/s initially) or `auto:N` (N initially): no floor.
        #[arg(long)]
        rps: Rps,
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

/// `--rps`: a registered demand (initial and floor) or `auto[:initial]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rps {
    /// Plan for at least this many requests/s.
    Floor(f64),
    /// Start at this many requests/s and follow measured demand without a floor.
    Auto(f64),
}

impl Rps {
    /// The initial planned demand, requests/s.
    pub fn initial(self) -> f64 {
        match self {
            Rps::Floor(x) | Rps::Auto(x) => x,
        }
    }

    /// Whether the demand has no floor.
    pub fn auto(self) -> bool {
        matches!(self, Rps::Auto(_))
    }
}

impl std::str::FromStr for Rps {
    type Err = String;
    fn from_str(s: &str) -> Result<Rps, String> {
        let num = |t: &str| match t.parse::<f64>() {
            Ok(x) if x.is_finite() && x > 0.0 => Ok(x),
            _ => Err(format!("demand `{t}` is not a positive number of requests/s (or `auto`, `auto:N`)")),
        };
        match s.strip_prefix("auto") {
            Some("") => Ok(Rps::Auto(1.0)),
            Some(rest) => rest
                .strip_prefix(':')
                .map_or_else(|| Err(format!("`{s}`: write `auto` or `auto:N`")), |n| num(n).map(Rps::Auto)),
            None => num(s).map(Rps::Floor),
        }
    }
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
    /// Planner solve times: on each example app (4, 120 and 1000 GPUs), or with --random N
    /// on N seeded random apps with synthetic profiles (4, 8, 16 and 120 GPUs).
    Planner(PlannerBenchArgs),
    /// The joint cluster planner on a set of apps: GPUs used against the lower bound, the LP
    /// bound and the sequential planner, at several demand levels.
    Cluster {
        /// App-set files (TOML `[[apps]]` entries: spec, profiles, rps).
        #[arg(long, required = true, value_delimiter = ',')]
        apps: Vec<PathBuf>,
        /// GPUs in the cluster.
        #[arg(long)]
        gpus: usize,
        /// GPUs per node.
        #[arg(long, default_value_t = 8)]
        gpus_per_node: usize,
        /// GPU model.
        #[arg(long, default_value = "a100-80gb")]
        gpu: GpuModel,
        /// Demand multipliers, one row each.
        #[arg(long, value_delimiter = ',', default_value = "0.5,1,2")]
        scale: Vec<f64>,
        /// Copies of the app set (renamed NAME-k), to scale the number of apps.
        #[arg(long, default_value_t = 1)]
        copies: usize,
        /// Failure-domain spread: auto, node, none.
        #[arg(long, default_value = "none")]
        spread: String,
        /// Also run the sequential (one app after another, whole GPUs) planner.
        #[arg(long)]
        sequential: bool,
        /// Print JSON rows instead of the table.
        #[arg(long)]
        json: bool,
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
    /// Make-before-break plan transitions under load on a simulated cluster: time from a
    /// plan's commit to its last old MIG instance destroyed, and requests lost (simulated time).
    Transition {
        /// Simulated latency of one MIG create or destroy, ms.
        #[arg(long, default_value_t = 0)]
        mig_latency_ms: u64,
        /// Transitions (demand steps 2x up and back down).
        #[arg(long, default_value_t = 10)]
        steps: usize,
        /// The low demand, requests/s.
        #[arg(long, default_value_t = 100.0)]
        rps: f64,
        /// Keep the planner's placement (default: rotate plans across GPUs, SYNTHETIC churn).
        #[arg(long)]
        no_rotate: bool,
        /// Seed of the simulation.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Print JSON instead of the table.
        #[arg(long)]
        json: bool,
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

/// `jigsaw bench planner`.
#[derive(Debug, Args)]
pub struct PlannerBenchArgs {
    /// Directory holding `apps/` and `profiles/` (example-app mode).
    #[arg(long, default_value = "examples")]
    pub examples: PathBuf,
    /// GPU counts (default 4,120,1000 for the example apps, 4,8,16,120 with --random).
    #[arg(long, value_delimiter = ',')]
    pub gpus: Option<Vec<usize>>,
    /// Repetitions per case in example-app mode (the median is printed).
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Bench N seeded random apps (SYNTHETIC, `jigsaw_coordinator::randapp`) instead of the
    /// example apps.
    #[arg(long, value_name = "N")]
    pub random: Option<usize>,
    /// Seed of the random apps: app i is generated from `randapp::app_seed(seed, i)`.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// With --random: bench only app index I (to reproduce a slow case).
    #[arg(long, value_name = "I")]
    pub only: Option<usize>,
    /// Print random app I's spec as TOML and exit (profiles: `jigsaw profiles synth`).
    #[arg(long, value_name = "I")]
    pub dump: Option<usize>,
    /// GPU model of the random apps' synthetic profiles.
    #[arg(long, default_value = "a100-40gb")]
    pub gpu: GpuModel,
    /// Min-cost demand levels, percent of each app's maximum serviceable demand.
    #[arg(long, value_delimiter = ',', default_value = "25,50,90")]
    pub levels: Vec<f64>,
    /// Planner time limit per run, seconds (default: the config's, 30 s).
    #[arg(long)]
    pub time_limit: Option<f64>,
    /// Print JSON (every case and the summary) instead of tables.
    #[arg(long)]
    pub json: bool,
    /// With --random: write every MILP the planner hands the solver to DIR as JSON
    /// (`NNNNN.json`: the model and the solve options), to study a slow case offline.
    #[arg(long, value_name = "DIR", requires = "random")]
    pub dump_milp: Option<PathBuf>,
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
        /// Validity of the CA certificate, days.
        #[arg(long, default_value_t = jigsaw_agent::transport::tls::DEFAULT_CA_DAYS)]
        days: u32,
    },
    /// Issue NODE's certificate and key (`NODE.pem`, `NODE.key`, role node) from the CA in
    /// DIR; with --admin, the operator certificate (`admin.pem`, `admin.key`, role admin).
    /// Existing files are never overwritten without --force.
    Issue {
        /// Node id (the name peers dial it by); not `admin`, `ca`, `localhost` or an address.
        /// With --admin: the operator's name (default `admin`).
        node: Option<String>,
        /// Directory holding the CA.
        #[arg(long)]
        dir: PathBuf,
        /// An operator (admin) certificate: may register and remove apps, cannot act as a node.
        #[arg(long)]
        admin: bool,
        /// Validity, days.
        #[arg(long, default_value_t = jigsaw_agent::transport::tls::DEFAULT_NODE_DAYS)]
        days: u32,
        /// An extra DNS name or IP address for the node certificate (repeatable), for tools
        /// outside jigsaw; jigsaw itself only ever uses the node name, and an extra name never
        /// identifies a node.
        #[arg(long = "san", value_name = "NAME")]
        sans: Vec<String>,
        /// Replace an existing certificate and key of that name (rotation: issue anew, then
        /// SIGHUP the agent).
        #[arg(long)]
        force: bool,
    },
    /// Print what a certificate file says: name, role, serial (for a deny list), validity.
    Show {
        /// Certificate (PEM; the first certificate in the file).
        cert: PathBuf,
    },
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
    /// Convert measured profiles from another tool into profile CSVs (mean-latency files,
    /// docs/profiles.md); without --out, check the files and print what would be written.
    Import {
        /// Source format.
        #[arg(long, value_enum)]
        format: ImportFormat,
        /// Directory of source files, one CSV per model (the model name is the file stem).
        dir: PathBuf,
        /// GPU model the source measured.
        #[arg(long)]
        gpu: GpuModel,
        /// Output directory: one `<model>.csv` per source file.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Cross-validate the calibrated profile model against measured profiles: fit on all
    /// models but one, predict the one left out, for each model; and the uncalibrated
    /// baseline on the same rows.
    Calibrate {
        /// Directory of measured mean-latency profile CSVs (`<model>.csv`).
        #[arg(long, default_value = "examples/profiles/measured-a100-80gb")]
        data: PathBuf,
        /// Directory of the single-model app specs describing them (`<model>.toml`).
        #[arg(long, default_value = "examples/apps/measured")]
        apps: PathBuf,
    },
}

/// Measured-profile formats `jigsaw profiles import` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ImportFormat {
    /// ParvaGPU `prof_data/*.csv`: `Mig instance,Batch size,Workload Number,Throughput,Latency`.
    Parvagpu,
}

#[cfg(test)]
mod tests {
    use super::Rps;

    #[test]
    fn rps_is_a_floor_or_auto() {
        assert_eq!("400".parse::<Rps>(), Ok(Rps::Floor(400.0)));
        assert_eq!("auto".parse::<Rps>(), Ok(Rps::Auto(1.0)));
        assert_eq!("auto:50".parse::<Rps>(), Ok(Rps::Auto(50.0)));
        for bad in ["0", "-3", "nan", "inf", "auto:", "auto:0", "autox", "x"] {
            assert!(bad.parse::<Rps>().is_err(), "{bad}");
        }
        assert!(Rps::Auto(2.0).auto() && !Rps::Floor(2.0).auto());
        assert_eq!(Rps::Auto(2.0).initial(), 2.0);
    }
}
