//! The `jigsaw` binary end to end: bad input gets a clear error naming what is wrong and
//! exit status 1 (never a panic), good input gets the documented output.

use std::path::PathBuf;
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn jigsaw(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_jigsaw")).args(args).current_dir(root()).output().expect("runs")
}

fn fails_with(args: &[&str], needles: &[&str]) {
    let out = jigsaw(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} should fail");
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: stderr lacks `{n}`: {err}");
    }
}

const APP: &str = "examples/apps/traffic.toml";
const PROF: &str = "examples/profiles/traffic-h100-80gb.csv";

#[test]
fn plan_prints_layouts_and_json() {
    let out = jigsaw(&["plan", "--app", APP, "--profiles", PROF, "--gpus", "4", "--demand", "500"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("gpu    0:") && text.contains("accuracy") && text.contains("gap"), "{text}");
    let out = jigsaw(&["plan", "--app", APP, "--profiles", PROF, "--gpus", "4", "--demand", "500", "--json"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    assert_eq!(v["app"], "traffic");
    assert!(v["gpus"][0]["instances"][0]["start"].is_u64());
    assert!(v["stats"]["gap"].is_f64());
}

#[test]
fn bad_inputs_get_clear_errors() {
    let dir = std::env::temp_dir().join(format!("jigsaw-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    let bad_app = dir.join("bad.toml");
    let text = std::fs::read_to_string(root().join(APP)).expect("app").replace("accuracy = 0.507", "accuracy = 1.7");
    std::fs::write(&bad_app, text).expect("write");
    let bad_app = bad_app.to_str().expect("utf8");
    fails_with(
        &["plan", "--app", bad_app, "--profiles", PROF, "--gpus", "4", "--demand", "5"],
        &["accuracy", "(0, 1]"],
    );

    let bad_csv = dir.join("bad.csv");
    std::fs::write(
        &bad_csv,
        "task,variant,gpu,mig_profile,mps,batch,p95_ms,throughput_rps\nd,y,h100-80gb,1g.10gb,9,1,1,1\n",
    )
    .expect("write");
    fails_with(
        &["plan", "--app", APP, "--profiles", bad_csv.to_str().expect("utf8"), "--gpus", "4", "--demand", "5"],
        &["bad.csv:2", "mps"],
    );
    fails_with(&["plan", "--app", "nope.toml", "--profiles", PROF, "--gpus", "4", "--demand", "5"], &["nope.toml"]);
    fails_with(&["plan", "--app", APP, "--profiles", PROF, "--gpus", "4", "--demand", "5", "--space", "Q"], &["Q"]);
    fails_with(&["plan", "--app", APP, "--profiles", PROF, "--gpus", "0", "--demand", "5"], &["--gpus"]);
    fails_with(&["plan", "--app", APP, "--profiles", PROF, "--gpus", "4", "--demand", "-3"], &["--demand"]);
    fails_with(&["plan", "--app", APP, "--profiles", PROF, "--gpu", "v100", "--gpus", "4", "--demand", "5"], &["v100"]);
    fails_with(&["plan", "--app", APP, "--profiles", PROF, "--gpus", "1", "--demand", "1e9"], &["GPU capacity binds"]);

    let cfg = dir.join("c.toml");
    std::fs::write(&cfg, "[planner]\nmip_rel_gap = 3\n").expect("write");
    fails_with(
        &[
            "--config",
            cfg.to_str().expect("utf8"),
            "plan",
            "--app",
            APP,
            "--profiles",
            PROF,
            "--gpus",
            "4",
            "--demand",
            "5",
        ],
        &["planner.mip_rel_gap"],
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn max_demand_writes_table_and_svg() {
    let svg = std::env::temp_dir().join(format!("jigsaw-md-{}.svg", std::process::id()));
    let out = jigsaw(&[
        "analyze",
        "max-demand",
        "--app",
        "examples/apps/social.toml",
        "--profiles",
        "examples/profiles/social-h100-80gb.csv",
        "--gpus",
        "8",
        "--svg",
        svg.to_str().expect("utf8"),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    for space in ["Unopt", "A+T", "S+T", "A+S", "A+S+T"] {
        assert!(text.lines().any(|l| l.starts_with(&format!("{space} "))), "{space} missing: {text}");
    }
    let chart = std::fs::read_to_string(&svg).expect("svg written");
    assert!(chart.starts_with("<svg") && chart.matches("<rect").count() >= 9);
    let _ = std::fs::remove_file(svg);
}

#[test]
fn profiles_import_converts_and_rejects_malformed_files_with_line_and_column() {
    let dir = std::env::temp_dir().join(format!("jigsaw-import-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let src = dir.join("src");
    std::fs::create_dir_all(&src).expect("dir");
    let header = "Mig instance,Batch size,Workload Number,Throughput,Latency\n";
    std::fs::write(src.join("tiny.csv"), format!("{header}1,1,1,196.762,0.005\n7,8,2,800.0,0.01\n7,8,3,0,0\n"))
        .expect("write");
    let out = dir.join("out");
    let (s, o) = (src.to_str().expect("utf8"), out.to_str().expect("utf8"));
    let run = jigsaw(&["profiles", "import", "--format", "parvagpu", s, "--gpu", "a100-80gb", "--out", o]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let csv = std::fs::read_to_string(out.join("tiny.csv")).expect("written");
    let table = jigsaw_protocol::ProfileTable::parse_csv(&csv, "tiny.csv").expect("the planner reads it");
    assert_eq!(table.latency_stat(), jigsaw_protocol::profile::LatencyStat::Mean);
    let row = table.get("tiny", "tiny", jigsaw_protocol::GpuModel::A100_80gb, "7g.80gb", 2, 8).expect("row");
    assert!((row.throughput_rps - 1600.0).abs() < 1e-9, "instance = 2 processes x 800/s");
    assert!(csv.contains("MIT licence") && csv.contains("mean_ms"));

    std::fs::write(src.join("bad.csv"), format!("{header}1,1,1,196.762,0.005\n1,2,1,-274.0,0.007\n")).expect("write");
    fails_with(
        &["profiles", "import", "--format", "parvagpu", s, "--gpu", "a100-80gb"],
        &["bad.csv:3:7:", "Throughput"],
    );
    std::fs::write(src.join("bad.csv"), format!("{header}6,1,1,196.762,0.005\n")).expect("write");
    fails_with(&["profiles", "import", "--format", "parvagpu", s, "--gpu", "a100-80gb"], &["bad.csv:2:1:", "6 GPCs"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn ca_commands_write_files_and_refuse_to_overwrite() {
    let dir = std::env::temp_dir().join(format!("jigsaw-ca-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let d = dir.to_str().expect("utf8");
    let out = jigsaw(&["ca", "init", "--dir", d, "--cluster", "lab"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    fails_with(&["ca", "init", "--dir", d], &["refusing to overwrite"]);
    let out = jigsaw(&["ca", "issue", "node-1", "--dir", d]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let pem = std::fs::read_to_string(dir.join("node-1.pem")).expect("cert");
    assert_eq!(pem.matches("BEGIN CERTIFICATE").count(), 2, "node certificate then the CA");
    fails_with(&["ca", "issue", "bad name!", "--dir", d], &["node name"]);
    // Reserved names: `ca` would be the CA's own files, `admin` the operator's.
    let ca_key = std::fs::read(dir.join("ca.key")).expect("ca key");
    fails_with(&["ca", "issue", "ca", "--dir", d], &["reserved"]);
    fails_with(&["ca", "issue", "ca", "--dir", d, "--force"], &["reserved"]);
    fails_with(&["ca", "issue", "admin", "--dir", d], &["reserved", "--admin"]);
    fails_with(&["ca", "issue", "localhost", "--dir", d], &["reserved"]);
    fails_with(&["ca", "issue", "127.0.0.1", "--dir", d], &["IP address"]);
    assert_eq!(std::fs::read(dir.join("ca.key")).expect("ca key"), ca_key, "the CA key is untouched");
    // Never overwrite without --force.
    let key = std::fs::read(dir.join("node-1.key")).expect("key");
    fails_with(&["ca", "issue", "node-1", "--dir", d], &["already exists", "--force"]);
    assert_eq!(std::fs::read(dir.join("node-1.key")).expect("key"), key);
    let out = jigsaw(&["ca", "issue", "node-1", "--dir", d, "--force", "--days", "30", "--san", "localhost"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("node certificate") && text.contains("serial ") && text.contains("names [node-1, localhost]")
    );
    assert_ne!(std::fs::read(dir.join("node-1.key")).expect("key"), key, "replaced with --force");
    fails_with(&["ca", "issue", "node-2", "--dir", d, "--days", "0"], &["--days"]);
    // The operator certificate.
    let out = jigsaw(&["ca", "issue", "--admin", "--dir", d]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("admin certificate"));
    let admin = dir.join("admin.pem");
    let out = jigsaw(&["ca", "show", admin.to_str().expect("utf8")]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("role admin") && text.contains("names []"), "{text}");
    fails_with(&["ca", "issue", "--dir", d], &["name the node"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bootstrap_script_writes_valid_node_configs() {
    let dir = std::env::temp_dir().join(format!("jigsaw-bootstrap-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/bootstrap.sh");
    let run = |args: &[&str]| {
        std::process::Command::new("bash")
            .arg(script)
            .args(args)
            .env("JIGSAW", env!("CARGO_BIN_EXE_jigsaw"))
            .output()
            .expect("run bootstrap.sh")
    };
    let d = dir.to_str().expect("utf8");
    let bad = run(&[d, "4", "a=10.0.0.1:7400"]);
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("VOTERS"));
    let out = run(&[d, "2", "gpu-a=10.0.0.1:7400", "gpu-b=10.0.0.2:7400", "gpu-c=10.0.0.3:7401"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for (n, eligible) in [("gpu-a", true), ("gpu-b", true), ("gpu-c", false)] {
        let cfg = dir.join(n).join("jigsaw.toml");
        let c = jigsaw(&["--config", cfg.to_str().expect("utf8"), "config", "check"]);
        let text = String::from_utf8_lossy(&c.stdout);
        assert!(c.status.success(), "{}", String::from_utf8_lossy(&c.stderr));
        assert!(text.contains(&format!("eligible: {eligible}")) && text.contains("voters [gpu-a, gpu-b]"), "{text}");
        assert!(dir.join(n).join("ca").join(format!("{n}.key")).exists());
    }
    assert!(dir.join("ca").join("admin.pem").exists());
    // The operator file names every node; `down` refuses a cluster it did not start.
    let c = jigsaw_cli::cluster::LocalCluster::load(&dir).expect("cluster.json parses");
    assert!(!c.local && c.nodes.len() == 3 && c.nodes[2].addr == "10.0.0.3:7401");
    fails_with(&["down", "--dir", d], &["did not start"]);
    assert!(dir.join("gpu-a").exists(), "nothing removed");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn agent_refuses_a_config_without_a_node_section() {
    let dir = std::env::temp_dir().join(format!("jigsaw-agent-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let cfg = dir.join("planner-only.toml");
    std::fs::write(&cfg, "[planner]\ntime_limit_s = 5.0\n").expect("write");
    fails_with(&["--config", cfg.to_str().expect("utf8"), "agent"], &["no [node] section"]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `jigsaw forecast backtest` on the real Azure trace and on the synthetic one: one row
/// per forecaster with figures in range; the synthetic source is labelled so; a bad trace
/// names the file, line and column.
#[test]
fn forecast_backtest_reports_every_forecaster() {
    let out = jigsaw(&["forecast", "backtest", "--trace", "examples/traces/azure-llm-2023-conv.csv", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    assert_eq!(v["synthetic"], false);
    assert_eq!(v["intervals"], 58, "one hour in 60 s intervals (the partial last one dropped)");
    let rows = v["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 2);
    for r in rows {
        let under = r["under_share"].as_f64().expect("share");
        assert!((0.0..=1.0).contains(&under), "{r}");
        assert!(r["mean_over_pct"].as_f64().is_some_and(|x| x >= 0.0), "{r}");
    }
    let out = jigsaw(&["forecast", "backtest", "--synthetic", "diurnal", "--seed", "3", "--days", "1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("[SYNTHETIC]") && text.contains("paper") && text.contains("holt"), "{text}");
    let dir = std::env::temp_dir().join(format!("jigsaw-bad-trace-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let bad = dir.join("t.csv");
    std::fs::write(&bad, "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,374,x\n").expect("w");
    let path = bad.display().to_string();
    fails_with(&["forecast", "backtest", "--trace", &path], &[&format!("{path}:2:33"), "GeneratedTokens"]);
    fails_with(&["forecast", "backtest"], &["--trace"]);
    let _ = std::fs::remove_dir_all(&dir);
}
