//! `jigsaw profile`: measure the profile table by running the same workers that serve.
//!
//! For every (task, variant, MIG profile, MPS level, batch) configuration asked for, the
//! profiler starts `mps` workers of the chosen executor side by side (as MPS replicas share
//! an instance), runs `reps` batches on each concurrently, and records the p95 batch latency
//! and the segment throughput (`mps × batch / mean latency`) as a row of the planner's
//! profile CSV. Rows are appended and flushed one by one, so an interrupted run resumes
//! where it stopped: configurations already in the output file are skipped.
//!
//! What the figures mean depends on the executor, and the file says so in its header:
//! `cuda` on a real MIG instance measures that segment; `cpu` measures the scaled-down
//! reference models on this machine's CPU (the MIG profile then does not change the
//! figures); `timed` only replays its input curve and is useful to test the pipeline.

use anyhow::{anyhow, bail, Context as _};
use jigsaw_agent::dataplane::worker::{ExecutorKind, Launcher, ProcessLauncher, WorkerSpec};
use jigsaw_protocol::app::AppSpec;
use jigsaw_protocol::catalogue::GpuModel;
use jigsaw_protocol::profile::{latency_curve, p95_mean, ProfileRow, ProfileTable};
use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// One configuration to measure.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Config {
    /// Task.
    pub task: String,
    /// Variant.
    pub variant: String,
    /// MIG profile.
    pub mig_profile: String,
    /// MPS level.
    pub mps: u8,
    /// Batch size.
    pub batch: u32,
}

/// Every configuration of `app` over `profiles × mps × batches`, minus those `done` has.
pub fn plan_configs(
    app: &AppSpec,
    profiles: &[String],
    mps: &[u8],
    batches: &[u32],
    done: &BTreeSet<Config>,
) -> Vec<Config> {
    let mut out = Vec::new();
    for t in &app.tasks {
        for v in &t.variants {
            for p in profiles {
                for &m in mps {
                    for &b in batches {
                        let c = Config {
                            task: t.name.clone(),
                            variant: v.name.clone(),
                            mig_profile: p.clone(),
                            mps: m,
                            batch: b,
                        };
                        if !done.contains(&c) {
                            out.push(c);
                        }
                    }
                }
            }
        }
    }
    out
}

/// Options of a profiling run.
pub struct ProfileRun<'a> {
    /// The application.
    pub app: &'a AppSpec,
    /// GPU model the rows are for.
    pub gpu: GpuModel,
    /// MIG profiles.
    pub profiles: Vec<String>,
    /// MPS levels.
    pub mps: Vec<u8>,
    /// Batch sizes.
    pub batches: Vec<u32>,
    /// Batches timed per worker (after one warm-up batch).
    pub reps: usize,
    /// Starts the workers.
    pub launcher: Arc<dyn Launcher>,
    /// Timed executor curve source (used only by `timed`): the registered table.
    pub curves: Option<&'a ProfileTable>,
}

