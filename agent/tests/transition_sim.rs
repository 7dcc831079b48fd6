//! Seeded simulation of make-before-break transitions under load
//! ([`jigsaw_agent::transition_sim`]): a three-node cluster serves the social app at 70 % of
//! its planned demand while the demand steps 2× up and back down; each step is a plan
//! transition. Checked after every step: no stage routed to an instance that does not serve,
//! no stage cut by its instance stopping, no MIG slice held twice. One seed runs without
//! faults (and must lose no request to a transition); another adds crashes and link cuts.
//!
//! A failure names its seed; rerun it alone with `JIGSAW_SIM_SEED=<seed>`.

use jigsaw_agent::transition_sim::{run, runtime, Config, Report};
use std::time::Duration;

fn run_seed(cfg: Config) -> Report {
    let seed = cfg.seed;
    eprintln!("transition simulation: seed {seed} (rerun with JIGSAW_SIM_SEED={seed})");
    let rt = runtime().expect("runtime");
    let r = rt.block_on(run(cfg)).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    for row in &r.rows {
        eprintln!("seed {seed}: {row:?}");
    }
    eprintln!("seed {seed}: total {:?} {:?}, misrouted {}, cut {}", r.total, r.not_ok, r.misrouted, r.cut);
    r
}

fn seeds(default: &[u64]) -> Vec<u64> {
    match std::env::var("JIGSAW_SIM_SEED") {
        Ok(s) => vec![s.parse().expect("JIGSAW_SIM_SEED is a u64")],
        Err(_) => default.to_vec(),
    }
}

#[test]
fn transitions_under_load_lose_no_request() {
    for seed in seeds(&[1]) {
        let cfg = Config { seed, transitions: 4, mig_latency: Duration::from_millis(100), ..Config::default() };
        let r = run_seed(cfg);
        assert!(r.violations.is_empty(), "seed {seed}: {:#?}", r.violations);
        assert_eq!(r.rows.len(), 4);
        for row in &r.rows {
            assert!(row.commit_to_broken_ms.is_some(), "seed {seed}: transition to epoch {} never finished", row.epoch);
            assert!(row.requests.sent > 0, "seed {seed}: no load during epoch {}", row.epoch);
            assert_eq!(row.requests.failed, 0, "seed {seed}: epoch {}: {:?}", row.epoch, row.requests);
        }
        assert!(r.rows.iter().any(|row| row.created > 0 && row.destroyed > 0), "seed {seed}: no MIG re-layout");
        assert_eq!((r.misrouted, r.cut), (0, 0), "seed {seed}");
        assert!(r.total.ok > 0, "seed {seed}: {:?}", r.total);
    }
}

#[test]
fn transitions_under_load_with_crashes_and_link_cuts_keep_the_invariants() {
    for seed in seeds(&[2]) {
        let cfg = Config { seed, nodes: 4, transitions: 3, crash_p: 0.002, cut_p: 0.004, ..Config::default() };
        let r = run_seed(cfg);
        // Known gap (docs/transitions.md): with a leader change in the middle of a transition
        // (seed 2: link cuts force one) a few stages reach an instance that no longer serves
        // (the frontend retries them elsewhere); they are reported, not asserted. No stage is
        // cut and no slice held twice, faults or not.
        let misrouted = r.violations.iter().filter(|v| v.contains("not serving")).count();
        eprintln!("seed {seed}: {misrouted} step(s) with misrouted stages ({} stages)", r.misrouted);
        let others: Vec<&String> = r.violations.iter().filter(|v| !v.contains("not serving")).collect();
        assert!(others.is_empty(), "seed {seed}: {others:#?}");
        assert_eq!(r.cut, 0, "seed {seed}");
        assert!(r.rows.iter().all(|row| row.commit_to_broken_ms.is_some()), "seed {seed}: {:#?}", r.rows);
        assert!(r.total.ok > 0, "seed {seed}: {:?}", r.total);
    }
}
