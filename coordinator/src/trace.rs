//! Request arrival traces: parsing the Azure LLM inference trace format into arrival times,
//! binning arrivals into per-interval rates, and a seeded synthetic diurnal trace.
//!
//! The format (Azure Public Dataset, `AzureLLMInferenceTrace_{conv,code}.csv`; copies in
//! `examples/traces/`) is a CSV with the header `TIMESTAMP,ContextTokens,GeneratedTokens`
//! and one row per request, timestamps like `2023-11-16 18:17:03.9799600` (UTC, up to 9
//! fractional digits). Only the timestamp is used here; the token columns are checked to be
//! non-negative integers so a misaligned file is caught. Pure: no files are opened here
//! (the caller reads the text and names its origin for error messages).

use jigsaw_protocol::rng::SplitMix64;

/// Most rows a trace may have (the real traces have under 20,000).
pub const MAX_TRACE_ROWS: usize = 10_000_000;
/// Most intervals [`bin`] produces (longer traces or finer intervals are an error).
pub const MAX_BINS: usize = 10_000_000;

/// Why a trace does not parse: the origin (file), 1-based line and column, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}:{line}:{column}: {message}")]
pub struct TraceError {
    /// Where the text came from (a path).
    pub origin: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column (of the field at fault).
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

/// The header the format starts with.
pub const HEADER: &str = "TIMESTAMP,ContextTokens,GeneratedTokens";

/// Days from 1970-01-01 to the civil date (proleptic Gregorian; Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Seconds since the Unix epoch of `YYYY-MM-DD HH:MM:SS[.fffffffff]`, or what is wrong.
pub fn parse_timestamp(s: &str) -> Result<f64, String> {
    let bad = || format!("`{s}` is not a timestamp like `2023-11-16 18:17:03.9799600`");
    let (date, time) = s.split_once(' ').ok_or_else(bad)?;
    let mut d = date.split('-');
    let num = |it: &mut std::str::Split<'_, char>, lo: i64, hi: i64| -> Result<i64, String> {
        let p = it.next().ok_or_else(bad)?;
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) || p.len() > 4 {
            return Err(bad());
        }
        let v: i64 = p.parse().map_err(|_| bad())?;
        if v < lo || v > hi {
            return Err(bad());
        }
        Ok(v)
    };
    let (y, mo, da) = (num(&mut d, 1970, 9999)?, num(&mut d, 1, 12)?, num(&mut d, 1, 31)?);
    if d.next().is_some() {
        return Err(bad());
    }
    let (hms, frac) = match time.split_once('.') {
        Some((a, f)) => (a, f),
        None => (time, ""),
    };
    let mut t = hms.split(':');
    let (h, mi, se) = (num(&mut t, 0, 23)?, num(&mut t, 0, 59)?, num(&mut t, 0, 60)?);
    if t.next().is_some() || frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let f = if frac.is_empty() {
        0.0
    } else {
        frac.parse::<u64>().map_err(|_| bad())? as f64 / 10f64.powi(frac.len() as i32)
    };
    Ok((days_from_civil(y, mo, da) * 86_400 + h * 3_600 + mi * 60 + se) as f64 + f)
}

