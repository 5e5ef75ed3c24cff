//! `cargo xtask test`: everything CI checks, in one command (`.ci/run` calls only this).
//!
//! fmt and clippy failures do not stop the run, so one CI log shows every problem at once;
//! a failed build does stop it, since the tests need its binaries.

use std::{
    ffi::OsString,
    io::{BufRead, BufReader},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{
    compile::{self, WORKSPACE},
    exec::{self, elapsed},
    matrix, setup,
};

/// The source trees whose modules must not import each other in a circle (issue #25; the
/// "imports" step): every crate's, the test fixtures' included.
const IMPORT_CHECKED: [&str; 6] = [
    "probe-user/src",
    "probe-common/src",
    "probe-ebpf/src",
    "xtask/src",
    "tests/src",
    "tests/tests",
];

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
    let mut tally = Tally::default();

    step(&mut outcomes, "setup", setup::run);
    if outcomes[0].error.is_none() {
        step(&mut outcomes, "fmt", || {
            exec::run(exec::cargo().args(["fmt", "--all", "--check"]))
                .context("code is not formatted (run `cargo fmt --all`)")
        });
        step(&mut outcomes, "clippy", || {
            exec::run(
                exec::cargo()
                    .arg("clippy")
                    .args(WORKSPACE)
                    .args(["--all-targets", "--", "-D", "warnings"])
                    // Lints only: the build step builds the eBPF probe, clippy's own build
                    // script run would build it a second time (probe-user/build.rs).
                    .env("DW_PROBE_PLACEHOLDER", "1"),
            )
        });
        step(&mut outcomes, "imports", || {
            // Each crate's modules import each other without a circle (issue #25).
            let root = exec::workspace_root();
            IMPORT_CHECKED.iter().try_for_each(|dir| {
                exec::run(
                    std::process::Command::new("/usr/bin/python3")
                        .arg(root.join("xtask/import_graph.py"))
                        .arg(root.join(dir)),
                )
                .with_context(|| {
                    format!("an import circle in {dir} (xtask/import_graph.py names it)")
                })
            })
        });
        let built = step(&mut outcomes, "build", || {
            compile::build_for_tests().map(|_| ())
        });
        if built {
            step(&mut outcomes, "cargo test", || {
                cargo_test(test_args, &mut tally, None)
            });
            // The same suite on the last-resort backend, forced (docs/hooks.md): it must
            // keep working where the kernel offers nothing better.
            if default_hooks_differ_from_syscalls() {
                step(&mut outcomes, "syscalls", || {
                    cargo_test(test_args, &mut tally, Some("syscalls"))
                });
            }
            // Other kernels, only for the whole suite: with a filter the user is after one
            // test on this kernel (`cargo xtask matrix` runs any test in any guest).
            if test_args.is_empty() {
                step(&mut outcomes, "matrix", || {
                    let mut counts = matrix::Counts::default();
                    let result = matrix::run(&[], &[], &mut counts);
                    tally.passed += counts.passed;
                    tally.failed += counts.failed;
                    result
                });
            }
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
    // The last line: the test count over every test binary, as a plain closing line.
    println!(
        "tests: {} passed, {} failed, {} skipped",
        tally.passed, tally.failed, tally.ignored
    );
    if !failed.is_empty() {
        bail!("failed steps: {}", failed.join(", "));
    }
    Ok(())
}

/// Whether the suite's first run was on another backend than the syscall hooks (the
/// default where the kernel has every socket hook, or `DRAINWATCH_HOOKS` in the
/// environment), so that a second run forced onto them tests something new. Asked of the
/// built `drainwatch doctor` (its `hooks` line names the backend it would use).
fn default_hooks_differ_from_syscalls() -> bool {
    if let Ok(forced) = std::env::var("DRAINWATCH_HOOKS") {
        if !forced.trim().is_empty() {
            return forced.trim() != "syscalls";
        }
    }
    match compile::default_hooks(&compile::binary("debug", "drainwatch")).as_deref() {
        Some("syscalls") => {
            println!("cargo test: the default hooks here are the syscall hooks: one run");
            false
        }
        // Another backend, or could not tell: run both rather than miss one.
        _ => true,
    }
}

/// Test counts summed over every `test result:` line cargo printed.
#[derive(Default)]
struct Tally {
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl Tally {
    /// Reads `test result: ok. 5 passed; 0 failed; 1 ignored; 0 measured; ...`.
    fn add_line(&mut self, line: &str) {
        let Some(rest) = line.strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(what), Some(count)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(count) = count.parse::<u64>() else {
                continue;
            };
            match what {
                "passed" => self.passed += count,
                "failed" => self.failed += count,
                "ignored" => self.ignored += count,
                _ => {}
            }
        }
    }
}

/// `cargo test` with the paths of the debug binaries in the environment: the integration
/// tests run the real `drainwatch` against the real fixture instead of building their own.
///
/// `hooks`: a backend to force with `DRAINWATCH_HOOKS` (which drainwatch and the tests both
/// read); `None` keeps the caller's environment (the default backend, or the one asked for).
fn cargo_test(test_args: &[OsString], tally: &mut Tally, hooks: Option<&str>) -> Result<()> {
    let drainwatch = compile::binary("debug", "drainwatch");
    let fixture = compile::binary("debug", "dw-fixture");
    if !fixture.is_file() {
        bail!("the build did not produce {}", fixture.display());
    }
    let mut cmd = exec::cargo();
    if let Some(hooks) = hooks {
        println!("cargo test: every test on DRAINWATCH_HOOKS={hooks}");
        cmd.env("DRAINWATCH_HOOKS", hooks);
    }
    cmd.env("DRAINWATCH_BIN", &drainwatch)
        .env("DW_PYTHON", setup::python_env().join("bin/python"))
        .env("DW_NODE_MODULES", setup::node_env().join("node_modules"))
        .env("DW_FIXTURE_BIN", &fixture)
        .env("DW_DB_TEMPLATES", exec::db_templates())
        .arg("test")
        // Every test binary runs even after one fails: one CI log shows every failure.
        .arg("--no-fail-fast")
        .args(WORKSPACE)
        .args(test_args)
        .stdout(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("could not start `{}`", exec::describe(&cmd)))?;
    // Passed through line by line as it comes, and counted.
    let stdout = child.stdout.take().context("cargo test stdout")?;
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo test output")?;
        println!("{line}");
        tally.add_line(&line);
    }
    let status = child.wait().context("waiting for cargo test")?;
    if !status.success() {
        bail!("`{}` failed: {status}", exec::describe(&cmd));
    }
    if tally.passed == 0 {
        bail!("cargo test ran no test");
    }
    Ok(())
}
