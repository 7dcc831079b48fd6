//! Operator configuration (TOML), validated with errors that name the field.
//!
//! ```toml
//! [planner]
//! time_limit_s = 30.0   # wall-clock limit of one planner run
//! mip_rel_gap = 1e-4    # relative MIP gap of each MILP
//! max_demand_rel_gap = 0.01  # maximum demand: stop once R is within this share of the bound
//! threads = 1           # HiGHS threads (process-global in HiGHS; omit for its default)
//! alpha = 1.0           # Eq. 14 accuracy weight
//! beta = 0.035          # Eq. 14 slice weight (omit: 1 / available slices)
//! max_levels = 10       # latency levels per task before a grid is used
//! abs_gap_slices = 1.0  # at fixed demand, stop within this many slices (x beta) of optimal
//! spread = "auto"       # cluster plan: "node" = every task on >= 2 nodes where capacity
//!                       # allows; "none"; "auto" = "node" with >= 2 alive nodes
//! keep_weight = 0.5     # cluster plan: bonus per instance kept in place, in slices (0-0.99)
//!
//! [control]             # following measured demand (the coordinator; same on every voter)
//! follow_demand = true  # false: plan for the registered demand only
//! forecaster = "holt"   # "holt" (trend + quantile headroom) or "paper" (mean of last 5 + 5 %)
//! interval_s = 10.0     # control interval: demand is measured and forecast per interval
//! band_low = 0.7        # re-plan down when the forecast < band_low x planned demand
//! band_high = 1.0       # re-plan up when the forecast > band_high x planned demand
//! step_margin = 0.1     # a re-plan plans for forecast x (1 + step_margin); needs
//!                       # band_low x (1 + step_margin) < 1
//! slo_violation_rate = 0.05   # re-plan up when more answers than this violate the SLO
//! min_completions = 20  # answers an interval needs before its violation rate counts
//! slo_max_headroom = 1.0  # violations add capacity up to forecast x (1 + this), no more
//! min_replan_interval_s = 60.0   # shortest time between two demand changes of an app
//! warmup_intervals = 3  # intervals measured before the first decision
//!
//! [node]                # the agent on this machine (`jigsaw agent`)
//! id = "node-1"         # also the DNS name in its certificate
//! listen = "0.0.0.0:7400"
//! advertise = "10.0.0.1:7400"   # what peers dial (required with a wildcard listen)
//! peers = ["node-2@10.0.0.2:7400", "node-3@10.0.0.3:7400"]
//! coordinator_eligible = true
//! voters = ["node-1", "node-2", "node-3"]   # initial Raft voters, the same on every eligible node
//! data_dir = "/var/lib/jigsaw"
//! tls = { ca = "/etc/jigsaw/ca/ca.pem", cert = "/etc/jigsaw/ca/node-1.pem", key = "/etc/jigsaw/ca/node-1.key" }
//!                       # optional: deny = "/etc/jigsaw/ca/deny.txt" (revoked serials; SIGHUP re-reads all four)
//! gpu = { backend = "sim", model = "h100-80gb", count = 4, reconfig_ms = 250 }   # or { backend = "nvml" }
//!
//! [node.serve]          # the inference API (every key optional)
//! http = "0.0.0.0:8000"
//! grpc = "0.0.0.0:8001"
//! max_in_flight = 4096  # requests computed at once before 429
//! max_connections = 1024  # HTTP connections open at once; one more gets 503 and is closed
//! idle_timeout_s = 30.0   # an HTTP connection mid-request moving no byte this long is closed
//! tokens = "/etc/jigsaw/http-tokens"   # bearer tokens (HTTP and gRPC); absent: none
//! http_tls = { cert = "/etc/jigsaw/https.pem", key = "/etc/jigsaw/https.key" }   # HTTPS
//! ```

use jigsaw_coordinator::control::ControlConfig;
use jigsaw_coordinator::replan::ReplanPolicy;
use jigsaw_coordinator::PlannerConfig;
use serde::Deserialize;

/// The whole config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Planner section.
    #[serde(default)]
    pub planner: PlannerSection,
    /// This node's agent (absent for CLI-only use).
    pub node: Option<NodeSection>,
    /// Demand following (`[control]`).
    #[serde(default)]
    pub control: ControlSection,
}

