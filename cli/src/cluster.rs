//! The cluster commands: `jigsaw agent` (run one node), `jigsaw up` / `down` (a local
//! cluster of agent processes on loopback with simulated GPUs), `jigsaw status` and
//! `jigsaw app register|remove` (operator requests over QUIC with an admin certificate).
//!
//! A local cluster lives in one directory (default `$TMPDIR/jigsaw-local`): the CA and
//! certificates under `ca/`, one config, data dir and log per node, and `cluster.json`, which
//! lists the nodes with their addresses and process ids for `status`, `down` and tests.

use anyhow::{anyhow, bail, Context, Result};
use jigsaw_agent::actors::Backend;
use jigsaw_agent::config::{Config, GpuBackendConfig, NodeConfig};
use jigsaw_agent::dataplane::http::{HttpLimits, HttpSecurity};
use jigsaw_agent::dataplane::worker::{InProcessLauncher, Launcher, ProcessLauncher};
use jigsaw_agent::gpu::sim::SimGpu;
use jigsaw_agent::node::{highs_planner, NodeHandle, NodeSpec, Timing};
use jigsaw_agent::transport::net::{QuicTransport, Transport};
use jigsaw_agent::transport::{tls, QuicNode};
use jigsaw_protocol::cluster::{fnv64, AppEntry};
use jigsaw_protocol::wire::{ApplyOutcome, ClientReply, ClientRequest, ClusterStatus, StatusPages, WireMessage};
use jigsaw_protocol::GpuModel;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One node of a local cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LocalNode {
    /// Node id.
    pub name: String,
    /// Address.
    pub addr: String,
    /// Coordinator-eligible.
    pub eligible: bool,
    /// Config file.
    pub config: PathBuf,
    /// Log file.
    pub log: PathBuf,
    /// Process id of the agent (as last started by `up`).
    pub pid: u32,
    /// Base URL of the node's inference API (`http://ip:port`), if it serves one.
    #[serde(default)]
    pub http: Option<String>,
    /// Address of the node's gRPC inference API (`ip:port`), if it serves one.
    #[serde(default)]
    pub grpc: Option<String>,
}

/// `cluster.json`: how the operator CLI reaches a cluster. `jigsaw up` writes one for a local
/// cluster; `deploy/bootstrap.sh` writes one (with `local = false`) for a bare-metal cluster,
/// so `jigsaw status --dir OUT` and `jigsaw app ... --dir OUT` work there too.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LocalCluster {
    /// Nodes.
    pub nodes: Vec<LocalNode>,
    /// CA directory (ca.pem, admin.pem, admin.key).
    pub ca_dir: PathBuf,
    /// Whether `jigsaw up` started these agents here (only then may `jigsaw down` stop them).
    #[serde(default = "yes")]
    pub local: bool,
}

fn yes() -> bool {
    true
}

/// The default local cluster directory.
pub fn default_dir() -> PathBuf {
    std::env::temp_dir().join("jigsaw-local")
}

impl LocalCluster {
    /// Read `DIR/cluster.json`.
    pub fn load(dir: &Path) -> Result<LocalCluster> {
        let p = dir.join("cluster.json");
        let text = std::fs::read_to_string(&p)
            .with_context(|| format!("reading {} (is a cluster up? start one with `jigsaw up`)", p.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()))
    }

    /// Write `DIR/cluster.json`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let p = dir.join("cluster.json");
        std::fs::write(&p, serde_json::to_string_pretty(self)?).with_context(|| format!("writing {}", p.display()))
    }
}

/// A node refused the operator's certificate for a request (wrong role): asking again or
/// elsewhere will not help; use a certificate of the role named.
#[derive(Debug, thiserror::Error)]
#[error("{node} refused the request: {message} (use a certificate with role `{needed}`; the operator's is `jigsaw ca issue --admin`)")]
pub struct Forbidden {
    /// The node that refused.
    pub node: String,
    /// The role needed.
    pub needed: jigsaw_protocol::wire::Role,
    /// Its words.
    pub message: String,
}

/// How long an operator request keeps trying by default: it waits out an election
/// (about a second) and a slow commit, and then gives up with what every node said.
pub const OPERATOR_PATIENCE: Duration = Duration::from_secs(15);

/// Longest one node gets to answer one attempt (a Raft commit on a loaded node takes
/// seconds); never more than what is left of the patience.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// Backoff between rounds: doubling from the first to the last value, with jitter.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(2));

/// Why one round of an operator request did not get an answer.
enum Round {
    /// What each node said (empty: not asked, out of time).
    Said(Vec<(String, String)>),
    /// A node refused the certificate: final.
    Forbidden(Forbidden),
}

