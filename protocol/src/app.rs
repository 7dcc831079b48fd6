//! Application specs: a DAG of tasks, each with model variants, plus SLOs.
//!
//! Files are TOML (or JSON). Example (`examples/apps/traffic.toml`):
//!
//! ```toml
//! name = "traffic"
//! latency_slo_ms = 650.0
//! accuracy_slo = 0.9
//!
//! [[tasks]]
//! name = "detect"
//! [[tasks.variants]]
//! name = "yolov5l"
//! accuracy = 0.490
//! model = { family = "yolov5", gflops = 109.1, params_m = 46.5, activation_mb = 60.0 }
//! fanout = { make = 1.8, person = 0.9 }
//!
//! [[edges]]
//! from = "detect"
//! to = "make"
//! ```
//!
//! `fanout[t']` is F(t, v, t'): how many requests to `t'` one request to variant `v` of `t`
//! produces on average. An edge with no fan-out entry means 1.0.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Longest end-to-end latency SLO an app may have, ms (one hour). Deadlines derived from it
/// must stay representable (as durations, instants and microsecond budgets) on every node.
pub const MAX_LATENCY_SLO_MS: f64 = 3_600_000.0;

/// Largest fan-out factor F(t, v, t') an app may declare.
pub const MAX_FANOUT: f64 = 64.0;

/// Most items (stages) one request may spawn in total, its roots included. A registration
/// whose worst case (every task on its widest variant, every fan-out rounded up) exceeds it
/// is refused; a frontend also refuses, at run time, to spawn beyond it.
pub const MAX_REQUEST_ITEMS: u32 = 4096;

/// A compact description of a model variant, used by the analytic profile model and,
/// later, to build the layer graph that the executors run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelDesc {
    /// Architecture family (`yolov5`, `resnet`, `efficientnet`, `vgg`, `git`, `tts`).
    pub family: String,
    /// GFLOPs per inference of one item (multiply-add counted as 2).
    pub gflops: f64,
    /// Parameters, millions.
    pub params_m: f64,
    /// Activation memory per item, MB: the analytic profile model uses it both as the
    /// per-item memory footprint and as the activation bytes written per item in one pass.
    pub activation_mb: f64,
    /// Sequential decoding steps per item (autoregressive captioners stream their weights
    /// once per generated token); 1 for single-pass models.
    #[serde(default = "one")]
    pub decode_steps: u32,
    /// GPU kernels (operators) one pass launches in eager execution (convolutions,
    /// normalisations, activations, adds, concatenations, ...), counted from the
    /// architecture; it sets the per-batch host dispatch floor of the profile model. Absent:
    /// the family's typical count.
    /// (Always serialised, also when absent: the wire codec is bincode, which has no
    /// optional fields.)
    #[serde(default)]
    pub kernels: Option<u32>,
}

fn one() -> u32 {
    1
}

/// One model variant of a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VariantSpec {
    /// Variant name, unique within the task.
    pub name: String,
    /// Accuracy in (0, 1] (the task's metric; see the app file for its source).
    pub accuracy: f64,
    /// Model description.
    pub model: ModelDesc,
    /// Fan-out factor to each downstream task.
    #[serde(default)]
    pub fanout: BTreeMap<String, f64>,
}

/// One task of the graph.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    /// Task name, unique within the app.
    pub name: String,
    /// Candidate variants.
    pub variants: Vec<VariantSpec>,
}

/// A data dependency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Edge {
    /// Upstream task.
    pub from: String,
    /// Downstream task.
    pub to: String,
}

/// A compound inference application.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppSpec {
    /// Application name.
    pub name: String,
    /// End-to-end latency SLO in milliseconds.
    pub latency_slo_ms: f64,
    /// Accuracy SLO as a fraction of the maximum system accuracy, in (0, 1].
    pub accuracy_slo: f64,
    /// Tasks.
    pub tasks: Vec<TaskSpec>,
    /// DAG edges.
    #[serde(default)]
    pub edges: Vec<Edge>,
    /// Where the accuracy numbers come from (free text, shown by `jigsaw plan`).
    #[serde(default)]
    pub sources: Vec<String>,
    /// Scheduling priority when the cluster cannot serve every app at its demand: higher is
    /// served first, lower priorities are shed first (default 0).
    #[serde(default)]
    pub priority: u32,
}

