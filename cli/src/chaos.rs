//! `jigsaw chaos`: a bounded chaos run under open-loop load. It starts a local cluster,
//! sends Poisson load to the app through every agent (a refused or dropped connection is
//! sent to the next agent, as a load balancer would), and every `--kill-every` SIGKILLs a
//! seeded-random agent (the coordinator included), restarts it `--down-for` later, and
//! repeats. The report gives, per 10 s window: requests sent, answered ok, answered with
//! each kind of error, unanswered (must be 0), the plan epoch, and the kills. The command
//! fails when any request went unanswered.

use crate::cluster::{self, LocalCluster, Operator, UpOptions};
use crate::load::{self, LoadArgs, LoadReport};
use anyhow::{bail, Context, Result};
use jigsaw_protocol::rng::SplitMix64;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// `jigsaw chaos` options.
#[derive(Debug, Clone, clap::Args)]
pub struct ChaosArgs {
    /// How long the load runs: `60s`, `10m`.
    #[arg(long, value_parser = load::parse_duration, default_value = "60s")]
    pub duration: Duration,
    /// Request rate of the Poisson load.
    #[arg(long, default_value_t = 40.0)]
    pub rps: f64,
    /// The app under load.
    #[arg(long, default_value = "traffic")]
    pub app: String,
    /// Agents of the cluster.
    #[arg(long, default_value_t = 4)]
    pub nodes: usize,
    /// Simulated GPUs per agent.
    #[arg(long, default_value_t = 2)]
    pub gpus_per_node: u32,
    /// Time between kills.
    #[arg(long, value_parser = load::parse_duration, default_value = "10s")]
    pub kill_every: Duration,
    /// How long a killed agent stays down before it is restarted.
    #[arg(long, value_parser = load::parse_duration, default_value = "3s")]
    pub down_for: Duration,
    /// Seed of the victims and of the load.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Cluster directory (default: a fresh one under the temp dir, removed afterwards).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// One kill.
#[derive(Debug, Clone, Serialize)]
pub struct Kill {
    /// Seconds into the run.
    pub at_s: f64,
    /// The agent.
    pub node: String,
    /// Whether it was the coordinator.
    pub coordinator: bool,
}

/// What a chaos run saw.
#[derive(Debug, Clone, Serialize)]
pub struct ChaosReport {
    /// The seed.
    pub seed: u64,
    /// The load's report (with 10 s windows).
    pub load: LoadReport,
    /// The kills, in order.
    pub kills: Vec<Kill>,
    /// The committed plan epoch seen at the end of each window (`None`: no coordinator
    /// answered then).
    pub epochs: Vec<Option<u64>>,
    /// Requests never answered (must be 0).
    pub unanswered: u64,
}

impl std::fmt::Display for ChaosReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "chaos run, seed {} (rerun with --seed {}):", self.seed, self.seed)?;
        writeln!(f, "window    sent     ok  late  drop  error unanswered  epoch  kills; not ok by cause")?;
        for (i, w) in self.load.windows.iter().enumerate() {
            let end = w.start_s + 10.0;
            let kills: Vec<String> = self
                .kills
                .iter()
                .filter(|k| k.at_s >= w.start_s && k.at_s < end)
                .map(|k| format!("{}{}", k.node, if k.coordinator { " (coordinator)" } else { "" }))
                .collect();
            let epoch = self.epochs.get(i).copied().flatten().map_or("-".to_string(), |e| e.to_string());
            let causes: Vec<String> = w.causes.iter().map(|(c, n)| format!("{c} x{n}")).collect();
            writeln!(
                f,
                "{:>5.0}s {:>7} {:>6} {:>5} {:>5} {:>6} {:>10} {:>6}  {}{}{}",
                w.start_s,
                w.sent,
                w.ok,
                w.deadline_miss,
                w.dropped,
                w.error_status,
                w.unanswered,
                epoch,
                kills.join(", "),
                if causes.is_empty() { "" } else { "; " },
                causes.join(", ")
            )?;
        }
        writeln!(f, "{}", self.load.accounted())?;
        writeln!(
            f,
            "kills {} ({} of the coordinator); sent to the next agent after no answer: {}; unanswered: {}",
            self.kills.len(),
            self.kills.iter().filter(|k| k.coordinator).count(),
            self.load.connect_retries,
            self.unanswered
        )
    }
}

