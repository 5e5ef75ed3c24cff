//! `cargo xtask test`: everything CI checks, in one command (`.ci/run` calls only this).
//!
//! fmt and clippy failures do not stop the run, so one CI log shows every problem at once;
//! a failed build does stop it, since the tests need its binaries.

use std::{
    ffi::OsString,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{
    compile::{self, WORKSPACE},
    exec::{self, elapsed},
    setup,
};

/// One finished step, for the summary at the end.
struct Outcome {
    name: &'static str,
    took: Duration,
    error: Option<anyhow::Error>,
}

/// Runs `step` under a header, timing it and keeping its error for the summary.
fn step(
    outcomes: &mut Vec<Outcome>,
    name: &'static str,
    step: impl FnOnce() -> Result<()>,
) -> bool {
    println!("\n=== test: {name} ===");
    let started = Instant::now();
    let error = step().err();
    let took = started.elapsed();
    match &error {
        None => println!("=== test: {name}: ok ({})", elapsed(took)),
        Some(err) => println!("=== test: {name}: FAILED ({}): {err:#}", elapsed(took)),
    }
    let ok = error.is_none();
    outcomes.push(Outcome { name, took, error });
    ok
}

/// `cargo xtask test [-- CARGO_TEST_ARGS...]`.
pub fn run(test_args: &[OsString]) -> Result<()> {
    let started = Instant::now();
    let mut outcomes = Vec::new();

    step(&mut outcomes, "setup", setup::run);
    if outcomes[0].error.is_none() {
        step(&mut outcomes, "fmt", || {
            exec::run(exec::cargo().args(["fmt", "--all", "--check"]))
                .context("code is not formatted (run `cargo fmt --all`)")
        });
        step(&mut outcomes, "clippy", || {
            exec::run(exec::cargo().arg("clippy").args(WORKSPACE).args([
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]))
        });
        let built = step(&mut outcomes, "build", || compile::build(false).map(|_| ()));
        if built {
            step(&mut outcomes, "cargo test", || cargo_test(test_args));
        }
    }

    println!("\n=== test: summary ===");
    for outcome in &outcomes {
        let status = if outcome.error.is_none() {
            "ok"
        } else {
            "FAILED"
        };
        println!(
            "  {:<11}{:<8}{}",
            outcome.name,
            status,
            elapsed(outcome.took)
        );
    }
    println!("  {:<11}{:<8}{}", "total", "", elapsed(started.elapsed()));

    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|o| o.error.is_some())
        .map(|o| o.name)
        .collect();
    if !failed.is_empty() {
        bail!("failed steps: {}", failed.join(", "));
    }
    Ok(())
}

/// `cargo test` with the paths of the debug binaries in the environment: the integration
/// tests run the real `drainwatch` against the real fixture instead of building their own.
fn cargo_test(test_args: &[OsString]) -> Result<()> {
    let drainwatch = compile::binary("debug", "drainwatch");
    let fixture = compile::binary("debug", "dw-fixture");
    if !fixture.is_file() {
        bail!("the build did not produce {}", fixture.display());
    }
    let mut cmd = exec::cargo();
    cmd.env("DRAINWATCH_BIN", &drainwatch)
        .env("DW_FIXTURE_BIN", &fixture)
        .arg("test")
        .args(WORKSPACE)
        .args(test_args);
    exec::run(&mut cmd)
}
