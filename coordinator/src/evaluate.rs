//! The independent evaluator: checks a [`Plan`] against the paper's original non-linear
//! constraints, recomputing everything from the plan's instances, the app spec, the
//! profile table and the catalogue. It shares no code with the planner's model.
//!
//! Checked (paper §3.2, with the readings stated in `docs/planner.md`):
//! * every instance matches a profile row (the plan's latency and throughput are the
//!   profiled ones) and a variant of its task;
//! * placement per GPU is legal (start lists, disjoint memory slices, caps), GPU indices are
//!   distinct and below the GPUs available;
//! * Eq. 2–3: `L̂(t)` = slowest active instance; every path `Σ 2·L̂(t) ≤ SLO`;
//! * routing: a task's items are split over its instances in proportion to their
//!   `load_rps` (the routing table's weights), or to throughput when none of the task's
//!   instances carries a load (the paper's capacity weighting);
//! * Eq. 4–6: `F̂(t,t')` = routing-weighted mean fan-out, `R̂(t) = Σ R̂(t')·F̂(t',t)`,
//!   capacity `Σ M·H ≥ R̂(t)` for every task, and every instance's share of `R̂(t)` within
//!   its throughput; the loads of a task routed by load add up to `R̂(t)`;
//! * Eq. 10–13: `Â(t)` = routing-weighted accuracy, `A_p = Π Â(t)`,
//!   `A_obj = Σ f_p A_p / A_max ≥ SLO_a`;
//! * the plan's own summary figures (slices, GPUs used, accuracy) match the recomputation.

use jigsaw_protocol::app::AppSpec;
use jigsaw_protocol::catalogue::Placement;
use jigsaw_protocol::plan::Plan;
use jigsaw_protocol::profile::ProfileTable;
use std::collections::BTreeSet;

/// The evaluator's findings.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Every violated constraint, in words.
    pub violations: Vec<String>,
    /// A_obj as a fraction of the maximum.
    pub accuracy: f64,
    /// Per path: Σ 2·L̂(t), ms.
    pub path_latency_ms: Vec<f64>,
    /// Per task: demand R̂(t), items/s.
    pub demand: Vec<f64>,
    /// Per task: capacity, items/s.
    pub capacity: Vec<f64>,
    /// Compute slices used.
    pub slices: u32,
}

