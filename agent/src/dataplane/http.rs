//! The inference API over HTTP/1.1: the KServe Open Inference Protocol v2, so existing v2
//! clients work, served with axum in front of any [`Inference`] implementation.
//!
//! Every agent is a frontend: it answers for every application its routing table knows.
//!
//! | Method | Path | Answers |
//! |---|---|---|
//! | GET | `/v2/health/live` | 200 always |
//! | GET | `/v2/health/ready` | 200 if the node can route ([`Inference::ready`]), else 503 |
//! | GET | `/v2` | 200 server metadata: `{"name": "jigsaw", "version", "extensions": ["binary_tensor_data"]}` |
//! | GET | `/v2/models/{app}[/versions/{v}]` | 200 model metadata ([`AppMeta`]), 404 if unknown |
//! | GET | `/v2/models/{app}[/versions/{v}]/ready` | 200, 404 if unknown, 503 if the node cannot route |
//! | POST | `/v2/models/{app}[/versions/{v}]/infer` | 200 [`InferResponse`] (JSON, or with the binary data extension: a JSON header of `Inference-Header-Content-Length` bytes and then the raw outputs), or an error below |
//! | GET | `/status` | 200 the cluster status page (HTML with an SVG map of every GPU's MIG slots, [`crate::status_page`]); 503 when no coordinator is reachable |
//! | GET | `/metrics` | 200 the node's Prometheus metrics (OpenMetrics text, `docs/metrics.md`); 404 if the service exports none |
//!
//! Bearer tokens (optional, [`HttpSecurity::tokens`], [`super::auth`]): when a token file is
//! configured, every path except `/v2/health/live`, `/v2/health/ready` and `/v2` (which say
//! only whether the node is up and what it is) needs `authorization: Bearer <token>`;
//! without one, or with a token not in the file, the answer is 401 with
//! `WWW-Authenticate: Bearer realm="jigsaw"` (plus `error="invalid_token"` for a wrong one)
//! and outcome `unauthorized`. This covers inference, model metadata and readiness,
//! `/metrics` and `/status`. The token is checked before the body is read.
//!
//! TLS (optional, [`HttpSecurity::tls`]): the same API over HTTPS on the same port; a plain
//! HTTP request to it fails its TLS handshake and is closed. A handshake must finish within
//! [`HttpLimits::header_read_timeout`].
//!
//! Connections and memory:
//!
//! * At most [`HttpLimits::max_connections`] connections are open at once; one more is
//!   answered `503` (`Retry-After: 1`; over TLS just closed) and closed at once, health
//!   probes included.
//! * A connection waiting for a request header (a new one, or a keep-alive one between
//!   requests: hyper starts that timer as soon as it waits) is closed after
//!   [`HttpLimits::header_read_timeout`]. One on which no byte moves for
//!   [`HttpLimits::idle_timeout`] while the server is not working on its request (waiting
//!   for body memory, parsing, computing) is closed too: a stalled body, a client that stops
//!   reading its answer.
//! * A body over [`SMALL_BODY`] bytes first reserves room for itself and for what it decodes
//!   to ([`DECODE_FACTOR`] times its length) from [`HttpLimits::body_memory_bytes`], waiting
//!   (within its deadline) while other large bodies hold it; it is then read, parsed on the
//!   blocking thread pool (never on the runtime's workers), and its decoded tensors keep
//!   their share until the answer. While it holds its reservation the body must arrive at
//!   [`MIN_BODY_RATE`] on average after [`BODY_RATE_GRACE`] (else 408), so a trickling
//!   client holds the shared memory for seconds, not until its deadline. The decoded
//!   tensors may take at most the reservation less the body (smaller bodies:
//!   [`DECODE_FACTOR`] − 1 times [`SMALL_BODY`]), charged from the declared shapes before
//!   anything is allocated ([`parse_infer_request_bounded`]).
//! * The admission slot ([`HttpLimits::max_in_flight`]) is taken once the body is read and
//!   parsed, so a client trickling its body holds no slot.
//!
//! The version segment is accepted and ignored: the version is the plan epoch, which changes
//! whenever the coordinator re-plans, and a client should not fail across a re-plan.
//!
//! Every error body is JSON, `{"error": "<message>", "outcome": "<outcome>", "weight": n}`,
//! where `outcome` is [`ServeError::outcome`] (or `not_found` for an unknown path) and
//! `weight` the fan-out items the failure covers ([`ServeError::weight`]):
//!
//! | Status | `outcome` | When |
//! |---|---|---|
//! | 400 | `bad_request` | malformed body (the message names the field: `inputs[0].datatype: ...`), more elements than the shape, decoded tensors over the memory bound, or a bad [`DEADLINE_HEADER`] |
//! | 401 | `unauthorized` | no or a wrong bearer token where tokens are configured (with `WWW-Authenticate`) |
//! | 404 | `unknown_app` | no such application is routable here |
//! | 404 | `not_found` | no such path |
//! | 405 | `bad_request` | wrong method for the path (with `Allow`) |
//! | 408 | `bad_request` | a body over [`SMALL_BODY`] arriving slower than [`MIN_BODY_RATE`] |
//! | 413 | `bad_request` | body larger than [`HttpLimits::max_body_bytes`] |
//! | 429 | `overloaded` | [`HttpLimits::max_in_flight`] infer calls already running here once this one's body is read (with `Retry-After: 1`); never queued |
//! | 500 | `error` | a worker or the transport failed |
//! | 503 | `unavailable` | not ready, no plan or no instance (with `Retry-After: 1`) |
//! | 503 | `early_drop`, `stale_drop` | a task dropped the request; `weight` items of its fan-out were lost (with `Retry-After: 1`) |
//! | 504 | `deadline_miss` | no answer by the deadline plus [`HttpLimits::grace`] |
//!
//! Deadlines: the optional request header [`DEADLINE_HEADER`] (`x-jigsaw-deadline-ms`, a
//! positive integer of milliseconds up to [`MAX_DEADLINE_MS`], relative to arrival) is passed
//! to [`Inference::infer`]; without it the app's latency SLO applies. Whatever the service
//! does, the HTTP layer answers 504 once the deadline plus [`HttpLimits::grace`] has passed
//! (reading the body, and waiting for memory to read it into, count against it), so no
//! request hangs.