/// A validation error that names the offending field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AppError {
    /// The file could not be parsed.
    #[error("{path}: cannot parse app spec: {message}")]
    Parse {
        /// File path (or `<input>`).
        path: String,
        /// Parser message (with line/column).
        message: String,
    },
    /// A field has an invalid value.
    #[error("app `{app}`: {field}: {message}")]
    Field {
        /// App name.
        app: String,
        /// Dotted field path, e.g. `tasks[1].variants[0].accuracy`.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// An edge names a task that does not exist.
    #[error("app `{app}`: edges[{index}]: task `{task}` does not exist (tasks: {known})")]
    DanglingEdge {
        /// App name.
        app: String,
        /// Edge index.
        index: usize,
        /// Unknown task name.
        task: String,
        /// Known task names.
        known: String,
    },
    /// The graph has a cycle.
    #[error("app `{app}`: the task graph has a cycle: {cycle}")]
    Cycle {
        /// App name.
        app: String,
        /// The cycle, `a -> b -> a`.
        cycle: String,
    },
}

impl AppSpec {
    /// Parse TOML (or JSON when the text starts with `{`) and validate.
    pub fn parse(text: &str, path: &str) -> Result<AppSpec, AppError> {
        let app: AppSpec = if text.trim_start().starts_with('{') {
            serde_json::from_str(text).map_err(|e| AppError::Parse { path: path.into(), message: e.to_string() })?
        } else {
            toml::from_str(text).map_err(|e| AppError::Parse { path: path.into(), message: e.to_string() })?
        };
        app.validate()?;
        Ok(app)
    }

    fn field(&self, field: impl Into<String>, message: impl Into<String>) -> AppError {
        AppError::Field { app: self.name.clone(), field: field.into(), message: message.into() }
    }

    /// Check structure and values. Feasibility against profiles is checked by the planner.
    pub fn validate(&self) -> Result<(), AppError> {
        if self.name.trim().is_empty() {
            return Err(self.field("name", "must not be empty"));
        }
        if !(self.latency_slo_ms.is_finite() && self.latency_slo_ms > 0.0 && self.latency_slo_ms <= MAX_LATENCY_SLO_MS)
        {
            return Err(self.field(
                "latency_slo_ms",
                format!(
                    "must be a positive number of milliseconds up to {MAX_LATENCY_SLO_MS} (one hour), got {}",
                    self.latency_slo_ms
                ),
            ));
        }
        if !(self.accuracy_slo > 0.0 && self.accuracy_slo <= 1.0) {
            return Err(self.field(
                "accuracy_slo",
                format!("must be in (0, 1] (a fraction of the maximum accuracy), got {}", self.accuracy_slo),
            ));
        }
        if self.tasks.is_empty() {
            return Err(self.field("tasks", "an application needs at least one task"));
        }
        let mut names = BTreeSet::new();
        for (ti, t) in self.tasks.iter().enumerate() {
            if t.name.trim().is_empty() {
                return Err(self.field(format!("tasks[{ti}].name"), "must not be empty"));
            }
            if !names.insert(t.name.as_str()) {
                return Err(self.field(format!("tasks[{ti}].name"), format!("duplicate task name `{}`", t.name)));
            }
            if t.variants.is_empty() {
                return Err(self.field(format!("tasks[{ti}].variants"), format!("task `{}` has no variants", t.name)));
            }
            let mut vnames = BTreeSet::new();
            for (vi, v) in t.variants.iter().enumerate() {
                let at = format!("tasks[{ti}].variants[{vi}]");
                if !vnames.insert(v.name.as_str()) {
                    return Err(self
                        .field(format!("{at}.name"), format!("duplicate variant `{}` in task `{}`", v.name, t.name)));
                }
                if !(v.accuracy > 0.0 && v.accuracy <= 1.0) {
                    return Err(self.field(format!("{at}.accuracy"), format!("must be in (0, 1], got {}", v.accuracy)));
                }
                let m = &v.model;
                for (k, x) in [("gflops", m.gflops), ("params_m", m.params_m), ("activation_mb", m.activation_mb)] {
                    if !(x.is_finite() && x > 0.0) {
                        return Err(
                            self.field(format!("{at}.model.{k}"), format!("must be a positive number, got {x}"))
                        );
                    }
                }
                if m.decode_steps == 0 {
                    return Err(self.field(format!("{at}.model.decode_steps"), "must be at least 1"));
                }
                if m.kernels == Some(0) {
                    return Err(self.field(format!("{at}.model.kernels"), "must be at least 1 when given"));
                }
            }
        }
        for (ei, e) in self.edges.iter().enumerate() {
            for end in [&e.from, &e.to] {
                if !names.contains(end.as_str()) {
                    return Err(AppError::DanglingEdge {
                        app: self.name.clone(),
                        index: ei,
                        task: end.clone(),
                        known: names.iter().copied().collect::<Vec<_>>().join(", "),
                    });
                }
            }
            if e.from == e.to {
                return Err(AppError::Cycle { app: self.name.clone(), cycle: format!("{} -> {}", e.from, e.to) });
            }
            if self.edges[..ei].iter().any(|o| o == e) {
                return Err(self.field(format!("edges[{ei}]"), format!("duplicate edge {} -> {}", e.from, e.to)));
            }
        }
        for (ti, t) in self.tasks.iter().enumerate() {
            for (vi, v) in t.variants.iter().enumerate() {
                for (down, f) in &v.fanout {
                    let at = format!("tasks[{ti}].variants[{vi}].fanout.{down}");
                    if !self.edges.iter().any(|e| e.from == t.name && &e.to == down) {
                        return Err(self.field(at, format!("there is no edge {} -> {down}", t.name)));
                    }
                    if !(f.is_finite() && *f >= 0.0 && *f <= MAX_FANOUT) {
                        return Err(self.field(at, format!("must be a number in [0, {MAX_FANOUT}], got {f}")));
                    }
                }
            }
        }
        let order = self.topo_order()?;
        let worst = self.worst_case_items(&order);
        if worst > f64::from(MAX_REQUEST_ITEMS) {
            return Err(self.field(
                "tasks",
                format!(
                    "one request could spawn up to {worst:.0} items (every task on its widest variant, \
                     fan-outs rounded up); the cap is {MAX_REQUEST_ITEMS}: lower the fan-outs"
                ),
            ));
        }
        Ok(())
    }

