//! The status page every agent serves at `/status`, rendered by a real headless browser
//! (Debian's `chromium`, installed by `scripts/deps.sh --test`): the page loads, and the
//! DOM the browser built has one `rect.mig` per MIG instance the cluster status lists.

use jigsaw_cli::cluster::{self as local, LocalCluster};
use std::io::{Read, Write};
use std::process::Command;
use std::time::Duration;

const JIGSAW: &str = env!("CARGO_BIN_EXE_jigsaw");

fn get(url: &str, path: &str) -> (String, String) {
    let hostport = url.trim_start_matches("http://").trim_end_matches('/');
    let mut c = std::net::TcpStream::connect(hostport).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    write!(c, "GET {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n\r\n").expect("send");
    let mut raw = String::new();
    c.read_to_string(&mut raw).expect("read");
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP response");
    (head.to_string(), body.to_string())
}

#[test]
fn status_page_renders_in_a_browser_with_one_rect_per_instance() {
    let browser = ["chromium", "chromium-browser"]
        .into_iter()
        .find(|b| Command::new(b).arg("--version").output().is_ok_and(|o| o.status.success()))
        .expect("a headless chromium: run scripts/deps.sh --test (installs Debian's chromium)");
    let dir = std::env::temp_dir().join(format!("jigsaw-status-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let d = dir.to_str().expect("utf-8").to_string();
    let up =
        Command::new(JIGSAW).args(["up", "--nodes", "2", "--gpus-per-node", "2", "--dir", &d]).output().expect("up");
    let nodes = LocalCluster::load(&dir).map(|c| c.nodes).unwrap_or_default();
    let result = std::panic::catch_unwind(|| {
        assert!(up.status.success(), "jigsaw up: {}", String::from_utf8_lossy(&up.stderr));
        let status = Command::new(JIGSAW).args(["status", "--json", "--dir", &d]).output().expect("status");
        let s: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status JSON");
        let instances: usize = s["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .flat_map(|n| n["gpus"].as_array().cloned().unwrap_or_default())
            .map(|g| g["live"].as_array().map_or(0, Vec::len))
            .sum();
        assert!(instances > 0, "the plan created MIG instances");
        // Ask the agent that is not the coordinator: it fetches the status over QUIC.
        let coordinator = s["coordinator"].as_str().expect("coordinator");
        let other = nodes.iter().find(|n| n.name != coordinator).expect("a second agent");
        let (head, html) = get(other.http.as_deref().expect("http"), "/status");
        assert!(head.starts_with("HTTP/1.1 200") && head.contains("text/html"), "{head}");
        let file = dir.join("status.html");
        std::fs::write(&file, &html).expect("write page");
        let url = format!("file://{}", file.display());
        let dom = Command::new(browser)
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", &url])
            .output()
            .expect("run chromium");
        let dom = String::from_utf8_lossy(&dom.stdout);
        assert!(dom.contains("<svg"), "the browser built no SVG: {dom}");
        assert_eq!(dom.matches("class=\"mig\"").count(), instances, "one rect per MIG instance");
        let png = dir.join("status.png");
        let shot = Command::new(browser)
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--window-size=1200,900"])
            .arg(format!("--screenshot={}", png.display()))
            .arg(&url)
            .output()
            .expect("screenshot");
        let size = std::fs::metadata(&png).map(|m| m.len()).unwrap_or(0);
        assert!(size > 10_000, "screenshot of {size} bytes: {}", String::from_utf8_lossy(&shot.stderr));
        // The operator's copy of the page.
        let out = dir.join("op.html");
        let w = Command::new(JIGSAW).args(["status", "--dir", &d, "--html"]).arg(&out).output().expect("status --html");
        assert!(w.status.success(), "{}", String::from_utf8_lossy(&w.stderr));
        let op = std::fs::read_to_string(&out).expect("written");
        assert_eq!(op.matches("class=\"mig\"").count(), instances);
    });
    for n in &nodes {
        let _ = local::signal(n.pid, "KILL");
    }
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}