use super::auth::{self, TokenFile};
use super::{AppMeta, Inference, ServeError};
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http_body_util::BodyExt;
use jigsaw_protocol::infer::{
    encode_infer_response, parse_infer_request_bounded, BinaryOutputs, InferError, InferRequest, InferResponse,
    TensorData, BINARY_HEADER,
};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The request header carrying a relative deadline in milliseconds.
pub const DEADLINE_HEADER: &str = "x-jigsaw-deadline-ms";

/// Largest deadline accepted in [`DEADLINE_HEADER`], ms (10 minutes).
pub const MAX_DEADLINE_MS: u64 = 600_000;

/// Limits protecting a frontend from its clients.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpLimits {
    /// Largest request body accepted, bytes (larger: 413).
    pub max_body_bytes: usize,
    /// Infer calls running at once on this frontend; one more is refused with 429.
    pub max_in_flight: usize,
    /// Slack past the deadline before the HTTP layer gives up on the service (504).
    pub grace: Duration,
    /// A connection that has not sent a whole request header this long after it started
    /// waiting for one is closed (slow-header "slowloris" clients hold no connection slot
    /// for long; nor do idle keep-alive connections).
    pub header_read_timeout: Duration,
    /// Connections open at once; one more is refused (503) and closed.
    pub max_connections: usize,
    /// A connection on which no byte moves this long, while the server is not working on
    /// its request (waiting for body memory, parsing, computing), is closed.
    pub idle_timeout: Duration,
    /// Memory for bodies over [`SMALL_BODY`] and their decoded tensors, bytes, across all
    /// requests; a large body waits for its share before it is read.
    pub body_memory_bytes: usize,
}

