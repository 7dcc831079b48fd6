//! The install scripts' decisions, checked against fake directory trees: `scripts/deps.sh`
//! installs `libclang-dev` exactly when `scripts/libclang.sh` finds no libclang that bindgen
//! can load. (A fresh Debian image ships `libclang-cpp.so.14` alone; an earlier glob took it
//! for libclang and the first build failed after 16 minutes.)

use std::path::{Path, PathBuf};
use std::process::Command;

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join("scripts").join("libclang.sh")
}

fn tree(name: &str, files: &[&str]) -> PathBuf {
    let root = std::env::temp_dir().join(format!("jigsaw-libclang-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    for f in files {
        let p = root.join(f);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, b"").expect("touch");
    }
    root
}

/// (exit code, stdout) of the detection on `root`.
fn detect(root: &Path) -> (i32, String) {
    let out = Command::new("bash").arg(script()).arg(root).env_remove("LIBCLANG_PATH").output().expect("bash runs");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[test]
fn libclang_cpp_alone_is_missing() {
    let root =
        tree("cpp-only", &["usr/lib/x86_64-linux-gnu/libclang-cpp.so.14", "usr/lib/llvm-14/lib/libclang-cpp.so"]);
    assert_eq!(detect(&root), (1, "missing".to_string()));
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn an_empty_tree_is_missing() {
    let root = tree("empty", &[]);
    assert_eq!(detect(&root), (1, "missing".to_string()));
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn every_name_bindgen_loads_is_found() {
    for (i, f) in [
        "usr/lib/llvm-14/lib/libclang.so",
        "usr/lib/llvm-14/lib/libclang-14.so.1",
        "usr/lib/x86_64-linux-gnu/libclang-14.so.14.0.6",
        "usr/lib/x86_64-linux-gnu/libclang.so.1",
        "usr/lib64/libclang.so.18.1",
    ]
    .iter()
    .enumerate()
    {
        let root = tree(&format!("found-{i}"), &["usr/lib/x86_64-linux-gnu/libclang-cpp.so.14", f]);
        let (code, path) = detect(&root);
        assert_eq!(code, 0, "{f}: {path}");
        assert!(path.ends_with(f), "{f}: reported {path}");
        let _ = std::fs::remove_dir_all(&root);
    }
}
