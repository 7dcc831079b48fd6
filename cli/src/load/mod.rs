//! `jigsaw load`: an open-loop load generator for the v2 HTTP API ([`jigsaw_agent::dataplane::http`]).
//!
//! [`run`] reads the application's metadata from the first target, builds one valid request
//! body from it (every input filled with seeded values, `-1` dimensions set to 1), and sends
//! that body on a schedule: seeded Poisson arrivals at `--rps` for `--duration`
//! ([`schedule::poisson_arrivals`]) or the offsets of a `--trace` file
//! ([`schedule::parse_trace`]). The schedule is open loop: each request starts at its
//! arrival offset whether or not earlier ones have answered, so a slow server cannot slow the
//! offered load, and latency is measured from the scheduled arrival (a late start counts
//! against the request, not in its favour). Requests rotate round-robin over the `--target`
//! agents, since every agent is a frontend.
//!
//! Every request sent ends in exactly one [`Outcome`]:
//!
//! | Answer | Outcome |
//! |---|---|
//! | 200 within the deadline (`--deadline-ms`, else the app's latency SLO) | ok |
//! | 200 after it | deadline miss |
//! | error body with `outcome` `deadline_miss` (504) | deadline miss |
//! | `early_drop` / `stale_drop` (503) | early / stale drop, weighted by the body's `weight` |
//! | anything else: 429, 503 `unavailable`, 500, transport errors, client timeout | error |
//!
//! The report ([`LoadReport`]) checks `sent == ok + deadline miss + early drop + stale drop +
//! error`, and gives goodput, latency percentiles, the share per outcome, SLO violations
//! weighted by fan-out, and a breakdown of every request that was not ok by cause.

pub mod schedule;

use anyhow::{bail, ensure, Context as _};
use axum::body::Bytes;
use axum::http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use jigsaw_agent::dataplane::AppMeta;
use jigsaw_protocol::infer::{parse_infer_request, InferResponse, MAX_ELEMENTS};
use jigsaw_protocol::rng::SplitMix64;
use schedule::{parse_trace, poisson_arrivals, Outcome, Tally};
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jigsaw_agent::dataplane::http::{DEADLINE_HEADER, MAX_DEADLINE_MS};

/// Arguments of `jigsaw load`.
#[derive(clap::Args, Debug, Clone)]
pub struct LoadArgs {
    /// Application to send requests to.
    #[arg(long)]
    pub app: String,
    /// Mean request rate of the Poisson schedule, requests per second.
    #[arg(long, required_unless_present = "trace", conflicts_with = "trace")]
    pub rps: Option<f64>,
    /// How long to send: `30s`, `500ms`, `2m`, `1.5s`. With `--trace`, only offsets before it are
    /// sent.
    #[arg(long, value_parser = parse_duration, required_unless_present = "trace")]
    pub duration: Option<Duration>,
    /// Trace file: one arrival offset in milliseconds per line; replaces the Poisson schedule.
    #[arg(long)]
    pub trace: Option<PathBuf>,
    /// Seed of the Poisson schedule and of the request's input values.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Base URL of an agent (`http://127.0.0.1:8080`); repeat to rotate requests over several
    /// (default: every agent of the local cluster in --dir).
    #[arg(long = "target")]
    pub targets: Vec<String>,
    /// Deadline sent with every request (`x-jigsaw-deadline-ms`); default: the app's latency SLO.
    #[arg(long)]
    pub deadline_ms: Option<u64>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Also report each window of this length (by scheduled arrival): `10s`.
    #[arg(long, value_parser = parse_duration)]
    pub window: Option<Duration>,
}

/// How one request ended, times in µs from the first scheduled arrival (for `jigsaw replay`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Served {
    /// Scheduled arrival.
    pub at_us: u64,
    /// Latency from the scheduled arrival to the answer.
    pub latency_us: u64,
    /// Fan-out weight (a drop counts this many violations; 1 otherwise).
    pub weight: u32,
    /// Outcome.
    pub outcome: Outcome,
}

/// A schedule given by the caller instead of `--rps`/`--trace` ([`run_with`]).
#[derive(Debug, Clone, Default)]
pub struct Schedule {
    /// Arrival offsets, µs, sorted.
    pub arrivals: Vec<u64>,
    /// Length of the schedule, s.
    pub duration_s: f64,
    /// How the report names it.
    pub name: String,
}

