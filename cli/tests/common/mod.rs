//! Shared by the tests that start local clusters of agent processes.

use jigsaw_cli::cluster::{self as local, LocalCluster};
use std::path::PathBuf;

/// A local cluster's directory: on drop, SIGKILL every agent it lists and remove it, so a
/// failed test leaves nothing running.
pub struct Cluster(pub PathBuf);

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Ok(c) = LocalCluster::load(&self.0) {
            for n in &c.nodes {
                let _ = local::signal(n.pid, "KILL");
            }
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
