//! The GPU segment catalogue: MIG GPU-instance profiles of each supported GPU model, the
//! placement rules, MPS levels, and the enumeration of legal per-GPU layouts.
//!
//! Source: `shared/research/gpu.md` §1.2–1.3 and §6.3 (NVIDIA MIG user guide tables and
//! public `nvidia-smi mig -lgip/-lgipp` transcripts). SM counts and memory sizes vary by SKU
//! and driver; the real backend re-reads them from NVML. Values marked *inferred* in the
//! table docs were not seen on hardware.
//!
//! ## Placement model
//! A GPU has 8 memory-slice positions (0..8) and 7 compute slices. A GPU instance of a
//! profile occupies `[start, start + mem_slices)` where `start` must be in the profile's
//! start list; instances may not overlap; the `+me` profiles are capped at one instance.
//! With these rules compute slices never over-commit (checked by a test).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// MPS concurrency levels the planner considers inside one MIG instance (paper §3.1).
pub const MPS_LEVELS: [u8; 4] = [1, 2, 3, 4];

/// Memory-slice positions on every supported GPU.
pub const MEM_SLICES: u8 = 8;
/// Compute slices on every supported GPU.
pub const COMPUTE_SLICES: u8 = 7;

/// A supported GPU model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GpuModel {
    /// NVIDIA A100-SXM4-40GB.
    A100_40gb,
    /// NVIDIA A100 80GB (SXM4 / PCIe).
    A100_80gb,
    /// NVIDIA H100 80GB SXM5.
    H100_80gb,
    /// NVIDIA H200 141GB.
    H200,
}

impl GpuModel {
    /// All supported models.
    pub const ALL: [GpuModel; 4] = [GpuModel::A100_40gb, GpuModel::A100_80gb, GpuModel::H100_80gb, GpuModel::H200];

    /// The CLI / file name of the model (`h100-80gb`).
    pub fn name(self) -> &'static str {
        match self {
            GpuModel::A100_40gb => "a100-40gb",
            GpuModel::A100_80gb => "a100-80gb",
            GpuModel::H100_80gb => "h100-80gb",
            GpuModel::H200 => "h200",
        }
    }

    /// The catalogue entry of this model.
    pub fn spec(self) -> &'static GpuSpec {
        match self {
            GpuModel::A100_40gb => &A100_40GB,
            GpuModel::A100_80gb => &A100_80GB,
            GpuModel::H100_80gb => &H100_80GB,
            GpuModel::H200 => &H200_141GB,
        }
    }
}

impl fmt::Display for GpuModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Error for an unknown GPU model name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown GPU model `{0}`: expected one of a100-40gb, a100-80gb, h100-80gb, h200")]
pub struct UnknownGpuModel(pub String);

impl FromStr for GpuModel {
    type Err = UnknownGpuModel;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        GpuModel::ALL
            .into_iter()
            .find(|m| m.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| UnknownGpuModel(s.to_string()))
    }
}

/// One MIG GPU-instance profile.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MigProfile {
    /// Profile name as `nvidia-smi` prints it (`3g.40gb`).
    pub name: &'static str,
    /// `nvidia-smi` / `nvmlGpuInstanceProfileInfo_t.id`.
    pub id: u32,
    /// The `NVML_GPU_INSTANCE_PROFILE_*` index.
    pub nvml_enum: u32,
    /// Compute slices (the "g" number; the planner's cost unit).
    pub compute_slices: u8,
    /// Memory slices, which is also the width of a placement.
    pub mem_slices: u8,
    /// Per-GPU instance cap.
    pub max_instances: u8,
    /// Streaming multiprocessors of the instance.
    pub sms: u32,
    /// Usable memory in GiB.
    pub mem_gib: f64,
    /// Allowed start positions in memory-slice units.
    pub starts: &'static [u8],
    /// `+me`: the profile takes the shared media engines (cap 1).
    pub media_ext: bool,
}

