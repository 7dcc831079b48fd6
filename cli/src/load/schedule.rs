//! The load generator's pure parts: open-loop arrival schedules and outcome accounting.
//!
//! * [`poisson_arrivals`]: exponential inter-arrival times at a mean rate, from a seed (the
//!   same seed gives the same schedule);
//! * [`parse_trace`]: a trace file, one arrival offset in milliseconds per line (`#`
//!   comments and blank lines ignored), with errors naming the line;
//! * [`Tally`]: every request sent ends in exactly one [`Outcome`]; the report gives goodput,
//!   latency percentiles of successful requests and the share per outcome, with requests
//!   weighted by their fan-out multiplicity as in the paper (a dropped request whose task fans
//!   out k-fold counts as k violations).

use std::fmt::Write as _;

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// Answered within its deadline.
    Ok,
    /// Answered after its deadline.
    DeadlineMiss,
    /// Dropped early: it could not have met its deadline.
    EarlyDrop,
    /// Dropped stale: no instance picked it up in time.
    StaleDrop,
    /// Failed (worker crash, overload refusal, transport error).
    Error,
}

impl Outcome {
    /// All outcomes, in report order.
    pub const ALL: [Outcome; 5] =
        [Outcome::Ok, Outcome::DeadlineMiss, Outcome::EarlyDrop, Outcome::StaleDrop, Outcome::Error];

    fn name(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::DeadlineMiss => "deadline miss",
            Outcome::EarlyDrop => "early drop",
            Outcome::StaleDrop => "stale drop",
            Outcome::Error => "error",
        }
    }
}

