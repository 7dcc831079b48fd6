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
//! The version segment is accepted and ignored: the version is the plan epoch, which changes
//! whenever the coordinator re-plans, and a client should not fail across a re-plan.
//!
//! Every error body is JSON, `{"error": "<message>", "outcome": "<outcome>", "weight": n}`,
//! where `outcome` is [`ServeError::outcome`] (or `not_found` for an unknown path) and
//! `weight` the fan-out items the failure covers ([`ServeError::weight`]):
//!
//! | Status | `outcome` | When |
//! |---|---|---|
//! | 400 | `bad_request` | malformed body (the message names the field: `inputs[0].datatype: ...`), or a bad [`DEADLINE_HEADER`] |
//! | 404 | `unknown_app` | no such application is routable here |
//! | 404 | `not_found` | no such path |
//! | 405 | `bad_request` | wrong method for the path (with `Allow`) |
//! | 413 | `bad_request` | body larger than [`HttpLimits::max_body_bytes`] |
//! | 429 | `overloaded` | [`HttpLimits::max_in_flight`] infer calls already running here (with `Retry-After: 1`); never queued |
//! | 500 | `error` | a worker or the transport failed |
//! | 503 | `unavailable` | not ready, no plan or no instance (with `Retry-After: 1`) |
//! | 503 | `early_drop`, `stale_drop` | a task dropped the request; `weight` items of its fan-out were lost (with `Retry-After: 1`) |
//! | 504 | `deadline_miss` | no answer by the deadline plus [`HttpLimits::grace`] |
//!
//! Deadlines: the optional request header [`DEADLINE_HEADER`] (`x-jigsaw-deadline-ms`, a
//! positive integer of milliseconds up to [`MAX_DEADLINE_MS`], relative to arrival) is passed
//! to [`Inference::infer`]; without it the app's latency SLO applies. Whatever the service
//! does, the HTTP layer answers 504 once the deadline plus [`HttpLimits::grace`] has passed
//! (reading the body counts against it), so no request hangs.

use super::{AppMeta, Inference, ServeError};
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use jigsaw_protocol::infer::{
    encode_infer_response, parse_infer_request_binary, BinaryOutputs, InferError, InferResponse, BINARY_HEADER,
};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

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
    /// one is closed (slow-header "slowloris" clients hold no connection slot for long).
    pub header_read_timeout: Duration,
}

impl Default for HttpLimits {
    /// 32 MiB bodies (a 3×224×224 FP32 image as JSON is about 2 MB), 1024 in flight,
    /// 250 ms grace, 10 s to send a request header.
    fn default() -> Self {
        HttpLimits {
            max_body_bytes: 32 << 20,
            max_in_flight: 1024,
            grace: Duration::from_millis(250),
            header_read_timeout: Duration::from_secs(10),
        }
    }
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
}

type St = State<Arc<Api>>;

/// The v2 API's routes over `svc` (see the module docs for paths and status codes).
pub fn router(svc: Arc<dyn Inference>, limits: HttpLimits) -> Router {
    let in_flight = Arc::new(Semaphore::new(limits.max_in_flight.min(Semaphore::MAX_PERMITS)));
    let api = Arc::new(Api { svc, limits, in_flight });
    Router::new()
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2", get(server_metadata))
        .route("/v2/models/{app}", get(model_metadata))
        .route("/v2/models/{app}/versions/{version}", get(model_metadata_version))
        .route("/v2/models/{app}/ready", get(model_ready))
        .route("/v2/models/{app}/versions/{version}/ready", get(model_ready_version))
        .route("/v2/models/{app}/infer", post(infer))
        .route("/v2/models/{app}/versions/{version}/infer", post(infer_version))
        .route("/metrics", get(metrics))
        .route("/status", get(status_page))
        // After the routes: it applies to the routes present.
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .with_state(api)
}

/// Serve the v2 API on `listener` until `shutdown` completes, then finish the requests in
/// flight (each bounded by its deadline plus grace) and return.
pub async fn serve(
    listener: tokio::net::TcpListener,
    svc: Arc<dyn Inference>,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // hyper directly rather than `axum::serve`, which sets no header-read timeout.
    let header_timeout = limits.header_read_timeout;
    let app = router(svc, limits);
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
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(header_timeout)
                    .serve_connection(
                        hyper_util::rt::TokioIo::new(stream),
                        hyper_util::service::TowerToHyperService::new(app.clone()),
                    );
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(%e, "HTTP connection ended with an error");
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

async fn infer(State(api): St, path: Result<Path<String>, PathRejection>, headers: HeaderMap, body: Body) -> Response {
    match path {
        Ok(Path(app)) => run_infer(api, app, &headers, body).await,
        Err(e) => path_error(e).into_response(),
    }
}

async fn infer_version(
    State(api): St,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match path {
        Ok(Path((app, _version))) => run_infer(api, app, &headers, body).await,
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

async fn run_infer(api: Arc<Api>, app: String, headers: &HeaderMap, body: Body) -> Response {
    match try_infer(api, app, headers, body).await {
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

async fn try_infer(
    api: Arc<Api>,
    app: String,
    headers: &HeaderMap,
    body: Body,
) -> Result<(InferResponse, BinaryOutputs), ApiError> {
    let deadline = parse_deadline(headers)?;
    let json_len = parse_binary_header(headers)?;
    let meta = api.svc.app(&app).ok_or_else(|| unknown_app(&app))?;
    let max = api.limits.max_body_bytes;
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large(max));
    }
    // Refuse rather than queue: the permit is held until the answer (or the timeout).
    let _permit = api.in_flight.clone().try_acquire_owned().map_err(|_| {
        ApiError::from(ServeError::Overloaded(format!(
            "{} requests already in flight on this frontend",
            api.limits.max_in_flight
        )))
    })?;
    let bound = deadline.unwrap_or_else(|| slo(&meta)) + api.limits.grace;
    let work = async {
        let bytes = match Limited::new(body, max).collect().await {
            Ok(c) => c.to_bytes(),
            Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => return Err(too_large(max)),
            Err(e) => return Err(bad_input("body", format!("could not be read: {e}"))),
        };
        let (req, bin) =
            parse_infer_request_binary(&bytes, json_len).map_err(|e| ApiError::from(ServeError::BadInput(e)))?;
        let resp = api.svc.infer(&app, req, deadline).await.map_err(ApiError::from)?;
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
