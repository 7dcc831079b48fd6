//! The v2 HTTP API (`dataplane::http`) and the load generator (`dataplane::loadgen`) against a
//! fake data plane served on 127.0.0.1:0. Tests wait on observable state, never on sleeps.

use axum::body::Bytes;
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use jigsaw_agent::core::batch::DropReason;
use jigsaw_agent::dataplane::auth::TokenFile;
use jigsaw_agent::dataplane::http::{self, HttpLimits, HttpSecurity};
use jigsaw_agent::dataplane::{AppMeta, Inference, ServeError, TensorMeta};
use jigsaw_agent::transport::net::BoxFuture;
use jigsaw_cli::load::schedule::Outcome;
use jigsaw_cli::load::{self as loadgen, LoadArgs};
use jigsaw_protocol::infer::{InferRequest, InferResponse, Tensor, TensorData};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};

/// What the fake's `infer` does.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Behaviour {
    /// Answer at once.
    Ok,
    /// Say the app is unknown.
    UnknownApp,
    /// Drop early, losing 3 fan-out items.
    EarlyDrop3,
    /// Drop stale.
    StaleDrop,
    /// Fail (500).
    Fail,
    /// Never return.
    Never,
    /// Answer after this long.
    Slow(Duration),
    /// Wait for `release` before answering.
    Blocked,
}

/// A fake data plane with one app, `det` (input `image` FP32 [-1, 4], SLO `slo_ms`).
struct Fake {
    ready: AtomicBool,
    slo_ms: f64,
    /// Behaviour of the n-th infer call (0-based), cycled.
    script: Vec<Behaviour>,
    calls: AtomicU64,
    /// How many calls got each behaviour.
    produced: Mutex<Vec<(Behaviour, u64)>>,
    /// Calls currently inside `infer` waiting on `release` (Blocked).
    entered: watch::Sender<usize>,
    release: Notify,
    last_deadline: Mutex<Option<Option<Duration>>>,
}

impl Fake {
    fn new(script: Vec<Behaviour>, slo_ms: f64) -> Arc<Fake> {
        Arc::new(Fake {
            ready: AtomicBool::new(true),
            slo_ms,
            script,
            calls: AtomicU64::new(0),
            produced: Mutex::new(Vec::new()),
            entered: watch::channel(0).0,
            release: Notify::new(),
            last_deadline: Mutex::new(None),
        })
    }

    fn produced(&self, b: Behaviour) -> u64 {
        self.produced.lock().expect("lock").iter().find(|(x, _)| *x == b).map_or(0, |(_, n)| *n)
    }

    fn meta(&self) -> AppMeta {
        AppMeta {
            name: "det".into(),
            versions: vec!["7".into()],
            platform: "jigsaw".into(),
            inputs: vec![TensorMeta { name: "image".into(), datatype: "FP32".into(), shape: vec![-1, 4] }],
            outputs: vec![TensorMeta { name: "boxes".into(), datatype: "FP32".into(), shape: vec![-1, 4] }],
            latency_slo_ms: self.slo_ms,
        }
    }
}

fn answer(app: &str, req: &InferRequest) -> InferResponse {
    InferResponse {
        model_name: app.to_string(),
        id: req.id.clone(),
        outputs: vec![Tensor {
            name: "boxes".into(),
            shape: vec![1, 1],
            datatype: "FP32".into(),
            data: TensorData::Fp32(vec![req.inputs[0].data.len() as f32]),
        }],
    }
}

/// The fake as an [`Inference`] (a local type, for the orphan rule).
struct Svc(Arc<Fake>);

impl Inference for Svc {
    fn ready(&self) -> bool {
        self.0.ready.load(Ordering::SeqCst)
    }

    fn apps(&self) -> Vec<String> {
        vec!["det".into()]
    }

    fn app(&self, app: &str) -> Option<AppMeta> {
        (app == "det").then(|| self.0.meta())
    }

    fn infer(
        &self,
        app: &str,
        req: InferRequest,
        deadline: Option<Duration>,
    ) -> BoxFuture<Result<InferResponse, ServeError>> {
        self.0.infer(app, req, deadline)
    }
}

impl Fake {
    fn infer(
        self: &Arc<Self>,
        app: &str,
        req: InferRequest,
        deadline: Option<Duration>,
    ) -> BoxFuture<Result<InferResponse, ServeError>> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        let b = self.script[(n % self.script.len() as u64) as usize];
        {
            let mut p = self.produced.lock().expect("lock");
            match p.iter_mut().find(|(x, _)| *x == b) {
                Some((_, c)) => *c += 1,
                None => p.push((b, 1)),
            }
        }
        *self.last_deadline.lock().expect("lock") = Some(deadline);
        let me = self.clone();
        let app = app.to_string();
        Box::pin(async move {
            match b {
                Behaviour::Ok => Ok(answer(&app, &req)),
                Behaviour::UnknownApp => Err(ServeError::UnknownApp(app)),
                Behaviour::EarlyDrop3 => {
                    Err(ServeError::Dropped { task: "classify".into(), reason: DropReason::Early, weight: 3 })
                }
                Behaviour::StaleDrop => {
                    Err(ServeError::Dropped { task: "detect".into(), reason: DropReason::OverCapacity, weight: 1 })
                }
                Behaviour::Fail => Err(ServeError::Failed("worker crashed".into())),
                Behaviour::Never => std::future::pending().await,
                Behaviour::Slow(d) => {
                    tokio::time::sleep(d).await;
                    Ok(answer(&app, &req))
                }
                Behaviour::Blocked => {
                    let released = me.release.notified();
                    me.entered.send_modify(|n| *n += 1);
                    released.await;
                    me.entered.send_modify(|n| *n -= 1);
                    Ok(answer(&app, &req))
                }
            }
        })
    }
}

