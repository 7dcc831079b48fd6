//! App-set files: several apps with their profiles and demands, for `jigsaw up --apps` and
//! `jigsaw bench cluster`.
//!
//! ```toml
//! # Paths are relative to this file.
//! gpu = "a100-80gb"          # optional: the GPU model the profiles are for
//! [[apps]]
//! spec = "../apps/measured/resnet50.toml"
//! profiles = "../profiles/measured-a100-80gb/resnet50.csv"
//! rps = 300.0
//! ```

use anyhow::{bail, Context, Result};
use jigsaw_protocol::app::AppSpec;
use jigsaw_protocol::cluster::AppEntry;
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AppSetFile {
    #[serde(default)]
    gpu: Option<jigsaw_protocol::GpuModel>,
    apps: Vec<AppSetEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AppSetEntry {
    spec: PathBuf,
    profiles: PathBuf,
    rps: f64,
}

/// An app-set file, read.
#[derive(Debug, Clone)]
pub struct AppSet {
    /// The GPU model it names, if any.
    pub gpu: Option<jigsaw_protocol::GpuModel>,
    /// The registrations.
    pub apps: Vec<AppEntry>,
}

/// Read an app-set file; every registration is checked as `jigsaw app register` checks it,
/// and an error names the file and the `[[apps]]` entry.
pub fn load_app_set(path: &Path) -> Result<AppSet> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading app set {}", path.display()))?;
    let file: AppSetFile = toml::from_str(&text).with_context(|| format!("parsing app set {}", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut out: Vec<AppEntry> = Vec::new();
    for (i, a) in file.apps.iter().enumerate() {
        let at = || format!("{}: apps[{i}]", path.display());
        let spec_path = base.join(&a.spec);
        let prof_path = base.join(&a.profiles);
        let spec = std::fs::read_to_string(&spec_path)
            .with_context(|| format!("{}: reading spec {}", at(), spec_path.display()))?;
        let csv = std::fs::read_to_string(&prof_path)
            .with_context(|| format!("{}: reading profiles {}", at(), prof_path.display()))?;
        let (entry, _) = AppEntry::from_sources(
            spec,
            &spec_path.display().to_string(),
            csv,
            &prof_path.display().to_string(),
            a.rps,
        )
        .with_context(at)?;
        if out.iter().any(|e| e.name == entry.name) {
            bail!("{}: app `{}` is listed twice", at(), entry.name);
        }
        out.push(entry);
    }
    if out.is_empty() {
        bail!("{}: no [[apps]] entries", path.display());
    }
    Ok(AppSet { gpu: file.gpu, apps: out })
}

impl AppSet {
    /// The registrations for a cluster of `gpu`s: refused when the set names another model
    /// or an app has no profile row for `gpu`.
    pub fn for_gpu(self, gpu: jigsaw_protocol::GpuModel, path: &Path) -> Result<Vec<AppEntry>> {
        if let Some(want) = self.gpu.filter(|g| *g != gpu) {
            bail!("{}: its profiles are for {want}; start the cluster with --gpu {want} (got {gpu})", path.display());
        }
        for e in &self.apps {
            let parsed = e.parse()?;
            if !parsed.profiles.rows().any(|r| r.gpu == gpu) {
                bail!("{}: app `{}` has no profile rows for {gpu}", path.display(), e.name);
            }
        }
        Ok(self.apps)
    }
}

/// `entry` under another name (the spec is rewritten, as JSON, with the new name).
pub fn renamed(entry: &AppEntry, name: &str) -> Result<AppEntry> {
    let mut spec = AppSpec::parse(&entry.spec_toml, &entry.name)?;
    spec.name = name.into();
    Ok(AppEntry { name: name.into(), spec_toml: serde_json::to_string(&spec)?, ..entry.clone() })
}