/// Arrival offsets (µs from the start) of an open-loop Poisson process at `rps` for
/// `duration_us`, drawn from `seed`.
pub fn poisson_arrivals(seed: u64, rps: f64, duration_us: u64) -> Vec<u64> {
    let mut rng = jigsaw_protocol::rng::SplitMix64::new(seed ^ 0xA076_1D64_78BD_642F);
    let mut next = || rng.next_u64();
    let mut out = Vec::new();
    if !(rps.is_finite() && rps > 0.0) {
        return out;
    }
    let mut t = 0.0f64;
    loop {
        // u in (0, 1]: -ln(u) is finite.
        let u = ((next() >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
        t += -u.ln() / rps * 1e6;
        if t >= duration_us as f64 {
            return out;
        }
        out.push(t as u64);
    }
}

/// Why a trace file is rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{path}:{line}: {message}")]
pub struct TraceError {
    /// File.
    pub path: String,
    /// 1-based line.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// Parse a trace: one arrival offset in milliseconds per line, non-decreasing.
pub fn parse_trace(text: &str, path: &str) -> Result<Vec<u64>, TraceError> {
    let mut out: Vec<u64> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let err = |message: String| TraceError { path: path.into(), line: i + 1, message };
        let ms: f64 = line.parse().map_err(|_| err(format!("`{line}` is not a number of milliseconds")))?;
        if !(ms.is_finite() && ms >= 0.0) {
            return Err(err(format!("offset {ms} must be a finite, non-negative number of milliseconds")));
        }
        let us = (ms * 1000.0) as u64;
        if out.last().is_some_and(|&p| us < p) {
            return Err(err(format!("offset {ms} ms is earlier than the line before; sort the trace")));
        }
        out.push(us);
    }
    Ok(out)
}

/// Outcome accounting for one run.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    sent: u64,
    counts: [u64; 5],
    weighted: [u64; 5],
    latencies_us: Vec<u64>,
}

impl Tally {
    /// A request was sent.
    pub fn sent(&mut self) {
        self.sent += 1;
    }

    /// A request ended with `outcome` after `latency_us`, weighing `weight` (fan-out).
    pub fn record(&mut self, outcome: Outcome, latency_us: u64, weight: u32) {
        let i = Outcome::ALL.iter().position(|o| *o == outcome).unwrap_or(4);
        self.counts[i] += 1;
        self.weighted[i] += u64::from(weight.max(1));
        if outcome == Outcome::Ok {
            self.latencies_us.push(latency_us);
        }
    }

    /// Requests sent.
    pub fn sent_count(&self) -> u64 {
        self.sent
    }

    /// Requests that ended, any outcome.
    pub fn ended(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Requests that ended with `o`.
    pub fn count(&self, o: Outcome) -> u64 {
        Outcome::ALL.iter().position(|x| *x == o).map_or(0, |i| self.counts[i])
    }

    /// The `q` quantile (0–1) of successful latencies, µs.
    pub fn quantile_us(&self, q: f64) -> Option<u64> {
        if self.latencies_us.is_empty() {
            return None;
        }
        let mut v = self.latencies_us.clone();
        v.sort_unstable();
        let i = ((v.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
        Some(v[i])
    }

    /// A human-readable report for a run of `duration_s` seconds.
    pub fn report(&self, duration_s: f64) -> String {
        let mut out = String::new();
        let lost = self.sent.saturating_sub(self.ended());
        let _ = writeln!(
            out,
            "sent {}  ended {}  unaccounted {}  goodput {:.1} req/s",
            self.sent,
            self.ended(),
            lost,
            self.count(Outcome::Ok) as f64 / duration_s.max(1e-9)
        );
        let p = |q| self.quantile_us(q).map_or("-".to_string(), |us| format!("{:.2} ms", us as f64 / 1e3));
        let _ = writeln!(out, "latency of ok requests: p50 {}  p95 {}  p99 {}", p(0.5), p(0.95), p(0.99));
        let total_w: u64 = self.weighted.iter().sum();
        for (i, o) in Outcome::ALL.iter().enumerate() {
            let share = if self.sent == 0 { 0.0 } else { 100.0 * self.counts[i] as f64 / self.sent as f64 };
            let _ = writeln!(
                out,
                "  {:<14} {:>8}  {:>6.2} %   weighted by fan-out {:>8}",
                o.name(),
                self.counts[i],
                share,
                self.weighted[i]
            );
        }
        let violations: u64 = self.weighted[1..].iter().sum();
        let _ = writeln!(
            out,
            "SLO violations (fan-out weighted): {violations} of {total_w} ({:.2} %)",
            if total_w == 0 { 0.0 } else { 100.0 * violations as f64 / total_w as f64 }
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poisson_schedule_is_seeded_and_has_the_rate() {
        let a = poisson_arrivals(7, 200.0, 30_000_000);
        assert_eq!(a, poisson_arrivals(7, 200.0, 30_000_000));
        assert_ne!(a, poisson_arrivals(8, 200.0, 30_000_000));
        // 6000 expected; a Poisson count has sd ≈ 77.
        assert!((5_700..6_300).contains(&a.len()), "{}", a.len());
        assert!(a.windows(2).all(|w| w[0] <= w[1]) && a.last().is_some_and(|&t| t < 30_000_000));
        assert!(poisson_arrivals(1, 0.0, 1_000_000).is_empty());
        assert!(poisson_arrivals(1, f64::NAN, 1_000_000).is_empty());
    }

    #[test]
    fn traces_parse_with_line_numbered_errors() {
        assert_eq!(
            parse_trace("# t_ms\n0\n1.5\n\n1.5 # same time\n20\n", "t").expect("ok"),
            vec![0, 1500, 1500, 20_000]
        );
        let e = parse_trace("0\nabc\n", "t.txt").unwrap_err();
        assert_eq!((e.line, e.path.as_str()), (2, "t.txt"));
        assert!(parse_trace("5\n4\n", "t").unwrap_err().message.contains("earlier"));
        assert!(parse_trace("-1\n", "t").unwrap_err().message.contains("non-negative"));
    }

    #[test]
    fn every_request_is_accounted_and_weighted() {
        let mut t = Tally::default();
        for (o, w) in [(Outcome::Ok, 1), (Outcome::Ok, 1), (Outcome::EarlyDrop, 3), (Outcome::Error, 1)] {
            t.sent();
            t.record(o, 10_000, w);
        }
        t.sent(); // still in flight
        assert_eq!((t.sent_count(), t.ended()), (5, 4));
        let r = t.report(2.0);
        assert!(r.contains("sent 5  ended 4  unaccounted 1  goodput 1.0 req/s"), "{r}");
        assert!(r.contains("SLO violations (fan-out weighted): 4 of 6"), "{r}");
        assert_eq!(t.quantile_us(0.99), Some(10_000));
    }
}