/// `[control]` as written in the file (see the module docs).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlSection {
    /// Follow measured demand.
    pub follow_demand: Option<bool>,
    /// `holt` or `paper`.
    pub forecaster: Option<String>,
    /// Control interval, s.
    pub interval_s: Option<f64>,
    /// Lower band edge (share of the planned demand).
    pub band_low: Option<f64>,
    /// Upper band edge (multiple of the planned demand).
    pub band_high: Option<f64>,
    /// Margin over the forecast when re-planning.
    pub step_margin: Option<f64>,
    /// SLO-violation rate that triggers a re-plan up.
    pub slo_violation_rate: Option<f64>,
    /// Answers an interval needs before its violation rate counts.
    pub min_completions: Option<u64>,
    /// Most capacity SLO violations may add above the forecast.
    pub slo_max_headroom: Option<f64>,
    /// Shortest time between demand changes of one app, s.
    pub min_replan_interval_s: Option<f64>,
    /// Intervals measured before the first decision.
    pub warmup_intervals: Option<u64>,
}

/// `[node]` as written in the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// Node id.
    pub id: String,
    /// QUIC listen address.
    pub listen: String,
    /// Seed peers, `id@host:port`.
    #[serde(default)]
    pub peers: Vec<String>,
    /// Whether this node may be elected coordinator.
    #[serde(default)]
    pub coordinator_eligible: bool,
    /// The initial Raft voters (node ids; each is this node or a peer). Identical on every
    /// eligible node.
    #[serde(default)]
    pub voters: Vec<String>,
    /// The address peers dial (default: `listen`; required when `listen` is a wildcard).
    #[serde(default)]
    pub advertise: Option<String>,
    /// Durable state directory.
    pub data_dir: std::path::PathBuf,
    /// TLS files.
    pub tls: TlsSection,
    /// GPU backend.
    pub gpu: GpuSection,
    /// The inference API and workers (`[node.serve]`; optional).
    #[serde(default)]
    pub serve: ServeSection,
}

/// `[node.serve]`: the data plane.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeSection {
    /// HTTP listen address of the KServe v2 inference API (absent: no HTTP API).
    pub http: Option<String>,
    /// gRPC listen address of the KServe v2 inference API (absent: no gRPC API).
    pub grpc: Option<String>,
    /// Worker executor: `timed` (default with simulated GPUs), `cpu`, `noop`, `cuda`
    /// (default with NVML).
    pub executor: Option<String>,
    /// Requests the frontend runs at once before answering 429 (default 4096).
    pub max_in_flight: Option<usize>,
    /// Run workers inside the agent process instead of `jigsaw worker` processes.
    #[serde(default)]
    pub in_process_workers: bool,
    /// A worker process holding a batch longer than this multiple of the batch's profiled
    /// p95 counts as hung and is restarted (default 10).
    pub batch_timeout_factor: Option<f64>,
    /// Floor of that limit, ms (default 5000).
    pub batch_timeout_min_ms: Option<u64>,
    /// Longest a worker process may take to report ready, ms (default 120000).
    pub worker_start_timeout_ms: Option<u64>,
    /// HTTP connections open at once; one more is answered 503 and closed (default 1024).
    pub max_connections: Option<usize>,
    /// Seconds an HTTP connection may move no byte while its request is not being computed
    /// (a stalled body, a client not reading its answer) before it is closed (default 30).
    pub idle_timeout_s: Option<f64>,
    /// Bearer token file for the HTTP and gRPC APIs (absent: no authentication); see
    /// `dataplane::auth` for its format and reload.
    pub tokens: Option<std::path::PathBuf>,
    /// TLS for the HTTP API (absent: plain HTTP).
    pub http_tls: Option<HttpTlsSection>,
}

/// `[node.serve] http_tls`: the HTTPS certificate chain and key (PEM).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpTlsSection {
    /// Certificate chain, leaf first.
    pub cert: std::path::PathBuf,
    /// Private key.
    pub key: std::path::PathBuf,
}

/// `[node.tls]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// Cluster CA certificate.
    pub ca: std::path::PathBuf,
    /// This node's certificate chain.
    pub cert: std::path::PathBuf,
    /// This node's key.
    pub key: std::path::PathBuf,
    /// Certificate serials to refuse (revoked), one hex serial per line; re-read with the
    /// certificates on SIGHUP. Optional.
    #[serde(default)]
    pub deny: Option<std::path::PathBuf>,
}

/// `[node.gpu]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, tag = "backend", rename_all = "lowercase")]
pub enum GpuSection {
    /// The MIG/MPS simulator.
    Sim {
        /// GPU model name.
        model: String,
        /// GPUs on this node.
        count: u32,
        /// Simulated create/destroy latency, ms.
        #[serde(default)]
        reconfig_ms: u64,
    },
    /// Real GPUs through NVML.
    Nvml,
}