/// An operator's connection to a cluster: a transport (QUIC with the admin certificate, or
/// the in-memory twin in tests) and the nodes to ask.
pub struct Operator<T: Transport = QuicTransport> {
    transport: Arc<T>,
    nodes: Vec<(String, String)>,
    patience: Duration,
}

impl Operator<QuicTransport> {
    /// Connect with the admin identity of a local cluster directory.
    pub fn for_dir(dir: &Path) -> Result<Operator> {
        let c = LocalCluster::load(dir)?;
        let id =
            tls::Identity::load(&c.ca_dir.join("ca.pem"), &c.ca_dir.join("admin.pem"), &c.ca_dir.join("admin.key"))?;
        let bind: SocketAddr = if c.local { "127.0.0.1:0" } else { "0.0.0.0:0" }.parse()?;
        let node = QuicNode::bind(bind, &id)?;
        Ok(Operator::new(QuicTransport::new(node), c.nodes.into_iter().map(|n| (n.name, n.addr)).collect()))
    }
}

impl<T: Transport> Operator<T> {
    /// Ask `nodes` (name, address) over `transport`, with [`OPERATOR_PATIENCE`].
    pub fn new(transport: Arc<T>, nodes: Vec<(String, String)>) -> Operator<T> {
        Operator { transport, nodes, patience: OPERATOR_PATIENCE }
    }

    /// The same operator giving up after `patience`.
    pub fn with_patience(self, patience: Duration) -> Operator<T> {
        Operator { patience, ..self }
    }

    /// Send a request to the coordinator, following redirects from any node. While no node
    /// can serve it (an election, a partitioned leader that still names itself, dead nodes)
    /// it asks again in rounds with exponential backoff and jitter, each node's wait capped
    /// by what is left, and gives up after the patience with every node's last answer. A
    /// refusal of the certificate ([`Forbidden`]) is final.
    pub async fn request(&self, req: ClientRequest) -> Result<ClientReply> {
        let start = tokio::time::Instant::now();
        let give_up = start + self.patience;
        let mut backoff = BACKOFF.0;
        let mut rng = jigsaw_protocol::rng::SplitMix64::new(fnv64(&[&format!("{:?}", std::time::SystemTime::now())]));
        let mut rounds = 0u32;
        // Each node's latest answer (a round cut short by the deadline keeps the one before).
        let mut answers: Vec<(String, String)> = Vec::new();
        loop {
            rounds += 1;
            match self.request_once(&req, give_up).await {
                Ok(r) => return Ok(r),
                Err(Round::Forbidden(f)) => return Err(f.into()),
                Err(Round::Said(said)) => {
                    for (name, what) in said {
                        match answers.iter_mut().find(|(n, _)| *n == name) {
                            Some(_) if what.is_empty() => {}
                            Some(a) => a.1 = what,
                            None => answers
                                .push((name, if what.is_empty() { "not asked (out of time)".into() } else { what })),
                        }
                    }
                }
            }
            let now = tokio::time::Instant::now();
            if now >= give_up {
                let last: Vec<String> = answers.iter().map(|(n, a)| format!("{n}: {a}")).collect();
                bail!(
                    "no coordinator answered in {:.1} s ({rounds} rounds over {} nodes); last answers: {}",
                    (now - start).as_secs_f64(),
                    self.nodes.len(),
                    if last.is_empty() { "none (no nodes)".to_string() } else { last.join("; ") }
                );
            }
            let jitter = 0.75 + 0.5 * rng.unit();
            let wait = backoff.mul_f64(jitter).min(give_up - now);
            tokio::time::sleep(wait).await;
            backoff = (backoff * 2).min(BACKOFF.1);
        }
    }

