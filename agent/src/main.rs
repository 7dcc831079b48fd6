//! The `jigsaw` binary: parses the command line and dispatches to [`jigsaw_agent::cli`].

use clap::Parser;
use jigsaw_agent::cli::{self, AnalyzeCmd, BenchCmd, Cli, Command, ProfilesCmd};
use std::process::ExitCode;

fn run(c: Cli) -> anyhow::Result<()> {
    let config = c.config.as_deref();
    let out = match &c.cmd {
        Command::Plan(a) => cli::cmd_plan(a, config)?,
        Command::Analyze(AnalyzeCmd::MaxDemand { inputs, svg }) => cli::cmd_max_demand(inputs, svg, config)?,
        Command::Bench(BenchCmd::Planner { examples, gpus, reps }) => {
            cli::cmd_bench_planner(examples, gpus, *reps, config)?
        }
        Command::Profiles(ProfilesCmd::Synth { app, gpu, out }) => {
            let csv = cli::cmd_synth(app, *gpu)?;
            match out {
                Some(path) => {
                    std::fs::write(path, csv).map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
                    format!("wrote {}\n", path.display())
                }
                None => csv,
            }
        }
        Command::Demo { examples } => cli::cmd_demo(examples, config)?,
        Command::Ca(c) => cli::cmd_ca(c)?,
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
