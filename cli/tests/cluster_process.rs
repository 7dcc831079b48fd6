//! Real agent processes on loopback with real QUIC and mutual TLS: coordinator failover,
//! agent loss and a restart of every coordinator-eligible node. Every wait polls the cluster
//! status (observable state) with a deadline; nothing sleeps for a fixed time to "let things
//! settle".

use jigsaw_cli::cluster::{self as local, plan_applied, wait_for, LocalCluster, Operator};
use jigsaw_protocol::wire::{ClientReply, ClientRequest, ClusterStatus};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const JIGSAW: &str = env!("CARGO_BIN_EXE_jigsaw");

fn jigsaw(args: &[&str]) -> (bool, String) {
    let out = Command::new(JIGSAW).args(args).output().expect("run jigsaw");
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

mod common;
use common::Cluster;

fn pid_of(dir: &Path, node: &str) -> u32 {
    let c = LocalCluster::load(dir).expect("cluster.json");
    c.nodes.iter().find(|n| n.name == node).map(|n| n.pid).expect("node")
}

fn restart(dir: &Path, node: &str) {
    let mut c = LocalCluster::load(dir).expect("cluster.json");
    let n = c.nodes.iter_mut().find(|n| n.name == node).expect("node");
    n.pid = local::spawn_agent(Path::new(JIGSAW), &n.config, &n.log).expect("restart agent");
    std::fs::write(dir.join("cluster.json"), serde_json::to_string_pretty(&c).expect("json")).expect("write");
}

/// `jigsaw load --json`'s report, with the requests sent and the sum of every outcome.
fn load_report(stdout: &[u8]) -> (serde_json::Value, u64, u64) {
    let r: serde_json::Value = serde_json::from_slice(stdout).expect("JSON report");
    let sent = r["sent"].as_u64().expect("sent");
    let sum: u64 = ["ok", "deadline_miss", "early_drop", "stale_drop", "error"]
        .iter()
        .map(|k| r["outcomes"][k].as_u64().expect("outcome count"))
        .sum();
    (r, sent, sum)
}

fn plan_excludes(s: &ClusterStatus, node: &str) -> bool {
    s.state.members.get(node).is_some_and(|m| !m.alive)
        && s.state.plan.as_ref().is_some_and(|p| !p.nodes.contains_key(node))
        && plan_applied(s)
}

#[test]
fn failover_agent_loss_and_full_restart() {
    let dir = std::env::temp_dir().join(format!("jigsaw-proc-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let d = dir.to_str().expect("utf-8 path");
    let (ok, out) = jigsaw(&["up", "--nodes", "4", "--gpus-per-node", "2", "--no-apps", "--dir", d]);
    let _guard = Cluster(dir.clone());
    assert!(ok, "jigsaw up: {out}");

    // Bad input is refused by the CLI with the reason, and nothing is registered.
    let spec = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/apps/social.toml");
    let csv = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/profiles/social-h100-80gb.csv");
    let (ok, out) = jigsaw(&["app", "register", spec, "--profiles", "nope.csv", "--rps", "10", "--dir", d]);
    assert!(!ok && out.contains("nope.csv"), "{out}");
    let (ok, out) = jigsaw(&["app", "register", spec, "--profiles", csv, "--rps=-5", "--dir", d]);
    assert!(!ok && out.contains("demand"), "{out}");
    let (ok, out) = jigsaw(&["app", "register", spec, "--profiles", csv, "--rps", "150", "--dir", d]);
    assert!(ok, "{out}");

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let op = Operator::for_dir(&dir).expect("operator");
        let long = Duration::from_secs(60);
        let s = wait_for(&op, long, "the first plan", plan_applied).await.expect("plan applied");
        assert!(s.state.apps.contains_key("social"));
        let (c0, e0) = (s.coordinator.clone(), s.state.epoch);
        let (ok, text) = jigsaw(&["status", "--dir", d]);
        assert!(ok && text.contains(&format!("coordinator: {c0}")) && text.contains("app social"), "{text}");

        // SIGKILL the coordinator: a new one is elected, the latest plan is intact, and the
        // next plan leaves the dead node's GPUs out.
        local::signal(pid_of(&dir, &c0), "KILL").expect("kill coordinator");
        let s = wait_for(&op, long, "a new coordinator", |s| s.coordinator != c0).await.expect("failover");
        assert!(s.state.epoch >= e0 && s.state.apps.contains_key("social"), "state survived: {:?}", s.state.epoch);
        let s = wait_for(&op, long, "a plan without the old coordinator", |s| plan_excludes(s, &c0))
            .await
            .expect("re-plan");
        assert!(s.state.epoch > e0);

        // SIGKILL a plain agent: the next plan excludes its GPUs.
        let agent = "node-4";
        assert!(!s.state.members[agent].eligible);
        local::signal(pid_of(&dir, agent), "KILL").expect("kill agent");
        let s = wait_for(&op, long, "a plan without node-4", |s| plan_excludes(s, agent)).await.expect("re-plan");
        let e1 = s.state.epoch;

        // Restart every coordinator-eligible node (the dead one too): registry and plan survive.
        for n in ["node-1", "node-2", "node-3"] {
            let pid = pid_of(&dir, n);
            let _ = local::signal(pid, "KILL");
        }
        for n in ["node-1", "node-2", "node-3"] {
            restart(&dir, n);
        }
        let s = wait_for(&op, long, "the restarted voters to serve", |s| {
            s.state.apps.contains_key("social") && s.state.epoch >= e1 && plan_applied(s)
        })
        .await
        .expect("restart");
        assert!(s.state.plan.as_ref().is_some_and(|p| p.apps.iter().any(|a| a.app == "social" && a.gpus >= 1)));

        // A removed app leaves the next plan.
        match op.request(ClientRequest::remove("social")).await.expect("remove") {
            ClientReply::Done { .. } => {}
            other => panic!("remove: {other:?}"),
        }
        wait_for(&op, long, "a plan without apps", |s| {
            s.state.plan.as_ref().is_some_and(|p| p.apps.is_empty()) && plan_applied(s)
        })
        .await
        .expect("plan without apps");
    });
    let (ok, out) = jigsaw(&["down", "--dir", d]);
    assert!(ok, "{out}");
    assert!(!dir.exists());
}

/// The acceptance path at test scale: `jigsaw up` (agents with `jigsaw worker` processes),
/// then `jigsaw load` through every agent's HTTP API while one worker process is killed.
/// Every request is accounted for; most succeed; the killed worker is restarted; every
/// agent's `/metrics` parses and its counters match the load generator's report.
#[test]
fn load_through_the_cluster_survives_a_worker_kill() {
    let dir = std::env::temp_dir().join(format!("jigsaw-proc-load-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let d = dir.to_str().expect("utf-8 path");
    let (ok, out) = jigsaw(&["up", "--nodes", "3", "--gpus-per-node", "2", "--dir", d]);
    let _guard = Cluster(dir.clone());
    assert!(ok, "jigsaw up: {out}");
    // This cluster's worker processes: children of its agents.
    let agents: Vec<u32> = LocalCluster::load(&dir).expect("cluster.json").nodes.iter().map(|n| n.pid).collect();
    let workers = || -> Vec<u32> {
        let mut all = Vec::new();
        for a in &agents {
            let o = Command::new("pgrep").args(["-P", &a.to_string()]).output().expect("pgrep");
            all.extend(String::from_utf8_lossy(&o.stdout).lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
        all.sort_unstable();
        all
    };
    let before = workers();
    assert!(!before.is_empty(), "the plan's instances run worker processes");
    let exe = env!("CARGO_BIN_EXE_jigsaw");
    let load = Command::new(exe)
        .args(["load", "--app", "traffic", "--rps", "40", "--duration", "6s", "--json", "--dir", d])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start jigsaw load");
    // Kill one worker (of whichever app) while the load runs.
    local::signal(before[0], "KILL").expect("kill a worker");
    let out = load.wait_with_output().expect("load finishes");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (r, sent, sum) = load_report(&out.stdout);
    let o = &r["outcomes"];
    assert!(sent > 150, "about 240 requests in 6 s at 40 req/s: {sent}");
    assert_eq!(sent, sum, "every request accounted for: {r}");
    assert!(o["ok"].as_u64().expect("ok") * 10 >= sent * 7, "most requests succeed: {r}");
    // The killed worker was replaced (same number of worker processes, a new pid).
    let t = std::time::Instant::now();
    loop {
        let now = workers();
        if now.len() == before.len() && !now.contains(&before[0]) {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "worker not restarted: {before:?} -> {now:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Every agent's /metrics parses with the reference OpenMetrics parser and agrees with
    // what the load generator saw.
    let nodes = LocalCluster::load(&dir).expect("cluster.json").nodes;
    let mut served_ok = 0.0;
    let mut coordinators = 0.0;
    for n in &nodes {
        let url = n.http.as_deref().expect("every local agent serves HTTP");
        let samples = scrape(url);
        let get = |name: &str, labels: &[(&str, &str)]| -> Option<f64> {
            samples
                .iter()
                .find(|s| s.0 == name && labels.iter().all(|(k, v)| s.1.get(*k).map(String::as_str) == Some(*v)))
                .map(|s| s.2)
        };
        served_ok += get("jigsaw_requests_total", &[("app", "traffic"), ("outcome", "ok")]).unwrap_or(0.0);
        coordinators += get("jigsaw_is_coordinator", &[]).expect("jigsaw_is_coordinator on every node");
        assert!(get("jigsaw_plan_epoch", &[]).expect("jigsaw_plan_epoch") >= 1.0, "{}: plan applied", n.name);
        if let Some(acc) = get("jigsaw_served_accuracy", &[("app", "traffic")]) {
            let slo = get("jigsaw_accuracy_slo", &[("app", "traffic")]).expect("the SLO next to the accuracy");
            assert!(acc > 0.0 && acc <= 1.0 && slo > 0.0, "{}: accuracy {acc}, SLO {slo}", n.name);
        }
    }
    assert_eq!(coordinators, 1.0, "exactly one coordinator reports itself");
    // A request the frontend answered in time can still reach the client after its deadline.
    let ok = r["outcomes"]["ok"].as_f64().expect("ok");
    let late = r["outcomes"]["deadline_miss"].as_f64().expect("deadline_miss");
    assert!(
        served_ok >= ok && served_ok <= ok + late,
        "the frontends' ok counters ({served_ok}) match the load generator's: {r}"
    );
    let (ok, out) = jigsaw(&["down", "--dir", d]);
    assert!(ok, "{out}");
}

/// GET `url`/metrics and parse it with the Python reference client's OpenMetrics parser
/// (Debian `python3-prometheus-client`, installed by `scripts/deps.sh --test`): the
/// samples as (name, labels, value).
fn scrape(url: &str) -> Vec<(String, std::collections::BTreeMap<String, String>, f64)> {
    use std::io::{Read, Write};
    let hostport = url.trim_start_matches("http://").trim_end_matches('/');
    let mut conn = std::net::TcpStream::connect(hostport).expect("connect to the agent's HTTP port");
    write!(conn, "GET /metrics HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n\r\n").expect("send");
    let mut raw = String::new();
    conn.read_to_string(&mut raw).expect("read");
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.to_ascii_lowercase().contains("content-type: application/openmetrics-text"), "{head}");
    let parser = "import json,sys\n\
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse\n\
out=[[s.name,s.labels,s.value] for f in parse(sys.stdin.read()) for s in f.samples]\n\
print(json.dumps(out))";
    let python = ["python3", "/usr/bin/python3"]
        .into_iter()
        .find(|p| Command::new(p).args(["-c", "import prometheus_client"]).output().is_ok_and(|o| o.status.success()))
        .expect("a python3 with prometheus_client: run scripts/deps.sh --test (installs python3-prometheus-client)");
    let mut child = Command::new(python)
        .args(["-c", parser])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run the parser");
    child.stdin.take().expect("stdin").write_all(body.as_bytes()).expect("feed the parser");
    let out = child.wait_with_output().expect("parser finishes");
    assert!(
        out.status.success(),
        "the OpenMetrics parser rejected /metrics: {}\n{body}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parsed: Vec<(String, std::collections::BTreeMap<String, String>, f64)> =
        serde_json::from_slice(&out.stdout).expect("parser output");
    assert!(!parsed.is_empty(), "no samples in {body}");
    parsed
}

/// A rolling restart of every agent, one at a time, under open-loop load: SIGTERM makes an
/// agent drain (stop admitting, tell the coordinator, answer what it admitted) before it
/// leaves, and the load generator sends requests refused by a stopped frontend to the next
/// agent. Every request the cluster accepted gets an answer (200, or an error status with
/// its outcome): none ends unanswered (a reset connection, a client timeout, or no agent
/// accepting it).
#[test]
fn rolling_restart_under_load_answers_every_accepted_request() {
    let dir = std::env::temp_dir().join(format!("jigsaw-proc-roll-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let d = dir.to_str().expect("utf-8 path");
    let (ok, out) = jigsaw(&["up", "--nodes", "3", "--gpus-per-node", "2", "--dir", d]);
    let _guard = Cluster(dir.clone());
    assert!(ok, "jigsaw up: {out}");
    let load = Command::new(JIGSAW)
        .args(["load", "--app", "traffic", "--rps", "30", "--duration", "40s", "--json", "--dir", d])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start jigsaw load");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let mut restarted = Vec::new();
    rt.block_on(async {
        let op = Operator::for_dir(&dir).expect("operator");
        let long = Duration::from_secs(60);
        for node in ["node-3", "node-2", "node-1"] {
            let pid = pid_of(&dir, node);
            let t = std::time::Instant::now();
            local::signal(pid, "TERM").expect("SIGTERM");
            while std::path::Path::new(&format!("/proc/{pid}")).exists() && t.elapsed() < Duration::from_secs(25) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let drained_in = t.elapsed();
            assert!(drained_in < Duration::from_secs(25), "{node} did not stop after SIGTERM");
            restart(&dir, node);
            wait_for(&op, long, &format!("{node} back and the plan applied"), |s| {
                s.state.members.get(node).is_some_and(|m| m.alive) && plan_applied(s)
            })
            .await
            .expect("rejoined");
            restarted.push((node, drained_in));
        }
    });
    let out = load.wait_with_output().expect("load finishes");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (r, sent, sum) = load_report(&out.stdout);
    let o = &r["outcomes"];
    assert_eq!(sent, sum, "every request accounted for: {r}");
    let causes = r["causes"].as_object().expect("causes");
    for unanswered in ["transport error", "client timeout", "no frontend answered (every target)"] {
        assert!(!causes.contains_key(unanswered), "requests ended unanswered ({unanswered}) across {restarted:?}: {r}");
    }
    // How many succeed depends on how much each re-plan moves (re-plans still cut in-flight
    // work: the adaptation issue); that they are all answered does not.
    assert!(o["ok"].as_u64().expect("ok") > 0, "requests are served across the restarts: {r}");
    eprintln!("rolling restart {restarted:?}: {r}");
    let (ok, out) = jigsaw(&["down", "--dir", d]);
    assert!(ok, "{out}");
}

/// Certificates in a local cluster from `jigsaw up`: node certificates name their node only
/// (no loopback names; the cluster works without them), the operator CLI with a node's
/// certificate may read the status but not register an app, and an agent reloads its TLS
/// identity on SIGHUP without leaving the cluster.
#[test]
fn local_cluster_certificates_roles_and_reload() {
    use jigsaw_agent::transport::tls::CertInfo;
    use jigsaw_protocol::wire::Role;
    let dir = std::env::temp_dir().join(format!("jigsaw-proc-certs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let d = dir.to_str().expect("utf-8 path");
    let (ok, out) = jigsaw(&["up", "--nodes", "2", "--gpus-per-node", "1", "--no-apps", "--dir", d]);
    let _guard = Cluster(dir.clone());
    assert!(ok, "jigsaw up: {out}");
    let ca = dir.join("ca");
    for n in ["node-1", "node-2"] {
        let info = CertInfo::from_pem_file(&ca.join(format!("{n}.pem"))).expect("node certificate");
        assert_eq!((info.name.as_str(), info.role, info.dns_names.clone()), (n, Role::Node, vec![n.to_string()]));
    }
    let admin = CertInfo::from_pem_file(&ca.join("admin.pem")).expect("admin certificate");
    assert_eq!(admin.role, Role::Admin);

    // An operator directory whose "admin" certificate is really node-1's.
    let fake = dir.join("not-admin");
    std::fs::create_dir_all(fake.join("ca")).expect("mkdir");
    std::fs::copy(ca.join("ca.pem"), fake.join("ca/ca.pem")).expect("copy");
    std::fs::copy(ca.join("node-1.pem"), fake.join("ca/admin.pem")).expect("copy");
    std::fs::copy(ca.join("node-1.key"), fake.join("ca/admin.key")).expect("copy");
    let mut c = LocalCluster::load(&dir).expect("cluster.json");
    c.ca_dir = fake.join("ca");
    c.local = false;
    c.save(&fake).expect("save");
    let f = fake.to_str().expect("utf-8 path");
    let (ok, out) = jigsaw(&["status", "--dir", f]);
    assert!(ok && out.contains("node-1"), "a node certificate may read the status: {out}");
    let spec = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/apps/social.toml");
    let csv = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/profiles/social-h100-80gb.csv");
    let (ok, out) = jigsaw(&["app", "register", spec, "--profiles", csv, "--rps", "10", "--dir", f]);
    assert!(!ok && out.contains("role `admin`") && out.contains("--admin"), "{out}");

    // SIGHUP: the agent reloads its identity and stays in the cluster.
    let pid = pid_of(&dir, "node-2");
    local::signal(pid, "HUP").expect("SIGHUP");
    let log = dir.join("node-2.log");
    let t0 = std::time::Instant::now();
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("TLS identity reloaded") {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "no reload in the log: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let op = Operator::for_dir(&dir).expect("operator");
        let s = wait_for(&op, Duration::from_secs(30), "both nodes alive after the reload", |s| {
            s.state.alive_members().count() == 2 && s.nodes.iter().all(|n| n.last_seen_ms.is_some_and(|t| t < 2_000))
        })
        .await
        .expect("alive");
        assert_eq!(s.state.alive_members().count(), 2);
    });
    let (ok, out) = jigsaw(&["app", "register", spec, "--profiles", csv, "--rps", "10", "--dir", d]);
    assert!(ok, "the admin certificate registers apps: {out}");
}