    /// One round: every node once, plus the coordinators they point to (each at most once),
    /// each waited for no later than `give_up`. The error lists what each node said (empty:
    /// not asked, out of time).
    async fn request_once(&self, req: &ClientRequest, give_up: tokio::time::Instant) -> Result<ClientReply, Round> {
        let mut tried = Vec::new();
        let mut queue: Vec<(String, String)> = self.nodes.clone();
        queue.reverse();
        let mut said: Vec<(String, String)> = Vec::new();
        while let Some((name, addr)) = queue.pop() {
            if tried.contains(&name) {
                continue;
            }
            tried.push(name.clone());
            let left = give_up.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                said.push((name, String::new()));
                continue;
            }
            // A dead node must not eat the time of the nodes after it: each waits at most
            // its share of what is left.
            let share = left / u32::try_from(queue.len() + 1).unwrap_or(u32::MAX);
            let msg = WireMessage::Client(req.clone());
            match self.transport.request(&name, &addr, msg, ATTEMPT_TIMEOUT.min(share)).await {
                Ok(WireMessage::ClientReply(ClientReply::NotCoordinator { coordinator })) => match coordinator {
                    Some(c) if c.0 == name => said.push((
                        name,
                        "names itself coordinator but cannot serve (partitioned from the voters?)".into(),
                    )),
                    Some(c) => {
                        said.push((name, format!("not the coordinator, try {}", c.0)));
                        if !tried.contains(&c.0) {
                            queue.push(c);
                        }
                    }
                    None => said.push((name, "not the coordinator, knows none".into())),
                },
                Ok(WireMessage::ClientReply(r)) => return Ok(r),
                Ok(WireMessage::Forbidden { needed, message }) => {
                    return Err(Round::Forbidden(Forbidden { node: name, needed, message }))
                }
                Ok(WireMessage::Error { message, .. }) => said.push((name, message)),
                Ok(other) => said.push((name, format!("unexpected reply {other:?}"))),
                Err(e) => said.push((name, e.to_string())),
            }
        }
        Err(Round::Said(said))
    }

    /// The cluster status: one request when it fits a frame, else page by page
    /// ([`StatusPages`]; started over, up to three times, when the coordinator changed or
    /// dropped the pages meanwhile).
    pub async fn status(&self) -> Result<ClusterStatus> {
        let mut last = String::new();
        for _ in 0..3 {
            let mut pages = StatusPages::default();
            loop {
                match self.request(pages.next_request()).await? {
                    ClientReply::Status(s) => return Ok(*s),
                    ClientReply::StatusPage(p) => match pages.add(p) {
                        Ok(Some(s)) => return Ok(s),
                        Ok(None) => continue,
                        Err(e) => last = e.to_string(),
                    },
                    ClientReply::Invalid { message } => last = message,
                    other => bail!("unexpected reply {other:?}"),
                }
                break;
            }
        }
        bail!("the status did not arrive whole ({last})")
    }
}

fn free_port() -> Result<u16> {
    let s = std::net::UdpSocket::bind("127.0.0.1:0")?;
    Ok(s.local_addr()?.port())
}

fn free_tcp_port() -> Result<u16> {
    let s = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(s.local_addr()?.port())
}

/// Options of `jigsaw up`.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// Nodes.
    pub nodes: usize,
    /// GPUs per node.
    pub gpus_per_node: u32,
    /// GPU model.
    pub gpu: GpuModel,
    /// Coordinator-eligible nodes (the first ones).
    pub eligible: usize,
    /// Cluster directory.
    pub dir: PathBuf,
    /// Apps to register once the cluster is up (none: an empty cluster).
    pub apps: Vec<AppEntry>,
    /// Simulated MIG reconfiguration latency, ms.
    pub reconfig_ms: u64,
    /// Worker executor of the agents.
    pub executor: jigsaw_agent::dataplane::worker::ExecutorKind,
    /// Planner search space (`A+S+T`, `A+T`, …), set before the apps are registered (none:
    /// the cluster's default, A+S+T).
    pub space: Option<String>,
    /// Body of a `[control]` table written into every agent's config (the demand-following
    /// knobs of `docs/demand.md`; empty: the defaults). `jigsaw replay` scales the control
    /// interval with its time scale.
    pub control: String,
}

/// The example apps with their synthetic profiles and the demand `up` registers.
pub fn example_apps() -> Vec<AppEntry> {
    let e = |name: &str, spec: &str, csv: &str, rps: f64| AppEntry {
        name: name.into(),
        spec_toml: spec.into(),
        profiles_csv: csv.into(),
        demand_rps: rps,
        demand_auto: false,
    };
    vec![
        e(
            "social",
            include_str!("../../examples/apps/social.toml"),
            include_str!("../../examples/profiles/social-h100-80gb.csv"),
            200.0,
        ),
        e(
            "traffic",
            include_str!("../../examples/apps/traffic.toml"),
            include_str!("../../examples/profiles/traffic-h100-80gb.csv"),
            400.0,
        ),
        e(
            "ar",
            include_str!("../../examples/apps/ar.toml"),
            include_str!("../../examples/profiles/ar-h100-80gb.csv"),
            100.0,
        ),
    ]
}

