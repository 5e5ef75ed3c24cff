//! `cargo xtask bench`: setup, a release build, then `dw-bench` once per hook backend this
//! kernel offers (docs/bench.md, docs/hooks.md): the default first (socket tracepoints
//! where the kernel has them), then the syscall hooks forced, the "before". Each run writes
//! `target/bench/results-BACKEND.json` (and `.md`); `results.json` holds the default's keys
//! (every key as before) plus `hooks` and `by_hooks` (each backend's results), and
//! `results.md` the tables side by side. `DRAINWATCH_HOOKS` in the environment benches
//! that one backend only.
//!
//! It also builds the floor (`probe-user`'s `bench-floor` feature: the socket data-path
//! programs return at their first instruction) into `target/bench/drainwatch-floor`, which
//! the socket-level backends' throughput trials run beside the real one (docs/bench.md,
//! "The floor").

use std::{fs, path::Path};

use anyhow::{Context, Result};
use serde_json::{Map, Value};

use crate::{compile, exec, setup};

/// The backends to bench, the default first.
fn backends(drainwatch: &Path) -> Vec<String> {
    if let Ok(forced) = std::env::var("DRAINWATCH_HOOKS") {
        if !forced.trim().is_empty() {
            return vec![forced.trim().to_string()];
        }
    }
    match compile::default_hooks(drainwatch).as_deref() {
        Some("syscalls") | None => vec!["syscalls".into()],
        Some(default) => vec![default.into(), "syscalls".into()],
    }
}

/// The rows of a dw-bench Markdown table: (metric, value, goal).
fn rows(markdown: &str) -> Vec<[String; 3]> {
    markdown
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| metric |"))
        .filter_map(|l| {
            let cells: Vec<&str> = l.trim().trim_matches('|').split(" | ").collect();
            match cells.as_slice() {
                [metric, value, goal] => Some([
                    metric.trim().to_string(),
                    value.trim().to_string(),
                    goal.trim().to_string(),
                ]),
                _ => None,
            }
        })
        .collect()
}

/// One table with a value column per backend, rows matched by position (every run does
/// the same sections in the same order), labelled as the first backend's run says them.
fn side_by_side(names: &[String], tables: &[String]) -> String {
    let all: Vec<Vec<[String; 3]>> = tables.iter().map(|t| rows(t)).collect();
    let mut out = format!("| metric | {} | goal |\n|---|", names.join(" | "));
    out.push_str(&"---|".repeat(names.len() + 1));
    out.push('\n');
    let longest = all.iter().map(Vec::len).max().unwrap_or(0);
    for i in 0..longest {
        let first = all.iter().find_map(|rows| rows.get(i));
        let (metric, goal) = first.map_or(("", ""), |r| (r[0].as_str(), r[2].as_str()));
        let values: Vec<&str> = all
            .iter()
            .map(|rows| rows.get(i).map_or("", |r| r[1].as_str()))
            .collect();
        out.push_str(&format!("| {metric} | {} | {goal} |\n", values.join(" | ")));
    }
    out
}

/// Builds the floor into `dir` and returns its path. First, so that the release build
/// after it leaves the real `drainwatch` in target/release (a feature change rebuilds only
/// probe-user and its probe).
fn build_floor(dir: &Path) -> Result<std::path::PathBuf> {
    println!("bench: cargo build (release, the floor: --features bench-floor)");
    let mut cmd = exec::cargo();
    cmd.args([
        "build",
        "--release",
        "-p",
        "probe-user",
        "--bin",
        "drainwatch",
        "--features",
        "bench-floor",
    ]);
    exec::run(&mut cmd).context("building the floor")?;
    let floor = dir.join("drainwatch-floor");
    fs::copy(compile::binary("release", "drainwatch"), &floor)
        .with_context(|| format!("copying the floor build to {}", floor.display()))?;
    Ok(floor)
}

pub fn run(runs: u32) -> Result<()> {
    setup::run()?;
    let dir = exec::target_dir().join("bench");
    fs::create_dir_all(&dir)?;
    let floor = build_floor(&dir)?;
    let drainwatch = compile::build(true)?;
    let names = backends(&drainwatch);
    let mut by_hooks = Map::new();
    let mut tables = Vec::new();
    for backend in &names {
        println!("bench: hooks {backend}");
        let out = dir.join(format!("results-{backend}.json"));
        let mut cmd = std::process::Command::new(compile::binary("release", "dw-bench"));
        cmd.args(["--runs", &runs.to_string(), "--out"])
            .arg(&out)
            .env("DRAINWATCH_HOOKS", backend)
            .env("DRAINWATCH_BIN", &drainwatch)
            .env("DW_FIXTURE_BIN", compile::binary("release", "dw-fixture"))
            .env("DW_GAME_BIN", compile::binary("release", "dw-game"))
            .env("DW_LOAD_BIN", compile::binary("release", "dw-load"))
            .current_dir(exec::workspace_root());
        // The floor is of the socket programs: the syscall hooks have none of them.
        if backend != "syscalls" {
            cmd.env("DW_FLOOR_BIN", &floor);
        }
        exec::run(&mut cmd)?;
        let json: Value = serde_json::from_str(
            &fs::read_to_string(&out).with_context(|| format!("reading {}", out.display()))?,
        )?;
        by_hooks.insert(backend.clone(), json);
        tables.push(fs::read_to_string(out.with_extension("md")).unwrap_or_default());
    }
    // Every key of the default backend's run, as `results.json` always had them.
    let mut results = match by_hooks.get(&names[0]) {
        Some(Value::Object(map)) => map.clone(),
        _ => Map::new(),
    };
    results.insert("hooks".into(), names[0].clone().into());
    results.insert("by_hooks".into(), Value::Object(by_hooks));
    let out = dir.join("results.json");
    fs::write(
        &out,
        serde_json::to_string_pretty(&Value::Object(results))? + "\n",
    )?;
    let table = side_by_side(&names, &tables);
    fs::write(out.with_extension("md"), &table)?;
    println!("\n{table}");
    println!("bench: wrote {}", out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_joined_row_by_row() {
        let a = "dw-bench x\n\n| metric | value | goal |\n|---|---|---|\n| overhead_ratio | 0.99 | >= 0.97 |\n| rss | 20 | <= 25 |\n";
        let b = "| metric | value | goal |\n|---|---|---|\n| overhead_ratio | 0.91 | >= 0.97 |\n| rss | 22 | <= 25 |\n";
        let joined = side_by_side(&["socket".into(), "syscalls".into()], &[a.into(), b.into()]);
        assert_eq!(
            joined,
            "| metric | socket | syscalls | goal |\n|---|---|---|---|\n\
             | overhead_ratio | 0.99 | 0.91 | >= 0.97 |\n| rss | 20 | 22 | <= 25 |\n"
        );
    }
}
