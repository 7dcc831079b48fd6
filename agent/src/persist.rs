//! The node's small state files (`applied-plan.json`, `routes.json`): durable writes, and
//! loads that survive a corrupt file.
//!
//! * [`write_durably`]: write a temporary file beside the target, fsync it, rename it over
//!   the target, fsync the directory. After a crash the target holds either the old or the
//!   new content, never a torn mix, and a write that returned is on disk.
//! * [`load_or_set_aside`]: a missing file is `None`; a file that does not parse (torn by a
//!   crash on a file system without the guarantees above, edited by hand, or written by an
//!   incompatible build) is logged, renamed aside to `NAME.corrupt` (kept for a post-mortem)
//!   and also `None`: the node starts empty and the coordinator pushes the current plan
//!   again, instead of the node refusing to start.

use serde::de::DeserializeOwned;
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Where a corrupt `path` is moved: `path` with `.corrupt` appended.
pub fn aside_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".corrupt");
    PathBuf::from(p)
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".tmp");
    PathBuf::from(p)
}

/// Replace `path` with `bytes` durably (see the module docs).
pub fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = tmp_path(path);
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    // The rename is durable only once the directory entry is.
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)?.sync_all()
}

/// Load `path` as JSON (see the module docs): `Ok(None)` when it is missing or was corrupt
/// (and is now set aside); `Err` only when it cannot be read at all (permissions, I/O).
pub fn load_or_set_aside<T: DeserializeOwned>(path: &Path) -> std::io::Result<Option<T>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    match serde_json::from_slice(&bytes) {
        Ok(v) => Ok(Some(v)),
        Err(e) => {
            let aside = aside_path(path);
            std::fs::rename(path, &aside)?;
            tracing::error!(
                path = %path.display(),
                aside = %aside.display(),
                %e,
                "state file is corrupt: set aside; starting without it (the coordinator pushes the current plan again)"
            );
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_replace_and_corrupt_files_are_set_aside() {
        let dir = std::env::temp_dir().join(format!("jigsaw-persist-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let f = dir.join("state.json");
        assert_eq!(load_or_set_aside::<Vec<u32>>(&f).expect("readable"), None, "missing");
        write_durably(&f, b"[1,2]").expect("write");
        write_durably(&f, b"[3]").expect("rewrite");
        assert_eq!(load_or_set_aside::<Vec<u32>>(&f).expect("readable"), Some(vec![3]));
        assert!(!tmp_path(&f).exists(), "no temporary file left behind");
        std::fs::write(&f, b"[4, 5").expect("torn write");
        assert_eq!(load_or_set_aside::<Vec<u32>>(&f).expect("readable"), None, "corrupt");
        assert!(!f.exists(), "moved out of the way");
        assert_eq!(std::fs::read(aside_path(&f)).expect("kept aside"), b"[4, 5");
        write_durably(&f, b"[6]").expect("a fresh start writes again");
        assert_eq!(load_or_set_aside::<Vec<u32>>(&f).expect("readable"), Some(vec![6]));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
