//! The cluster status page (`GET /status` on every agent, `jigsaw status --html FILE`): one
//! self-contained HTML document, no script, with an SVG map of every GPU's MIG slots.
//!
//! Pure: [`render`] turns a [`ClusterStatus`] (what `jigsaw status` prints) and the serving
//! agent's own frontend figures ([`FrontendFigures`], the numbers behind its `/metrics`)
//! into HTML. Every MIG instance is one `<rect class="mig">` placed at its start slot and
//! as wide as its memory slices, coloured by app (hue) and task (lightness), labelled with
//! task, variant, MPS level and batch; idle instances are grey.

use jigsaw_protocol::catalogue::GpuModel;
use jigsaw_protocol::cluster::fnv64;
use jigsaw_protocol::wire::{ApplyOutcome, ClusterStatus};
use std::fmt::Write as _;

/// One app as the serving agent's frontend saw it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AppFigures {
    /// App name.
    pub app: String,
    /// Requests per second arriving at this frontend (`jigsaw_demand_rps`).
    pub demand_rps: f64,
    /// Requests per second answered ok, over the same window.
    pub goodput_rps: f64,
    /// Requests answered ok (`jigsaw_requests_total{outcome="ok"}`).
    pub ok: u64,
    /// Requests answered with any other outcome.
    pub not_ok: u64,
    /// `jigsaw_served_accuracy` (None until every task served a stage).
    pub served_accuracy: Option<f64>,
    /// `jigsaw_accuracy_slo`.
    pub accuracy_slo: f64,
}

/// The serving agent's frontend figures.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FrontendFigures {
    /// The agent.
    pub node: String,
    /// Per app.
    pub apps: Vec<AppFigures>,
}

/// HTML-escape `s`.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The fill of an instance of `task` of `app`: a hue per app, a lightness per task.
fn colour(app: &str, task: &str) -> String {
    let hue = fnv64(&[app]) % 360;
    let light = 38 + fnv64(&[app, task]) % 30;
    format!("hsl({hue},65%,{light}%)")
}

/// Slot width in the SVG, px.
const SLOT: u32 = 96;
/// Bar height, px.
const BAR: u32 = 44;

fn gpu_svg(out: &mut String, uuid: &str, model: GpuModel, live: &[jigsaw_protocol::plan::InstancePlan]) {
    let spec = model.spec();
    let slots =
        spec.profiles.iter().map(|p| p.starts.iter().max().copied().unwrap_or(0) + p.mem_slices).max().unwrap_or(8);
    let width = u32::from(slots) * SLOT;
    let _ = write!(
        out,
        "<svg class=\"gpu\" data-gpu=\"{}\" width=\"{}\" height=\"{}\" viewBox=\"0 0 {} {}\" role=\"img\" aria-label=\"MIG layout of {}\">",
        esc(uuid),
        width + 2,
        BAR + 2,
        width + 2,
        BAR + 2,
        esc(uuid)
    );
    let _ = write!(
        out,
        "<rect class=\"frame\" x=\"1\" y=\"1\" width=\"{width}\" height=\"{BAR}\" fill=\"#f4f4f4\" stroke=\"#999\"/>"
    );
    for i in live {
        let span = spec.profile_index(&i.mig_profile).map_or(1, |p| spec.profiles[p].mem_slices);
        let (x, w) = (1 + u32::from(i.start) * SLOT, u32::from(span) * SLOT);
        let idle = i.task.is_empty();
        let fill = if idle { "#cfcfcf".to_string() } else { colour(&i.app, &i.task) };
        let title = if idle {
            format!("{} at slot {}: idle", i.mig_profile, i.start)
        } else {
            format!(
                "{} at slot {}: {}/{} ({}), MPS {}, batch {}",
                i.mig_profile, i.start, i.task, i.variant, i.app, i.mps, i.batch
            )
        };
        let _ = write!(
            out,
            "<g><title>{}</title><rect class=\"mig\" data-app=\"{}\" data-task=\"{}\" x=\"{x}\" y=\"1\" width=\"{w}\" height=\"{BAR}\" fill=\"{fill}\" stroke=\"#222\"/>",
            esc(&title),
            esc(&i.app),
            esc(&i.task)
        );
        let (top, bottom) = if idle {
            (i.mig_profile.clone(), "idle".to_string())
        } else {
            (i.task.clone(), format!("{} · mps{} b{}", i.mig_profile, i.mps, i.batch))
        };
        let _ = write!(
            out,
            "<text x=\"{cx}\" y=\"19\" font-size=\"12\" text-anchor=\"middle\" fill=\"#fff\">{}</text><text x=\"{cx}\" y=\"36\" font-size=\"10\" text-anchor=\"middle\" fill=\"#fff\">{}</text></g>",
            esc(&top),
            esc(&bottom),
            cx = x + w / 2
        );
    }
    out.push_str("</svg>");
}

