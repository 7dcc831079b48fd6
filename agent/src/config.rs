//! Operator configuration (TOML), validated with errors that name the field.
//!
//! ```toml
//! [planner]
//! time_limit_s = 30.0   # wall-clock limit of one planner run
//! mip_rel_gap = 1e-4    # relative MIP gap of each MILP
//! threads = 1           # HiGHS threads (process-global in HiGHS; omit for its default)
//! alpha = 1.0           # Eq. 14 accuracy weight
//! beta = 0.035          # Eq. 14 slice weight (omit: 1 / available slices)
//! max_levels = 10       # latency levels per task before a grid is used
//! abs_gap_slices = 1.0  # at fixed demand, stop within this many slices (x beta) of optimal
//! ```

use jigsaw_coordinator::PlannerConfig;
use serde::Deserialize;

/// The whole config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Planner section.
    #[serde(default)]
    pub planner: PlannerSection,
}

/// `[planner]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlannerSection {
    /// Seconds.
    pub time_limit_s: Option<f64>,
    /// Relative gap.
    pub mip_rel_gap: Option<f64>,
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
    #[error("{path}: planner.{field}: {message}")]
    Value {
        /// Path.
        path: String,
        /// Field.
        field: &'static str,
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
        Ok(c)
    }

    /// The planner settings, with defaults for what is unset.
    pub fn planner_config(&self, path: &str) -> Result<PlannerConfig, ConfigError> {
        let p = &self.planner;
        let d = PlannerConfig::default();
        let bad = |field, message: String| ConfigError::Value { path: path.into(), field, message };
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
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_errors() {
        let c = Config::parse("", "c.toml").expect("empty is fine");
        assert_eq!(c.planner_config("c.toml").expect("valid"), PlannerConfig::default());
        let e = Config::parse("[planner]\ntime_limit_s = -1\n", "c.toml").unwrap_err();
        assert!(e.to_string().contains("planner.time_limit_s"), "{e}");
        let e = Config::parse("[planner]\ntime_limt_s = 1\n", "c.toml").unwrap_err();
        assert!(e.to_string().contains("time_limt_s"), "{e}");
        let e = Config::parse("[planner]\nthreads = 0\n", "c.toml").unwrap_err();
        assert!(e.to_string().contains("planner.threads"), "{e}");
    }
}
