//! Profile rows and the profile CSV format.
//!
//! ```text
//! task,variant,gpu,mig_profile,mps,batch,p95_ms,throughput_rps
//! detect,yolov5l,h100-80gb,1g.10gb,1,1,21.700,52.3
//! ```
//!
//! One row per (task, variant, GPU model, MIG profile, MPS level, batch). `p95_ms` is the
//! p95 latency of one batch in one MPS process; `throughput_rps` is the items per second
//! of the whole segment (all `mps` processes together). Lines starting with `#` are
//! comments (the synthetic generator writes its provenance there). The synthetic generator
//! and the real profiler (`jigsaw profile`) write the same format.
//!
//! ## Mean-latency files
//!
//! A source that measured only the *mean* batch latency (for example the imported ParvaGPU
//! profiles, `jigsaw profiles import`) says so in the header: its seventh column is
//! `mean_ms` instead of `p95_ms` ([`MEAN_HEADER`]). The column name is the marker; there is
//! no silent default. The planner's latency constraint needs a p95, so the parser derives
//! one as [`P95_OVER_MEAN`] × mean (an ASSUMPTION: the sources carry no tail figures) and
//! stores it in [`ProfileRow::p95_ms`]; the table remembers the statistic its file carried
//! ([`ProfileTable::latency_stat`]) and writes the same header back.

use crate::catalogue::{GpuModel, MPS_LEVELS};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Batch sizes the planner considers.
pub const BATCH_SIZES: [u32; 8] = [1, 2, 4, 8, 16, 32, 64, 128];

/// The CSV header.
pub const HEADER: &str = "task,variant,gpu,mig_profile,mps,batch,p95_ms,throughput_rps";

/// The CSV header of a file whose latency column is a measured mean.
pub const MEAN_HEADER: &str = "task,variant,gpu,mig_profile,mps,batch,mean_ms,throughput_rps";

/// p95 ÷ mean batch latency assumed where only the mean was measured (a mean-latency
/// file, and the calibrated profile model, which predicts means). An ASSUMPTION, chosen
/// conservatively: it is not measured (the imported sources have no tail latencies);
/// steady-state batch latencies of one process typically have p95/mean of 1.05–1.2, and MPS
/// co-location widens the tail, so 1.25 errs towards over-provisioning.
pub const P95_OVER_MEAN: f64 = 1.25;

/// Which latency statistic a profile file's latency column holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LatencyStat {
    /// A measured (or modelled) p95: column `p95_ms`, used as is.
    #[default]
    P95,
    /// A measured mean: column `mean_ms`; the p95 is estimated as [`P95_OVER_MEAN`] × mean.
    Mean,
}

impl LatencyStat {
    /// The CSV header that carries this statistic.
    pub fn header(self) -> &'static str {
        match self {
            LatencyStat::P95 => HEADER,
            LatencyStat::Mean => MEAN_HEADER,
        }
    }

    /// The name of the latency column.
    pub fn column(self) -> &'static str {
        match self {
            LatencyStat::P95 => "p95_ms",
            LatencyStat::Mean => "mean_ms",
        }
    }
}

/// One measured (or synthetic) profile point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProfileRow {
    /// Task name.
    pub task: String,
    /// Variant name.
    pub variant: String,
    /// GPU model.
    pub gpu: GpuModel,
    /// MIG profile name (`2g.20gb`).
    pub mig_profile: String,
    /// MPS processes in the instance (1–4).
    pub mps: u8,
    /// Maximum batch size.
    pub batch: u32,
    /// p95 latency of one batch, ms.
    pub p95_ms: f64,
    /// Segment throughput, items/s.
    pub throughput_rps: f64,
}

/// A profile file error, naming the line and column.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProfileError {
    /// A malformed line.
    #[error("{path}:{line}: {column}: {message}")]
    Line {
        /// File path.
        path: String,
        /// 1-based line number.
        line: usize,
        /// Column name.
        column: String,
        /// What is wrong.
        message: String,
    },
    /// The header is not the expected one.
    #[error("{path}:{line}: expected header `{HEADER}` (or `{MEAN_HEADER}`), got `{got}`")]
    Header {
        /// File path.
        path: String,
        /// 1-based line of the header (the first line that is not blank or a comment).
        line: usize,
        /// What was found.
        got: String,
    },
}

