//! Configuration search spaces (paper §4.3 and Appendix B).
//!
//! * **A** accuracy scaling: any variant of a task; without it only the most accurate one.
//! * **S** spatial partitioning: every MIG profile with MPS 1–4; without it whole GPUs
//!   (the 7-slice profile, one process).
//! * **T** task-graph-informed budgets: the planner splits the latency SLO and the GPU pool
//!   across tasks jointly; without it each task gets the static latency and slice budgets
//!   of Appendix B (see [`crate::planner`] for the exact rules).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A search space: which of A, S and T are on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SearchSpace {
    /// Accuracy scaling.
    pub a: bool,
    /// Spatial partitioning.
    pub s: bool,
    /// Task-graph-informed budgeting.
    pub t: bool,
}

impl SearchSpace {
    /// JigsawServe's full space.
    pub const FULL: SearchSpace = SearchSpace { a: true, s: true, t: true };

    /// The eight spaces in the order of the paper's Figure 3.
    pub fn all() -> [SearchSpace; 8] {
        let s = |a, s, t| SearchSpace { a, s, t };
        [
            s(false, false, false),
            s(false, false, true),
            s(true, false, false),
            s(true, false, true),
            s(false, true, false),
            s(false, true, true),
            s(true, true, false),
            s(true, true, true),
        ]
    }
}

impl fmt::Display for SearchSpace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<&str> =
            [(self.a, "A"), (self.s, "S"), (self.t, "T")].into_iter().filter(|(on, _)| *on).map(|(_, n)| n).collect();
        if parts.is_empty() {
            f.write_str("Unopt")
        } else {
            f.write_str(&parts.join("+"))
        }
    }
}

/// An unparseable search-space name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown search space `{0}`: use Unopt or a `+`-joined subset of A, S, T (e.g. A+S+T)")]
pub struct BadSpace(pub String);

impl FromStr for SearchSpace {
    type Err = BadSpace;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("unopt") {
            return Ok(SearchSpace { a: false, s: false, t: false });
        }
        let mut sp = SearchSpace { a: false, s: false, t: false };
        for part in t.split('+') {
            let flag = match part.trim().to_ascii_uppercase().as_str() {
                "A" => &mut sp.a,
                "S" => &mut sp.s,
                "T" => &mut sp.t,
                _ => return Err(BadSpace(s.to_string())),
            };
            if *flag {
                return Err(BadSpace(s.to_string()));
            }
            *flag = true;
        }
        Ok(sp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for sp in SearchSpace::all() {
            assert_eq!(sp.to_string().parse::<SearchSpace>(), Ok(sp));
        }
        assert_eq!("s+a".parse::<SearchSpace>().map(|s| s.to_string()), Ok("A+S".into()));
        assert!("A+A".parse::<SearchSpace>().is_err());
        assert!("X".parse::<SearchSpace>().is_err());
    }
}