/// One window of a run, by scheduled arrival.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Window {
    /// Start of the window, seconds from the first arrival.
    pub start_s: f64,
    /// Requests scheduled in it.
    pub sent: u64,
    /// Answered 200 within the deadline.
    pub ok: u64,
    /// Answered 200 late, or 504.
    pub deadline_miss: u64,
    /// Answered 503 early / stale drop.
    pub dropped: u64,
    /// Answered with another error status (503 unavailable, 429, 500, ...).
    pub error_status: u64,
    /// Never answered: reset or closed connections no agent answered, client timeouts.
    pub unanswered: u64,
    /// Every request that was not ok, by cause (`503 unavailable`, `504 deadline_miss`, ...).
    pub causes: BTreeMap<String, u64>,
}

/// Parse a duration: a non-negative number followed by `ms`, `s`, `m` or `h` (`500ms`,
/// `30s`, `1.5m`, `2h`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let scale = match unit.trim() {
        "ms" => 1e-3,
        "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        "" => return Err(format!("`{s}` has no unit: write e.g. `30s`, `500ms` or `2m`")),
        u => return Err(format!("`{s}`: unknown unit `{u}` (use ms, s, m or h)")),
    };
    let n: f64 = num.parse().map_err(|_| format!("`{s}` is not a duration like `30s`, `500ms` or `2m`"))?;
    Duration::try_from_secs_f64(n * scale).map_err(|e| format!("`{s}`: {e}"))
}

/// A value per outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct PerOutcome<T> {
    /// Answered within the deadline.
    pub ok: T,
    /// Answered late, or 504.
    pub deadline_miss: T,
    /// Dropped early.
    pub early_drop: T,
    /// Dropped stale.
    pub stale_drop: T,
    /// Anything else.
    pub error: T,
}

impl<T: Copy> PerOutcome<T> {
    /// The value for `o`.
    pub fn get(&self, o: Outcome) -> T {
        match o {
            Outcome::Ok => self.ok,
            Outcome::DeadlineMiss => self.deadline_miss,
            Outcome::EarlyDrop => self.early_drop,
            Outcome::StaleDrop => self.stale_drop,
            Outcome::Error => self.error,
        }
    }

    fn slot(&mut self, o: Outcome) -> &mut T {
        match o {
            Outcome::Ok => &mut self.ok,
            Outcome::DeadlineMiss => &mut self.deadline_miss,
            Outcome::EarlyDrop => &mut self.early_drop,
            Outcome::StaleDrop => &mut self.stale_drop,
            Outcome::Error => &mut self.error,
        }
    }

    fn from_fn(mut f: impl FnMut(Outcome) -> T) -> PerOutcome<T> {
        PerOutcome {
            ok: f(Outcome::Ok),
            deadline_miss: f(Outcome::DeadlineMiss),
            early_drop: f(Outcome::EarlyDrop),
            stale_drop: f(Outcome::StaleDrop),
            error: f(Outcome::Error),
        }
    }
}

/// Latency percentiles, ms (`None` when no request qualified).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: Option<f64>,
    /// 90th percentile.
    pub p90: Option<f64>,
    /// 99th percentile.
    pub p99: Option<f64>,
}

/// What a load run measured.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LoadReport {
    /// Application.
    pub app: String,
    /// Base URLs, in rotation order.
    pub targets: Vec<String>,
    /// The schedule: `poisson 200 rps, seed 1` or `trace FILE`.
    pub schedule: String,
    /// Length of the schedule, s (goodput and offered rate are per this).
    pub duration_s: f64,
    /// From the first arrival to the last answer, s.
    pub wall_s: f64,
    /// Deadline each request was judged by, ms.
    pub deadline_ms: f64,
    /// Whether that deadline is the app's SLO (no `--deadline-ms`).
    pub deadline_is_slo: bool,
    /// Requests sent.
    pub sent: u64,
    /// Requests per outcome; they sum to `sent`.
    pub outcomes: PerOutcome<u64>,
    /// Requests per outcome weighted by fan-out multiplicity.
    pub weighted: PerOutcome<u64>,
    /// Share of `sent` per outcome, %.
    pub share_pct: PerOutcome<f64>,
    /// Ok requests per second of schedule.
    pub goodput_rps: f64,
    /// Requests sent per second of schedule.
    pub offered_rps: f64,
    /// Latency of ok requests, ms.
    pub latency_ok_ms: Percentiles,
    /// Latency of every 200 answer (ok or late), ms.
    pub latency_answered_ms: Percentiles,
    /// Fan-out-weighted requests that missed the SLO (every outcome but ok).
    pub slo_violations_weighted: u64,
    /// All requests, fan-out weighted.
    pub total_weighted: u64,
    /// `slo_violations_weighted` as a share of `total_weighted`, %.
    pub slo_violation_pct: f64,
    /// Requests that were not ok, by cause (`429 overloaded`, `503 early_drop`,
    /// `200 after deadline`, `transport error`, `client timeout`, ...).
    pub causes: BTreeMap<String, u64>,
    /// The first transport error's message, if any.
    pub first_transport_error: Option<String>,
    /// Longest delay between a request's scheduled arrival and its start, ms.
    pub max_schedule_lag_ms: f64,
    /// Requests whose frontend refused, reset or closed the connection before any answer (an
    /// agent that is down, stopping or killed) and that were sent again to the next target,
    /// as a client behind a load balancer would be; each is counted once, by how it finally
    /// ended.
    pub connect_retries: u64,
    /// Per-window counts (with `--window`).
    pub windows: Vec<Window>,
    /// Every request, in the order they ended (not in the JSON report).
    #[serde(skip)]
    pub requests: Vec<Served>,
}