/// Write the configs of a local cluster, start its agents, and wait until it serves a plan.
pub fn cmd_up(o: &UpOptions, exe: &Path) -> Result<String> {
    if o.nodes == 0 || o.gpus_per_node == 0 {
        bail!("--nodes and --gpus-per-node must be at least 1");
    }
    if o.dir.join("cluster.json").exists() {
        bail!("{} already holds a cluster; run `jigsaw down --dir {}` first", o.dir.display(), o.dir.display());
    }
    if let Some(space) = &o.space {
        space.parse::<jigsaw_coordinator::spaces::SearchSpace>().map_err(|e| anyhow!("--space: {e}"))?;
    }
    let eligible = o.eligible.clamp(1, o.nodes);
    std::fs::create_dir_all(&o.dir).with_context(|| format!("creating {}", o.dir.display()))?;
    let ca_dir = o.dir.join("ca");
    tls::ca_init(&ca_dir, "jigsaw-local")?;
    // The operator's certificate (role admin); node certificates name their node only (the
    // agents dial each other by node name, so no loopback names are needed on loopback).
    tls::ca_issue_admin(&ca_dir)?;
    let mut nodes = Vec::new();
    for i in 1..=o.nodes {
        let name = format!("node-{i}");
        tls::ca_issue(&ca_dir, &name)?;
        nodes.push((name, format!("127.0.0.1:{}", free_port()?)));
    }
    let voters: Vec<String> = nodes[..eligible].iter().map(|n| format!("\"{}\"", n.0)).collect();
    let mut local = Vec::new();
    for (i, (name, addr)) in nodes.iter().enumerate() {
        let peers: Vec<String> = nodes.iter().filter(|(n, _)| n != name).map(|(n, a)| format!("\"{n}@{a}\"")).collect();
        let data = o.dir.join(name);
        let config = o.dir.join(format!("{name}.toml"));
        let http = format!("127.0.0.1:{}", free_tcp_port()?);
        let grpc = format!("127.0.0.1:{}", free_tcp_port()?);
        let text = format!(
            "# Written by `jigsaw up`.\n[node]\nid = \"{name}\"\nlisten = \"{addr}\"\npeers = [{}]\n\
             coordinator_eligible = {}\nvoters = [{}]\ndata_dir = \"{}\"\n\
             tls = {{ ca = \"{}\", cert = \"{}\", key = \"{}\" }}\n\
             gpu = {{ backend = \"sim\", model = \"{}\", count = {}, reconfig_ms = {} }}\n\
             serve = {{ http = \"{http}\", grpc = \"{grpc}\", executor = \"{}\" }}\n",
            peers.join(", "),
            i < eligible,
            voters.join(", "),
            data.display(),
            ca_dir.join("ca.pem").display(),
            ca_dir.join(format!("{name}.pem")).display(),
            ca_dir.join(format!("{name}.key")).display(),
            o.gpu,
            o.gpus_per_node,
            o.reconfig_ms,
            o.executor.name(),
        );
        let text = if o.control.trim().is_empty() { text } else { format!("{text}[control]\n{}\n", o.control.trim()) };
        std::fs::write(&config, text).with_context(|| format!("writing {}", config.display()))?;
        let log = o.dir.join(format!("{name}.log"));
        let pid = spawn_agent(exe, &config, &log)?;
        local.push(LocalNode {
            name: name.clone(),
            addr: addr.clone(),
            eligible: i < eligible,
            config,
            log,
            pid,
            http: Some(format!("http://{http}")),
            grpc: Some(grpc),
        });
    }
    let cluster = LocalCluster { nodes: local, ca_dir, local: true };
    cluster.save(&o.dir)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let d = o.dir.display();
    let hint = format!("the agents are still running: logs in {d}/node-*.log; stop them with `jigsaw down --dir {d}`");
    rt.block_on(async {
        let op = Operator::for_dir(&o.dir)?;
        let t0 = Instant::now();
        // Every member alive, a coordinator elected.
        let st = wait_for(&op, Duration::from_secs(60), "every node to join", |s| {
            s.state.alive_members().count() == o.nodes
        })
        .await?;
        let mut out = format!(
            "cluster up in {}: {} nodes x {} simulated {} GPUs, coordinator {} (term {})\n",
            o.dir.display(),
            o.nodes,
            o.gpus_per_node,
            o.gpu,
            st.coordinator,
            st.term
        );
        if let Some(space) = &o.space {
            writeln!(out, "{}", set_space(&op, space).await?)?;
        }
        if !o.apps.is_empty() {
            for app in &o.apps {
                match op.request(ClientRequest::register(app.clone())).await? {
                    ClientReply::Done { message, .. } => writeln!(out, "{message}")?,
                    other => bail!("registering {}: {other:?}", app.name),
                }
            }
            let st = wait_for(&op, Duration::from_secs(120), "the plan to be applied everywhere", plan_applied).await?;
            writeln!(
                out,
                "plan epoch {} applied on every node after {:.1} s",
                st.state.epoch,
                t0.elapsed().as_secs_f64()
            )?;
        }
        writeln!(out, "next: jigsaw status --dir {0}   |   jigsaw down --dir {0}", o.dir.display())?;
        Ok(out)
    })
    .with_context(|| hint)
}