impl Default for HttpLimits {
    /// 32 MiB bodies (a 3×224×224 FP32 image as JSON is about 2 MB), 1024 in flight,
    /// 250 ms grace, 10 s to send a request header, 1024 connections, 30 s idle, 128 MiB
    /// for large bodies.
    fn default() -> Self {
        HttpLimits {
            max_body_bytes: 32 << 20,
            max_in_flight: 1024,
            grace: Duration::from_millis(250),
            header_read_timeout: Duration::from_secs(10),
            max_connections: 1024,
            idle_timeout: Duration::from_secs(30),
            body_memory_bytes: 128 << 20,
        }
    }
}

/// Bodies up to this many bytes are read and parsed without a memory reservation, on the
/// runtime's thread (parsing them takes microseconds; their memory is bounded by
/// [`HttpLimits::max_connections`]).
pub const SMALL_BODY: usize = 64 * 1024;

/// A body holding a memory reservation must arrive at this many bytes per second on average
/// (after [`BODY_RATE_GRACE`]), or it is answered 408: a client trickling a large body holds
/// the shared body memory for seconds, not until its deadline.
pub const MIN_BODY_RATE: usize = 1 << 20;

/// How long a large body may take before [`MIN_BODY_RATE`] applies.
pub const BODY_RATE_GRACE: Duration = Duration::from_secs(2);

/// A large body reserves this many times its length: itself, and up to 4 bytes of decoded
/// tensor per byte of JSON (`0,` is two bytes and an `INT64` element eight).
pub const DECODE_FACTOR: usize = 5;

/// Who may call the API and how connections are secured.
#[derive(Debug, Clone, Default)]
pub struct HttpSecurity {
    /// Bearer tokens (`None`: no authentication).
    pub tokens: Option<Arc<TokenFile>>,
    /// TLS (`None`: plain HTTP).
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// An error answer: its status and the fields of its JSON body.
#[derive(Debug, Clone)]
struct ApiError {
    status: StatusCode,
    message: String,
    outcome: &'static str,
    weight: u32,
}

impl ApiError {
    fn new(status: StatusCode, outcome: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into(), outcome, weight: 1 }
    }
}

