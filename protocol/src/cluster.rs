//! The cluster's replicated state and the commands that change it.
//!
//! The coordinator is the Raft leader of the coordinator-eligible agents; every entry of the
//! Raft log is a [`ClusterCommand`] and every replica applies it to its [`ClusterState`] with
//! [`ClusterState::apply`], a pure function. What is replicated:
//! * registered applications (their spec and profile texts, and the demand to plan for);
//! * cluster membership as the coordinator last decided it (each node's address, GPUs and
//!   whether it is alive);
//! * the current plan and its **epoch**, which only ever grows: a [`ClusterCommand::CommitPlan`]
//!   must carry exactly `epoch + 1`, so two coordinators of different terms can never commit
//!   two plans with the same epoch, and an agent that fences on the epoch never applies an
//!   older plan after a newer one.
//!
//! Application texts are stored as submitted (TOML spec and profile CSV) so the state is
//! self-describing and every replica parses them the same way.

use crate::app::{AppError, AppSpec};
use crate::catalogue::GpuModel;
use crate::plan::InstancePlan;
use crate::profile::{ProfileError, ProfileTable};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};

/// One GPU as its agent reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuInventory {
    /// GPU UUID.
    pub uuid: String,
    /// Model.
    pub model: GpuModel,
    /// Live MIG instances with what runs on them (as InstancePlan: profile, start, work).
    pub live: Vec<InstancePlan>,
}

/// A member node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Member {
    /// Node id.
    pub node: String,
    /// Address (`ip:port`) the node listens on.
    pub addr: String,
    /// Whether the node is a Raft voter (coordinator-eligible).
    pub eligible: bool,
    /// GPUs (UUID, model); live layouts here are only as of the last membership change.
    pub gpus: Vec<GpuInventory>,
    /// Whether the coordinator considers the node alive.
    pub alive: bool,
}

/// A registered application.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppEntry {
    /// Application name (from the spec).
    pub name: String,
    /// The spec, as TOML text.
    pub spec_toml: String,
    /// The profile table, as CSV text.
    pub profiles_csv: String,
    /// Root demand to plan for, requests/s: at registration the operator's figure; later
    /// the demand the coordinator set from measurements ([`ClusterCommand::SetDemand`]).
    pub demand_rps: f64,
    /// Registered with `--rps auto`: the registered figure is only the initial demand, not
    /// a floor for the measured one. (Added later; absent in older states: `false`.)
    #[serde(default)]
    pub demand_auto: bool,
}

/// Largest app spec a registration may carry, bytes.
pub const MAX_APP_SPEC: usize = 256 * 1024;
/// Largest profile table a registration may carry, bytes.
pub const MAX_APP_PROFILES: usize = 4 * 1024 * 1024;
/// Largest Raft log entry a registration may become, bytes, as the agent encodes it for an
/// AppendEntries RPC (checked at registration, against the real encoding). Half a frame
/// ([`crate::wire::MAX_FRAME`]): an AppendEntries of one entry always fits, with room to
/// spare for the envelope, so replication can always make progress one entry at a time.
pub const MAX_ENTRY: usize = crate::wire::MAX_FRAME / 2;

