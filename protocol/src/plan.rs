//! The plan: what runs where. Produced by the planner, checked by the independent
//! evaluator, serialised as JSON by `jigsaw plan --json` (documented in
//! `docs/plan-json.md`) and, later, pushed to agents over the wire.

use crate::catalogue::GpuModel;
use serde::{Deserialize, Serialize};

/// One MIG instance of the plan, with the model replicas (MPS processes) inside it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstancePlan {
    /// MIG profile name.
    pub mig_profile: String,
    /// First memory slice of the placement.
    pub start: u8,
    /// Slice cost `s_n` of the instance (see `MigProfile::slice_cost`).
    pub slices: u8,
    /// MPS processes (identical replicas of the same variant) inside the instance.
    pub mps: u8,
    /// Task served.
    pub task: String,
    /// Variant served.
    pub variant: String,
    /// Maximum batch size.
    pub batch: u32,
    /// Profiled p95 batch latency, ms.
    pub p95_ms: f64,
    /// Profiled segment throughput, items/s.
    pub throughput_rps: f64,
    /// Application served (empty in single-app plans written before this field existed).
    #[serde(default)]
    pub app: String,
    /// Items/s the plan routes to this instance at the planned demand (≤ `throughput_rps`);
    /// the data plane splits a task's items over its instances in proportion to it. 0 in
    /// plans written before this field existed: those route in proportion to throughput.
    #[serde(default)]
    pub load_rps: f64,
}

/// One physical GPU of the plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuPlan {
    /// GPU index in the cluster (0-based).
    pub gpu: usize,
    /// Instances on the GPU, sorted by start slot.
    pub instances: Vec<InstancePlan>,
}

/// Share of one variant inside a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VariantShare {
    /// Variant name.
    pub variant: String,
    /// Variant accuracy.
    pub accuracy: f64,
    /// MIG instances running it.
    pub instances: u32,
    /// Its capacity, items/s.
    pub capacity_rps: f64,
    /// Routing weight: its share of the task's items at the planned demand (the sum of its
    /// instances' `load_rps` over the task's).
    pub weight: f64,
}

/// Per-task summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskPlan {
    /// Task name.
    pub task: String,
    /// Latency budget L̂(t) the planner allowed (max batch p95 of any active instance), ms.
    pub latency_budget_ms: f64,
    /// The slowest active instance's p95, ms (≤ the budget).
    pub slowest_p95_ms: f64,
    /// Demand reaching the task, items/s (paper Eq. 5, with the fan-out weighted by the
    /// items each variant is routed).
    pub demand_rps: f64,
    /// Capacity of the task's instances, items/s.
    pub capacity_rps: f64,
    /// Compute slices used by the task.
    pub slices: u32,
    /// Variant mix.
    pub variants: Vec<VariantShare>,
}

/// Solver statistics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SolveStats {
    /// Wall time of the whole planner run, ms.
    pub solve_ms: f64,
    /// Relative optimality gap of the returned plan within the planner's model
    /// (0 = proven optimal).
    pub gap: f64,
    /// Best objective found.
    pub objective: f64,
    /// Best bound on the objective.
    pub bound: f64,
    /// Latency-budget assignments enumerated / solved as MILPs / pruned by bound.
    pub splits_total: usize,
    /// MILPs solved.
    pub splits_solved: usize,
    /// Splits skipped because their LP bound could not beat the incumbent.
    pub splits_pruned: usize,
    /// Whether the latency levels were every distinct profiled latency (`exact`) or a grid.
    pub latency_levels: String,
    /// Anything the caller should know about how this plan was found (e.g. a fallback).
    /// (No `skip_serializing_if`: the wire format is positional bincode.)
    #[serde(default)]
    pub note: Option<String>,
}

/// A complete plan for one application.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// Application name.
    pub app: String,
    /// Search space the plan was found in (`A+S+T`).
    pub space: String,
    /// GPU model.
    pub gpu_model: GpuModel,
    /// GPUs available.
    pub gpus_available: usize,
    /// Root demand planned for, requests/s.
    pub demand_rps: f64,
    /// Predicted system accuracy as a fraction of the maximum (paper Eqs. 10–12).
    pub accuracy: f64,
    /// The accuracy SLO.
    pub accuracy_slo: f64,
    /// End-to-end latency bound: max over paths of Σ 2·L̂(t), ms.
    pub latency_bound_ms: f64,
    /// The latency SLO.
    pub latency_slo_ms: f64,
    /// Slices used: Σ `s_n` over instances.
    pub slices_used: u32,
    /// Physical compute slices of the instances (≤ 7 per GPU).
    pub compute_slices: u32,
    /// GPUs with at least one instance.
    pub gpus_used: usize,
    /// Per-task summary.
    pub tasks: Vec<TaskPlan>,
    /// Per-GPU layout (only GPUs with instances).
    pub gpus: Vec<GpuPlan>,
    /// Solver statistics.
    pub stats: SolveStats,
}
