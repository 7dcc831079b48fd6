//! The `jigsaw` binary: parses the command line and dispatches to the command modules of
//! [`jigsaw_cli`].

use clap::Parser;
use jigsaw_cli::args::{AnalyzeCmd, AppCmd, BenchCmd, Cli, Command, ConfigCmd, ForecastCmd, ProfilesCmd};
use jigsaw_cli::{bench, chaos, cluster, load, measured, ops, planning, profile};
use std::process::ExitCode;

fn run(c: Cli) -> anyhow::Result<()> {
    let config = c.config.as_deref();
    let out = match &c.cmd {
        Command::Plan(a) => planning::cmd_plan(a, config)?,
        Command::Analyze(AnalyzeCmd::MaxDemand { inputs, svg }) => planning::cmd_max_demand(inputs, svg, config)?,
        Command::Bench(BenchCmd::Planner(a)) => match a.random {
            Some(_) => bench::planner::cmd_bench_random(a, config)?,
            None => {
                planning::cmd_bench_planner(&a.examples, a.gpus.as_deref().unwrap_or(&[4, 120, 1000]), a.reps, config)?
            }
        },
        Command::Bench(BenchCmd::Cluster {
            apps,
            gpus,
            gpus_per_node,
            gpu,
            scale,
            copies,
            spread,
            sequential,
            json,
        }) => {
            let b = bench::cluster::ClusterBench {
                apps: apps.clone(),
                gpus: *gpus,
                gpus_per_node: *gpus_per_node,
                gpu: *gpu,
                scales: scale.clone(),
                copies: *copies,
                spread: spread.parse().map_err(|e| anyhow::anyhow!("--spread: {e}"))?,
                sequential: *sequential,
            };
            let (cfg, solver) = planning::planner_config(config)?;
            let rows = bench::cluster::run(&b, &cfg, &solver)?;
            if *json {
                serde_json::to_string_pretty(&rows)? + "\n"
            } else {
                bench::cluster::table(&b, &rows)
            }
        }
        Command::Bench(BenchCmd::Mesh { nodes, reps, gpus_per_node }) => {
            bench::mesh::cmd_bench_mesh(nodes, *reps, *gpus_per_node)?
        }
        Command::Bench(BenchCmd::Transition { mig_latency_ms, steps, rps, no_rotate, seed, json }) => {
            let b = bench::transition::TransitionBench {
                mig_latency_ms: *mig_latency_ms,
                steps: *steps,
                demand_rps: *rps,
                rotate: !*no_rotate,
                seed: *seed,
            };
            let r = bench::transition::bench(&b)?;
            if *json {
                serde_json::to_string_pretty(&r)? + "\n"
            } else {
                bench::transition::table(&b, &r)
            }
        }
        Command::Bench(BenchCmd::Dataplane { requests, concurrency, batch }) => {
            bench::dataplane::cmd_bench_dataplane(*requests, *concurrency, *batch)?
        }
        Command::Profiles(ProfilesCmd::Synth { app, gpu, out }) => {
            let csv = planning::cmd_synth(app, *gpu)?;
            match out {
                Some(path) => {
                    std::fs::write(path, csv).map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
                    format!("wrote {}\n", path.display())
                }
                None => csv,
            }
        }
        Command::Profiles(ProfilesCmd::Import { format, dir, gpu, out }) => {
            measured::cmd_import(*format, dir, *gpu, out.as_deref())?
        }
        Command::Profiles(ProfilesCmd::Calibrate { data, apps }) => measured::cmd_calibrate(data, apps)?,
        Command::Forecast(ForecastCmd::Backtest(a)) => jigsaw_cli::forecast::cmd_backtest(a)?,
        Command::Demo { examples } => planning::cmd_demo(examples, config)?,
        Command::Ca(c) => ops::cmd_ca(c)?,
        Command::Config(ConfigCmd::Check) => {
            let path = config.ok_or_else(|| anyhow::anyhow!("`jigsaw config check` needs --config FILE"))?;
            ops::cmd_config_check(path)?
        }
        Command::Agent => {
            let path =
                config.ok_or_else(|| anyhow::anyhow!("`jigsaw agent` needs --config FILE with a [node] section"))?;
            cluster::cmd_agent(path)?;
            String::new()
        }
        Command::Profile { app, out, gpu, mig, mps, batch, reps, executor, curves } => {
            profile::cmd_profile(app, out, *gpu, mig, mps, batch, *reps, *executor, curves.as_deref())?
        }
        Command::Worker { spec_json } => {
            let spec: jigsaw_agent::dataplane::worker::WorkerSpec =
                serde_json::from_str(spec_json).map_err(|e| anyhow::anyhow!("--spec-json: {e}"))?;
            jigsaw_agent::dataplane::worker::worker_main(&spec).map_err(|e| anyhow::anyhow!("worker: {e}"))?;
            String::new()
        }
        Command::Load { args, dir } => load::cmd_load(args, &dir.clone().unwrap_or_else(cluster::default_dir))?,
        Command::Up { nodes, gpus_per_node, gpu, eligible, dir, no_apps, apps, reconfig_ms, executor, space } => {
            let o = cluster::UpOptions {
                nodes: *nodes,
                gpus_per_node: *gpus_per_node,
                gpu: *gpu,
                eligible: *eligible,
                dir: dir.clone().unwrap_or_else(cluster::default_dir),
                apps: match (no_apps, apps) {
                    (true, _) => Vec::new(),
                    (false, Some(f)) => jigsaw_cli::appset::load_app_set(f)?.for_gpu(*gpu, f)?,
                    (false, None) => cluster::example_apps(),
                },
                reconfig_ms: *reconfig_ms,
                executor: *executor,
                space: space.clone(),
                control: String::new(),
            };
            cluster::cmd_up(&o, &std::env::current_exe()?)?
        }
        Command::Chaos(a) => chaos::cmd_chaos(a, &std::env::current_exe()?)?,
        Command::Replay(a) => jigsaw_cli::replay::cmd_replay(a, &std::env::current_exe()?)?,
        Command::Down { dir, keep } => cluster::cmd_down(&dir.clone().unwrap_or_else(cluster::default_dir), *keep)?,
        Command::Status { dir, json, html } => {
            cluster::cmd_status(&dir.clone().unwrap_or_else(cluster::default_dir), *json, html.as_deref())?
        }
        Command::App(AppCmd::Register { spec, profiles, rps, dir }) => {
            cluster::cmd_app_register(&dir.clone().unwrap_or_else(cluster::default_dir), spec, profiles, *rps)?
        }
        Command::App(AppCmd::Remove { name, dir }) => cluster::operator_request(
            &dir.clone().unwrap_or_else(cluster::default_dir),
            jigsaw_protocol::wire::ClientRequest::remove(name.clone()),
        )?,
    };
    print!("{out}");
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
