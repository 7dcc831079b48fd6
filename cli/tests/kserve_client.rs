//! A real KServe v2 client against a local cluster: NVIDIA's `tritonclient` (PyPI, in the
//! venv `scripts/deps.sh --test` makes) runs `tests/clients/kserve_http.py` (health, server
//! and model metadata, JSON inference and binary-tensor inference: the binary data
//! extension, tritonclient's default for numpy data) and `tests/clients/kserve_grpc.py`
//! (the same over `inference.GRPCInferenceService`).

use jigsaw_cli::cluster::{self as local, LocalCluster};
use std::path::PathBuf;
use std::process::Command;

const JIGSAW: &str = env!("CARGO_BIN_EXE_jigsaw");

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The venv's python with tritonclient (`JIGSAW_VENV`, default `~/.cache/jigsaw/venv`).
fn triton_python() -> PathBuf {
    let venv = std::env::var_os("JIGSAW_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/jigsaw/venv"));
    let py = venv.join("bin/python");
    let ok = Command::new(&py)
        .args(["-c", "import tritonclient.http, tritonclient.grpc"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(ok, "{} cannot import tritonclient: run scripts/deps.sh --test", py.display());
    py
}

#[test]
fn tritonclient_http_json_binary_and_grpc() {
    let py = triton_python();
    let dir = std::env::temp_dir().join(format!("jigsaw-kserve-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = Command::new(JIGSAW)
        .args(["up", "--nodes", "1", "--gpus-per-node", "3", "--dir"])
        .arg(&dir)
        .output()
        .expect("jigsaw up");
    let nodes = LocalCluster::load(&dir).map(|c| c.nodes).unwrap_or_default();
    let run = |script: &str, addr: &str| {
        Command::new(&py)
            .arg(root().join("tests/clients").join(script))
            .arg(addr)
            .arg("traffic")
            .output()
            .expect("client")
    };
    let check =
        nodes.first().and_then(|n| n.http.clone()).map(|url| run("kserve_http.py", url.trim_start_matches("http://")));
    let grpc = nodes.first().and_then(|n| n.grpc.clone()).map(|addr| run("kserve_grpc.py", &addr));
    for n in &nodes {
        let _ = local::signal(n.pid, "KILL");
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success(), "jigsaw up: {}", String::from_utf8_lossy(&out.stderr));
    let check = check.expect("the agent serves HTTP");
    let text = String::from_utf8_lossy(&check.stdout).to_string() + &String::from_utf8_lossy(&check.stderr);
    assert!(check.status.success(), "tritonclient: {text}");
    for line in ["infer (binary_data=False): ok", "infer (binary_data=True): ok", "infer (defaults): ok"] {
        assert!(text.contains(line), "{line}: {text}");
    }
    let grpc = grpc.expect("the agent serves gRPC");
    let text = String::from_utf8_lossy(&grpc.stdout).to_string() + &String::from_utf8_lossy(&grpc.stderr);
    assert!(grpc.status.success(), "tritonclient.grpc: {text}");
    for line in ["grpc model metadata: ok", "grpc infer: ok", "grpc unknown app: ok"] {
        assert!(text.contains(line), "{line}: {text}");
    }
}
