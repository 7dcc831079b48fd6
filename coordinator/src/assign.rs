//! Mapping a plan's logical GPUs onto the cluster's physical GPUs, sticky to what runs now.
//!
//! The planner numbers GPUs 0..n; the cluster has concrete GPUs on nodes, each with a live
//! MIG layout. [`assign_gpus`] picks, for every logical GPU, a physical one so that as many
//! live instances as possible survive the change: an instance with the same (profile,
//! start, task, variant, MPS, batch) needs no action, one with the same (profile, start)
//! only restarts its workers, anything else is drained, destroyed and re-created. Physical
//! GPUs left without a logical GPU get an empty target. Pure and deterministic: ties break
//! by index.

use jigsaw_protocol::catalogue::GpuModel;
use jigsaw_protocol::plan::{GpuPlan, InstancePlan};

/// A physical GPU as the coordinator sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct PhysicalGpu {
    /// Node that owns it.
    pub node: String,
    /// GPU UUID.
    pub uuid: String,
    /// Model.
    pub model: GpuModel,
    /// Instances running now (as last reported).
    pub live: Vec<InstancePlan>,
}

/// Why a plan cannot be mapped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssignError {
    /// The plan uses more GPUs of its model than the cluster has alive: re-plan.
    #[error(
        "the plan needs {needed} {model} GPUs but only {available} are alive: re-plan with the current membership"
    )]
    NotEnoughGpus {
        /// Model.
        model: GpuModel,
        /// GPUs the plan uses.
        needed: usize,
        /// GPUs alive.
        available: usize,
    },
}

/// Target of one physical GPU.
#[derive(Debug, Clone, PartialEq)]
pub struct Assigned {
    /// Index into the physical GPUs.
    pub physical: usize,
    /// The logical GPU of the plan, or `None` (empty target).
    pub logical: Option<usize>,
    /// Target instances.
    pub instances: Vec<InstancePlan>,
}

fn same_slot(a: &InstancePlan, b: &InstancePlan) -> bool {
    a.mig_profile == b.mig_profile && a.start == b.start
}

fn same_work(a: &InstancePlan, b: &InstancePlan) -> bool {
    same_slot(a, b) && a.task == b.task && a.variant == b.variant && a.mps == b.mps && a.batch == b.batch
}

/// Score of running `target` on a GPU whose live layout is `live`: 2 per untouched
/// instance, 1 per kept instance whose workers restart.
pub fn keep_score(live: &[InstancePlan], target: &[InstancePlan]) -> u32 {
    target
        .iter()
        .map(|t| {
            if live.iter().any(|l| same_work(l, t)) {
                2
            } else if live.iter().any(|l| same_slot(l, t)) {
                1
            } else {
                0
            }
        })
        .sum()
}