    /// The most items one request can spawn (roots included): per task, the items of each
    /// parent times the parent's largest fan-out towards it, rounded up (a stage emits
    /// `floor(F)` or `ceil(F)` items). `order` is a topological order.
    fn worst_case_items(&self, order: &[usize]) -> f64 {
        let mut items = vec![0.0f64; self.tasks.len()];
        for &t in order {
            let parents = self.parents(t);
            if parents.is_empty() {
                items[t] = 1.0;
            }
            for p in parents {
                let widest = (0..self.tasks[p].variants.len()).map(|v| self.fanout(p, v, t).ceil()).fold(0.0, f64::max);
                items[t] += items[p] * widest;
            }
        }
        items.iter().sum()
    }

    /// Index of a task by name.
    pub fn task_index(&self, name: &str) -> Option<usize> {
        self.tasks.iter().position(|t| t.name == name)
    }

    /// Downstream task indices of task `t`.
    pub fn children(&self, t: usize) -> Vec<usize> {
        self.edges.iter().filter(|e| e.from == self.tasks[t].name).filter_map(|e| self.task_index(&e.to)).collect()
    }

    /// Upstream task indices of task `t`.
    pub fn parents(&self, t: usize) -> Vec<usize> {
        self.edges.iter().filter(|e| e.to == self.tasks[t].name).filter_map(|e| self.task_index(&e.from)).collect()
    }

    /// Tasks with no upstream task: user requests enter here.
    pub fn roots(&self) -> Vec<usize> {
        (0..self.tasks.len()).filter(|&t| self.parents(t).is_empty()).collect()
    }

    /// F(t, v, t'): fan-out of variant `v` of task `t` towards `down` (1.0 if unset).
    pub fn fanout(&self, t: usize, v: usize, down: usize) -> f64 {
        self.tasks[t].variants[v].fanout.get(&self.tasks[down].name).copied().unwrap_or(1.0)
    }

