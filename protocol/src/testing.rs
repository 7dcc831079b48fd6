//! Fixture builders for tests across the workspace (cargo feature `testing`, turned on by
//! the other crates' dev-dependencies): one place that spells out an [`InstancePlan`], a
//! [`ProfileRow`] or an app spec, so tests state only what they vary.

use crate::catalogue::GpuModel;
use crate::plan::InstancePlan;
use crate::profile::ProfileRow;
use std::fmt::Write as _;

/// A 1g.10gb-sized instance of `task` (variant `v`, MPS 1, batch 8, 1 ms, 1 item/s) at
/// slot `start`; change fields with struct update syntax.
pub fn instance(task: &str, mig_profile: &str, start: u8) -> InstancePlan {
    InstancePlan {
        mig_profile: mig_profile.into(),
        start,
        slices: 1,
        mps: 1,
        task: task.into(),
        variant: "v".into(),
        batch: 8,
        p95_ms: 1.0,
        throughput_rps: 1.0,
        app: String::new(),
        load_rps: 0.0,
    }
}

/// A profile row of `task` (variant `v`, H100-80GB, 1g.10gb, MPS 1, batch 8, 10 items/s).
pub fn row(task: &str, p95_ms: f64) -> ProfileRow {
    ProfileRow {
        task: task.into(),
        variant: "v".into(),
        gpu: GpuModel::H100_80gb,
        mig_profile: "1g.10gb".into(),
        mps: 1,
        batch: 8,
        p95_ms,
        throughput_rps: 10.0,
    }
}

/// One variant of a task in an [`AppToml`].
#[derive(Debug, Clone)]
pub struct Variant {
    /// Variant name.
    pub name: String,
    /// Accuracy.
    pub accuracy: f64,
    /// Model family (`resnet`, `yolov5`, ...).
    pub family: String,
    /// GFLOPs per item.
    pub gflops: f64,
    /// Fan-out to children: `(child task, mean items)`.
    pub fanout: Vec<(String, f64)>,
}

/// A variant with accuracy `accuracy` of family `family` at `gflops` (params and
/// activations fixed small).
pub fn variant(name: &str, accuracy: f64, family: &str, gflops: f64) -> Variant {
    Variant { name: name.into(), accuracy, family: family.into(), gflops, fanout: Vec::new() }
}

impl Variant {
    /// Add a fan-out edge weight.
    pub fn fanout(mut self, child: &str, mean: f64) -> Variant {
        self.fanout.push((child.into(), mean));
        self
    }
}

/// An app spec in TOML, built task by task.
#[derive(Debug, Clone)]
pub struct AppToml {
    name: String,
    latency_slo_ms: f64,
    accuracy_slo: f64,
    tasks: Vec<(String, Vec<Variant>)>,
    edges: Vec<(String, String)>,
}

impl AppToml {
    /// An app with its SLOs and no tasks yet.
    pub fn new(name: &str, latency_slo_ms: f64, accuracy_slo: f64) -> AppToml {
        AppToml { name: name.into(), latency_slo_ms, accuracy_slo, tasks: Vec::new(), edges: Vec::new() }
    }

    /// Add a task with its variants.
    pub fn task(mut self, name: &str, variants: Vec<Variant>) -> AppToml {
        self.tasks.push((name.into(), variants));
        self
    }

    /// Add an edge.
    pub fn edge(mut self, from: &str, to: &str) -> AppToml {
        self.edges.push((from.into(), to.into()));
        self
    }

    /// The TOML text.
    pub fn build(&self) -> String {
        let mut s = format!(
            "name = \"{}\"\nlatency_slo_ms = {:?}\naccuracy_slo = {:?}\n",
            self.name, self.latency_slo_ms, self.accuracy_slo
        );
        for (t, vs) in &self.tasks {
            let _ = write!(s, "\n[[tasks]]\nname = \"{t}\"\n");
            for v in vs {
                let _ = write!(
                    s,
                    "[[tasks.variants]]\nname = \"{}\"\naccuracy = {:?}\nmodel = {{ family = \"{}\", gflops = {:?}, params_m = 0.1, activation_mb = 0.1 }}\n",
                    v.name, v.accuracy, v.family, v.gflops
                );
                if !v.fanout.is_empty() {
                    let f: Vec<String> = v.fanout.iter().map(|(c, m)| format!("{c} = {m:?}")).collect();
                    let _ = writeln!(s, "fanout = {{ {} }}", f.join(", "));
                }
            }
        }
        for (a, b) in &self.edges {
            let _ = write!(s, "\n[[edges]]\nfrom = \"{a}\"\nto = \"{b}\"\n");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_apps_parse() {
        let text = AppToml::new("p", 500.0, 0.5)
            .task("detect", vec![variant("det", 0.9, "yolov5", 10.0).fanout("classify", 2.0)])
            .task("classify", vec![variant("cls", 0.9, "resnet", 4.0), variant("cls2", 0.8, "resnet", 1.0)])
            .edge("detect", "classify")
            .build();
        let app = crate::AppSpec::parse(&text, "built").expect("parses");
        assert_eq!(app.tasks.len(), 2);
        assert_eq!(app.tasks[1].variants.len(), 2);
    }
}