/// The coordinator's name and the committed epoch, if one answers.
fn probe(rt: &tokio::runtime::Runtime, dir: &Path) -> Option<(String, u64)> {
    rt.block_on(async {
        let op = Operator::for_dir(dir).ok()?;
        let s = tokio::time::timeout(Duration::from_secs(2), op.status()).await.ok()?.ok()?;
        Some((s.coordinator, s.state.epoch))
    })
}

/// Run `jigsaw chaos`.
pub fn cmd_chaos(a: &ChaosArgs, exe: &Path) -> Result<String> {
    if a.nodes < 2 {
        bail!("--nodes: a chaos run needs at least 2 agents, not {}", a.nodes);
    }
    if a.down_for >= a.kill_every {
        bail!("--down-for ({:?}) must be shorter than --kill-every ({:?})", a.down_for, a.kill_every);
    }
    let (dir, temporary) = match &a.dir {
        Some(d) => (d.clone(), false),
        None => (std::env::temp_dir().join(format!("jigsaw-chaos-{}", std::process::id())), true),
    };
    let up = UpOptions {
        nodes: a.nodes,
        gpus_per_node: a.gpus_per_node,
        gpu: jigsaw_protocol::GpuModel::H100_80gb,
        eligible: a.nodes.min(3),
        dir: dir.clone(),
        apps: cluster::example_apps(),
        reconfig_ms: 100,
        executor: jigsaw_agent::dataplane::worker::ExecutorKind::Timed,
        space: None,
        control: String::new(),
    };
    eprint!("{}", cluster::cmd_up(&up, exe)?);
    let result = run(a, exe, &dir);
    let _ = cluster::cmd_down(&dir, !temporary);
    let report = result?;
    let text = if a.json { format!("{}\n", serde_json::to_string_pretty(&report)?) } else { report.to_string() };
    if report.unanswered > 0 {
        bail!("{text}{} requests went unanswered", report.unanswered);
    }
    Ok(text)
}

fn run(a: &ChaosArgs, exe: &Path, dir: &Path) -> Result<ChaosReport> {
    let c = LocalCluster::load(dir)?;
    let targets: Vec<String> = c.nodes.iter().filter_map(|n| n.http.clone()).collect();
    let args = LoadArgs {
        app: a.app.clone(),
        rps: Some(a.rps),
        duration: Some(a.duration),
        trace: None,
        seed: a.seed,
        targets,
        deadline_ms: None,
        json: false,
        window: Some(Duration::from_secs(10)),
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let load = {
        let args = args.clone();
        std::thread::spawn(move || -> Result<LoadReport> {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
            rt.block_on(load::run(&args))
        })
    };
    let start = Instant::now();
    let mut rng = SplitMix64::new(a.seed ^ 0xC4A0_5EED);
    let mut kills = Vec::new();
    let mut epochs: Vec<Option<u64>> = Vec::new();
    let windows = (a.duration.as_secs_f64() / 10.0).ceil() as usize;
    let mut next_kill = start + a.kill_every;
    // Stop killing a little before the end, so the last restarts settle under load.
    let last_kill = start + a.duration.saturating_sub(a.down_for + Duration::from_secs(2));
    while start.elapsed() < a.duration {
        if epochs.len() < windows && start.elapsed() >= Duration::from_secs(10 * (epochs.len() as u64 + 1)) {
            epochs.push(probe(&rt, dir).map(|p| p.1));
        }
        if Instant::now() >= next_kill && Instant::now() < last_kill {
            next_kill += a.kill_every;
            let mut c = LocalCluster::load(dir)?;
            let coordinator = probe(&rt, dir).map(|p| p.0);
            let victim = rng.below(c.nodes.len() as u64) as usize;
            let node = c.nodes[victim].name.clone();
            cluster::signal(c.nodes[victim].pid, "KILL").with_context(|| format!("killing {node}"))?;
            kills.push(Kill {
                at_s: start.elapsed().as_secs_f64(),
                coordinator: coordinator.as_deref() == Some(node.as_str()),
                node: node.clone(),
            });
            std::thread::sleep(a.down_for);
            let n = &mut c.nodes[victim];
            n.pid = cluster::spawn_agent(exe, &n.config, &n.log).with_context(|| format!("restarting {node}"))?;
            c.save(dir)?;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let report = load.join().map_err(|_| anyhow::anyhow!("the load thread panicked"))??;
    while epochs.len() < report.windows.len() {
        epochs.push(probe(&rt, dir).map(|p| p.1));
    }
    let unanswered = report.windows.iter().map(|w| w.unanswered).sum();
    Ok(ChaosReport { seed: a.seed, load: report, kills, epochs, unanswered })
}