impl LoadReport {
    /// The accounting line: `accounted: sent N = ok a + deadline miss b + early drop c +
    /// stale drop d + error e`.
    pub fn accounted(&self) -> String {
        let o = &self.outcomes;
        format!(
            "accounted: sent {} = ok {} + deadline miss {} + early drop {} + stale drop {} + error {}",
            self.sent, o.ok, o.deadline_miss, o.early_drop, o.stale_drop, o.error
        )
    }
}

fn fmt_ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), |ms| format!("{ms:.2} ms"))
}

fn fmt_percentiles(p: &Percentiles) -> String {
    format!("p50 {}  p90 {}  p99 {}", fmt_ms(p.p50), fmt_ms(p.p90), fmt_ms(p.p99))
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "load {}: {} over {:.1} s to {} target(s); deadline {:.0} ms{}",
            self.app,
            self.schedule,
            self.duration_s,
            self.targets.len(),
            self.deadline_ms,
            if self.deadline_is_slo { " (the app's SLO)" } else { "" }
        )?;
        writeln!(f, "{}", self.accounted())?;
        writeln!(
            f,
            "goodput {:.1} req/s of {:.1} offered; last answer after {:.2} s; max schedule lag {:.2} ms",
            self.goodput_rps, self.offered_rps, self.wall_s, self.max_schedule_lag_ms
        )?;
        writeln!(f, "latency of ok requests:   {}", fmt_percentiles(&self.latency_ok_ms))?;
        writeln!(f, "latency of all 200s:      {}", fmt_percentiles(&self.latency_answered_ms))?;
        for o in Outcome::ALL {
            writeln!(
                f,
                "  {:<14} {:>8}  {:>6.2} %   weighted by fan-out {:>8}",
                outcome_name(o),
                self.outcomes.get(o),
                self.share_pct.get(o),
                self.weighted.get(o)
            )?;
        }
        writeln!(
            f,
            "SLO violations (fan-out weighted): {} of {} ({:.2} %)",
            self.slo_violations_weighted, self.total_weighted, self.slo_violation_pct
        )?;
        if !self.causes.is_empty() {
            writeln!(f, "not ok, by cause:")?;
            for (cause, n) in &self.causes {
                writeln!(f, "  {cause:<24} {n:>8}")?;
            }
        }
        if !self.windows.is_empty() {
            writeln!(
                f,
                "per window (by scheduled arrival): start_s sent ok deadline_miss dropped error_status unanswered"
            )?;
            for w in &self.windows {
                writeln!(
                    f,
                    "  {:>7.1} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6}",
                    w.start_s, w.sent, w.ok, w.deadline_miss, w.dropped, w.error_status, w.unanswered
                )?;
            }
        }
        if self.connect_retries > 0 {
            writeln!(
                f,
                "no answer from a frontend (refused or closed), sent to the next agent: {}",
                self.connect_retries
            )?;
        }
        if let Some(e) = &self.first_transport_error {
            writeln!(f, "first transport error: {e}")?;
        }
        Ok(())
    }
}

fn outcome_name(o: Outcome) -> &'static str {
    match o {
        Outcome::Ok => "ok",
        Outcome::DeadlineMiss => "deadline miss",
        Outcome::EarlyDrop => "early drop",
        Outcome::StaleDrop => "stale drop",
        Outcome::Error => "error",
    }
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A target's base URL, validated.
#[derive(Debug, Clone)]
struct Target {
    base: String,
}