/// `[node]` validated.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeConfig {
    /// Node id.
    pub id: String,
    /// Listen address.
    pub listen: std::net::SocketAddr,
    /// Seed peers: (id, address).
    pub peers: Vec<(String, std::net::SocketAddr)>,
    /// Coordinator-eligible.
    pub coordinator_eligible: bool,
    /// Initial Raft voters: (id, address).
    pub voters: Vec<(String, std::net::SocketAddr)>,
    /// Address peers dial.
    pub advertise: std::net::SocketAddr,
    /// Durable state directory.
    pub data_dir: std::path::PathBuf,
    /// CA, cert, key.
    pub tls: (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf),
    /// Deny list of certificate serials (`[node.tls] deny`).
    pub tls_deny: Option<std::path::PathBuf>,
    /// GPU backend.
    pub gpu: GpuBackendConfig,
    /// HTTP inference API address.
    pub http: Option<std::net::SocketAddr>,
    /// gRPC inference API address.
    pub grpc: Option<std::net::SocketAddr>,
    /// Worker executor.
    pub executor: crate::dataplane::worker::ExecutorKind,
    /// Frontend admission limit.
    pub max_in_flight: usize,
    /// Workers run in-process.
    pub in_process_workers: bool,
    /// When a worker process counts as hung.
    pub hang: crate::dataplane::worker::HangPolicy,
    /// HTTP connection cap.
    pub max_connections: usize,
    /// HTTP idle timeout mid-request.
    pub idle_timeout: std::time::Duration,
    /// Bearer token file.
    pub tokens: Option<std::path::PathBuf>,
    /// HTTPS certificate chain and key.
    pub http_tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

/// The GPU backend to run.
#[derive(Debug, Clone, PartialEq)]
pub enum GpuBackendConfig {
    /// Simulated GPUs.
    Sim {
        /// Model.
        model: jigsaw_protocol::catalogue::GpuModel,
        /// Count.
        count: u32,
        /// Create/destroy latency.
        reconfig: std::time::Duration,
    },
    /// NVML.
    Nvml,
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 63 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
}

fn listen_is_wildcard(a: &std::net::SocketAddr) -> bool {
    a.ip().is_unspecified()
}

