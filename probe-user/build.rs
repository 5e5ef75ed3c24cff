//! Builds the eBPF object (`probe-ebpf`) with aya-build and leaves it in OUT_DIR for
//! `include_bytes_aligned!`.
//!
//! Without bpf-linker (e.g. a plain `cargo clippy` on a machine where `cargo xtask setup`
//! never ran) an empty object is written instead, with a cargo warning; the binary then
//! refuses to attach and says how to build it properly. Nothing pretends to work.

use std::{env, fs, path::PathBuf, process::Command};

fn bpf_linker_available() -> bool {
    Command::new("bpf-linker")
        .arg("--version")
        .output()
        .map(|out| out.status.success())
        .unwrap_or(false)
}

fn main() {
    println!("cargo:rerun-if-env-changed=PATH");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let object = out_dir.join("drainwatch-probe");
    // `cargo xtask test`'s clippy step (xtask/src/test.rs) lints the userspace and runs
    // nothing it builds. Under clippy this script is a build of its own (clippy-driver
    // compiles it), so it would build the whole eBPF probe a second time beside the build
    // step's (~50 s of a 2-core CI run). The empty object it gets instead refuses to attach,
    // as without bpf-linker below.
    println!("cargo:rerun-if-env-changed=DW_PROBE_PLACEHOLDER");
    if env::var_os("DW_PROBE_PLACEHOLDER").is_some_and(|v| !v.is_empty()) {
        fs::write(&object, []).expect("write placeholder eBPF object");
        return;
    }
    if !bpf_linker_available() {
        // Check again on the next build once `cargo xtask setup` has installed it (a path
        // that does not exist yet keeps this script re-running until it does).
        if let Some(home) = env::var_os("CARGO_HOME").or_else(|| {
            env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo").into_os_string())
        }) {
            println!(
                "cargo:rerun-if-changed={}",
                PathBuf::from(home).join("bin/bpf-linker").display()
            );
        }
        println!(
            "cargo:warning=bpf-linker not found: building drainwatch without its eBPF probe; \
             run `cargo xtask build` for a working binary"
        );
        fs::write(&object, []).expect("write placeholder eBPF object");
        return;
    }
    // The probe is built from probe-common too (wire types, redaction): rebuild it when
    // either changes (aya-build only watches the eBPF crate's own directory).
    println!("cargo:rerun-if-changed=../probe-common");
    let root = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"))
        .join("../probe-ebpf")
        .canonicalize()
        .expect("probe-ebpf sits beside probe-user");
    let root = root.to_str().expect("UTF-8 path");
    // cargo sets CARGO_FEATURE_* for the build script of a package built with the feature.
    let floor = env::var_os("CARGO_FEATURE_BENCH_FLOOR").is_some();
    let package = aya_build::Package {
        name: "probe-ebpf",
        root_dir: root,
        features: if floor { &["bench-floor"] } else { &[] },
        ..Default::default()
    };
    if let Err(err) = aya_build::build_ebpf([package], aya_build::Toolchain::Nightly) {
        panic!("building the eBPF probe failed: {err:#}");
    }
}
