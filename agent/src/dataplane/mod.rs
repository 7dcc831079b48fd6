//! The data plane: requests flow through an application's task graph.
//!
//! * [`crate::core::batch`]: per-task batching, admission at root tasks and early dropping on a
//!   caller-supplied clock.
//! * [`plane`]: the node's frontend (routing, fan-out and join) and its local instances.
//! * [`pool`]: one instance's batching queue and the MPS replicas pulling from it.
//! * [`worker`]: worker processes and their in-process twin, with the executors.
//! * [`http`]: the KServe v2 HTTP API over [`Inference`]; [`grpc`]: the same over gRPC;
//!   [`auth`]: their optional bearer tokens.
//! * [`Inference`]: what the HTTP inference API asks of a node's data plane. The HTTP layer
//!   maps [`ServeError`] to status codes; the data plane never sees HTTP.

pub mod auth;
pub mod grpc;
pub mod http;
pub mod plane;
pub mod pool;
pub mod worker;

use crate::core::batch::DropReason;
use crate::transport::net::BoxFuture;
use jigsaw_protocol::infer::{InferError, InferRequest, InferResponse};
use std::time::Duration;

/// One tensor of an application's signature (`GET /v2/models/{app}`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TensorMeta {
    /// Tensor name.
    pub name: String,
    /// v2 datatype (`FP32`).
    pub datatype: String,
    /// Shape; `-1` marks a variable dimension.
    pub shape: Vec<i64>,
}

/// What `GET /v2/models/{app}` returns about an application.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AppMeta {
    /// Application name.
    pub name: String,
    /// The plan epoch this node routes with (as the single "version").
    pub versions: Vec<String>,
    /// Platform string (`jigsaw`).
    pub platform: String,
    /// Inputs of the graph's first task.
    pub inputs: Vec<TensorMeta>,
    /// Outputs: one per sink task.
    pub outputs: Vec<TensorMeta>,
    /// End-to-end latency SLO, ms (the default deadline).
    pub latency_slo_ms: f64,
}

/// Why a request did not produce an answer. Each variant says what the client should do.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ServeError {
    /// No such application is routable here (404): check the name.
    #[error("unknown application {0:?}")]
    UnknownApp(String),
    /// The request is malformed (400): fix it.
    #[error("{0}")]
    BadInput(InferError),
    /// Too many requests in flight on this frontend (429): back off and retry.
    #[error("overloaded: {0}")]
    Overloaded(String),
    /// No plan or no instance can serve a task right now (503): retry later or elsewhere.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A task dropped the request (503): early (it could not meet its deadline) or over
    /// capacity (`stale_drop`: a root task's instance had already admitted its share of the
    /// app's planned capacity, so the request was shed before any work). `weight` items of
    /// the fan-out were lost.
    #[error("{reason} drop at task {task:?} ({weight} item(s))")]
    Dropped {
        /// Task that dropped it.
        task: String,
        /// `Early` or `OverCapacity` (`stale_drop`).
        reason: DropReason,
        /// Fan-out items lost.
        weight: u32,
    },
    /// The deadline passed before the answer was complete (504).
    #[error("deadline exceeded at task {task:?}")]
    DeadlineExceeded {
        /// Task still running when the deadline passed.
        task: String,
    },
    /// A worker or transport failed (500); retrying may succeed.
    #[error("failed: {0}")]
    Failed(String),
}

impl ServeError {
    /// The `outcome` field of the JSON error body: `early_drop`, `stale_drop`,
    /// `deadline_miss`, `overloaded`, `unavailable`, `bad_request`, `unknown_app`, `error`.
    pub fn outcome(&self) -> &'static str {
        match self {
            ServeError::UnknownApp(_) => "unknown_app",
            ServeError::BadInput(_) => "bad_request",
            ServeError::Overloaded(_) => "overloaded",
            ServeError::Unavailable(_) => "unavailable",
            ServeError::Dropped { reason: DropReason::Early, .. } => "early_drop",
            ServeError::Dropped { reason: DropReason::OverCapacity, .. } => "stale_drop",
            ServeError::DeadlineExceeded { .. } => "deadline_miss",
            ServeError::Failed(_) => "error",
        }
    }

    /// HTTP status for this error.
    pub fn status(&self) -> u16 {
        match self {
            ServeError::UnknownApp(_) => 404,
            ServeError::BadInput(_) => 400,
            ServeError::Overloaded(_) => 429,
            ServeError::Unavailable(_) | ServeError::Dropped { .. } => 503,
            ServeError::DeadlineExceeded { .. } => 504,
            ServeError::Failed(_) => 500,
        }
    }

    /// Fan-out items the failure covers (1 unless a drop says more).
    pub fn weight(&self) -> u32 {
        match self {
            ServeError::Dropped { weight, .. } => (*weight).max(1),
            _ => 1,
        }
    }
}

/// What the HTTP inference API asks of a node's data plane.
pub trait Inference: Send + Sync + 'static {
    /// Whether this node can route requests (it holds a routing table).
    fn ready(&self) -> bool;
    /// Applications this node can route, by name.
    fn apps(&self) -> Vec<String>;
    /// Metadata of `app`, if this node can route it.
    fn app(&self, app: &str) -> Option<AppMeta>;
    /// Run one request through `app`'s graph. `deadline` is relative to now; `None` means
    /// the app's latency SLO. Must return by the deadline (plus transport slack): the
    /// implementation enforces it, but the HTTP layer also bounds the wait.
    fn infer(
        &self,
        app: &str,
        req: InferRequest,
        deadline: Option<Duration>,
    ) -> BoxFuture<Result<InferResponse, ServeError>>;
    /// The node's metrics as OpenMetrics text for `GET /metrics` (`None`: this service
    /// exports none, the route answers 404).
    fn metrics(&self) -> Option<String> {
        None
    }
    /// The cluster status page for `GET /status` (`None`: no status known now, e.g. no
    /// coordinator reachable; the route answers 503).
    fn status_page(&self) -> BoxFuture<Option<String>> {
        Box::pin(std::future::ready(None))
    }
}