impl Target {
    fn parse(url: &str) -> anyhow::Result<Target> {
        let base = url.trim().trim_end_matches('/');
        let uri: axum::http::Uri = base.parse().with_context(|| format!("target `{url}` is not a URL"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(s) => bail!("target `{url}`: scheme `{s}` is not supported; use http://HOST:PORT"),
            None => bail!("target `{url}` needs a scheme: http://HOST:PORT"),
        }
        ensure!(uri.authority().is_some(), "target `{url}` has no host: use http://HOST:PORT");
        ensure!(uri.query().is_none(), "target `{url}` must not have a query");
        Ok(Target { base: base.to_string() })
    }

    fn model_uri(&self, app: &str, suffix: &str) -> anyhow::Result<axum::http::Uri> {
        let s = format!("{}/v2/models/{}{suffix}", self.base, encode_segment(app));
        s.parse().with_context(|| format!("`{s}` is not a valid URL"))
    }
}

/// Percent-encode one path segment (everything but RFC 3986 unreserved characters).
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An error with its chain of causes, on one line.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

/// Why an exchange failed: `connect` when the frontend never answered: the connection was
/// refused, reset or closed before the response began (a frontend that is stopping or was
/// killed). Such a request is sent to the next target, as a load balancer would (inference
/// requests have no side effects, so a repeat is safe); a failure after the response began
/// is not retried.
struct ExchangeError {
    message: String,
    connect: bool,
}

/// Send one request and read the whole answer.
async fn exchange(client: &HttpClient, req: Request<Full<Bytes>>) -> Result<(StatusCode, Bytes), ExchangeError> {
    let resp = client.request(req).await.map_err(|e| ExchangeError { message: error_chain(&e), connect: true })?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| ExchangeError { message: error_chain(&e), connect: false })?
        .to_bytes();
    Ok((status, body))
}

/// The `error` field of a JSON error body, or the body as text.
fn error_message(body: &Bytes) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(200).collect())
}

async fn fetch_meta(client: &HttpClient, target: &Target, app: &str) -> anyhow::Result<AppMeta> {
    let uri = target.model_uri(app, "")?;
    let req = Request::builder().method(Method::GET).uri(uri.clone()).body(Full::new(Bytes::new()))?;
    let (status, body) = match tokio::time::timeout(Duration::from_secs(10), exchange(client, req)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => bail!("cannot reach {}: {}", target.base, e.message),
        Err(_) => bail!("{uri} did not answer within 10 s"),
    };
    if status == StatusCode::NOT_FOUND {
        bail!("app {app:?} is not known to {}: {}", target.base, error_message(&body));
    }
    ensure!(status == StatusCode::OK, "{uri} answered {status}: {}", error_message(&body));
    serde_json::from_slice(&body).with_context(|| format!("{uri} returned invalid model metadata"))
}

/// One valid v2 request body for `meta`: every input with its declared shape (`-1` → 1),
/// filled with values drawn from `seed`.
pub fn request_body(meta: &AppMeta, seed: u64) -> anyhow::Result<String> {
    ensure!(!meta.inputs.is_empty(), "app {:?} declares no inputs", meta.name);
    let mut rng = SplitMix64::new(seed ^ 0x5EED_DA7A_0000_0001);
    let mut inputs = Vec::new();
    for t in &meta.inputs {
        let shape: Vec<u64> = t
            .shape
            .iter()
            .map(|&d| match d {
                -1 => Ok(1),
                d => u64::try_from(d).map_err(|_| anyhow::anyhow!("input {:?}: dimension {d} is invalid", t.name)),
            })
            .collect::<anyhow::Result<_>>()?;
        let n = shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d)).filter(|&n| n <= MAX_ELEMENTS);
        let n = n.with_context(|| format!("input {:?}: shape {:?} has too many elements", t.name, t.shape))?;
        let data: Vec<serde_json::Value> = (0..n)
            .map(|_| match t.datatype.as_str() {
                "BOOL" => serde_json::Value::Bool(rng.next_u64() & 1 == 1),
                "BYTES" => serde_json::Value::String(format!("{:x}", rng.next_u64())),
                "FP16" | "FP32" | "FP64" => serde_json::json!(((rng.unit() * 2.0 - 1.0) * 1e4).round() / 1e4),
                t if t.starts_with("UINT") => serde_json::json!(rng.below(100)),
                _ => serde_json::json!(rng.below(200) as i64 - 100),
            })
            .collect();
        inputs.push(serde_json::json!({ "name": t.name, "shape": shape, "datatype": t.datatype, "data": data }));
    }
    let body = serde_json::json!({ "inputs": inputs }).to_string();
    parse_infer_request(body.as_bytes())
        .with_context(|| format!("the request built from app {:?}'s metadata is invalid", meta.name))?;
    Ok(body)
}

/// How one request ended.
#[derive(Debug)]
struct Ended {
    outcome: Outcome,
    latency_us: u64,
    weight: u32,
    answered: bool,
    cause: Option<String>,
    transport_error: Option<String>,
    /// Sent again to another target after a refused connection.
    retried: bool,
    /// Scheduled arrival, µs from the first.
    at_us: u64,
}

