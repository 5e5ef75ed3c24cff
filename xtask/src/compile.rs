//! `cargo xtask build`: setup, then build every binary of the workspace.
//!
//! probe-user's build script compiles the eBPF object with aya-build (it needs the
//! bpf-linker that setup guarantees), so one `cargo build` yields a working `drainwatch`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use crate::{exec, setup};

/// Arguments selecting what to build/lint/test: every member except `probe-ebpf`.
///
/// `--workspace` ignores `default-members`, and `probe-ebpf` cannot be built for the host
/// (it is `no_std` for bpfel-unknown-none; probe-user's build script builds it properly).
pub const WORKSPACE: &[&str] = &["--workspace", "--exclude", "probe-ebpf"];

/// Where the build of `profile` ("debug"/"release") leaves binary `name`.
pub fn binary(profile: &str, name: &str) -> PathBuf {
    exec::target_dir().join(profile).join(name)
}

/// `cargo xtask build [--release]`; returns the path of the `drainwatch` binary.
pub fn run(release: bool) -> Result<PathBuf> {
    setup::run()?;
    build(release)
}

/// The build without setup, for subcommands that already ran it.
pub fn build(release: bool) -> Result<PathBuf> {
    build_targets(release, false)
}

/// The debug build of `cargo xtask test` and the matrix: every binary and every test
/// target in one cargo run. `cargo test` turns on the dev-dependencies' features (proptest's
/// rustix and bitflags, ...), which changes the builds of aya, probe-common and probe-user
/// under it: after a `--bins` build alone, the host suite's `cargo test` compiled them all
/// again, the eBPF probe too (probe-user's build script runs in a new OUT_DIR), ~2 minutes
/// of CPU of a CI run. Built with `--tests`, `cargo test` and the matrix's `--no-run` find
/// it all built.
pub fn build_for_tests() -> Result<PathBuf> {
    build_targets(false, true)
}

fn build_targets(release: bool, tests: bool) -> Result<PathBuf> {
    let profile = if release { "release" } else { "debug" };
    println!("build: cargo build ({profile})");
    let mut cmd = exec::cargo();
    cmd.arg("build");
    if release {
        cmd.arg("--release");
    }
    cmd.args(WORKSPACE).arg("--bins");
    if tests {
        cmd.arg("--tests");
    }
    exec::run(&mut cmd).context("building the workspace")?;
    let drainwatch = binary(profile, "drainwatch");
    if !drainwatch.is_file() {
        bail!(
            "cargo build succeeded but {} does not exist",
            drainwatch.display()
        );
    }
    println!("build: drainwatch is at {}", drainwatch.display());
    Ok(drainwatch)
}

/// The hook backend a built `drainwatch` chooses by default on this kernel, as its
/// `doctor` says it: the `DRAINWATCH_HOOKS` word at the end of its `hooks` line (`ok hooks
/// socket-tracepoints: ... (DRAINWATCH_HOOKS=socket)`, probe-user/src/output/doctor.rs,
/// `hooks_detail`); `None` when it cannot tell. Asked of drainwatch because the backend
/// words are written once, in its backend registry (probe-user/src/kernel/backends/), which
/// xtask, building drainwatch, cannot link.
pub fn default_hooks(drainwatch: &std::path::Path) -> Option<String> {
    let out = std::process::Command::new(drainwatch)
        .arg("doctor")
        .env_remove("DRAINWATCH_HOOKS")
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|line| {
        let mut words = line.split_whitespace();
        words.next() == Some("ok") && words.next() == Some("hooks")
    })?;
    let word = line
        .trim_end()
        .strip_suffix(')')?
        .rsplit_once("(DRAINWATCH_HOOKS=")?
        .1;
    Some(word.to_string())
}
