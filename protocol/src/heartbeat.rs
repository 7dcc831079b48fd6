//! Checking a heartbeat at the edge, before anything in it reaches the coordinator's
//! control state or the planner.
//!
//! A heartbeat carries two kinds of claims, and they are treated differently:
//! * **what the node is** (its id, address and GPUs with their live MIG layouts): membership
//!   and the planner's capacity come from here, so a heartbeat whose inventory is not
//!   plausible is refused whole ([`InvalidHeartbeat`], naming the field): more than
//!   [`MAX_GPUS_PER_NODE`] GPUs, a GPU UUID twice, an empty or over-long name, a live
//!   layout that is not a legal MIG layout of the GPU's model (an unknown profile, a start
//!   the profile cannot take, overlapping instances: capacity the GPU cannot have), or a
//!   non-finite number in a live instance;
//! * **what the node measured** (observed profile rows): each row is checked on its own and
//!   a bad one is dropped, with why ([`DroppedRow`]), so one bad measurement neither poisons
//!   the planner nor costs the node its membership. A row is kept only if its task and
//!   variant name a registered app's task and variant ([`KnownKeys`]), its MIG profile
//!   exists on its GPU model, its MPS level and batch size are ones the planner uses, its
//!   names are at most [`MAX_NAME_LEN`] bytes, and its latency and throughput are finite,
//!   positive and at most [`MAX_P95_MS`] / [`MAX_THROUGHPUT_RPS`]. At most
//!   [`MAX_OBSERVED_ROWS`] good rows are kept; the rest are dropped as over the cap.
//! * **what the node's frontends counted** (demand rows, [`DemandRow`]): the same, row by
//!   row: a row is kept only if it names a registered app and, when its task is not empty,
//!   a task of that app, its counters are at most [`MAX_DEMAND_COUNT`] with `violations ≤
//!   completions`, and no earlier row of the heartbeat has the same (app, task); at most
//!   [`MAX_DEMAND_ROWS`] are kept.
//!
//! [`check_heartbeat`] is a pure function; the coordinator calls it on every heartbeat.

use crate::app::AppSpec;
use crate::catalogue::{Placement, MPS_LEVELS};
use crate::cluster::{AppEntry, GpuInventory};
use crate::profile::{ProfileRow, BATCH_SIZES};
use crate::wire::{DemandRow, Heartbeat};
use std::collections::{BTreeMap, BTreeSet};

/// Most GPUs one node may report (the largest single servers hold 16); a node's config may
/// not declare more (`agent` config validation uses the same bound).
pub const MAX_GPUS_PER_NODE: usize = 16;
/// Most observed profile rows kept from one heartbeat.
pub const MAX_OBSERVED_ROWS: usize = 1024;
/// Longest node id, GPU UUID, task, variant, app or MIG profile name, bytes.
pub const MAX_NAME_LEN: usize = 128;
/// Longest address, bytes.
pub const MAX_ADDR_LEN: usize = 256;
/// Largest plausible p95 batch latency, ms (a minute per batch).
pub const MAX_P95_MS: f64 = 60_000.0;
/// Largest plausible segment throughput, items/s.
pub const MAX_THROUGHPUT_RPS: f64 = 1e7;
/// Most demand rows kept from one heartbeat.
pub const MAX_DEMAND_ROWS: usize = 1024;
/// Largest plausible cumulative demand counter (2^53: exact in an f64).
pub const MAX_DEMAND_COUNT: u64 = 1 << 53;
/// Dropped rows described one by one in a [`CheckedHeartbeat`]; the rest are only counted.
pub const MAX_DROPPED_LISTED: usize = 8;

/// The (task, variant) pairs of the registered apps: the only ones an observed row may name.
/// Kept up to date with [`KnownKeys::refresh`], which parses an app's spec only when its
/// text changed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KnownKeys {
    /// Per app: the spec text the pairs were parsed from, and the pairs.
    apps: BTreeMap<String, (String, BTreeSet<(String, String)>)>,
}