/// Key of one profile row.
pub type ProfileKey = (String, String, GpuModel, String, u8, u32);

/// All profile rows, indexed by key. Later rows with the same key replace earlier ones.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProfileTable {
    rows: BTreeMap<ProfileKey, ProfileRow>,
    latency: LatencyStat,
}

impl ProfileTable {
    /// Build from rows.
    pub fn from_rows(rows: impl IntoIterator<Item = ProfileRow>) -> Self {
        let mut t = ProfileTable::default();
        for r in rows {
            t.insert(r);
        }
        t
    }

    /// The latency statistic the table's source carried (how [`ProfileTable::to_csv`]
    /// writes the latency column). Rows always hold a p95 in [`ProfileRow::p95_ms`].
    pub fn latency_stat(&self) -> LatencyStat {
        self.latency
    }

    /// Mark the table as coming from a source of `stat` (rows keep their p95).
    pub fn with_latency_stat(mut self, stat: LatencyStat) -> Self {
        self.latency = stat;
        self
    }

    /// The mean batch latency behind `row` when this table came from a mean-latency source
    /// (`p95_ms / P95_OVER_MEAN`, the column as written), `None` for a p95 source.
    pub fn source_mean_ms(&self, row: &ProfileRow) -> Option<f64> {
        (self.latency == LatencyStat::Mean).then(|| row.p95_ms / P95_OVER_MEAN)
    }

    /// Insert or replace a row.
    pub fn insert(&mut self, r: ProfileRow) {
        let key = (r.task.clone(), r.variant.clone(), r.gpu, r.mig_profile.clone(), r.mps, r.batch);
        self.rows.insert(key, r);
    }

    /// Look up one point.
    pub fn get(&self, task: &str, variant: &str, gpu: GpuModel, mig: &str, mps: u8, batch: u32) -> Option<&ProfileRow> {
        self.rows.get(&(task.to_string(), variant.to_string(), gpu, mig.to_string(), mps, batch))
    }

    /// All rows in key order.
    pub fn rows(&self) -> impl Iterator<Item = &ProfileRow> {
        self.rows.values()
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Parse a CSV file's text.
    pub fn parse_csv(text: &str, path: &str) -> Result<ProfileTable, ProfileError> {
        let mut table = ProfileTable::default();
        let mut stat = None;
        let mut last = 0;
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            let ln = i + 1;
            last = ln;
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some(s) = stat else {
                stat = Some(match line {
                    HEADER => LatencyStat::P95,
                    MEAN_HEADER => LatencyStat::Mean,
                    _ => return Err(ProfileError::Header { path: path.into(), line: ln, got: line.into() }),
                });
                continue;
            };
            table.insert(parse_row(line, path, ln, s)?);
        }
        table.latency =
            stat.ok_or_else(|| ProfileError::Header { path: path.into(), line: last.max(1), got: String::new() })?;
        Ok(table)
    }

    /// Write as CSV with optional `#` comment lines first.
    pub fn to_csv(&self, comments: &[String]) -> String {
        let mut out = String::new();
        for c in comments {
            let _ = writeln!(out, "# {c}");
        }
        let _ = writeln!(out, "{}", self.latency.header());
        for r in self.rows.values() {
            let latency = self.source_mean_ms(r).unwrap_or(r.p95_ms);
            let _ = writeln!(
                out,
                "{},{},{},{},{},{},{:.3},{:.2}",
                r.task, r.variant, r.gpu, r.mig_profile, r.mps, r.batch, latency, r.throughput_rps
            );
        }
        out
    }
}

