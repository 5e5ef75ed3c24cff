//! `dw-bench`: the benchmarks behind `cargo xtask bench` (not a test: numbers, not
//! pass/fail). Needs root (it loads probes and reads kernel BPF stats).
//!
//! `dw-bench [all|syscall|verdict|throughput|ops|rss|lifecycle] [--runs 50] [--rounds 6] [--trial-secs 5]
//!  [--rss-conns 10000] [--out target/bench/results.json]`, or
//! `dw-bench compare BIN... [--rounds 6] [--trial-secs 5] [--out ...]`
//!
//! - verdict: the drain verdict's latency and early verdicts (see `dw_bench/verdict.rs`);
//! - syscall: what a process drainwatch does not watch pays per system call (see
//!   `dw_bench/syscall.rs`);
//! - throughput: overhead, bpftrace/strace comparison, bystander, BPF stats per program,
//!   lost events (see `dw_bench/throughput.rs`);
//! - ops: what `--op` costs a target per operation and its throughput on a hot function
//!   (see `dw_bench/ops.rs`);
//! - rss: drainwatch's peak RSS with many tracked connections (see `dw_bench/rss.rs`);
//! - lifecycle: attach time (command start to attached) and verdict to exit, without and
//!   with TLS hooks (see `dw_bench/lifecycle.rs`);
//! - compare: drainwatch builds side by side on one echo server, program time per hit
//!   included, for a change to the programs' hot path (see `dw_bench/compare.rs`); not part
//!   of `all`.
//!
//! Prints a Markdown table (also written beside the JSON as `results.md`).

#[path = "dw_bench/compare.rs"]
mod compare;
#[path = "dw_bench/cpu.rs"]
mod cpu;
#[path = "dw_bench/lifecycle.rs"]
mod lifecycle;
#[path = "dw_bench/ops.rs"]
mod ops;
#[path = "dw_bench/rss.rs"]
mod rss;
#[path = "dw_bench/syscall.rs"]
mod syscall;
#[path = "dw_bench/throughput.rs"]
mod throughput;
#[path = "dw_bench/tracer.rs"]
mod tracer;
#[path = "dw_bench/verdict.rs"]
mod verdict;

use std::{fmt::Display, io::Write, path::PathBuf, time::Instant};

pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// The results table, printed as Markdown.
#[derive(Default)]
pub struct Table {
    rows: Vec<[String; 3]>,
}

impl Table {
    pub fn row(&mut self, metric: &str, value: impl Display, goal: &str) {
        self.rows
            .push([metric.to_string(), value.to_string(), goal.to_string()]);
    }

    fn markdown(&self) -> String {
        let mut out = String::from("| metric | value | goal |\n|---|---|---|\n");
        for [metric, value, goal] in &self.rows {
            out.push_str(&format!("| {metric} | {value} | {goal} |\n"));
        }
        out
    }
}

fn command_line(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let num = |name: &str, default: u64| -> u64 {
        flag(name).and_then(|r| r.parse().ok()).unwrap_or(default)
    };
    let section = args
        .first()
        .filter(|a| !a.starts_with("--"))
        .cloned()
        .unwrap_or_else(|| "all".into());
    const SECTIONS: [&str; 8] = [
        "all",
        "syscall",
        "verdict",
        "throughput",
        "ops",
        "rss",
        "lifecycle",
        "compare",
    ];
    if !SECTIONS.contains(&section.as_str()) {
        eprintln!(
            "dw-bench: no section {section:?}: name one of {}",
            SECTIONS.join(", ")
        );
        std::process::exit(2);
    }
    let runs = num("--runs", 50) as usize;
    let rounds = num("--rounds", 6).max(1) as usize;
    let secs = num("--trial-secs", 5).clamp(1, 60);
    let rss_conns = num("--rss-conns", 10_000) as usize;
    let out = PathBuf::from(flag("--out").unwrap_or_else(|| "target/bench/results.json".into()));
    let all = section == "all";

    let started = Instant::now();
    let mut table = Table::default();
    let mut json = serde_json::Map::new();
    let mut merge = |value: serde_json::Value| {
        if let serde_json::Value::Object(map) = value {
            json.extend(map);
        }
    };
    if all || section == "syscall" {
        merge(syscall::run(rounds, &mut table));
    }
    if all || section == "throughput" {
        merge(throughput::run(rounds, secs, &mut table));
    }
    if all || section == "ops" {
        merge(ops::run(rounds, secs, &mut table));
    }
    if all || section == "rss" {
        merge(rss::run(rss_conns, &mut table));
    }
    if all || section == "verdict" {
        merge(verdict::run(runs, &mut table));
    }
    if all || section == "lifecycle" {
        merge(lifecycle::run(runs, &mut table));
    }
    if section == "compare" {
        // The positional arguments after the section, flags and their values left out.
        let mut bins = Vec::new();
        let mut rest = args.iter().skip(1);
        while let Some(arg) = rest.next() {
            if arg.starts_with("--") {
                rest.next();
            } else {
                bins.push(PathBuf::from(arg));
            }
        }
        if bins.is_empty() {
            eprintln!("dw-bench compare: name one drainwatch binary or more (release builds)");
            std::process::exit(2);
        }
        merge(compare::run(&bins, rounds, secs, &mut table));
    }
    let machine = format!(
        "{} ({} CPUs, kernel {})",
        command_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        command_line("nproc", &[]),
        command_line("uname", &["-r"]),
    );
    json.insert("machine".into(), machine.clone().into());
    json.insert(
        "bench_secs".into(),
        (started.elapsed().as_secs_f64().round()).into(),
    );
    let text = format!(
        "dw-bench {machine}, {:.0} s\n\n{}",
        started.elapsed().as_secs_f64(),
        table.markdown()
    );
    println!("{text}");
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).expect("create the results directory");
    }
    let mut file = std::fs::File::create(&out).expect("create results.json");
    let json = serde_json::Value::Object(json);
    writeln!(file, "{}", serde_json::to_string_pretty(&json).unwrap()).unwrap();
    std::fs::write(out.with_extension("md"), text).expect("write results.md");
    eprintln!("dw-bench: wrote {}", out.display());
}