impl KnownKeys {
    /// The pairs of these apps.
    pub fn of_apps<'a>(apps: impl IntoIterator<Item = &'a AppEntry>) -> KnownKeys {
        let mut k = KnownKeys::default();
        k.update(apps);
        k
    }

    /// Follow the registered apps (`ClusterState::apps`): drop removed ones, parse new or
    /// changed specs. A spec that does not parse (registrations are validated, so only a
    /// corrupt state) contributes no pairs.
    pub fn refresh(&mut self, apps: &BTreeMap<String, AppEntry>) {
        self.apps.retain(|name, _| apps.contains_key(name));
        self.update(apps.values());
    }

    fn update<'a>(&mut self, apps: impl IntoIterator<Item = &'a AppEntry>) {
        for a in apps {
            if self.apps.get(&a.name).is_some_and(|(spec, _)| *spec == a.spec_toml) {
                continue;
            }
            let pairs = AppSpec::parse(&a.spec_toml, &a.name)
                .map(|s| {
                    s.tasks.iter().flat_map(|t| t.variants.iter().map(|v| (t.name.clone(), v.name.clone()))).collect()
                })
                .unwrap_or_default();
            self.apps.insert(a.name.clone(), (a.spec_toml.clone(), pairs));
        }
    }

    /// Whether `app` is registered.
    pub fn has_app(&self, app: &str) -> bool {
        self.apps.contains_key(app)
    }

    /// Whether registered app `app` has a task `task`.
    pub fn has_task(&self, app: &str, task: &str) -> bool {
        self.apps.get(app).is_some_and(|(_, pairs)| pairs.iter().any(|(t, _)| t == task))
    }

    /// Whether a registered app has task `task` with variant `variant`.
    pub fn contains(&self, task: &str, variant: &str) -> bool {
        // Pairs are few (tasks × variants of each app), so a scan of each app's set is cheap.
        self.apps.values().any(|(_, pairs)| pairs.iter().any(|(t, v)| t == task && v == variant))
    }
}

/// Why a heartbeat was refused whole: the field at fault and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("heartbeat refused: `{field}` {problem}")]
pub struct InvalidHeartbeat {
    /// The field, as a path (`gpus`, `gpus[2].uuid`, `gpus[0].live[1].mig_profile`).
    pub field: String,
    /// What is wrong with it.
    pub problem: String,
}

/// One observed or demand row that was dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DroppedRow {
    /// Its index in the heartbeat's `observed`.
    pub index: usize,
    /// The field at fault (`observed[3].p95_ms`).
    pub field: String,
    /// Why, in words.
    pub reason: String,
}