fn parse_row(line: &str, path: &str, ln: usize, stat: LatencyStat) -> Result<ProfileRow, ProfileError> {
    let cols: [&str; 8] = ["task", "variant", "gpu", "mig_profile", "mps", "batch", stat.column(), "throughput_rps"];
    let err = |col: usize, message: String| ProfileError::Line {
        path: path.into(),
        line: ln,
        column: cols[col.min(7)].into(),
        message,
    };
    let f: Vec<&str> = line.split(',').map(str::trim).collect();
    if f.len() != cols.len() {
        return Err(err(f.len().min(7), format!("expected {} comma-separated fields, got {}", cols.len(), f.len())));
    }
    for (c, v) in f.iter().enumerate().take(4) {
        if v.is_empty() || v.contains('"') {
            return Err(err(c, format!("must be a non-empty unquoted name, got `{v}`")));
        }
    }
    let gpu: GpuModel = f[2].parse().map_err(|e| err(2, format!("{e}")))?;
    let mig = f[3];
    if gpu.spec().profile_index(mig).is_none() {
        let known: Vec<&str> = gpu.spec().profiles.iter().map(|p| p.name).collect();
        return Err(err(3, format!("`{mig}` is not a MIG profile of {gpu} (known: {})", known.join(", "))));
    }
    let mps: u8 = f[4].parse().map_err(|_| err(4, format!("`{}` is not an integer", f[4])))?;
    if !MPS_LEVELS.contains(&mps) {
        return Err(err(4, format!("must be one of {MPS_LEVELS:?}, got {mps}")));
    }
    let batch: u32 = f[5].parse().map_err(|_| err(5, format!("`{}` is not an integer", f[5])))?;
    if !BATCH_SIZES.contains(&batch) {
        return Err(err(5, format!("must be one of {BATCH_SIZES:?}, got {batch}")));
    }
    let num = |c: usize| -> Result<f64, ProfileError> {
        let x: f64 = f[c].parse().map_err(|_| err(c, format!("`{}` is not a number", f[c])))?;
        if !(x.is_finite() && x > 0.0) {
            return Err(err(c, format!("must be a positive finite number, got {x}")));
        }
        Ok(x)
    };
    Ok(ProfileRow {
        task: f[0].into(),
        variant: f[1].into(),
        gpu,
        mig_profile: mig.into(),
        mps,
        batch,
        p95_ms: match stat {
            LatencyStat::P95 => num(6)?,
            LatencyStat::Mean => num(6)? * P95_OVER_MEAN,
        },
        throughput_rps: num(7)?,
    })
}

/// One point of a segment's latency curve: (batch, p95 ms, mean ms) of one MPS process.
pub type CurvePoint = (u32, f64, f64);

/// Mean batch latency implied by a profile row: `mps × batch / throughput` (ms), at most
/// the p95.
pub fn mean_ms(mps: u8, batch: u32, throughput_rps: f64, p95_ms: f64) -> f64 {
    if throughput_rps <= 0.0 {
        return p95_ms;
    }
    (f64::from(mps.max(1)) * f64::from(batch.max(1)) / throughput_rps * 1e3).min(p95_ms)
}

/// p95 (nearest rank) and mean of `v`, ms (NaN for an empty sample). Sorts `v`.
pub fn p95_mean(v: &mut [f64]) -> (f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    v.sort_by(f64::total_cmp);
    let rank = ((v.len() as f64) * 0.95).ceil() as usize;
    (v[rank.clamp(1, v.len()) - 1], v.iter().sum::<f64>() / v.len() as f64)
}

/// The latency curve of one (task, variant, MIG profile, MPS level) segment, by batch size,
/// from the rows that describe it (other rows are skipped).
pub fn latency_curve<'a>(
    rows: impl IntoIterator<Item = &'a ProfileRow>,
    task: &str,
    variant: &str,
    mig_profile: &str,
    mps: u8,
) -> Vec<CurvePoint> {
    let mut curve: Vec<CurvePoint> = rows
        .into_iter()
        .filter(|r| r.task == task && r.variant == variant && r.mig_profile == mig_profile && r.mps == mps)
        .map(|r| (r.batch, r.p95_ms, mean_ms(r.mps, r.batch, r.throughput_rps, r.p95_ms)))
        .collect();
    curve.sort_by_key(|p| p.0);
    curve
}