/// Why an app registration is invalid (the message names the file, line or field at fault).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InvalidApp {
    /// The spec or the profiles exceed their size cap.
    #[error("{name} is too large: spec {spec} bytes (limit {MAX_APP_SPEC}), profiles {profiles} bytes (limit {MAX_APP_PROFILES})")]
    TooLarge {
        /// What was too large (`app `x``, or the spec's file).
        name: String,
        /// Spec size.
        spec: usize,
        /// Profiles size.
        profiles: usize,
    },
    /// The spec does not parse or is inconsistent.
    #[error(transparent)]
    Spec(#[from] AppError),
    /// The registration and the spec disagree on the name.
    #[error("registration names app `{registered}` but the spec names `{spec}`")]
    NameMismatch {
        /// Name in the registration.
        registered: String,
        /// Name in the spec.
        spec: String,
    },
    /// The demand is not a positive number.
    #[error("demand must be a positive number of requests/s, got {0}")]
    Demand(f64),
    /// The profile CSV does not parse.
    #[error(transparent)]
    Profiles(#[from] ProfileError),
    /// A task has no profile row.
    #[error("the profiles have no row for task `{0}`")]
    NoProfile(String),
    /// The registration, encoded as the Raft log entry that replicates it, exceeds
    /// [`MAX_ENTRY`] (or the cap the caller checks against).
    #[error("app `{name}` does not fit one Raft log entry: it encodes to {size} bytes, the cap is {cap} bytes (shrink the profile table or the spec)")]
    EntryTooLarge {
        /// App name.
        name: String,
        /// Encoded entry size, bytes.
        size: usize,
        /// The cap, bytes.
        cap: usize,
    },
}

/// An app registration in parsed form.
#[derive(Debug, Clone)]
pub struct ParsedApp {
    /// The spec.
    pub spec: AppSpec,
    /// The profiles.
    pub profiles: ProfileTable,
}

impl AppEntry {
    /// Build and check a registration from its two texts, parsing each once; errors name
    /// `spec_origin` / `profiles_origin` (file paths, for a CLI).
    pub fn from_sources(
        spec_toml: String,
        spec_origin: &str,
        profiles_csv: String,
        profiles_origin: &str,
        demand_rps: f64,
    ) -> Result<(AppEntry, ParsedApp), InvalidApp> {
        if spec_toml.len() > MAX_APP_SPEC || profiles_csv.len() > MAX_APP_PROFILES {
            let name = spec_origin.to_string();
            return Err(InvalidApp::TooLarge { name, spec: spec_toml.len(), profiles: profiles_csv.len() });
        }
        let spec = AppSpec::parse(&spec_toml, spec_origin)?;
        let entry = AppEntry { name: spec.name.clone(), spec_toml, profiles_csv, demand_rps, demand_auto: false };
        let parsed = entry.check(spec, profiles_origin)?;
        Ok((entry, parsed))
    }

    /// Parse and check the registration: sizes, spec, name, demand, and a profile row for
    /// every task. The one place that says what a valid registration is.
    pub fn parse(&self) -> Result<ParsedApp, InvalidApp> {
        if self.spec_toml.len() > MAX_APP_SPEC || self.profiles_csv.len() > MAX_APP_PROFILES {
            return Err(self.too_large());
        }
        let spec = AppSpec::parse(&self.spec_toml, &format!("app `{}`", self.name))?;
        self.check(spec, &format!("profiles of `{}`", self.name))
    }

    fn too_large(&self) -> InvalidApp {
        let name = format!("app `{}`", self.name);
        InvalidApp::TooLarge { name, spec: self.spec_toml.len(), profiles: self.profiles_csv.len() }
    }

    /// The checks after the spec parsed (sizes are checked before parsing).
    fn check(&self, spec: AppSpec, profiles_origin: &str) -> Result<ParsedApp, InvalidApp> {
        if spec.name != self.name {
            return Err(InvalidApp::NameMismatch { registered: self.name.clone(), spec: spec.name });
        }
        if !(self.demand_rps.is_finite() && self.demand_rps > 0.0) {
            return Err(InvalidApp::Demand(self.demand_rps));
        }
        let profiles = ProfileTable::parse_csv(&self.profiles_csv, profiles_origin)?;
        if let Some(t) = spec.tasks.iter().find(|t| !profiles.rows().any(|r| r.task == t.name)) {
            return Err(InvalidApp::NoProfile(t.name.clone()));
        }
        Ok(ParsedApp { spec, profiles })
    }
}

/// How one application fared in a plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppPlacement {
    /// Application.
    pub app: String,
    /// GPUs it got.
    pub gpus: usize,
    /// Demand planned for, requests/s (may be below the requested demand, see `note`).
    pub planned_rps: f64,
    /// Accuracy of the plan.
    pub accuracy: f64,
    /// Why the app is not (fully) placed, or other remarks.
    pub note: Option<String>,
    /// Priority (from the spec); lower priorities are shed first.
    #[serde(default)]
    pub priority: u32,
    /// Demand registered, requests/s.
    #[serde(default)]
    pub requested_rps: f64,
    /// Compute slices its instances use.
    #[serde(default)]
    pub compute_slices: u32,
    /// Instances.
    #[serde(default)]
    pub instances: u32,
    /// Root demand still served after the loss of the single worst node (until the
    /// re-plan), requests/s, and that node; `None` without a plan.
    #[serde(default)]
    pub worst_node_loss: Option<(String, f64)>,
}