    /// Tasks in a topological order, or the cycle that prevents one.
    pub fn topo_order(&self) -> Result<Vec<usize>, AppError> {
        let n = self.tasks.len();
        // 0 = unvisited, 1 = on stack, 2 = done.
        let mut state = vec![0u8; n];
        let mut order = Vec::with_capacity(n);
        let mut stack: Vec<usize> = Vec::new();
        fn visit(
            app: &AppSpec,
            t: usize,
            state: &mut [u8],
            order: &mut Vec<usize>,
            stack: &mut Vec<usize>,
        ) -> Result<(), AppError> {
            match state[t] {
                2 => return Ok(()),
                1 => {
                    let pos = stack.iter().position(|&s| s == t).unwrap_or(0);
                    let mut names: Vec<&str> = stack[pos..].iter().map(|&s| app.tasks[s].name.as_str()).collect();
                    names.push(app.tasks[t].name.as_str());
                    return Err(AppError::Cycle { app: app.name.clone(), cycle: names.join(" -> ") });
                }
                _ => {}
            }
            state[t] = 1;
            stack.push(t);
            for c in app.children(t) {
                visit(app, c, state, order, stack)?;
            }
            stack.pop();
            state[t] = 2;
            order.push(t);
            Ok(())
        }
        for t in 0..n {
            visit(self, t, &mut state, &mut order, &mut stack)?;
        }
        order.reverse();
        Ok(order)
    }

    /// Every root-to-leaf path, as task indices.
    pub fn paths(&self) -> Vec<Vec<usize>> {
        let mut out = Vec::new();
        fn walk(app: &AppSpec, t: usize, cur: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
            cur.push(t);
            let ch = app.children(t);
            if ch.is_empty() {
                out.push(cur.clone());
            }
            for c in ch {
                walk(app, c, cur, out);
            }
            cur.pop();
        }
        for r in self.roots() {
            walk(self, r, &mut Vec::new(), &mut out);
        }
        out
    }

