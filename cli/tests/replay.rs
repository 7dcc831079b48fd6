//! `jigsaw replay` end to end: a tiny inline trace replayed on a real local cluster (one
//! agent process, simulated GPUs, timed executors) under one space; the JSON report has the
//! documented keys and consistent figures.

use std::process::Command;

mod common;
use common::Cluster;

/// Kill and remove every cluster a replay left under `dir` (a failed run), then `dir`.
struct Leftovers(std::path::PathBuf);

impl Drop for Leftovers {
    fn drop(&mut self) {
        if let Ok(entries) = std::fs::read_dir(&self.0) {
            for e in entries.flatten() {
                drop(Cluster(e.path()));
            }
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_tiny_trace_replays_with_consistent_figures() {
    let dir = std::env::temp_dir().join(format!("jigsaw-replay-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let guard = Leftovers(dir.clone());
    // 4 s of trace, 20 requests per second.
    let mut trace = String::from("TIMESTAMP,ContextTokens,GeneratedTokens\n");
    for i in 0..80 {
        trace += &format!("2023-11-16 18:15:{:02}.{:03}0000,100,10\n", 10 + i / 20, (i % 20) * 50);
    }
    let path = dir.join("tiny.csv");
    std::fs::write(&path, trace).expect("write trace");
    let svg = dir.join("replay.svg");
    let out = Command::new(env!("CARGO_BIN_EXE_jigsaw"))
        .args(["replay", "--app", "social", "--space", "A+S+T", "--interval", "1s", "--json", "--svg"])
        .arg(&svg)
        .arg("--trace")
        .arg(&path)
        .arg("--dir")
        .arg(&dir)
        .output()
        .expect("run jigsaw replay");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "replay failed: {stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(v["runs"].as_array().map(Vec::len), Some(1));
    assert_eq!(v["space"], "A+S+T");
    assert_eq!(v["runs"][0]["space"], "A+S+T");
    let intervals = v["intervals"].as_array().expect("intervals[]");
    // The trace spans 3.95 s: four intervals of 1 s.
    assert_eq!(intervals.len(), 4, "{v}");
    let sent: u64 = intervals.iter().map(|i| i["sent"].as_u64().expect("sent")).sum();
    assert_eq!(sent, 80, "every trace request was sent once");
    for i in intervals {
        for k in ["slices_used_pct", "accuracy_pct", "slo_violation_pct"] {
            let x = i[k].as_f64().unwrap_or_else(|| panic!("{k} in {i}"));
            assert!((0.0..=100.0).contains(&x), "{k} = {x}");
        }
        assert!(i["slices_used_pct"].as_f64().unwrap_or(0.0) > 0.0, "the app uses slices: {i}");
        assert!(i["transitions"].is_u64() && i["transition_failures"].is_u64());
    }
    let s = &v["summary"];
    for k in ["slices_used_pct", "accuracy_pct", "slo_violation_pct", "transitions", "transition_failures"] {
        assert!(s[k].is_number(), "summary.{k} in {s}");
    }
    assert_eq!(s["sent"], 80);
    assert!(s["accuracy_pct"].as_f64().unwrap_or(0.0) >= 90.0, "the plan meets social's accuracy SLO: {s}");
    let chart = std::fs::read_to_string(&svg).expect("the SVG was written");
    assert!(chart.starts_with("<svg") && chart.matches("<polyline").count() == 3);
    // The replay removed its cluster.
    let left: Vec<_> = std::fs::read_dir(&dir).expect("dir").flatten().filter(|e| e.path().is_dir()).collect();
    assert!(left.is_empty(), "left behind: {:?}", left.iter().map(|e| e.path()).collect::<Vec<_>>());
    drop(guard);
}

/// `jigsaw up --space A+T` sets the cluster's search space (`SetConfig`); the coordinator
/// refuses settings it cannot plan with.
#[test]
fn up_sets_the_search_space_and_bad_settings_are_refused() {
    use jigsaw_cli::cluster::Operator;
    use jigsaw_protocol::cluster::ClusterConfig;
    use jigsaw_protocol::wire::{ClientReply, ClientRequest};
    let dir = std::env::temp_dir().join(format!("jigsaw-space-test-{}", std::process::id()));
    let _guard = Cluster(dir.clone());
    let out = Command::new(env!("CARGO_BIN_EXE_jigsaw"))
        .args(["up", "--nodes", "1", "--gpus-per-node", "1", "--no-apps", "--space", "a+t", "--dir"])
        .arg(&dir)
        .output()
        .expect("run jigsaw up");
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("search space A+T"), "{text}");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let op = Operator::for_dir(&dir).expect("operator");
        let s = op.status().await.expect("status");
        assert_eq!(s.state.config.space, "A+T");
        for (config, why) in [
            (ClusterConfig { space: "A+X".into(), ..s.state.config.clone() }, "space"),
            (ClusterConfig { dead_after_ms: 0, ..s.state.config.clone() }, "dead_after_ms"),
        ] {
            match op.request(ClientRequest::set_config(config)).await.expect("an answer") {
                ClientReply::Invalid { message } => assert!(message.contains(why), "{message}"),
                other => panic!("accepted a bad setting: {other:?}"),
            }
        }
        assert_eq!(op.status().await.expect("status").state.config.space, "A+T", "unchanged");
    });
    let bad = Command::new(env!("CARGO_BIN_EXE_jigsaw"))
        .args(["up", "--nodes", "1", "--no-apps", "--space", "Q", "--dir"])
        .arg(dir.join("other"))
        .output()
        .expect("run jigsaw up");
    let _other = Cluster(dir.join("other"));
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown search space `Q`"));
}