/// Classify an answer (status + body) received `latency` after the scheduled arrival.
fn classify(status: StatusCode, body: &Bytes, latency: Duration, deadline: Duration) -> (Outcome, u32, String) {
    if status == StatusCode::OK {
        return match serde_json::from_slice::<InferResponse>(body) {
            Err(_) => (Outcome::Error, 1, "200 invalid body".into()),
            Ok(_) if latency <= deadline => (Outcome::Ok, 1, String::new()),
            Ok(_) => (Outcome::DeadlineMiss, 1, "200 after deadline".into()),
        };
    }
    let v: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let outcome_field = v.as_ref().and_then(|v| v.get("outcome")?.as_str().map(str::to_string));
    let weight =
        v.as_ref().and_then(|v| v.get("weight")?.as_u64()).map_or(1, |w| u32::try_from(w).unwrap_or(u32::MAX).max(1));
    let outcome = match outcome_field.as_deref() {
        Some("early_drop") => Outcome::EarlyDrop,
        Some("stale_drop") => Outcome::StaleDrop,
        Some("deadline_miss") => Outcome::DeadlineMiss,
        _ => Outcome::Error,
    };
    let cause = format!("{} {}", status.as_u16(), outcome_field.as_deref().unwrap_or("(no outcome)"));
    (outcome, weight, cause)
}

async fn one_request(
    client: HttpClient,
    make: Arc<dyn Fn(usize) -> Option<Request<Full<Bytes>>> + Send + Sync>,
    (first, targets, at_us): (usize, usize, u64),
    arrival: Instant,
    deadline: Duration,
    client_timeout: Duration,
) -> Ended {
    let give_up = arrival + client_timeout;
    let mut attempt = 0;
    let result = loop {
        let Some(req) = make(first + attempt) else {
            break Ok(Err(ExchangeError { message: "request could not be built".into(), connect: false }));
        };
        let left = give_up.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, exchange(&client, req)).await {
            // Refused, or closed before any answer: this frontend is down or stopping; the
            // next target gets the request.
            Ok(Err(e)) if e.connect && attempt + 1 < targets => attempt += 1,
            other => break other,
        }
    };
    let retried = attempt > 0;
    let latency = arrival.elapsed();
    let latency_us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
    let fail = |cause: &str, transport_error: Option<String>| Ended {
        outcome: Outcome::Error,
        latency_us,
        weight: 1,
        answered: false,
        cause: Some(cause.into()),
        transport_error,
        retried,
        at_us,
    };
    match result {
        Err(_) => fail("client timeout", None),
        Ok(Err(e)) if e.connect => fail("no frontend answered (every target)", Some(e.message)),
        Ok(Err(e)) => fail("transport error", Some(e.message)),
        Ok(Ok((status, body))) => {
            let (outcome, weight, cause) = classify(status, &body, latency, deadline);
            Ended {
                outcome,
                latency_us,
                weight,
                answered: status == StatusCode::OK,
                cause: (outcome != Outcome::Ok).then_some(cause),
                transport_error: None,
                retried,
                at_us,
            }
        }
    }
}

/// Accumulates the outcomes of a run.
#[derive(Default)]
struct Acc {
    tally: Tally,
    weighted: PerOutcome<u64>,
    answered_us: Vec<u64>,
    causes: BTreeMap<String, u64>,
    first_transport_error: Option<String>,
    connect_retries: u64,
    window_us: Option<u64>,
    windows: BTreeMap<u64, Window>,
    requests: Vec<Served>,
}

impl Acc {
    fn record(&mut self, e: Ended) {
        self.connect_retries += u64::from(e.retried);
        self.requests.push(Served { at_us: e.at_us, latency_us: e.latency_us, weight: e.weight, outcome: e.outcome });
        if let Some(w) = self.window_us.filter(|w| *w > 0) {
            let k = e.at_us / w;
            let win = self.windows.entry(k).or_insert(Window { start_s: (k * w) as f64 / 1e6, ..Window::default() });
            win.sent += 1;
            if let Some(c) = &e.cause {
                *win.causes.entry(c.clone()).or_default() += 1;
            }
            match e.outcome {
                Outcome::Ok => win.ok += 1,
                Outcome::DeadlineMiss => win.deadline_miss += 1,
                Outcome::EarlyDrop | Outcome::StaleDrop => win.dropped += 1,
                Outcome::Error if e.cause.as_deref().is_some_and(|c| c.starts_with(|ch: char| ch.is_ascii_digit())) => {
                    win.error_status += 1
                }
                Outcome::Error => win.unanswered += 1,
            }
        }
        self.tally.record(e.outcome, e.latency_us, e.weight);
        *self.weighted.slot(e.outcome) += u64::from(e.weight.max(1));
        if e.answered {
            self.answered_us.push(e.latency_us);
        }
        if let Some(c) = e.cause {
            *self.causes.entry(c).or_default() += 1;
        }
        if self.first_transport_error.is_none() {
            self.first_transport_error = e.transport_error;
        }
    }