impl From<ServeError> for ApiError {
    fn from(e: ServeError) -> ApiError {
        ApiError {
            status: StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            message: e.to_string(),
            outcome: e.outcome(),
            weight: e.weight(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.message, "outcome": self.outcome, "weight": self.weight });
        let mut resp = (self.status, Json(body)).into_response();
        if matches!(self.status, StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE) {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

fn bad_input(field: &str, message: impl Into<String>) -> ApiError {
    ServeError::BadInput(InferError { field: field.into(), message: message.into() }).into()
}

fn unknown_app(app: &str) -> ApiError {
    ServeError::UnknownApp(app.to_string()).into()
}

/// Shared state of the handlers.
struct Api {
    svc: Arc<dyn Inference>,
    limits: HttpLimits,
    in_flight: Arc<Semaphore>,
    /// [`HttpLimits::body_memory_bytes`] as permits (one per byte).
    memory: Arc<Semaphore>,
    memory_total: usize,
    tokens: Option<Arc<TokenFile>>,
}

type St = State<Arc<Api>>;

/// The v2 API's routes over `svc` (see the module docs for paths and status codes), without
/// authentication.
pub fn router(svc: Arc<dyn Inference>, limits: HttpLimits) -> Router {
    router_with(svc, limits, None)
}

/// The v2 API's routes over `svc`; with `tokens`, every route but the health probes and
/// `/v2` needs a bearer token from the file.
pub fn router_with(svc: Arc<dyn Inference>, limits: HttpLimits, tokens: Option<Arc<TokenFile>>) -> Router {
    let in_flight = Arc::new(Semaphore::new(limits.max_in_flight.min(Semaphore::MAX_PERMITS)));
    let memory_total = limits.body_memory_bytes.clamp(1, (u32::MAX as usize).min(Semaphore::MAX_PERMITS));
    let memory = Arc::new(Semaphore::new(memory_total));
    let api = Arc::new(Api { svc, limits, in_flight, memory, memory_total, tokens });
    let open = Router::new()
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2", get(server_metadata));
    let protected = Router::new()
        .route("/v2/models/{app}", get(model_metadata))
        .route("/v2/models/{app}/versions/{version}", get(model_metadata_version))
        .route("/v2/models/{app}/ready", get(model_ready))
        .route("/v2/models/{app}/versions/{version}/ready", get(model_ready_version))
        .route("/v2/models/{app}/infer", post(infer))
        .route("/v2/models/{app}/versions/{version}/infer", post(infer_version))
        .route("/metrics", get(metrics))
        .route("/status", get(status_page))
        .route_layer(axum::middleware::from_fn_with_state(api.clone(), require_token));
    open.merge(protected)
        // After the routes: it applies to the routes present.
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .with_state(api)
}

/// Serve the v2 API on `listener` until `shutdown` completes, then finish the requests in
/// flight (each bounded by its deadline plus grace) and return. Plain HTTP, no tokens.
pub async fn serve(
    listener: tokio::net::TcpListener,
    svc: Arc<dyn Inference>,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, svc, limits, HttpSecurity::default(), shutdown).await
}

/// The TLS server config of the HTTP API: the certificate chain `cert` and key `key` (PEM),
/// TLS 1.2 and 1.3, ring, no client certificates, ALPN `http/1.1`. Errors name the file.
pub fn tls_config(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<Arc<rustls::ServerConfig>, crate::transport::tls::TlsError> {
    use crate::transport::tls::TlsError;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let pem = |path: &std::path::Path| {
        let path = path.to_path_buf();
        move |e: rustls::pki_types::pem::Error| TlsError::Pem { path, message: e.to_string() }
    };
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(cert).map_err(pem(cert))?.collect::<Result<_, _>>().map_err(pem(cert))?;
    if chain.is_empty() {
        return Err(TlsError::Pem { path: cert.to_path_buf(), message: "no certificate in file".into() });
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(pem(key))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| TlsError::Config(format!("{} with {}: {e}", cert.display(), key.display())))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// What a connection over the cap gets before it is closed.
fn refused() -> Vec<u8> {
    let body = r#"{"error":"too many open connections on this frontend","outcome":"overloaded","weight":1}"#;
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// [`serve`] with bearer tokens and TLS as `security` says.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    svc: Arc<dyn Inference>,
    limits: HttpLimits,
    security: HttpSecurity,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // hyper directly rather than `axum::serve`, which sets no header-read timeout.
    let (header_timeout, idle_timeout) = (limits.header_read_timeout, limits.idle_timeout);
    let connections = Arc::new(Semaphore::new(limits.max_connections.clamp(1, Semaphore::MAX_PERMITS)));
    let app = router_with(svc, limits, security.tokens.clone());
    let tls = security.tls.map(tokio_rustls::TlsAcceptor::from);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((s, _)) => s,
                    Err(e) => {
                        // Out of file descriptors and the like: back off, keep serving.
                        tracing::warn!(%e, "accepting an HTTP connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(slot) = connections.clone().try_acquire_owned() else {
                    // Over the cap: say so if it costs nothing (never blocks), then close.
                    if tls.is_none() {
                        let _ = stream.try_write(&refused());
                    }
                    tracing::debug!("HTTP connection refused: max_connections reached");
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let (app, tls, watcher) = (app.clone(), tls.clone(), graceful.watcher());
                tokio::spawn(async move {
                    let _slot = slot;
                    let activity = Arc::new(Activity::new());
                    let io = Tracked { inner: stream, activity: activity.clone() };
                    match tls {
                        None => serve_connection(io, app, activity, header_timeout, idle_timeout, watcher).await,
                        Some(acceptor) => match tokio::time::timeout(header_timeout, acceptor.accept(io)).await {
                            Ok(Ok(io)) => serve_connection(io, app, activity, header_timeout, idle_timeout, watcher).await,
                            Ok(Err(e)) => tracing::debug!(%e, "TLS handshake failed"),
                            Err(_) => tracing::debug!("TLS handshake timed out"),
                        },
                    }
                });
            }
            _ = &mut shutdown => break,
        }
    }
    // No new connections; idle ones close, requests in flight are answered.
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Serve one connection until it ends, or until no byte has moved on it for `idle` while
/// no request on it is being computed.
async fn serve_connection<S>(
    io: S,
    app: Router,
    activity: Arc<Activity>,
    header_timeout: Duration,
    idle: Duration,
    watcher: hyper_util::server::graceful::Watcher,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let inner = hyper_util::service::TowerToHyperService::new(app);
    let tag = ConnActivity(activity.clone());
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(tag.clone());
        hyper::service::Service::call(&inner, req)
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(hyper_util::rt::TokioIo::new(io), svc);
    let mut conn = std::pin::pin!(watcher.watch(conn));
    loop {
        let quiet = activity.quiet_for();
        let wait = if activity.busy() { idle } else { idle.saturating_sub(quiet) };
        tokio::select! {
            r = &mut conn => {
                if let Err(e) = r {
                    tracing::debug!(%e, "HTTP connection ended with an error");
                }
                return;
            }
            _ = tokio::time::sleep(wait.max(Duration::from_millis(1))) => {
                if !activity.busy() && activity.quiet_for() >= idle {
                    tracing::debug!(idle_ms = idle.as_millis() as u64, "HTTP connection closed: idle");
                    return;
                }
            }
        }
    }
}

/// When a connection last moved a byte, and how many of its requests are being computed.
#[derive(Debug)]
struct Activity {
    start: Instant,
    /// Milliseconds after `start` of the last byte read or written.
    last_ms: AtomicU64,
    computing: AtomicUsize,
}

impl Activity {
    fn new() -> Activity {
        Activity { start: Instant::now(), last_ms: AtomicU64::new(0), computing: AtomicUsize::new(0) }
    }
    fn touch(&self) {
        self.last_ms.store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
    fn quiet_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }
    fn busy(&self) -> bool {
        self.computing.load(Ordering::Relaxed) > 0
    }
}

/// A request extension: its connection's [`Activity`].
#[derive(Debug, Clone)]
struct ConnActivity(Arc<Activity>);

/// Marks a request as being computed (its body is in) while alive.
struct Computing(Arc<Activity>);

impl Computing {
    fn new(a: &Arc<Activity>) -> Computing {
        a.computing.fetch_add(1, Ordering::Relaxed);
        Computing(a.clone())
    }
}

impl Drop for Computing {
    fn drop(&mut self) {
        self.0.touch();
        self.0.computing.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A transport that records when bytes move on it.
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The bearer-token check in front of the protected routes (before any body is read).
async fn require_token(State(api): St, req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let Some(tokens) = &api.tokens else { return next.run(req).await };
    match auth::check(tokens, req.headers().get(header::AUTHORIZATION).map(HeaderValue::as_bytes)) {
        Ok(_name) => next.run(req).await,
        Err(denied) => {
            let challenge = match denied {
                auth::Denied::Missing => "Bearer realm=\"jigsaw\"",
                auth::Denied::Invalid => "Bearer realm=\"jigsaw\", error=\"invalid_token\"",
            };
            let mut r = ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", denied.message()).into_response();
            r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
            r
        }
    }
}

async fn metrics(State(api): St) -> Response {
    match api.svc.metrics() {
        Some(text) => ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response(),
        None => ApiError::new(StatusCode::NOT_FOUND, "not_found", "this service exports no metrics").into_response(),
    }
}

async fn status_page(State(api): St) -> Response {
    match tokio::time::timeout(Duration::from_secs(5), api.svc.status_page()).await {
        Ok(Some(html)) => ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response(),
        _ => {
            let mut r = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "no cluster status: no coordinator reachable now",
            )
            .into_response();
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            r
        }
    }
}

async fn live() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "live": true }))
}

async fn ready(State(api): St) -> Response {
    if api.svc.ready() {
        Json(serde_json::json!({ "ready": true })).into_response()
    } else {
        ApiError::from(ServeError::Unavailable("this node holds no routing table yet".into())).into_response()
    }
}

async fn server_metadata() -> Json<serde_json::Value> {
    Json(
        serde_json::json!({ "name": "jigsaw", "version": env!("CARGO_PKG_VERSION"), "extensions": ["binary_tensor_data"] }),
    )
}

fn path_error(e: PathRejection) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_request", format!("path: {}", e.body_text()))
}