impl NodeSection {
    /// Validate; errors name the field under `node.`.
    pub fn validate(&self, path: &str) -> Result<NodeConfig, ConfigError> {
        let bad = |field: &str, message: String| ConfigError::Value {
            path: path.into(),
            field: format!("node.{field}"),
            message,
        };
        if !valid_id(&self.id) {
            return Err(bad("id", format!("`{}` must be 1-63 ASCII letters, digits, `-` or `.`", self.id)));
        }
        // Reserved names (`admin`, `ca`, loopback) and addresses cannot be a node's identity.
        crate::transport::tls::check_node_name(&self.id).map_err(|e| bad("id", e.to_string()))?;
        let listen = self
            .listen
            .parse()
            .map_err(|_| bad("listen", format!("`{}` is not an address like 0.0.0.0:7400", self.listen)))?;
        let mut peers = Vec::new();
        for (i, p) in self.peers.iter().enumerate() {
            let field = format!("peers[{i}]");
            let (id, addr) = p.split_once('@').ok_or_else(|| bad(&field, format!("`{p}` must be id@host:port")))?;
            if !valid_id(id) {
                return Err(bad(&field, format!("peer id `{id}` must be ASCII letters, digits, `-` or `.`")));
            }
            crate::transport::tls::check_node_name(id).map_err(|e| bad(&field, e.to_string()))?;
            if id == self.id {
                return Err(bad(&field, format!("`{id}` is this node itself")));
            }
            if peers.iter().any(|(q, _)| q == id) {
                return Err(bad(&field, format!("peer `{id}` is listed twice")));
            }
            let addr =
                addr.parse().map_err(|_| bad(&field, format!("`{addr}` is not an address like 10.0.0.2:7400")))?;
            peers.push((id.to_string(), addr));
        }
        let advertise: std::net::SocketAddr = match &self.advertise {
            Some(a) => {
                a.parse().map_err(|_| bad("advertise", format!("`{a}` is not an address like 10.0.0.2:7400")))?
            }
            None if listen_is_wildcard(&listen) => {
                return Err(bad("advertise", format!("required because listen `{listen}` is a wildcard address")))
            }
            None => listen,
        };
        let mut voters = Vec::new();
        for (i, v) in self.voters.iter().enumerate() {
            let field = format!("voters[{i}]");
            let addr = if *v == self.id {
                advertise
            } else {
                peers
                    .iter()
                    .find(|(p, _)| p == v)
                    .map(|(_, a)| *a)
                    .ok_or_else(|| bad(&field, format!("voter `{v}` is neither this node nor one of its peers")))?
            };
            if voters.iter().any(|(q, _)| q == v) {
                return Err(bad(&field, format!("voter `{v}` is listed twice")));
            }
            voters.push((v.clone(), addr));
        }
        if self.coordinator_eligible && !self.voters.contains(&self.id) {
            return Err(bad(
                "voters",
                format!("this node is coordinator_eligible, so `{}` must be one of the voters", self.id),
            ));
        }
        let gpu = match &self.gpu {
            GpuSection::Sim { model, count, reconfig_ms } => {
                let model = model.parse().map_err(|e| bad("gpu.model", format!("{e}")))?;
                if *count == 0 {
                    return Err(bad("gpu.count", "a simulated node needs at least one GPU".into()));
                }
                let max = jigsaw_protocol::heartbeat::MAX_GPUS_PER_NODE;
                if *count as usize > max {
                    // The coordinator refuses heartbeats listing more.
                    return Err(bad("gpu.count", format!("a node has at most {max} GPUs, got {count}")));
                }
                GpuBackendConfig::Sim { model, count: *count, reconfig: std::time::Duration::from_millis(*reconfig_ms) }
            }
            GpuSection::Nvml => GpuBackendConfig::Nvml,
        };
        let http = match &self.serve.http {
            Some(a) => {
                Some(a.parse().map_err(|_| bad("serve.http", format!("`{a}` is not an address like 0.0.0.0:8000")))?)
            }
            None => None,
        };
        let grpc = match &self.serve.grpc {
            Some(a) => {
                Some(a.parse().map_err(|_| bad("serve.grpc", format!("`{a}` is not an address like 0.0.0.0:8001")))?)
            }
            None => None,
        };
        use crate::dataplane::worker::ExecutorKind;
        let executor = match (self.serve.executor.as_deref(), &gpu) {
            (None, GpuBackendConfig::Nvml) => ExecutorKind::Cuda,
            (None, GpuBackendConfig::Sim { .. }) => ExecutorKind::Timed,
            (Some(e), _) => e.parse::<ExecutorKind>().map_err(|err| bad("serve.executor", err.to_string()))?,
        };
        let max_in_flight = self.serve.max_in_flight.unwrap_or(4096);
        if max_in_flight == 0 {
            return Err(bad("serve.max_in_flight", "must be at least 1".into()));
        }
        let mut hang = crate::dataplane::worker::HangPolicy::default();
        if let Some(f) = self.serve.batch_timeout_factor {
            if !(f.is_finite() && (1.0..=1000.0).contains(&f)) {
                return Err(bad("serve.batch_timeout_factor", format!("{f} is not between 1 and 1000")));
            }
            hang.factor = f;
        }
        let ms_in = |key: &str, v: Option<u64>, lo: u64, dflt: std::time::Duration| match v {
            None => Ok(dflt),
            Some(ms) if (lo..=3_600_000).contains(&ms) => Ok(std::time::Duration::from_millis(ms)),
            Some(ms) => Err(bad(key, format!("{ms} ms is not between {lo} and 3600000"))),
        };
        hang.min = ms_in("serve.batch_timeout_min_ms", self.serve.batch_timeout_min_ms, 10, hang.min)?;
        hang.start = ms_in("serve.worker_start_timeout_ms", self.serve.worker_start_timeout_ms, 100, hang.start)?;
        let max_connections = self.serve.max_connections.unwrap_or(1024);
        if max_connections == 0 {
            return Err(bad("serve.max_connections", "must be at least 1".into()));
        }
        let idle_timeout = match self.serve.idle_timeout_s {
            None => std::time::Duration::from_secs(30),
            Some(s) if s.is_finite() && s > 0.0 && s <= 86_400.0 => std::time::Duration::from_secs_f64(s),
            Some(s) => {
                return Err(bad("serve.idle_timeout_s", format!("must be a number of seconds in (0, 86400], got {s}")))
            }
        };
        if self.serve.http_tls.is_some() && http.is_none() {
            return Err(bad("serve.http_tls", "needs serve.http (the address to serve HTTPS on)".into()));
        }
        Ok(NodeConfig {
            max_connections,
            idle_timeout,
            tokens: self.serve.tokens.clone(),
            http_tls: self.serve.http_tls.as_ref().map(|t| (t.cert.clone(), t.key.clone())),
            http,
            grpc,
            executor,
            max_in_flight,
            hang,
            in_process_workers: self.serve.in_process_workers,
            id: self.id.clone(),
            listen,
            peers,
            coordinator_eligible: self.coordinator_eligible,
            voters,
            advertise,
            data_dir: self.data_dir.clone(),
            tls: (self.tls.ca.clone(), self.tls.cert.clone(), self.tls.key.clone()),
            tls_deny: self.tls.deny.clone(),
            gpu,
        })
    }
}