impl MigProfile {
    /// Whether the planner considers this profile (the `+me` profiles add nothing for compute).
    pub fn plannable(&self) -> bool {
        !self.media_ext
    }

    /// The 1g profile with two memory slices (`1g.20gb` on 80 GB parts).
    pub fn is_double_memory_1g(&self) -> bool {
        self.compute_slices == 1 && self.mem_slices == 2
    }

    /// The slice cost `s_n` the planner charges: the compute slices, except that the
    /// double-memory 1g profile costs 2, because its placements ({0,2,4,6}, width 2) block
    /// exactly as much of a GPU as a 2g does (paper §4: "MIG placement rules make them cost
    /// as much as a 2/7"). A 3g keeps cost 3: the planner models placement exactly, so the
    /// compute slice a 3g+3g layout strands is visible there, not in a per-instance price.
    pub fn slice_cost(&self) -> u8 {
        if self.is_double_memory_1g() {
            2
        } else {
            self.compute_slices
        }
    }
}

/// One GPU model with its MIG profile table and the figures the analytic profile model uses.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GpuSpec {
    /// The model.
    pub model: GpuModel,
    /// Marketing name.
    pub display_name: &'static str,
    /// SMs with MIG disabled.
    pub total_sms: u32,
    /// Memory bandwidth of the whole GPU, GB/s (vendor datasheet).
    pub mem_bw_gbs: f64,
    /// Dense FP16 tensor throughput of the whole GPU, TFLOP/s (vendor datasheet).
    pub fp16_tflops: f64,
    /// GPU-instance profiles.
    pub profiles: &'static [MigProfile],
}

const S1: &[u8] = &[0, 1, 2, 3, 4, 5, 6];
const S1D: &[u8] = &[0, 2, 4, 6];
const S2: &[u8] = &[0, 2, 4];
const S3: &[u8] = &[0, 4];
const S0: &[u8] = &[0];

macro_rules! profile {
    ($name:expr, $id:expr, $en:expr, $c:expr, $m:expr, $max:expr, $sms:expr, $gib:expr, $starts:expr, $me:expr) => {
        MigProfile {
            name: $name,
            id: $id,
            nvml_enum: $en,
            compute_slices: $c,
            mem_slices: $m,
            max_instances: $max,
            sms: $sms,
            mem_gib: $gib,
            starts: $starts,
            media_ext: $me,
        }
    };
}

/// A100-SXM4-40GB (MIG user guide `-lgip` example).
pub static A100_40GB: GpuSpec = GpuSpec {
    model: GpuModel::A100_40gb,
    display_name: "NVIDIA A100-SXM4-40GB",
    total_sms: 108,
    mem_bw_gbs: 1555.0,
    fp16_tflops: 312.0,
    profiles: &[
        profile!("1g.5gb", 19, 0x0, 1, 1, 7, 14, 4.75, S1, false),
        profile!("1g.5gb+me", 20, 0x7, 1, 1, 1, 14, 4.75, S1, true),
        profile!("1g.10gb", 15, 0x9, 1, 2, 4, 14, 9.62, S1D, false),
        profile!("2g.10gb", 14, 0x1, 2, 2, 3, 28, 9.62, S2, false),
        profile!("3g.20gb", 9, 0x2, 3, 4, 2, 42, 19.50, S3, false),
        profile!("4g.20gb", 5, 0x3, 4, 4, 1, 56, 19.50, S0, false),
        profile!("7g.40gb", 0, 0x4, 7, 8, 1, 98, 39.25, S0, false),
    ],
};

