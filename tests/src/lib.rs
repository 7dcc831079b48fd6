//! Helpers shared by the cross-crate integration tests in `tests/tests/`: loading the
//! shipped example applications and a clock for the planner that does not read time.

use jigsaw_coordinator::planner::Clock;
use jigsaw_protocol::app::AppSpec;
use jigsaw_protocol::profile::ProfileTable;
use std::path::PathBuf;

/// The repository's `examples/` directory.
pub fn examples_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join("examples")
}

/// Names of the shipped example applications.
pub const EXAMPLES: [&str; 3] = ["social", "traffic", "ar"];

/// Load an example app and its committed H100 profiles.
pub fn load_example(name: &str) -> (AppSpec, ProfileTable, String) {
    let dir = examples_dir();
    let app_path = dir.join("apps").join(format!("{name}.toml"));
    let prof_path = dir.join("profiles").join(format!("{name}-h100-80gb.csv"));
    let app_text = std::fs::read_to_string(&app_path).unwrap_or_else(|e| panic!("{}: {e}", app_path.display()));
    let csv = std::fs::read_to_string(&prof_path).unwrap_or_else(|e| panic!("{}: {e}", prof_path.display()));
    let app = AppSpec::parse(&app_text, &app_path.display().to_string()).unwrap_or_else(|e| panic!("{e}"));
    let profiles = ProfileTable::parse_csv(&csv, &prof_path.display().to_string()).unwrap_or_else(|e| panic!("{e}"));
    (app, profiles, csv)
}

/// A clock frozen at zero: planner time limits never expire.
pub struct FrozenClock;

impl Clock for FrozenClock {
    fn now_s(&self) -> f64 {
        0.0
    }
}
