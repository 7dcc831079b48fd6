//! The joint cluster plan on real agent processes: six single-model apps over the measured
//! A100 80GB profiles share GPUs (`jigsaw status` shows instances of different apps on one
//! GPU), and with spread, SIGKILLing the node with the most capacity leaves every app
//! serving at least the worst-case capacity its plan reported, until the re-plan.
//! Every wait polls observable state with a deadline.

use jigsaw_cli::cluster::{self as local, plan_applied, wait_for, LocalCluster, Operator};
use jigsaw_protocol::wire::ClusterStatus;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

const JIGSAW: &str = env!("CARGO_BIN_EXE_jigsaw");
const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");

fn jigsaw(args: &[&str]) -> (bool, String, Vec<u8>) {
    let out = Command::new(JIGSAW).args(args).output().expect("run jigsaw");
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text, out.stdout)
}

mod common;
use common::Cluster;

/// The two tests each run a cluster of agent processes and load it; run together on a
/// 2-core CI machine they starve each other (in one CI run mobilenetv2 had 9 of 106 requests
/// on time with every node up while the other test's cluster was planning). One at a time.
static ONE_CLUSTER_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_CLUSTER_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

const SIX: [&str; 6] = ["resnet50", "resnet101", "densenet121", "mobilenetv2", "vgg16", "bert"];

/// An app-set file with the six apps at `rps` each.
fn app_set(dir: &std::path::Path, rps: &[f64; 6]) -> PathBuf {
    let mut text = String::from("gpu = \"a100-80gb\"\n");
    for (m, r) in SIX.iter().zip(rps) {
        text += &format!(
            "[[apps]]\nspec = \"{EXAMPLES}/apps/measured/{m}.toml\"\nprofiles = \"{EXAMPLES}/profiles/measured-a100-80gb/{m}.csv\"\nrps = {r}\n"
        );
    }
    let p = dir.join("six.toml");
    std::fs::write(&p, text).expect("write app set");
    p
}

fn gpus_shared(s: &ClusterStatus) -> usize {
    s.nodes
        .iter()
        .flat_map(|n| &n.gpus)
        .filter(|g| g.live.iter().filter(|i| !i.app.is_empty()).map(|i| &i.app).collect::<BTreeSet<_>>().len() > 1)
        .count()
}

