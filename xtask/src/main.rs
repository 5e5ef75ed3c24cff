//! `cargo xtask`: the one entry point that builds, tests and demonstrates drainwatch.
//!
//! A fresh machine (or a CI clone) has none of what a previous session installed by hand, so
//! every subcommand starts with `setup`, which installs what is missing and is cheap when
//! nothing is.

mod bench;
mod compile;
mod demo;
mod exec;
mod guest;
mod matrix;
mod setup;
mod test;

use std::{env, ffi::OsString, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

/// Project tasks for drainwatch (run as `cargo xtask <command>`).
#[derive(Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install or check everything the build and the tests need (idempotent).
    Setup,
    /// Build drainwatch and its test fixture, eBPF probe included.
    Build {
        /// Build with the release profile.
        #[arg(long)]
        release: bool,
    },
    /// Run fmt, clippy, build and the whole test suite (integration tests need root).
    Test {
        /// Passed on to `cargo test`, e.g. `cargo xtask test -- sigkill`.
        #[arg(last = true, value_name = "CARGO_TEST_ARGS")]
        args: Vec<OsString>,
    },
    /// Run integration tests inside Debian's 5.10, 6.1 and 6.12 kernels booted in QEMU.
    Matrix {
        /// A kernel of the matrix (5.10, 6.1, 6.12); repeatable; default: every one.
        #[arg(long = "kernel", value_name = "NAME")]
        kernels: Vec<String>,
        /// A test as BINARY::NAME (e.g. drain::wait_returns_after_the_last_request_completes_never_before);
        /// repeatable; default: the subset `cargo xtask test` runs.
        #[arg(long = "test", value_name = "BINARY::NAME")]
        tests: Vec<String>,
    },
    /// Audit a graceful restart and a `kill -9` of the bundled sample server.
    Demo,
    /// Benchmarks (numbers, not a test): writes target/bench/results.json (see docs/bench.md).
    Bench {
        /// Runs of the drain-verdict latency benchmark.
        #[arg(long, default_value_t = 50)]
        runs: u32,
    },
    /// Randomized verdict-truth soak against the fixture and PostgreSQL (see docs/soak.md).
    Soak {
        /// How many randomized runs.
        #[arg(long, default_value_t = 100)]
        runs: u32,
        /// Seed of the run's random choices (printed by every soak, to rerun it).
        #[arg(long)]
        seed: Option<u64>,
    },
}

/// `cargo xtask soak`: setup, a release build, then `dw-soak`.
fn soak(runs: u32, seed: Option<u64>) -> anyhow::Result<()> {
    setup::run()?;
    compile::build(true)?;
    let out = exec::target_dir().join("soak").join("results.json");
    let mut cmd = std::process::Command::new(compile::binary("release", "dw-soak"));
    cmd.args(["--runs", &runs.to_string(), "--out"]).arg(&out);
    if let Some(seed) = seed {
        cmd.args(["--seed", &seed.to_string()]);
    }
    cmd.env("DRAINWATCH_BIN", compile::binary("release", "drainwatch"))
        .env("DW_FIXTURE_BIN", compile::binary("release", "dw-fixture"))
        .env("DW_GAME_BIN", compile::binary("release", "dw-game"))
        .current_dir(exec::workspace_root());
    exec::run(&mut cmd)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    put_cargo_bin_on_path();
    let result = match cli.command {
        Task::Setup => setup::run(),
        Task::Build { release } => compile::run(release).map(|_| ()),
        Task::Test { args } => test::run(&args),
        Task::Matrix { kernels, tests } => matrix::task(&kernels, &tests),
        Task::Demo => demo::run(),
        Task::Bench { runs } => bench::run(runs),
        Task::Soak { runs, seed } => soak(runs, seed),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Makes `$CARGO_HOME/bin` the first PATH entry of this process, so that every child we
/// spawn (cargo, and through it probe-user's build script) finds the bpf-linker that setup
/// installs there, even when the user's shell never sourced `$CARGO_HOME/env`.
///
/// PATH is left exactly as it is when that directory already comes first: probe-user's build
/// script reruns whenever PATH changes, and a needless rewrite would make plain `cargo build`
/// and `cargo xtask build` rebuild it in turn.
fn put_cargo_bin_on_path() {
    let bin = exec::cargo_home().join("bin");
    let current = env::var_os("PATH").unwrap_or_default();
    let mut entries: Vec<PathBuf> = env::split_paths(&current).collect();
    if entries.first() == Some(&bin) {
        return;
    }
    entries.insert(0, bin);
    if let Ok(joined) = env::join_paths(entries) {
        // Single-threaded here: nothing else reads the environment concurrently.
        env::set_var("PATH", joined);
    }
}
