//! When to re-plan for a new demand: a pure policy over the planned demand, the forecast,
//! the measured SLO-violation rate and the time.
//!
//! Every control interval the coordinator hands [`ReplanPolicy::decide`] what it knows of
//! one app; the answer is to keep the planned demand or to propose a new one (committed
//! through Raft as `ClusterCommand::SetDemand`, which re-plans; membership changes re-plan
//! on their own, outside this policy). Rules, in order:
//! * nothing until `warmup_intervals` intervals were measured (a new leader's forecaster
//!   starts empty), nothing sooner than `min_interval_ms` after the last demand change, and
//!   nothing while a plan transition is still running (a new plan would supersede it half
//!   way, with instances of three epochs on the GPUs);
//! * "forecast" below is the forecaster's prediction but never less than the rate just
//!   measured: a forecaster that smooths lags a ramp, and planning below what the last
//!   interval already carried leaves the next one short for certain;
//! * **SLO violations**: when the violation rate of the last interval exceeds
//!   `slo_violation_rate` (with at least `min_completions` answers in it, and no plan
//!   transition starting in it or the interval before: those violations say the capacity
//!   was moving), plan for
//!   `max(planned, forecast) × (1 + step_margin)`: more capacity, even when the forecast
//!   says demand did not grow (the profiles may be optimistic), but never more than
//!   `forecast × (1 + slo_max_headroom)`: violations that extra capacity does not cure
//!   (deadlines shorter than any configuration's latency) must not ratchet the demand up
//!   at every minimum interval. At that cap the plan is kept, not lowered by the band;
//! * **hysteresis band**: when the forecast is above `band_high × planned` or below
//!   `band_low × planned`, plan for `forecast × (1 + step_margin)`. The margin puts the new
//!   planned demand inside the band with room on both sides, so noise around a steady rate
//!   does not flap the plan;
//! * the new demand is raised to the app's floor (its registered demand, or
//!   [`jigsaw_protocol::cluster::MIN_PLANNED_RPS`] for `--rps auto`) and rounded to three
//!   significant digits; if that leaves it where it is, nothing is proposed.

use serde::Serialize;

/// The policy's knobs (the `[control]` table of the agent config).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ReplanPolicy {
    /// Length of a control interval (measurement and forecast), ms.
    pub interval_ms: u64,
    /// Re-plan down when the forecast is below this share of the planned demand, in (0, 1).
    pub band_low: f64,
    /// Re-plan up when the forecast is above this multiple of the planned demand, ≥ 1.
    pub band_high: f64,
    /// Margin added to the forecast when re-planning, fraction ≥ 0.
    pub step_margin: f64,
    /// Re-plan up when the last interval's SLO-violation rate exceeds this, in (0, 1].
    pub slo_violation_rate: f64,
    /// Answers an interval needs before its violation rate counts.
    pub min_completions: u64,
    /// Most capacity SLO violations may add above the forecast (fraction).
    pub slo_max_headroom: f64,
    /// Shortest time between two demand changes of one app, ms.
    pub min_interval_ms: u64,
    /// Intervals measured before the first decision.
    pub warmup_intervals: u64,
}

impl Default for ReplanPolicy {
    fn default() -> Self {
        ReplanPolicy {
            interval_ms: 10_000,
            band_low: 0.7,
            band_high: 1.0,
            step_margin: 0.1,
            slo_violation_rate: 0.05,
            min_completions: 20,
            slo_max_headroom: 1.0,
            min_interval_ms: 60_000,
            warmup_intervals: 3,
        }
    }
}