/// A local cluster of `nodes` × `per_node` simulated A100s in a fresh directory named
/// `name`, with the six apps registered at `rps`: the guard, and the cluster directory.
fn up_six(name: &str, nodes: &str, per_node: &str, rps: &[f64; 6]) -> (Cluster, PathBuf) {
    let dir = std::env::temp_dir().join(format!("jigsaw-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    // The app set lives in the cluster directory itself, so the guard (which reads the
    // agents' pids from `cluster.json` there) kills them and removes everything.
    let set = app_set(&dir, rps);
    let cdir = dir.clone();
    let (ok, out, _) = jigsaw(&[
        "up",
        "--nodes",
        nodes,
        "--gpus-per-node",
        per_node,
        "--gpu",
        "a100-80gb",
        "--apps",
        set.to_str().expect("utf-8"),
        "--dir",
        cdir.to_str().expect("utf-8 path"),
    ]);
    let guard = Cluster(dir);
    assert!(ok, "jigsaw up: {out}");
    assert!(cdir.join("cluster.json").exists(), "the guard finds the agents in {}", cdir.display());
    (guard, cdir)
}

#[test]
fn six_measured_apps_share_gpus_and_status_shows_it() {
    let _one = one_at_a_time();
    let (_guard, cdir) = up_six("share", "2", "4", &[40.0, 30.0, 40.0, 60.0, 20.0, 5.0]);
    let d = cdir.to_str().expect("utf-8 path");
    let (ok, json, stdout) = jigsaw(&["status", "--json", "--dir", d]);
    assert!(ok, "{json}");
    let s: ClusterStatus = serde_json::from_slice(&stdout).expect("status JSON");
    let plan = s.state.plan.as_ref().expect("a plan");
    for a in &plan.apps {
        assert!(a.planned_rps >= a.requested_rps * (1.0 - 1e-6), "{} not fully served: {a:?}", a.app);
    }
    assert_eq!(plan.apps.len(), 6);
    assert!(gpus_shared(&s) >= 1, "no GPU runs two apps: {json}");
    assert!(plan.stats.gpus_used < 6, "six apps on {} GPUs: not shared", plan.stats.gpus_used);
    // The text status shows one GPU line naming two different apps.
    let (ok, text, _) = jigsaw(&["status", "--dir", d]);
    assert!(ok, "{text}");
    let shared_line = text
        .lines()
        .filter(|l| l.contains("GPU-"))
        .any(|l| SIX.iter().filter(|m| l.contains(&format!(" {m}/"))).count() > 1);
    assert!(shared_line, "no status line shows two apps on one GPU:\n{text}");
}

#[test]
fn spread_survives_losing_the_biggest_node_at_the_reported_capacity() {
    let _one = one_at_a_time();
    let (_guard, cdir) = up_six("spread", "3", "2", &[40.0, 30.0, 40.0, 60.0, 20.0, 20.0]);
    let d = cdir.to_str().expect("utf-8 path");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let op = Operator::for_dir(&cdir).expect("operator");
        let s = wait_for(&op, Duration::from_secs(60), "the plan", plan_applied).await.expect("plan");
        let plan = s.state.plan.clone().expect("plan");
        // Every task of every app runs on at least two nodes.
        for a in &plan.apps {
            let nodes: BTreeSet<&String> = plan
                .nodes
                .iter()
                .filter(|(_, gs)| gs.values().flatten().any(|i| i.app == a.app))
                .map(|(n, _)| n)
                .collect();
            assert!(nodes.len() >= 2, "{} only on {nodes:?}", a.app);
            let (_, left) = a.worst_node_loss.clone().expect("worst case reported");
            assert!(left > 0.0, "{}: losing one node stops it: {a:?}", a.app);
        }
        // The node with the most capacity (by compute slices).
        let biggest = plan
            .nodes
            .iter()
            .max_by_key(|(n, gs)| {
                (gs.values().flatten().map(|i| u32::from(i.slices)).sum::<u32>(), std::cmp::Reverse((*n).clone()))
            })
            .map(|(n, _)| n.clone())
            .expect("a node");
        // Every app under load at once, at half its reported worst-case capacity: once with
        // every node up (the baseline of this loaded machine), once right after SIGKILLing
        // the biggest node (before the coordinator notices and re-plans).
        // What is compared is how many requests each app gets *answered* (200, on time or
        // late), not how many meet the latency SLO: this is a debug build of six load
        // generators and three agents on two shared cores (40 % CPU steal measured on the
        // dev VM), where a 20 ms SLO (mobilenetv2) is met by 2–60 % of requests with every
        // node up, run to run. An app that lost its capacity with the node is answered
        // (almost) never; one that kept it is answered as before. SLO attainment under load
        // is measured by `jigsaw bench transition` (release build).
        let load_all = |phase: &str| -> Vec<(String, u64, u64)> {
            let loads: Vec<(String, std::process::Child)> = plan
                .apps
                .iter()
                .map(|a| {
                    let (_, left) = a.worst_node_loss.clone().expect("reported");
                    let rps = format!("{:.1}", (left * 0.5).max(4.0));
                    let child = Command::new(JIGSAW)
                        .args(["load", "--app", &a.app, "--rps", &rps, "--duration", "3s", "--json", "--dir", d])
                        .stdout(std::process::Stdio::piped())
                        .stderr(std::process::Stdio::piped())
                        .spawn()
                        .expect("spawn load");
                    (a.app.clone(), child)
                })
                .collect();
            loads
                .into_iter()
                .map(|(app, child)| {
                    let out = child.wait_with_output().expect("load finishes");
                    assert!(out.status.success(), "{phase}: load {app}: {}", String::from_utf8_lossy(&out.stderr));
                    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("load JSON");
                    let sent = r["sent"].as_u64().expect("sent");
                    let okn = r["outcomes"]["ok"].as_u64().expect("ok");
                    let late = r["causes"]["200 after deadline"].as_u64().unwrap_or(0);
                    eprintln!("{phase}: {app}: {}/{sent} answered, {okn} on time {}", okn + late, r["causes"]);
                    (app, sent, okn + late)
                })
                .collect()
        };
        let before = load_all("all nodes up");
        let c = LocalCluster::load(&cdir).expect("cluster.json");
        let victim = c.nodes.iter().find(|n| n.name == biggest).expect("node");
        local::signal(victim.pid, "KILL").expect("kill");
        let after = load_all(&format!("{biggest} killed"));
        for ((app, sent0, ok0), (_, sent1, ok1)) in before.iter().zip(&after) {
            let (r0, r1) = (*ok0 as f64 / (*sent0).max(1) as f64, *ok1 as f64 / (*sent1).max(1) as f64);
            // The requests in flight on the killed node and the first ones sent there before
            // the frontends mark it suspect may fail; the rest are answered as before.
            assert!(
                *sent1 >= 10 && r1 >= r0 - 0.2,
                "{app}: {ok1}/{sent1} answered after losing {biggest}, {ok0}/{sent0} before"
            );
        }
    });
}