/// A served fake: its base URL and a trigger that stops the server.
struct Server {
    base: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    async fn start(svc: Arc<dyn Inference>, limits: HttpLimits) -> Server {
        Server::start_with(svc, limits, HttpSecurity::default()).await
    }

    async fn start_with(svc: Arc<dyn Inference>, limits: HttpLimits, security: HttpSecurity) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(http::serve_with(listener, svc, limits, security, async move {
            let _ = rx.await;
        }));
        Server { base, stop: Some(tx), task }
    }

    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("server stops")
            .expect("join")
            .expect("serve");
    }
}

fn limits() -> HttpLimits {
    HttpLimits {
        max_body_bytes: 64 * 1024,
        max_in_flight: 64,
        grace: Duration::from_millis(50),
        header_read_timeout: Duration::from_millis(300),
        ..HttpLimits::default()
    }
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    json: serde_json::Value,
}

async fn call(c: &HttpClient, method: Method, url: &str, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Answer {
    let mut b = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b.body(Full::new(body.into())).expect("request");
    let resp =
        tokio::time::timeout(Duration::from_secs(20), c.request(req)).await.expect("answer in time").expect("http");
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let json = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("{status}: body is not JSON ({e}): {}", String::from_utf8_lossy(&bytes)));
    Answer { status, headers, json }
}

async fn get(c: &HttpClient, url: &str) -> Answer {
    call(c, Method::GET, url, &[], Bytes::new()).await
}

const VALID: &str = r#"{"id":"r1","inputs":[{"name":"image","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}"#;

async fn infer(c: &HttpClient, base: &str, headers: &[(&str, &str)], body: &'static str) -> Answer {
    call(c, Method::POST, &format!("{base}/v2/models/det/infer"), headers, body).await
}