/// What the coordinator knows about one app at the end of a control interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DemandView {
    /// The demand planned for now, requests/s.
    pub planned: f64,
    /// The forecast for the next interval, requests/s.
    pub forecast: f64,
    /// Violations / completions over the last interval, and the completions.
    pub violations: Option<(f64, u64)>,
    /// The rate measured over the last interval, requests/s.
    pub measured: f64,
    /// Whether a plan transition started in the last interval or the one before: its
    /// violations are then not evidence that the plan lacks capacity (the capacity was
    /// moving), and counting them would re-plan again, which moves capacity again.
    pub transition_recent: bool,
    /// Whether a plan transition is still running (some node has not finished it).
    pub transition_running: bool,
    /// Lowest demand allowed, requests/s.
    pub floor: f64,
    /// Intervals measured so far.
    pub intervals: u64,
    /// Now, ms.
    pub now_ms: u64,
    /// When the planned demand last changed (by this policy), ms.
    pub last_change_ms: Option<u64>,
}

/// Why a new demand is proposed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Reason {
    /// The forecast rose above the band.
    AboveBand,
    /// The forecast fell below the band.
    BelowBand,
    /// The SLO-violation rate is over the threshold.
    SloViolations,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Reason::AboveBand => "forecast above the band",
            Reason::BelowBand => "forecast below the band",
            Reason::SloViolations => "SLO violations",
        })
    }
}

/// The policy's answer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decision {
    /// Keep the planned demand.
    Keep,
    /// Propose this demand.
    Set {
        /// Requests/s.
        rps: f64,
        /// Why.
        reason: Reason,
    },
}

/// `x` rounded to three significant digits (so re-plans do not chase noise in the last digit).
pub fn round3(x: f64) -> f64 {
    if !(x.is_finite() && x > 0.0) {
        return x;
    }
    let scale = 10f64.powi(2 - x.log10().floor() as i32);
    (x * scale).round() / scale
}

/// Why a policy is invalid: the knob (as named in `[control]`) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{knob}: {message}")]
pub struct InvalidPolicy {
    /// Knob name.
    pub knob: &'static str,
    /// What is wrong.
    pub message: String,
}

impl ReplanPolicy {
    /// Check the knobs' ranges.
    pub fn validate(&self) -> Result<(), InvalidPolicy> {
        let bad = |knob, message: String| Err(InvalidPolicy { knob, message });
        if !(1_000..=3_600_000).contains(&self.interval_ms) {
            return bad("interval_s", format!("must be between 1 and 3600 s, got {} ms", self.interval_ms));
        }
        if !(self.band_low > 0.0 && self.band_low < 1.0) {
            return bad("band_low", format!("must be in (0, 1), got {}", self.band_low));
        }
        if !(self.band_high.is_finite() && self.band_high >= 1.0 && self.band_high <= 10.0) {
            return bad("band_high", format!("must be in [1, 10], got {}", self.band_high));
        }
        if !(self.step_margin.is_finite() && (0.0..=1.0).contains(&self.step_margin)) {
            return bad("step_margin", format!("must be in [0, 1], got {}", self.step_margin));
        }
        if (1.0 + self.step_margin) * self.band_low >= 1.0 {
            return bad(
                "band_low",
                format!(
                    "band_low × (1 + step_margin) = {} must be below 1, or a re-plan down lands outside the band",
                    self.band_low * (1.0 + self.step_margin)
                ),
            );
        }
        if !(self.slo_violation_rate > 0.0 && self.slo_violation_rate <= 1.0) {
            return bad("slo_violation_rate", format!("must be in (0, 1], got {}", self.slo_violation_rate));
        }
        if !(self.slo_max_headroom.is_finite() && (0.0..=10.0).contains(&self.slo_max_headroom)) {
            return bad("slo_max_headroom", format!("must be in [0, 10], got {}", self.slo_max_headroom));
        }
        if self.min_interval_ms > 86_400_000 {
            return bad("min_replan_interval_s", format!("must be at most a day, got {} ms", self.min_interval_ms));
        }
        if self.warmup_intervals > 1_000 {
            return bad("warmup_intervals", format!("must be at most 1000, got {}", self.warmup_intervals));
        }
        Ok(())
    }