    fn joined(&mut self, r: Result<Ended, tokio::task::JoinError>) {
        match r {
            Ok(e) => self.record(e),
            Err(e) => self.record(Ended {
                outcome: Outcome::Error,
                latency_us: 0,
                weight: 1,
                answered: false,
                cause: Some("request task failed".into()),
                transport_error: Some(e.to_string()),
                retried: false,
                at_us: 0,
            }),
        }
    }
}

fn quantiles_ms(mut v: Vec<u64>) -> Percentiles {
    if v.is_empty() {
        return Percentiles::default();
    }
    v.sort_unstable();
    let q = |q: f64| Some(v[((v.len() - 1) as f64 * q).round() as usize] as f64 / 1e3);
    Percentiles { p50: q(0.5), p90: q(0.9), p99: q(0.99) }
}

/// Run `jigsaw load`: send the schedule, wait for every answer, and report.
pub async fn run(args: &LoadArgs) -> anyhow::Result<LoadReport> {
    run_with(args, None).await
}

/// [`run`] with the caller's `schedule` in place of `--rps`/`--trace` when given.
pub async fn run_with(args: &LoadArgs, schedule: Option<Schedule>) -> anyhow::Result<LoadReport> {
    ensure!(!args.targets.is_empty(), "give at least one --target http://HOST:PORT");
    let targets: Vec<Target> = args.targets.iter().map(|t| Target::parse(t)).collect::<anyhow::Result<_>>()?;
    if let Some(ms) = args.deadline_ms {
        ensure!((1..=MAX_DEADLINE_MS).contains(&ms), "--deadline-ms must be in 1..={MAX_DEADLINE_MS}, not {ms}");
    }
    let client: HttpClient =
        Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(30)).build_http::<Full<Bytes>>();
    // The first target that answers describes the app (one may be down).
    let mut meta = Err(anyhow::anyhow!("no target"));
    for t in &targets {
        meta = fetch_meta(&client, t, &args.app).await;
        if meta.is_ok() {
            break;
        }
    }
    let meta = meta?;
    let body = Bytes::from(request_body(&meta, args.seed)?);

    let (arrivals, duration_s, schedule) = match (schedule, &args.trace) {
        (Some(s), _) => (s.arrivals, s.duration_s.max(1e-3), s.name),
        (None, Some(path)) => {
            let text =
                std::fs::read_to_string(path).with_context(|| format!("cannot read trace {}", path.display()))?;
            let mut offsets = parse_trace(&text, &path.display().to_string())?;
            if let Some(d) = args.duration {
                let limit = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
                offsets.retain(|&t| t < limit);
            }
            let span_s = args
                .duration
                .map_or_else(|| offsets.last().map_or(0.0, |&t| t as f64 / 1e6).max(1e-3), |d| d.as_secs_f64());
            (offsets, span_s, format!("trace {}", path.display()))
        }
        (None, None) => {
            let rps = args.rps.context("give --rps or --trace")?;
            ensure!(rps.is_finite() && rps > 0.0, "--rps must be a positive number, not {rps}");
            let d = args.duration.context("give --duration (e.g. 30s) with --rps")?;
            ensure!(!d.is_zero(), "--duration must be positive");
            let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
            (poisson_arrivals(args.seed, rps, us), d.as_secs_f64(), format!("poisson {rps} rps, seed {}", args.seed))
        }
    };

    let deadline = match args.deadline_ms {
        Some(ms) => Duration::from_millis(ms),
        None => {
            let slo = meta.latency_slo_ms;
            ensure!(
                slo.is_finite() && slo > 0.0,
                "app {:?} has no usable latency SLO ({slo} ms); give --deadline-ms",
                meta.name
            );
            Duration::from_secs_f64(slo.min(MAX_DEADLINE_MS as f64) / 1e3)
        }
    };
    // The server answers by deadline + grace; this only catches a server that never does.
    let client_timeout = deadline * 2 + Duration::from_secs(5);
    let uris: Vec<axum::http::Uri> =
        targets.iter().map(|t| t.model_uri(&args.app, "/infer")).collect::<anyhow::Result<_>>()?;
    let deadline_header = args.deadline_ms;
    let make_req: Arc<dyn Fn(usize) -> Option<Request<Full<Bytes>>> + Send + Sync> = Arc::new(move |i: usize| {
        let mut b = Request::builder()
            .method(Method::POST)
            .uri(uris[i % uris.len()].clone())
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(ms) = deadline_header {
            b = b.header(DEADLINE_HEADER, ms.to_string());
        }
        b.body(Full::new(body.clone())).ok()
    });
    let n_targets = targets.len();
    let mut acc =
        Acc { window_us: args.window.map(|w| u64::try_from(w.as_micros()).unwrap_or(u64::MAX)), ..Acc::default() };
    let mut set = tokio::task::JoinSet::new();
    let mut max_lag = Duration::ZERO;
    let start = Instant::now();
    for (i, &offset) in arrivals.iter().enumerate() {
        let at = start + Duration::from_micros(offset);
        tokio::time::sleep_until(at.into()).await;
        max_lag = max_lag.max(at.elapsed());
        acc.tally.sent();
        set.spawn(one_request(client.clone(), make_req.clone(), (i, n_targets, offset), at, deadline, client_timeout));
        while let Some(r) = set.try_join_next() {
            acc.joined(r);
        }
    }
    while let Some(r) = set.join_next().await {
        acc.joined(r);
    }
    let wall_s = start.elapsed().as_secs_f64();

    let t = &acc.tally;
    let sent = t.sent_count();
    let outcomes = PerOutcome::from_fn(|o| t.count(o));
    let sum: u64 = Outcome::ALL.iter().map(|&o| outcomes.get(o)).sum();
    ensure!(sent == sum && sent == t.ended(), "accounting is broken: sent {sent} but {sum} requests ended");
    let weighted = acc.weighted;
    let total_weighted: u64 = Outcome::ALL.iter().map(|&o| weighted.get(o)).sum();
    let slo_violations_weighted = total_weighted - weighted.ok;
    let pct = |n: u64, of: u64| if of == 0 { 0.0 } else { 100.0 * n as f64 / of as f64 };
    let q = |x: f64| t.quantile_us(x).map(|us| us as f64 / 1e3);
    Ok(LoadReport {
        app: args.app.clone(),
        targets: targets.iter().map(|t| t.base.clone()).collect(),
        schedule,
        duration_s,
        wall_s,
        deadline_ms: deadline.as_secs_f64() * 1e3,
        deadline_is_slo: args.deadline_ms.is_none(),
        sent,
        outcomes,
        weighted,
        share_pct: PerOutcome::from_fn(|o| pct(outcomes.get(o), sent)),
        goodput_rps: outcomes.ok as f64 / duration_s.max(1e-9),
        offered_rps: sent as f64 / duration_s.max(1e-9),
        latency_ok_ms: Percentiles { p50: q(0.5), p90: q(0.9), p99: q(0.99) },
        latency_answered_ms: quantiles_ms(std::mem::take(&mut acc.answered_us)),
        slo_violations_weighted,
        total_weighted,
        slo_violation_pct: pct(slo_violations_weighted, total_weighted),
        causes: std::mem::take(&mut acc.causes),
        first_transport_error: acc.first_transport_error.take(),
        max_schedule_lag_ms: max_lag.as_secs_f64() * 1e3,
        connect_retries: acc.connect_retries,
        windows: std::mem::take(&mut acc.windows).into_values().collect(),
        requests: std::mem::take(&mut acc.requests),
    })
}