impl Report {
    /// Whether every constraint holds.
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Relative tolerance for floating-point comparisons.
pub const TOL: f64 = 1e-6;

/// Step of the planned loads (`InstancePlan::load_rps`), items/s: per instance, sums of
/// them may be off by this much.
pub const LOAD_STEP: f64 = 1e-3;

/// Evaluate `plan` for `app` against `profiles`.
pub fn evaluate(plan: &Plan, app: &AppSpec, profiles: &ProfileTable) -> Report {
    let mut bad = Vec::new();
    let spec = plan.gpu_model.spec();
    let nt = app.tasks.len();
    let mut cap_v: Vec<Vec<f64>> = app.tasks.iter().map(|t| vec![0.0; t.variants.len()]).collect();
    // Per task, its instances as (variant, throughput, planned load, where).
    let mut insts: Vec<Vec<(usize, f64, f64, String)>> = vec![Vec::new(); nt];
    let mut lhat = vec![0.0f64; nt];
    let mut slices = 0u32;
    let mut seen_gpu = BTreeSet::new();
    for g in &plan.gpus {
        if g.gpu >= plan.gpus_available {
            bad.push(format!("gpu {} is beyond the {} GPUs available", g.gpu, plan.gpus_available));
        }
        if !seen_gpu.insert(g.gpu) {
            bad.push(format!("gpu {} appears twice", g.gpu));
        }
        let mut placed: Vec<Placement> = Vec::new();
        let compute: u32 = g
            .instances
            .iter()
            .filter_map(|i| spec.profile_index(&i.mig_profile))
            .map(|p| u32::from(spec.profiles[p].compute_slices))
            .sum();
        if compute > 7 {
            bad.push(format!("gpu {}: {compute} compute slices > 7", g.gpu));
        }
        for i in &g.instances {
            let Some(p) = spec.profile_index(&i.mig_profile) else {
                bad.push(format!("gpu {}: unknown MIG profile {}", g.gpu, i.mig_profile));
                continue;
            };
            let pl = Placement { profile: p, start: i.start };
            if let Err(e) = spec.check_placement(&placed, pl) {
                bad.push(format!("gpu {}: {e}", g.gpu));
            }
            placed.push(pl);
            slices += u32::from(spec.profiles[p].slice_cost());
            let Some(t) = app.task_index(&i.task) else {
                bad.push(format!("gpu {}: unknown task {}", g.gpu, i.task));
                continue;
            };
            let Some(v) = app.tasks[t].variants.iter().position(|v| v.name == i.variant) else {
                bad.push(format!("gpu {}: task {} has no variant {}", g.gpu, i.task, i.variant));
                continue;
            };
            match profiles.get(&i.task, &i.variant, plan.gpu_model, &i.mig_profile, i.mps, i.batch) {
                None => bad.push(format!(
                    "gpu {}: no profile row for {}/{} on {} mps {} batch {}",
                    g.gpu, i.task, i.variant, i.mig_profile, i.mps, i.batch
                )),
                Some(r) => {
                    if (r.p95_ms - i.p95_ms).abs() > TOL * r.p95_ms
                        || (r.throughput_rps - i.throughput_rps).abs() > TOL * r.throughput_rps
                    {
                        bad.push(format!(
                            "gpu {}: {}/{} figures differ from the profile row",
                            g.gpu, i.task, i.variant
                        ));
                    }
                    cap_v[t][v] += r.throughput_rps;
                    let load = if i.load_rps.is_finite() { i.load_rps } else { -1.0 };
                    if load < 0.0 {
                        bad.push(format!("gpu {}: {}/{} has load {} items/s", g.gpu, i.task, i.variant, i.load_rps));
                    }
                    let at = format!("gpu {} slot {} ({}/{})", g.gpu, i.start, i.task, i.variant);
                    insts[t].push((v, r.throughput_rps, load.max(0.0), at));
                    lhat[t] = lhat[t].max(r.p95_ms);
                }
            }
        }
    }
    // Latency per path.
    let paths = app.paths();
    let mut path_latency_ms = Vec::new();
    for p in &paths {
        let l: f64 = p.iter().map(|&t| 2.0 * lhat[t]).sum();
        if l > app.latency_slo_ms * (1.0 + TOL) {
            let names: Vec<&str> = p.iter().map(|&t| app.tasks[t].name.as_str()).collect();
            bad.push(format!(
                "path {}: 2 x sum of slowest p95 = {l:.2} ms > SLO {:.2} ms",
                names.join(" -> "),
                app.latency_slo_ms
            ));
        }
        path_latency_ms.push(l);
    }
    // Routing weights: the planned loads where a task has any, else throughput.
    let by_load: Vec<bool> = insts.iter().map(|is| is.iter().any(|x| x.2 > 0.0)).collect();
    let weight = |t: usize, x: &(usize, f64, f64, String)| if by_load[t] { x.2 } else { x.1 };
    let mut w_v: Vec<Vec<f64>> = app.tasks.iter().map(|t| vec![0.0; t.variants.len()]).collect();
    for (t, is) in insts.iter().enumerate() {
        for x in is {
            w_v[t][x.0] += weight(t, x);
        }
    }
    let wsum: Vec<f64> = w_v.iter().map(|v| v.iter().sum()).collect();
    // Demand propagation in topological order (Kahn's algorithm, independent of the planner).
    let capacity: Vec<f64> = cap_v.iter().map(|v| v.iter().sum()).collect();
    let mut indeg: Vec<usize> = (0..nt).map(|t| app.parents(t).len()).collect();
    let mut ready: Vec<usize> = (0..nt).filter(|&t| indeg[t] == 0).collect();
    let mut demand = vec![0.0; nt];
    for &r in &ready {
        demand[r] = plan.demand_rps;
    }
    while let Some(t) = ready.pop() {
        for c in app.children(t) {
            let fhat = if wsum[t] > 0.0 {
                w_v[t].iter().enumerate().map(|(v, w)| w * app.fanout(t, v, c)).sum::<f64>() / wsum[t]
            } else {
                app.fanout(t, app.best_variant(t), c)
            };
            demand[c] += demand[t] * fhat;
            indeg[c] -= 1;
            if indeg[c] == 0 {
                ready.push(c);
            }
        }
    }
    for t in 0..nt {
        if capacity[t] < demand[t] * (1.0 - TOL) {
            bad.push(format!(
                "task {}: capacity {:.3} < demand {:.3} items/s",
                app.tasks[t].name, capacity[t], demand[t]
            ));
        }
        // Plans state loads to 0.001 items/s.
        let slack = LOAD_STEP * insts[t].len() as f64;
        for x in &insts[t] {
            let share = if wsum[t] > 0.0 { demand[t] * weight(t, x) / wsum[t] } else { 0.0 };
            if share > x.1 * (1.0 + TOL) + slack {
                bad.push(format!("{}: routed {share:.3} > throughput {:.3} items/s", x.3, x.1));
            }
        }
        let planned: f64 = insts[t].iter().map(|x| x.2).sum();
        if by_load[t] && (planned - demand[t]).abs() > TOL * demand[t] + slack {
            bad.push(format!(
                "task {}: planned loads add up to {planned:.3}, not its demand {:.3} items/s",
                app.tasks[t].name, demand[t]
            ));
        }
    }
    // Accuracy.
    let amax: Vec<f64> =
        (0..nt).map(|t| app.tasks[t].variants.iter().map(|v| v.accuracy).fold(0.0, f64::max)).collect();
    let ahat: Vec<f64> = (0..nt)
        .map(|t| {
            if wsum[t] > 0.0 {
                w_v[t].iter().zip(&app.tasks[t].variants).map(|(w, v)| w * v.accuracy).sum::<f64>() / wsum[t]
            } else {
                0.0
            }
        })
        .collect();
    let leaf_mult: Vec<f64> = paths
        .iter()
        .map(|p| {
            p.windows(2)
                .map(|w| {
                    let best = app.tasks[w[0]]
                        .variants
                        .iter()
                        .enumerate()
                        .max_by(|a, b| a.1.accuracy.total_cmp(&b.1.accuracy).then(b.0.cmp(&a.0)))
                        .map_or(0, |x| x.0);
                    app.fanout(w[0], best, w[1])
                })
                .product()
        })
        .collect();
    let total: f64 = leaf_mult.iter().sum();
    let f: Vec<f64> =
        leaf_mult.iter().map(|m| if total > 0.0 { m / total } else { 1.0 / paths.len() as f64 }).collect();
    let a_max: f64 = paths.iter().zip(&f).map(|(p, fp)| fp * p.iter().map(|&t| amax[t]).product::<f64>()).sum();
    let a_obj: f64 =
        paths.iter().zip(&f).map(|(p, fp)| fp * p.iter().map(|&t| ahat[t]).product::<f64>()).sum::<f64>() / a_max;
    if a_obj < app.accuracy_slo * (1.0 - TOL) {
        bad.push(format!("accuracy {a_obj:.5} of maximum < SLO {:.5}", app.accuracy_slo));
    }
    // The plan's own figures.
    if plan.slices_used != slices {
        bad.push(format!("plan says {} slices, instances use {slices}", plan.slices_used));
    }
    if plan.gpus_used != plan.gpus.iter().filter(|g| !g.instances.is_empty()).count() {
        bad.push("gpus_used does not match the GPUs with instances".into());
    }
    if (plan.accuracy - a_obj).abs() > 1e-6 {
        bad.push(format!("plan says accuracy {:.6}, recomputed {a_obj:.6}", plan.accuracy));
    }
    Report { violations: bad, accuracy: a_obj, path_latency_ms, demand, capacity, slices }
}