/// Run the profile, appending rows to `out` (created with a header if missing). Returns
/// (measured now, skipped because already present).
pub async fn run(
    r: &ProfileRun<'_>,
    out: &Path,
    mut progress: impl FnMut(usize, usize, &Config, &ProfileRow),
) -> Result<(usize, usize), String> {
    let path = out.display().to_string();
    let existing = match std::fs::read_to_string(out) {
        Ok(text) => ProfileTable::parse_csv(&text, &path).map_err(|e| format!("cannot resume from {path}: {e}"))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => ProfileTable::default(),
        Err(e) => return Err(format!("{path}: {e}")),
    };
    let done: BTreeSet<Config> = existing
        .rows()
        .filter(|x| x.gpu == r.gpu)
        .map(|x| Config {
            task: x.task.clone(),
            variant: x.variant.clone(),
            mig_profile: x.mig_profile.clone(),
            mps: x.mps,
            batch: x.batch,
        })
        .collect();
    let todo = plan_configs(r.app, &r.profiles, &r.mps, &r.batches, &done);
    let all = todo.len() + done.len();
    let mut file =
        std::fs::OpenOptions::new().create(true).append(true).open(out).map_err(|e| format!("{path}: {e}"))?;
    let empty = file.metadata().map(|m| m.len() == 0).unwrap_or(true);
    if empty {
        let header = ProfileTable::default().to_csv(&[format!(
            "measured by `jigsaw profile` with the `{}` executor ({} batches per worker after a warm-up)",
            r.launcher.executor().name(),
            r.reps
        )]);
        file.write_all(header.as_bytes()).map_err(|e| format!("{path}: {e}"))?;
    }
    for (k, c) in todo.iter().enumerate() {
        let t = r.app.task_index(&c.task).ok_or_else(|| format!("task {} vanished", c.task))?;
        let v = r.app.tasks[t].variants.iter().find(|v| v.name == c.variant).ok_or("variant vanished")?;
        let curve = r
            .curves
            .map(|tab| latency_curve(tab.rows(), &c.task, &c.variant, &c.mig_profile, c.mps))
            .unwrap_or_default();
        let spec = WorkerSpec {
            app: r.app.name.clone(),
            task: c.task.clone(),
            variant: c.variant.clone(),
            model: v.model.clone(),
            executor: r.launcher.executor(),
            curve,
            scale: 1e-3,
            seed: jigsaw_protocol::cluster::fnv64(&[&r.app.name, &c.task, &c.variant]),
            device: None,
            mps_percent: Some((100 / c.mps.max(1)).max(1)),
        };
        let workers: Vec<_> = (0..c.mps.max(1)).map(|_| r.launcher.launch(&spec)).collect();
        let input = vec![0.5f32; 3 * 16 * 16];
        let batch: Vec<Vec<f32>> = (0..c.batch).map(|_| input.clone()).collect();
        let mut lat = Vec::new();
        let runs = workers.iter().map(|w| {
            let (w, batch) = (w.clone(), batch.clone());
            let reps = r.reps.max(1);
            async move {
                w.run(batch.clone()).await.map_err(|e| e.to_string())?; // warm-up
                let mut l = Vec::with_capacity(reps);
                for _ in 0..reps {
                    let t = Instant::now();
                    w.run(batch.clone()).await.map_err(|e| e.to_string())?;
                    l.push(t.elapsed().as_secs_f64() * 1e3);
                }
                Ok::<Vec<f64>, String>(l)
            }
        });
        for res in futures_join_all(runs).await {
            lat.extend(res?);
        }
        let (p95, mean) = p95_mean(&mut lat);
        let row = ProfileRow {
            task: c.task.clone(),
            variant: c.variant.clone(),
            gpu: r.gpu,
            mig_profile: c.mig_profile.clone(),
            mps: c.mps,
            batch: c.batch,
            p95_ms: (p95 * 1e3).round() / 1e3,
            throughput_rps: ((f64::from(c.mps) * f64::from(c.batch) / (mean / 1e3)) * 1e2).round() / 1e2,
        };
        let line = ProfileTable::from_rows([row.clone()]).to_csv(&[]);
        let body: String =
            line.lines().filter(|l| !l.starts_with('#') && !l.starts_with("task,")).map(|l| format!("{l}\n")).collect();
        file.write_all(body.as_bytes()).and_then(|()| file.flush()).map_err(|e| format!("{path}: {e}"))?;
        progress(done.len() + k + 1, all, c, &row);
    }
    Ok((todo.len(), done.len()))
}

/// Await every future (a tiny join_all without the futures crate).
async fn futures_join_all<F: std::future::Future + Send + 'static>(fs: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = fs.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        if let Ok(o) = h.await {
            out.push(o);
        }
    }
    out
}

/// `jigsaw profile`: measure configurations with `jigsaw worker` processes.
#[allow(clippy::too_many_arguments)]
pub fn cmd_profile(
    app: &Path,
    out: &Path,
    gpu: GpuModel,
    mig: &[String],
    mps: &[u8],
    batch: &[u32],
    reps: usize,
    executor: ExecutorKind,
    curves: Option<&Path>,
) -> anyhow::Result<String> {
    let path = app.display().to_string();
    let text = std::fs::read_to_string(app).with_context(|| format!("reading {path}"))?;
    let spec = jigsaw_protocol::AppSpec::parse(&text, &path)?;
    for m in mig {
        if gpu.spec().profile_index(m).is_none() {
            bail!("--mig: `{m}` is not a MIG profile of {gpu}");
        }
    }
    if let Some(m) = mps.iter().find(|m| !(1..=4).contains(*m)) {
        bail!("--mps: {m} is not an MPS level (1-4)");
    }
    if let Some(b) = batch.iter().find(|b| **b == 0) {
        bail!("--batch: {b} is not a batch size");
    }
    let table = match curves {
        Some(p) => {
            let t = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            Some(jigsaw_protocol::ProfileTable::parse_csv(&t, &p.display().to_string())?)
        }
        None if executor == ExecutorKind::Timed => {
            bail!("--executor timed replays a table: give --curves FILE")
        }
        None => None,
    };
    let launcher: Arc<dyn Launcher> = Arc::new(ProcessLauncher::new(std::env::current_exe()?, executor));
    let job = ProfileRun {
        app: &spec,
        gpu,
        profiles: mig.to_vec(),
        mps: mps.to_vec(),
        batches: batch.to_vec(),
        reps,
        launcher,
        curves: table.as_ref(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let (now, skipped) = rt
        .block_on(run(&job, out, |k, n, c, r| {
            eprintln!(
                "[{k}/{n}] {}/{} {} mps {} batch {}: p95 {:.3} ms, {:.1} items/s",
                c.task, c.variant, c.mig_profile, c.mps, c.batch, r.p95_ms, r.throughput_rps
            );
        }))
        .map_err(|e| anyhow!(e))?;
    Ok(format!(
        "{}: {now} configurations measured, {skipped} already present (executor {})\n",
        out.display(),
        executor.name()
    ))
}