impl AppPlacement {
    /// An app left out, with why.
    pub fn unplaced(app: &str, requested_rps: f64, note: String) -> AppPlacement {
        AppPlacement {
            app: app.into(),
            gpus: 0,
            planned_rps: 0.0,
            accuracy: 0.0,
            note: Some(note),
            priority: 0,
            requested_rps,
            compute_slices: 0,
            instances: 0,
            worst_node_loss: None,
        }
    }

    /// Requested minus planned demand, requests/s (what was shed).
    pub fn shed_rps(&self) -> f64 {
        (self.requested_rps - self.planned_rps).max(0.0)
    }
}

/// How a plan changes the live instances (compared by node, GPU, profile, start, app, task
/// and variant).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanChanges {
    /// Instances that stay where they run.
    pub kept: u32,
    /// Instances destroyed in one place and created in another for the same (app, task,
    /// variant).
    pub moved: u32,
    /// Instances created beyond the moved ones.
    pub created: u32,
    /// Instances destroyed beyond the moved ones.
    pub destroyed: u32,
}

/// Figures of how a cluster plan was found.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterPlanStats {
    /// GPUs with at least one instance.
    pub gpus_used: u32,
    /// Compute slices used.
    pub compute_slices: u32,
    /// ⌈Σ per-app compute slices (each app planned alone) / 7⌉.
    pub lower_bound_gpus: u32,
    /// The LP bound of the joint MILP on GPUs (for the chosen latency splits).
    pub lp_bound_gpus: u32,
    /// Planner wall time, ms.
    pub solve_ms: f64,
    /// Changes against the live layouts.
    pub changes: PlanChanges,
    /// Remarks (spread dropped, apps shed, fallbacks).
    pub notes: Vec<String>,
}

/// A committed cluster plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterPlan {
    /// Fencing epoch.
    pub epoch: u64,
    /// What the plan was computed from ([`ClusterState::plan_inputs`]).
    pub inputs: String,
    /// Target per node, per GPU UUID.
    pub nodes: BTreeMap<String, BTreeMap<String, Vec<InstancePlan>>>,
    /// Per-application outcome.
    pub apps: Vec<AppPlacement>,
    /// How it was found.
    #[serde(default)]
    pub stats: ClusterPlanStats,
}

/// What the coordinator knows about an app's demand beyond its entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DemandRecord {
    /// The demand the operator registered, requests/s.
    pub registered_rps: f64,
    /// Why the planned demand (`AppEntry::demand_rps`) is what it is (`registered`, or the
    /// re-plan policy's reason).
    pub reason: String,
    /// Demand changes since registration.
    pub changes: u64,
}

/// Smallest planned demand, requests/s (a registration must be positive).
pub const MIN_PLANNED_RPS: f64 = 0.01;

/// Cluster-wide settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterConfig {
    /// A node silent for this long is declared dead, ms.
    pub dead_after_ms: u64,
    /// Planner search space (`A+S+T`, …).
    pub space: String,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig { dead_after_ms: 3_000, space: "A+S+T".into() }
    }
}

/// An operator request's id, chosen by the client: a random per-process `client` part and a
/// sequence number. A client that retries a request (its reply was lost) sends the same id,
/// and the state machine answers the retry with the first outcome instead of applying the
/// change again ([`ClusterCommand::Once`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RequestId {
    /// Random per client process.
    pub client: u64,
    /// Sequence number within the client.
    pub seq: u64,
}

impl RequestId {
    /// A fresh id: this process's random client part and the next sequence number.
    pub fn fresh() -> RequestId {
        use std::hash::{BuildHasher, Hasher};
        use std::sync::atomic::{AtomicU64, Ordering};
        static CLIENT: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
        static SEQ: AtomicU64 = AtomicU64::new(1);
        let client = *CLIENT.get_or_init(|| {
            // std's RandomState is keyed from the OS's randomness; mix in the pid and the time
            // as well so two processes never share a client part in practice.
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u32(std::process::id());
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            h.write_u128(now.as_nanos());
            h.finish()
        });
        RequestId { client, seq: SEQ.fetch_add(1, Ordering::Relaxed) }
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}-{}", self.client, self.seq)
    }
}