/// Map every logical GPU of `plan_gpus` (all of `model`) to a distinct physical GPU of that
/// model; every physical GPU gets a target (possibly empty).
pub fn assign_gpus(
    model: GpuModel,
    plan_gpus: &[GpuPlan],
    physical: &[PhysicalGpu],
) -> Result<Vec<Assigned>, AssignError> {
    let candidates: Vec<usize> = (0..physical.len()).filter(|&j| physical[j].model == model).collect();
    if plan_gpus.len() > candidates.len() {
        return Err(AssignError::NotEnoughGpus { model, needed: plan_gpus.len(), available: candidates.len() });
    }
    // Greedy on scores, best first; ties by (logical, physical) index.
    let mut pairs: Vec<(u32, usize, usize)> = Vec::new();
    for (i, g) in plan_gpus.iter().enumerate() {
        for &j in &candidates {
            let s = keep_score(&physical[j].live, &g.instances);
            if s > 0 {
                pairs.push((s, i, j));
            }
        }
    }
    pairs.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let mut of_logical: Vec<Option<usize>> = vec![None; plan_gpus.len()];
    let mut taken = vec![false; physical.len()];
    for (_, i, j) in pairs {
        if of_logical[i].is_none() && !taken[j] {
            of_logical[i] = Some(j);
            taken[j] = true;
        }
    }
    // The rest go to the free GPUs with the fewest live instances (least to tear down).
    let mut free: Vec<usize> = candidates.iter().copied().filter(|&j| !taken[j]).collect();
    free.sort_by_key(|&j| (physical[j].live.len(), j));
    let mut free = free.into_iter();
    for slot in of_logical.iter_mut().filter(|s| s.is_none()) {
        let j = free.next().ok_or(AssignError::NotEnoughGpus {
            model,
            needed: plan_gpus.len(),
            available: candidates.len(),
        })?;
        *slot = Some(j);
        taken[j] = true;
    }
    let mut out: Vec<Assigned> =
        (0..physical.len()).map(|j| Assigned { physical: j, logical: None, instances: Vec::new() }).collect();
    for (i, j) in of_logical.into_iter().enumerate() {
        if let Some(j) = j {
            out[j].logical = Some(i);
            out[j].instances = plan_gpus[i].instances.clone();
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(profile: &str, start: u8, task: &str) -> InstancePlan {
        jigsaw_protocol::testing::instance(task, profile, start)
    }

    fn phys(node: &str, live: Vec<InstancePlan>) -> PhysicalGpu {
        PhysicalGpu { node: node.into(), uuid: format!("GPU-{node}"), model: GpuModel::H100_80gb, live }
    }

    #[test]
    fn keeps_running_layouts_where_they_are() {
        let a = vec![inst("4g.40gb", 0, "a"), inst("3g.40gb", 4, "b")];
        let b = vec![inst("7g.80gb", 0, "c")];
        let physical = vec![phys("n0", vec![]), phys("n1", b.clone()), phys("n2", a.clone())];
        let plan = vec![GpuPlan { gpu: 0, instances: a.clone() }, GpuPlan { gpu: 1, instances: b.clone() }];
        let out = assign_gpus(GpuModel::H100_80gb, &plan, &physical).expect("fits");
        assert_eq!(out[2].logical, Some(0));
        assert_eq!(out[1].logical, Some(1));
        assert_eq!(out[0].logical, None);
        assert!(out[0].instances.is_empty());
    }

    #[test]
    fn new_work_goes_to_the_emptiest_gpu_and_too_few_gpus_is_an_error() {
        let busy = vec![inst("7g.80gb", 0, "x")];
        let physical = vec![phys("n0", busy), phys("n1", vec![])];
        let plan = vec![GpuPlan { gpu: 0, instances: vec![inst("1g.10gb", 0, "a")] }];
        let out = assign_gpus(GpuModel::H100_80gb, &plan, &physical).expect("fits");
        assert_eq!(out[1].logical, Some(0));
        let three = vec![plan[0].clone(), plan[0].clone(), plan[0].clone()];
        assert!(matches!(
            assign_gpus(GpuModel::H100_80gb, &three, &physical),
            Err(AssignError::NotEnoughGpus { needed: 3, available: 2, .. })
        ));
    }

    #[test]
    fn every_logical_gpu_lands_on_a_distinct_physical_gpu() {
        let physical: Vec<PhysicalGpu> =
            (0..6).map(|i| phys(&format!("n{i}"), vec![inst("1g.10gb", i, "a")])).collect();
        let plan: Vec<GpuPlan> =
            (0..5).map(|i| GpuPlan { gpu: i, instances: vec![inst("1g.10gb", (i % 3) as u8, "a")] }).collect();
        let out = assign_gpus(GpuModel::H100_80gb, &plan, &physical).expect("fits");
        let mut logical: Vec<usize> = out.iter().filter_map(|a| a.logical).collect();
        logical.sort_unstable();
        assert_eq!(logical, vec![0, 1, 2, 3, 4]);
    }
}