/// `jigsaw load`: targets from `--target`, else every agent of the cluster in `dir`.
pub fn cmd_load(args: &LoadArgs, dir: &std::path::Path) -> anyhow::Result<String> {
    let mut args = args.clone();
    if args.targets.is_empty() {
        let c = crate::cluster::LocalCluster::load(dir)
            .with_context(|| "no --target given and no cluster to take the agents from")?;
        args.targets = c.nodes.iter().filter_map(|n| n.http.clone()).collect();
        if args.targets.is_empty() {
            bail!("no agent of {} serves the inference API ([node.serve] http)", dir.display());
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let report = rt.block_on(run(&args))?;
    Ok(if args.json { format!("{}\n", serde_json::to_string_pretty(&report)?) } else { format!("{report}") })
}

#[cfg(test)]
mod tests {
    use super::*;
    use jigsaw_agent::dataplane::TensorMeta;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration(" 1h "), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("30").unwrap_err().contains("no unit"));
        assert!(parse_duration("3d").unwrap_err().contains("unknown unit `d`"));
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("1.2.3s").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn the_request_body_is_valid_and_seeded() {
        let meta = AppMeta {
            name: "a".into(),
            versions: vec!["1".into()],
            platform: "jigsaw".into(),
            inputs: vec![
                TensorMeta { name: "image".into(), datatype: "FP32".into(), shape: vec![-1, 3, 2, 2] },
                TensorMeta { name: "mask".into(), datatype: "BOOL".into(), shape: vec![2] },
            ],
            outputs: vec![],
            latency_slo_ms: 100.0,
        };
        let body = request_body(&meta, 1).expect("body");
        let req = parse_infer_request(body.as_bytes()).expect("valid");
        assert_eq!(req.inputs[0].shape, vec![1, 3, 2, 2]);
        assert_eq!(req.inputs[0].data.len(), 12);
        assert_eq!(req.inputs[1].data.len(), 2);
        assert_eq!(body, request_body(&meta, 1).expect("body"));
        assert_ne!(body, request_body(&meta, 2).expect("body"));
        let bad = AppMeta { inputs: vec![], ..meta.clone() };
        assert!(request_body(&bad, 1).unwrap_err().to_string().contains("no inputs"));
    }

    #[test]
    fn answers_are_classified_by_status_outcome_and_weight() {
        let ok = Bytes::from(r#"{"model_name":"a","outputs":[]}"#);
        let d = Duration::from_millis(100);
        assert_eq!(classify(StatusCode::OK, &ok, Duration::from_millis(50), d).0, Outcome::Ok);
        assert_eq!(classify(StatusCode::OK, &ok, Duration::from_millis(150), d).0, Outcome::DeadlineMiss);
        assert_eq!(classify(StatusCode::OK, &Bytes::from("x"), Duration::ZERO, d).0, Outcome::Error);
        let drop = Bytes::from(r#"{"error":"e","outcome":"early_drop","weight":3}"#);
        assert_eq!(
            classify(StatusCode::SERVICE_UNAVAILABLE, &drop, d, d),
            (Outcome::EarlyDrop, 3, "503 early_drop".into())
        );
        let stale = Bytes::from(r#"{"error":"e","outcome":"stale_drop","weight":1}"#);
        assert_eq!(classify(StatusCode::SERVICE_UNAVAILABLE, &stale, d, d).0, Outcome::StaleDrop);
        let miss = Bytes::from(r#"{"error":"e","outcome":"deadline_miss","weight":1}"#);
        assert_eq!(classify(StatusCode::GATEWAY_TIMEOUT, &miss, d, d).0, Outcome::DeadlineMiss);
        let over = Bytes::from(r#"{"error":"e","outcome":"overloaded","weight":1}"#);
        assert_eq!(classify(StatusCode::TOO_MANY_REQUESTS, &over, d, d), (Outcome::Error, 1, "429 overloaded".into()));
        assert_eq!(classify(StatusCode::BAD_GATEWAY, &Bytes::from("<html>"), d, d).2, "502 (no outcome)");
    }

    #[derive(clap::Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        load: LoadArgs,
    }

    #[test]
    fn arguments_parse_and_need_a_schedule() {
        use clap::{CommandFactory, Parser};
        Cli::command().debug_assert();
        let base = ["load", "--app", "det", "--target", "http://h:1", "--target", "http://h:2"];
        let parse = |extra: &[&str]| Cli::try_parse_from(base.iter().chain(extra)).map(|c| c.load);
        let a = parse(&["--rps", "200", "--duration", "30s", "--deadline-ms", "80", "--json"]).expect("poisson");
        assert_eq!((a.rps, a.duration, a.seed), (Some(200.0), Some(Duration::from_secs(30)), 1));
        assert_eq!((a.targets.len(), a.deadline_ms, a.json), (2, Some(80), true));
        let a = parse(&["--trace", "t.txt", "--seed", "9"]).expect("trace");
        assert_eq!((a.trace, a.rps, a.seed), (Some(PathBuf::from("t.txt")), None, 9));
        assert!(parse(&["--rps", "200"]).is_err(), "--duration is required with --rps");
        assert!(parse(&[]).is_err(), "a schedule is required");
        assert!(parse(&["--trace", "t", "--rps", "5"]).is_err(), "--rps and --trace conflict");
        let e = parse(&["--rps", "1", "--duration", "30"]).expect_err("no unit").to_string();
        assert!(e.contains("no unit"), "{e}");
        // --target is optional here (the CLI defaults it to the local cluster); `run` refuses none.
        let a = Cli::try_parse_from(["load", "--app", "det", "--rps", "1", "--duration", "1s"]).expect("no target");
        assert!(a.load.targets.is_empty());
    }

    #[test]
    fn targets_must_be_http_urls() {
        assert_eq!(Target::parse("http://127.0.0.1:8080/").expect("ok").base, "http://127.0.0.1:8080");
        assert!(Target::parse("https://x:1").unwrap_err().to_string().contains("not supported"));
        assert!(Target::parse("127.0.0.1:8080").is_err());
        let t = Target::parse("http://h:1").expect("ok");
        assert_eq!(t.model_uri("a b/c", "/infer").expect("uri").path(), "/v2/models/a%20b%2Fc/infer");
    }
}