/// How many operator request ids (with their outcomes) the state remembers.
pub const RECENT_REQUESTS: usize = 256;

/// A change to the replicated state (one Raft log entry).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ClusterCommand {
    /// Register or replace an application.
    PutApp(AppEntry),
    /// Remove an application.
    RemoveApp {
        /// Name.
        name: String,
    },
    /// Add a member or update its address, GPUs or liveness.
    PutMember(Member),
    /// Declare a member dead (its GPUs leave the next plan).
    MarkDown {
        /// Node id.
        node: String,
    },
    /// Replace the cluster settings.
    SetConfig(ClusterConfig),
    /// Commit a plan; its epoch must be exactly the current epoch + 1.
    CommitPlan(ClusterPlan),
    /// An operator's change, applied at most once per request id: applying a `Once` whose
    /// id the state remembers ([`ClusterState::requests`]) changes nothing and returns the
    /// outcome recorded the first time. (Appended after the JSON log format shipped, so
    /// existing logs still decode.)
    Once {
        /// The operator request's id.
        id: RequestId,
        /// The change.
        command: Box<ClusterCommand>,
    },
    /// The coordinator's new planned demand for `app` from measured load (its re-plan
    /// policy decided it): sets `AppEntry::demand_rps`, raised to the registered demand
    /// unless the app was registered with `demand_auto`, so `plan_inputs` changes and the
    /// app is re-planned. Ignored for an unknown app or a rate that is not a positive
    /// number. Idempotent. (Appended later, so existing logs still decode.)
    SetDemand {
        /// App.
        app: String,
        /// Requests/s.
        rps: f64,
        /// Why (for `status`).
        reason: String,
    },
}

/// What applying a command did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandOutcome {
    /// Whether the command changed the state.
    pub applied: bool,
    /// Words for the caller.
    pub message: String,
    /// The plan epoch after the command.
    pub epoch: u64,
}

/// The replicated state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterState {
    /// Applications by name.
    pub apps: BTreeMap<String, AppEntry>,
    /// Members by node id.
    pub members: BTreeMap<String, Member>,
    /// Settings.
    pub config: ClusterConfig,
    /// The current plan.
    pub plan: Option<ClusterPlan>,
    /// The current plan epoch (0 = no plan yet).
    pub epoch: u64,
    /// The latest [`RECENT_REQUESTS`] operator request ids applied, oldest first, with their
    /// outcomes: a retried request is answered from here.
    #[serde(default)]
    pub requests: VecDeque<(RequestId, CommandOutcome)>,
    /// Per app: registered demand and why its planned demand is what it is (an app
    /// registered before this field existed has none: its entry's demand is the registered one).
    #[serde(default)]
    pub demand: BTreeMap<String, DemandRecord>,
}