/// Set the planner's search space of the cluster (`A+S+T`, `A+T`, …): the other settings
/// stay as they are; the coordinator re-plans.
pub async fn set_space(op: &Operator, space: &str) -> Result<String> {
    let sp: jigsaw_coordinator::spaces::SearchSpace = space.parse().map_err(|e| anyhow!("--space: {e}"))?;
    let mut config = op.status().await?.state.config;
    config.space = sp.to_string();
    match op.request(ClientRequest::set_config(config)).await? {
        ClientReply::Done { message, .. } => Ok(format!("search space {sp}: {message}")),
        ClientReply::Invalid { message } => bail!("setting the search space {sp}: {message}"),
        other => bail!("setting the search space {sp}: unexpected reply {other:?}"),
    }
}

/// Whether every alive member reports the committed epoch applied.
pub fn plan_applied(s: &ClusterStatus) -> bool {
    s.state.epoch >= 1
        && s.state.plan.as_ref().is_some_and(|p| p.inputs == s.state.plan_inputs())
        && s.state.alive_members().all(|m| {
            s.nodes.iter().any(|n| {
                n.node == m.node && n.applied_epoch == s.state.epoch && n.last_seen_ms.is_some_and(|t| t < 2_000)
            })
        })
}

/// Poll the status until `ok` holds.
pub async fn wait_for(
    op: &Operator,
    limit: Duration,
    what: &str,
    ok: impl Fn(&ClusterStatus) -> bool,
) -> Result<ClusterStatus> {
    let t0 = Instant::now();
    loop {
        let last = match op.status().await {
            Ok(s) if ok(&s) => return Ok(s),
            Ok(s) => format!("epoch {}, {} alive", s.state.epoch, s.state.alive_members().count()),
            Err(e) => e.to_string(),
        };
        if t0.elapsed() > limit {
            bail!("timed out after {limit:?} waiting for {what} (last: {last})");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Start `jigsaw agent --config CONFIG` detached, logging to `log`.
pub fn spawn_agent(exe: &Path, config: &Path, log: &Path) -> Result<u32> {
    use std::os::unix::process::CommandExt;
    let out = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
    let child = std::process::Command::new(exe)
        .arg("agent")
        .arg("--config")
        .arg(config)
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {} agent", exe.display()))?;
    Ok(child.id())
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')))
        .unwrap_or(false)
}

fn is_agent(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).map(|c| c.windows(5).any(|w| w == b"agent")).unwrap_or(false)
}

/// Send `signal` (`TERM`, `KILL`) to `pid`; a process that is already gone is not an error.
pub fn signal(pid: u32, signal: &str) -> Result<()> {
    if !alive(pid) {
        return Ok(());
    }
    let st = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stderr(std::process::Stdio::null())
        .status()?;
    if !st.success() && alive(pid) {
        bail!("kill -{signal} {pid} failed");
    }
    Ok(())
}

/// Stop every agent of a local cluster (TERM, then KILL after 20 s: agents drain first) and remove its directory.
pub fn cmd_down(dir: &Path, keep: bool) -> Result<String> {
    let c = LocalCluster::load(dir)?;
    if !c.local {
        bail!(
            "{} describes a cluster that `jigsaw up` did not start; stop its agents with systemctl on each node",
            dir.display()
        );
    }
    let mut out = String::new();
    for n in &c.nodes {
        if alive(n.pid) && is_agent(n.pid) {
            signal(n.pid, "TERM")?;
        }
    }
    let t0 = Instant::now();
    for n in &c.nodes {
        while alive(n.pid) && is_agent(n.pid) && t0.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(50));
        }
        if alive(n.pid) && is_agent(n.pid) {
            signal(n.pid, "KILL")?;
            writeln!(out, "{}: killed (did not stop within 20 s)", n.name)?;
        } else {
            writeln!(out, "{}: stopped", n.name)?;
        }
    }
    if keep {
        std::fs::remove_file(dir.join("cluster.json"))?;
        writeln!(out, "kept {} (logs, data)", dir.display())?;
    } else {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
        writeln!(out, "removed {}", dir.display())?;
    }
    Ok(out)
}