/// A100 80GB: same IDs, slices, caps, placements and SMs as the 40GB part; memory doubles.
pub static A100_80GB: GpuSpec = GpuSpec {
    model: GpuModel::A100_80gb,
    display_name: "NVIDIA A100 80GB",
    total_sms: 108,
    mem_bw_gbs: 2039.0,
    fp16_tflops: 312.0,
    profiles: &[
        profile!("1g.10gb", 19, 0x0, 1, 1, 7, 14, 9.5, S1, false),
        profile!("1g.10gb+me", 20, 0x7, 1, 1, 1, 14, 9.5, S1, true),
        profile!("1g.20gb", 15, 0x9, 1, 2, 4, 14, 19.5, S1D, false),
        profile!("2g.20gb", 14, 0x1, 2, 2, 3, 28, 19.5, S2, false),
        profile!("3g.40gb", 9, 0x2, 3, 4, 2, 42, 39.25, S3, false),
        profile!("4g.40gb", 5, 0x3, 4, 4, 1, 56, 39.25, S0, false),
        profile!("7g.80gb", 0, 0x4, 7, 8, 1, 98, 78.75, S0, false),
    ],
};

/// H100 80GB SXM5 (SM counts and GiB from a public H100 SXM5 `-lgip` transcript; the
/// 26-SM `1g.20gb` is as observed there).
pub static H100_80GB: GpuSpec = GpuSpec {
    model: GpuModel::H100_80gb,
    display_name: "NVIDIA H100 80GB HBM3",
    total_sms: 132,
    mem_bw_gbs: 3350.0,
    fp16_tflops: 989.0,
    profiles: &[
        profile!("1g.10gb", 19, 0x0, 1, 1, 7, 16, 9.75, S1, false),
        profile!("1g.10gb+me", 20, 0x7, 1, 1, 1, 16, 9.75, S1, true),
        profile!("1g.20gb", 15, 0x9, 1, 2, 4, 26, 19.62, S1D, false),
        profile!("2g.20gb", 14, 0x1, 2, 2, 3, 32, 19.62, S2, false),
        profile!("3g.40gb", 9, 0x2, 3, 4, 2, 60, 39.50, S3, false),
        profile!("4g.40gb", 5, 0x3, 4, 4, 1, 64, 39.50, S0, false),
        profile!("7g.80gb", 0, 0x4, 7, 8, 1, 132, 79.25, S0, false),
    ],
};

/// H200 141GB. Placement table assumed identical to H100 (NVIDIA's mocks); the IDs of
/// 1g.35gb/3g/4g, the SMs of 1g.35gb/3g/4g and the GiB of 1g.35gb/3g/4g are inferred.
pub static H200_141GB: GpuSpec = GpuSpec {
    model: GpuModel::H200,
    display_name: "NVIDIA H200 141GB",
    total_sms: 132,
    mem_bw_gbs: 4800.0,
    fp16_tflops: 989.0,
    profiles: &[
        profile!("1g.18gb", 19, 0x0, 1, 1, 7, 16, 16.0, S1, false),
        profile!("1g.18gb+me", 20, 0x7, 1, 1, 1, 16, 16.0, S1, true),
        profile!("1g.35gb", 15, 0x9, 1, 2, 4, 16, 32.5, S1D, false),
        profile!("2g.35gb", 14, 0x1, 2, 2, 3, 32, 32.5, S2, false),
        profile!("3g.71gb", 9, 0x2, 3, 4, 2, 60, 70.0, S3, false),
        profile!("4g.71gb", 5, 0x3, 4, 4, 1, 64, 70.0, S0, false),
        profile!("7g.141gb", 0, 0x4, 7, 8, 1, 132, 140.0, S0, false),
    ],
};