/// `[planner]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlannerSection {
    /// Seconds.
    pub time_limit_s: Option<f64>,
    /// Relative gap.
    pub mip_rel_gap: Option<f64>,
    /// Relative gap on the maximum demand.
    pub max_demand_rel_gap: Option<f64>,
    /// HiGHS threads.
    pub threads: Option<u32>,
    /// α.
    pub alpha: Option<f64>,
    /// β.
    pub beta: Option<f64>,
    /// Levels per task.
    pub max_levels: Option<usize>,
    /// Absolute gap in slices at fixed demand.
    pub abs_gap_slices: Option<f64>,
    /// Failure-domain spread: `auto`, `node`, `none`.
    pub spread: Option<String>,
    /// Bonus per kept instance, slices.
    pub keep_weight: Option<f64>,
}

/// A config error naming the file and field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Unreadable file.
    #[error("{path}: {source}")]
    Io {
        /// Path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// Not valid TOML / unknown keys.
    #[error("{path}: {message}")]
    Parse {
        /// Path.
        path: String,
        /// Parser message with line and column.
        message: String,
    },
    /// A value out of range.
    #[error("{path}: {field}: {message}")]
    Value {
        /// Path.
        path: String,
        /// Dotted field, e.g. `planner.mip_rel_gap`.
        field: String,
        /// What is wrong.
        message: String,
    },
}