/// Render a status for people.
pub fn render_status(s: &ClusterStatus) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "coordinator: {} (Raft term {}, voters {})", s.coordinator, s.term, s.voters.join(" "));
    let _ = writeln!(out, "plan epoch:  {}", s.state.epoch);
    if let Some(p) = &s.state.plan {
        let st = &p.stats;
        let c = st.changes;
        let _ = writeln!(
            out,
            "  {} GPU(s) in use, {} compute slices (lower bound {} GPU(s), LP bound {}); planned in {:.2} s; \
             instances kept {}, moved {}, created {}, destroyed {}",
            st.gpus_used,
            st.compute_slices,
            st.lower_bound_gpus,
            st.lp_bound_gpus,
            st.solve_ms / 1e3,
            c.kept,
            c.moved,
            c.created,
            c.destroyed
        );
        for n in &st.notes {
            let _ = writeln!(out, "  note: {n}");
        }
        for a in &p.apps {
            let shed = a.shed_rps();
            let _ = writeln!(
                out,
                "  app {:<10} {:>2} GPU(s) {:>3} slices {:>9.1} of {:.1} req/s  accuracy {:.4}  priority {}{}{}{}",
                a.app,
                a.gpus,
                a.compute_slices,
                a.planned_rps,
                a.requested_rps,
                a.accuracy,
                a.priority,
                if shed > 0.0 { format!("  SHED {shed:.1} req/s") } else { String::new() },
                a.worst_node_loss
                    .as_ref()
                    .map(|(n, r)| format!("  after losing {n}: {:.1} req/s", r.max(0.0)))
                    .unwrap_or_default(),
                a.note.as_ref().map(|n| format!("  ({n})")).unwrap_or_default()
            );
        }
    }
    if !s.state.apps.is_empty() {
        let _ = writeln!(out, "demand (req/s; measured over the last control interval):");
    }
    for (name, entry) in &s.state.apps {
        let d = s.demand.iter().find(|d| d.app == *name);
        let opt = |x: Option<f64>| x.map_or("-".to_string(), |x| format!("{x:.1}"));
        let rec = s.state.demand.get(name);
        let floor = if entry.demand_auto {
            "auto".to_string()
        } else {
            format!("floor {:.1}", s.state.registered_rps(name).unwrap_or(entry.demand_rps))
        };
        let _ = writeln!(
            out,
            "  app {:<10} measured {:>7}  forecast {:>7}  planned {:>7.1} ({floor}; {})  violations {}",
            name,
            opt(d.and_then(|d| d.measured_rps)),
            opt(d.and_then(|d| d.forecast_rps)),
            entry.demand_rps,
            rec.map_or("registered", |r| r.reason.as_str()),
            d.and_then(|d| d.violation_rate).map_or("-".to_string(), |v| format!("{:.1}%", 100.0 * v)),
        );
        if let Some(d) = d.filter(|d| !d.tasks.is_empty()) {
            let tasks: Vec<String> = d.tasks.iter().map(|(t, r)| format!("{t} {r:.1}")).collect();
            let _ = writeln!(out, "    items/s per task: {}", tasks.join(", "));
        }
    }
    let _ = writeln!(out, "members:");
    for n in &s.nodes {
        let m = s.state.members.get(&n.node);
        let alive = m.map_or("unknown", |m| if m.alive { "alive" } else { "DOWN" });
        let seen = n.last_seen_ms.map_or("never".to_string(), |t| format!("{:.1}s ago", t as f64 / 1000.0));
        let role = if m.is_some_and(|m| m.eligible) { "voter" } else { "agent" };
        let _ =
            writeln!(out, "  {:<10} {:<6} {role}  seen {seen:<10} applied epoch {}", n.node, alive, n.applied_epoch);
        if let Some((e, o)) = &n.last_outcome {
            if *o != ApplyOutcome::Applied {
                let _ = writeln!(out, "    epoch {e}: {o:?}");
            }
        }
        for g in &n.gpus {
            let layout: Vec<String> = g
                .live
                .iter()
                .map(|i| {
                    if i.task.is_empty() {
                        format!("{}@{} idle", i.mig_profile, i.start)
                    } else {
                        format!(
                            "{}@{} {}/{}/{} mps{} b{}",
                            i.mig_profile, i.start, i.app, i.task, i.variant, i.mps, i.batch
                        )
                    }
                })
                .collect();
            let _ = writeln!(
                out,
                "    {} {}: {}",
                g.uuid,
                g.model,
                if layout.is_empty() { "(no MIG instances)".to_string() } else { layout.join(", ") }
            );
        }
    }
    out
}

/// `jigsaw status`.
/// `jigsaw status`: text, JSON, or the HTML status page (without the per-frontend request
/// figures an agent's `/status` adds: the operator client has no frontend).
pub fn cmd_status(dir: &Path, json: bool, html: Option<&Path>) -> Result<String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let s = rt.block_on(async { Operator::for_dir(dir)?.status().await })?;
    if let Some(path) = html {
        let figures = jigsaw_agent::status_page::FrontendFigures { node: "the operator client".into(), apps: vec![] };
        std::fs::write(path, jigsaw_agent::status_page::render(&s, &figures))
            .with_context(|| format!("writing {}", path.display()))?;
        return Ok(format!("wrote {}\n", path.display()));
    }
    Ok(if json { serde_json::to_string_pretty(&s)? + "\n" } else { render_status(&s) })
}