/// Why a placement is illegal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    /// The profile name is not in this GPU's table.
    #[error("profile `{profile}` does not exist on {gpu}")]
    UnknownProfile {
        /// Profile name.
        profile: String,
        /// GPU model.
        gpu: GpuModel,
    },
    /// Start not in the profile's start list.
    #[error("profile `{profile}` cannot start at memory slice {start}; allowed starts: {allowed:?}")]
    BadStart {
        /// Profile name.
        profile: String,
        /// Requested start.
        start: u8,
        /// Allowed starts.
        allowed: Vec<u8>,
    },
    /// Overlaps another instance.
    #[error("profile `{profile}` at {start} overlaps memory slices [{other_start}, {other_end}) of `{other}`")]
    Overlap {
        /// Profile name.
        profile: String,
        /// Requested start.
        start: u8,
        /// The instance in the way.
        other: String,
        /// Its first memory slice.
        other_start: u8,
        /// One past its last memory slice.
        other_end: u8,
    },
    /// Instance cap reached.
    #[error("profile `{profile}` is capped at {cap} instance(s) per GPU")]
    Cap {
        /// Profile name.
        profile: String,
        /// The cap.
        cap: u8,
    },
}

/// A placed GPU instance: profile index into [`GpuSpec::profiles`] and start slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Placement {
    /// Index into the GPU's profile table.
    pub profile: usize,
    /// First memory slice.
    pub start: u8,
}

/// A set of placements on one GPU.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
pub struct Layout {
    /// Placements sorted by start.
    pub placements: Vec<Placement>,
}

impl GpuSpec {
    /// Index of a profile by name.
    pub fn profile_index(&self, name: &str) -> Option<usize> {
        self.profiles.iter().position(|p| p.name == name)
    }

    /// Check whether `(profile, start)` can be added to `existing`.
    pub fn check_placement(&self, existing: &[Placement], new: Placement) -> Result<(), PlacementError> {
        let p = self
            .profiles
            .get(new.profile)
            .ok_or_else(|| PlacementError::UnknownProfile { profile: format!("#{}", new.profile), gpu: self.model })?;
        if !p.starts.contains(&new.start) {
            return Err(PlacementError::BadStart {
                profile: p.name.into(),
                start: new.start,
                allowed: p.starts.to_vec(),
            });
        }
        let (a0, a1) = (new.start, new.start + p.mem_slices);
        for e in existing {
            let q = &self.profiles[e.profile];
            let (b0, b1) = (e.start, e.start + q.mem_slices);
            if a0 < b1 && b0 < a1 {
                return Err(PlacementError::Overlap {
                    profile: p.name.into(),
                    start: new.start,
                    other: q.name.into(),
                    other_start: b0,
                    other_end: b1,
                });
            }
        }
        let same = existing.iter().filter(|e| e.profile == new.profile).count();
        if same >= usize::from(p.max_instances) {
            return Err(PlacementError::Cap { profile: p.name.into(), cap: p.max_instances });
        }
        Ok(())
    }

    /// Check a whole layout.
    pub fn check_layout(&self, placements: &[Placement]) -> Result<(), PlacementError> {
        let mut placed: Vec<Placement> = Vec::with_capacity(placements.len());
        for &p in placements {
            self.check_placement(&placed, p)?;
            placed.push(p);
        }
        Ok(())
    }

    /// Every maximal legal layout (no further instance of an allowed profile fits) using
    /// only the profiles for which `allowed(profile)` holds.
    pub fn maximal_layouts(&self, allowed: impl Fn(&MigProfile) -> bool) -> Vec<Layout> {
        let candidates: Vec<Placement> = self
            .profiles
            .iter()
            .enumerate()
            .filter(|(_, p)| allowed(p))
            .flat_map(|(i, p)| p.starts.iter().map(move |&s| Placement { profile: i, start: s }))
            .collect();
        let mut out = Vec::new();
        let mut cur = Vec::new();
        self.enumerate(&candidates, 0, &mut cur, &mut out);
        out.sort();
        out
    }

    fn enumerate(&self, cands: &[Placement], from: usize, cur: &mut Vec<Placement>, out: &mut Vec<Layout>) {
        // Canonical order: candidates are taken in increasing index order, so each set is
        // produced once. A set is reported when nothing from the whole candidate list fits.
        for (i, &c) in cands.iter().enumerate().skip(from) {
            if self.check_placement(cur, c).is_ok() {
                cur.push(c);
                self.enumerate(cands, i + 1, cur, out);
                cur.pop();
            }
        }
        if cands.iter().all(|&c| self.check_placement(cur, c).is_err()) {
            let mut placements = cur.clone();
            placements.sort_by_key(|p| (p.start, p.profile));
            out.push(Layout { placements });
        }
    }