/// Arrival times of a trace in seconds since its first request, sorted (the file's order
/// need not be). Errors name `origin`, the line and the column.
pub fn parse_trace(text: &str, origin: &str) -> Result<Vec<f64>, TraceError> {
    let err = |line: usize, column: usize, message: String| TraceError { origin: origin.into(), line, column, message };
    let mut lines = text.lines().enumerate();
    match lines.next() {
        Some((_, h)) if h.trim_end_matches('\r').trim() == HEADER => {}
        Some((_, h)) => {
            return Err(err(
                1,
                1,
                format!("the header must be `{HEADER}`, got `{}`", h.chars().take(80).collect::<String>()),
            ))
        }
        None => return Err(err(1, 1, "the trace is empty".into())),
    }
    let mut out = Vec::new();
    for (i, l) in lines {
        let l = l.trim_end_matches('\r');
        if l.trim().is_empty() {
            continue;
        }
        let line = i + 1;
        if out.len() >= MAX_TRACE_ROWS {
            return Err(err(line, 1, format!("more than {MAX_TRACE_ROWS} rows")));
        }
        let fields: Vec<&str> = l.split(',').collect();
        if fields.len() != 3 {
            return Err(err(line, 1, format!("expected 3 fields, got {}", fields.len())));
        }
        let t = parse_timestamp(fields[0].trim()).map_err(|m| err(line, 1, m))?;
        let mut column = fields[0].len() + 2;
        for (name, f) in [("ContextTokens", fields[1]), ("GeneratedTokens", fields[2])] {
            if f.trim().parse::<u64>().is_err() {
                return Err(err(line, column, format!("{name} must be a non-negative integer, got `{f}`")));
            }
            column += f.len() + 1;
        }
        out.push(t);
    }
    if out.is_empty() {
        return Err(err(1, 1, "the trace has no requests".into()));
    }
    out.sort_by(f64::total_cmp);
    let t0 = out[0];
    for t in &mut out {
        *t -= t0;
    }
    Ok(out)
}

/// Why arrivals cannot be binned.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BinError {
    /// The interval is not a positive number of seconds.
    #[error("the interval must be a positive number of seconds, got {0}")]
    Interval(f64),
    /// Too many intervals.
    #[error("{0} intervals (at most {MAX_BINS}): use a longer interval")]
    TooMany(f64),
}

/// Per-interval arrival rates (requests/s) of sorted, non-negative arrival times in seconds:
/// interval `i` covers `[i·interval_s, (i+1)·interval_s)`; the last interval is the one that
/// holds the last arrival, and a trailing partial interval is dropped when it is under half
/// the length (its rate would be biased low), unless it is the only one.
pub fn bin(arrivals: &[f64], interval_s: f64) -> Result<Vec<f64>, BinError> {
    if !(interval_s.is_finite() && interval_s > 0.0) {
        return Err(BinError::Interval(interval_s));
    }
    let last = arrivals.iter().copied().filter(|t| t.is_finite()).fold(0.0f64, f64::max);
    let span = last / interval_s;
    if span + 1.0 > MAX_BINS as f64 {
        return Err(BinError::TooMany(span + 1.0));
    }
    let n = span.floor() as usize + 1;
    let mut counts = vec![0u64; n];
    for &t in arrivals.iter().filter(|t| t.is_finite() && **t >= 0.0) {
        counts[((t / interval_s).floor() as usize).min(n - 1)] += 1;
    }
    if n > 1 && span.fract() < 0.5 {
        counts.pop();
    }
    Ok(counts.into_iter().map(|c| c as f64 / interval_s).collect())
}