#[cfg(test)]
mod tests {
    #[test]
    fn p95_mean_nearest_rank() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(super::p95_mean(&mut v), (95.0, 50.5));
        assert_eq!(super::p95_mean(&mut [3.0]), (3.0, 3.0));
        assert!(super::p95_mean(&mut []).0.is_nan());
    }

    #[test]
    fn mean_ms_is_capped_by_p95_and_survives_zero_throughput() {
        assert_eq!(super::mean_ms(2, 4, 1000.0, 100.0), 8.0);
        assert_eq!(super::mean_ms(1, 1, 1.0, 5.0), 5.0);
        assert_eq!(super::mean_ms(1, 1, 0.0, 5.0), 5.0);
    }

    use super::*;

    #[test]
    fn csv_round_trips() {
        let text = format!("# synthetic\n{HEADER}\nd,y,h100-80gb,1g.10gb,2,8,12.500,640.00\n");
        let t = ProfileTable::parse_csv(&text, "p.csv").expect("parses");
        assert_eq!(t.len(), 1);
        let r = t.get("d", "y", GpuModel::H100_80gb, "1g.10gb", 2, 8).expect("row");
        assert_eq!(r.p95_ms, 12.5);
        assert_eq!(t.to_csv(&["synthetic".into()]), text);
    }

    #[test]
    fn mean_files_derive_a_p95_and_round_trip() {
        let text = format!("# measured means\n{MEAN_HEADER}\nd,y,a100-80gb,1g.10gb,1,1,5.082,196.76\n");
        let t = ProfileTable::parse_csv(&text, "m.csv").expect("parses");
        assert_eq!(t.latency_stat(), LatencyStat::Mean);
        let r = t.get("d", "y", GpuModel::A100_80gb, "1g.10gb", 1, 1).expect("row");
        assert!((r.p95_ms - 5.082 * P95_OVER_MEAN).abs() < 1e-9, "{}", r.p95_ms);
        assert!((t.source_mean_ms(r).expect("mean source") - 5.082).abs() < 1e-9);
        assert_eq!(t.to_csv(&["measured means".into()]), text);
        // A p95 file keeps its numbers and its header.
        let p =
            ProfileTable::parse_csv(&format!("{HEADER}\nd,y,a100-80gb,1g.10gb,1,1,5.082,196.76\n"), "p").expect("p95");
        assert_eq!(p.latency_stat(), LatencyStat::P95);
        assert!(p.rows().all(|r| r.p95_ms == 5.082) && p.source_mean_ms(p.rows().next().expect("row")).is_none());
        // Errors in a mean file name its latency column.
        let e = ProfileTable::parse_csv(&format!("{MEAN_HEADER}\nd,y,a100-80gb,1g.10gb,1,1,-2,1\n"), "m.csv");
        assert!(e.expect_err("negative").to_string().contains("mean_ms"));
    }

    proptest::proptest! {
        #[test]
        fn parser_never_panics(rows in proptest::collection::vec("[a-z0-9.,-]{0,60}", 0..6)) {
            let text = format!("{HEADER}\n{}", rows.join("\n"));
            let _ = ProfileTable::parse_csv(&text, "fuzz");
        }
    }

    #[test]
    fn bad_rows_name_line_and_column() {
        let cases = [
            ("d,y,h100-80gb,1g.10gb,5,8,1,1", "mps"),
            ("d,y,h100-80gb,1g.10gb,1,3,1,1", "batch"),
            ("d,y,h100-80gb,9g.1gb,1,8,1,1", "mig_profile"),
            ("d,y,v100,1g.10gb,1,8,1,1", "gpu"),
            ("d,y,h100-80gb,1g.10gb,1,8,-1,1", "p95_ms"),
            ("d,y,h100-80gb,1g.10gb,1,8,1,NaN", "throughput_rps"),
            ("d,y,h100-80gb", "mig_profile"),
        ];
        for (row, col) in cases {
            let e = ProfileTable::parse_csv(&format!("{HEADER}\n{row}\n"), "p.csv").unwrap_err();
            let s = e.to_string();
            assert!(s.starts_with("p.csv:2: ") && s.contains(col), "{row}: {s}");
        }
        assert!(matches!(ProfileTable::parse_csv("a,b\n", "p"), Err(ProfileError::Header { .. })));
    }
}