fn metadata(api: &Api, app: &str) -> Result<Json<AppMeta>, ApiError> {
    api.svc.app(app).map(Json).ok_or_else(|| unknown_app(app))
}

async fn model_metadata(State(api): St, path: Result<Path<String>, PathRejection>) -> Result<Json<AppMeta>, ApiError> {
    let Path(app) = path.map_err(path_error)?;
    metadata(&api, &app)
}

async fn model_metadata_version(
    State(api): St,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<AppMeta>, ApiError> {
    let Path((app, _version)) = path.map_err(path_error)?;
    metadata(&api, &app)
}

fn app_ready(api: &Api, app: &str) -> Result<Json<serde_json::Value>, ApiError> {
    if api.svc.app(app).is_none() {
        return Err(unknown_app(app));
    }
    if !api.svc.ready() {
        return Err(ServeError::Unavailable("this node holds no routing table yet".into()).into());
    }
    Ok(Json(serde_json::json!({ "name": app, "ready": true })))
}

async fn model_ready(
    State(api): St,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Path(app) = path.map_err(path_error)?;
    app_ready(&api, &app)
}

async fn model_ready_version(
    State(api): St,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Path((app, _version)) = path.map_err(path_error)?;
    app_ready(&api, &app)
}

async fn infer(State(api): St, path: Result<Path<String>, PathRejection>, req: axum::extract::Request) -> Response {
    match path {
        Ok(Path(app)) => run_infer(api, app, req).await,
        Err(e) => path_error(e).into_response(),
    }
}

async fn infer_version(
    State(api): St,
    path: Result<Path<(String, String)>, PathRejection>,
    req: axum::extract::Request,
) -> Response {
    match path {
        Ok(Path((app, _version))) => run_infer(api, app, req).await,
        Err(e) => path_error(e).into_response(),
    }
}

/// The deadline header, if present and valid.
fn parse_deadline(headers: &HeaderMap) -> Result<Option<Duration>, ApiError> {
    let Some(v) = headers.get(DEADLINE_HEADER) else {
        return Ok(None);
    };
    let ms = v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok());
    match ms {
        Some(ms) if (1..=MAX_DEADLINE_MS).contains(&ms) => Ok(Some(Duration::from_millis(ms))),
        _ => Err(bad_input(
            DEADLINE_HEADER,
            format!(
                "`{}` is not a whole number of milliseconds in 1..={MAX_DEADLINE_MS}",
                String::from_utf8_lossy(v.as_bytes())
            ),
        )),
    }
}