    /// Maximal layouts grouped by their profile multiset: for each distinct multiset, the
    /// per-profile instance counts and one representative layout that realises it.
    pub fn layout_classes(&self, allowed: impl Fn(&MigProfile) -> bool) -> Vec<LayoutClass> {
        let mut classes: BTreeMap<Vec<u8>, Layout> = BTreeMap::new();
        for l in self.maximal_layouts(allowed) {
            let mut counts = vec![0u8; self.profiles.len()];
            for p in &l.placements {
                counts[p.profile] += 1;
            }
            classes.entry(counts).or_insert(l);
        }
        classes.into_iter().map(|(counts, representative)| LayoutClass { counts, representative }).collect()
    }
}

/// A distinct multiset of profiles that some maximal layout realises.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayoutClass {
    /// Instances per profile index.
    pub counts: Vec<u8>,
    /// A concrete placement realising the multiset.
    pub representative: Layout,
}

/// The base profiles: no `+me`, no double-memory 1g (`1g` with 2 memory slices).
pub fn is_base_profile(p: &MigProfile) -> bool {
    !p.media_ext && !p.is_double_memory_1g()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn h100_base_profiles_give_19_maximal_sets_and_14_multisets() {
        let spec = GpuModel::H100_80gb.spec();
        assert_eq!(spec.maximal_layouts(is_base_profile).len(), 19);
        assert_eq!(spec.layout_classes(is_base_profile).len(), 14);
    }

    #[test]
    fn double_memory_1g_gives_78_maximal_sets_and_38_multisets() {
        for m in GpuModel::ALL {
            let spec = m.spec();
            let with = |p: &MigProfile| !p.media_ext;
            assert_eq!(spec.maximal_layouts(with).len(), 78, "{m}");
            assert_eq!(spec.layout_classes(with).len(), 38, "{m}");
        }
    }

    #[test]
    fn no_layout_over_commits_compute_slices() {
        for m in GpuModel::ALL {
            let spec = m.spec();
            for l in spec.maximal_layouts(|_| true) {
                let c: u32 = l.placements.iter().map(|p| u32::from(spec.profiles[p.profile].compute_slices)).sum();
                assert!(c <= u32::from(COMPUTE_SLICES), "{m}: {l:?}");
                spec.check_layout(&l.placements).expect("enumerated layouts are legal");
            }
        }
    }

    #[test]
    fn placement_rules_are_enforced() {
        let spec = GpuModel::H100_80gb.spec();
        let g3 = spec.profile_index("3g.40gb").expect("3g");
        let g2 = spec.profile_index("2g.20gb").expect("2g");
        let me = spec.profile_index("1g.10gb+me").expect("+me");
        assert!(matches!(
            spec.check_placement(&[], Placement { profile: g3, start: 2 }),
            Err(PlacementError::BadStart { .. })
        ));
        let placed = [Placement { profile: g2, start: 4 }];
        assert!(matches!(
            spec.check_placement(&placed, Placement { profile: g3, start: 4 }),
            Err(PlacementError::Overlap { .. })
        ));
        let placed = [Placement { profile: me, start: 0 }];
        assert!(matches!(
            spec.check_placement(&placed, Placement { profile: me, start: 3 }),
            Err(PlacementError::Cap { .. })
        ));
        assert!(spec.check_placement(&[], Placement { profile: g3, start: 4 }).is_ok());
    }

    #[test]
    fn model_names_round_trip() {
        for m in GpuModel::ALL {
            assert_eq!(m.name().parse::<GpuModel>(), Ok(m));
        }
        assert!("v100".parse::<GpuModel>().is_err());
    }
}