    /// Index of the most accurate variant of each task (first on ties).
    pub fn best_variant(&self, t: usize) -> usize {
        let vs = &self.tasks[t].variants;
        let mut best = 0;
        for (i, v) in vs.iter().enumerate() {
            if v.accuracy > vs[best].accuracy {
                best = i;
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(extra_edges: &str, acc: &str) -> String {
        format!(
            r#"
name = "t"
latency_slo_ms = 100.0
accuracy_slo = 0.9
[[tasks]]
name = "a"
[[tasks.variants]]
name = "a1"
accuracy = {acc}
model = {{ family = "resnet", gflops = 1.0, params_m = 1.0, activation_mb = 1.0 }}
fanout = {{ b = 2.0 }}
[[tasks]]
name = "b"
[[tasks.variants]]
name = "b1"
accuracy = 0.5
model = {{ family = "resnet", gflops = 1.0, params_m = 1.0, activation_mb = 1.0 }}
[[edges]]
from = "a"
to = "b"
{extra_edges}
"#
        )
    }

    #[test]
    fn valid_app_parses() {
        let a = AppSpec::parse(&app("", "0.7"), "x").expect("valid");
        assert_eq!(a.paths(), vec![vec![0, 1]]);
        assert_eq!(a.fanout(0, 0, 1), 2.0);
        assert_eq!(a.topo_order().expect("dag"), vec![0, 1]);
    }

    #[test]
    fn cycle_is_named() {
        let e = AppSpec::parse(&app("[[edges]]\nfrom = \"b\"\nto = \"a\"\n", "0.7"), "x").unwrap_err();
        assert!(
            matches!(&e, AppError::Cycle { cycle, .. } if cycle.contains("a -> b -> a") || cycle.contains("b -> a -> b")),
            "{e}"
        );
    }

    #[test]
    fn dangling_edge_is_named() {
        let e = AppSpec::parse(&app("[[edges]]\nfrom = \"b\"\nto = \"zz\"\n", "0.7"), "x").unwrap_err();
        assert!(e.to_string().contains("edges[1]") && e.to_string().contains("zz"), "{e}");
    }

    #[test]
    fn accuracy_out_of_range_names_field() {
        let e = AppSpec::parse(&app("", "1.5"), "x").unwrap_err();
        assert!(e.to_string().contains("tasks[0].variants[0].accuracy"), "{e}");
    }

    #[test]
    fn empty_variants_and_bad_fanout_are_named() {
        let no_variants = app("", "0.7").replace(
            "[[tasks.variants]]\nname = \"b1\"\naccuracy = 0.5\nmodel = { family = \"resnet\", gflops = 1.0, params_m = 1.0, activation_mb = 1.0 }\n",
            "variants = []\n",
        );
        let e = AppSpec::parse(&no_variants, "x").unwrap_err();
        assert!(e.to_string().contains("tasks[1].variants") && e.to_string().contains("no variants"), "{e}");
        let bad_fanout = app("", "0.7").replace("fanout = { b = 2.0 }", "fanout = { zz = 2.0 }");
        let e = AppSpec::parse(&bad_fanout, "x").unwrap_err();
        assert!(e.to_string().contains("fanout.zz") && e.to_string().contains("no edge a -> zz"), "{e}");
        let neg = app("", "0.7").replace("fanout = { b = 2.0 }", "fanout = { b = -1.0 }");
        assert!(AppSpec::parse(&neg, "x").unwrap_err().to_string().contains("fanout.b"));
        let slo = app("", "0.7").replace("latency_slo_ms = 100.0", "latency_slo_ms = 0.0");
        assert!(AppSpec::parse(&slo, "x").unwrap_err().to_string().contains("latency_slo_ms"));
    }

    /// SLOs beyond an hour (1.8e22 ms once panicked a frontend) and fan-outs beyond the caps
    /// are refused with the field named.
    #[test]
    fn slos_and_fanouts_are_bounded() {
        for slo in ["1.8e22", "3600000.5", "inf", "nan"] {
            let text = app("", "0.7").replace("latency_slo_ms = 100.0", &format!("latency_slo_ms = {slo}"));
            let e = AppSpec::parse(&text, "x").unwrap_err().to_string();
            assert!(e.contains("latency_slo_ms") && e.contains("one hour"), "{slo}: {e}");
        }
        let hour = app("", "0.7").replace("latency_slo_ms = 100.0", "latency_slo_ms = 3600000.0");
        assert!(AppSpec::parse(&hour, "x").is_ok());
        let wide = app("", "0.7").replace("fanout = { b = 2.0 }", "fanout = { b = 1e7 }");
        let e = AppSpec::parse(&wide, "x").unwrap_err().to_string();
        assert!(e.contains("fanout.b") && e.contains("[0, 64]"), "{e}");
        assert!(AppSpec::parse(&app("", "0.7").replace("b = 2.0", "b = 64.0"), "x").is_ok());
        // Three levels of fan-out 64 (and 63.5, rounded up): 1 + 64 + 4096 items > 4096.
        let deep = |f: &str| {
            app("", "0.7").replace("fanout = { b = 2.0 }", &format!("fanout = {{ b = {f} }}")).replace(
                "[[edges]]",
                "[[tasks]]\nname = \"c\"\n[[tasks.variants]]\nname = \"c1\"\naccuracy = 0.5\n\
                 model = { family = \"resnet\", gflops = 1.0, params_m = 1.0, activation_mb = 1.0 }\n\
                 [[edges]]\nfrom = \"b\"\nto = \"c\"\n[[edges]]",
            )
        };
        let ok = deep("2.0").replace("name = \"b1\"", "name = \"b1\"\nfanout = { c = 64.0 }");
        assert!(AppSpec::parse(&ok, "x").is_ok(), "1 + 2 + 128 items");
        for f in ["64.0", "63.5"] {
            let text = deep(f).replace("name = \"b1\"", "name = \"b1\"\nfanout = { c = 64.0 }");
            let e = AppSpec::parse(&text, "x").unwrap_err().to_string();
            assert!(e.contains("4161 items") && e.contains("4096"), "{f}: {e}");
        }
    }

    proptest::proptest! {
        #[test]
        fn parser_never_panics(text in ".{0,400}") {
            let _ = AppSpec::parse(&text, "fuzz");
        }
    }

    #[test]
    fn parse_error_names_file_and_line() {
        let e = AppSpec::parse("name = ", "apps/x.toml").unwrap_err();
        assert!(e.to_string().starts_with("apps/x.toml"), "{e}");
    }
}
