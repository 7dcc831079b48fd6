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
    let control = cfg.control_config(&p)?;
    let mut out = format!("{p}: valid\nplanner: {planner:?}\ncontrol: {control:?}\n");
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
    use jigsaw_agent::transport::tls::{self, CertInfo, Issue};
    match c {
        CaCmd::Init { dir, cluster, days } => {
            tls::ca_init_for(dir, cluster, *days)?;
            Ok(format!("cluster CA `{cluster}` written to {} (valid {days} days)\n", dir.display()))
        }
        CaCmd::Issue { node, dir, admin, days, sans, force } => {
            let req = match (node, admin) {
                (None, false) => anyhow::bail!("name the node: `jigsaw ca issue NODE --dir DIR` (or --admin)"),
                (Some(n), false) => Issue::node(n),
                (n, true) => Issue::admin(n.as_deref().unwrap_or("admin")),
            };
            if *days == 0 {
                anyhow::bail!("--days must be at least 1");
            }
            let req = Issue { extra_names: sans.clone(), force: *force, ..req.days(*days) };
            let i = tls::issue(dir, &req)?;
            let mut out = format!(
                "{} certificate {} and key {} issued for `{}`\n",
                i.info.role,
                i.cert.display(),
                i.key.display(),
                i.info.name
            );
            out += &describe(&i.info);
            Ok(out)
        }
        CaCmd::Show { cert } => {
            let info = CertInfo::from_pem_file(cert)?;
            Ok(format!("{}: `{}`\n{}", cert.display(), info.name, describe(&info)))
        }
    }
}

/// A certificate in words: role, serial, names, validity (UTC).
fn describe(i: &jigsaw_agent::transport::tls::CertInfo) -> String {
    let date = jigsaw_agent::transport::tls::utc_time;
    format!(
        "  role {}, serial {}\n  names [{}]\n  valid {} to {}\n",
        i.role,
        i.serial,
        i.dns_names.join(", "),
        date(i.not_before),
        date(i.not_after)
    )
}