/// `jigsaw app register`.
pub fn cmd_app_register(dir: &Path, spec: &Path, profiles: &Path, rps: crate::args::Rps) -> Result<String> {
    let spec_toml = std::fs::read_to_string(spec).with_context(|| format!("reading {}", spec.display()))?;
    let profiles_csv = std::fs::read_to_string(profiles).with_context(|| format!("reading {}", profiles.display()))?;
    let (entry, _) = AppEntry::from_sources(
        spec_toml,
        &spec.display().to_string(),
        profiles_csv,
        &profiles.display().to_string(),
        rps.initial(),
    )?;
    let entry = AppEntry { demand_auto: rps.auto(), ..entry };
    operator_request(dir, ClientRequest::register(entry))
}

/// Send one operator request and render the reply.
pub fn operator_request(dir: &Path, req: ClientRequest) -> Result<String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    match rt.block_on(async { Operator::for_dir(dir)?.request(req).await })? {
        ClientReply::Done { message, epoch } => Ok(format!("{message} (plan epoch now {epoch}; a new plan follows)\n")),
        ClientReply::Invalid { message } => bail!("rejected: {message}"),
        other => bail!("unexpected reply {other:?}"),
    }
}

fn sim_gpus(node: &str, model: GpuModel, count: u32, reconfig: Duration) -> Vec<Backend> {
    (0..count)
        .map(|i| {
            let seed = fnv64(&[node, &i.to_string()]);
            Box::new(SimGpu::new(model, seed, reconfig)) as Backend
        })
        .collect()
}

/// Longest a stopping agent drains before it leaves anyway (the unit's `TimeoutStopSec` is
/// longer).
const DRAIN_MAX: std::time::Duration = std::time::Duration::from_secs(15);

/// `jigsaw agent --config FILE`: run this node until SIGTERM or SIGINT, then drain (stop
/// admitting, tell the coordinator, answer what was admitted) and leave.
pub fn cmd_agent(config_path: &Path) -> Result<()> {
    let path = config_path.display().to_string();
    let cfg = Config::load(&path)?;
    let section = cfg.node.as_ref().ok_or_else(|| anyhow!("{path}: no [node] section; see deploy/jigsaw.toml"))?;
    let node: NodeConfig = section.validate(&path)?;
    let planner = cfg.planner_config(&path)?;
    let control = cfg.control_config(&path)?;
    // One HiGHS thread unless the config says otherwise: the agent shares its cores.
    let threads = cfg.planner.threads.or(Some(1));
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(false).try_init();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async move {
        let identity = load_identity(&node)?;
        let quic = QuicNode::bind(node.listen, &identity)?;
        let transport = QuicTransport::new(quic);
        let reloader = tokio::spawn(reload_on_sighup(node.clone(), transport.clone()));
        let (gpus, simulate) = match &node.gpu {
            GpuBackendConfig::Sim { model, count, reconfig } => (sim_gpus(&node.id, *model, *count, *reconfig), true),
            GpuBackendConfig::Nvml => (nvml_gpus()?, false),
        };
        let spec = NodeSpec {
            name: node.id.clone(),
            addr: node.advertise.to_string(),
            eligible: node.coordinator_eligible,
            voters: node.voters.iter().map(|(n, a)| (n.clone(), a.to_string())).collect(),
            seeds: node.peers.iter().map(|(n, a)| (n.clone(), a.to_string())).collect(),
            data_dir: node.data_dir.clone(),
            timing: Timing::default(),
            planner: highs_planner(planner, threads),
            gpus,
            simulate_latency: simulate,
            launcher: Some(if node.in_process_workers {
                Arc::new(InProcessLauncher(node.executor)) as Arc<dyn Launcher>
            } else {
                Arc::new(ProcessLauncher::new(std::env::current_exe()?, node.executor).with_hang(node.hang))
            }),
            max_in_flight: node.max_in_flight,
            control,
        };
        let t = transport.clone();
        let handle = NodeHandle::start(spec, transport.clone(), move |h| Some(tokio::spawn(t.serve(h)))).await?;
        tracing::info!(node = %node.id, addr = %node.advertise, executor = node.executor.name(), "agent started");
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let svc = handle.plane() as Arc<dyn jigsaw_agent::dataplane::Inference>;
        let tokens = match &node.tokens {
            Some(p) => Some(Arc::new(jigsaw_agent::dataplane::auth::TokenFile::load(p)?)),
            None => None,
        };
        let tls = match &node.http_tls {
            Some((cert, key)) => Some(jigsaw_agent::dataplane::http::tls_config(cert, key)?),
            None => None,
        };
        let http = match node.http {
            Some(addr) => {
                let (listener, shutdown) = listen(&node.id, "HTTP", addr, &stop_rx).await?;
                let limits = HttpLimits {
                    max_in_flight: node.max_in_flight,
                    max_connections: node.max_connections,
                    idle_timeout: node.idle_timeout,
                    ..HttpLimits::default()
                };
                let security = HttpSecurity { tokens: tokens.clone(), tls };
                Some(tokio::spawn(jigsaw_agent::dataplane::http::serve_with(
                    listener,
                    svc.clone(),
                    limits,
                    security,
                    shutdown,
                )))
            }
            None => None,
        };
        let grpc = match node.grpc {
            Some(addr) => {
                let (listener, shutdown) = listen(&node.id, "gRPC", addr, &stop_rx).await?;
                Some(tokio::spawn(jigsaw_agent::dataplane::grpc::serve_with(listener, svc.clone(), tokens, shutdown)))
            }
            None => None,
        };
        let sink = crate::systemd::sd_sink();
        let watchdog = sd_notify::watchdog_enabled().is_some();
        let notifier =
            tokio::spawn(crate::systemd::notify_systemd(handle.health(), node.id.clone(), watchdog, sink.clone()));
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!(node = %node.id, "stopping: draining first");
        notifier.abort();
        let stopping = vec![crate::systemd::Note::Stopping];
        if let Err(e) = crate::systemd::send_within(&sink, stopping, Duration::from_secs(1)).await {
            tracing::warn!(%e, "sd_notify STOPPING");
        }
        // No new connections (clients go to another agent); admitted requests run on.
        let _ = stop_tx.send(true);
        let mut handle = handle;
        let report = handle.drain(DRAIN_MAX).await;
        tracing::info!(
            node = %node.id,
            announced = report.announced,
            replanned = report.replanned,
            unanswered = report.unanswered,
            waited_ms = report.waited.as_millis() as u64,
            "drained"
        );
        if let Some(h) = http {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), h).await;
        }
        if let Some(g) = grpc {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), g).await;
        }
        handle.stop().await;
        reloader.abort();
        transport.close();
        Ok(())
    })
}