/// The status page.
pub fn render(s: &ClusterStatus, local: &FrontendFigures) -> String {
    let mut o = String::new();
    o.push_str("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>jigsaw cluster</title>");
    o.push_str(
        "<style>body{font:14px system-ui,sans-serif;margin:1.5em}table{border-collapse:collapse;margin:.5em 0 1.5em}",
    );
    o.push_str("td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}.down{color:#b00;font-weight:bold}");
    o.push_str(".gpu{display:block;margin:.2em 0 .8em}h2{margin-top:1.2em}</style></head><body>");
    let _ = write!(
        o,
        "<h1>jigsaw cluster</h1><p id=\"summary\">coordinator <b>{}</b>, Raft term {}, voters {}, plan epoch <b id=\"epoch\">{}</b></p>",
        esc(&s.coordinator),
        s.term,
        esc(&s.voters.join(", ")),
        s.state.epoch
    );
    o.push_str("<h2>Apps (the plan)</h2><table id=\"apps\"><tr><th>app</th><th>GPUs</th><th>planned req/s</th><th>planned accuracy</th><th>note</th></tr>");
    if let Some(p) = &s.state.plan {
        for a in &p.apps {
            let _ = write!(
                o,
                "<tr><td>{}</td><td>{}</td><td>{:.1}</td><td>{:.4}</td><td>{}</td></tr>",
                esc(&a.app),
                a.gpus,
                a.planned_rps,
                a.accuracy,
                esc(a.note.as_deref().unwrap_or(""))
            );
        }
    }
    o.push_str("</table>");
    if let Some(p) = &s.state.plan {
        o.push_str("<p id=\"legend\">");
        for a in &p.apps {
            let _ = write!(
                o,
                "<span style=\"display:inline-block;width:1em;height:1em;background:{};vertical-align:middle\"></span> {} &nbsp; ",
                colour(&a.app, ""),
                esc(&a.app)
            );
        }
        o.push_str("(shade: task; grey: idle instance)</p>");
    }
    o.push_str("<h2>Demand (all frontends, last control interval)</h2><table id=\"demand\"><tr><th>app</th><th>measured req/s</th><th>forecast req/s</th><th>planned req/s</th><th>floor</th><th>why</th><th>SLO violations</th></tr>");
    for (name, entry) in &s.state.apps {
        let d = s.demand.iter().find(|d| d.app == *name);
        let opt = |x: Option<f64>| x.map_or("-".to_string(), |x| format!("{x:.1}"));
        let floor = if entry.demand_auto {
            "auto".to_string()
        } else {
            format!("{:.1}", s.state.registered_rps(name).unwrap_or(entry.demand_rps))
        };
        let why = s.state.demand.get(name).map_or("registered", |r| r.reason.as_str());
        let viol = d.and_then(|d| d.violation_rate).map_or("-".to_string(), |v| format!("{:.2} %", 100.0 * v));
        let _ = write!(
            o,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.1}</td><td>{floor}</td><td>{}</td><td>{viol}</td></tr>",
            esc(name),
            opt(d.and_then(|d| d.measured_rps)),
            opt(d.and_then(|d| d.forecast_rps)),
            entry.demand_rps,
            esc(why)
        );
    }
    o.push_str("</table>");
    let _ = write!(
        o,
        "<h2>Requests through {}'s frontend</h2><table id=\"traffic\"><tr><th>app</th><th>demand req/s</th><th>goodput req/s</th><th>ok</th><th>not ok</th><th>violations</th><th>served accuracy</th><th>accuracy SLO</th></tr>",
        esc(&local.node)
    );
    for a in &local.apps {
        let total = a.ok + a.not_ok;
        let viol = if total == 0 { 0.0 } else { 100.0 * a.not_ok as f64 / total as f64 };
        let acc = a.served_accuracy.map_or("-".to_string(), |x| format!("{x:.4}"));
        let _ = write!(
            o,
            "<tr><td>{}</td><td>{:.1}</td><td>{:.1}</td><td>{}</td><td>{}</td><td>{viol:.2} %</td><td>{acc}</td><td>{:.2}</td></tr>",
            esc(&a.app),
            a.demand_rps,
            a.goodput_rps,
            a.ok,
            a.not_ok,
            a.accuracy_slo
        );
    }
    o.push_str("</table><h2>Members and GPUs</h2><table id=\"members\"><tr><th>node</th><th>state</th><th>role</th><th>last heartbeat</th><th>applied epoch</th><th>last outcome</th></tr>");
    for n in &s.nodes {
        let m = s.state.members.get(&n.node);
        let (state, class) = match m {
            Some(m) if m.alive => ("alive", ""),
            Some(_) => ("DOWN", " class=\"down\""),
            None => ("unknown", ""),
        };
        let role = if m.is_some_and(|m| m.eligible) { "voter" } else { "agent" };
        let seen = n.last_seen_ms.map_or("never".to_string(), |t| format!("{:.1} s ago", t as f64 / 1000.0));
        let outcome = match &n.last_outcome {
            Some((e, ApplyOutcome::Applied)) => format!("epoch {e} applied"),
            Some((e, other)) => format!("epoch {e}: {other:?}"),
            None => "-".into(),
        };
        let _ = write!(
            o,
            "<tr><td>{}</td><td{class}>{state}</td><td>{role}</td><td>{seen}</td><td>{}</td><td>{}</td></tr>",
            esc(&n.node),
            n.applied_epoch,
            esc(&outcome)
        );
    }
    o.push_str("</table>");
    for n in &s.nodes {
        let _ = write!(o, "<h3>{}</h3>", esc(&n.node));
        if n.gpus.is_empty() {
            o.push_str("<p>no GPUs reported</p>");
        }
        for g in &n.gpus {
            let _ = write!(o, "<div>{} ({})</div>", esc(&g.uuid), g.model);
            gpu_svg(&mut o, &g.uuid, g.model, &g.live);
        }
    }
    o.push_str("</body></html>\n");
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use jigsaw_protocol::cluster::{ClusterState, GpuInventory};
    use jigsaw_protocol::testing::instance;
    use jigsaw_protocol::wire::NodeStatus;

    fn status() -> ClusterStatus {
        let live = vec![
            jigsaw_protocol::plan::InstancePlan { app: "traffic".into(), ..instance("detect", "3g.40gb", 0) },
            jigsaw_protocol::plan::InstancePlan { app: "a<b".into(), ..instance("cls", "1g.10gb", 4) },
            instance("", "1g.10gb", 5),
        ];
        ClusterStatus {
            coordinator: "node-1".into(),
            term: 3,
            voters: vec!["node-1".into()],
            state: ClusterState::default(),
            nodes: vec![NodeStatus {
                node: "node-1".into(),
                last_seen_ms: Some(120),
                applied_epoch: 2,
                gpus: vec![GpuInventory { uuid: "GPU-1".into(), model: GpuModel::H100_80gb, live }],
                last_outcome: None,
            }],
            observed: vec![],
            demand: vec![],
        }
    }

    #[test]
    fn one_rect_per_instance_placed_by_slot_and_escaped() {
        let html = render(&status(), &FrontendFigures::default());
        assert_eq!(html.matches("class=\"mig\"").count(), 3, "{html}");
        assert!(html.contains("x=\"1\" y=\"1\" width=\"384\""), "3g.40gb spans 4 memory slices from slot 0: {html}");
        assert!(html.contains("x=\"385\""), "1g.10gb at slot 4: {html}");
        assert!(html.contains("data-app=\"a&lt;b\""), "escaped: {html}");
        assert!(!html.contains("<script"), "no script");
        assert!(html.contains("fill=\"#cfcfcf\""), "idle instances are grey");
    }

    #[test]
    fn demand_rows_show_measured_forecast_and_planned() {
        let mut s = status();
        let entry = jigsaw_protocol::cluster::AppEntry {
            name: "a<b".into(),
            spec_toml: String::new(),
            profiles_csv: String::new(),
            demand_rps: 10.0,
            demand_auto: false,
        };
        s.state.apply(&jigsaw_protocol::cluster::ClusterCommand::PutApp(entry));
        s.state.apply(&jigsaw_protocol::cluster::ClusterCommand::SetDemand {
            app: "a<b".into(),
            rps: 46.2,
            reason: "forecast above the band".into(),
        });
        s.demand = vec![jigsaw_protocol::wire::AppDemand {
            app: "a<b".into(),
            measured_rps: Some(40.0),
            forecast_rps: Some(42.0),
            violation_rate: Some(0.125),
            tasks: vec![],
            intervals: 5,
        }];
        let html = render(&s, &FrontendFigures::default());
        let row = "<tr><td>a&lt;b</td><td>40.0</td><td>42.0</td><td>46.2</td><td>10.0</td><td>forecast above the band</td><td>12.50 %</td></tr>";
        assert!(html.contains(row), "{html}");
    }
}