    /// Decide for one app (see the module docs).
    pub fn decide(&self, v: &DemandView) -> Decision {
        if v.intervals < self.warmup_intervals || !(v.forecast.is_finite() && v.forecast >= 0.0) {
            return Decision::Keep;
        }
        if v.last_change_ms.is_some_and(|t| v.now_ms.saturating_sub(t) < self.min_interval_ms) {
            return Decision::Keep;
        }
        if v.transition_running {
            return Decision::Keep;
        }
        let forecast = if v.measured.is_finite() { v.forecast.max(v.measured) } else { v.forecast };
        let violating = !v.transition_recent
            && v.violations.is_some_and(|(rate, n)| n >= self.min_completions && rate > self.slo_violation_rate);
        let (want, reason) = if violating {
            let cap = (forecast * (1.0 + self.slo_max_headroom)).max(v.floor);
            if v.planned >= cap {
                return Decision::Keep; // more capacity would not cure these violations
            }
            ((v.planned.max(forecast) * (1.0 + self.step_margin)).min(cap), Reason::SloViolations)
        } else if forecast > self.band_high * v.planned {
            (forecast * (1.0 + self.step_margin), Reason::AboveBand)
        } else if forecast < self.band_low * v.planned {
            (forecast * (1.0 + self.step_margin), Reason::BelowBand)
        } else {
            return Decision::Keep;
        };
        let rps = round3(want.max(v.floor));
        if (rps - v.planned).abs() <= 1e-9 * v.planned.abs().max(1.0) {
            return Decision::Keep;
        }
        Decision::Set { rps, reason }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(planned: f64, forecast: f64) -> DemandView {
        DemandView {
            planned,
            forecast,
            violations: None,
            measured: 0.0,
            transition_recent: false,
            transition_running: false,
            floor: 0.01,
            intervals: 10,
            now_ms: 1_000_000,
            last_change_ms: None,
        }
    }

    fn p() -> ReplanPolicy {
        ReplanPolicy::default()
    }

    #[test]
    fn inside_the_band_nothing_changes() {
        for f in [70.0, 80.0, 99.9, 100.0] {
            assert_eq!(p().decide(&view(100.0, f)), Decision::Keep, "{f}");
        }
    }

    #[test]
    fn leaving_the_band_re_plans_with_a_margin() {
        assert_eq!(p().decide(&view(100.0, 120.0)), Decision::Set { rps: 132.0, reason: Reason::AboveBand });
        assert_eq!(p().decide(&view(100.0, 50.0)), Decision::Set { rps: 55.0, reason: Reason::BelowBand });
    }

    /// After a re-plan to forecast × 1.1 the same forecast ±9 % stays inside the new band
    /// [0.7, 1.0] × planned: noise does not flap the plan.
    #[test]
    fn hysteresis_holds_the_new_plan_against_noise() {
        let Decision::Set { rps, .. } = p().decide(&view(100.0, 200.0)) else { panic!("re-plan expected") };
        assert_eq!(rps, 220.0);
        for f in [182.0, 190.0, 200.0, 210.0, 218.0] {
            let v = DemandView { last_change_ms: Some(0), ..view(rps, f) };
            assert_eq!(p().decide(&v), Decision::Keep, "{f}");
        }
    }

    #[test]
    fn the_minimum_interval_holds_changes_back() {
        let at = |now_ms| DemandView { now_ms, last_change_ms: Some(100_000), ..view(100.0, 300.0) };
        assert_eq!(p().decide(&at(100_000 + 59_999)), Decision::Keep);
        assert!(matches!(p().decide(&at(160_000)), Decision::Set { rps, .. } if rps == 330.0));
    }

    #[test]
    fn no_decision_during_warmup() {
        assert_eq!(p().decide(&DemandView { intervals: 2, ..view(100.0, 300.0) }), Decision::Keep);
        assert_eq!(p().decide(&view(100.0, f64::NAN)), Decision::Keep);
    }

    #[test]
    fn slo_violations_add_capacity_even_inside_the_band() {
        let v = DemandView { violations: Some((0.2, 100)), ..view(100.0, 90.0) };
        assert_eq!(p().decide(&v), Decision::Set { rps: 110.0, reason: Reason::SloViolations });
        // At or under the threshold, or too few answers to tell: nothing.
        assert_eq!(p().decide(&DemandView { violations: Some((0.05, 100)), ..view(100.0, 90.0) }), Decision::Keep);
        assert_eq!(p().decide(&DemandView { violations: Some((0.5, 19)), ..view(100.0, 90.0) }), Decision::Keep);
        // Violations of an interval in which a transition moved capacity do not count; the
        // band still does.
        assert_eq!(p().decide(&DemandView { transition_recent: true, ..v }), Decision::Keep);
        let up = DemandView { transition_recent: true, violations: Some((0.2, 100)), ..view(100.0, 120.0) };
        assert_eq!(p().decide(&up), Decision::Set { rps: 132.0, reason: Reason::AboveBand });
        // While one is still running, nothing at all.
        assert_eq!(p().decide(&DemandView { transition_running: true, ..up }), Decision::Keep);
    }

    /// A smoothing forecaster lags a ramp: the plan never goes below the rate just measured.
    #[test]
    fn the_plan_is_never_below_the_rate_just_measured() {
        let v = DemandView { measured: 130.0, ..view(100.0, 95.0) };
        assert_eq!(p().decide(&v), Decision::Set { rps: 143.0, reason: Reason::AboveBand });
        // Down: to the measured rate plus margin, not to a lower forecast.
        let v = DemandView { measured: 60.0, ..view(100.0, 40.0) };
        assert_eq!(p().decide(&v), Decision::Set { rps: 66.0, reason: Reason::BelowBand });
    }

    /// Violations that persist whatever the capacity raise the plan only up to the cap of
    /// forecast × (1 + slo_max_headroom), then hold it there (no ratchet, no flapping down).
    #[test]
    fn slo_violations_do_not_ratchet_without_bound() {
        let mut planned = 100.0;
        let mut seen = vec![];
        for step in 0..20u64 {
            let v = DemandView {
                violations: Some((0.3, 100)),
                now_ms: step * 60_000,
                last_change_ms: None,
                ..view(planned, 100.0)
            };
            if let Decision::Set { rps, .. } = p().decide(&v) {
                planned = rps;
                seen.push(rps);
            }
        }
        assert_eq!(planned, 200.0, "capped at 2 x the forecast: {seen:?}");
        assert!(seen.windows(2).all(|w| w[1] > w[0]), "only up, then held: {seen:?}");
    }

    #[test]
    fn the_floor_holds_registered_demand_and_auto_goes_below() {
        // Registered 100 (floor 100), quiet: the plan stays at 100.
        assert_eq!(p().decide(&DemandView { floor: 100.0, ..view(100.0, 0.0) }), Decision::Keep);
        // Planned 300 after a peak, floor 100, quiet again: back down to the floor.
        let v = DemandView { floor: 100.0, ..view(300.0, 10.0) };
        assert_eq!(p().decide(&v), Decision::Set { rps: 100.0, reason: Reason::BelowBand });
        // `--rps auto`: the floor is tiny, so it goes down to the forecast plus margin.
        assert_eq!(p().decide(&view(300.0, 10.0)), Decision::Set { rps: 11.0, reason: Reason::BelowBand });
    }

    #[test]
    fn rounding_and_validation() {
        assert_eq!(round3(123_456.0), 123_000.0);
        assert_eq!(round3(0.012_345), 0.0123);
        assert!(p().validate().is_ok());
        let e = ReplanPolicy { band_low: 0.95, ..p() }.validate().expect_err("band_low × 1.1 ≥ 1");
        assert_eq!(e.knob, "band_low");
        assert_eq!(ReplanPolicy { band_high: 0.9, ..p() }.validate().expect_err("bad").knob, "band_high");
        assert_eq!(ReplanPolicy { interval_ms: 10, ..p() }.validate().expect_err("bad").knob, "interval_s");
        let e = ReplanPolicy { slo_violation_rate: f64::NAN, ..p() }.validate().expect_err("bad");
        assert_eq!(e.knob, "slo_violation_rate");
    }
}