impl Config {
    /// Read and validate a config file.
    pub fn load(path: &str) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io { path: path.into(), source })?;
        Config::parse(&text, path)
    }

    /// Parse and validate config text.
    pub fn parse(text: &str, path: &str) -> Result<Config, ConfigError> {
        let c: Config =
            toml::from_str(text).map_err(|e| ConfigError::Parse { path: path.into(), message: e.to_string() })?;
        c.planner_config(path)?;
        c.control_config(path)?;
        if let Some(n) = &c.node {
            n.validate(path)?;
        }
        Ok(c)
    }

    /// The control loop's demand settings, with defaults for what is unset.
    pub fn control_config(&self, path: &str) -> Result<ControlConfig, ConfigError> {
        let c = &self.control;
        let d = ControlConfig::default();
        let bad = |field: &str, message: String| ConfigError::Value {
            path: path.into(),
            field: format!("control.{field}"),
            message,
        };
        let secs = |field: &str, v: Option<f64>, dflt_ms: u64| -> Result<u64, ConfigError> {
            match v {
                Some(x) if !(x.is_finite() && (0.0..=86_400.0).contains(&x)) => {
                    Err(bad(field, format!("must be a number of seconds in [0, 86400], got {x}")))
                }
                Some(x) => Ok((x * 1000.0).round() as u64),
                None => Ok(dflt_ms),
            }
        };
        let p = d.policy;
        let policy = ReplanPolicy {
            interval_ms: secs("interval_s", c.interval_s, p.interval_ms)?,
            band_low: c.band_low.unwrap_or(p.band_low),
            band_high: c.band_high.unwrap_or(p.band_high),
            step_margin: c.step_margin.unwrap_or(p.step_margin),
            slo_violation_rate: c.slo_violation_rate.unwrap_or(p.slo_violation_rate),
            min_completions: c.min_completions.unwrap_or(p.min_completions),
            slo_max_headroom: c.slo_max_headroom.unwrap_or(p.slo_max_headroom),
            min_interval_ms: secs("min_replan_interval_s", c.min_replan_interval_s, p.min_interval_ms)?,
            warmup_intervals: c.warmup_intervals.unwrap_or(p.warmup_intervals),
        };
        policy.validate().map_err(|e| bad(e.knob, e.message))?;
        Ok(ControlConfig {
            follow_demand: c.follow_demand.unwrap_or(d.follow_demand),
            forecaster: match &c.forecaster {
                Some(f) => f.parse().map_err(|m| bad("forecaster", m))?,
                None => d.forecaster,
            },
            policy,
            ..d
        })
    }

    /// The planner settings, with defaults for what is unset.
    pub fn planner_config(&self, path: &str) -> Result<PlannerConfig, ConfigError> {
        let p = &self.planner;
        let d = PlannerConfig::default();
        let bad = |field: &str, message: String| ConfigError::Value {
            path: path.into(),
            field: format!("planner.{field}"),
            message,
        };
        let pos = |field, v: Option<f64>, dflt: f64| -> Result<f64, ConfigError> {
            match v {
                Some(x) if !(x.is_finite() && x > 0.0) => {
                    Err(bad(field, format!("must be a positive number, got {x}")))
                }
                Some(x) => Ok(x),
                None => Ok(dflt),
            }
        };
        let mip_rel_gap = pos("mip_rel_gap", p.mip_rel_gap, d.mip_rel_gap)?;
        if mip_rel_gap >= 1.0 {
            return Err(bad("mip_rel_gap", format!("must be below 1, got {mip_rel_gap}")));
        }
        let max_demand_rel_gap = pos("max_demand_rel_gap", p.max_demand_rel_gap, d.max_demand_rel_gap)?;
        if max_demand_rel_gap >= 1.0 {
            return Err(bad("max_demand_rel_gap", format!("must be below 1, got {max_demand_rel_gap}")));
        }
        if p.threads == Some(0) {
            return Err(bad("threads", "must be at least 1 (omit it for HiGHS's default)".into()));
        }
        let max_levels = p.max_levels.unwrap_or(d.max_levels);
        if max_levels < 2 {
            return Err(bad("max_levels", format!("must be at least 2, got {max_levels}")));
        }
        Ok(PlannerConfig {
            time_limit_s: pos("time_limit_s", p.time_limit_s, d.time_limit_s)?,
            mip_rel_gap,
            max_demand_rel_gap,
            alpha: pos("alpha", p.alpha, d.alpha)?,
            beta: match p.beta {
                Some(b) => Some(pos("beta", Some(b), 0.0)?),
                None => None,
            },
            max_levels,
            abs_gap_slices: match p.abs_gap_slices {
                Some(x) if !(x.is_finite() && x >= 0.0) => {
                    return Err(bad("abs_gap_slices", format!("must be a number >= 0, got {x}")))
                }
                Some(x) => x,
                None => d.abs_gap_slices,
            },
            spread: match &p.spread {
                Some(x) => x.parse().map_err(|m| bad("spread", m))?,
                None => d.spread,
            },
            keep_weight_slices: match p.keep_weight {
                Some(x) if !(x.is_finite() && (0.0..1.0).contains(&x)) => {
                    return Err(bad("keep_weight", format!("must be a number in [0, 1), got {x}")))
                }
                Some(x) => x,
                None => d.keep_weight_slices,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn defaults_and_errors() {
        let c = Config::parse("", "c.toml").expect("empty is fine");
        assert_eq!(c.planner_config("c.toml").expect("valid"), PlannerConfig::default());
        let e = Config::parse("[planner]\ntime_limit_s = -1\n", "c.toml").unwrap_err();
        assert!(e.to_string().contains("planner.time_limit_s"), "{e}");
        let e = Config::parse("[planner]\ntime_limt_s = 1\n", "c.toml").unwrap_err();
        assert!(e.to_string().contains("time_limt_s"), "{e}");
        let e = Config::parse("[planner]\nspread = \"rack\"\n", "c.toml").unwrap_err();
        assert!(e.to_string().contains("planner.spread") && e.to_string().contains("`node`"), "{e}");
        let e = Config::parse("[planner]\nkeep_weight = 1.5\n", "c.toml").unwrap_err();
        assert!(e.to_string().contains("planner.keep_weight"), "{e}");
        let e = Config::parse("[planner]\nthreads = 0\n", "c.toml").unwrap_err();
        assert!(e.to_string().contains("planner.threads"), "{e}");
    }

    #[test]
    fn control_section_defaults_and_errors_name_the_key() {
        let c = Config::parse("", "c.toml").expect("empty is fine");
        assert_eq!(c.control_config("c.toml").expect("valid"), ControlConfig::default());
        let c = Config::parse(
            "[control]\nforecaster = \"paper\"\ninterval_s = 5\nmin_replan_interval_s = 30\nfollow_demand = false\n",
            "c.toml",
        )
        .expect("valid");
        let k = c.control_config("c.toml").expect("valid");
        assert_eq!((k.policy.interval_ms, k.policy.min_interval_ms, k.follow_demand), (5_000, 30_000, false));
        assert_eq!(k.forecaster, jigsaw_coordinator::forecast::ForecasterKind::Paper);
        for (text, key) in [
            ("forecaster = \"arima\"", "control.forecaster"),
            ("interval_s = 0.1", "control.interval_s"),
            ("interval_s = -1", "control.interval_s"),
            ("band_low = 0.95", "control.band_low"),
            ("band_high = 0.5", "control.band_high"),
            ("slo_violation_rate = 0", "control.slo_violation_rate"),
            ("min_replan_interval_s = 1e9", "control.min_replan_interval_s"),
            ("step_margin = 2", "control.step_margin"),
            ("slo_max_headroom = -1", "control.slo_max_headroom"),
        ] {
            let e = Config::parse(&format!("[control]\n{text}\n"), "c.toml").expect_err(text);
            assert!(e.to_string().contains(key) && e.to_string().contains("c.toml"), "{text}: {e}");
        }
        let e = Config::parse("[control]\nband = 1\n", "c.toml").expect_err("unknown key");
        assert!(e.to_string().contains("band"), "{e}");
    }

    const NODE: &str = r#"
[node]
id = "node-1"
listen = "127.0.0.1:7400"
peers = ["node-2@127.0.0.1:7401"]
coordinator_eligible = true
voters = ["node-1", "node-2"]
data_dir = "/tmp/j"
tls = { ca = "ca.pem", cert = "n.pem", key = "n.key" }
gpu = { backend = "sim", model = "h100-80gb", count = 4, reconfig_ms = 250 }
"#;

    #[test]
    fn shipped_example_config_is_valid() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/jigsaw.toml");
        let c = Config::load(path).expect("deploy/jigsaw.toml parses");
        c.planner_config(path).expect("valid planner section");
        assert_eq!(c.control_config(path).expect("valid control section"), ControlConfig::default());
        // Its commented [node] example is valid too once uncommented.
        let text = std::fs::read_to_string(path).expect("read");
        let node: String = text
            .lines()
            .skip_while(|l| !l.starts_with("# [node]"))
            .map(|l| l.strip_prefix("# ").unwrap_or(l))
            .collect::<Vec<_>>()
            .join("\n");
        let n = Config::parse(&node, path).expect("node example parses");
        let v = n.node.expect("node section").validate(path).expect("node example validates");
        assert_eq!((v.http.map(|a| a.port()), v.max_in_flight), (Some(8000), 4096));
    }

    #[test]
    fn serve_section_defaults_and_errors_name_the_key() {
        let ok = |extra: &str| {
            Config::parse(&format!("{NODE}serve = {{ {extra} }}\n"), "n.toml").expect("parses").node.expect("node")
        };
        let n = Config::parse(NODE, "n.toml").expect("valid").node.expect("node").validate("n.toml").expect("valid");
        assert_eq!((n.http, n.executor, n.max_in_flight), (None, crate::dataplane::worker::ExecutorKind::Timed, 4096));
        let n = ok(r#"http = "0.0.0.0:8000", executor = "cpu""#).validate("n.toml").expect("valid");
        assert_eq!(n.executor, crate::dataplane::worker::ExecutorKind::Cpu);
        assert_eq!(n.hang, crate::dataplane::worker::HangPolicy::default());
        let n = ok("batch_timeout_factor = 4.0, batch_timeout_min_ms = 250, worker_start_timeout_ms = 9000")
            .validate("n.toml")
            .expect("valid");
        let ms = std::time::Duration::from_millis;
        assert_eq!((n.hang.factor, n.hang.min, n.hang.start), (4.0, ms(250), ms(9000)));
        assert_eq!(
            (n.max_connections, n.idle_timeout, n.tokens, n.http_tls),
            (1024, Duration::from_secs(30), None, None)
        );
        let all = r#"http = "0.0.0.0:8000", max_connections = 8, idle_timeout_s = 2.5, tokens = "/t", http_tls = { cert = "c.pem", key = "k.pem" }"#;
        let n = ok(all).validate("n.toml").expect("valid");
        assert_eq!((n.max_connections, n.idle_timeout), (8, Duration::from_millis(2500)));
        assert_eq!(n.tokens.as_deref(), Some(std::path::Path::new("/t")));
        assert_eq!(n.http_tls, Some(("c.pem".into(), "k.pem".into())));
        let e = Config::parse(&format!("{NODE}serve = {{ http_tls = {{ cert = \"c\", crt = \"k\" }} }}\n"), "n.toml")
            .expect_err("unknown key");
        assert!(e.to_string().contains("crt"), "{e}");
        for (extra, field) in [
            (r#"http = "nowhere""#, "node.serve.http"),
            (r#"executor = "tpu""#, "node.serve.executor"),
            ("max_in_flight = 0", "node.serve.max_in_flight"),
            ("batch_timeout_factor = 0.5", "node.serve.batch_timeout_factor"),
            ("batch_timeout_min_ms = 0", "node.serve.batch_timeout_min_ms"),
            ("worker_start_timeout_ms = 99999999", "node.serve.worker_start_timeout_ms"),
            ("max_connections = 0", "node.serve.max_connections"),
            ("idle_timeout_s = 0", "node.serve.idle_timeout_s"),
            ("idle_timeout_s = -1.5", "node.serve.idle_timeout_s"),
            (r#"http_tls = { cert = "c.pem", key = "k.pem" }"#, "node.serve.http_tls"),
        ] {
            let e = Config::parse(&format!("{NODE}serve = {{ {extra} }}\n"), "n.toml").expect_err(extra).to_string();
            assert!(e.contains(field) && e.contains("n.toml"), "{e}");
        }
        let e = Config::parse(&format!("{NODE}serve = {{ htp = \"x\" }}\n"), "n.toml").expect_err("unknown key");
        assert!(e.to_string().contains("htp"), "{e}");
    }

    #[test]
    fn node_section_validates() {
        let c = Config::parse(NODE, "n.toml").expect("valid");
        let n = c.node.expect("node").validate("n.toml").expect("valid");
        assert_eq!(n.peers[0].0, "node-2");
        assert_eq!(n.voters.len(), 2);
        assert_eq!(n.advertise, n.listen);
        assert!(matches!(n.gpu, GpuBackendConfig::Sim { count: 4, .. }));
        let nvml = NODE.replace(
            r#"{ backend = "sim", model = "h100-80gb", count = 4, reconfig_ms = 250 }"#,
            r#"{ backend = "nvml" }"#,
        );
        assert!(Config::parse(&nvml, "n.toml").is_ok());
    }

    #[test]
    fn node_errors_name_the_field() {
        let cases = [
            (NODE.replace("\"node-1\"", "\"bad id!\""), "node.id"),
            (NODE.replace("127.0.0.1:7400", "nowhere"), "node.listen"),
            (NODE.replace("node-2@127.0.0.1:7401", "node-2"), "node.peers[0]"),
            (NODE.replace("node-2@127.0.0.1:7401", "node-1@127.0.0.1:7401"), "node.peers[0]"),
            (NODE.replace("h100-80gb", "v100"), "node.gpu.model"),
            (NODE.replace("count = 4", "count = 0"), "node.gpu.count"),
            (NODE.replace("count = 4", "count = 10000"), "node.gpu.count"),
            (NODE.replace("backend = \"sim\"", "backend = \"cuda\""), "cuda"),
            (NODE.replace("coordinator_eligible", "coordinator_elegible"), "coordinator_elegible"),
            (NODE.replace(r#"["node-1", "node-2"]"#, r#"["node-1", "node-3"]"#), "node.voters[1]"),
            (NODE.replace(r#"["node-1", "node-2"]"#, r#"["node-2"]"#), "node.voters"),
            (NODE.replace("127.0.0.1:7400", "0.0.0.0:7400"), "node.advertise"),
            // Reserved names and addresses are never node identities.
            (NODE.replace("id = \"node-1\"", "id = \"admin\""), "node.id"),
            (NODE.replace("id = \"node-1\"", "id = \"localhost\""), "node.id"),
            (NODE.replace("id = \"node-1\"", "id = \"127.0.0.1\""), "node.id"),
            (NODE.replace("node-2@127.0.0.1:7401", "ca@127.0.0.1:7401"), "node.peers[0]"),
        ];
        for (text, needle) in cases {
            let e = Config::parse(&text, "n.toml").unwrap_err().to_string();
            assert!(e.starts_with("n.toml") && e.contains(needle), "{needle}: {e}");
        }
    }
}