impl ClusterState {
    /// Apply one command. Deterministic: every replica gets the same outcome.
    pub fn apply(&mut self, cmd: &ClusterCommand) -> CommandOutcome {
        let (applied, message) = match cmd {
            ClusterCommand::Once { id, command } => {
                if let Some((_, first)) = self.requests.iter().find(|(r, _)| r == id) {
                    return first.clone();
                }
                let outcome = self.apply(command);
                if self.requests.len() >= RECENT_REQUESTS {
                    self.requests.pop_front();
                }
                self.requests.push_back((*id, outcome.clone()));
                return outcome;
            }
            ClusterCommand::PutApp(app) => {
                let verb = if self.apps.contains_key(&app.name) { "replaced" } else { "registered" };
                self.apps.insert(app.name.clone(), app.clone());
                let record = DemandRecord { registered_rps: app.demand_rps, reason: "registered".into(), changes: 0 };
                self.demand.insert(app.name.clone(), record);
                let auto = if app.demand_auto { " (auto)" } else { "" };
                (true, format!("app `{}` {verb} at {:.1} req/s{auto}", app.name, app.demand_rps))
            }
            ClusterCommand::RemoveApp { name } => match self.apps.remove(name) {
                Some(_) => {
                    self.demand.remove(name);
                    (true, format!("app `{name}` removed"))
                }
                None => (false, format!("no app named `{name}`")),
            },
            ClusterCommand::SetDemand { app, rps, reason } => self.set_demand(app, *rps, reason),
            ClusterCommand::PutMember(m) => {
                let same = self.members.get(&m.node) == Some(m);
                self.members.insert(m.node.clone(), m.clone());
                (!same, format!("member `{}` at {} ({} GPUs, alive: {})", m.node, m.addr, m.gpus.len(), m.alive))
            }
            ClusterCommand::MarkDown { node } => match self.members.get_mut(node) {
                Some(m) if m.alive => {
                    m.alive = false;
                    (true, format!("member `{node}` marked down"))
                }
                Some(_) => (false, format!("member `{node}` was already down")),
                None => (false, format!("no member `{node}`")),
            },
            ClusterCommand::SetConfig(c) => {
                self.config = c.clone();
                (true, "cluster config replaced".to_string())
            }
            ClusterCommand::CommitPlan(p) => {
                if p.epoch != self.epoch + 1 {
                    (false, format!("plan epoch {} rejected: the current epoch is {}", p.epoch, self.epoch))
                } else {
                    self.epoch = p.epoch;
                    self.plan = Some(p.clone());
                    (true, format!("plan epoch {} committed", p.epoch))
                }
            }
        };
        CommandOutcome { applied, message, epoch: self.epoch }
    }

    /// The demand registered for `app`, requests/s (its entry's demand when no record).
    pub fn registered_rps(&self, app: &str) -> Option<f64> {
        let entry = self.apps.get(app)?;
        Some(self.demand.get(app).map_or(entry.demand_rps, |d| d.registered_rps))
    }

    /// The lowest demand `app` may be planned for: its registered demand, or
    /// [`MIN_PLANNED_RPS`] when it was registered with `demand_auto`.
    pub fn floor_rps(&self, app: &str) -> Option<f64> {
        let entry = self.apps.get(app)?;
        Some(if entry.demand_auto { MIN_PLANNED_RPS } else { self.registered_rps(app)?.max(MIN_PLANNED_RPS) })
    }

    fn set_demand(&mut self, app: &str, rps: f64, reason: &str) -> (bool, String) {
        let Some(floor) = self.floor_rps(app) else { return (false, format!("no app named `{app}`")) };
        if !(rps.is_finite() && rps > 0.0) {
            return (false, format!("demand for `{app}` must be a positive number, got {rps}"));
        }
        let registered = self.registered_rps(app).unwrap_or(rps);
        let rps = rps.max(floor);
        let Some(entry) = self.apps.get_mut(app) else { return (false, format!("no app named `{app}`")) };
        if entry.demand_rps == rps {
            return (false, format!("app `{app}` is already planned at {rps:.2} req/s"));
        }
        entry.demand_rps = rps;
        let record = self.demand.entry(app.to_string()).or_insert(DemandRecord {
            registered_rps: registered,
            reason: String::new(),
            changes: 0,
        });
        record.reason = reason.to_string();
        record.changes += 1;
        (true, format!("app `{app}` planned at {rps:.2} req/s ({reason})"))
    }

    /// Alive members that have GPUs, in id order.
    pub fn alive_members(&self) -> impl Iterator<Item = &Member> {
        self.members.values().filter(|m| m.alive)
    }

    /// A canonical description of what a plan depends on: the apps (name, demand and a
    /// digest of their texts) and the alive GPUs. A plan is current when its `inputs` equal
    /// this; live layouts are deliberately left out (they change as plans are applied).
    pub fn plan_inputs(&self) -> String {
        let mut s = format!("space={};", self.config.space);
        for a in self.apps.values() {
            s += &format!("app={}@{}#{:016x};", a.name, a.demand_rps, fnv64(&[&a.spec_toml, &a.profiles_csv]));
        }
        for m in self.alive_members() {
            for g in &m.gpus {
                s += &format!("gpu={}/{}/{};", m.node, g.uuid, g.model);
            }
        }
        s
    }