impl std::fmt::Display for DroppedRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}` {}", self.field, self.reason)
    }
}

/// The observed and demand rows a check dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dropped {
    /// How many, in all.
    pub count: usize,
    /// The first [`MAX_DROPPED_LISTED`] of them, with why.
    pub listed: Vec<DroppedRow>,
}

impl Dropped {
    fn add(&mut self, row: impl FnOnce() -> DroppedRow) {
        self.count += 1;
        if self.listed.len() < MAX_DROPPED_LISTED {
            self.listed.push(row());
        }
    }
}

impl std::fmt::Display for Dropped {
    /// One line naming the dropped rows (empty when none was).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.count == 0 {
            return Ok(());
        }
        write!(f, "dropped {} row(s): ", self.count)?;
        for (i, r) in self.listed.iter().enumerate() {
            write!(f, "{}{r}", if i > 0 { "; " } else { "" })?;
        }
        match self.count - self.listed.len() {
            0 => Ok(()),
            more => write!(f, "; and {more} more"),
        }
    }
}

/// A heartbeat that passed [`check_heartbeat`], with only its good observed rows.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckedHeartbeat {
    /// The heartbeat; `observed` holds only the rows kept.
    pub hb: Heartbeat,
    /// The rows dropped.
    pub dropped: Dropped,
}

fn invalid(field: impl Into<String>, problem: impl Into<String>) -> InvalidHeartbeat {
    InvalidHeartbeat { field: field.into(), problem: problem.into() }
}

fn check_name(field: &str, s: &str, max: usize, may_be_empty: bool) -> Result<(), InvalidHeartbeat> {
    if s.is_empty() && !may_be_empty {
        return Err(invalid(field, "is empty"));
    }
    if s.len() > max {
        return Err(invalid(field, format!("is {} bytes long (at most {max})", s.len())));
    }
    Ok(())
}

fn check_gpu(i: usize, g: &GpuInventory) -> Result<(), InvalidHeartbeat> {
    check_name(&format!("gpus[{i}].uuid"), &g.uuid, MAX_NAME_LEN, false)?;
    let spec = g.model.spec();
    let mut placed: Vec<Placement> = Vec::with_capacity(g.live.len());
    for (j, inst) in g.live.iter().enumerate() {
        let f = |name: &str| format!("gpus[{i}].live[{j}].{name}");
        for (name, s) in [("task", &inst.task), ("variant", &inst.variant), ("app", &inst.app)] {
            check_name(&f(name), s, MAX_NAME_LEN, true)?;
        }
        for (name, x) in [("p95_ms", inst.p95_ms), ("throughput_rps", inst.throughput_rps)] {
            if !(x.is_finite() && x >= 0.0) {
                return Err(invalid(f(name), format!("must be a finite number ≥ 0, got {x}")));
            }
        }
        let Some(profile) = spec.profile_index(&inst.mig_profile) else {
            let shown: String = inst.mig_profile.chars().take(MAX_NAME_LEN).collect();
            return Err(invalid(f("mig_profile"), format!("`{shown}` is not a MIG profile of {}", g.model)));
        };
        let p = Placement { profile, start: inst.start };
        spec.check_placement(&placed, p).map_err(|e| invalid(f("start"), format!("is not a legal placement: {e}")))?;
        placed.push(p);
    }
    Ok(())
}

/// Why an observed row must be dropped: (field, reason), or `None` to keep it.
fn row_problem(r: &ProfileRow, known: &KnownKeys) -> Option<(&'static str, String)> {
    for (name, s) in [("task", &r.task), ("variant", &r.variant), ("mig_profile", &r.mig_profile)] {
        if s.is_empty() || s.len() > MAX_NAME_LEN {
            return Some((name, format!("must be 1 to {MAX_NAME_LEN} bytes, is {}", s.len())));
        }
    }
    if !known.contains(&r.task, &r.variant) {
        return Some(("task", format!("`{}`/`{}` is no registered app's task and variant", r.task, r.variant)));
    }
    if r.gpu.spec().profile_index(&r.mig_profile).is_none() {
        return Some(("mig_profile", format!("`{}` is not a MIG profile of {}", r.mig_profile, r.gpu)));
    }
    if !MPS_LEVELS.contains(&r.mps) {
        return Some(("mps", format!("must be one of {MPS_LEVELS:?}, got {}", r.mps)));
    }
    if !BATCH_SIZES.contains(&r.batch) {
        return Some(("batch", format!("must be one of {BATCH_SIZES:?}, got {}", r.batch)));
    }
    for (name, x, max) in [("p95_ms", r.p95_ms, MAX_P95_MS), ("throughput_rps", r.throughput_rps, MAX_THROUGHPUT_RPS)] {
        if !(x.is_finite() && x > 0.0 && x <= max) {
            return Some((name, format!("must be a finite number in (0, {max}], got {x}")));
        }
    }
    None
}

/// Why a demand row must be dropped: (field, reason), or `None` to keep it.
fn demand_problem(r: &DemandRow, known: &KnownKeys) -> Option<(&'static str, String)> {
    for (name, s, may_be_empty) in [("app", &r.app, false), ("task", &r.task, true)] {
        if (s.is_empty() && !may_be_empty) || s.len() > MAX_NAME_LEN {
            return Some((
                name,
                format!("must be {} to {MAX_NAME_LEN} bytes, is {}", u8::from(!may_be_empty), s.len()),
            ));
        }
    }
    if !known.has_app(&r.app) {
        return Some(("app", format!("`{}` is no registered app", r.app)));
    }
    if !r.task.is_empty() && !known.has_task(&r.app, &r.task) {
        return Some(("task", format!("`{}` is no task of app `{}`", r.task, r.app)));
    }
    for (name, x) in [("arrivals", r.arrivals), ("completions", r.completions), ("violations", r.violations)] {
        if x > MAX_DEMAND_COUNT {
            return Some((name, format!("must be at most {MAX_DEMAND_COUNT}, got {x}")));
        }
    }
    if r.violations > r.completions {
        return Some(("violations", format!("{} is more than the {} completions", r.violations, r.completions)));
    }
    None
}

/// Whether a demand row would be kept on its own (see the module docs; duplicates and the
/// cap are per heartbeat).
pub fn demand_row_ok(r: &DemandRow, known: &KnownKeys) -> bool {
    demand_problem(r, known).is_none()
}

/// Whether an observed row would be kept (see the module docs).
pub fn row_ok(r: &ProfileRow, known: &KnownKeys) -> bool {
    row_problem(r, known).is_none()
}

/// Check a heartbeat (see the module docs): `Err` refuses it whole; `Ok` carries it with
/// only its good observed rows, and says which were dropped.
pub fn check_heartbeat(mut hb: Heartbeat, known: &KnownKeys) -> Result<CheckedHeartbeat, InvalidHeartbeat> {
    check_name("node", &hb.node, MAX_NAME_LEN, false)?;
    check_name("addr", &hb.addr, MAX_ADDR_LEN, false)?;
    if hb.gpus.len() > MAX_GPUS_PER_NODE {
        return Err(invalid("gpus", format!("lists {} GPUs (at most {MAX_GPUS_PER_NODE} per node)", hb.gpus.len())));
    }
    let mut uuids = BTreeSet::new();
    for (i, g) in hb.gpus.iter().enumerate() {
        check_gpu(i, g)?;
        if !uuids.insert(g.uuid.as_str()) {
            return Err(invalid(format!("gpus[{i}].uuid"), format!("`{}` is listed twice", g.uuid)));
        }
    }
    let mut kept = Vec::with_capacity(hb.observed.len().min(MAX_OBSERVED_ROWS));
    let mut dropped = Dropped::default();
    for (index, r) in std::mem::take(&mut hb.observed).into_iter().enumerate() {
        let problem = match row_problem(&r, known) {
            None if kept.len() < MAX_OBSERVED_ROWS => {
                kept.push(r);
                continue;
            }
            None => ("", format!("is over the cap of {MAX_OBSERVED_ROWS} rows per heartbeat")),
            Some(p) => p,
        };
        drop_row(&mut dropped, "observed", index, problem);
    }
    hb.observed = kept;
    let mut kept = Vec::with_capacity(hb.demand.len().min(MAX_DEMAND_ROWS));
    let mut seen = BTreeSet::new();
    for (index, r) in std::mem::take(&mut hb.demand).into_iter().enumerate() {
        let problem = match demand_problem(&r, known) {
            None if seen.contains(&(r.app.clone(), r.task.clone())) => {
                ("task", format!("(`{}`, `{}`) is listed twice", r.app, r.task))
            }
            None if kept.len() < MAX_DEMAND_ROWS => {
                seen.insert((r.app.clone(), r.task.clone()));
                kept.push(r);
                continue;
            }
            None => ("", format!("is over the cap of {MAX_DEMAND_ROWS} demand rows per heartbeat")),
            Some(p) => p,
        };
        drop_row(&mut dropped, "demand", index, problem);
    }
    hb.demand = kept;
    Ok(CheckedHeartbeat { hb, dropped })
}

/// Record row `index` of the heartbeat's `list` as dropped: `(field, reason)`, the field
/// empty when the row as a whole is at fault.
fn drop_row(dropped: &mut Dropped, list: &str, index: usize, (field, reason): (&str, String)) {
    dropped.add(|| {
        let field = match field {
            "" => format!("{list}[{index}]"),
            f => format!("{list}[{index}].{f}"),
        };
        DroppedRow { index, field, reason }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalogue::GpuModel;
    use crate::plan::InstancePlan;
    use proptest::prelude::*;

    fn known() -> KnownKeys {
        let spec = include_str!("../../examples/apps/social.toml").to_string();
        let app = AppEntry {
            name: "social".into(),
            spec_toml: spec,
            profiles_csv: String::new(),
            demand_rps: 1.0,
            demand_auto: false,
        };
        KnownKeys::of_apps([&app])
    }

    /// A row of a task and variant the social app registers.
    fn good_row() -> ProfileRow {
        let csv = include_str!("../../examples/profiles/social-h100-80gb.csv");
        crate::ProfileTable::parse_csv(csv, "social").expect("profiles").rows().next().expect("a row").clone()
    }

    fn gpu(uuid: &str) -> GpuInventory {
        GpuInventory { uuid: uuid.into(), model: GpuModel::H100_80gb, live: vec![] }
    }

    fn hb(gpus: Vec<GpuInventory>, observed: Vec<ProfileRow>) -> Heartbeat {
        Heartbeat {
            node: "n1".into(),
            addr: "10.0.0.1:7000".into(),
            eligible: false,
            gpus,
            applied_epoch: 0,
            observed,
            demand: vec![],
        }
    }

    fn live(profile: &str, start: u8) -> InstancePlan {
        crate::testing::instance("t", profile, start)
    }

    #[test]
    fn a_good_heartbeat_passes_unchanged() {
        let g = GpuInventory { live: vec![live("4g.40gb", 0), live("3g.40gb", 4)], ..gpu("GPU-0") };
        let h = hb(vec![g, gpu("GPU-1")], vec![good_row()]);
        let c = check_heartbeat(h.clone(), &known()).expect("valid");
        assert_eq!(c.hb, h);
        assert_eq!(c.dropped, Dropped::default());
        assert_eq!(c.dropped.to_string(), "");
    }

    #[test]
    fn bad_rows_are_dropped_with_the_field_named() {
        let good = good_row();
        let rows = vec![
            ProfileRow { p95_ms: f64::NAN, ..good.clone() },
            ProfileRow { p95_ms: 0.0, ..good.clone() },
            ProfileRow { p95_ms: 1e300, ..good.clone() },
            ProfileRow { throughput_rps: f64::INFINITY, ..good.clone() },
            ProfileRow { throughput_rps: -1.0, ..good.clone() },
            ProfileRow { task: "no-such-task".into(), ..good.clone() },
            ProfileRow { variant: "x".repeat(MAX_NAME_LEN + 1), ..good.clone() },
            ProfileRow { mig_profile: "9g.99gb".into(), ..good.clone() },
            ProfileRow { mps: 9, ..good.clone() },
            ProfileRow { batch: 3, ..good.clone() },
            good.clone(),
        ];
        let c = check_heartbeat(hb(vec![], rows), &known()).expect("accepted: only rows are bad");
        assert_eq!(c.hb.observed, vec![good]);
        let d = &c.dropped;
        assert_eq!(d.count, 10);
        assert_eq!(d.listed.len(), MAX_DROPPED_LISTED);
        assert_eq!(d.listed[0].field, "observed[0].p95_ms");
        assert!(d.listed[0].reason.contains("NaN"), "{}", d.listed[0]);
        assert_eq!(d.listed[2].field, "observed[2].p95_ms");
        assert_eq!(d.listed[3].field, "observed[3].throughput_rps");
        assert_eq!(d.listed[5].field, "observed[5].task");
        assert_eq!(d.listed[6].field, "observed[6].variant");
        assert_eq!(d.listed[7].field, "observed[7].mig_profile");
        let s = d.to_string();
        assert!(s.starts_with("dropped 10 row(s)") && s.ends_with("and 2 more"), "{s}");
    }

    #[test]
    fn ten_thousand_junk_keys_are_dropped_and_good_rows_capped() {
        let good = good_row();
        let mut rows: Vec<ProfileRow> =
            (0..10_000).map(|i| ProfileRow { task: format!("junk-{i}"), ..good.clone() }).collect();
        rows.push(good.clone());
        let c = check_heartbeat(hb(vec![], rows), &known()).expect("accepted");
        assert_eq!(c.hb.observed, vec![good.clone()]);
        assert_eq!(c.dropped.count, 10_000);
        let many = vec![good; MAX_OBSERVED_ROWS + 5];
        let c = check_heartbeat(hb(vec![], many), &known()).expect("accepted");
        assert_eq!(c.hb.observed.len(), MAX_OBSERVED_ROWS);
        assert_eq!(c.dropped.count, 5);
        assert!(c.dropped.listed[0].reason.contains("cap"), "{}", c.dropped.listed[0]);
    }

    #[test]
    fn implausible_inventories_are_refused_naming_the_field() {
        let refuse = |h: Heartbeat| check_heartbeat(h, &known()).expect_err("refused");
        let many: Vec<GpuInventory> = (0..10_000).map(|i| gpu(&format!("GPU-{i}"))).collect();
        let e = refuse(hb(many, vec![]));
        assert_eq!(e.field, "gpus");
        assert!(e.to_string().contains("10000 GPUs"), "{e}");
        assert!(check_heartbeat(hb(vec![gpu("G"); MAX_GPUS_PER_NODE], vec![]), &known()).is_err(), "duplicates");
        let e = refuse(hb(vec![gpu("GPU-0"), gpu("GPU-0")], vec![]));
        assert_eq!(e.field, "gpus[1].uuid");
        assert_eq!(refuse(hb(vec![gpu("")], vec![])).field, "gpus[0].uuid");
        assert_eq!(refuse(hb(vec![gpu(&"u".repeat(MAX_NAME_LEN + 1))], vec![])).field, "gpus[0].uuid");
        // More capacity than a GPU has: overlapping instances, an unknown profile, a bad start.
        let overfull = GpuInventory { live: vec![live("7g.80gb", 0), live("7g.80gb", 0)], ..gpu("GPU-0") };
        assert_eq!(refuse(hb(vec![overfull], vec![])).field, "gpus[0].live[1].start");
        let unknown = GpuInventory { live: vec![live("8g.160gb", 0)], ..gpu("GPU-0") };
        assert_eq!(refuse(hb(vec![unknown], vec![])).field, "gpus[0].live[0].mig_profile");
        let bad_start = GpuInventory { live: vec![live("4g.40gb", 3)], ..gpu("GPU-0") };
        assert_eq!(refuse(hb(vec![bad_start], vec![])).field, "gpus[0].live[0].start");
        let nan = GpuInventory { live: vec![InstancePlan { p95_ms: f64::NAN, ..live("1g.10gb", 0) }], ..gpu("GPU-0") };
        assert_eq!(refuse(hb(vec![nan], vec![])).field, "gpus[0].live[0].p95_ms");
        assert_eq!(refuse(Heartbeat { addr: String::new(), ..hb(vec![], vec![]) }).field, "addr");
        assert_eq!(refuse(Heartbeat { node: "n".repeat(MAX_NAME_LEN + 1), ..hb(vec![], vec![]) }).field, "node");
    }

    #[test]
    fn known_keys_follow_the_registered_apps() {
        let spec = include_str!("../../examples/apps/social.toml").to_string();
        let app = AppEntry {
            name: "social".into(),
            spec_toml: spec,
            profiles_csv: String::new(),
            demand_rps: 1.0,
            demand_auto: false,
        };
        let r = good_row();
        let mut k = KnownKeys::default();
        assert!(!k.contains(&r.task, &r.variant));
        let mut apps = BTreeMap::from([(app.name.clone(), app.clone())]);
        k.refresh(&apps);
        assert!(k.contains(&r.task, &r.variant));
        assert!(!k.contains(&r.task, "no-such-variant"));
        apps.insert("broken".into(), AppEntry { name: "broken".into(), spec_toml: "= nonsense".into(), ..app });
        k.refresh(&apps);
        assert!(k.contains(&r.task, &r.variant), "a corrupt spec adds nothing and removes nothing");
        apps.remove("social");
        k.refresh(&apps);
        assert!(!k.contains(&r.task, &r.variant), "a removed app's keys go");
    }

    fn demand(app: &str, task: &str, arrivals: u64, completions: u64, violations: u64) -> DemandRow {
        DemandRow { app: app.into(), task: task.into(), at_ms: 1_000, arrivals, completions, violations }
    }

    #[test]
    fn bad_demand_rows_are_dropped_with_the_field_named() {
        let task = good_row().task;
        let rows = vec![
            demand("social", "", 10, 9, 1),
            demand("social", &task, 20, 0, 0),
            demand("nope", "", 1, 1, 0),
            demand("social", "no-such-task", 1, 0, 0),
            demand("social", "", 1, 1, 0),
            demand("", "", 1, 1, 0),
            demand("social", "x", u64::MAX, 0, 0),
            demand("social", "y", 5, 1, 2),
        ];
        let h = Heartbeat { demand: rows.clone(), ..hb(vec![], vec![]) };
        let c = check_heartbeat(h, &known()).expect("accepted: only rows are bad");
        assert_eq!(c.hb.demand, rows[..2].to_vec());
        let fields: Vec<&str> = c.dropped.listed.iter().map(|d| d.field.as_str()).collect();
        assert_eq!(
            fields,
            ["demand[2].app", "demand[3].task", "demand[4].task", "demand[5].app", "demand[6].task", "demand[7].task"]
        );
        assert!(c.dropped.listed[2].reason.contains("twice"), "{}", c.dropped);
        let h = Heartbeat { demand: vec![demand("social", "", u64::MAX, u64::MAX, 0)], ..hb(vec![], vec![]) };
        let c = check_heartbeat(h, &known()).expect("accepted");
        assert_eq!(c.dropped.listed[0].field, "demand[0].arrivals");
    }

    fn any_demand_row() -> impl Strategy<Value = DemandRow> {
        let task = good_row().task;
        let count = prop_oneof![0u64..1000, Just(MAX_DEMAND_COUNT), Just(MAX_DEMAND_COUNT + 1), Just(u64::MAX)];
        (
            prop_oneof![Just("social".to_string()), "[a-z]{0,6}", Just("a".repeat(MAX_NAME_LEN + 1))],
            prop_oneof![Just(String::new()), Just(task), "[a-z]{1,6}"],
            count.clone(),
            count.clone(),
            count,
        )
            .prop_map(|(app, task, arrivals, completions, violations)| DemandRow {
                app,
                task,
                at_ms: 0,
                arrivals,
                completions,
                violations,
            })
    }

    fn any_f64() -> impl Strategy<Value = f64> {
        prop_oneof![
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(f64::NEG_INFINITY),
            Just(0.0),
            Just(-0.0),
            Just(1e300),
            Just(f64::MIN_POSITIVE),
            -1e3..1e8f64,
        ]
    }

    fn any_row() -> impl Strategy<Value = ProfileRow> {
        let good = good_row();
        let name = |s: String| prop_oneof![Just(s), "[a-z0-9-]{0,12}", Just("x".repeat(MAX_NAME_LEN + 1))];
        (
            name(good.task.clone()),
            name(good.variant.clone()),
            prop_oneof![Just(good.mig_profile.clone()), Just("1g.10gb".to_string()), "[0-9]g\\.[0-9]{1,3}gb"],
            prop::sample::select(GpuModel::ALL.to_vec()),
            0u8..6,
            prop_oneof![prop::sample::select(BATCH_SIZES.to_vec()), 0u32..300],
            any_f64(),
            any_f64(),
        )
            .prop_map(|(task, variant, mig_profile, gpu, mps, batch, p95_ms, throughput_rps)| ProfileRow {
                task,
                variant,
                gpu,
                mig_profile,
                mps,
                batch,
                p95_ms,
                throughput_rps,
            })
    }

    proptest! {
        /// Whatever rows a heartbeat carries, the check keeps a capped subset of them, in
        /// order, each of which is sane and names a known key, and accounts for the rest.
        #[test]
        fn only_sane_known_rows_get_through(rows in prop::collection::vec(any_row(), 0..200)) {
            let k = known();
            let n = rows.len();
            let c = check_heartbeat(hb(vec![gpu("GPU-0")], rows.clone()), &k).expect("the inventory is fine");
            prop_assert!(c.hb.observed.len() <= MAX_OBSERVED_ROWS);
            prop_assert_eq!(c.hb.observed.len() + c.dropped.count, n);
            prop_assert_eq!(c.dropped.listed.len(), c.dropped.count.min(MAX_DROPPED_LISTED));
            for r in &c.hb.observed {
                prop_assert!(r.p95_ms.is_finite() && r.p95_ms > 0.0 && r.p95_ms <= MAX_P95_MS);
                prop_assert!(r.throughput_rps.is_finite() && r.throughput_rps > 0.0);
                prop_assert!(k.contains(&r.task, &r.variant));
                prop_assert!(r.gpu.spec().profile_index(&r.mig_profile).is_some());
            }
            let expected: Vec<&ProfileRow> = rows.iter().filter(|r| row_ok(r, &k)).collect();
            prop_assert_eq!(c.hb.observed.iter().collect::<Vec<_>>(), expected);
        }

        /// Whatever demand rows a heartbeat carries, the check keeps a capped subset, in
        /// order, of sane rows naming registered apps and tasks, each (app, task) once.
        #[test]
        fn only_sane_known_demand_rows_get_through(rows in prop::collection::vec(any_demand_row(), 0..100)) {
            let k = known();
            let n = rows.len();
            let c = check_heartbeat(Heartbeat { demand: rows.clone(), ..hb(vec![], vec![]) }, &k).expect("fine");
            prop_assert_eq!(c.hb.demand.len() + c.dropped.count, n);
            let mut seen = BTreeSet::new();
            for r in &c.hb.demand {
                prop_assert!(demand_row_ok(r, &k));
                prop_assert!(r.violations <= r.completions && r.arrivals <= MAX_DEMAND_COUNT);
                prop_assert!(seen.insert((r.app.clone(), r.task.clone())), "each key once");
            }
            let mut first = BTreeSet::new();
            let expected: Vec<&DemandRow> = rows
                .iter()
                .filter(|r| demand_row_ok(r, &k) && first.insert((r.app.clone(), r.task.clone())))
                .collect();
            prop_assert_eq!(c.hb.demand.iter().collect::<Vec<_>>(), expected);
        }

        /// A node may report up to the cap of distinct GPUs; more is refused, naming `gpus`.
        #[test]
        fn gpu_counts_are_bounded(n in 0usize..40) {
            let gpus = (0..n).map(|i| gpu(&format!("GPU-{i}"))).collect();
            match check_heartbeat(hb(gpus, vec![]), &known()) {
                Ok(_) => prop_assert!(n <= MAX_GPUS_PER_NODE),
                Err(e) => {
                    prop_assert!(n > MAX_GPUS_PER_NODE);
                    prop_assert_eq!(e.field, "gpus");
                }
            }
        }
    }
}