/// Certificates expiring sooner than this are warned about at every (re)load.
const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 86_400);

/// The node's TLS identity from `[node.tls]`: CA bundle, certificate, key and deny list.
/// The certificate must be a node certificate for this node's id.
fn load_identity(node: &NodeConfig) -> Result<tls::Identity> {
    let identity = tls::Identity::load(&node.tls.0, &node.tls.1, &node.tls.2)?;
    let info = tls::CertInfo::from_pem_file(&node.tls.1)?;
    if info.role != jigsaw_protocol::wire::Role::Node || info.name != node.id {
        bail!(
            "{}: a {} certificate for `{}`, but this is node `{}`: issue one with `jigsaw ca issue {}`",
            node.tls.1.display(),
            info.role,
            info.name,
            node.id,
            node.id
        );
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs() as i64;
    if info.not_after <= now {
        bail!("{}: the certificate expired at {}", node.tls.1.display(), tls::utc_time(info.not_after));
    }
    if info.not_after - now < EXPIRY_WARNING.as_secs() as i64 {
        tracing::warn!(
            node = %node.id,
            expires = %tls::utc_time(info.not_after),
            "the node certificate expires soon: issue a new one (`jigsaw ca issue --force`) and SIGHUP the agent"
        );
    }
    let deny = match &node.tls_deny {
        Some(p) => tls::DenyList::load(p)?,
        None => tls::DenyList::default(),
    };
    Ok(identity.with_deny(deny))
}

/// On SIGHUP, re-read the CA bundle, certificate, key and deny list and use them for new
/// connections (no restart, no downtime); a set that does not load is logged and the old
/// one kept.
async fn reload_on_sighup(node: NodeConfig, transport: Arc<QuicTransport>) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else { return };
    while hup.recv().await.is_some() {
        match load_identity(&node).and_then(|id| {
            let denied = id.deny().len();
            transport.reload(&id)?;
            Ok(denied)
        }) {
            Ok(denied) => tracing::info!(node = %node.id, denied, "TLS identity reloaded"),
            Err(e) => tracing::error!(node = %node.id, "TLS reload failed, keeping the previous identity: {e:#}"),
        }
    }
}

/// Bind an inference API's listener; the returned future completes when `stop` turns true.
async fn listen(
    node: &str,
    what: &str,
    addr: SocketAddr,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> Result<(tokio::net::TcpListener, impl std::future::Future<Output = ()> + Send + 'static)> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow!("binding the {what} inference API to {addr}: {e}"))?;
    tracing::info!(%node, %addr, "{what} inference API listening");
    let mut stop = stop.clone();
    Ok((listener, async move {
        let _ = stop.wait_for(|s| *s).await;
    }))
}

fn nvml_gpus() -> Result<Vec<Backend>> {
    let gpus = jigsaw_agent::gpu::nvml::discover().map_err(|e| anyhow!("GPU discovery: {e}"))?;
    if gpus.is_empty() {
        bail!("GPU discovery: NVML found no supported GPU on this node");
    }
    Ok(gpus.into_iter().map(|g| Box::new(g) as Backend).collect())
}