fn assert_error(a: &Answer, status: u16, outcome: &str) {
    assert_eq!(a.status.as_u16(), status, "{}", a.json);
    assert_eq!(a.json["outcome"], outcome, "{}", a.json);
    assert!(a.json["error"].is_string() && a.json["weight"].is_u64(), "{}", a.json);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_metadata_and_unknown_paths() {
    let fake = Fake::new(vec![Behaviour::Ok], 100.0);
    let srv = Server::start(Arc::new(Svc(fake.clone())), limits()).await;
    let c = client();
    let b = &srv.base;

    assert_eq!(get(&c, &format!("{b}/v2/health/live")).await.status, StatusCode::OK);
    assert_eq!(get(&c, &format!("{b}/v2/health/ready")).await.status, StatusCode::OK);
    assert_eq!(get(&c, &format!("{b}/v2/models/det/ready")).await.status, StatusCode::OK);
    fake.ready.store(false, Ordering::SeqCst);
    let a = get(&c, &format!("{b}/v2/health/ready")).await;
    assert_error(&a, 503, "unavailable");
    assert_eq!(a.headers.get(header::RETRY_AFTER).expect("Retry-After"), "1");
    assert_error(&get(&c, &format!("{b}/v2/models/det/ready")).await, 503, "unavailable");
    assert_eq!(get(&c, &format!("{b}/v2/health/live")).await.status, StatusCode::OK);
    fake.ready.store(true, Ordering::SeqCst);
    assert_eq!(get(&c, &format!("{b}/v2/health/ready")).await.status, StatusCode::OK);

    let server = get(&c, &format!("{b}/v2")).await;
    assert_eq!(server.status, StatusCode::OK);
    assert_eq!(server.json["name"], "jigsaw");
    assert!(
        server.json["version"].is_string() && server.json["extensions"] == serde_json::json!(["binary_tensor_data"])
    );

    for url in [format!("{b}/v2/models/det"), format!("{b}/v2/models/det/versions/7")] {
        let m = get(&c, &url).await;
        assert_eq!(m.status, StatusCode::OK);
        assert_eq!(m.json["name"], "det");
        assert_eq!(m.json["versions"], serde_json::json!(["7"]));
        assert_eq!(m.json["platform"], "jigsaw");
        assert_eq!(m.json["inputs"], serde_json::json!([{"name": "image", "datatype": "FP32", "shape": [-1, 4]}]));
        assert_eq!(m.json["outputs"][0]["name"], "boxes");
        assert_eq!(m.json["latency_slo_ms"], 100.0);
    }

    let a = get(&c, &format!("{b}/v2/models/nope")).await;
    assert_error(&a, 404, "unknown_app");
    assert!(a.json["error"].as_str().expect("error").contains("nope"), "{}", a.json);
    assert_error(&get(&c, &format!("{b}/v2/models/nope/ready")).await, 404, "unknown_app");
    let a = call(&c, Method::POST, &format!("{b}/v2/models/nope/infer"), &[], VALID).await;
    assert_error(&a, 404, "unknown_app");
    assert_error(&get(&c, &format!("{b}/v3/whatever")).await, 404, "not_found");

    let a = get(&c, &format!("{b}/v2/models/det/infer")).await;
    assert_error(&a, 405, "bad_request");
    assert!(a.headers.get(header::ALLOW).is_some_and(|v| v.to_str().expect("ascii").contains("POST")));
    assert_error(
        &call(&c, Method::DELETE, &format!("{b}/v2/health/live"), &[], Bytes::new()).await,
        405,
        "bad_request",
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infer_answers_and_maps_service_errors() {
    let script = vec![Behaviour::Ok, Behaviour::Ok, Behaviour::UnknownApp, Behaviour::EarlyDrop3, Behaviour::Fail];
    let fake = Fake::new(script, 100.0);
    let srv = Server::start(Arc::new(Svc(fake.clone())), limits()).await;
    let c = client();
    let b = &srv.base;

    let a = infer(&c, b, &[], VALID).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    let resp: InferResponse = serde_json::from_value(a.json).expect("InferResponse");
    assert_eq!((resp.model_name.as_str(), resp.id.as_deref()), ("det", Some("r1")));
    assert_eq!(*fake.last_deadline.lock().expect("lock"), Some(None));

    let url = format!("{b}/v2/models/det/versions/3/infer");
    let a = call(&c, Method::POST, &url, &[("x-jigsaw-deadline-ms", "250")], VALID).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    assert_eq!(*fake.last_deadline.lock().expect("lock"), Some(Some(Duration::from_millis(250))));

    assert_error(&infer(&c, b, &[], VALID).await, 404, "unknown_app");
    let a = infer(&c, b, &[], VALID).await;
    assert_error(&a, 503, "early_drop");
    assert_eq!(a.json["weight"], 3);
    assert_eq!(a.headers.get(header::RETRY_AFTER).expect("Retry-After"), "1");
    assert_error(&infer(&c, b, &[], VALID).await, 500, "error");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_400_naming_the_field_and_big_ones_413() {
    let fake = Fake::new(vec![Behaviour::Ok], 100.0);
    let srv = Server::start(Arc::new(Svc(fake.clone())), limits()).await;
    let c = client();
    let b = &srv.base;

    let cases: [(&'static str, &str); 4] = [
        (r#"{"inputs":[{"name":"image","shape":[1,4],"datatype":"FLOAT","data":[1,2,3,4]}]}"#, "inputs[0].datatype"),
        ("{not json", "body"),
        (r#"{"id":"x"}"#, "inputs"),
        (r#"{"inputs":[{"name":"image","shape":[1,4],"datatype":"FP32","data":[1]}]}"#, "inputs[0].data"),
    ];
    for (body, field) in cases {
        let a = infer(&c, b, &[], body).await;
        assert_error(&a, 400, "bad_request");
        let msg = a.json["error"].as_str().expect("error");
        assert!(msg.starts_with(&format!("{field}: ")), "{body} → {msg}");
    }
    for bad in ["0", "abc", "-5", "600001", "1.5"] {
        let a = infer(&c, b, &[("x-jigsaw-deadline-ms", bad)], VALID).await;
        assert_error(&a, 400, "bad_request");
        assert!(a.json["error"].as_str().expect("error").contains("x-jigsaw-deadline-ms"), "{}", a.json);
    }
    assert_eq!(fake.calls.load(Ordering::SeqCst), 0, "no malformed request reached the service");

    // Over the limit, declared by Content-Length.
    let big = format!(r#"{{"inputs":[],"pad":"{}"}}"#, "x".repeat(70 * 1024));
    let a = call(&c, Method::POST, &format!("{b}/v2/models/det/infer"), &[], big.clone()).await;
    assert_error(&a, 413, "bad_request");
    // Over the limit, found while reading: sent chunked, without Content-Length.
    let status = raw_chunked_post(b, "/v2/models/det/infer", big.as_bytes()).await;
    assert!(status.starts_with("HTTP/1.1 413"), "{status}");
    srv.stop().await;
}

/// POST `body` in 8 KiB chunks (no Content-Length) over a raw connection; the status line.
async fn raw_chunked_post(base: &str, path: &str, body: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head =
        format!("POST {path} HTTP/1.1\r\nhost: {addr}\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n");
    s.write_all(head.as_bytes()).await.expect("write");
    for chunk in body.chunks(8 * 1024) {
        // The server may answer and close before the whole body is sent.
        if s.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).await.is_err()
            || s.write_all(chunk).await.is_err()
            || s.write_all(b"\r\n").await.is_err()
        {
            break;
        }
    }
    let _ = s.write_all(b"0\r\n\r\n").await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out)).await.expect("answer in time");
    String::from_utf8_lossy(&out).lines().next().unwrap_or("").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn excess_requests_get_429_at_once_and_never_queue() {
    let fake = Fake::new(vec![Behaviour::Blocked, Behaviour::Blocked, Behaviour::Ok], 60_000.0);
    let lim = HttpLimits { max_in_flight: 2, ..limits() };
    let srv = Server::start(Arc::new(Svc(fake.clone())), lim).await;
    let c = client();
    let b = srv.base.clone();

    let held: Vec<_> = (0..2)
        .map(|_| {
            let (c, b) = (c.clone(), b.clone());
            tokio::spawn(async move { infer(&c, &b, &[], VALID).await.status })
        })
        .collect();
    let mut entered = fake.entered.subscribe();
    tokio::time::timeout(Duration::from_secs(20), entered.wait_for(|n| *n == 2))
        .await
        .expect("both calls enter the service")
        .expect("watch");

    let t0 = Instant::now();
    let a = infer(&c, &b, &[], VALID).await;
    assert_error(&a, 429, "overloaded");
    assert_eq!(a.headers.get(header::RETRY_AFTER).expect("Retry-After"), "1");
    assert!(t0.elapsed() < Duration::from_secs(5), "refused at once, not queued");
    assert_eq!(fake.calls.load(Ordering::SeqCst), 2, "the refused request never reached the service");

    fake.release.notify_waiters();
    for h in held {
        assert_eq!(h.await.expect("join"), StatusCode::OK);
    }
    // The permits came back.
    assert_eq!(infer(&c, &b, &[], VALID).await.status, StatusCode::OK);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_that_never_answers_gets_504_within_the_bound() {
    let fake = Fake::new(vec![Behaviour::Never], 100.0);
    // One permit: a timed-out call must give it back.
    let lim = HttpLimits { max_in_flight: 1, grace: Duration::from_millis(50), ..limits() };
    let srv = Server::start(Arc::new(Svc(fake.clone())), lim).await;
    let c = client();
    let b = &srv.base;

    let t0 = Instant::now();
    let a = infer(&c, b, &[], VALID).await;
    let took = t0.elapsed();
    assert_error(&a, 504, "deadline_miss");
    assert!(took >= Duration::from_millis(150) && took < Duration::from_secs(5), "SLO 100 + grace 50 ms: {took:?}");

    let t0 = Instant::now();
    let a = infer(&c, b, &[("x-jigsaw-deadline-ms", "20")], VALID).await;
    let took = t0.elapsed();
    assert_error(&a, 504, "deadline_miss");
    assert!(took >= Duration::from_millis(70) && took < Duration::from_secs(5), "deadline 20 + grace 50 ms: {took:?}");
    assert_eq!(fake.calls.load(Ordering::SeqCst), 2);
    srv.stop().await;
}

/// Counts the infer calls one server receives, then hands them to the shared fake.
struct Tagged {
    inner: Arc<Fake>,
    hits: AtomicU64,
}

struct TaggedSvc(Arc<Tagged>);

impl Inference for TaggedSvc {
    fn ready(&self) -> bool {
        Svc(self.0.inner.clone()).ready()
    }
    fn apps(&self) -> Vec<String> {
        Svc(self.0.inner.clone()).apps()
    }
    fn app(&self, app: &str) -> Option<AppMeta> {
        Svc(self.0.inner.clone()).app(app)
    }
    fn infer(
        &self,
        app: &str,
        req: InferRequest,
        deadline: Option<Duration>,
    ) -> BoxFuture<Result<InferResponse, ServeError>> {
        self.0.hits.fetch_add(1, Ordering::SeqCst);
        self.0.inner.infer(app, req, deadline)
    }
}

fn load_args(app: &str, targets: Vec<String>) -> LoadArgs {
    LoadArgs {
        app: app.into(),
        rps: Some(200.0),
        duration: Some(Duration::from_secs(1)),
        trace: None,
        seed: 3,
        targets,
        deadline_ms: None,
        json: false,
        window: Some(Duration::from_millis(500)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_accounts_for_every_request_across_two_frontends() {
    // SLO 300 ms; the HTTP layer gives up at 300 + 500 ms. Slow answers at 500 ms: a 200
    // after the deadline. Never: a 504. Both are deadline misses.
    let script = vec![
        Behaviour::Ok,
        Behaviour::Ok,
        Behaviour::Ok,
        Behaviour::Ok,
        Behaviour::Ok,
        Behaviour::EarlyDrop3,
        Behaviour::StaleDrop,
        Behaviour::Fail,
        Behaviour::Slow(Duration::from_millis(500)),
        Behaviour::Never,
    ];
    let fake = Fake::new(script, 300.0);
    let lim = HttpLimits { max_in_flight: 10_000, grace: Duration::from_millis(500), ..limits() };
    let (a, b) = (
        Arc::new(Tagged { inner: fake.clone(), hits: AtomicU64::new(0) }),
        Arc::new(Tagged { inner: fake.clone(), hits: AtomicU64::new(0) }),
    );
    let (sa, sb) = (
        Server::start(Arc::new(TaggedSvc(a.clone())), lim.clone()).await,
        Server::start(Arc::new(TaggedSvc(b.clone())), lim).await,
    );

    let report = loadgen::run(&load_args("det", vec![sa.base.clone(), format!("{}/", sb.base)])).await.expect("run");
    println!("{report}");
    let o = report.outcomes;
    let sum = o.ok + o.deadline_miss + o.early_drop + o.stale_drop + o.error;
    assert_eq!(report.sent, sum, "{report}");
    assert!((150..260).contains(&report.sent), "about 200 requests: {report}");
    assert_eq!(report.sent, fake.calls.load(Ordering::SeqCst), "every request reached the service once");
    assert_eq!(o.ok, fake.produced(Behaviour::Ok), "{report}");
    assert_eq!(o.early_drop, fake.produced(Behaviour::EarlyDrop3), "{report}");
    assert_eq!(report.weighted.early_drop, 3 * o.early_drop, "{report}");
    assert_eq!(o.stale_drop, fake.produced(Behaviour::StaleDrop), "{report}");
    assert_eq!(o.error, fake.produced(Behaviour::Fail), "{report}");
    let slow = fake.produced(Behaviour::Slow(Duration::from_millis(500)));
    let never = fake.produced(Behaviour::Never);
    assert_eq!(o.deadline_miss, slow + never, "{report}");
    assert_eq!(report.causes.get("200 after deadline").copied().unwrap_or(0), slow, "{report}");
    assert_eq!(report.causes.get("504 deadline_miss").copied().unwrap_or(0), never, "{report}");
    assert_eq!(report.causes.get("500 error").copied().unwrap_or(0), o.error, "{report}");
    assert_eq!(report.total_weighted, report.sent + 2 * o.early_drop);
    assert_eq!(report.slo_violations_weighted, report.total_weighted - o.ok);
    assert!(report.latency_ok_ms.p99.is_some_and(|p| p <= 300.0), "{report}");
    assert!(report.latency_answered_ms.p99.is_some_and(|p| p >= 500.0), "{report}");

    // The windows (500 ms, 1 s run) add up to the whole, outcome by outcome.
    assert!(report.windows.len() >= 2, "{report}");
    let w = |f: fn(&jigsaw_cli::load::Window) -> u64| report.windows.iter().map(f).sum::<u64>();
    assert_eq!(w(|w| w.sent), report.sent);
    assert_eq!(w(|w| w.ok), o.ok);
    assert_eq!(w(|w| w.deadline_miss), o.deadline_miss);
    assert_eq!(w(|w| w.dropped), o.early_drop + o.stale_drop);
    assert_eq!(w(|w| w.error_status), o.error, "every error here is an answered 500");
    assert_eq!(w(|w| w.unanswered), 0);

    // Round robin: the two frontends got the requests in turn.
    let (ha, hb) = (a.hits.load(Ordering::SeqCst), b.hits.load(Ordering::SeqCst));
    assert_eq!(ha + hb, report.sent);
    assert!(ha.abs_diff(hb) <= 1, "{ha} vs {hb}");

    let text = report.to_string();
    let line = format!(
        "accounted: sent {} = ok {} + deadline miss {} + early drop {} + stale drop {} + error {}",
        report.sent, o.ok, o.deadline_miss, o.early_drop, o.stale_drop, o.error
    );
    assert!(text.contains(&line), "{text}");
    let json = serde_json::to_value(&report).expect("json");
    assert_eq!(json["outcomes"]["early_drop"], o.early_drop);
    assert_eq!(json["sent"], report.sent);
    sa.stop().await;
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_follows_a_trace_and_sends_the_deadline() {
    let fake = Fake::new(vec![Behaviour::Ok], 1000.0);
    let srv = Server::start(Arc::new(Svc(fake.clone())), limits()).await;
    let path = std::env::temp_dir().join(format!("jigsaw-http-api-trace-{}.txt", std::process::id()));
    let trace: String = (0..20).map(|i| format!("{}\n", i * 5)).collect();
    std::fs::write(&path, format!("# offsets, ms\n{trace}")).expect("write trace");
    let args = LoadArgs {
        rps: None,
        duration: None,
        trace: Some(path.clone()),
        deadline_ms: Some(250),
        ..load_args("det", vec![srv.base.clone()])
    };
    let report = loadgen::run(&args).await.expect("run");
    let _ = std::fs::remove_file(&path);
    assert_eq!((report.sent, report.outcomes.ok), (20, 20), "{report}");
    assert_eq!(report.deadline_ms, 250.0);
    assert!(!report.deadline_is_slo);
    assert_eq!(*fake.last_deadline.lock().expect("lock"), Some(Some(Duration::from_millis(250))));
    assert_eq!(report.outcomes.get(Outcome::Ok), 20);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_fails_clearly_on_an_unknown_app_or_an_unreachable_target() {
    let fake = Fake::new(vec![Behaviour::Ok], 100.0);
    let srv = Server::start(Arc::new(Svc(fake.clone())), limits()).await;
    let e = loadgen::run(&load_args("nope", vec![srv.base.clone()])).await.expect_err("unknown app");
    assert!(e.to_string().contains("app \"nope\" is not known"), "{e:#}");
    srv.stop().await;

    let free = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = free.local_addr().expect("addr");
    drop(free);
    let e = loadgen::run(&load_args("det", vec![format!("http://{addr}")])).await.expect_err("unreachable");
    assert!(e.to_string().contains("cannot reach"), "{e:#}");
    let e = loadgen::run(&load_args("det", vec!["https://example.invalid".into()])).await.expect_err("https");
    assert!(e.to_string().contains("not supported"), "{e:#}");
    assert_eq!(fake.calls.load(Ordering::SeqCst), 0);
}

/// Slow-header ("slowloris") clients: connections that never finish their request header
/// are closed after `header_read_timeout`, while the API keeps answering everyone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_finish_a_header_are_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fake = Fake::new(vec![Behaviour::Ok], 100.0);
    let srv = Server::start(Arc::new(Svc(fake.clone())), limits()).await;
    let addr = srv.base.trim_start_matches("http://").to_string();
    let mut slow = Vec::new();
    for _ in 0..50 {
        let mut s = tokio::net::TcpStream::connect(&addr).await.expect("connect");
        s.write_all(b"POST /v2/models/det/infer HTTP/1.1\r\nHost: x\r\nContent-Ty").await.expect("half a header");
        slow.push(s);
    }
    // Everyone else is still served.
    let c = client();
    assert_eq!(get(&c, &format!("{}/v2/health/live", srv.base)).await.status, StatusCode::OK);
    // Every slow connection is closed by the server (limits(): 300 ms), long before 10 s.
    let started = tokio::time::Instant::now();
    for mut s in slow {
        let mut buf = [0u8; 512];
        let closed = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {} // a 408 before the close is fine
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "a half-sent header kept its connection open for 10 s");
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    srv.stop().await;
}

/// A scratch directory removed on drop.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let d = std::env::temp_dir().join(format!("jigsaw-http-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("scratch dir");
        Scratch(d)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Replace `path` atomically (write a sibling, rename it over).
fn replace_file(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

const TOKEN_A: &str = "first-token-0123456789";
const TOKEN_B: &str = "second-token-9876543210";

/// Bearer tokens: inference, model metadata and /metrics need one; the health probes and
/// `/v2` do not; a wrong or missing token gets 401 with `WWW-Authenticate: Bearer`; a
/// replaced token file is picked up without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_guard_inference_and_metadata_but_not_health() {
    let dir = Scratch::new("tokens");
    let path = dir.0.join("tokens");
    std::fs::write(&path, format!("# test tokens\n{TOKEN_A}\n")).expect("write tokens");
    let tokens = Arc::new(TokenFile::load(&path).expect("token file"));
    let fake = Fake::new(vec![Behaviour::Ok], 100.0);
    let security = HttpSecurity { tokens: Some(tokens), tls: None };
    let srv = Server::start_with(Arc::new(Svc(fake.clone())), limits(), security).await;
    let c = client();
    let b = &srv.base;
    let auth = |t: &str| format!("Bearer {t}");

    // Open without a token.
    for path in ["/v2/health/live", "/v2/health/ready", "/v2"] {
        assert_eq!(get(&c, &format!("{b}{path}")).await.status, StatusCode::OK, "{path}");
    }
    // Guarded: no token, a wrong one, another scheme.
    let infer_url = format!("{b}/v2/models/det/infer");
    for headers in
        [vec![], vec![("authorization", auth("not-a-listed-token-000"))], vec![("authorization", "Basic eDp5".into())]]
    {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        for (method, url, body) in [
            (Method::POST, infer_url.clone(), VALID),
            (Method::GET, format!("{b}/v2/models/det"), ""),
            (Method::GET, format!("{b}/v2/models/det/ready"), ""),
            (Method::GET, format!("{b}/metrics"), ""),
        ] {
            let a = call(&c, method, &url, &h, body).await;
            assert_error(&a, 401, "unauthorized");
            let challenge = a.headers.get(header::WWW_AUTHENTICATE).expect("WWW-Authenticate").to_str().expect("ascii");
            assert!(challenge.starts_with("Bearer"), "{challenge}");
            assert_eq!(
                challenge.contains("invalid_token"),
                h.iter().any(|(_, v)| v.starts_with("Bearer")),
                "{challenge}"
            );
        }
    }
    assert_eq!(fake.calls.load(Ordering::SeqCst), 0, "no unauthorized request reached the service");
    // The right token.
    let a = call(&c, Method::POST, &infer_url, &[("authorization", &auth(TOKEN_A))], VALID).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    let a = call(&c, Method::GET, &format!("{b}/v2/models/det"), &[("authorization", &auth(TOKEN_A))], "").await;
    assert_eq!((a.status, a.json["name"].as_str()), (StatusCode::OK, Some("det")), "{}", a.json);

    // Replace the file: B in (as a hash), A out, without a restart.
    let hash: String = {
        let d = ring::digest::digest(&ring::digest::SHA256, TOKEN_B.as_bytes());
        d.as_ref().iter().map(|x| format!("{x:02x}")).collect()
    };
    replace_file(&path, &format!("ci:{hash}\n"));
    let t0 = Instant::now();
    loop {
        let a = call(&c, Method::POST, &infer_url, &[("authorization", &auth(TOKEN_B))], VALID).await;
        if a.status == StatusCode::OK {
            break;
        }
        assert_error(&a, 401, "unauthorized");
        assert!(t0.elapsed() < Duration::from_secs(10), "the new token never worked");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let a = call(&c, Method::POST, &infer_url, &[("authorization", &auth(TOKEN_A))], VALID).await;
    assert_error(&a, 401, "unauthorized");
    // A file that no longer parses keeps the tokens in force.
    replace_file(&path, "short\n");
    tokio::time::sleep(jigsaw_agent::dataplane::auth::RECHECK + Duration::from_millis(100)).await;
    let a = call(&c, Method::POST, &infer_url, &[("authorization", &auth(TOKEN_B))], VALID).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    srv.stop().await;
}

/// A CA and a `localhost` certificate it signed, written as PEM files; the CA certificate.
fn https_files(
    dir: &std::path::Path,
) -> (std::path::PathBuf, std::path::PathBuf, rustls::pki_types::CertificateDer<'static>) {
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let ca_issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().expect("key");
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .expect("params")
        .signed_by(&key, &ca_issuer)
        .expect("leaf");
    let (cert_path, key_path) = (dir.join("https.pem"), dir.join("https.key"));
    std::fs::write(&cert_path, leaf.pem()).expect("write cert");
    std::fs::write(&key_path, key.serialize_pem()).expect("write key");
    (cert_path, key_path, ca.der().clone())
}

/// One HTTP/1.1 request over `io`; the whole answer as text.
async fn raw_request<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(io: &mut S, req: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    io.write_all(req.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), io.read_to_end(&mut out)).await.expect("answer in time");
    String::from_utf8_lossy(&out).to_string()
}

/// HTTPS: a client trusting the CA is served; plain HTTP to the TLS port gets no HTTP answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_a_client_with_the_ca_and_refuses_plain_http() {
    let dir = Scratch::new("tls");
    let (cert, key, ca) = https_files(&dir.0);
    let tls = http::tls_config(&cert, &key).expect("tls config");
    let fake = Fake::new(vec![Behaviour::Ok], 100.0);
    let srv =
        Server::start_with(Arc::new(Svc(fake.clone())), limits(), HttpSecurity { tokens: None, tls: Some(tls) }).await;
    let addr = srv.base.trim_start_matches("http://").to_string();

    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).expect("root");
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    for (req, want) in [
        ("GET /v2/health/live HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n".to_string(), "\"live\":true"),
        (
            format!(
                "POST /v2/models/det/infer HTTP/1.1\r\nhost: localhost\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{VALID}",
                VALID.len()
            ),
            "\"model_name\":\"det\"",
        ),
    ] {
        let tcp = tokio::net::TcpStream::connect(&addr).await.expect("connect");
        let mut tls = connector.connect(name.clone(), tcp).await.expect("TLS handshake with the CA");
        let answer = raw_request(&mut tls, &req).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.contains(want), "{answer}");
    }
    // Plain HTTP to the TLS port: the handshake fails, no HTTP answer comes back.
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.expect("connect");
    let answer = raw_request(&mut tcp, "GET /v2/health/live HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await;
    assert!(!answer.contains("HTTP/1.1"), "plain HTTP was answered over the TLS port: {answer:?}");
    // A client that does not trust the CA fails its handshake.
    let strangers = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(&addr).await.expect("connect");
    assert!(tokio_rustls::TlsConnector::from(Arc::new(strangers)).connect(name, tcp).await.is_err());
    assert_eq!(fake.calls.load(Ordering::SeqCst), 1);
    srv.stop().await;
}

/// Send a GET on `s` and read one keep-alive answer's status line (headers up to the blank
/// line, then the declared body).
async fn keep_alive_get(s: &mut tokio::net::TcpStream, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    let t0 = Instant::now();
    while !buf.ends_with(b"\r\n\r\n") {
        assert!(t0.elapsed() < Duration::from_secs(20), "no answer");
        match s.read(&mut byte).await {
            Ok(1) => buf.push(byte[0]),
            _ => break,
        }
    }
    let head = String::from_utf8_lossy(&buf).to_string();
    let len = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap_or(0))
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    let _ = s.read_exact(&mut body).await;
    head.lines().next().unwrap_or("").to_string()
}

/// With `max_connections` = 2, two keep-alive connections are served while a third is
/// answered 503 and closed; once one of the two closes, a new connection is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_are_refused_while_the_first_work() {
    use tokio::io::AsyncReadExt;
    let fake = Fake::new(vec![Behaviour::Ok], 100.0);
    let lim = HttpLimits { max_connections: 2, header_read_timeout: Duration::from_secs(30), ..limits() };
    let srv = Server::start(Arc::new(Svc(fake.clone())), lim).await;
    let addr = srv.base.trim_start_matches("http://").to_string();
    let mut first = Vec::new();
    for _ in 0..2 {
        let mut s = tokio::net::TcpStream::connect(&addr).await.expect("connect");
        assert!(keep_alive_get(&mut s, "/v2/health/live").await.starts_with("HTTP/1.1 200"));
        first.push(s);
    }
    let mut third = tokio::net::TcpStream::connect(&addr).await.expect("the kernel accepts the TCP connection");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), third.read_to_end(&mut out)).await.expect("closed in time");
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 503"), "the third connection: {text:?}");
    assert!(text.contains("\"outcome\":\"overloaded\""), "{text}");
    // The first two still work.
    for s in &mut first {
        assert!(keep_alive_get(s, "/v2/health/ready").await.starts_with("HTTP/1.1 200"));
    }
    // One leaves; a new connection is then served (the slot comes back when the server sees the close).
    drop(first.pop());
    let t0 = Instant::now();
    loop {
        let mut s = tokio::net::TcpStream::connect(&addr).await.expect("connect");
        if keep_alive_get(&mut s, "/v2/health/live").await.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "the freed slot never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    srv.stop().await;
}

/// A client trickling its body in holds no admission slot: with `max_in_flight` = 1, a normal
/// request is answered 200 while the slow one is still sending, and the slow one is answered
/// once its body is in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickling_body_holds_no_admission_slot() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fake = Fake::new(vec![Behaviour::Ok], 60_000.0);
    let lim = HttpLimits { max_in_flight: 1, ..limits() };
    let srv = Server::start(Arc::new(Svc(fake.clone())), lim).await;
    let addr = srv.base.trim_start_matches("http://").to_string();
    let mut slow = tokio::net::TcpStream::connect(&addr).await.expect("connect");
    let head = format!(
        "POST /v2/models/det/infer HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        VALID.len()
    );
    let (part1, part2) = VALID.split_at(VALID.len() / 2);
    slow.write_all(head.as_bytes()).await.expect("head");
    slow.write_all(part1.as_bytes()).await.expect("half the body");
    // The server has the header and half the body: its handler is reading the body. Wait
    // until it certainly is, by a request on another connection being answered after it.
    let c = client();
    assert_eq!(get(&c, &format!("{}/v2/health/live", srv.base)).await.status, StatusCode::OK);
    for _ in 0..3 {
        let a = infer(&c, &srv.base, &[], VALID).await;
        assert_eq!(a.status, StatusCode::OK, "a trickling body held the only admission slot: {}", a.json);
    }
    slow.write_all(part2.as_bytes()).await.expect("rest of the body");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), slow.read_to_end(&mut out)).await.expect("answer");
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert_eq!(fake.calls.load(Ordering::SeqCst), 4);
    srv.stop().await;
}

/// A body that stops arriving: the connection is closed after `idle_timeout`, long before
/// the request's (10-minute) deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_is_closed_after_the_idle_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fake = Fake::new(vec![Behaviour::Ok], 100.0);
    let lim = HttpLimits { idle_timeout: Duration::from_millis(300), ..limits() };
    let srv = Server::start(Arc::new(Svc(fake.clone())), lim).await;
    let addr = srv.base.trim_start_matches("http://").to_string();
    let mut s = tokio::net::TcpStream::connect(&addr).await.expect("connect");
    s.write_all(
        b"POST /v2/models/det/infer HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\nx-jigsaw-deadline-ms: 600000\r\n\r\n{\"inp",
    )
    .await
    .expect("a header and 5 bytes of body");
    let t0 = Instant::now();
    let mut buf = [0u8; 512];
    let closed = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "a stalled body kept its connection open for 20 s");
    assert!(t0.elapsed() >= Duration::from_millis(250), "closed before the idle timeout: {:?}", t0.elapsed());
    // A request that is being computed is not idle: a slow answer (2 s, idle 300 ms) arrives.
    let slow = Fake::new(vec![Behaviour::Slow(Duration::from_secs(2))], 60_000.0);
    let srv2 =
        Server::start(Arc::new(Svc(slow)), HttpLimits { idle_timeout: Duration::from_millis(300), ..limits() }).await;
    let a = infer(&client(), &srv2.base, &[], VALID).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    srv.stop().await;
    srv2.stop().await;
}

/// A large body trickling in (10 KiB/s) while it holds body memory is cut off with 408 after
/// the grace, and the memory it held serves the next large body; a large body sent at once
/// is unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_body_trickling_in_is_cut_off_and_frees_its_memory() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fake = Fake::new(vec![Behaviour::Ok], 60_000.0);
    // Room for exactly one 1 MiB body (5x its length) at a time.
    let lim = HttpLimits { max_body_bytes: 4 << 20, body_memory_bytes: 5 << 20, ..limits() };
    let srv = Server::start(Arc::new(Svc(fake.clone())), lim).await;
    let addr = srv.base.trim_start_matches("http://").to_string();
    let big = format!(
        r#"{{"pad":"{}","inputs":[{{"name":"image","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}}]}}"#,
        " ".repeat(1 << 20)
    );
    let head = |n: usize| {
        format!(
            "POST /v2/models/det/infer HTTP/1.1\r\nhost: x\r\ncontent-length: {n}\r\nx-jigsaw-deadline-ms: 600000\r\n\
             connection: close\r\n\r\n"
        )
    };
    let t0 = Instant::now();
    let mut slow = tokio::net::TcpStream::connect(&addr).await.expect("connect");
    slow.write_all(head(big.len()).as_bytes()).await.expect("head");
    let trickle = tokio::spawn(async move {
        for chunk in big.as_bytes().chunks(1024) {
            if slow.write_all(chunk).await.is_err() || t0.elapsed() > Duration::from_secs(20) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut out)).await;
        (String::from_utf8_lossy(&out).to_string(), t0.elapsed())
    });
    // Meanwhile a large body sent at once waits for the memory, then is answered.
    let fast = format!(
        r#"{{"pad":"{}","inputs":[{{"name":"image","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}}]}}"#,
        " ".repeat(1 << 20)
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let a = call(
        &client(),
        Method::POST,
        &format!("{}/v2/models/det/infer", srv.base),
        &[("x-jigsaw-deadline-ms", "600000")],
        fast,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    let waited = t0.elapsed();
    let (answer, took) = trickle.await.expect("join");
    assert!(answer.starts_with("HTTP/1.1 408"), "the trickling body: {answer:?} after {took:?}");
    assert!(answer.contains("KiB/s"), "{answer}");
    assert!(took < Duration::from_secs(10), "cut off after {took:?}");
    assert!(waited < Duration::from_secs(10), "the fast body waited {waited:?}");
    srv.stop().await;
}