/// An app's latency SLO as a duration, kept within 1 ms ..= [`MAX_DEADLINE_MS`].
fn slo(meta: &AppMeta) -> Duration {
    let ms = if meta.latency_slo_ms.is_finite() { meta.latency_slo_ms } else { MAX_DEADLINE_MS as f64 };
    Duration::from_secs_f64(ms.clamp(1.0, MAX_DEADLINE_MS as f64) / 1e3)
}

fn too_large(max: usize) -> ApiError {
    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "bad_request", format!("body: larger than {max} bytes"))
}

async fn run_infer(api: Arc<Api>, app: String, req: axum::extract::Request) -> Response {
    let (parts, body) = req.into_parts();
    let conn = parts.extensions.get::<ConnActivity>().map(|c| c.0.clone());
    match try_infer(api, app, &parts.headers, body, conn).await {
        Ok((resp, bin)) => match encode_infer_response(&resp, &bin) {
            (json, None) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
            (bytes, Some(n)) => {
                let mut r = ([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response();
                r.headers_mut().insert(BINARY_HEADER, HeaderValue::from(n));
                r
            }
        },
        Err(e) => e.into_response(),
    }
}

/// The binary data extension's JSON length header, if present.
fn parse_binary_header(headers: &HeaderMap) -> Result<Option<usize>, ApiError> {
    let Some(v) = headers.get(BINARY_HEADER) else {
        return Ok(None);
    };
    v.to_str().ok().and_then(|s| s.trim().parse::<usize>().ok()).map(Some).ok_or_else(|| {
        bad_input(BINARY_HEADER, format!("`{}` is not a byte count", String::from_utf8_lossy(v.as_bytes())))
    })
}

/// Reserve `bytes` of body memory (at least one, at most all of it), waiting for it. The
/// wait is the server's, not the client's: the connection does not count as idle meanwhile.
async fn reserve(api: &Api, bytes: usize, conn: Option<&Arc<Activity>>) -> Result<OwnedSemaphorePermit, ApiError> {
    let _waiting = conn.map(Computing::new);
    let n = bytes.clamp(1, api.memory_total) as u32;
    api.memory
        .clone()
        .acquire_many_owned(n)
        .await
        .map_err(|_| ApiError::from(ServeError::Unavailable("stopping".into())))
}

/// Read the body (at most `max` bytes). Past [`SMALL_BODY`] bytes (declared, or found while
/// reading) it first reserves [`DECODE_FACTOR`] times its declared length, or `max`, from
/// the body memory; while it holds that, the rest must arrive at [`MIN_BODY_RATE`] on
/// average once [`BODY_RATE_GRACE`] has passed, or the request ends with 408.
async fn read_body(
    api: &Api,
    mut body: Body,
    max: usize,
    declared: Option<usize>,
    conn: Option<&Arc<Activity>>,
) -> Result<(Vec<u8>, Option<OwnedSemaphorePermit>), ApiError> {
    let mut memory = None;
    // When the reservation was taken, and the length then.
    let mut held: Option<(Instant, usize)> = None;
    let mut buf = Vec::new();
    if let Some(n) = declared {
        if n > SMALL_BODY {
            memory = Some(reserve(api, n.saturating_mul(DECODE_FACTOR), conn).await?);
            held = Some((Instant::now(), 0));
        }
        buf.reserve_exact(n);
    }
    loop {
        let next = match held {
            None => body.frame().await,
            Some((since, at)) => match tokio::time::timeout(Duration::from_millis(250), body.frame()).await {
                Ok(f) => f,
                Err(_) => {
                    check_rate(since, buf.len() - at)?;
                    continue;
                }
            },
        };
        let Some(frame) = next else { break };
        let frame = frame.map_err(|e| bad_input("body", format!("could not be read: {e}")))?;
        let Ok(chunk) = frame.into_data() else { continue };
        let len = buf.len() + chunk.len();
        if len > max {
            return Err(too_large(max));
        }
        if memory.is_none() && len > SMALL_BODY {
            memory = Some(reserve(api, max.saturating_mul(DECODE_FACTOR), conn).await?);
            held = Some((Instant::now(), buf.len()));
        }
        buf.extend_from_slice(&chunk);
        match held {
            Some((since, at)) if declared.is_none_or(|n| buf.len() < n) => check_rate(since, buf.len() - at)?,
            _ => {}
        }
    }
    Ok((buf, memory))
}

/// 408 if `received` bytes since `since` are under [`MIN_BODY_RATE`] past the grace.
fn check_rate(since: Instant, received: usize) -> Result<(), ApiError> {
    let late = since.elapsed().saturating_sub(BODY_RATE_GRACE);
    if late.is_zero() || received as f64 >= late.as_secs_f64() * MIN_BODY_RATE as f64 {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "bad_request",
        format!("body: arriving at under {} KiB/s while holding body memory", MIN_BODY_RATE >> 10),
    ))
}

/// Bytes a request's tensors take in memory.
fn decoded_bytes(req: &InferRequest) -> usize {
    req.inputs
        .iter()
        .map(|t| match &t.data {
            TensorData::Bytes(v) => v.iter().map(|s| s.len() + std::mem::size_of::<String>()).sum(),
            d => d.len() * TensorData::element_memory(&t.datatype).unwrap_or(8),
        })
        .sum()
}

async fn try_infer(
    api: Arc<Api>,
    app: String,
    headers: &HeaderMap,
    body: Body,
    conn: Option<Arc<Activity>>,
) -> Result<(InferResponse, BinaryOutputs), ApiError> {
    let deadline = parse_deadline(headers)?;
    let json_len = parse_binary_header(headers)?;
    let meta = api.svc.app(&app).ok_or_else(|| unknown_app(&app))?;
    let max = api.limits.max_body_bytes;
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large(max));
    }
    let declared = declared.map(|n| n as usize);
    let bound = deadline.unwrap_or_else(|| slo(&meta)) + api.limits.grace;
    let work = async {
        let (bytes, mut memory) = read_body(&api, body, max, declared, conn.as_ref()).await?;
        // From here on the server works (parsing, computing): the connection is not idle.
        let _computing = conn.as_ref().map(Computing::new);
        let len = bytes.len();
        // What this body did not need goes back; the rest bounds what it decodes to.
        if let Some(m) = memory.as_mut() {
            let keep = len.saturating_mul(DECODE_FACTOR).clamp(1, m.num_permits());
            drop(m.split(m.num_permits() - keep));
        }
        let allowance = match &memory {
            Some(m) => m.num_permits().saturating_sub(len),
            None => (DECODE_FACTOR - 1) * SMALL_BODY,
        } as u64;
        let (req, bin) = if len <= SMALL_BODY {
            parse_infer_request_bounded(&bytes, json_len, allowance)
        } else {
            // Off the runtime's workers: a 32 MiB body takes a while to parse.
            tokio::task::spawn_blocking(move || parse_infer_request_bounded(&bytes, json_len, allowance))
                .await
                .map_err(|e| ApiError::from(ServeError::Failed(format!("parsing the body: {e}"))))?
        }
        .map_err(|e| ApiError::from(ServeError::BadInput(e)))?;
        // The body is gone: keep only what its tensors take until the answer.
        if let Some(m) = memory.as_mut() {
            let keep = decoded_bytes(&req).clamp(1, m.num_permits());
            drop(m.split(m.num_permits() - keep));
        }
        // Admission once the body is in: refuse rather than queue; the permit is held until
        // the answer (or the timeout).
        let _permit = api.in_flight.clone().try_acquire_owned().map_err(|_| {
            ApiError::from(ServeError::Overloaded(format!(
                "{} requests already in flight on this frontend",
                api.limits.max_in_flight
            )))
        })?;
        let resp = api.svc.infer(&app, req, deadline).await.map_err(ApiError::from)?;
        drop(memory);
        Ok((resp, bin))
    };
    match tokio::time::timeout(bound, work).await {
        Ok(r) => r,
        Err(_) => {
            tracing::debug!(app, bound_ms = bound.as_millis() as u64, "infer timed out in the HTTP layer");
            Err(ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "deadline_miss",
                format!("no answer within {} ms (deadline plus grace)", bound.as_millis()),
            ))
        }
    }
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "bad_request", "method not allowed for this path")
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no such path {}", uri.path()))
}
