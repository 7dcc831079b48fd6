//! `jigsaw bench mesh`: failover time and plan distribution time of a cluster of in-process
//! nodes, each with its own QUIC endpoint on loopback (real mutual TLS, real Raft with the redb
//! store, simulated GPUs with zero reconfiguration latency so the figure is the mesh's own).
//!
//! * **distribution**: an app's demand changes (one operator request per repetition); the
//!   time from the new plan's commit on the coordinator until every node has applied it, and,
//!   separately, from the request's acceptance to that commit (solve + Raft commit);
//! * **failover**: the coordinator stops abruptly (its tasks, Raft and endpoint vanish, as
//!   with SIGKILL); the time until another node leads and answers a status request with the
//!   latest plan epoch. The stopped node then restarts from its data dir before the next rep.

use anyhow::{bail, Context, Result};
use jigsaw_agent::actors::Backend;
use jigsaw_agent::gpu::sim::SimGpu;
use jigsaw_agent::node::{highs_planner, NodeHandle, NodeSpec, Timing};
use jigsaw_agent::transport::net::{QuicTransport, Transport};
use jigsaw_agent::transport::{tls, QuicNode};
use jigsaw_coordinator::PlannerConfig;
use jigsaw_protocol::cluster::fnv64;
use jigsaw_protocol::wire::{ClientReply, ClientRequest, WireMessage};
use jigsaw_protocol::GpuModel;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Bench {
    dir: PathBuf,
    names: Vec<String>,
    addrs: Vec<SocketAddr>,
    eligible: usize,
    gpus: u32,
    nodes: Vec<Option<(NodeHandle<QuicTransport>, Arc<QuicTransport>)>>,
    admin: Arc<QuicTransport>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn pct(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

impl Bench {
    async fn start(&mut self, i: usize) -> Result<()> {
        let name = &self.names[i];
        let ca = self.dir.join("ca");
        let id =
            tls::Identity::load(&ca.join("ca.pem"), &ca.join(format!("{name}.pem")), &ca.join(format!("{name}.key")))?;
        let t0 = Instant::now();
        let quic = loop {
            match QuicNode::bind(self.addrs[i], &id) {
                Ok(q) => break q,
                Err(e) if t0.elapsed() > Duration::from_secs(15) => return Err(e.into()),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        let transport = QuicTransport::new(quic);
        let all: Vec<(String, String)> =
            self.names.iter().zip(&self.addrs).map(|(n, a)| (n.clone(), a.to_string())).collect();
        let gpus: Vec<Backend> = (0..self.gpus)
            .map(|g| {
                Box::new(SimGpu::new(GpuModel::H100_80gb, fnv64(&[name, &g.to_string()]), Duration::ZERO)) as Backend
            })
            .collect();
        let spec = NodeSpec {
            name: name.clone(),
            addr: self.addrs[i].to_string(),
            eligible: i < self.eligible,
            voters: all[..self.eligible].to_vec(),
            seeds: all.iter().filter(|(n, _)| n != name).take(self.eligible).cloned().collect(),
            data_dir: self.dir.join(name),
            timing: Timing::default(),
            planner: highs_planner(PlannerConfig::default(), Some(1)),
            gpus,
            simulate_latency: true,
            launcher: None,
            max_in_flight: 4096,
            control: Default::default(),
        };
        let t = transport.clone();
        let h = NodeHandle::start(spec, transport.clone(), move |handler| Some(tokio::spawn(t.serve(handler)))).await?;
        self.nodes[i] = Some((h, transport));
        Ok(())
    }

    /// Stop node `i` abruptly; returns its endpoint, whose drain the caller awaits (with
    /// [`QuicTransport::wait_idle`]) before the port can be bound again.
    async fn kill(&mut self, i: usize) -> Option<Arc<QuicTransport>> {
        let (h, t) = self.nodes[i].take()?;
        t.close();
        h.stop().await;
        Some(t)
    }

    /// The node that leads the highest Raft term and runs the control loop.
    fn leader(&self) -> Option<usize> {
        (0..self.nodes.len())
            .filter_map(|i| {
                let (h, _) = self.nodes[i].as_ref()?;
                match h.raft_view() {
                    Some((term, true)) if h.is_coordinator() => Some((term, i)),
                    _ => None,
                }
            })
            .max()
            .map(|(_, i)| i)
    }

    async fn ask(&self, i: usize, req: ClientRequest) -> Result<ClientReply> {
        let msg = WireMessage::Client(req);
        match self.admin.request(&self.names[i], &self.addrs[i].to_string(), msg, Duration::from_secs(10)).await? {
            WireMessage::ClientReply(r) => Ok(r),
            other => bail!("unexpected reply {other:?}"),
        }
    }

    async fn until<T>(&self, limit: Duration, what: &str, mut f: impl FnMut(&Self) -> Option<T>) -> Result<T> {
        let t0 = Instant::now();
        loop {
            if let Some(x) = f(self) {
                return Ok(x);
            }
            if t0.elapsed() > limit {
                bail!("timed out waiting for {what}");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    fn all_applied(&self, epoch: u64) -> bool {
        self.nodes.iter().flatten().all(|(h, _)| h.applied().0 >= epoch)
    }
}

/// Run the bench for each cluster size; `reps` repetitions of each measurement.
pub fn cmd_bench_mesh(sizes: &[usize], reps: usize, gpus: u32) -> Result<String> {
    let mut out = String::from(
        "in-process nodes, QUIC + mTLS on loopback, openraft + redb, simulated H100s (0 ms MIG reconfiguration)\n\
         nodes  GPUs  distribution ms (commit -> all applied) p50 / max   request -> commit ms p50   failover ms p50 / max\n",
    );
    for &n in sizes {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        let line = rt.block_on(bench_one(n, reps.max(1), gpus))?;
        out += &line;
    }
    Ok(out)
}

async fn bench_one(n: usize, reps: usize, gpus: u32) -> Result<String> {
    if n == 0 {
        bail!("a cluster needs at least one node");
    }
    let dir = std::env::temp_dir().join(format!("jigsaw-bench-mesh-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let ca = dir.join("ca");
    tls::ca_init(&ca, "bench")?;
    tls::ca_issue_admin(&ca)?;
    let mut names = Vec::new();
    let mut addrs = Vec::new();
    for i in 1..=n {
        let name = format!("node-{i}");
        tls::ca_issue(&ca, &name)?;
        let s = std::net::UdpSocket::bind("127.0.0.1:0")?;
        addrs.push(s.local_addr()?);
        names.push(name);
    }
    let admin_id = tls::Identity::load(&ca.join("ca.pem"), &ca.join("admin.pem"), &ca.join("admin.key"))?;
    let admin = QuicTransport::new(QuicNode::bind("127.0.0.1:0".parse()?, &admin_id)?);
    let mut b = Bench {
        dir: dir.clone(),
        names,
        addrs,
        eligible: n.min(3),
        gpus,
        nodes: (0..n).map(|_| None).collect(),
        admin,
    };
    for i in 0..n {
        b.start(i).await.with_context(|| format!("starting node {i}"))?;
    }
    let limit = Duration::from_secs(120);
    let l = b
        .until(limit, "every node to join", |b| {
            let l = b.leader()?;
            let st = b.nodes[l].as_ref()?.0.committed();
            (st.alive_members().count() == n).then_some(l)
        })
        .await?;
    let spec = include_str!("../../../examples/apps/social.toml");
    let csv = include_str!("../../../examples/profiles/social-h100-80gb.csv");
    let mut dist = Vec::new();
    let mut commit = Vec::new();
    let mut leader = l;
    for r in 0..reps {
        let before = b.nodes[leader].as_ref().map_or(0, |x| x.0.committed().epoch);
        b.until(limit, "the previous plan everywhere", |b| b.all_applied(before).then_some(())).await?;
        let entry = jigsaw_protocol::cluster::AppEntry {
            name: "social".into(),
            spec_toml: spec.into(),
            profiles_csv: csv.into(),
            demand_rps: 100.0 + 50.0 * r as f64,
            demand_auto: false,
        };
        let t0 = Instant::now();
        match b.ask(leader, ClientRequest::register(entry)).await? {
            ClientReply::Done { .. } => {}
            other => bail!("register: {other:?}"),
        }
        let e = b
            .until(limit, "the new plan's commit", |b| {
                let e = b.nodes[leader].as_ref()?.0.committed().epoch;
                (e > before).then_some(e)
            })
            .await?;
        let t1 = Instant::now();
        b.until(limit, "the new plan everywhere", |b| b.all_applied(e).then_some(())).await?;
        commit.push(ms(t1 - t0));
        dist.push(ms(t1.elapsed()));
        leader = b.leader().unwrap_or(leader);
    }
    let mut fail = Vec::new();
    for _ in 0..reps {
        let l = b.until(limit, "a coordinator", |b| b.leader()).await?;
        let epoch = b.nodes[l].as_ref().map_or(0, |x| x.0.committed().epoch);
        let t0 = Instant::now();
        let dead = b.kill(l).await;
        let killed = t0.elapsed();
        loop {
            if let Some(nl) = b.leader().filter(|&x| x != l) {
                if let Ok(ClientReply::Status(s)) = b.ask(nl, ClientRequest::status()).await {
                    if s.state.epoch >= epoch {
                        break;
                    }
                }
            }
            if t0.elapsed() > limit {
                bail!("no new coordinator within {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        fail.push(ms(t0.elapsed()));
        tracing::debug!(
            "failover rep: {:.1} ms (stopping the old coordinator took {:.1} ms)",
            ms(t0.elapsed()),
            ms(killed)
        );
        if let Some(t) = dead {
            t.wait_idle().await;
        }
        b.start(l).await?;
        let name = b.names[l].clone();
        b.until(limit, "the restarted node to rejoin", |b| {
            let nl = b.leader()?;
            let st = b.nodes[nl].as_ref()?.0.committed();
            st.members.get(&name).is_some_and(|m| m.alive).then_some(())
        })
        .await?;
    }
    for i in 0..n {
        b.kill(i).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
    let (dmax, fmax) = (dist.iter().copied().fold(0.0, f64::max), fail.iter().copied().fold(0.0, f64::max));
    let mut line = String::new();
    writeln!(
        line,
        "{n:>5}  {:>4}  {:>22.1} / {:<8.1}            {:>20.1}   {:>10.1} / {:.1}",
        n * gpus as usize,
        pct(&mut dist, 0.5),
        dmax,
        pct(&mut commit, 0.5),
        pct(&mut fail, 0.5),
        fmax
    )?;
    Ok(line)
}