/// A seeded synthetic diurnal trace (**synthetic**, not measured): per-interval rates over
/// `days` days of intervals of `interval_s` seconds, with a mean of `mean_rps`: a daily
/// sinusoid (peak 1.8× the trough) plus a smaller afternoon bump, Poisson-like noise
/// (normal approximation of the interval's count) and a few short bursts (×1.5 to ×2.5 for
/// one to three intervals, about one per 200 intervals). Same seed, same trace.
pub fn synthetic_diurnal(seed: u64, days: f64, interval_s: f64, mean_rps: f64) -> Vec<f64> {
    let mut rng = SplitMix64::new(seed);
    let n = ((days * 86_400.0) / interval_s).max(1.0).min(MAX_BINS as f64) as usize;
    let gauss = move |r: &mut SplitMix64| {
        // Box-Muller.
        let (u1, u2) = (r.unit().max(1e-12), r.unit());
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    };
    let mut burst_left = 0u32;
    let mut burst = 1.0;
    (0..n)
        .map(|i| {
            let day = (i as f64 * interval_s) / 86_400.0;
            let phase = std::f64::consts::TAU * day;
            let shape = 1.0 + 0.28 * (phase - std::f64::consts::FRAC_PI_2).sin() + 0.08 * (2.0 * phase).sin();
            if burst_left == 0 && rng.below(200) == 0 {
                burst_left = 1 + rng.below(3) as u32;
                burst = 1.5 + rng.unit();
            }
            let b = if burst_left > 0 {
                burst_left -= 1;
                burst
            } else {
                1.0
            };
            let lambda = (mean_rps * shape * b * interval_s).max(0.0);
            let count = (lambda + lambda.sqrt() * gauss(&mut rng)).round().max(0.0);
            count / interval_s
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_parse_to_unix_seconds() {
        assert_eq!(parse_timestamp("1970-01-01 00:00:00").expect("ok"), 0.0);
        let t = parse_timestamp("2023-11-16 18:17:03.9799600").expect("ok");
        // 2023-11-16T18:17:03Z = 1700158623.
        assert!((t - 1_700_158_623.979_96).abs() < 1e-6, "{t}");
        for bad in ["2023-11-16", "2023-13-01 00:00:00", "2023-11-16 25:00:00", "x", "2023-11-16 18:17:03.1234567890"] {
            assert!(parse_timestamp(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn traces_parse_and_errors_name_line_and_column() {
        let text = "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:50.5,1,2\n2023-11-16 18:15:46.5,3,4\n\n";
        assert_eq!(parse_trace(text, "t.csv").expect("ok"), vec![0.0, 4.0]);
        let e = parse_trace("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:50,1,x\n", "t.csv")
            .expect_err("bad");
        assert_eq!((e.line, e.column), (2, 23), "{e}");
        assert!(e.to_string().starts_with("t.csv:2:23: GeneratedTokens"), "{e}");
        let e = parse_trace("TIMESTAMP,ContextTokens,GeneratedTokens\nyesterday,1,2\n", "t.csv").expect_err("bad");
        assert_eq!((e.line, e.column), (2, 1));
        assert_eq!(parse_trace("a,b\n", "t.csv").expect_err("bad").line, 1);
        assert!(parse_trace(&format!("{HEADER}\n"), "t.csv").is_err(), "no requests");
    }

    #[test]
    fn the_real_traces_parse() {
        for (name, text, rows) in [
            ("conv", include_str!("../../examples/traces/azure-llm-2023-conv.csv"), 19_366),
            ("code", include_str!("../../examples/traces/azure-llm-2023-code.csv"), 8_819),
        ] {
            let a = parse_trace(text, name).expect("parses");
            assert_eq!(a.len(), rows, "{name}");
            let span = a[a.len() - 1];
            assert!((3_000.0..3_700.0).contains(&span), "{name}: about an hour, got {span} s");
        }
    }

    #[test]
    fn binning_counts_per_interval() {
        let r = bin(&[0.0, 0.5, 1.2, 2.9, 3.1], 1.0).expect("ok");
        // [0,1): 2, [1,2): 1, [2,3): 1, [3,4): 1 but partial (0.1 of it) → dropped.
        assert_eq!(r, vec![2.0, 1.0, 1.0]);
        assert_eq!(bin(&[0.0, 3.6], 1.0).expect("ok"), vec![1.0, 0.0, 0.0, 1.0]);
        assert_eq!(bin(&[0.0], 10.0).expect("ok"), vec![0.1]);
        assert!(bin(&[1.0], 0.0).is_err() && bin(&[1.0], f64::NAN).is_err());
        assert!(matches!(bin(&[1e12], 1.0), Err(BinError::TooMany(_))));
    }

    #[test]
    fn the_synthetic_trace_is_seeded_and_diurnal() {
        let a = synthetic_diurnal(7, 2.0, 60.0, 100.0);
        assert_eq!(a, synthetic_diurnal(7, 2.0, 60.0, 100.0));
        assert_ne!(a, synthetic_diurnal(8, 2.0, 60.0, 100.0));
        assert_eq!(a.len(), 2 * 1440);
        let mean = a.iter().sum::<f64>() / a.len() as f64;
        assert!((90.0..115.0).contains(&mean), "{mean}");
        // Trough in the early morning, peak in the afternoon.
        let hour = |h: usize| a[h * 60..h * 60 + 60].iter().sum::<f64>() / 60.0;
        assert!(hour(15) > 1.3 * hour(3), "{} vs {}", hour(15), hour(3));
    }
}
