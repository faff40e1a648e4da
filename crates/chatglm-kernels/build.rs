//! Fingerprints the crate's sources for the on-disk cache of compiled kernels.
//!
//! cubecl keys a cached kernel by its name and compile-time parameters, not by its source, so a
//! kernel whose code changed between two builds would be loaded from the older build's cache.
//! `runtime::use_kernel_cache` keeps compiled kernels in a folder named after this fingerprint
//! (FNV-1a over every file under `src/`, its path and bytes, in path order).

use std::path::{Path, PathBuf};

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files(&path, out);
        } else {
            out.push(path);
        }
    }
}

fn main() {
    println!("cargo:rerun-if-changed=src");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut all = Vec::new();
    files(&root.join("src"), &mut all);
    all.sort();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            hash ^= u64::from(*b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    };
    for path in &all {
        let rel = path.strip_prefix(root).unwrap_or(path);
        eat(rel.to_string_lossy().replace('\\', "/").as_bytes());
        eat(&[0]);
        eat(&std::fs::read(path).unwrap_or_default());
        eat(&[0]);
    }
    println!("cargo:rustc-env=CHATGLM_KERNELS_FINGERPRINT={hash:016x}");
}
