//! `jigsaw agent` under systemd: the shipped unit passes `systemd-analyze verify` with no
//! warning, and an agent started with a notify socket (as `Type=notify` does) reports
//! `READY=1` once it has joined and applied the plan, pings `WATCHDOG=1` from its heartbeat
//! loop, and says `STOPPING=1` on SIGTERM.

use jigsaw_cli::cluster::{self as local, LocalCluster};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

const JIGSAW: &str = env!("CARGO_BIN_EXE_jigsaw");

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn the_unit_verifies_without_warnings() {
    let analyze = Command::new("systemd-analyze").arg("--version").output();
    assert!(
        analyze.is_ok_and(|o| o.status.success()),
        "systemd-analyze is missing: run scripts/deps.sh --test (installs Debian's systemd)"
    );
    let unit = std::fs::read_to_string(root().join("deploy/jigsaw-agent.service")).expect("the unit");
    assert!(unit.contains("ExecStart=/usr/local/bin/jigsaw "), "the unit runs the installed binary");
    // verify checks that ExecStart's binary exists: point it at the one under test.
    let dir = std::env::temp_dir().join(format!("jigsaw-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let path = dir.join("jigsaw-agent.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/jigsaw", JIGSAW)).expect("write");
    let out = Command::new("systemd-analyze").args(["verify", "--man=no"]).arg(&path).output().expect("runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.trim().is_empty(), "systemd-analyze verify: {err}");
    // And it is a notify service with a watchdog and the hardening the deploy README promises.
    for line in [
        "Type=notify",
        "WatchdogSec=",
        "User=jigsaw",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "ReadWritePaths=/var/lib/jigsaw",
        "RuntimeDirectory=jigsaw",
        "Environment=JIGSAW_MPS_DIR=%t/jigsaw/mps",
    ] {
        assert!(unit.lines().any(|l| l.starts_with(line)), "the unit lacks `{line}`");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Datagrams on `sock` until `want` arrives or `within` passes.
fn wait_for_state(sock: &UnixDatagram, want: &str, within: Duration, seen: &mut Vec<String>) -> bool {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        sock.set_read_timeout(Some(Duration::from_millis(200))).expect("timeout");
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).to_string();
            let hit = msg.lines().any(|l| l == want);
            seen.push(msg);
            if hit {
                return true;
            }
        }
    }
    false
}

#[test]
fn agent_notifies_ready_watchdog_and_stopping() {
    let dir = std::env::temp_dir().join(format!("jigsaw-notify-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    let sock_path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind the notify socket");
    let cluster = dir.join("cluster");
    // `jigsaw up` starts the agent processes; they inherit the notify environment. Nothing
    // reads the socket until `up` returns, like a slow service manager: the socket's queue
    // (net.unix.max_dgram_qlen, 10 by default) fills with watchdog pings and further sends
    // block. They once blocked a runtime worker and wedged the agent (intermittently, after
    // `plan epoch 2 committed`); they now block a thread of the blocking pool, and the
    // notes resume once the socket is read.
    let out = Command::new(JIGSAW)
        .args(["up", "--nodes", "1", "--gpus-per-node", "1", "--dir"])
        .arg(&cluster)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "30000000")
        .output()
        .expect("jigsaw up");
    let pids: Vec<u32> =
        LocalCluster::load(&cluster).map(|c| c.nodes.iter().map(|n| n.pid).collect()).unwrap_or_default();
    let stop_all = || {
        for p in &pids {
            let _ = local::signal(*p, "KILL");
        }
    };
    if !out.status.success() {
        stop_all();
        panic!("jigsaw up: {}", String::from_utf8_lossy(&out.stderr));
    }
    let mut seen = Vec::new();
    let ready = wait_for_state(&sock, "READY=1", Duration::from_secs(30), &mut seen);
    let watchdog = ready && wait_for_state(&sock, "WATCHDOG=1", Duration::from_secs(10), &mut seen);
    let term = pids.first().map(|p| local::signal(*p, "TERM"));
    let stopping = wait_for_state(&sock, "STOPPING=1", Duration::from_secs(20), &mut seen);
    stop_all();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(ready, "no READY=1: {seen:?}");
    assert!(watchdog, "no WATCHDOG=1 after READY: {seen:?}");
    assert!(matches!(term, Some(Ok(()))), "SIGTERM the agent: {term:?}");
    assert!(stopping, "no STOPPING=1 after SIGTERM: {seen:?}");
    assert!(seen.iter().any(|m| m.contains("STATUS=serving")), "a STATUS line: {seen:?}");
}