    /// The part of the current plan for `node` (empty when it has none).
    pub fn part_for(&self, node: &str) -> BTreeMap<String, Vec<InstancePlan>> {
        self.plan.as_ref().and_then(|p| p.nodes.get(node)).cloned().unwrap_or_default()
    }
}

/// FNV-1a 64 over several strings (separated), for stable digests across processes.
pub fn fnv64(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain(std::iter::once(0xff)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(epoch: u64) -> ClusterPlan {
        ClusterPlan { epoch, inputs: String::new(), nodes: BTreeMap::new(), apps: vec![], stats: Default::default() }
    }

    #[test]
    fn registrations_are_checked_in_one_place() {
        let spec = include_str!("../../examples/apps/social.toml").to_string();
        let csv = include_str!("../../examples/profiles/social-h100-80gb.csv").to_string();
        let (entry, parsed) =
            AppEntry::from_sources(spec.clone(), "social.toml", csv.clone(), "social.csv", 100.0).expect("valid");
        assert_eq!(entry.name, parsed.spec.name);
        assert!(entry.parse().is_ok(), "what from_sources builds, parse accepts");
        let bad = |e: AppEntry| e.parse().expect_err("invalid");
        assert!(matches!(bad(AppEntry { name: "other".into(), ..entry.clone() }), InvalidApp::NameMismatch { .. }));
        for d in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(matches!(bad(AppEntry { demand_rps: d, ..entry.clone() }), InvalidApp::Demand(_)), "{d}");
        }
        let huge = AppEntry { spec_toml: "#".repeat(MAX_APP_SPEC + 1), ..entry.clone() };
        assert!(matches!(bad(huge), InvalidApp::TooLarge { .. }));
        let header_only = AppEntry { profiles_csv: format!("{}\n", crate::profile::HEADER), ..entry.clone() };
        assert!(matches!(bad(header_only), InvalidApp::NoProfile(_)));
        let e = AppEntry::from_sources("name = ".into(), "apps/x.toml", csv, "p.csv", 1.0).expect_err("bad toml");
        assert!(e.to_string().contains("apps/x.toml"), "the error names the file: {e}");
    }

    /// A retried operator request (same id) gets the first outcome and changes nothing; a
    /// new request for the same change is applied (and reports what it finds).
    #[test]
    fn operator_requests_apply_once_per_id() {
        let mut s = ClusterState::default();
        let app = AppEntry {
            name: "a".into(),
            spec_toml: "x".into(),
            profiles_csv: "y".into(),
            demand_rps: 5.0,
            demand_auto: false,
        };
        s.apply(&ClusterCommand::PutApp(app));
        let (first, other) = (RequestId::fresh(), RequestId::fresh());
        assert_ne!(first, other);
        let remove =
            |id| ClusterCommand::Once { id, command: Box::new(ClusterCommand::RemoveApp { name: "a".into() }) };
        let o1 = s.apply(&remove(first));
        assert!(o1.applied && o1.message.contains("removed"), "{o1:?}");
        let o2 = s.apply(&remove(first));
        assert_eq!(o2, o1, "the retry is answered with the first outcome");
        assert!(s.apps.is_empty());
        let o3 = s.apply(&remove(other));
        assert!(!o3.applied && o3.message.contains("no app"), "{o3:?}");
        // Only the latest RECENT_REQUESTS ids are kept.
        for _ in 0..RECENT_REQUESTS {
            s.apply(&remove(RequestId::fresh()));
        }
        assert_eq!(s.requests.len(), RECENT_REQUESTS);
        assert!(!s.requests.iter().any(|(r, _)| *r == first));
    }

    #[test]
    fn epochs_only_grow_by_one() {
        let mut s = ClusterState::default();
        assert!(s.apply(&ClusterCommand::CommitPlan(plan(1))).applied);
        assert!(!s.apply(&ClusterCommand::CommitPlan(plan(1))).applied, "same epoch twice");
        assert!(!s.apply(&ClusterCommand::CommitPlan(plan(3))).applied, "a gap");
        let o = s.apply(&ClusterCommand::CommitPlan(plan(2)));
        assert!(o.applied);
        assert_eq!(o.epoch, 2);
        assert_eq!(s.plan.as_ref().map(|p| p.epoch), Some(2));
    }

    /// Measured demand moves the planned demand (and so the plan inputs), never below the
    /// registered floor unless the app is `demand_auto`; re-registration resets it.
    #[test]
    fn set_demand_follows_measurements_above_the_floor() {
        let mut s = ClusterState::default();
        let app = AppEntry {
            name: "a".into(),
            spec_toml: "x".into(),
            profiles_csv: "y".into(),
            demand_rps: 50.0,
            demand_auto: false,
        };
        s.apply(&ClusterCommand::PutApp(app.clone()));
        let before = s.plan_inputs();
        let set = |rps: f64| ClusterCommand::SetDemand { app: "a".into(), rps, reason: "forecast".into() };
        assert!(s.apply(&set(80.0)).applied);
        assert_eq!(s.apps["a"].demand_rps, 80.0);
        assert_ne!(s.plan_inputs(), before, "a new demand re-plans");
        assert!(s.apply(&set(10.0)).applied);
        assert_eq!(s.apps["a"].demand_rps, 50.0, "floored at the registered demand");
        assert!(!s.apply(&set(20.0)).applied, "already at the floor");
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(!s.apply(&set(bad)).applied, "{bad}");
        }
        assert!(!s.apply(&ClusterCommand::SetDemand { app: "b".into(), rps: 1.0, reason: String::new() }).applied);
        assert_eq!(s.demand["a"].changes, 2);
        assert_eq!(s.demand["a"].reason, "forecast");
        // `auto`: no floor.
        s.apply(&ClusterCommand::PutApp(AppEntry { demand_auto: true, ..app.clone() }));
        assert_eq!((s.demand["a"].changes, s.apps["a"].demand_rps), (0, 50.0), "re-registration resets");
        assert!(s.apply(&set(10.0)).applied);
        assert_eq!(s.apps["a"].demand_rps, 10.0);
        assert_eq!(s.registered_rps("a"), Some(50.0));
        s.apply(&ClusterCommand::RemoveApp { name: "a".into() });
        assert!(s.demand.is_empty());
    }

    /// A state and an app encoded before the demand fields existed still decode (the Raft
    /// log and snapshots are JSON).
    #[test]
    fn states_without_demand_fields_still_decode() {
        let old = r#"{"apps":{"a":{"name":"a","spec_toml":"x","profiles_csv":"y","demand_rps":5.0}},
            "members":{},"config":{"dead_after_ms":3000,"space":"A+S+T"},"plan":null,"epoch":0}"#;
        let s: ClusterState = serde_json::from_str(old).expect("decodes");
        assert!(!s.apps["a"].demand_auto);
        assert_eq!(s.registered_rps("a"), Some(5.0));
        assert_eq!(s.floor_rps("a"), Some(5.0));
    }

    #[test]
    fn plan_inputs_follow_apps_and_alive_gpus() {
        let mut s = ClusterState::default();
        let m = Member {
            node: "n1".into(),
            addr: "127.0.0.1:1".into(),
            eligible: true,
            gpus: vec![GpuInventory { uuid: "GPU-1".into(), model: GpuModel::H100_80gb, live: vec![] }],
            alive: true,
        };
        s.apply(&ClusterCommand::PutMember(m));
        let before = s.plan_inputs();
        assert!(before.contains("GPU-1"));
        s.apply(&ClusterCommand::MarkDown { node: "n1".into() });
        assert!(!s.plan_inputs().contains("GPU-1"));
        assert!(!s.apply(&ClusterCommand::MarkDown { node: "n1".into() }).applied);
        let app = AppEntry {
            name: "a".into(),
            spec_toml: "x".into(),
            profiles_csv: "y".into(),
            demand_rps: 5.0,
            demand_auto: false,
        };
        s.apply(&ClusterCommand::PutApp(app.clone()));
        let with_app = s.plan_inputs();
        s.apply(&ClusterCommand::PutApp(AppEntry { profiles_csv: "z".into(), ..app }));
        assert_ne!(with_app, s.plan_inputs(), "a changed profile changes the inputs");
    }
}
