//! Operator utilities: `jigsaw config check` and `jigsaw ca`.

use crate::args::CaCmd;
use anyhow::Result;
use jigsaw_agent::config::Config;
use std::fmt::Write as _;
use std::path::Path;

/// `jigsaw config check`: validate a config file and summarise it.
pub fn cmd_config_check(path: &Path) -> Result<String> {
    let p = path.display().to_string();
    let cfg = Config::load(&p)?;
    let planner = cfg.planner_config(&p)?;
    let mut out = format!("{p}: valid\nplanner: {planner:?}\n");
    if let Some(n) = &cfg.node {
        let n = n.validate(&p)?;
        let voters: Vec<&str> = n.voters.iter().map(|v| v.0.as_str()).collect();
        let peers: Vec<String> = n.peers.iter().map(|(i, a)| format!("{i}@{a}")).collect();
        writeln!(
            out,
            "node {} listens on {} (advertised {}), eligible: {}, voters [{}], peers [{}], data {}, gpu {:?}",
            n.id,
            n.listen,
            n.advertise,
            n.coordinator_eligible,
            voters.join(", "),
            peers.join(", "),
            n.data_dir.display(),
            n.gpu
        )?;
    }
    Ok(out)
}

/// `jigsaw ca`.
pub fn cmd_ca(c: &CaCmd) -> Result<String> {
    match c {
        CaCmd::Init { dir, cluster } => {
            jigsaw_agent::transport::tls::ca_init(dir, cluster)?;
            Ok(format!("cluster CA `{cluster}` written to {}\n", dir.display()))
        }
        CaCmd::Issue { node, dir } => {
            let (cert, key) = jigsaw_agent::transport::tls::ca_issue(dir, node)?;
            Ok(format!("certificate {} and key {} issued for node `{node}`\n", cert.display(), key.display()))
        }
    }
}
